"""The compiled (numba) kernels against the numpy reference: bit-exact results, safe failure on corrupt input.

Covers ``rdformat.entropy.ans_numba`` (ANS block decode/encode) and ``rdformat.codecs.kernels_numba``
(bytesplit interleaving, sq/dq group gathering, dq reconstruction). Skipped when numba is not installed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

from hypothesis import given, settings, strategies as st  # noqa: E402

import rdformat  # noqa: E402
from rdformat import errors  # noqa: E402
from rdformat.codecs import kernels_numba as kn  # noqa: E402
from rdformat.entropy import FrequencyTable, ans  # noqa: E402
from rdformat.entropy import ans_numba as an  # noqa: E402

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"


def random_table(rng: np.random.Generator, precision: int, m: int) -> FrequencyTable:
    symbols = np.sort(rng.choice(max(2 * m, 1000), size=m, replace=False))
    return FrequencyTable.from_counts(symbols, rng.pareto(1.0, size=m) + 0.01, precision=precision)


def sample(rng: np.random.Generator, table: FrequencyTable, n: int) -> np.ndarray:
    p = table.freqs / table.freqs.sum()
    return rng.choice(table.symbols, size=n, p=p).astype(np.int64)


def numba_encode(values: np.ndarray, table: FrequencyTable, lanes: int) -> bytes:
    ranks = np.searchsorted(table.symbols, values)
    code, size, out = an.encode_block(ranks, table.freqs, table.precision, lanes)
    assert code == an.OK
    return out[:size].tobytes()


def numba_decode(block: bytes, count: int, table: FrequencyTable, dtype=np.uint32,
                 expand: bool = True) -> tuple[tuple, np.ndarray]:
    """The compiled decoder's status and output; ``expand=False``: the table without slots (searched)."""
    out = np.full(count, 0xAB, dtype=dtype)
    tables = an.decode_tables_for(table) if expand else an.build_decode_tables(
        [table.precision], [table.freqs], [table.symbols], [False])
    status = an.decode_block(np.frombuffer(block, np.uint8), count, tables, out)
    return status, out


def reference_error(block: bytes, count: int, table: FrequencyTable, dtype=np.uint32):
    """(error class name, offset) of the numpy decoder, or (None, decoded array)."""
    try:
        return None, ans.decode(block, count, table, backend="numpy", out_dtype=dtype)
    except errors.RdcError as exc:
        return type(exc).__name__, exc.offset


def assert_same_outcome(block: bytes, count: int, table: FrequencyTable, dtype=np.uint32) -> None:
    """Both compiled lookups (slots and search) agree with the numpy decoder, errors included."""
    kind, detail = reference_error(block, count, table, dtype)
    for expand in (True, False):
        _assert_outcome(numba_decode(block, count, table, dtype, expand), kind, detail)


def _assert_outcome(got: tuple, kind, detail) -> None:
    status, out = got
    if kind is None:
        assert status[0] == an.OK, status
        assert np.array_equal(out, detail)
    else:
        assert status[0] != an.OK
        assert an.ERROR_CLASS[status[0]] == kind
        assert (None if status[3] < 0 else status[3]) == detail


# ----------------------------------------------------------------------------------------------------
# bit-exactness
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", range(1, 17))
def test_round_trip_every_precision(precision: int) -> None:
    rng = np.random.default_rng(precision)
    for m in sorted({1, 2, min(3, 1 << precision), min(40, 1 << precision), 1 << precision}):
        table = random_table(rng, precision, m)
        for n, lanes in ((0, 1), (1, 1), (7, 3), (2000, 1), (2000, 17), (2000, 2000)):
            values = sample(rng, table, n)
            block = ans.encode(values, table, lanes=lanes if n else None, backend="numpy")
            assert numba_encode(values, table, lanes) == block
            status, out = numba_decode(block, n, table)
            assert status == (an.OK, -1, -1, -1)
            assert np.array_equal(out, values)


def test_every_lane_remainder_decodes_and_reports_its_bad_lane() -> None:
    """Lanes run eight at a time while no lane can run out of words, then four at a time and the last 1-3
    together: every lane count 1..19 decodes bit-exactly (with a partial last step), and a corrupted lane
    among the last ones is reported as the numpy decoder reports it."""
    rng = np.random.default_rng(23)
    table = random_table(rng, 12, 30)
    for lanes in range(1, 20):
        n = 97 * lanes + int(rng.integers(lanes))  # rest = n % lanes lanes take one more symbol
        values = sample(rng, table, n)
        block = ans.encode(values, table, lanes=lanes, backend="numpy")
        status, out = numba_decode(block, n, table)
        assert status == (an.OK, -1, -1, -1) and np.array_equal(out, values), lanes
        last_lane_word = 4 + 4 * lanes + 4 * int(np.frombuffer(block[4:4 + 4 * lanes], "<u4")[:-1].sum())
        bad = bytearray(block)
        bad[last_lane_word] ^= 0x10  # the first word of the last lane
        expected = decode_error(bytes(bad), n, table, "numpy")
        assert decode_error(bytes(bad), n, table, "numba") == expected and expected is not None, lanes


def decode_error(block: bytes, n: int, table: FrequencyTable, backend: str) -> tuple | None:
    """(error class, offset) of decoding ``block`` with ``backend``, or None if it decodes."""
    with ans.use_backend(backend):
        try:
            ans.decode(block, n, table)
        except errors.RdcError as exc:
            return type(exc), exc.offset
    return None


