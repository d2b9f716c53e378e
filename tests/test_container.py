"""Container round trips, streaming, by-name access, corruption and truncation."""

from __future__ import annotations

import io
import struct
import threading

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rdformat
from rdformat.format import records as C
from rdformat.errors import (
    InvalidInputError,
    NotRdcError,
    RdcError,
    TensorNotFoundError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)

from helpers import ALL_DTYPES, CountingFile, NonSeekable, assert_bit_exact, pipe_reader, random_array, roundtrip_bytes

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
shapes = st.one_of(
    st.just(()),
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=9),
    st.lists(st.sampled_from([1, 1, 1, 2]), min_size=5, max_size=C.MAX_RANK).map(tuple).filter(lambda s: np.prod(s) < 5000),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(names, st.tuples(st.sampled_from(ALL_DTYPES), shapes), min_size=0, max_size=4),
    st.sampled_from(["lossless", "raw"]),
    st.integers(1, 300),
    st.integers(0, 2**32 - 1),
)
def test_roundtrip_property(spec, codec, chunk_bytes, seed):
    rng = np.random.default_rng(seed)
    tensors = {name: random_array(rng, dtype, shape) for name, (dtype, shape) in spec.items()}
    before = {k: v.copy() for k, v in tensors.items()}
    data, back = roundtrip_bytes(tensors, codec=codec, chunk_bytes=chunk_bytes)
    assert list(back) == list(tensors)
    for name, arr in tensors.items():
        assert_bit_exact(back[name], arr)
        assert_bit_exact(arr, before[name])  # caller's arrays untouched
    # by-name access agrees with streaming
    with rdformat.open(io.BytesIO(data)) as f:
        assert f.keys() == list(tensors)
        for name, arr in tensors.items():
            assert_bit_exact(f.get_tensor(name), arr)
            info = f.info(name)
            assert info.shape == arr.shape and info.dtype == arr.dtype


