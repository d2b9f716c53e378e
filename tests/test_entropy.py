"""Tests of rdformat.entropy: frequency tables and the multi-lane ANS coder (both backends)."""

from __future__ import annotations

import contextlib
import heapq
import os
import pickle
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdformat.entropy import FrequencyTable, available_backends, decode, default_lanes, encode
from rdformat.entropy import ans as ans_mod
from rdformat.entropy import ans_constriction, ans_numpy
from rdformat.errors import CorruptDataError, InvalidInputError, RdcError, TruncatedError

REPO = Path(__file__).resolve().parents[1]
HAVE_CS = "constriction" in available_backends()
HAVE_NUMBA = "numba" in available_backends()
#: every usable backend, the numpy reference first
BACKENDS = ["numpy"] + [b for b in available_backends() if b != "numpy"]
needs_cs = pytest.mark.skipif(not HAVE_CS, reason="constriction backend not available")
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------
# a scalar reference coder written from spec/entropy.md (independent of both backends)
# ----------------------------------------------------------------------------------------------


def ref_encode(values, table: FrequencyTable, lanes: int) -> bytes:
    values = [int(v) for v in np.asarray(values).reshape(-1)]
    if not values or table.num_symbols == 1:
        return b"\0\0\0\0"
    s = 24 - table.precision
    rank = {int(v): i for i, v in enumerate(table.symbols)}
    freq = [int(f) << s for f in table.freqs]
    cum = [0]
    for f in freq:
        cum.append(cum[-1] + f)
    counts, words = [], []
    for j in range(lanes):
        state, out = 0, []
        for v in reversed(values[j::lanes]):
            r = rank[v]
            f, c = freq[r], cum[r]
            if (state >> 40) >= f:
                out.append(state & 0xFFFFFFFF)
                state >>= 32
            state = ((state // f) << 24) | (c + state % f)
        while state:
            out.append(state & 0xFFFFFFFF)
            state >>= 32
        counts.append(len(out))
        words += out
    return struct.pack(f"<{1 + lanes + len(words)}I", lanes, *counts, *words)


def ref_decode(buf: bytes, count: int, table: FrequencyTable) -> list[int]:
    """Returns the symbols, or raises ValueError('truncated'/'corrupt')."""
    if len(buf) < 4:
        raise ValueError("truncated")
    (lanes,) = struct.unpack_from("<I", buf)
    if count == 0 or table.num_symbols == 1:
        if lanes != 0 or len(buf) != 4:
            raise ValueError("corrupt")
        return [int(table.symbols[0])] * count
    if not 1 <= lanes <= count:
        raise ValueError("corrupt")
    if len(buf) < 4 + 4 * lanes:
        raise ValueError("truncated")
    counts = struct.unpack_from(f"<{lanes}I", buf, 4)
    end = 4 + 4 * lanes + 4 * sum(counts)
    if len(buf) < end:
        raise ValueError("truncated")
    if len(buf) > end:
        raise ValueError("corrupt")
    words = list(struct.unpack_from(f"<{sum(counts)}I", buf, 4 + 4 * lanes))
    s = 24 - table.precision
    freq = [int(f) << s for f in table.freqs]
    cum = [0]
    for f in freq:
        cum.append(cum[-1] + f)
    out = [0] * count
    a = 0
    for j in range(lanes):
        w = words[a:a + counts[j]]
        a += counts[j]
        state = 0
        if w:
            state = w.pop()
            if state == 0:
                raise ValueError("corrupt")
            while w and state < 1 << 32:
                state = (state << 32) | w.pop()
        for i in range(j, count, lanes):
            q = state & 0xFFFFFF
            r = next(r for r in range(len(freq)) if cum[r] <= q < cum[r + 1])
            out[i] = int(table.symbols[r])
            state = (state >> 24) * freq[r] + (q - cum[r])
            if state < 1 << 32 and w:
                state = (state << 32) | w.pop()
        if state != 0 or w:
            raise ValueError("corrupt")
    return out


# ----------------------------------------------------------------------------------------------
# strategies
# ----------------------------------------------------------------------------------------------


def random_table(rng: np.random.Generator, precision: int, m: int, big_symbols: bool) -> FrequencyTable:
    total = 1 << precision
    cuts = np.sort(rng.choice(np.arange(1, total), size=m - 1, replace=False)) if m > 1 else np.zeros(0, int)
    freqs = np.diff(np.concatenate([[0], cuts, [total]]))
    hi = (1 << 31) if big_symbols else max(4 * m, 8)
    symbols = np.sort(rng.choice(hi, size=m, replace=False))
    return FrequencyTable(precision, symbols, freqs)


@st.composite
def table_and_values(draw, max_n: int = 2500):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    precision = draw(st.integers(1, 16))
    m = draw(st.integers(1, min(1 << precision, 80)))
    table = random_table(rng, precision, m, draw(st.booleans()))
    n = draw(st.sampled_from([0, 1, 2, 3, 7, 64, 255, 1000, max_n]) | st.integers(0, max_n))
    # draw values from the table's own distribution (skewed tables give skewed data) or uniformly
    p = table.freqs / table.freqs.sum() if draw(st.booleans()) else None
    values = rng.choice(table.symbols, size=n, p=p).astype(np.uint32)
    lanes = draw(st.none() | st.integers(1, max(1, n)))
    return table, values, lanes


def valid_block(seed: int = 0, n: int = 3000, lanes: int = 5) -> tuple[FrequencyTable, np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    table = FrequencyTable(12, [1, 2, 3, 10, 50], [2000, 1000, 600, 400, 96])
    values = rng.choice(table.symbols, size=n, p=table.freqs / 4096).astype(np.uint32)
    return table, values, encode(values, table, lanes=lanes, backend="numpy")


# ----------------------------------------------------------------------------------------------
# round trips and backend agreement
# ----------------------------------------------------------------------------------------------


@FAST
@given(table_and_values())
def test_roundtrip_all_backends_identical(tv):
    table, values, lanes = tv
    n = values.size
    blocks = {be: encode(values, table, lanes=lanes, backend=be) for be in BACKENDS}
    first = blocks[BACKENDS[0]]
    assert all(b == first for b in blocks.values()), "backends produce different bytes"
    if lanes is not None and n > 0 and table.num_symbols > 1:
        assert struct.unpack_from("<I", first)[0] == lanes
    for be in BACKENDS:
        out = decode(first, n, table, backend=be)
        assert out.dtype == np.uint32 and out.shape == (n,)
        np.testing.assert_array_equal(out, values)


@FAST
@given(table_and_values(max_n=1500))
def test_numpy_scalar_and_lockstep_paths_agree(tv):
    """The numpy backend loops in Python for few lanes and steps lanes in lockstep otherwise."""
    table, values, lanes = tv
    n = values.size
    lanes = lanes or max(1, min(n, 40))
    results = []
    for limit in (0, 10**9):  # force lockstep, force scalar
        old = ans_numpy._SCALAR_MAX_LANES
        ans_numpy._SCALAR_MAX_LANES = limit
        try:
            block = encode(values, table, lanes=lanes, backend="numpy")
            out = decode(block, n, table, backend="numpy")
            bad = bytearray(block)
            if len(bad) > 8:
                bad[-1] ^= 0x10  # corrupt the last lane's top word
            corrupt = outcome(lambda bad=bad: decode(bytes(bad), n, table, backend="numpy"))
        finally:
            ans_numpy._SCALAR_MAX_LANES = old
        np.testing.assert_array_equal(out, values)
        results.append((block, corrupt))
    assert results[0] == results[1]


def test_search_path_matches_expanded_tables_on_mixed_batches():
    """Tables whose symbols do not justify 2**Q slots are searched (issue 15: a file of tiny chunks cost
    64 KiB per table); the search decodes the same symbols, and the same first failing block, on every
    backend, for batches mixing both kinds of table, precisions 1-16 and lockstep and scalar lanes."""
    rng = np.random.default_rng(15)
    items, want = [], []
    for i in range(60):
        m = int(rng.integers(2, 300))
        precision = int(rng.integers(max(1, int(np.ceil(np.log2(m)))), 17))
        table = FrequencyTable.from_counts(np.arange(m) * 5 + i % 3, rng.integers(1, 500, m) ** 2,
                                           precision=precision)
        n = int(rng.integers(1, 3000)) if i % 4 else int(rng.integers(9000, 16000))
        values = rng.choice(table.symbols, size=n, p=table.freqs / table.freqs.sum())
        items.append((encode(values, table, lanes=int(rng.integers(1, min(n, 80) + 1)), backend="numpy"), n, table))
        want.append(values)
    blocks = [ans_mod._parse_block(b, n, t, np.dtype(np.uint32), i) for i, (b, n, t) in enumerate(items)]
    worth = ans_numpy.tables_worth_expanding([b for b in blocks if isinstance(b, ans_numpy.Block)])
    parsed = [b for b in blocks if isinstance(b, ans_numpy.Block)]
    expanded = [b.index for b, w in zip(parsed, worth) if w]
    searched = [b.index for b, w in zip(parsed, worth) if not w]
    assert len(expanded) > 2 and len(searched) > 2
    for expand in (True, False):
        got = ans_numpy.decode_lockstep(parsed, expand=expand)
        assert all(np.array_equal(g, want[b.index]) for g, b in zip(got, parsed))
    for be in BACKENDS:
        got = ans_mod.decode_many(items, backend=be)
        assert all(np.array_equal(g, w) for g, w in zip(got, want)), be
    # one block of each kind corrupted: the first in the batch is reported, whichever kind it is
    e, q = expanded[0], next(j for j in searched if j > expanded[0])
    f, x = searched[0], next(j for j in expanded if j > searched[0])
    for corrupt, first in (((q, e), e), ((x, f), f)):
        bad = list(items)
        for j in corrupt:
            raw = bytearray(bad[j][0])
            raw[-1] ^= 0x10
            bad[j] = (bytes(raw), bad[j][1], bad[j][2])
        for be in BACKENDS:
            with pytest.raises(CorruptDataError) as exc:
                ans_mod.decode_many(bad, backend=be)
            assert exc.value.block_index == first, be


@pytest.mark.skipif(not HAVE_CS, reason="constriction not installed")
def test_constriction_takes_searched_tables_of_one_lane_blocks(monkeypatch):
    """A small model's blocks (one lane each, fine tables its few symbols do not justify expanding) go to
    constriction, which searches its model, not to numpy's search path, whose lone lanes step in Python."""
    rng = np.random.default_rng(7)
    items, want = [], []
    for i in range(5):
        table = FrequencyTable.from_counts(np.arange(40), rng.integers(1, 400, 40) ** 2, precision=16)
        values = rng.choice(table.symbols, size=700 + 100 * i, p=table.freqs / table.freqs.sum())
        items.append((encode(values, table, lanes=1, backend="numpy"), values.size, table))
        want.append(values)
    blocks = [ans_mod._parse_block(b, n, t, np.dtype(np.uint32), i) for i, (b, n, t) in enumerate(items)]
    assert not any(ans_numpy.tables_worth_expanding(blocks))

    def refuse(*_a, **_k):
        raise AssertionError("numpy search path used")

    monkeypatch.setattr(ans_numpy, "decode_lockstep", refuse)
    with ans_mod.use_backend("constriction"):
        got = ans_mod.decode_many(items)
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


@settings(max_examples=25, deadline=None)
@given(table_and_values(max_n=300))
def test_matches_scalar_reference(tv):
    table, values, lanes = tv
    n = values.size
    L = lanes if lanes is not None else 1
    expected = ref_encode(values, table, L)
    got = encode(values, table, lanes=L, backend="numpy")
    assert got == expected
    if HAVE_CS:
        assert encode(values, table, lanes=L, backend="constriction") == expected
    assert ref_decode(expected, n, table) == values.tolist()


def test_hand_computed_vector():
    # Q=2, symbols [5, 9], freqs [3, 1]: at precision 24, k = (3<<22, 1<<22), c = (0, 3<<22).
    # Encoding [9, 5, 5] backwards from state 0: 5 -> 0, 5 -> 0, 9 -> 3<<22 = 0x00C00000.
    table = FrequencyTable(2, [5, 9], [3, 1])
    block = bytes.fromhex("01000000" "01000000" "0000c000")
    for be in BACKENDS:
        assert encode(np.array([9, 5, 5]), table, lanes=1, backend=be) == block
        np.testing.assert_array_equal(decode(block, 3, table, backend=be), [9, 5, 5])


@pytest.mark.parametrize("lanes", [1, 20])  # 1 lane: scalar loop; 20 identical lanes: lockstep numpy
def test_flush_and_refill_boundaries(lanes):
    # With Q=1 both frequencies are 2**23: encoding inserts the symbol's bit at position 23 of the state
    # (the bits below stay 0), decoding removes it. Each case gives (values, expected words of one lane).
    table = FrequencyTable(1, [0, 1], [1, 1])
    cases = []
    for first in (0, 1):
        # encoding (backwards) a 1 then forty 0s gives state == 2**63 == k << 40 exactly: the next
        # symbol must flush (>=, not >); the flushed word is 0, the final state 2**32 | first << 23.
        cases.append(([first] + [0] * 40 + [1], [0, first << 23, 1]))
    for y in (0, 1):
        # (backwards) a 1, 39 0s, a 1 give 2**63 | 2**23; the next symbol (0) flushes 2**23, leaving 2**31,
        # and gives 2**32; y then gives 2**33 | y << 23. Decoding y returns to exactly 2**32 with a word left,
        # which must NOT refill (< 2**32, strictly): refilling early would decode bit 23 of that word.
        cases.append(([y, 0, 1] + [0] * 39 + [1], [1 << 23, y << 23, 2]))
    for values, lane_words in cases:
        values = np.array(values)
        assert ref_encode(values, table, 1) == struct.pack("<5I", 1, 3, *lane_words)
        x = np.repeat(values, lanes)  # every lane codes `values`
        expected = ref_encode(x, table, lanes)
        for be in BACKENDS:
            assert encode(x, table, lanes=lanes, backend=be) == expected
            np.testing.assert_array_equal(decode(expected, x.size, table, backend=be), x)


def test_lanes_assignment_and_partial_row():
    table, values, _ = valid_block(n=1003)
    for lanes in (1, 2, 4, 7, 1003):
        block = encode(values, table, lanes=lanes, backend="numpy")
        assert block == ref_encode(values, table, lanes)
        for be in BACKENDS:
            np.testing.assert_array_equal(decode(block, values.size, table, backend=be), values)


def test_large_skewed_block_default_lanes():
    rng = np.random.default_rng(5)
    p = np.exp(-np.arange(256) / 6.0)
    x = rng.choice(256, size=300_000, p=p / p.sum()).astype(np.uint8)
    table = FrequencyTable.from_values(x)
    ideal = table.cost_bits(np.bincount(x, minlength=256)[table.symbols])
    blocks = {be: encode(x, table, backend=be) for be in BACKENDS}
    block = blocks["numpy"]
    assert all(b == block for b in blocks.values())
    lanes = struct.unpack_from("<I", block)[0]
    assert lanes == default_lanes(x.size, ideal) and lanes > 1
    assert len(block) * 8 < ideal * 1.01 + 64  # lane overhead stays around 0.5%
    for be in BACKENDS:
        out = decode(block, x.size, table, backend=be, out_dtype=np.uint8)
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(decode(block, x.size, table, out_dtype=np.uint8), x)  # auto


def test_precision_extremes_and_big_alphabet():
    rng = np.random.default_rng(3)
    t1 = FrequencyTable(1, [0, 7], [1, 1])
    t16 = FrequencyTable.from_counts(np.arange(60000) * 3, rng.integers(0, 50, 60000), precision=16)
    t_top = FrequencyTable(16, [2**31 - 2, 2**31 - 1], [65535, 1])
    for table in (t1, t16, t_top):
        v = rng.choice(table.symbols, size=5000)
        block = encode(v, table, backend="numpy")
        for be in BACKENDS:
            assert encode(v, table, backend=be) == block
            np.testing.assert_array_equal(decode(block, v.size, table, backend=be, out_dtype=np.int64), v)


def test_single_symbol_table_and_empty():
    table = FrequencyTable(14, [42], [1 << 14])
    for be in BACKENDS:
        assert encode(np.full(1000, 42), table, backend=be) == b"\0\0\0\0"
        assert encode(np.full(1000, 42), table, lanes=7, backend=be) == b"\0\0\0\0"  # lanes ignored
        out = decode(b"\0\0\0\0", 1000, table, backend=be, out_dtype=np.uint8)
        assert out.dtype == np.uint8 and (out == 42).all() and out.size == 1000
        with pytest.raises(CorruptDataError):
            decode(b"\x01\0\0\0" + b"\0" * 8, 1000, table, backend=be)
        with pytest.raises(CorruptDataError):
            decode(b"\0\0\0\0\0", 1000, table, backend=be)
        with pytest.raises(InvalidInputError):
            encode(np.array([42, 43]), table, backend=be)
    t2 = FrequencyTable(3, [1, 2], [4, 4])
    for be in BACKENDS:
        assert encode(np.zeros(0, np.int64), t2, backend=be) == b"\0\0\0\0"
        assert decode(b"\0\0\0\0", 0, t2, backend=be).size == 0
        with pytest.raises(CorruptDataError):
            decode(b"\x01\0\0\0\0\0\0\0", 0, t2, backend=be)


def test_all_rank0_lane_has_no_words():
    table = FrequencyTable(4, [0, 1], [15, 1])
    v = np.zeros(10, np.uint8)
    v[1] = 1  # lane 1 of 2 gets a symbol 1, lane 0 only zeros -> state stays 0 -> no words
    block = encode(v, table, lanes=2, backend="numpy")
    assert struct.unpack_from("<3I", block)[1] == 0
    for be in BACKENDS:
        np.testing.assert_array_equal(decode(block, 10, table, backend=be, out_dtype=np.uint8), v)


def test_shapes_dtypes_and_no_mutation():
    table, values, _ = valid_block(n=600)
    v2 = values.reshape(20, 30).astype(np.int16)
    v2.flags.writeable = False
    block = encode(v2, table, lanes=3)
    assert block == encode(values, table, lanes=3, backend="numpy")
    buf = bytearray(block)
    for be in BACKENDS:
        out = decode(buf, values.size, table, backend=be, out_dtype=np.int16)
        np.testing.assert_array_equal(out, values)
        out = decode(memoryview(block), values.size, table, backend=be)
        np.testing.assert_array_equal(out, values)
        out = decode(np.frombuffer(block, np.uint8), values.size, table, backend=be)
        np.testing.assert_array_equal(out, values)
    assert bytes(buf) == block
    assert encode(values.astype(np.uint64), table, lanes=3) == block
    # an unaligned view of the block decodes too
    padded = np.frombuffer(b"x" + block, np.uint8)[1:]
    np.testing.assert_array_equal(decode(padded, values.size, table, backend="numpy"), values)


def test_encoder_input_errors():
    table = FrequencyTable(4, [1, 3, 1000], [8, 4, 4])
    for be in BACKENDS:
        for bad in ([1, 2], [0, 1], [1, 1001], [-1, 1], [1, 2**40]):
            with pytest.raises(InvalidInputError):
                encode(np.array(bad, dtype=np.int64), table, backend=be)
        with pytest.raises(InvalidInputError):
            encode(np.array([1.0, 3.0]), table, backend=be)
        with pytest.raises(InvalidInputError):
            encode(np.array([1, 3]), table, lanes=3, backend=be)
        with pytest.raises(InvalidInputError):
            encode(np.array([1, 3]), table, lanes=0, backend=be)
    big = FrequencyTable(4, [1, 3, 2**30], [8, 4, 4])  # searchsorted path
    with pytest.raises(InvalidInputError):
        encode(np.array([1, 2**30 - 1]), big)
    assert ref_decode(encode(np.array([1, 2**30, 3]), big, lanes=1), 3, big) == [1, 2**30, 3]
    with pytest.raises(InvalidInputError):
        encode(np.array([1]), table, backend="fast")
    with pytest.raises(InvalidInputError):
        decode(b"\0\0\0\0", 0, table, backend="fast")
    with pytest.raises(InvalidInputError):
        decode(b"\0\0\0\0", -1, table)
    with pytest.raises(InvalidInputError):
        decode(b"\0\0\0\0", 0, table, out_dtype=np.float32)


def test_out_dtype_too_small_is_corrupt():
    table = FrequencyTable(4, [1, 300], [8, 8])
    block = encode(np.array([1, 300, 1]), table, lanes=1)
    with pytest.raises(CorruptDataError):
        decode(block, 3, table, out_dtype=np.uint8)
    np.testing.assert_array_equal(decode(block, 3, table, out_dtype=np.uint16), [1, 300, 1])


# ----------------------------------------------------------------------------------------------
# corrupt / truncated blocks
# ----------------------------------------------------------------------------------------------


def outcome(fn):
    try:
        return ("ok", fn().tolist())
    except RdcError as exc:
        return ("err", type(exc).__name__)


def test_truncated_and_extended_blocks():
    table, values, block = valid_block(n=500, lanes=3)
    n = values.size
    for cut in range(len(block)):
        for be in BACKENDS:
            with pytest.raises(TruncatedError):
                decode(block[:cut], n, table, backend=be)
        with pytest.raises(ValueError, match="truncated"):
            ref_decode(block[:cut], n, table)
    for extra in (b"\0", b"\1\2\3\4", b"\0" * 4):
        for be in BACKENDS:
            with pytest.raises(CorruptDataError) as info:
                decode(block + extra, n, table, backend=be)
            assert info.value.offset == len(block)


def test_bad_lane_counts_and_zero_last_word():
    table, values, block = valid_block(n=100, lanes=4)
    n = values.size
    words = np.frombuffer(block, "<u4").copy()
    cases = []
    for lanes_field in (0, n + 1, 2**32 - 1):
        w = words.copy()
        w[0] = lanes_field
        cases.append(w.tobytes())
    w = words.copy()
    w[-1] = 0  # last word of the last lane
    cases.append(w.tobytes())
    for be in BACKENDS:
        for c in cases:
            with pytest.raises(CorruptDataError):
                decode(c, n, table, backend=be)
        with pytest.raises(CorruptDataError):  # a word moved from lane 0 to lane 1
            w = words.copy()
            w[1] -= 1
            w[2] += 1
            decode(w.tobytes(), n, table, backend=be)


def _lockstep(fn):
    old = ans_numpy._SCALAR_MAX_LANES
    ans_numpy._SCALAR_MAX_LANES = 0
    try:
        return fn()
    finally:
        ans_numpy._SCALAR_MAX_LANES = old


def test_bitflips_detected_and_backends_agree():
    table, values, block = valid_block(n=400, lanes=2)
    n = values.size
    rng = np.random.default_rng(1)
    detected = 0
    for _ in range(60):
        b = bytearray(block)
        pos = int(rng.integers(12, len(b)))  # inside the words
        b[pos] ^= 1 << int(rng.integers(0, 8))
        results = {be: outcome(lambda be=be: decode(bytes(b), n, table, backend=be)) for be in BACKENDS}
        results["lockstep"] = _lockstep(lambda: outcome(lambda: decode(bytes(b), n, table, backend="numpy")))
        assert len(set(map(str, results.values()))) == 1, results
        res = results["numpy"]
        try:
            ref = ("ok", ref_decode(bytes(b), n, table))
        except ValueError:
            ref = ("err",)
        assert res[0] == ref[0]
        detected += res[0] == "err"
    assert detected >= 50  # the end-of-lane state check catches (nearly) every corruption


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 40), st.integers(0, 2**32 - 1))
def test_garbage_blocks_raise_only_rdc_errors(data, count, seed):
    table = random_table(np.random.default_rng(seed), 6, 3, False)
    results = [outcome(lambda be=be: decode(data, count, table, backend=be)) for be in BACKENDS]
    assert all(r == results[0] for r in results)
    try:
        ref = ("ok", ref_decode(data, count, table))
    except ValueError:
        ref = ("err",)
    assert results[0][0] == ref[0]
    if ref[0] == "ok":
        assert results[0][1] == ref[1]


# ----------------------------------------------------------------------------------------------
# frequency tables
# ----------------------------------------------------------------------------------------------


def optimal_cost(counts, precision):
    """Exact optimum of sum(c * -log2(f / 2**Q)) by unit-wise greedy (optimal: separable, concave)."""
    c = np.asarray(counts, float)
    if c.sum() == 0:
        c = np.ones_like(c)
    f = np.ones(c.size, np.int64)
    heap = [(-ci, i) for i, ci in enumerate(c)]  # gain of 1 -> 2 is c * log2(2) = c
    heapq.heapify(heap)
    for _ in range((1 << precision) - c.size):
        _, i = heapq.heappop(heap)
        f[i] += 1
        heapq.heappush(heap, (-c[i] * np.log2((f[i] + 1) / f[i]), i))
    return float(np.dot(c, precision - np.log2(f)))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**32 - 1), st.sampled_from(["uniform", "pareto", "spike"]))