def test_large_alphabet_and_default_lanes() -> None:
    rng = np.random.default_rng(5)
    table = random_table(rng, 16, 65536)
    values = sample(rng, table, 300_000)
    block = ans.encode(values, table, backend="numpy")
    lanes = int(np.frombuffer(block[:4], "<u4")[0])
    assert lanes > 1
    assert numba_encode(values, table, lanes) == block
    status, out = numba_decode(block, values.size, table)
    assert status[0] == an.OK and np.array_equal(out, values)


@pytest.mark.parametrize("precision", [1, 5, 12, 13, 16])
def test_tables_without_slots_decode_through_buckets_or_search(precision: int) -> None:
    """A table decoded without its 2**Q slots: blocks of enough symbols go through buckets (the first rank
    of each range of states, then steps up the cumulative starts), short ones through a binary search.
    Both equal the numpy decoder, on skewed tables too (one frequent symbol and many rare ones, so that a
    bucket holds many ranks: the most steps a state can take)."""
    rng = np.random.default_rng(precision)
    size = 1 << precision
    tables = [random_table(rng, precision, min(size, 40)), random_table(rng, precision, size)]
    if size >= 4:
        rare = size // 2
        tables.append(FrequencyTable(precision, np.arange(rare + 1), [size - rare] + [1] * rare))
    for table in tables:
        for n in (3, 200, 1025, 20_000):  # (1 << min(Q, 12)) // 4 is the shortest bucketed block
            values = sample(rng, table, n)
            block = ans.encode(values, table, backend="numpy")
            for expand in (True, False):
                status, out = numba_decode(block, n, table, expand=expand)
                assert status == (an.OK, -1, -1, -1), (table.num_symbols, n, expand)
                assert np.array_equal(out, values)
            corrupt = bytearray(block)
            corrupt[-1] ^= 0x5A  # a lane that does not end cleanly: the same error either way
            assert_same_outcome(bytes(corrupt), n, table)


def test_spec_example() -> None:
    table = FrequencyTable(2, [5, 9], [3, 1])
    block = bytes.fromhex("01000000" "01000000" "0000c000")
    assert numba_encode(np.array([9, 5, 5]), table, 1) == block
    status, out = numba_decode(block, 3, table)
    assert status[0] == an.OK and out.tolist() == [9, 5, 5]


def test_batch_with_mixed_tables_strides_and_ranks() -> None:
    rng = np.random.default_rng(11)
    tables = [random_table(rng, q, m) for q, m in ((14, 12), (16, 300), (8, 1), (1, 2), (12, 256))]
    blocks, expected, which = [], [], []
    for i in range(12):
        t = int(rng.integers(len(tables)))
        n = int(rng.integers(0, 5000))
        values = sample(rng, tables[t], n)
        blocks.append(ans.encode(values, tables[t], backend="numpy"))
        expected.append(np.searchsorted(tables[t].symbols, values))  # decoded as ranks
        which.append(t)
    data = np.frombuffer(b"".join(blocks), np.uint8)
    size = np.array([len(b) for b in blocks], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    count = np.array([e.size for e in expected], dtype=np.int64)
    rank_tables = an.build_decode_tables([t.precision for t in tables], [t.freqs for t in tables],
                                         [np.arange(t.num_symbols) for t in tables],
                                         [True, False, True, False, False])  # some tables searched
    assert rank_tables.slot_base.tolist()[1::2] == [-1, -1]
    stride = 3  # write every block's ranks into every third element, interleaved with a neighbour
    out = np.zeros(stride * int(count.sum()) + 1, dtype=np.uint16)
    out_start = stride * np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64) + 1
    status = an.decode_blocks(data, start, size, count, np.array(which, dtype=np.int64), rank_tables, out,
                              out_start, np.full(len(blocks), stride, dtype=np.int64))
    assert status == (an.OK, -1, -1, -1)
    for e, s in zip(expected, out_start.tolist()):
        assert np.array_equal(out[s:s + stride * e.size:stride], e)
    assert not out[0::stride].any()


@settings(derandomize=True, max_examples=60, deadline=None)
@given(precision=st.integers(1, 16), m_frac=st.floats(0, 1), n=st.integers(0, 3000), lanes_frac=st.floats(0, 1),
       seed=st.integers(0, 2**32 - 1))
def test_randomised_round_trip(precision: int, m_frac: float, n: int, lanes_frac: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = 1 + int(m_frac * min((1 << precision) - 1, 2000))
    table = random_table(rng, precision, m)
    values = sample(rng, table, n)
    lanes = 1 + int(lanes_frac * max(n - 1, 0))
    block = ans.encode(values, table, lanes=lanes if n else None, backend="numpy")
    assert numba_encode(values, table, lanes) == block
    assert_same_outcome(block, n, table)


# ----------------------------------------------------------------------------------------------------
# corrupt input: an error code with the numpy decoder's class and offset, never a crash
# ----------------------------------------------------------------------------------------------------


def small_block(seed: int = 3, n: int = 600, lanes: int = 5) -> tuple[bytes, FrequencyTable, int]:
    rng = np.random.default_rng(seed)
    table = random_table(rng, 12, 30)
    return ans.encode(sample(rng, table, n), table, lanes=lanes, backend="numpy"), table, n


def test_every_truncation() -> None:
    block, table, n = small_block()
    for cut in range(len(block)):
        assert_same_outcome(block[:cut], n, table)


def test_flipped_bits_and_trailing_bytes() -> None:
    block, table, n = small_block()
    rng = np.random.default_rng(0)
    for _ in range(400):
        damaged = bytearray(block)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(len(damaged)))
            damaged[i] ^= 1 << int(rng.integers(8))
        assert_same_outcome(bytes(damaged), n, table)
    assert_same_outcome(block + b"\0", n, table)
    assert_same_outcome(block + b"\0\0\0\0", n, table)


