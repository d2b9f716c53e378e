"""Format 1.6 (issue 16): bytesplit plane mode 5, the top byte of floats coded together with the top mantissa
bits of the byte below it (spec 5.2)."""

from __future__ import annotations

import io
import struct

import ml_dtypes
import numpy as np
import pytest

import rdformat
from rdformat.codecs import bytesplit as BS
from rdformat.errors import CorruptDataError, RdcError
from rdformat.format import records as C
from rdformat.format.dtypes import by_numpy


def _weights(dtype, n: int = 6000, seed: int = 3) -> np.ndarray:
    # per-row scales, like trained layers: the top mantissa bit then depends on the exponent
    rng = np.random.default_rng(seed)
    rows = rng.laplace(0, 1, (n // 100, 100)) * np.exp(rng.normal(0, 1, (n // 100, 1))) * 0.05
    return rows.reshape(-1).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16])
def test_joint_planes_round_trip_and_code_smaller(dtype):
    x = _weights(dtype)
    info = by_numpy(x.dtype)
    joint = BS.ByteSplitCodec("rotl1").encode_chunk(x, info)
    apart = BS.ByteSplitCodec("rotl1", joint=False).encode_chunk(x, info)
    assert BS.PLANE_ANS_JOINT in BS.plane_modes(joint, x.size, info.itemsize)
    assert BS.format_minor(joint, x.size, info.itemsize) == 6 and BS.format_minor(apart, x.size, info.itemsize) < 6
    assert len(joint) < len(apart)
    out = BS.ByteSplitCodec("rotl1").decode_chunk(memoryview(joint), x.size, info)
    assert out.tobytes() == x.tobytes()


def test_joint_planes_only_on_small_chunks(monkeypatch):
    """Chunks over JOINT_MAX_ELEMENTS keep the pair mode (decode speed of large tensors); the same data in
    a chunk under the limit gets the joint planes."""
    x = _weights(np.float32, n=12000)
    info = by_numpy(x.dtype)
    codec = BS.ByteSplitCodec("rotl1")
    assert BS.PLANE_ANS_JOINT in BS.plane_modes(codec.encode_chunk(x, info), x.size, info.itemsize)
    monkeypatch.setattr(BS, "JOINT_MAX_ELEMENTS", x.size - 1)
    big = codec.encode_chunk(x, info)
    assert BS.PLANE_ANS_JOINT not in BS.plane_modes(big, x.size, info.itemsize)
    assert BS.format_minor(big, x.size, info.itemsize) < 6
    assert codec.decode_chunk(memoryview(big), x.size, info).tobytes() == x.tobytes()