def test_from_counts_valid_and_near_optimal(precision, seed, kind):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, min(1 << precision, 200) + 1))
    if kind == "uniform":
        counts = rng.integers(0, 100, m)
    elif kind == "pareto":
        counts = np.floor(rng.pareto(0.7, m) * 10).astype(np.int64)
    else:
        counts = rng.integers(0, 3, m)
        counts[0] = 10**9
    symbols = rng.choice(10**6, size=m, replace=False)
    t = FrequencyTable.from_counts(symbols, counts, precision)
    assert t.precision == precision and int(t.freqs.sum()) == 1 << precision and t.freqs.min() >= 1
    order = np.argsort(symbols)
    np.testing.assert_array_equal(t.symbols, symbols[order])
    aligned = counts[order]
    opt = optimal_cost(aligned, precision)
    cost = t.cost_bits(aligned) if aligned.sum() else t.cost_bits(np.ones(m))
    assert cost <= opt * (1 + 1e-9) + 1e-6
    # deterministic and independent of input order
    perm = rng.permutation(m)
    assert FrequencyTable.from_counts(symbols[perm], counts[perm], precision) == t


def test_from_counts_edge_cases():
    t = FrequencyTable.from_counts([5, 1, 9], [0, 10, 0], precision=4)
    assert t.symbols.tolist() == [1, 5, 9] and t.freqs.tolist() == [14, 1, 1]  # zero counts kept at 1
    assert FrequencyTable.from_counts(np.arange(16), np.ones(16), 4).freqs.tolist() == [1] * 16
    t = FrequencyTable.from_counts([3, 4], [0, 0], 3)
    assert t.freqs.tolist() == [4, 4]
    t = FrequencyTable.from_counts(np.arange(65535), np.r_[10**12, np.zeros(65534)], 16)
    assert t.freqs[0] == 2 and (t.freqs[1:] == 1).all()
    with pytest.raises(InvalidInputError):
        FrequencyTable.from_counts(np.arange(17), np.ones(17), 4)  # more symbols than 2**Q
    for bad in [dict(symbols=[1, 1], counts=[1, 2]), dict(symbols=[1, 2], counts=[1, -1]),
                dict(symbols=[-1, 2], counts=[1, 1]), dict(symbols=[2**31], counts=[1]),
                dict(symbols=[1, 2], counts=[1.0, np.nan]), dict(symbols=[], counts=[]),
                dict(symbols=[1, 2], counts=[1])]:
        with pytest.raises(InvalidInputError):
            FrequencyTable.from_counts(bad["symbols"], bad["counts"])
    for q in (0, 17):
        with pytest.raises(InvalidInputError):
            FrequencyTable.from_counts([1], [1], q)


