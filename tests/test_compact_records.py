"""Format 1.5 (issue 16): DMETA and ZPACK records (deflate with the preset dictionary) and bytesplit's shifted
exponent plane (mode 4): round trips, version rules, and hostile segment tables."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

import rdformat
from rdformat.codecs import bytesplit as BS
from rdformat.errors import CorruptDataError, RdcError
from rdformat.format import records as C
from rdformat.format.dtypes import by_numpy


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(16)
    return {"conv1.weight": (rng.laplace(0, 0.2, (8, 3, 3, 3))).astype(np.float32),
            "conv1.bias": (rng.laplace(0, 0.01, 8)).astype(np.float32),
            "conv2.weight": (rng.laplace(0, 3.0, (16, 8, 3, 3))).astype(np.float32),
            "conv2.bias": np.zeros(16, np.float32),
            "steps": np.arange(4, dtype=np.int64)}


def _write(tensors, **options) -> bytes:
    buf = io.BytesIO()
    with rdformat.Writer(buf, metadata={"rdformat": {"source_format": "pytorch", "adapter_version": 1}},
                         **options) as w:
        for name, arr in tensors.items():
            w.add(name, arr, structural=name == "steps")
    return buf.getvalue()


def _types(data: bytes) -> list[int]:
    out, pos = [], C.FILE_HEADER_SIZE
    while pos < len(data):
        rtype, _flags, length = struct.unpack_from("<HHQ", data, pos)
        out.append(rtype)
        pos += C.RECORD_OVERHEAD + length
    return out


def test_compact_records_round_trip_smaller_and_minor_5():
    tensors = _model()
    compact, plain = _write(tensors, max_minor=5), _write(tensors, compact=False)
    assert _types(compact) == [C.REC_DMETA, C.REC_ZPACK, C.REC_INDEX, C.REC_END]
    assert struct.unpack_from("<H", compact, 10)[0] == 5
    assert C.REC_DMETA not in _types(plain) and C.REC_ZPACK not in _types(plain)
    assert struct.unpack_from("<H", plain, 10)[0] == 3
    assert len(compact) < len(plain)
    for data in (compact, plain):
        back = rdformat.load(data)
        with rdformat.open(io.BytesIO(data)) as f:
            assert f.metadata["rdformat"]["source_format"] == "pytorch"
            by_name = {n: f.get_tensor(n) for n in f.keys()}
        for n, a in tensors.items():
            assert back[n].tobytes() == a.tobytes() and by_name[n].tobytes() == a.tobytes()


@pytest.mark.parametrize("shift", [0, 1, 127, 128, 254])
def test_shift_is_a_bijection_that_keeps_zero(shift):
    b = np.arange(256, dtype=np.uint8)
    y = BS._shift_bytes(b, np.full(256, shift, np.int32))
    assert sorted(y.tolist()) == list(range(256)) and y[0] == 0
    assert BS._unshift(y, ((256, shift),)).tolist() == b.tolist()


def test_segments_code_tensors_of_different_scales_smaller():
    parts = [np.random.default_rng(i).laplace(0, s, 500).astype(np.float32) for i, s in enumerate((1e-3, 1.0, 40.0))]
    flat = np.concatenate(parts)
    codec = BS.ByteSplitCodec("rotl1")
    info = by_numpy(flat.dtype)
    plain = codec.encode_chunk(flat, info)
    shifted = codec.encode_chunk(flat, info, segments=[p.size for p in parts])
    assert BS.uses_shifted(shifted, flat.size, 4) and not BS.uses_shifted(plain, flat.size, 4)
    assert len(shifted) < len(plain)
    assert codec.decode_chunk(memoryview(shifted), flat.size, info).tobytes() == flat.tobytes()


def _shifted_chunk() -> tuple[bytes, int, int]:
    parts = [np.random.default_rng(i).laplace(0, s, 64).astype(np.float32) for i, s in enumerate((1e-2, 5.0))]
    flat = np.concatenate(parts)
    data = BS.ByteSplitCodec("rotl1").encode_chunk(flat, by_numpy(flat.dtype), segments=[64, 64])
    # planes 0..2: find where plane 3 (mode 4) starts by walking the earlier planes
    pos = 0
    for _k in range(3):
        mode = data[pos]
        pos += 1 + (flat.size if mode == BS.PLANE_RAW else 1 if mode == BS.PLANE_CONSTANT else 0)
        assert mode in (BS.PLANE_RAW, BS.PLANE_CONSTANT)
    assert data[pos] == BS.PLANE_ANS_SHIFTED
    return data, pos, flat.size


@pytest.mark.parametrize("segments, match", [
    (b"\x00", "0 segments"), (b"\x03\x40\x00\x40\x00\x01\x00", "does not fit"),
    (b"\x02\x40\x00\x3f\x00", "cover"), (b"\x02\x40\x00\x40\xff", "over 254"),
    (b"\x02\x00\x00\x80\x00", "does not fit"), (b"\x02\xc0", "does not fit|truncated"), (b"\x81\x00", "shortest"),
])
def test_hostile_segment_tables_are_corrupt_data(segments, match):
    data, at, count = _shifted_chunk()
    _segs, after = BS._read_segments(data, at + 1, count, 3)
    bad = data[: at + 1] + segments + data[after:]
    with pytest.raises(CorruptDataError, match=match):
        BS.ByteSplitCodec("rotl1").decode_chunk(memoryview(bad), count, by_numpy(np.dtype(np.float32)))


def test_every_cut_of_a_shifted_chunk_is_an_rdc_error():
    data, _at, count = _shifted_chunk()
    info = by_numpy(np.dtype(np.float32))
    for cut in range(len(data)):
        with pytest.raises(RdcError):
            BS.ByteSplitCodec("rotl1").decode_chunk(memoryview(data[:cut]), count, info)


def test_zpack_directory_bomb_is_refused_before_inflating():
    payload = C.leb128(C.MAX_PACK_BYTES + 1) + C.leb128(2) + b"\x03\x00"
    with pytest.raises(rdformat.errors.LimitExceededError):
        C.parse_pack(payload, 0, compressed=True)


def test_refined_shifts_code_no_larger_than_median_shifts():
    # small vectors next to large tensors: a shift of their own costs more than it saves, which the refinement
    # sees (merging them into a neighbour's run) and the median rule does not
    rng = np.random.default_rng(7)
    parts = [rng.laplace(0, s, n).astype(np.float32) for s, n in ((0.05, 900), (0.3, 10), (0.04, 1500), (2.0, 12))]
    flat = np.concatenate(parts)
    segments = [p.size for p in parts]
    words = flat.view("<u4")
    plane = ((words << 1) | (words >> 31)).view(np.uint8).reshape(-1, 4)[:, 3].copy()
    medians = [(int(np.median(p[p != 0])) - BS.SHIFT_CENTRE) % 255
               for p in np.split(plane, np.cumsum(segments)[:-1])]
    refined = BS._refine_shifts(plane, segments, medians)
    assert refined != medians
    by_median = BS._encode_shifted_with(plane, segments, medians, 14)
    chosen = BS._encode_shifted(plane, segments, 14)
    assert len(chosen) <= len(by_median)
    info = by_numpy(flat.dtype)
    data = BS.ByteSplitCodec("rotl1").encode_chunk(flat, info, segments=segments)
    assert BS.ByteSplitCodec("rotl1").decode_chunk(memoryview(data), flat.size, info).tobytes() == flat.tobytes()