def test_wrong_counts_and_lane_counts() -> None:
    block, table, n = small_block()
    for count in (0, 1, 4, 5, n - 1, n + 1, 10 * n):
        assert_same_outcome(block, count, table)
    for lanes in (0, n + 1, 0xFFFF, 0xFFFFFFFF):
        assert_same_outcome(lanes.to_bytes(4, "little") + block[4:], n, table)
    huge_lengths = block[:4] + b"\xff\xff\xff\xff" * 5 + block[24:]
    assert_same_outcome(huge_lengths, n, table)
    single = FrequencyTable(8, [7], [256])
    for data in (b"\0\0\0\0", b"\1\0\0\0", b"\0\0\0\0\0", b"\0\0"):
        assert_same_outcome(data, 9, single)


def test_symbol_does_not_fit_output() -> None:
    table = FrequencyTable(4, [3, 300], [8, 8])
    block = ans.encode(np.array([3, 300, 3]), table, backend="numpy")
    status, _ = numba_decode(block, 3, table, np.uint8)
    assert status[0] == an.ERR_SYMBOL_RANGE and an.ERROR_CLASS[status[0]] == "CorruptDataError"


def test_bad_arguments_are_refused() -> None:
    block, table, n = small_block()
    tables = an.decode_tables_for(table)
    data = np.frombuffer(block, np.uint8)
    out = np.empty(n, np.uint32)
    one = np.ones(1, dtype=np.int64)
    cases = [  # (block_start, block_size, table index, out_start)
        (0, len(block) + 1, 0, 0), (-1, len(block), 0, 0), (0, len(block), 1, 0), (0, len(block), -1, 0),
        (0, len(block), 0, 1), (0, len(block), 0, -1),
    ]
    for start, size, tab, out_start in cases:
        status = an.decode_blocks(data, one * start, one * size, one * n, one * tab, tables, out, one * out_start)
        assert status[0] == an.ERR_BAD_ARGUMENT
    with pytest.raises(ValueError):
        an.build_decode_tables([4], [np.array([8, 7])], [np.array([1, 2])])
    code, _, _ = an.encode_block(np.array([0, table.num_symbols]), table.freqs, table.precision, 1)
    assert code == an.ERR_RANK


# ----------------------------------------------------------------------------------------------------
# conformance vectors and golden files: every ANS block the reader decodes
# ----------------------------------------------------------------------------------------------------


def vector_files() -> list[Path]:
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    files = [VECTORS / name for name, entry in manifest["vectors"].items() if entry.get("valid")]
    return files + sorted((VECTORS / "golden").glob("*.rdc"))


def test_vector_blocks_decode_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(ans, "decode_many"):
        pytest.skip("rdformat.entropy.ans.decode_many is gone: capture the blocks elsewhere")
    seen: list[tuple] = []
    original = ans.decode_many

    def capture(blocks, **kwargs):
        blocks = list(blocks)
        for item in blocks:
            dtype = item[3] if len(item) == 4 else kwargs.get("out_dtype", np.uint32)
            seen.append((bytes(item[0]), int(item[1]), item[2], np.dtype(dtype)))
        return original(blocks, **kwargs)

    monkeypatch.setattr(ans, "decode_many", capture)
    for path in vector_files():
        rdformat.load(path.read_bytes())
    assert len(seen) > 20
    for block, count, table, dtype in seen:
        status, out = numba_decode(block, count, table, dtype)
        assert status[0] == an.OK
        assert np.array_equal(out, ans.decode(block, count, table, backend="numpy", out_dtype=dtype))


# ----------------------------------------------------------------------------------------------------
# codec kernels
# ----------------------------------------------------------------------------------------------------


def rotate_left_1(words: np.ndarray) -> np.ndarray:
    bits = 8 * words.itemsize
    return (words << words.dtype.type(1)) | (words >> words.dtype.type(bits - 1))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("rotate", [False, True])
def test_interleave_planes(dtype, rotate: bool) -> None:
    rng = np.random.default_rng(1)
    words = rng.integers(0, np.iinfo(dtype).max, size=1001, dtype=dtype, endpoint=True)
    stored = rotate_left_1(words) if rotate else words
    width = np.dtype(dtype).itemsize
    planes = np.zeros((width, 1002), dtype=np.uint8)  # one spare column, as for byte-pair planes
    planes[:, :1001] = stored.astype(f"<u{width}").view(np.uint8).reshape(-1, width).T
    assert np.array_equal(kn.interleave_planes(planes, 1001, rotate), words)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("rotate", [False, True])