def test_from_values_and_cost():
    v = np.array([[7, 7, 7, 2], [2, 9, 7, 7]], dtype=np.int32)
    t = FrequencyTable.from_values(v, precision=8)
    assert t.symbols.tolist() == [2, 7, 9]
    assert t == FrequencyTable.from_counts([2, 7, 9], [2, 5, 1], 8)
    assert t.cost_bits([2, 5, 1]) == pytest.approx(sum(c * (8 - np.log2(f)) for c, f in zip([2, 5, 1], t.freqs)))
    big = np.array([0, 2**31 - 1, 2**31 - 1, 5])  # np.unique path
    tb = FrequencyTable.from_values(big)
    assert tb.symbols.tolist() == [0, 5, 2**31 - 1]
    assert tb == FrequencyTable.from_counts([0, 5, 2**31 - 1], [1, 1, 2])
    for bad in (np.array([], np.int64), np.array([1.5]), np.array([-1, 2]), np.array([2**31])):
        with pytest.raises(InvalidInputError):
            FrequencyTable.from_values(bad)
    with pytest.raises(InvalidInputError):
        t.cost_bits([1, 2])


def test_table_immutable_and_value_semantics():
    t = FrequencyTable(4, [1, 2], [10, 6])
    with pytest.raises(AttributeError):
        t.precision = 5
    with pytest.raises(ValueError):
        t.freqs[0] = 3
    assert t == FrequencyTable(4, np.array([1, 2], np.int64), [10, 6])
    assert t != FrequencyTable(4, [1, 2], [9, 7]) and t != FrequencyTable(5, [1, 2], [20, 12])
    assert hash(t) == hash(FrequencyTable(4, [1, 2], [10, 6]))
    assert "precision=4" in repr(t)
    assert pickle.loads(pickle.dumps(t)) == t
    src = np.array([1, 2])
    t2 = FrequencyTable(4, src, [10, 6])
    src[0] = 0
    assert t2.symbols[0] == 1
    for args in [(0, [1], [1]), (17, [1], [1 << 17]), (4, [2, 1], [8, 8]), (4, [1, 1], [8, 8]),
                 (4, [1, 2], [16, 0]), (4, [1, 2], [8, 9]), (4, [], []), (4, [2**31], [16]),
                 (4, [1.0], [16])]:
        with pytest.raises(InvalidInputError):
            FrequencyTable(*args)


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 16), st.booleans(), st.binary(max_size=5), st.binary(max_size=5))
def test_table_bytes_roundtrip(seed, precision, big, prefix, suffix):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, min(1 << precision, 300) + 1))
    t = random_table(rng, precision, m, big)
    raw = t.to_bytes()
    got, end = FrequencyTable.from_bytes(prefix + raw + suffix, len(prefix))
    assert got == t and end == len(prefix) + len(raw)
    for cut in sorted(set(rng.integers(0, len(raw), size=min(len(raw), 20)).tolist()) | {0, len(raw) - 1}):
        with pytest.raises(TruncatedError):
            FrequencyTable.from_bytes(prefix + raw[:cut], len(prefix))


