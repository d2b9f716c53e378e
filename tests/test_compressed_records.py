"""Compressed META and GRAPH records (format 1.2, spec section 1.4): round trips, limits, bombs, corruption."""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

import rdformat
from rdformat.errors import CorruptDataError, LimitExceededError, UnsupportedFeatureError
from rdformat.file.reader import Limits
from rdformat.format import records as C

from helpers import NonSeekable

GRAPH = b"".join(b"\x0a\x04Conv\x12\x05conv" + str(i % 50).encode() + b"\x1a\x06weight" + bytes(40)
                 for i in range(4000))  # ~250 KB of repetitive protobuf-like bytes
META = {"producer": "test", "layers": [{"name": f"layer{i}", "kind": "conv", "stride": [1, 1]} for i in range(40)]}
TENSORS = {"w": np.arange(24, dtype=np.float32).reshape(4, 6), "b": np.array([1, 2, 3], np.int16)}


def _records(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, offset, payload) of every record, by the spec's framing."""
    out, pos = [], C.FILE_HEADER_SIZE
    while pos < len(data):
        rtype, flags, length = struct.unpack_from("<HHQ", data, pos)
        out.append((rtype, flags, pos, data[pos + 16 : pos + 16 + length]))
        pos += C.RECORD_OVERHEAD + length
    return out


def _save(**kwargs) -> bytes:
    return _write(compress=True, **kwargs)


def _write(*, compress: bool, **kwargs) -> bytes:
    """Without PACK records (format 1.3), so that the minor version shows the 1.2 features alone."""
    buf = io.BytesIO()
    kwargs.setdefault("compact", False)  # zlib records (1.2); the dictionary ones (1.5): test_compact_records.py
    with rdformat.Writer(buf, compress_records=compress, pack_records=False, **kwargs) as w:
        for name, arr in TENSORS.items():
            w.add(name, arr)
    return buf.getvalue()


def _read_all_ways(data: bytes) -> list[tuple[dict, bytes | None, str | None, dict]]:
    out = []
    for source in (data, NonSeekable(data)):
        with rdformat.open(source) as f:
            out.append((f.metadata, f.graph, f.graph_format, dict(iter(f))))
    with rdformat.open(io.BytesIO(data)) as f:
        out.append((f.metadata, f.graph, f.graph_format, {n: f.get_tensor(n) for n in f.keys()}))
    return out


def test_large_graph_and_metadata_round_trip_smaller():
    data = _save(metadata=META, graph=GRAPH, graph_format="onnx", max_minor=6)  # zlib: 1.7 would take LZMA2
    plain = _write(compress=False, metadata=META, graph=GRAPH)
    assert len(data) < len(plain) // 10  # the graph compresses well over 10x
    assert len(plain) - len(data) > len(GRAPH) * 0.9
    assert struct.unpack_from("<HH", data, 8) == (1, 2)
    recs = _records(data)
    assert [(r[0], r[1]) for r in recs[:2]] == [(C.REC_ZMETA, C.FLAG_REQUIRED), (C.REC_ZGRAPH, C.FLAG_REQUIRED)]
    for meta, graph, fmt, tensors in _read_all_ways(data):
        assert meta == META and graph == GRAPH and fmt == "onnx"
        for name, arr in TENSORS.items():
            np.testing.assert_array_equal(tensors[name], arr)


def test_compressed_payload_layout_follows_the_spec():
    """Hand-parse the payloads with the layout of spec section 1.4."""
    data = _save(metadata=META, graph=GRAPH, graph_format="onnx", max_minor=6)
    (_t1, _f1, _o1, p1), (_t2, _f2, _o2, p2) = _records(data)[:2]
    size = struct.unpack_from("<Q", p1)[0]
    text = zlib.decompress(p1[8:])
    assert size == len(text) and json.loads(text) == META
    n = struct.unpack_from("<H", p2)[0]
    assert p2[2 : 2 + n] == b"onnx"
    size = struct.unpack_from("<Q", p2, 2 + n)[0]
    assert size == len(GRAPH) and zlib.decompress(p2[2 + n + 8 :]) == GRAPH
    # the INDEX lists them as meta (3) and graph (4) entries
    with rdformat.open(io.BytesIO(data)) as f:
        assert f.keys() == list(TENSORS)