def test_interleave_sources_matches_planes(dtype, rotate: bool) -> None:
    """Planes read from separate vectors (read-only chunk bytes, writable decoder output, longer than
    needed) give the words interleave_planes gives; a short source is refused, other widths declined."""
    rng = np.random.default_rng(3)
    words = rng.integers(0, np.iinfo(dtype).max, size=777, dtype=dtype, endpoint=True)
    stored = rotate_left_1(words) if rotate else words
    width = np.dtype(dtype).itemsize
    planes = np.zeros((width, 778), dtype=np.uint8)
    planes[:, :777] = stored.astype(f"<u{width}").view(np.uint8).reshape(-1, width).T
    chunk = planes[0].tobytes()
    sources = [np.frombuffer(chunk, np.uint8)] + [planes[k].copy() for k in range(1, width)]
    out = np.full(800, 7, dtype=dtype)
    assert kn.interleave_sources(sources, 777, rotate, out)
    assert np.array_equal(out[:777], kn.interleave_planes(planes, 777, rotate))
    assert np.all(out[777:] == 7)
    assert all(s.flags.writeable for s in sources[1:])  # the caller's arrays keep their flags
    with pytest.raises(ValueError):
        kn.interleave_sources([s[:776] for s in sources], 777, rotate, out)
    assert not kn.interleave_sources(sources[:1] * 3, 777, rotate, out)


@pytest.mark.parametrize("bits", [1, 2, 3, 7])
def test_joint_planes_matches_numpy(bits: int) -> None:
    """bytesplit mode 5's compiled plane rebuild equals the numpy one (segments with and without shifts,
    counts that are not a multiple of eight); inconsistent sizes are refused."""
    from rdformat.codecs.bytesplit import _Joint, _pack_bits

    rng = np.random.default_rng(bits)
    for count, segs in ((1, ((1, 0),)), (803, ((800, 0), (3, 5))), (64, ((10, 254), (54, 1)))):
        symbols = rng.integers(0, 256 << bits, size=count).astype(np.uint16)
        symbols[::7] &= (1 << bits) - 1  # top byte 0: never shifted
        low_bits = rng.integers(0, 1 << (8 - bits), size=count).astype(np.uint8)
        joint = _Joint(bits, segs)
        joint.low = np.frombuffer(_pack_bits(low_bits, 8 - bits), np.uint8)
        want = joint.planes(symbols, count)
        got = kn.joint_planes(symbols, bits, segs, joint.low, count)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        with pytest.raises(ValueError):
            kn.joint_planes(symbols, bits, segs, joint.low[:-1], count)
        with pytest.raises(ValueError):
            kn.joint_planes(symbols, bits, ((count + 1, 0),), joint.low, count)


def test_unshift_plane_matches_numpy() -> None:
    """bytesplit mode 4's compiled unshift equals ``_unshift`` (byte 0 kept, every shift 0..254, uint16
    symbols as the decoder may give them); segments that do not cover the symbols are refused."""
    from rdformat.codecs.bytesplit import _unshift

    rng = np.random.default_rng(11)
    for segs in (((1, 0),), ((300, 0), (7, 254), (1, 1)), tuple((4, s) for s in range(255))):
        count = sum(n for n, _s in segs)
        symbols = rng.integers(0, 256, size=count).astype(np.uint8)
        symbols[::5] = 0
        want = _unshift(symbols, segs)
        assert np.array_equal(kn.unshift_plane(symbols, segs), want)
        assert np.array_equal(kn.unshift_plane(symbols.astype(np.uint16), segs), want)
        with pytest.raises(ValueError):
            kn.unshift_plane(symbols[:-1], segs)
        with pytest.raises(ValueError):
            kn.unshift_plane(symbols, segs + ((1, 0),))


def test_gather_groups() -> None:
    rng = np.random.default_rng(2)
    for k in (1, 2, 3, 8):
        values = rng.standard_normal((50, k)).astype(np.float32)
        index = rng.integers(0, 50, size=100).astype(np.uint32)
        for count in (0, 100 * k, 100 * k - 1, 99 * k + 1):
            status, out = kn.gather_groups(index, values, count)
            assert status == -1
            assert np.array_equal(out, values[index].reshape(-1)[:count])
        bad = index.copy()
        bad[37] = 50
        assert kn.gather_groups(bad, values, 100 * k)[0] == 37


def test_group_rows_match_numpy() -> None:
    """Levels and sq values of a table's group symbols, bit-exact with ``_ungroup``/``unzigzag``/
    ``dequantize`` (zero levels +0.0, both offsets, every output dtype's rounding done by the caller)."""
    from rdformat.codecs.sq import _ungroup, dequantize, unzigzag

    rng = np.random.default_rng(5)
    for k, radix in ((1, 2), (1, 31), (1, 65535), (2, 17), (3, 40), (8, 4)):
        size = min(radix ** k, 300)
        symbols = np.unique(rng.integers(0, radix ** k, size=size)).astype(np.uint32)
        want_levels = unzigzag(_ungroup(symbols.astype(np.int64), k, radix)).reshape(-1, k)
        rows = kn.group_rows(symbols, k, radix)
        assert rows.shape == (radix ** k, k)
        assert np.array_equal(rows[symbols].astype(np.int32), want_levels)
        absent = np.setdiff1d(np.arange(radix ** k), symbols)
        assert not rows[absent].any()
        for step, o1, o2 in ((0.013, 0.0, 0.0), (3.3e-5, 0.21, 0.07), (1.0, 0.5, 0.999)):
            got = kn.group_rows(symbols, k, radix, step, o1, o2)[symbols]
            for dtype in (np.float64, np.float32, np.float16):
                want = dequantize(want_levels.reshape(-1), step, o1, o2, np.dtype(dtype))
                assert got.astype(dtype).reshape(-1).tobytes() == want.tobytes()
    with pytest.raises(ValueError):
        kn.group_rows(np.array([9], np.uint32), 2, 3)