def test_table_small_valid_bytes():
    t, end = FrequencyTable.from_bytes(b"\x02\x02\x00\x00\x01\x01")  # symbols 0, 1; freqs 2, 2
    assert t == FrequencyTable(2, [0, 1], [2, 2]) and end == 6


def test_table_byte_format_exact():
    t = FrequencyTable(14, [3, 4, 300], [16000, 256, 128])
    # Q, m, gaps 3, 0, 295 (= 0xA7 0x02), freq-1 15999 (= 0xFF 0x7C), 255 (= 0xFF 0x01), 127
    assert t.to_bytes() == bytes([14, 3, 3, 0, 0xA7, 0x02, 0xFF, 0x7C, 0xFF, 0x01, 0x7F])


@pytest.mark.parametrize("raw, exc", [
    (b"", TruncatedError),
    (b"\x00\x01\x00\x00", CorruptDataError),          # Q = 0
    (b"\x11\x01\x00\x00", CorruptDataError),          # Q = 17
    (b"\x02\x00", CorruptDataError),                  # m = 0
    (b"\x02\x05" + b"\x00" * 10, CorruptDataError),   # m = 5 > 2**2
    (b"\x02\x01\x00\x02", CorruptDataError),          # freq sum 3 != 4
    (b"\x02\x01\x00\x04", CorruptDataError),          # freq 5 > 4
    (b"\x02\x01\x80\x00\x03", CorruptDataError),      # non-canonical gap varint
    (b"\x02\x81\x00\x00\x03", CorruptDataError),      # non-canonical m varint
    (b"\x02\x01\x80\x80\x80\x80\x08\x03", CorruptDataError),  # gap 2**31 -> symbol >= 2**31
    (b"\x02\x01\x80\x80\x80\x80\x80\x01\x03", CorruptDataError),  # 6-byte varint
    (b"\x02\x01\xff\xff\xff\xff\x1f\x03", CorruptDataError),  # varint >= 2**32
    (b"\x02\x01\x00", TruncatedError),
    (b"\x02\x01\x80", TruncatedError),
    (b"\x10\xff\xff\x03", TruncatedError),              # m = 65535 but no bytes
])
def test_table_from_bytes_errors(raw, exc):
    with pytest.raises(exc):
        FrequencyTable.from_bytes(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40), st.integers(0, 3))