def test_large_multichunk_float32_compresses_and_roundtrips(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.laplace(0, 0.02, size=(700, 900)).astype(np.float32)
    path = tmp_path / "m.rdc"
    rdformat.save({"w": w}, path, chunk_bytes=1 << 18)
    assert path.stat().st_size < w.nbytes * 0.9  # the exponent plane is entropy-coded
    assert_bit_exact(rdformat.load(path)["w"], w)
    with rdformat.open(path) as f:
        assert f.info("w").codec == "bytesplit"


def test_big_endian_and_noncontiguous_inputs():
    a = np.arange(24, dtype=">f4").reshape(4, 6)
    b = np.arange(40, dtype=np.int64).reshape(5, 8)[:, ::3]
    _, back = roundtrip_bytes({"a": a, "b": b})
    np.testing.assert_array_equal(back["a"], a)
    np.testing.assert_array_equal(back["b"], b)
    assert back["a"].dtype == np.float32


def test_readonly_input_accepted():
    a = np.ones(100, np.float32)
    a.setflags(write=False)
    _, back = roundtrip_bytes({"a": a})
    assert_bit_exact(back["a"], a)


def test_loading_bytes_reads_chunks_in_place_but_returns_arrays_of_its_own():
    """Chunk payloads of an in-memory file are views of the caller's bytes (no copy); the tensors returned
    are still fresh, writable arrays that do not share the input's memory, for every codec path."""
    rng = np.random.default_rng(3)
    tensors = {"big": rng.laplace(0, 0.05, (300, 1000)).astype(np.float32),  # several chunks
               "raw8": rng.integers(0, 255, 5000).astype(np.uint8),
               "bias": rng.normal(0, 0.1, 64).astype(np.float32)}
    for kwargs in ({}, {"codec": "raw"}, {"bits": 4}):
        buf = io.BytesIO()
        rdformat.save(tensors, buf, chunk_bytes=1 << 18, **kwargs)
        data = buf.getvalue()
        for source in (data, bytearray(data), memoryview(data)):
            back = rdformat.load(source)
            for name, array in back.items():
                assert array.flags.writeable, (kwargs, name)
                assert not np.shares_memory(array, np.frombuffer(data, np.uint8)), (kwargs, name)
                array[...] = 0  # the caller may change what it got
            if kwargs.get("codec") != "raw" and "bits" not in kwargs:
                for name, a in rdformat.load(data).items():
                    assert_bit_exact(a, tensors[name])


def test_files_are_read_through_a_read_only_mapping_that_closes_with_the_reader(tmp_path, monkeypatch):
    """A path is mapped (POSIX): the tensors are the same as from bytes, owned by the caller, and nothing
    keeps the file busy after close; RDFORMAT_NO_MMAP=1 and non-regular files read with copies."""
    import os

    rng = np.random.default_rng(4)
    tensors = {"w": rng.laplace(0, 0.05, (400, 700)).astype(np.float32), "b": rng.normal(0, 1, 40).astype(np.float32)}
    path = tmp_path / "m.rdc"
    for kwargs in ({"codec": "raw"}, {"bits": 4}):  # every array is the caller's, whatever the codec
        rdformat.save(tensors, path, chunk_bytes=1 << 18, **kwargs)
        for array in rdformat.load(path).values():
            assert array.flags.writeable
            array[...] = 0
    rdformat.save(tensors, path, chunk_bytes=1 << 18)
    reader = rdformat.open(path)
    assert (reader._mmap is not None) == (os.name == "posix")
    got = dict(iter(reader))
    w = reader.get_tensor("w")
    reader.close()
    assert reader._mmap is None
    for name, array in got.items():
        assert_bit_exact(array, tensors[name])
        array[...] = 1  # the caller's own memory, writable after the mapping is gone
    assert_bit_exact(w, tensors["w"])
    path.write_bytes(b"")  # the file can be rewritten after close (an atomic replace works even before)
    with pytest.raises(RdcError):
        rdformat.load(path)  # an empty file: no mapping, a clear error
    rdformat.save(tensors, path)
    monkeypatch.setenv("RDFORMAT_NO_MMAP", "1")
    with rdformat.open(path) as plain:
        assert plain._mmap is None
        assert_bit_exact(plain.get_tensor("w"), tensors["w"])


def test_crc32_is_zlibs_with_or_without_the_zlib_ng_accelerator(monkeypatch):
    """Large buffers go to zlib-ng where it is installed: the same CRC-32 as zlib's, continuation included."""
    import zlib

    from rdformat.format import wire

    rng = np.random.default_rng(5)
    for n in (0, 1, wire.FAST_CRC_MIN_BYTES - 1, wire.FAST_CRC_MIN_BYTES, 3 * wire.FAST_CRC_MIN_BYTES + 7):
        data = rng.integers(0, 256, n).astype(np.uint8).tobytes()
        for start in (0, 0xDEADBEEF):
            expected = zlib.crc32(data, start) & 0xFFFFFFFF
            assert wire.crc32(data, start) == expected
            assert wire.crc32(memoryview(data), start) == expected
    monkeypatch.setattr(wire, "_fast_crc", [None])  # as without zlib-ng
    big = rng.integers(0, 256, 1 << 17).astype(np.uint8).tobytes()
    assert wire.crc32(big) == zlib.crc32(big) & 0xFFFFFFFF


def test_pack_records_decode_in_one_batch_with_the_tensors_around_them():
    """PACK records no longer end a decode batch: tensors before, inside and after packs come back in file
    order and bit-exact."""
    rng = np.random.default_rng(9)
    tensors = {}
    for i in range(4):
        tensors[f"l{i}.weight"] = rng.normal(0, 0.05, (300, 300)).astype(np.float32)  # a TENSOR record
        tensors[f"l{i}.bias"] = rng.normal(0, 0.05, 64).astype(np.float32)  # in a PACK record
    buf = io.BytesIO()
    rdformat.save(tensors, buf)
    data = buf.getvalue()
    with rdformat.open(data) as reader:
        kinds = [e.kind for e in reader._load_index().values()]
        got = list(reader)
    assert C.ENTRY_PACK in kinds and C.ENTRY_TENSOR in kinds
    assert [n for n, _a in got] == list(tensors)
    for name, array in got:
        assert_bit_exact(array, tensors[name])


def test_streaming_through_nonseekable_stream_and_real_pipe():
    rng = np.random.default_rng(1)
    tensors = {f"t{i}": random_array(rng, np.dtype(np.float32), (50, 30)) for i in range(5)}
    data, _ = roundtrip_bytes(tensors, metadata={"k": "v"}, aliases={"alias": "t2"}, chunk_bytes=1000)
    stream = NonSeekable(data)
    with rdformat.open(stream) as f:
        assert f.metadata == {"k": "v"}
        got = list(f)
    assert [n for n, _ in got] == ["t0", "t1", "t2", "alias", "t3", "t4"]
    for name, arr in got:
        assert_bit_exact(arr, tensors["t2" if name == "alias" else name])
    assert got[3][1] is got[2][1]  # alias returns the same object
    with rdformat.open(NonSeekable(data)) as f:
        with pytest.raises(UnsupportedFeatureError):
            f.get_tensor("t0")
    with pipe_reader(data) as p:
        back = rdformat.load(p)
    assert set(back) == set(tensors) | {"alias"}


def test_by_name_reads_only_that_tensor(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {f"t{i}": rng.standard_normal((256, 256)).astype(np.float32) for i in range(8)}
    path = tmp_path / "m.rdc"
    rdformat.save(tensors, path)
    total = path.stat().st_size
    stream = CountingFile(path)
    with rdformat.open(stream) as f:
        assert_bit_exact(f.get_tensor("t5"), tensors["t5"])
        with pytest.raises(TensorNotFoundError):
            f.get_tensor("nope")
    assert stream.bytes_read < total / 4


def test_threads_share_one_reader(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {f"t{i}": rng.standard_normal((64, 64)).astype(np.float32) for i in range(6)}
    path = tmp_path / "m.rdc"
    rdformat.save(tensors, path, chunk_bytes=4096)
    errors = []
    with rdformat.open(path) as f:
        def work(k):
            try:
                for i in range(20):
                    name = f"t{(k + i) % 6}"
                    assert_bit_exact(f.get_tensor(name), tensors[name])
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for name, arr in f:  # iteration interleaved with by-name reads
            assert_bit_exact(arr, tensors[name])
        for t in threads:
            t.join()
    assert not errors


def test_graph_metadata_aliases_structural(tmp_path):
    path = tmp_path / "g.rdc"
    tensors = {"w": np.ones((3, 3), np.float32), "shape": np.array([1, 9], np.int64)}
    rdformat.save(tensors, path, metadata={"a": [1, 2], "ü": "ß"}, graph=b"\x00graph\xff", aliases={"w2": "w"},
                  structural=["shape"])
    with rdformat.open(path) as f:
        assert f.metadata == {"a": [1, 2], "ü": "ß"}
        assert f.graph == b"\x00graph\xff" and f.graph_format == "onnx"
        assert f.aliases == {"w2": "w"}
        assert f.info("shape").structural and not f.info("w").structural
        assert f.info("w2").alias_of == "w"
        assert_bit_exact(f.get_tensor("w2"), tensors["w"])
    back = rdformat.load(path)
    assert back["w2"] is back["w"]


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(InvalidInputError):
        rdformat.save({"": np.zeros(1)}, tmp_path / "a.rdc")
    with pytest.raises(InvalidInputError):
        rdformat.save({"x" * 1025: np.zeros(1)}, tmp_path / "a.rdc")
    with pytest.raises(InvalidInputError):
        rdformat.save({"a": np.zeros(2, dtype=np.complex64)}, tmp_path / "a.rdc")
    with pytest.raises(InvalidInputError):
        rdformat.save({"a": np.zeros(2)}, tmp_path / "a.rdc", aliases={"b": "missing"})
    with pytest.raises(InvalidInputError):
        rdformat.save({"a": np.array(["s"], dtype=object)}, tmp_path / "a.rdc")
    assert not list(tmp_path.iterdir())  # no file and no temp file left behind


def test_interrupted_write_keeps_old_file(tmp_path):
    path = tmp_path / "m.rdc"
    rdformat.save({"old": np.arange(5)}, path)
    old = path.read_bytes()

    def gen():
        yield "a", np.zeros(100, np.float32)
        raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError):
        rdformat.save(gen(), path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.rdc"]


def _small_file() -> bytes:
    rng = np.random.default_rng(4)
    tensors = {
        "w": rng.laplace(0, 0.1, (20, 30)).astype(np.float32),
        "b": rng.standard_normal(7).astype(np.float16),
        "n": np.array(3, np.int64),
        "m": np.array([True, False, True]),
    }
    data, _ = roundtrip_bytes(tensors, metadata={"m": 1}, graph=b"g", aliases={"w_tied": "w"}, chunk_bytes=512)
    return data


def _read_all_ways(data: bytes) -> None:
    rdformat.load(data)
    with rdformat.open(io.BytesIO(data)) as f:
        for name in f.keys():
            f.get_tensor(name)
    rdformat.load(NonSeekable(data))


def test_every_single_byte_corruption_is_detected():
    data = _small_file()
    reference = rdformat.load(data)
    for offset in range(len(data)):
        for flip in (0x01, 0xFF):
            bad = bytearray(data)
            bad[offset] ^= flip
            bad = bytes(bad)
            for reader in (rdformat.load, lambda d: rdformat.load(NonSeekable(d))):
                try:
                    got = reader(bad)
                except RdcError:
                    continue
                raise AssertionError(f"corruption at byte {offset} (xor {flip:#x}) not detected; "
                                     f"same data: {all(np.array_equal(got[k], reference[k]) for k in reference)}")
            with pytest.raises(RdcError):
                with rdformat.open(io.BytesIO(bad)) as f:
                    for name in f.keys():
                        f.get_tensor(name)


def test_truncation_at_every_offset_raises():
    data = _small_file()
    for cut in range(len(data)):
        with pytest.raises(RdcError):
            _read_all_ways(data[:cut])


def test_not_rdc_and_version_errors():
    with pytest.raises(NotRdcError):
        rdformat.load(b"PK\x03\x04 this is a zip file, not rdc")
    with pytest.raises(NotRdcError):
        rdformat.load(b"")
    data = bytearray(_small_file())
    # text-mode transfer: CRLF -> LF
    with pytest.raises(NotRdcError, match="text mode"):
        rdformat.load(bytes(data).replace(b"\r\n", b"\n", 1))
    data[8:10] = (2).to_bytes(2, "little")
    data[12:16] = C.crc32(bytes(data[:12])).to_bytes(4, "little")
    with pytest.raises(UnsupportedVersionError, match="upgrade"):
        rdformat.load(bytes(data))


def test_newer_minor_version_is_read():
    data = bytearray(_small_file())
    data[10:12] = (7).to_bytes(2, "little")
    data[12:16] = C.crc32(bytes(data[:12])).to_bytes(4, "little")
    assert set(rdformat.load(bytes(data))) == set(rdformat.load(_small_file()))


def _insert_record_after_header(data: bytes, record: bytes) -> bytes:
    """Insert a record right after the file header, fixing every absolute offset after it."""
    # Rebuild with the writer's own index would hide bugs; patch offsets by hand instead.
    with rdformat.open(io.BytesIO(data)) as f:
        f.keys()
    shift = len(record)
    body = data[: C.FILE_HEADER_SIZE] + record + data[C.FILE_HEADER_SIZE :]
    if struct.unpack_from("<H", body, len(body) - C.END_RECORD_SIZE)[0] != C.REC_END:  # a 1.6 TAIL record
        size = struct.unpack_from("<I", body, len(body) - 8)[0] + C.TAIL_TRAILER_SIZE
        tail_at = len(body) - C.RECORD_OVERHEAD - size
        entries, _length = C.parse_tail(body[tail_at + 16 : tail_at + 16 + size], 0, None)
        return body[:tail_at] + C.tail_record([(e.kind, e.name, e.offset + shift, e.length) for e in entries], tail_at)
    end_at = len(body) - C.END_RECORD_SIZE
    index_offset, length = C.parse_end(body[end_at + 16 : end_at + 32], 0)
    index_offset += shift
    index_head = body[index_offset : index_offset + 16]
    ilen = int.from_bytes(index_head[4:12], "little")
    payload = body[index_offset + 16 : index_offset + 16 + ilen]
    entries = C.parse_index(payload, 0, None)
    new_index = C.frame(C.REC_INDEX, C.index_payload([(e.kind, e.name, e.offset + shift, e.length) for e in entries]))
    end = C.frame(C.REC_END, C.end_payload(index_offset, length + shift))
    return body[:index_offset] + new_index + end


def test_unknown_optional_record_skipped_required_refused():
    data = _small_file()
    optional = C.frame(99, b"future data")
    assert set(rdformat.load(_insert_record_after_header(data, optional))) == set(rdformat.load(data))
    with rdformat.open(io.BytesIO(_insert_record_after_header(data, optional))) as f:
        assert f.metadata == {"m": 1}
    required = C.frame(99, b"future data", flags=C.FLAG_REQUIRED)
    with pytest.raises(UnsupportedFeatureError, match="required"):
        rdformat.load(_insert_record_after_header(data, required))


def test_oversized_declared_length_is_refused_before_reading():
    # A record header (valid CRC) that declares a 2**40-byte META payload on a stream.
    head = C.record_head(C.REC_META, 1 << 40)
    with pytest.raises(RdcError):
        rdformat.load(NonSeekable(C.file_header() + head + b"x" * 100))


def test_decompression_bomb_refused():
    # A tensor declaring 2**50 float32 elements in one tiny file.
    header = C.TensorHeader("bomb", 12, (1 << 50,), 0, 1 << 20, 1 << 30, "raw", {})
    data = C.file_header() + C.frame(C.REC_TENSOR, header.to_bytes())
    with pytest.raises(RdcError):
        rdformat.load(data)
    with pytest.raises(RdcError):
        rdformat.load(data, limits=rdformat.Limits(max_tensor_bytes=1 << 62))