def test_dq_reconstruct_matches_numpy() -> None:
    from rdformat.codecs import dq

    rng = np.random.default_rng(4)
    all_levels = np.clip(np.round(rng.laplace(0, 4, size=10_007)), -32767, 32767).astype(np.int32)
    # chains of whole octets (three passes) and not; sizes of whole chains, whole octets, a part octet, under one
    for n in (10_007, 1024, 1027, 768, 100, 7):
        levels = all_levels[:n]
        for chain in (1, 2, 5, 8, 16, 24, 256, 1000, 1024, 20_000):
            for dtype in (np.float32, np.float64):
                for step in (0.013, 1.0, 3.3e-5):
                    want = dq.dq_reconstruct(levels, step, chain, np.dtype(dtype))
                    assert kn.dq_reconstruct(levels, step, chain, dtype).tobytes() == want.tobytes()


# ----------------------------------------------------------------------------------------------------
# the numba backend wired in: selection, lazy import, whole files, threads, the trellis search
# ----------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _subprocess(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter with the default numba policy (plus ``env``); its stdout."""
    import os
    import subprocess
    import sys

    full = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("RDFORMAT_NO_NUMBA", "RDFORMAT_NUMBA_MIN_SYMBOLS"):
        full.pop(var, None)
    full.update(env)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


def test_numba_is_imported_lazily_and_can_be_disabled(tmp_path: Path) -> None:
    """``import rdformat`` never imports numba, nor does a small load (it would cost more than it saves); a
    large job does; RDFORMAT_NO_NUMBA=1 keeps it out."""
    small, big = tmp_path / "small.rdc", tmp_path / "big.rdc"
    rng = np.random.default_rng(0)
    rdformat.save({"w": rng.laplace(0, 0.02, 5000).astype(np.float32)}, small)
    rdformat.save({"w": rng.integers(0, 200, 4_100_000).astype(np.uint8)}, big)  # one ANS plane, 4.1 M symbols
    code = f"""
import sys, rdformat
from rdformat.entropy import ans
steps = ['numba' in sys.modules]
rdformat.load({str(small)!r})
steps += ['numba' in sys.modules, ans.compiled_active()]
rdformat.load({str(big)!r})
steps += ['numba' in sys.modules, ans.compiled_active()]
print(*steps)
"""
    assert _subprocess(code) == "False False False True True"
    assert _subprocess(code, RDFORMAT_NO_NUMBA="1") == "False False False False False"
    assert _subprocess(code, RDFORMAT_NUMBA_MIN_SYMBOLS="0") == "False True True True True"


def test_backend_selection() -> None:
    assert ans.available_backends()[0] == "numba"
    assert ans.compiled_active()  # conftest: RDFORMAT_NUMBA_MIN_SYMBOLS=0
    with ans.use_backend("numpy"):
        assert not ans.compiled_active()
    with ans.use_backend("constriction"):
        assert not ans.compiled_active()
    with ans.use_backend("numba"):
        assert ans.compiled_active()
    table = FrequencyTable(4, [1, 2, 3], [10, 5, 1])
    values = np.tile([1, 2, 1, 3], 250)
    block = ans.encode(values, table, lanes=3, backend="numpy")
    assert ans.encode(values, table, lanes=3, backend="numba") == block
    assert np.array_equal(ans.decode(block, values.size, table, backend="numba"), values)


def test_disabled_numba_backend_is_refused_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDFORMAT_NO_NUMBA", "1")
    assert "numba" not in ans.available_backends()
    assert not ans.compiled_active()
    table = FrequencyTable(4, [1, 2], [10, 6])
    with pytest.raises(errors.InvalidInputError, match="numba"):
        ans.decode(b"\0\0\0\0", 0, table, backend="numba")
    with ans.use_backend("numba"):  # a preference falls back to numpy silently
        assert ans.decode(b"\0\0\0\0", 0, table).size == 0


def big_model(seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.laplace(0, 0.02, size=(1200, 700)).astype(np.float32),
            "b": rng.laplace(0, 0.02, size=(300, 1000)).astype(np.float16),
            "c": rng.laplace(0, 0.02, size=(50,)).astype(np.float32)}