def test_hand_assembled_compressed_records_read():
    """A file assembled from the spec text alone (zlib level 1, graph format other than onnx)."""
    meta = json.dumps({"a": "x" * 300}).encode()
    blob = bytes(range(256)) * 10
    recs = [(C.REC_ZMETA, struct.pack("<Q", len(meta)) + zlib.compress(meta, 1)),
            (C.REC_ZGRAPH, C.pack_str("tflite") + struct.pack("<Q", len(blob)) + zlib.compress(blob, 1))]
    out = bytearray(C.file_header(2))
    entries = []
    for (rtype, payload), kind in zip(recs, (C.ENTRY_META, C.ENTRY_GRAPH)):
        start = len(out)
        out += C.frame(rtype, payload, C.FLAG_REQUIRED)
        entries.append((kind, "", start, len(out) - start))
    index_at = len(out)
    out += C.frame(C.REC_INDEX, C.index_payload(entries))
    out += C.frame(C.REC_END, C.end_payload(index_at, len(out) + C.END_RECORD_SIZE))
    for got_meta, graph, fmt, tensors in _read_all_ways(bytes(out)):
        assert got_meta == {"a": "x" * 300} and graph == blob and fmt == "tflite" and tensors == {}


def test_small_metadata_stays_plain_and_file_stays_1_1():
    data = _save(metadata={"arch": "mlp"}, graph=b"tiny graph")
    assert struct.unpack_from("<HH", data, 8) == (1, 1)
    assert [r[0] for r in _records(data)[:2]] == [C.REC_META, C.REC_GRAPH]
    assert rdformat.open(data).metadata == {"arch": "mlp"}


def test_compress_records_false_writes_1_1_files():
    data = _write(compress=False, metadata=META, graph=GRAPH)
    assert struct.unpack_from("<HH", data, 8) == (1, 1)
    assert [(r[0], r[1]) for r in _records(data)[:2]] == [(C.REC_META, 0), (C.REC_GRAPH, 0)]
    for meta, graph, _fmt, _t in _read_all_ways(data):
        assert meta == META and graph == GRAPH


def test_files_without_metadata_are_unchanged_1_1():
    data = _save()
    assert struct.unpack_from("<HH", data, 8) == (1, 1)
    assert all(r[0] <= C.REC_SMALL for r in _records(data))


def test_a_1_1_reader_refuses_compressed_records_cleanly():
    """A 1.1 reader does not know types 9 and 10; REQUIRED makes it fail instead of skipping them."""
    data = _save(metadata=META, graph=GRAPH)
    src = C.Source(io.BytesIO(data))
    C.read_file_header(src)
    head = C.read_record_head(src)
    assert head.rtype not in range(1, 9) and head.flags & C.FLAG_REQUIRED
    with pytest.raises(UnsupportedFeatureError, match="required; upgrade"):
        C.skip_record(src, head)  # what a 1.1 reader does with an unknown type


# ---------------------------------------------------------------------------- limits and bombs


@pytest.mark.parametrize("max_minor, graph_record", [(6, "compressed graph"), (None, "lzma graph")])
def test_reader_limits_apply_to_the_decompressed_size(max_minor, graph_record):
    data = _save(metadata=META, graph=GRAPH, max_minor=max_minor)
    meta_len = len(json.dumps(META).encode())
    zmeta_stored = _records(data)[0][3]
    assert len(zmeta_stored) < 1000 < meta_len  # stored under the cap, decompressed over it
    with pytest.raises(LimitExceededError) as exc:
        rdformat.open(data, limits=Limits(max_meta_bytes=1000))
    assert exc.value.record == "compressed meta" and exc.value.offset == C.FILE_HEADER_SIZE + C.RECORD_HEADER_SIZE
    with pytest.raises(LimitExceededError) as exc:
        rdformat.open(NonSeekable(data), limits=Limits(max_graph_bytes=len(GRAPH) - 1))
    assert exc.value.record == graph_record
    with rdformat.open(data, limits=Limits(max_meta_bytes=meta_len, max_graph_bytes=len(GRAPH))) as f:
        assert f.graph == GRAPH