@pytest.mark.parametrize("width", [1, 3, 5, 7])
def test_packed_low_bits_round_trip(width):
    v = np.random.default_rng(width).integers(0, 1 << width, 1001).astype(np.uint8)
    packed = np.frombuffer(BS._pack_bits(v, width), np.uint8)
    assert packed.size == -(-1001 * width // 8)
    assert BS._unpack_bits(packed, 1001, width).tolist() == v.tolist()


def _joint_chunk(n: int = 3000, seed: int = 3) -> tuple[bytes, int, int]:
    """A float32 chunk whose planes 2-3 are one joint plane; returns (data, offset of the mode byte, count)."""
    x = _weights(np.float32, n, seed)
    data = BS.ByteSplitCodec("rotl1").encode_chunk(x, by_numpy(x.dtype))
    pos = 0
    for _k in range(2):
        mode = data[pos]
        assert mode in (BS.PLANE_RAW, BS.PLANE_CONSTANT)
        pos += 1 + (x.size if mode == BS.PLANE_RAW else 1)
    assert data[pos] == BS.PLANE_ANS_JOINT
    return data, pos, x.size


def _decode(data: bytes, count: int) -> np.ndarray:
    return BS.ByteSplitCodec("rotl1").decode_chunk(memoryview(data), count, by_numpy(np.dtype(np.float32)))


def test_every_cut_and_byte_flip_of_a_joint_chunk_is_an_rdc_error_or_other_bytes():
    data, at, count = _joint_chunk(2000, seed=5)
    good = _decode(data, count).tobytes()
    for cut in range(len(data)):
        with pytest.raises(RdcError):
            _decode(data[:cut], count)
    for i in range(at, len(data)):  # the joint plane: any damage is refused or decodes to other bytes
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= flip
            try:
                out = _decode(bytes(bad), count)
            except RdcError:
                continue
            assert out.tobytes() != good or bad[i] == data[i]


@pytest.mark.parametrize("t, match", [(0, "joined bits"), (8, "joined bits")])
def test_joined_bit_count_out_of_range(t, match):
    data, at, count = _joint_chunk()
    bad = data[: at + 1] + bytes([t]) + data[at + 2 :]
    with pytest.raises(CorruptDataError, match=match):
        _decode(bad, count)


def test_joint_mode_only_at_the_second_highest_plane():
    data, at, count = _joint_chunk()
    # plane 0 raw, then the joint plane claimed at plane 1: refused before anything is decoded
    x = np.zeros(count, np.float32)
    bad = bytes([BS.PLANE_RAW]) + bytes(count) + data[at:]
    with pytest.raises(CorruptDataError, match="only at plane 2"):
        _decode(bad, count)
    del x


def test_nonzero_padding_bits_and_trailing_bytes_are_corrupt():
    data, _at, count = _joint_chunk(2900)  # 2900 * 7 bits: the last byte has four unused bits
    assert (count * 7) % 8
    bad = bytearray(data)
    bad[-1] |= 0x80
    with pytest.raises(CorruptDataError, match="unused bits"):
        _decode(bytes(bad), count)
    with pytest.raises(CorruptDataError, match="trailing"):
        _decode(data + b"\x00", count)


def test_joint_frequency_over_its_top_symbol_is_corrupt():
    data, at, count = _joint_chunk()
    t = data[at + 1]
    _segs, pos = BS._read_segments(data, at + 2, count, 2)
    tops, after = rdformat.entropy.FrequencyTable.from_bytes(data, pos)
    first = int(tops.freqs[0])
    big = C.leb128(first + 1)
    _g, end = BS._read_varint(data, after, "g")
    bad = data[:after] + big + data[end:]
    with pytest.raises(CorruptDataError):
        _decode(bad, count)
    assert t >= 1


def test_writer_uses_joint_planes_only_for_1_6_files():
    x = {"w": _weights(np.float32, 30000)}
    new, old = io.BytesIO(), io.BytesIO()
    rdformat.save(x, new)
    with rdformat.Writer(old, max_minor=5) as w:
        w.add("w", x["w"])
    assert struct.unpack_from("<H", new.getvalue(), 10)[0] == 6
    assert struct.unpack_from("<H", old.getvalue(), 10)[0] <= 5
    assert len(new.getvalue()) < len(old.getvalue())
    for data in (new.getvalue(), old.getvalue()):
        assert rdformat.load(data)["w"].tobytes() == x["w"].tobytes()


def test_table_sizes_counted_without_writing_equal_the_written_sizes():
    """The encoder sizes candidate tables without writing them (FrequencyTable.stored_size,
    bytesplit._joint_table_size): the counts must equal the bytes written, or it would pick wrongly."""
    from rdformat.codecs import bytesplit as B
    from rdformat.entropy import FrequencyTable

    rng = np.random.default_rng(0)
    for _ in range(200):
        t = int(rng.integers(1, 8))
        top = int(rng.choice([2, 256 << t, 1 << 16, 1 << 31]))
        symbols = np.unique(rng.integers(0, top, int(rng.integers(1, 3000))))
        if symbols.size < 2:
            continue
        table = FrequencyTable.from_counts(symbols, rng.integers(1, 100_000, symbols.size),
                                           precision=int(rng.integers(max(1, int(symbols.size - 1).bit_length()), 17)))
        assert table.stored_size() == len(table.to_bytes())
        if symbols[-1] < 256 << t:
            assert B._joint_table_size(table, t) == len(B._joint_table_bytes(table, t))


def test_planes_a_joint_plane_replaces_are_sized_but_not_coded(monkeypatch):
    # The top two planes of a chunk the joint plane clearly beats are only estimated: one ANS block (the joint
    # one) is coded. Where the joint plane does not win, the planes are coded as before: a chunk written with
    # joint=False and one whose joint attempt is refused are the same bytes.
    rng = np.random.default_rng(5)  # exponents 120..127 whose top 3 mantissa bits repeat them: joint wins by far
    e = rng.integers(120, 128, 20_000).astype(np.uint32)
    bits = (rng.integers(0, 2, e.size).astype(np.uint32) << 31) | (e << 23) | ((e & 7) << 20) \
        | rng.integers(0, 1 << 20, e.size).astype(np.uint32)
    x = bits.view(np.float32)
    info = by_numpy(x.dtype)
    calls = []
    real = BS.ans.encode
    monkeypatch.setattr(BS.ans, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    joint = BS.ByteSplitCodec("rotl1").encode_chunk(x, info)
    assert BS.PLANE_ANS_JOINT in BS.plane_modes(joint, x.size, info.itemsize) and len(calls) == 1
    monkeypatch.setattr(BS, "_encode_joint", lambda *a: None)
    assert BS.ByteSplitCodec("rotl1").encode_chunk(x, info) == BS.ByteSplitCodec("rotl1", joint=False).encode_chunk(x, info)


def _pair_table_precision(chunk: bytes, count: int, itemsize: int) -> int | None:
    """The precision of the pair table (plane mode 3) of a bytesplit chunk, None without one."""
    plan = BS.ByteSplitCodec("rotl1").plan_chunk(memoryview(chunk), count, by_numpy(np.dtype(f"<f{itemsize}")))
    pairs = [table for _block, n, table, dt in plan.blocks if dt == np.uint16 and n == -(-count // 2)]
    return pairs[0].precision if pairs else None


def test_pair_tables_use_the_fast_precision_unless_fine_codes_smaller():
    """Large float chunks code their exponent plane as byte pairs at PAIR_PRECISION (a decoder's slot table
    stays small); a plane of many rare pairs, which a coarse table codes badly, keeps precision 16."""
    x = _weights(np.float32, n=300_000)  # over JOINT_MAX_ELEMENTS: the pair mode
    info = by_numpy(x.dtype)
    codec = BS.ByteSplitCodec("rotl1")
    chunk = codec.encode_chunk(x, info)
    assert BS.plane_modes(chunk, x.size, 4) >= {BS.PLANE_ANS_PAIRS}
    assert _pair_table_precision(chunk, x.size, 4) == BS.PAIR_PRECISION < 16
    assert codec.decode_chunk(memoryview(chunk), x.size, info).tobytes() == x.tobytes()
    # 3% outliers spread over 2**-20..2**20: over PAIR_FINE_SYMBOLS pairs, most of them rare, which precision
    # 14 codes over 0.5% larger
    rng = np.random.default_rng(5)
    wide = rng.laplace(0, 0.05, 1 << 20)
    outliers = rng.random(wide.size) < 0.03
    wide[outliers] *= np.exp2(rng.integers(-20, 20, int(outliers.sum())))
    wide = wide.astype(np.float32)
    chunk = codec.encode_chunk(wide, info)
    assert _pair_table_precision(chunk, wide.size, 4) == 16
    assert codec.decode_chunk(memoryview(chunk), wide.size, info).tobytes() == wide.tobytes()