def test_table_from_random_garbage(data, offset):
    offset = min(offset, len(data))
    try:
        t, end = FrequencyTable.from_bytes(data, offset)
    except RdcError:
        return
    # anything accepted is canonical: it re-encodes to exactly the bytes consumed
    assert t.to_bytes() == data[offset:end]


def test_table_from_garbage_with_plausible_headers():
    rng = np.random.default_rng(7)
    accepted = 0
    for _ in range(2000):
        body = rng.integers(0, 4, size=int(rng.integers(0, 12)), dtype=np.uint8)
        body[rng.random(body.size) < 0.1] = rng.integers(0, 256)
        body[rng.random(body.size) < 0.1] |= 0x80
        data = bytes([int(rng.integers(1, 4)), int(rng.integers(1, 4))]) + body.tobytes()
        try:
            t, end = FrequencyTable.from_bytes(data)
        except RdcError:
            continue
        accepted += 1
        assert t.to_bytes() == data[:end]
    assert accepted > 10  # the success path is exercised too


# ----------------------------------------------------------------------------------------------
# backend selection
# ----------------------------------------------------------------------------------------------


def test_env_var_disables_constriction(monkeypatch):
    monkeypatch.setenv("RDFORMAT_NO_CONSTRICTION", "1")
    assert "constriction" not in available_backends()
    table, values, block = valid_block(n=200, lanes=3)
    assert encode(values, table, lanes=3) == block
    np.testing.assert_array_equal(decode(block, values.size, table), values)
    with pytest.raises(InvalidInputError):
        encode(values, table, backend="constriction")
    monkeypatch.setenv("RDFORMAT_NO_CONSTRICTION", "0")  # "0" does not disable
    assert available_backends()[-1] == "numpy"


