"""Format 1.6 (issue 16): the TAIL record, a compact index and the end of the file in one record (spec 3.1)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

import rdformat
from rdformat.errors import CorruptDataError, RdcError, TruncatedError
from rdformat.format import records as C

from helpers import NonSeekable


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(16)
    return {"conv1.weight": rng.laplace(0, 0.1, (8, 3, 3, 3)).astype(np.float32),
            "conv1.bias": rng.laplace(0, 0.01, 8).astype(np.float32),
            "fc.weight": rng.laplace(0, 0.05, (300, 40)).astype(np.float32)}


def _write(tensors: dict, target=None, **options) -> bytes:
    buf = io.BytesIO() if target is None else target
    # chunks of 4 KiB: fc.weight takes 12 CHUNK records, so the TAIL lists its entries (more than
    # UNINDEXED_RECORDS records)
    with rdformat.Writer(buf, metadata={"arch": "t"}, chunk_bytes=4096, **options) as w:
        for name, arr in tensors.items():
            w.add(name, arr)
        w.add_alias("tied", "fc.weight")
    return buf.getvalue()


def test_tail_ends_the_file_smaller_than_index_and_end_and_reads_alike():
    tensors = _model()
    tail, old = _write(tensors), _write(tensors, max_minor=5)
    assert struct.unpack_from("<H", tail, 10)[0] == C.VERSION_MINOR_TAIL == 6
    assert struct.unpack_from("<H", old, 10)[0] == 5  # no 1.6 structure: the file stays 1.5
    assert struct.unpack_from("<H", old, len(old) - C.END_RECORD_SIZE)[0] == C.REC_END
    # INDEX (u64 fields) + END (36 bytes) against one TAIL record of varints
    assert len(old) - len(tail) >= 60
    for data in (tail, old):
        for source in (data, NonSeekable(data)):
            back = rdformat.load(source)
            assert list(back) == list(tensors) + ["tied"]
            for n, a in tensors.items():
                assert back[n].tobytes() == a.tobytes()
        with rdformat.open(io.BytesIO(data)) as f:
            assert f.keys() == list(tensors) + ["tied"] and f.aliases == {"tied": "fc.weight"}
            assert f.get_tensor("conv1.bias").tobytes() == tensors["conv1.bias"].tobytes()


def test_tail_file_inside_a_larger_stream_reads_by_name():
    data = _write(_model())
    stream = io.BytesIO(b"prefix" + data)
    stream.seek(6)
    with rdformat.open(stream) as f:
        assert f.get_tensor("fc.weight").tobytes() == _model()["fc.weight"].tobytes()


def test_unseekable_target_announces_the_newest_minor():
    out = io.BytesIO()

    class Pipe(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            return out.write(b)

    with rdformat.Writer(Pipe(), metadata={"a": 1}) as w:
        w.add("x", np.arange(10, dtype=np.float32))
    data = out.getvalue()
    assert struct.unpack_from("<H", data, 10)[0] == C.VERSION_MINOR == 7
    assert rdformat.load(data)["x"].tolist() == list(range(10))


def _tail_payload(data: bytes) -> tuple[int, bytes]:
    body = struct.unpack_from("<I", data, len(data) - 8)[0]
    at = len(data) - C.RECORD_OVERHEAD - C.TAIL_TRAILER_SIZE - body
    return at, data[at + C.RECORD_HEADER_SIZE : len(data) - 4]


def test_parse_tail_hostile_payloads_raise_rdc_errors_only():
    data = _write(_model())
    at, payload = _tail_payload(data)
    entries, length = C.parse_tail(payload, 0, len(data))
    assert length == len(data) and [e.kind for e in entries] == [C.ENTRY_META, C.ENTRY_PACK, C.ENTRY_TENSOR,
                                                                 C.ENTRY_ALIAS]
    rng = np.random.default_rng(0)
    for cut in range(len(payload)):  # every truncation of the payload
        with pytest.raises(RdcError):
            C.parse_tail(payload[:cut], 0, len(data))
    for _ in range(3000):  # flipped and set bytes: an RdcError or entries inside the stated file
        bad = bytearray(payload)
        for _k in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(len(bad)))] = int(rng.integers(256))
        try:
            got, flen = C.parse_tail(bytes(bad), 0, None)
        except RdcError:
            continue
        assert all(C.FILE_HEADER_SIZE <= e.offset and e.offset + e.length <= flen for e in got)


@pytest.mark.parametrize("edit, error, match", [
    (lambda p: p[:-4] + struct.pack("<I", len(p) - 3), CorruptDataError, "trailer states"),
    (lambda p: C.leb128(1) + p[1:], CorruptDataError, None),  # file length varint: 2 bytes -> 1
    (lambda p: p[:-4] + b"\x00" + struct.pack("<I", len(p) - 3), CorruptDataError, "trailing bytes"),
    (lambda p: b"\x00", CorruptDataError, "shorter than"),
])
def test_malformed_tail_fields_are_named_errors(edit, error, match):
    data = _write(_model())
    at, payload = _tail_payload(data)
    bad = edit(payload)
    with pytest.raises(error, match=match):
        C.parse_tail(bad, at + 16, len(data))


def test_damaged_tail_trailer_or_header_by_name():
    data = _write(_model())
    for offset in (len(data) - 8, len(data) - 5):  # the u32 trailer
        for value in (0, 0xFF):
            bad = bytearray(data)
            bad[offset] = value if bad[offset] != value else value ^ 1
            with pytest.raises((TruncatedError, CorruptDataError, rdformat.errors.ChecksumError)):
                with rdformat.open(io.BytesIO(bytes(bad))) as f:
                    f.keys()
    # a trailer claiming more than the file: refused before reading anything it points to
    bad = data[:-8] + struct.pack("<I", 1 << 31) + data[-4:]
    with pytest.raises(TruncatedError):
        with rdformat.open(io.BytesIO(bad)) as f:
            f.keys()


def test_a_few_records_are_not_indexed_and_read_by_walking():
    tensors = {"a": np.arange(10, dtype=np.float32), "b": np.ones((3, 4), np.float16)}
    buf = io.BytesIO()
    with rdformat.Writer(buf, metadata={"m": 1}) as w:
        for name, arr in tensors.items():
            w.add(name, arr)
        w.add_alias("c", "a")
    data = buf.getvalue()
    _at, payload = _tail_payload(data)
    assert C.parse_tail(payload, 0, len(data))[0] == []  # count 0: not indexed
    with rdformat.open(io.BytesIO(data)) as f:
        assert f.keys() == ["a", "b", "c"] and f.aliases == {"c": "a"} and f.metadata == {"m": 1}
        assert f.get_tensor("b").tobytes() == tensors["b"].tobytes()
    # an unknown REQUIRED record among them: the walk refuses it as iteration does
    required = C.frame(99, b"future", flags=C.FLAG_REQUIRED)
    at = len(data) - len(C.frame(C.REC_TAIL, payload))
    bad = data[:at] + required + C.tail_record([], at + len(required))
    for reader in (lambda d: rdformat.open(io.BytesIO(d)).keys(), rdformat.load):
        with pytest.raises(rdformat.errors.UnsupportedFeatureError):
            reader(bad)


@pytest.mark.parametrize("max_minor", [1, 2, 3, 4, 5, 6])
def test_max_minor_bounds_the_file_version(max_minor):
    tensors = {**_model(), "s": np.arange(3, dtype=np.int16)}
    meta = {"rdformat": {"source_format": "pytorch", "adapter_version": 1, "modules": [{"version": 1}]},
            "note": "x" * 200}  # long enough to be compressed where the format allows
    for target in (io.BytesIO(), None):
        out = io.BytesIO()
        sink = out if target is not None else type("Pipe", (), {"write": lambda self, b: out.write(b),
                                                               "flush": lambda self: None})()
        with rdformat.Writer(sink, metadata=meta, max_minor=max_minor) as w:
            for name, arr in tensors.items():
                w.add(name, arr)
        data = out.getvalue()
        assert struct.unpack_from("<H", data, 10)[0] <= max_minor
        back = rdformat.load(data)
        assert all(back[n].tobytes() == a.tobytes() for n, a in tensors.items())


def test_max_minor_out_of_range_or_below_a_needed_feature_is_refused():
    for bad in (0, C.VERSION_MINOR + 1):
        with pytest.raises(rdformat.errors.InvalidInputError, match="max_minor"):
            rdformat.Writer(io.BytesIO(), max_minor=bad)
    with pytest.raises(rdformat.errors.InvalidInputError, match="layered"):
        rdformat.Writer(io.BytesIO(), layered=True, max_minor=2)