def _with_zmeta(size: int, stream: bytes) -> bytes:
    """A valid file whose only record is a compressed META with the given declared size and stream."""
    out = bytearray(C.file_header(2))
    out += C.frame(C.REC_ZMETA, struct.pack("<Q", size) + stream, C.FLAG_REQUIRED)
    index_at = len(out)
    out += C.frame(C.REC_INDEX, C.index_payload([(C.ENTRY_META, "", C.FILE_HEADER_SIZE, index_at - 16)]))
    out += C.frame(C.REC_END, C.end_payload(index_at, len(out) + C.END_RECORD_SIZE))
    return bytes(out)


def test_zlib_bomb_is_stopped_at_the_declared_size_without_inflating_it():
    bomb = zlib.compress(b"{" + b" " * (64 << 20), 9)  # 64 MiB of text in ~64 KiB
    data = _with_zmeta(100, bomb)
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceededError, match="more than its declared 100 bytes") as exc:
            rdformat.open(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(data) + (1 << 20)  # the file's bytes, never the 64 MiB
    assert exc.value.record == "compressed meta" and exc.value.offset is not None


def test_declared_size_over_the_cap_is_refused_before_decompressing():
    data = _with_zmeta(5000, zlib.compress(b"{}"))
    with pytest.raises(LimitExceededError, match="reader limit"):
        rdformat.open(data, limits=Limits(max_meta_bytes=4000))
    with pytest.raises(LimitExceededError, match="format's limit"):
        rdformat.open(_with_zmeta(C.MAX_META_BYTES + 1, zlib.compress(b"{}")))


@pytest.mark.parametrize("stream,size,match", [
    (zlib.compress(b'{"a": 1}')[:-1] + b"\x00", 8, "corrupt"),  # bad Adler-32
    (b"\x78\x9c\xff\xff\xff\xff", 8, "corrupt"),  # invalid DEFLATE block type
    (zlib.compress(b'{"a": 1}')[:-5], 8, "ends early"),
    (zlib.compress(b'{"a": 1}') + b"junk", 8, "4 bytes after the zlib stream"),
    (zlib.compress(b'{"a": 1}'), 9, "decompresses to 8 bytes, 9 declared"),
    (b"", 0, "ends early"),
])
def test_corrupt_zlib_streams_are_corrupt_data(stream, size, match):
    data = _with_zmeta(size, stream)
    for source in (data, NonSeekable(data)):
        with pytest.raises(CorruptDataError, match=match) as exc:
            rdformat.open(source)
        assert exc.value.record == "compressed meta"
        assert exc.value.offset >= C.FILE_HEADER_SIZE + C.RECORD_HEADER_SIZE


def test_decompressed_metadata_must_be_a_json_object():
    """The JSON text is parsed on first use of .metadata (issue 15: lazy metadata) and by every whole read."""
    data = _with_zmeta(6, zlib.compress(b"[1, 2]"))
    with pytest.raises(CorruptDataError, match="JSON"):
        rdformat.open(data).metadata
    with pytest.raises(CorruptDataError, match="JSON"):
        rdformat.load(data)


def test_compressed_record_after_a_tensor_is_refused():
    data = _save(metadata=META)
    recs = _records(data)
    zmeta = C.frame(recs[0][0], recs[0][3], recs[0][1])
    # put the compressed META after the first tensor's record (the stream reader sees it out of place)
    first_tensor_end = recs[2][2]
    moved = data[:16] + data[16 + len(zmeta) : first_tensor_end] + zmeta + data[first_tensor_end:]
    with pytest.raises(CorruptDataError, match="unexpected compressed meta"):
        rdformat.load(NonSeekable(moved))


def test_1_1_golden_and_vectors_still_read():
    """1.1 files (no compressed records) read as before: the golden files and the 1.1 valid vectors."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "spec" / "vectors"
    # lossless16.rdc was written by format 1.6; the others are the 1.0/1.1 files
    golden = sorted(p for p in (root / "golden").glob("*.rdc") if p.name != "lossless16.rdc")
    assert len(golden) == 4
    for path in golden:
        data = path.read_bytes()
        assert struct.unpack_from("<H", data, 10)[0] <= 1
        assert all(r[0] not in (C.REC_ZMETA, C.REC_ZGRAPH) for r in _records(data))
        assert rdformat.load(data)


def test_a_graph_lzma_compresses_better_goes_in_an_xgraph_record_of_a_1_7_file():
    data = _save(metadata=META, graph=GRAPH, graph_format="onnx")
    zlib_file = _save(metadata=META, graph=GRAPH, graph_format="onnx", max_minor=6)
    assert len(data) < len(zlib_file) - C.ZLIB_MIN_SAVING
    assert struct.unpack_from("<HH", data, 8) == (1, C.VERSION_MINOR_LZMA)
    recs = _records(data)
    assert (recs[1][0], recs[1][1]) == (C.REC_XGRAPH, C.FLAG_REQUIRED)
    for meta, graph, fmt, tensors in _read_all_ways(data):
        assert meta == META and graph == GRAPH and fmt == "onnx"


def _xgraph_file(edit) -> bytes:
    """A 1.7 file (assembled from the spec: XGRAPH, INDEX, END) whose XGRAPH payload is
    ``edit(format bytes, size, dictionary size, stream)``."""
    payload = C.lzma_pack(GRAPH)
    size, dict_size = struct.unpack_from("<QI", payload, 0)
    out = bytearray(C.file_header(C.VERSION_MINOR_LZMA))
    out += C.frame(C.REC_XGRAPH, edit(C.pack_str("onnx"), size, dict_size, payload[12:]), C.FLAG_REQUIRED)
    index_at = len(out)
    out += C.frame(C.REC_INDEX, C.index_payload([(C.ENTRY_GRAPH, "", C.FILE_HEADER_SIZE, index_at - C.FILE_HEADER_SIZE)]))
    out += C.frame(C.REC_END, C.end_payload(index_at, len(out) + C.END_RECORD_SIZE))
    return bytes(out)


def test_a_hand_assembled_xgraph_file_reads():
    data = _xgraph_file(lambda h, n, d, s: h + struct.pack("<QI", n, d) + s)
    for _meta, graph, fmt, tensors in _read_all_ways(data):
        assert graph == GRAPH and fmt == "onnx" and tensors == {}


@pytest.mark.parametrize("edit, error, text", [
    # a bomb: the stream holds the whole graph, the record declares a tenth of it
    (lambda h, n, d, s: h + struct.pack("<QI", n // 10, max(4096, n // 10)) + s, rdformat.errors.LimitExceededError,
     "more than"),
    (lambda h, n, d, s: h + struct.pack("<QI", n + 1, d) + s, rdformat.errors.CorruptDataError, "declared"),
    (lambda h, n, d, s: h + struct.pack("<QI", n, d) + s[: len(s) // 2], rdformat.errors.CorruptDataError, "ends early|corrupt"),
    (lambda h, n, d, s: h + struct.pack("<QI", n, d) + s + b"x", rdformat.errors.CorruptDataError, "after the LZMA2"),
    (lambda h, n, d, s: h + struct.pack("<QI", n, 1 << 30) + s, rdformat.errors.CorruptDataError, "dictionary size"),
    (lambda h, n, d, s: h + struct.pack("<QI", n, d) + bytes([0xFF]) + s[1:], rdformat.errors.CorruptDataError, "corrupt"),
    (lambda h, n, d, s: h + struct.pack("<QI", 1 << 40, d) + s, rdformat.errors.LimitExceededError, "over"),
])
def test_hostile_xgraph_records_get_located_errors(edit, error, text):
    data = _xgraph_file(edit)
    with pytest.raises(error, match=text) as info:
        with rdformat.open(data) as f:
            f.graph
    assert info.value.offset is not None and info.value.record == "lzma graph"
    with pytest.raises(error, match=text):  # a stream fails the same way
        with rdformat.open(NonSeekable(data)) as f:
            dict(iter(f))