@needs_cs
def test_self_check_rejects_a_wrong_constriction(monkeypatch):
    import constriction

    class SkewedCategorical:  # quantises differently from our tables -> different words
        def __new__(cls, probabilities, perfect=False):
            p = np.asarray(probabilities, float).copy()
            p[0] *= 1.5
            return constriction.stream.model.Categorical(p, perfect=False)

    fake = types.SimpleNamespace(stream=types.SimpleNamespace(
        stack=constriction.stream.stack, model=types.SimpleNamespace(Categorical=SkewedCategorical)))
    monkeypatch.setitem(sys.modules, "constriction", fake)
    monkeypatch.setattr(ans_constriction, "_check_result", None)
    assert "constriction" not in available_backends()
    assert "differs" in ans_constriction.constriction_module()[1]
    table, values, block = valid_block(n=200, lanes=3)
    assert encode(values, table, lanes=3) == block  # still correct, via numpy
    monkeypatch.setattr(ans_constriction, "_check_result", None)
    monkeypatch.setitem(sys.modules, "constriction", constriction)
    assert available_backends()[-2:] == ["constriction", "numpy"]


def test_decode_in_subprocess_without_constriction(tmp_path):
    table, values, block = valid_block(n=2000, lanes=7)
    (tmp_path / "block.bin").write_bytes(block)
    (tmp_path / "table.bin").write_bytes(table.to_bytes())
    np.save(tmp_path / "values.npy", values)
    code = f"""
import sys
sys.modules['constriction'] = None  # any 'import constriction' now fails
import numpy as np
from rdformat.entropy import FrequencyTable, available_backends, decode, encode
d = {str(tmp_path)!r}
assert 'constriction' not in available_backends(), available_backends()
table, _ = FrequencyTable.from_bytes(open(d + '/table.bin', 'rb').read())
block = open(d + '/block.bin', 'rb').read()
values = np.load(d + '/values.npy')
assert (decode(block, values.size, table) == values).all()
assert encode(values, table, lanes=7) == block
try:
    encode(values, table, backend='constriction')
    raise SystemExit('constriction backend should be unavailable')
except Exception as exc:
    assert type(exc).__name__ == 'InvalidInputError', exc
print('OK')
"""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RDFORMAT_NO_CONSTRICTION", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "OK", res.stderr