@pytest.mark.parametrize("kwargs", [{}, {"bits": 4.0, "method": "sq"}, {"bits": 4.0, "method": "dq"}])
def test_whole_files_decode_identically_on_two_threads(kwargs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many chunks and over PARALLEL_MIN_SYMBOLS symbols: blocks and chunks go to two threads."""
    import io

    from rdformat.entropy import ans_compiled

    buf = io.BytesIO()
    rdformat.save(big_model(), buf, chunk_bytes=256 << 10, **kwargs)
    data = buf.getvalue()
    with ans.use_backend("numpy"):
        want = rdformat.load(data)
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("RDFORMAT_THREADS", threads)
        monkeypatch.setattr(ans_compiled, "PARALLEL_MIN_SYMBOLS", 0)
        got = rdformat.load(data)
        for k in want:
            assert got[k].tobytes() == want[k].tobytes(), (threads, k)


def test_chunks_encoded_with_the_next_split_ahead_write_the_same_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """bytesplit splits the next chunk's planes on the pool while one chunk is coded: the file is the one a
    single thread and the numpy path write, byte for byte (float32, float16, bfloat16)."""
    import io

    import ml_dtypes

    tensors = big_model()
    w = tensors["a"]
    tensors = {**tensors, "h": w.astype(np.float16), "bf": w.astype(ml_dtypes.bfloat16)}

    def save(backend: str, threads: str) -> bytes:
        monkeypatch.setenv("RDFORMAT_THREADS", threads)
        buf = io.BytesIO()
        with ans.use_backend(backend):
            rdformat.save(tensors, buf, chunk_bytes=64 << 10)
        return buf.getvalue()

    want = save("numpy", "1")
    assert save("numba", "2") == want
    assert save("numba", "1") == want


@pytest.mark.parametrize("method", ["bytesplit", "sq", "dq"])
def test_corrupt_chunks_raise_the_same_error_on_both_paths(method: str) -> None:
    """Flipped bytes in a chunk payload: the compiled path raises what the numpy path raises (or decodes the same)."""
    from rdformat.codecs.bytesplit import ByteSplitCodec
    from rdformat.codecs.dq import DQCodec
    from rdformat.codecs.sq import SQCodec
    from rdformat.format.dtypes import by_numpy

    rng = np.random.default_rng(9)
    x = rng.laplace(0, 0.02, size=20_480).astype(np.float32)
    info = by_numpy(np.dtype(np.float32))
    if method == "bytesplit":
        codec, elements = ByteSplitCodec("rotl1"), x
    else:
        codec = SQCodec(0.01) if method == "sq" else DQCodec(0.005, 256)
        elements = np.clip(np.round(x / 0.01), -300, 300).astype(np.int32)
    payload = codec.encode_chunk(elements, info)
    outcomes_seen = set()
    for _ in range(150):
        bad = bytearray(payload)
        pos = int(rng.integers(0, len(bad)))
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        outcomes = []
        for backend in ("numpy", "numba"):
            with ans.use_backend(backend):
                try:
                    out = codec.decode_chunk(memoryview(bytes(bad)), x.size, info)
                    outcomes.append(("ok", out.tobytes()))
                except errors.RdcError as exc:
                    outcomes.append((type(exc).__name__, exc.offset))
        assert outcomes[0] == outcomes[1], (pos, outcomes[0][0], outcomes[1][0])
        outcomes_seen.add(outcomes[0][0])
    assert len(outcomes_seen) >= 2


@pytest.mark.parametrize("distortion,chain", [("mse", 256), ("mae", 97), ("mse", 1)])
def test_trellis_search_is_bit_exact(distortion: str, chain: int) -> None:
    from rdformat.producers.trellis import quantize_trellis

    rng = np.random.default_rng(11)
    x = rng.laplace(0, 0.03, size=50_001).astype(np.float32)
    x[:500] = 0
    x[600] = 5.0  # a large level
    got = {}
    for backend in ("numpy", "numba"):
        with ans.use_backend(backend):
            got[backend] = quantize_trellis(x, 0.004, distortion=distortion, chain=chain).levels
    assert np.array_equal(got["numpy"], got["numba"])


@pytest.mark.parametrize("n", [0, 1, 2, 4095, 4096, 100_001])
def test_plane_histograms(n: int) -> None:
    plane = np.random.default_rng(n).integers(0, 256, n).astype(np.uint8)
    plane[: n // 2] = 7
    for pairs in (False, True):
        counts, pair_counts = kn.plane_histograms(plane, pairs)
        assert np.array_equal(counts, np.bincount(plane, minlength=256))
        if pairs:
            padded = np.concatenate([plane, np.zeros(n % 2, np.uint8)]).view("<u2")
            assert np.array_equal(pair_counts, np.bincount(padded, minlength=1 << 16))
        else:
            assert pair_counts is None


def test_table_parser_matches_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled parser of stored tables: the same table and end offset as the numpy parser, None
    wherever that parser raises (truncations, flipped bits, over-long and non-canonical varints, bad sums)."""
    from rdformat.entropy import models

    monkeypatch.setattr(models, "_FAST_TABLE", [])  # FrequencyTable.from_bytes: the numpy parser only
    rng = np.random.default_rng(5)
    outcomes = set()
    for trial in range(90):
        table = random_table(rng, int(rng.integers(4, 17)), int(rng.integers(1, 14)))
        raw = bytearray(table.to_bytes())
        if trial % 3 == 1:
            raw[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
        elif trial % 3 == 2:
            raw = raw[:int(rng.integers(len(raw)))]
        raw += bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x01]) if trial % 5 == 0 else b""
        data = np.frombuffer(bytes(raw), np.uint8)
        if data.size < 2 or not 1 <= data[0] <= 16:
            continue
        m, pos = models._varint_decode_one(data, 1, "count") if data[1] < 0x80 else (0, 0)
        if not 1 <= m <= min(64, 1 << int(data[0])) or data.size - pos < 2 * m:
            continue
        fast = an.parse_table_body(data, pos, m, int(data[0]))
        try:
            slow, end = FrequencyTable.from_bytes(data, 0)
        except errors.RdcError:
            assert fast is None
            outcomes.add("error")
            continue
        assert fast is not None
        assert fast[0].dtype == fast[1].dtype == np.uint32
        assert np.array_equal(fast[0], slow.symbols) and np.array_equal(fast[1], slow.freqs) and fast[2] == end
        outcomes.add("parsed")
    assert outcomes == {"error", "parsed"}