def test_default_lanes_bounds():
    assert default_lanes(0, 0.0) == 0
    assert default_lanes(1, 1.0) == 1
    assert default_lanes(5000, 1e9) == 19         # >= 256 symbols per lane
    assert default_lanes(10**8, 1e12) == 4096     # capped
    assert default_lanes(10**6, 64000.0) == 4     # 0.5% of the size at 72 bits per lane
    assert default_lanes(10**6, 8e6) == 555
    assert default_lanes(10**6, 1e6, size_bits=8e6) == 555   # budget from the codec's whole size
    assert default_lanes(10**6, 8e6, overhead=0.01) == 1111


@pytest.mark.parametrize("scale", [0.3, 1.5, 6.0, 40.0])  # ~1.5 to ~8 bits per symbol
def test_default_lanes_keep_the_overhead_under_half_a_percent(scale):
    rng = np.random.default_rng(int(scale * 10))
    x = np.abs(np.rint(rng.laplace(0, scale, size=400_000))).astype(np.int64)
    m = int(x.max()) + 1
    table = FrequencyTable.from_values(x, precision=16)
    ideal = table.cost_bits(np.bincount(x, minlength=m)[table.symbols])
    one_lane = len(encode(x, table, lanes=1))
    block = encode(x, table)
    lanes = struct.unpack_from("<I", block)[0]
    assert lanes == default_lanes(x.size, ideal) and lanes > 10
    assert (len(block) - one_lane) * 8 <= 0.005 * ideal


def test_constriction_backend_is_used_when_installed():
    """If constriction imports, the self-check must accept it (else it was silently disabled)."""
    try:
        import constriction  # noqa: F401
    except ImportError:
        pytest.skip("constriction not installed")
    if os.environ.get("RDFORMAT_NO_CONSTRICTION", "") not in ("", "0"):
        pytest.skip("disabled by RDFORMAT_NO_CONSTRICTION")
    assert available_backends()[-2:] == ["constriction", "numpy"], ans_constriction.constriction_module()[1]


# ----------------------------------------------------------------------------------------------
# decode_many: several blocks in one lockstep, and the numpy decoder's internal paths
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def numpy_paths(scalar_max=None, branchless_max=None):
    """Force the lockstep (scalar_max=0) or scalar (huge) paths, and either refill variant."""
    old = ans_numpy._SCALAR_MAX_LANES, ans_numpy._BRANCHLESS_REFILL_MAX_LANES
    if scalar_max is not None:
        ans_numpy._SCALAR_MAX_LANES = scalar_max
    if branchless_max is not None:
        ans_numpy._BRANCHLESS_REFILL_MAX_LANES = branchless_max
    try:
        yield
    finally:
        ans_numpy._SCALAR_MAX_LANES, ans_numpy._BRANCHLESS_REFILL_MAX_LANES = old


NUMPY_PATHS = [dict(), dict(scalar_max=0, branchless_max=0), dict(scalar_max=0, branchless_max=10**9),
               dict(scalar_max=10**9), dict(scalar_max=3, branchless_max=5)]


@st.composite
def block_lists(draw):
    items = draw(st.lists(table_and_values(max_n=1200), min_size=0, max_size=6))
    out = []
    for table, values, lanes in items:
        dtype = draw(st.sampled_from([np.uint32, np.int64, np.uint16, np.uint8]))
        if int(table.symbols[-1]) > np.iinfo(dtype).max:
            dtype = np.uint32
        out.append((table, values, lanes, dtype))
    share = draw(st.booleans())  # the same table object for several blocks
    if share and len(out) > 1:
        table, values, lanes, dtype = out[0]
        out[1] = (table, np.asarray(values)[::-1].copy(), lanes, dtype)
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_lists(), st.sampled_from(range(len(NUMPY_PATHS))))
def test_decode_many_matches_decode(blocks, path):
    jobs, expected = [], []
    for table, values, lanes, dtype in blocks:
        jobs.append((encode(values, table, lanes=lanes, backend="numpy"), values.size, table, dtype))
        expected.append(values.astype(dtype))
    with numpy_paths(**NUMPY_PATHS[path]):
        got = ans_mod.decode_many(jobs, backend="numpy")
    assert len(got) == len(expected)
    for g, e, job in zip(got, expected, jobs):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_array_equal(g, e)
        np.testing.assert_array_equal(decode(job[0], job[1], job[2], out_dtype=job[3]), e)
    for be in BACKENDS:
        for g, e in zip(ans_mod.decode_many(jobs, backend=be), expected):
            np.testing.assert_array_equal(g, e)


def test_decode_many_mixed_precisions_sparse_lanes_and_default_dtype():
    rng = np.random.default_rng(11)
    jobs, expected = [], []
    for q, n, lanes, p0 in [(16, 50_000, 40, 0.5), (14, 30_000, 25, 0.9), (9, 5_000, 7, 0.999),
                            (12, 70_000, 60, 0.7), (16, 3, 1, 0.5), (1, 8000, 20, 0.5)]:
        m = min(1 << q, 40)
        p = np.full(m, (1 - p0) / (m - 1))
        p[0] = p0
        values = rng.choice(m, size=n, p=p) * 3
        if p0 > 0.99:
            values[: n // 2] = 0  # many lanes without any word
        table = FrequencyTable.from_values(values, precision=q)
        jobs.append((encode(values, table, lanes=lanes), n, table))
        expected.append(values)
    jobs.insert(2, (b"\0\0\0\0", 0, jobs[0][2]))  # trivial blocks mixed in
    expected.insert(2, np.zeros(0))
    jobs.append((b"\0\0\0\0", 5, FrequencyTable(3, [9], [8])))
    expected.append(np.full(5, 9))
    for kw in NUMPY_PATHS:
        with numpy_paths(**kw):
            got = ans_mod.decode_many(jobs, backend="numpy")
        for g, e in zip(got, expected):
            assert g.dtype == np.uint32
            np.testing.assert_array_equal(g, e)
    for be in BACKENDS:
        for g, e in zip(ans_mod.decode_many(iter(jobs), backend=be), expected):
            np.testing.assert_array_equal(g, e)


def test_decode_many_errors_name_the_block():
    table, values, block = valid_block(n=3000, lanes=20)
    bad = bytearray(block)
    bad[-3] ^= 0x40  # the last lane's top word
    short = block[:-1]
    for be in BACKENDS:
        for kw in NUMPY_PATHS:
            with numpy_paths(**kw):
                with pytest.raises(CorruptDataError) as info:
                    ans_mod.decode_many([(block, 3000, table), (block, 3000, table), (bytes(bad), 3000, table),
                                         (block, 3000, table)], backend=be)
            assert info.value.block_index == 2
            assert "lane 19" in str(info.value)
        with pytest.raises(TruncatedError) as info:
            ans_mod.decode_many([(block, 3000, table), (short, 3000, table)], backend=be)
        assert info.value.block_index == 1
        with pytest.raises(CorruptDataError) as info:  # the checks run before any decoding
            ans_mod.decode_many([(bytes(bad), 3000, table), (block, 10, table)], backend=be)  # 20 lanes > 10
        assert info.value.block_index == 1 and "lane count" in str(info.value)
        with pytest.raises(InvalidInputError) as info:
            ans_mod.decode_many([(block, 3000, table), (block, 3000)], backend=be)
        assert info.value.block_index == 1
        with pytest.raises(InvalidInputError):
            ans_mod.decode_many([(block, -1, table)], backend=be)
        assert ans_mod.decode_many([], backend=be) == []


def test_decode_many_detects_the_same_corruptions_as_decode():
    table, values, block = valid_block(n=900, lanes=30)
    rng = np.random.default_rng(4)
    for _ in range(40):
        b = bytearray(block)
        pos = int(rng.integers(4 + 4 * 30, len(b)))
        b[pos] ^= 1 << int(rng.integers(0, 8))
        single = outcome(lambda b=b: decode(bytes(b), 900, table, backend="numpy"))
        for kw in NUMPY_PATHS:
            with numpy_paths(**kw):
                many = outcome(lambda b=b: ans_mod.decode_many([(block, 900, table), (bytes(b), 900, table)],
                                                               backend="numpy")[1])
            assert many == single


def test_set_backend_and_use_backend(monkeypatch):
    table, values, block = valid_block(n=2000, lanes=30)
    calls = []
    real = ans_numpy.decode_lockstep
    monkeypatch.setattr(ans_numpy, "decode_lockstep", lambda blocks: calls.append(len(blocks)) or real(blocks))
    with ans_mod.use_backend("numpy"):
        np.testing.assert_array_equal(decode(block, 2000, table), values)
        assert calls == [1]
        assert ans_mod.set_backend("auto") == "numpy"
        ans_mod.set_backend("numpy")
    assert ans_mod.set_backend("auto") == "auto"  # restored
    with pytest.raises(InvalidInputError):
        ans_mod.set_backend("rust")
    with pytest.raises(InvalidInputError):
        with ans_mod.use_backend("fast"):
            pass
    with ans_mod.use_backend("constriction"):  # never fails: numpy when constriction is unusable
        calls.clear()
        np.testing.assert_array_equal(decode(block, 2000, table), values)
        assert calls == ([] if HAVE_CS else [1])
        np.testing.assert_array_equal(decode(block, 2000, table, backend="numpy"), values)  # explicit wins
        assert calls[-1:] == [1]


def test_auto_cost_model_prefers_numpy_only_for_many_lanes():
    table, _, _ = valid_block(n=10)
    blk = lambda n, lanes: ans_numpy.Block(0, n, table, np.dtype(np.uint32), np.zeros(0, np.uint32),  # noqa: E731
                                           np.zeros(lanes, np.int64), np.zeros(lanes, np.int64), 0,
                                           np.zeros(0, np.uint8))
    assert not ans_mod._numpy_decode_is_faster([blk(1000, 1)])
    assert not ans_mod._numpy_decode_is_faster([blk(10**6, 300)])
    assert ans_mod._numpy_decode_is_faster([blk(10**6, 4000)])
    assert ans_mod._numpy_decode_is_faster([blk(10**6, 300)] * 20)


def test_decode_many_big_alphabets_with_small_ones():
    """Tables of more than 256 symbols switch the numpy decoder's rank tables to uint16."""
    rng = np.random.default_rng(21)
    big = FrequencyTable.from_counts(np.arange(3000) * 5, rng.integers(1, 100, 3000), precision=16)
    small = FrequencyTable(10, [1, 4, 9], [1000, 20, 4])
    jobs, expected = [], []
    for table, n, lanes in [(big, 40_000, 37), (small, 30_000, 20), (big, 500, 1), (small, 9_000, 19)]:
        values = rng.choice(table.symbols, size=n, p=table.freqs / table.freqs.sum())
        jobs.append((encode(values, table, lanes=lanes), n, table, np.int32))
        expected.append(values)
    for kw in NUMPY_PATHS:
        with numpy_paths(**kw):
            for g, e in zip(ans_mod.decode_many(jobs, backend="numpy"), expected):
                assert g.dtype == np.int32
                np.testing.assert_array_equal(g, e)