def test_joint_table_parser_matches_python() -> None:
    """The compiled joint-table parser (bytesplit plane mode 5): the same table as the Python parser on every
    valid table, and None wherever that parser raises (flipped bits, truncations, long varints), so that
    parser names the error."""
    from rdformat.codecs import bytesplit as BS

    rng = np.random.default_rng(11)
    outcomes = set()
    for trial in range(150):
        t = int(rng.integers(1, 8))
        m = int(rng.integers(1, 40))
        q = int(rng.integers(max(2, (m << t).bit_length() + 1), 17))
        symbols = np.sort(rng.choice(256 << t, size=m, replace=False))
        table = FrequencyTable.from_counts(symbols, rng.pareto(1.0, size=m) + 0.01, precision=q)
        raw = bytearray(b"\x07" + BS._joint_table_bytes(table, t))  # at an offset, as in a chunk
        if trial % 3 == 1:
            raw[int(rng.integers(1, len(raw)))] ^= 1 << int(rng.integers(8))
        elif trial % 3 == 2:
            raw = raw[:int(rng.integers(1, len(raw)))]
        raw += bytes([0x80, 0x80, 0x80, 0x80, 0x80, 0x01]) if trial % 5 == 0 else b""
        fast = kn.parse_joint_table(np.frombuffer(bytes(raw), np.uint8), 1, t)
        with ans.use_backend("numpy"):
            try:
                slow, end = BS._read_joint_table(bytes(raw), 1, t, "test")
            except errors.RdcError:
                assert fast is None
                outcomes.add("error")
                continue
        assert fast is not None
        assert fast[0] == slow.precision and fast[3] == end
        assert np.array_equal(fast[1], slow.symbols) and np.array_equal(fast[2], slow.freqs)
        if trial % 3 == 0:
            assert slow == table
        outcomes.add("parsed")
    assert outcomes == {"error", "parsed"}


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_decode_map_matches_decode_many(threads: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_map: fn sees each group's decode_many result, results in group order, on any thread count; with
    corrupt blocks in several groups it raises decode_many's error (the first failing block of the batch)."""
    from rdformat.entropy import ans_compiled

    monkeypatch.setenv("RDFORMAT_THREADS", threads)
    monkeypatch.setattr(ans_compiled, "PARALLEL_MIN_SYMBOLS", 0)
    rng = np.random.default_rng(8)
    groups = []
    for g in range(40):
        blocks = []
        for _ in range(int(rng.integers(0, 4))):  # some groups have no block, some only trivial ones
            table = random_table(rng, int(rng.integers(6, 15)), int(rng.integers(1, 30)))
            n = int(rng.integers(0, 3000))
            values = sample(rng, table, n)
            blocks.append((ans.encode(values, table), n, table, np.uint16))
        groups.append(blocks)
    with ans.use_backend("numba"):
        want = [ans.decode_many(g) if g else [] for g in groups]
        got = ans.decode_map(groups, lambda i, decoded: (i, decoded), [1 + len(g) for g in groups])
        assert [i for i, _d in got] == list(range(len(groups)))
        for (_i, decoded), expected in zip(got, want):
            assert len(decoded) == len(expected) and all(np.array_equal(a, b) for a, b in zip(decoded, expected))
        # corrupt a late block, then an earlier one: the error is the earlier block's, as decode_many says
        flat = [(g, j) for g, blocks in enumerate(groups) for j, b in enumerate(blocks) if b[1] > 100
                and b[2].num_symbols > 1]
        for g, j in (flat[-1], flat[len(flat) // 3]):
            buf, n, table, dt = groups[g][j]
            bad = bytearray(buf)
            bad[-5] ^= 0x40  # inside the last lane's words: the lane no longer ends cleanly
            groups[g][j] = (bytes(bad), n, table, dt)
        with pytest.raises(errors.RdcError) as many:
            ans.decode_many([b for blocks in groups for b in blocks])
        with pytest.raises(errors.RdcError) as mapped:
            ans.decode_map(groups, lambda i, decoded: None)
    assert type(mapped.value) is type(many.value) and str(mapped.value) == str(many.value)
    assert mapped.value.block_index == many.value.block_index
    assert "initial state" in str(mapped.value)  # a lane error, found by a decode thread


def test_balanced_runs_cover_the_items_in_order() -> None:
    for work, width in (([5] * 10, 3), ([100, 1, 1, 1, 1], 2), ([1], 4), ([0, 0, 0], 2), ([3, 9, 1, 7, 2, 8], 16)):
        runs = ans._balanced_runs(work, width)
        assert runs[0][0] == 0 and runs[-1][1] == len(work) and len(runs) <= width
        assert all(a < b for a, b in runs) and all(runs[i][1] == runs[i + 1][0] for i in range(len(runs) - 1))
    assert ans._balanced_runs([5] * 10, 2) == [(0, 5), (5, 10)]


def test_parametric_freqs_match_numpy() -> None:
    """The compiled two-parameter model (spec 5.3): the numpy path's frequencies for random parameters,
    extreme ones included (theta 1 and 65535, the largest radix, every precision)."""
    from rdformat.codecs import sq

    rng = np.random.default_rng(17)
    cases = [(1024, 16, 65535, 65535), (1024, 10, 1, 1), (2, 8, 1, 65535), (256, 8, 65535, 30000)]
    for _ in range(1500):
        radix = int(rng.integers(2, 1025))
        precision = int(rng.integers(max(8, (radix - 1).bit_length()), 17))
        cases.append((radix, precision, int(rng.integers(1, 65536)), int(rng.choice([1, 65535, rng.integers(1, 65536)]))))
    for radix, precision, p0, theta in cases:
        if radix > 1 << precision:
            continue
        with ans.use_backend("numpy"):  # sq's numpy path
            expected = sq._parametric_freqs(radix, precision, p0, theta)
        got = kn.parametric_freqs(radix, precision, p0, theta)
        assert got.dtype == np.int64 and np.array_equal(got, expected), (radix, precision, p0, theta)
        assert int(got.sum()) == 1 << precision and int(got.min()) >= 1


def test_single_table_builder_matches_the_general_one() -> None:
    """decode_tables_for's one compiled call gives the arrays build_decode_tables gives (slots or not, u8 and
    u16 slot ranks, one symbol, every precision)."""
    rng = np.random.default_rng(29)
    for q, m in ((1, 1), (1, 2), (4, 16), (8, 256), (12, 13), (12, 257), (16, 300), (16, 1)):
        table = random_table(rng, q, m)
        for expand in (True, False):
            for ranks in (False, True):
                got = an.decode_tables_for(table, ranks=ranks, expand=expand)
                values = np.arange(m, dtype=np.uint32) if ranks else table.symbols
                want = an.build_decode_tables([q], [table.freqs], [values], None if expand else [False])
                for name, a, b in zip(want._fields, got, want):
                    assert a.dtype == b.dtype and np.array_equal(a, b), (q, m, expand, ranks, name)


def test_pinned_choice_decides_once_per_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside ``ans.pinned_choice()`` (one load, one tensor read) the RDFORMAT_NO_NUMBA switch is read once, at
    the first use; after the block it counts again on every call, and a new block decides afresh."""
    monkeypatch.delenv("RDFORMAT_NO_NUMBA", raising=False)
    with ans.use_backend("numba"):
        with ans.pinned_choice():
            assert ans.compiled_active()
            monkeypatch.setenv("RDFORMAT_NO_NUMBA", "1")
            with ans.pinned_choice():  # nested: the same decision
                assert ans.compiled_active()
        assert not ans.compiled_active()
        with ans.pinned_choice():
            assert not ans.compiled_active()
            monkeypatch.delenv("RDFORMAT_NO_NUMBA")
            assert not ans.compiled_active()
        assert ans.compiled_active()
    data = io.BytesIO()
    rdformat.save({"w": np.arange(5000, dtype=np.float32)}, data)
    monkeypatch.setenv("RDFORMAT_NO_NUMBA", "1")
    assert np.array_equal(rdformat.load(data.getvalue())["w"], np.arange(5000, dtype=np.float32))
    assert not ans.compiled_active()  # load's block ended: the switch counts again


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.float16, np.uint16])
@pytest.mark.parametrize("rotate", [True, False])
def test_split_planes_matches_numpy(dtype, rotate: bool) -> None:
    """The bytesplit encoder's one-pass split: each plane a contiguous row equal to numpy's (rotated) byte
    column, and its byte counts equal to np.bincount, at sizes with every remainder of the two-copy count."""
    from rdformat.codecs.bytesplit import _rotate

    rng = np.random.default_rng(11)
    width = np.dtype(dtype).itemsize
    for n in (0, 1, 2, 3, 1001):
        x = (rng.laplace(0, 0.05, n) * (1 if np.dtype(dtype).kind == "f" else 30000)).astype(dtype)
        words = x.view(f"<u{width}")
        planes, counts = kn.split_planes(words, rotate)
        ref = (_rotate(words, 8 * width, True) if rotate else words).view(np.uint8).reshape(-1, width)
        assert planes.shape == (width, n) and counts.shape == (width, 256)
        for k in range(width):
            assert planes[k].flags.c_contiguous and np.array_equal(planes[k], ref[:, k])
            assert np.array_equal(counts[k], np.bincount(ref[:, k], minlength=256))
    with pytest.raises(ValueError, match="uint16 or uint32"):
        kn.split_planes(np.zeros(4, np.uint64), True)


def test_compiled_ranks_match_numpy_and_refuse_absent_values() -> None:
    """``ans_numba.ranks_of`` (the encoder's one-pass symbol -> rank lookup) gives numpy's ranks for byte and
    pair symbols, tables reaching past 2**16 included; a value not in the table gives None, and ans.encode
    then raises numpy's error naming the element."""
    from rdformat.entropy import ans_numpy

    rng = np.random.default_rng(12)
    for dtype, symbols in ((np.uint8, [3, 7, 200, 255]), (np.uint16, [0, 5, 300, 65535]),
                           (np.uint16, [9, 40000, 70000, 1 << 20])):
        table = FrequencyTable.from_counts(np.array(symbols), [5, 3, 2, 1], precision=8)
        usable = [s for s in symbols if s <= np.iinfo(dtype).max]
        values = rng.choice(usable, 500).astype(dtype)
        ranks = an.ranks_of(values, table)
        assert ranks is not None and ranks.dtype == np.uint16
        assert np.array_equal(ranks, ans_numpy.ranks_of(values, table))
        bad = values.copy()
        bad[123] = 1  # in none of the tables
        assert an.ranks_of(bad, table) is None
        with pytest.raises(errors.InvalidInputError, match="element 123 = 1"):
            ans.encode(bad, table, backend="numba")
        with pytest.raises(errors.InvalidInputError, match="element 123 = 1"):
            ans.encode(bad, table, backend="numpy")
    assert an.ranks_of(np.zeros(3, np.int64), table) is None  # other dtypes: numpy's lookup
