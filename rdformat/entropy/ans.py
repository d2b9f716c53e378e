"""Multi-lane stack ANS coder, bit-exact with ``constriction.stream.stack.AnsCoder``.

The coder is constriction's ``AnsCoder`` (32-bit words, 64-bit state) at precision 24 with a
categorical model whose integer frequencies are the table's frequencies scaled by ``2**(24-Q)``.
Two interchangeable backends produce identical bytes and identical decoded arrays:

* ``"constriction"`` - the Rust library, used when importable and when a once-per-process
  self-check shows that it reproduces our integer model exactly;
* ``"numpy"`` - our own implementation, vectorised *across lanes* (one numpy operation advances
  every lane by one symbol), so files decode where constriction has no wheel.

A block of ``n`` symbols is split into ``L`` independent ANS streams ("lanes"): symbol ``i`` goes
to lane ``i % L``. Block byte format (normative text: ``spec/entropy.md``, section 6.2)::

    u32        L                    number of lanes; 0 iff n == 0 or the table has one symbol
    L x u32    word count of each lane
    words      every lane's 32-bit words (little-endian), lane 0 first

Set the environment variable ``RDFORMAT_NO_CONSTRICTION=1`` to force the numpy backend.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ..errors import CorruptDataError, InvalidInputError, LimitExceededError, TruncatedError
from .models import FrequencyTable

__all__ = ["encode", "decode", "available_backends", "default_lanes", "CODER_PRECISION", "MAX_DEFAULT_LANES"]

#: Precision (bits) of the ANS coder; table frequencies are scaled up to it.
CODER_PRECISION = 24
#: Upper bound of the lane count :func:`encode` picks by itself (``lanes=`` may ask for more).
MAX_DEFAULT_LANES = 1024
#: :func:`encode` gives each lane at least this many symbols by default (numpy decode speed).
MIN_DEFAULT_SYMBOLS_PER_LANE = 1024
#: Default lane count keeps the lane overhead (~8 bytes per lane) near 1% of the ideal size.
_LANE_OVERHEAD_BITS = 64 * 100

_U64 = np.uint64
_MASK24 = (1 << CODER_PRECISION) - 1
_ENV_DISABLE = "RDFORMAT_NO_CONSTRICTION"
_BACKEND_NAMES = ("auto", "constriction", "numpy")


# --------------------------------------------------------------------------------------------
# value -> rank
# --------------------------------------------------------------------------------------------


def _ranks(values: np.ndarray, table: FrequencyTable) -> np.ndarray:
    """Rank (index in ``table.symbols``) of every value; InvalidInputError if a value is absent.

    The result is an unsigned integer array (``values`` itself when the table symbols are exactly
    ``0..m-1`` and ``values`` is uint8/16/32, else ``uint16``: ranks are < 2**16 since Q <= 16).
    """
    v = values
    if v.size == 0:
        return np.zeros(0, dtype=np.uint16)
    sym = table.symbols
    m = sym.size
    lo, hi = int(v.min()), int(v.max())
    top = int(sym[-1])
    bad_msg = None
    ranks = None
    if lo < int(sym[0]) or hi > top:
        bad_msg = "symbol value outside the table"
    elif top == m - 1:  # table symbols are exactly 0..m-1: a value is its rank
        ranks = v if v.dtype.kind == "u" and v.dtype.itemsize < 8 else v.astype(np.uint16)
    elif top < max(1 << 20, 4 * v.size):
        lut = np.full(top + 1, m, dtype=np.uint32)
        lut[sym] = np.arange(m, dtype=np.uint32)
        found = lut[v]
        if int(found.max()) >= m:
            bad_msg = "symbol value not in the table"
        else:
            ranks = found.astype(np.uint16)
    else:
        found = np.searchsorted(sym, v)
        np.minimum(found, m - 1, out=found)
        if not np.array_equal(sym[found], v):
            bad_msg = "symbol value not in the table"
        else:
            ranks = found.astype(np.uint16)
    if bad_msg is not None:
        present = np.isin(v, sym)
        i = int(np.argmin(present))
        raise InvalidInputError(f"{bad_msg}: element {i} = {int(v[i])}")
    return ranks


# --------------------------------------------------------------------------------------------
# per-table coder arrays (cached on the immutable table)
# --------------------------------------------------------------------------------------------


def _enc_arrays(table: FrequencyTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per rank: k = f << (24-Q), c = cum << (24-Q), and the flush threshold k << 40 (uint64)."""
    def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = _U64(CODER_PRECISION - table.precision)
        k = table.freqs.astype(_U64) << s
        c = table._cumulative()[:-1].astype(_U64) << s
        kt = k << _U64(64 - CODER_PRECISION)
        return k, c, kt
    return table._derived("enc", build)


def _dec_arrays(table: FrequencyTable) -> tuple[np.ndarray, np.ndarray]:
    """Per slot (q >> (24-Q)): k - 2**24 (wrapping) and c, both uint64, length 2**Q."""
    def build() -> tuple[np.ndarray, np.ndarray]:
        k, c, _ = _enc_arrays(table)
        freqs = table.freqs.astype(np.intp)
        km = np.repeat(k - _U64(1 << CODER_PRECISION), freqs)  # wraps modulo 2**64 on purpose
        cs = np.repeat(c, freqs)
        return km, cs
    return table._derived("dec", build)


def _constriction_model(cs: Any, table: FrequencyTable) -> Any:
    """A constriction ``Categorical`` whose fixed-point cdf at precision 24 is exactly ours.

    constriction's ``perfect=False`` quantiser maps weights ``w`` to ``cdf_i = floor(W_i * (2**24 - m) /
    sum(w)) + i`` with ``W_i`` the prefix sums. With ``w = k - 1`` the scale is exactly 1.0, so
    ``cdf_i = sum_{j<i} k_j``. Requires m >= 2.
    """
    def build() -> Any:
        k, _, _ = _enc_arrays(table)
        return cs.stream.model.Categorical((k - _U64(1)).astype(np.float64), perfect=False)
    return table._derived("cmodel", build)


# --------------------------------------------------------------------------------------------
# numpy backend
# --------------------------------------------------------------------------------------------


#: With this many lanes or fewer the numpy backend runs a plain Python loop per lane: a lockstep step
#: costs ~10 us of numpy call overhead, a scalar symbol ~0.5 us.
_SCALAR_MAX_LANES = 16


def _encode_scalar(ranks: np.ndarray, table: FrequencyTable, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Python-int version of :func:`_encode_numpy` (fast for few lanes)."""
    k_tab, c_tab, _ = _enc_arrays(table)
    kl, cl = k_tab.tolist(), c_tab.tolist()
    counts = []
    words: list[int] = []
    for j in range(lanes):
        state = 0
        out: list[int] = []
        emit = out.append
        for r in reversed(ranks[j::lanes].tolist()):
            k = kl[r]
            if (state >> 40) >= k:
                emit(state & 0xFFFFFFFF)
                state >>= 32
            state = ((state // k) << 24) | (cl[r] + state % k)
        while state:
            emit(state & 0xFFFFFFFF)
            state >>= 32
        counts.append(len(out))
        words += out
    return np.array(counts, dtype=np.int64), np.array(words, dtype=np.uint32)


def _decode_scalar(words: np.ndarray, starts: np.ndarray, counts: np.ndarray, n: int,
                   table: FrequencyTable, out_dtype: np.dtype, word_base: int) -> np.ndarray:
    """Python-int version of :func:`_decode_numpy` (fast for few lanes)."""
    lanes = counts.size
    sh = CODER_PRECISION - table.precision
    k_tab, c_tab, _ = _enc_arrays(table)
    kl, cl = k_tab.tolist(), c_tab.tolist()
    slot_rank = np.repeat(np.arange(table.num_symbols), table.freqs.astype(np.intp)).tolist()
    lut = table.symbols.astype(out_dtype)
    out = np.empty(n, dtype=out_dtype)
    for j in range(lanes):
        a = int(starts[j])
        w = words[a:a + int(counts[j])].tolist()
        p = len(w)
        state = 0
        if p:
            p -= 1
            state = w[p]  # nonzero: checked by the caller
            if p:
                p -= 1
                state = (state << 32) | w[p]
        ranks = []
        add = ranks.append
        for _ in range(j, n, lanes):
            q = state & _MASK24
            r = slot_rank[q >> sh]
            add(r)
            state = (state >> 24) * kl[r] + (q - cl[r])
            if state < 0x100000000 and p:
                p -= 1
                state = (state << 32) | w[p]
        if state or p:
            raise CorruptDataError(f"ANS block: lane {j} does not decode to its initial state "
                                   f"(corrupt data or wrong table/count)", offset=word_base + 4 * a)
        out[j::lanes] = lut[ranks]
    return out


def _encode_numpy(ranks: np.ndarray, table: FrequencyTable, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode ``ranks`` into ``lanes`` streams; returns (word count per lane, all words lane-major)."""
    if lanes <= _SCALAR_MAX_LANES:
        return _encode_scalar(ranks, table, lanes)
    n = ranks.size
    k_tab, c_tab, kt_tab = _enc_arrays(table)
    full, rest = divmod(n, lanes)
    steps = full + (1 if rest else 0) + 2  # + low and high word of the final state
    words2d = np.empty((steps, lanes), dtype=np.uint32)
    emit2d = np.zeros((steps, lanes), dtype=np.bool_)
    state = np.zeros(lanes, dtype=_U64)
    rows = ranks[:full * lanes].reshape(full, lanes)
    s24 = _U64(CODER_PRECISION)
    s32 = _U64(32)
    rshift, copyto, divmod_, lshift = np.right_shift, np.copyto, np.divmod, np.left_shift

    def step(st: np.ndarray, rr: np.ndarray, wrow: np.ndarray, erow: np.ndarray) -> None:
        # if (state >> 40) >= k: emit the low word, state >>= 32
        np.greater_equal(st, kt_tab.take(rr), out=erow)
        copyto(wrow, st, casting="unsafe")  # uint64 -> uint32 keeps the low 32 bits
        rshift(st, erow * s32, out=st)
        # state = ((state // k) << 24) | (c + state % k)
        d, r = divmod_(st, k_tab.take(rr))
        lshift(d, s24, out=d)
        d += c_tab.take(rr)
        d += r
        st[...] = d

    e = 0
    if rest:  # symbols t = full (only lanes < rest) are encoded first: the coder runs backwards
        step(state[:rest], ranks[full * lanes:], words2d[0, :rest], emit2d[0, :rest])
        e = 1
    for t in range(full - 1, -1, -1):
        step(state, rows[t], words2d[e], emit2d[e])
        e += 1
    # flush: the state's words, least significant first, trailing zero words dropped
    copyto(words2d[e], state, casting="unsafe")
    np.not_equal(state, 0, out=emit2d[e])
    copyto(words2d[e + 1], state >> s32, casting="unsafe")
    np.greater_equal(state, _U64(1 << 32), out=emit2d[e + 1])
    counts = emit2d.sum(axis=0, dtype=np.int64)
    words = words2d.T[emit2d.T]  # lane-major, each lane in emission order
    return counts, words


def _decode_numpy(words: np.ndarray, starts: np.ndarray, counts: np.ndarray, n: int,
                  table: FrequencyTable, out_dtype: np.dtype, word_base: int) -> np.ndarray:
    """Decode ``n`` symbols from ``L = counts.size`` lanes, all lanes advanced in lockstep."""
    lanes = counts.size
    if lanes <= _SCALAR_MAX_LANES:
        return _decode_scalar(words, starts, counts, n, table, out_dtype, word_base)
    q = table.precision
    km_tab, c_tab = _dec_arrays(table)
    take_k, take_c = km_tab.take, c_tab.take
    flat = words.astype(_U64)
    ends = starts + counts
    pos = ends.copy()  # next word to pop is flat[pos - 1]
    state = np.zeros(lanes, dtype=_U64)
    # initial state: pop the last word (nonzero, checked by the caller), then one more if any
    has = counts > 0
    state[has] = flat[ends[has] - 1]
    pos[has] -= 1
    more = pos > starts
    state[more] = (state[more] << _U64(32)) | flat[pos[more] - 1]
    pos[more] -= 1

    full, rest = divmod(n, lanes)
    slots = np.empty((full + (1 if rest else 0), lanes), dtype=np.uint16)
    tmp = np.empty(lanes, dtype=_U64)
    hi = np.empty(lanes, dtype=_U64)
    need = np.empty(lanes, dtype=np.bool_)
    s_slot = _U64(CODER_PRECISION - q)
    mask_q = _U64((1 << q) - 1)
    s24 = _U64(CODER_PRECISION)
    s32 = _U64(32)
    lim = _U64(1 << 32)
    rshift, band, less = np.right_shift, np.bitwise_and, np.less

    def step(st: np.ndarray, row: np.ndarray, tm: np.ndarray, h: np.ndarray, nd: np.ndarray,
             ps: np.ndarray, lo: np.ndarray, check: bool) -> None:
        # slot = (state & (2**24-1)) >> (24-Q) identifies the symbol
        rshift(st, s_slot, out=tm)
        band(tm, mask_q, out=tm)
        row[...] = tm
        idx = tm.view(np.int64)
        # state = (state >> 24) * k + (state & (2**24-1)) - c  ==  state + (state >> 24) * (k - 2**24) - c
        kk = take_k(idx)
        cc = take_c(idx)
        rshift(st, s24, out=h)
        h *= kk
        st += h
        st -= cc
        # refill lanes whose state fell below 2**32 and that still have words
        less(st, lim, out=nd)
        sel = nd.nonzero()[0]
        if sel.size:
            p = ps[sel]
            if check:
                ok = p > lo[sel]
                if not ok.all():
                    sel = sel[ok]
                    p = p[ok]
            p -= 1
            ps[sel] = p
            st[sel] = (st[sel] << s32) | flat[p]

    # A lane pops at most one word per step, so no lane can run dry for min(words left) steps:
    # the "has words left" test is only needed near the end.
    unchecked_until = 0
    for t in range(full):
        if t >= unchecked_until:
            unchecked_until = t + int((pos - starts).min())
        step(state, slots[t], tmp, hi, need, pos, starts, t >= unchecked_until)
    if rest:
        step(state[:rest], slots[full, :rest], tmp[:rest], hi[:rest], need[:rest], pos[:rest], starts[:rest],
             True)

    bad = np.flatnonzero((state != 0) | (pos != starts))
    if bad.size:
        j = int(bad[0])
        raise CorruptDataError(f"ANS block: lane {j} does not decode to its initial state "
                               f"(corrupt data or wrong table/count)", offset=word_base + 4 * int(starts[j]))
    lut = np.repeat(table.symbols.astype(out_dtype), table.freqs.astype(np.intp))
    return lut[slots.reshape(-1)[:n]]


# --------------------------------------------------------------------------------------------
# constriction backend
# --------------------------------------------------------------------------------------------


def _encode_constriction(cs: Any, ranks: np.ndarray, table: FrequencyTable,
                         lanes: int) -> tuple[np.ndarray, np.ndarray]:
    model = _constriction_model(cs, table)
    coder_cls = cs.stream.stack.AnsCoder
    parts = []
    for j in range(lanes):
        coder = coder_cls()
        coder.encode_reverse(ranks[j::lanes].astype(np.int32), model)
        parts.append(coder.get_compressed())
    counts = np.fromiter((p.size for p in parts), dtype=np.int64, count=lanes)
    words = np.concatenate(parts).astype(np.uint32, copy=False) if parts else np.zeros(0, np.uint32)
    return counts, words


def _decode_constriction(cs: Any, words: np.ndarray, starts: np.ndarray, counts: np.ndarray, n: int,
                         table: FrequencyTable, out_dtype: np.dtype, word_base: int) -> np.ndarray:
    model = _constriction_model(cs, table)
    coder_cls = cs.stream.stack.AnsCoder
    lanes = counts.size
    full, rest = divmod(n, lanes)
    out = np.empty(n, dtype=out_dtype)
    sym = table.symbols
    identity = int(sym[-1]) == sym.size - 1
    lut = sym.astype(out_dtype)
    for j in range(lanes):
        a = int(starts[j])
        coder = coder_cls(words[a:a + int(counts[j])])
        got = coder.decode(model, full + (1 if j < rest else 0))
        if coder.num_words() != 0:
            raise CorruptDataError(f"ANS block: lane {j} does not decode to its initial state "
                                   f"(corrupt data or wrong table/count)", offset=word_base + 4 * a)
        out[j::lanes] = got if identity else lut[got]
    return out


# --------------------------------------------------------------------------------------------
# backend selection and self-check
# --------------------------------------------------------------------------------------------

_check_lock = threading.Lock()
_check_result: tuple[Any, str] | None = None  # (constriction module or None, reason)


def _probe_cases() -> list[tuple[FrequencyTable, np.ndarray, int]]:
    rng = np.random.default_rng(20240611)
    cases = []
    t1 = FrequencyTable(14, [0, 3, 7, 100, 101, 5000], [9000, 3000, 2000, 1000, 1383, 1])
    cases.append((t1, rng.choice(t1.symbols, size=1001, p=t1.freqs / t1.freqs.sum()), 3))
    t2 = FrequencyTable.from_counts(np.arange(300) * 7, rng.integers(0, 1000, size=300) ** 2, precision=16)
    cases.append((t2, rng.choice(t2.symbols, size=777), 2))
    t3 = FrequencyTable(1, [5, 6], [1, 1])
    cases.append((t3, rng.choice(t3.symbols, size=300), 1))
    t4 = FrequencyTable(8, [0, 1, 2], [254, 1, 1])
    cases.append((t4, np.where(rng.random(2000) < 0.99, 0, rng.integers(0, 3, 2000)), 5))
    return cases


def _self_check(cs: Any) -> str:
    """Empty string if constriction reproduces the numpy coder exactly, else the reason."""
    for table, values, lanes in _probe_cases():
        ranks = _ranks(np.asarray(values), table)
        c_np, w_np = _encode_numpy(ranks, table, lanes)
        c_cs, w_cs = _encode_constriction(cs, ranks, table, lanes)
        if not (np.array_equal(c_np, c_cs) and np.array_equal(w_np, w_cs)):
            return "constriction output differs from the reference coder"
        starts = np.concatenate([[0], np.cumsum(c_cs)[:-1]]).astype(np.int64)
        got = _decode_constriction(cs, w_cs, starts, c_cs, values.size, table, np.dtype(np.uint32), 0)
        if not np.array_equal(got, values):
            return "constriction does not decode the reference coder's output"
    return ""


def _constriction() -> tuple[Any, str]:
    """(module, "") if the constriction backend is usable, else (None, reason)."""
    global _check_result
    if os.environ.get(_ENV_DISABLE, "").strip() not in ("", "0"):
        return None, f"disabled by {_ENV_DISABLE}"
    res = _check_result
    if res is not None:
        return res
    with _check_lock:
        if _check_result is None:
            try:
                import constriction as cs  # noqa: PLC0415 - optional dependency

                _ = cs.stream.stack.AnsCoder, cs.stream.model.Categorical
                reason = _self_check(cs)
            except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
                cs, reason = None, f"constriction not usable: {type(exc).__name__}: {exc}"
            _check_result = (cs if not reason else None, reason)
        return _check_result


def available_backends() -> list[str]:
    """Usable backends, fastest first: ``["constriction", "numpy"]`` or ``["numpy"]``.

    constriction counts only if it imports, passes the once-per-process bit-exactness self-check,
    and ``RDFORMAT_NO_CONSTRICTION`` is not set.
    """
    cs, _ = _constriction()
    return ["constriction", "numpy"] if cs is not None else ["numpy"]


def _resolve_backend(backend: str) -> Any:
    """The constriction module to use, or None for numpy."""
    if backend not in _BACKEND_NAMES:
        raise InvalidInputError(f"unknown backend {backend!r}; expected one of {', '.join(_BACKEND_NAMES)}")
    if backend == "numpy":
        return None
    cs, reason = _constriction()
    if cs is None and backend == "constriction":
        raise InvalidInputError(f"backend 'constriction' is not available ({reason})")
    return cs


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def _numpy_decode_is_faster(n: int, lanes: int) -> bool:
    """Rough cost model (measured on x86-64): constriction decodes at ~33 ns/symbol + ~6 us/lane
    (binary-search model lookup behind a dynamic Python binding); the lockstep numpy decoder costs
    ~10 us + ~12 ns/lane per step, so it wins for blocks with many lanes (~600 or more)."""
    if lanes <= _SCALAR_MAX_LANES:
        return False
    steps = -(-n // lanes)
    return steps * (10e-6 + 12e-9 * lanes) < n * 33e-9 + lanes * 6e-6


def default_lanes(n: int, ideal_bits: float) -> int:
    """Lane count :func:`encode` picks for ``n`` symbols whose ideal coded size is ``ideal_bits``.

    Each lane costs about 8 bytes (4 for its word count, ~4 for its final state), so the count is
    chosen to keep that near 1% of the payload, with at least 1024 symbols per lane and at most
    1024 lanes: ``max(1, min(1024, n // 1024, floor(ideal_bits / 6400)))``.
    """
    if n <= 0:
        return 0
    by_size = int(ideal_bits // _LANE_OVERHEAD_BITS) if ideal_bits > 0 else 0
    return max(1, min(MAX_DEFAULT_LANES, n // MIN_DEFAULT_SYMBOLS_PER_LANE, by_size))


def encode(symbols: np.ndarray, table: FrequencyTable, *, lanes: int | None = None,
           backend: str = "auto") -> bytes:
    """Encode ``symbols`` (integers, any shape, flattened in C order) into an ANS block.

    Args:
        symbols: values that must all be present in ``table``. Not modified.
        table: the entropy model; store it next to the block (:meth:`FrequencyTable.to_bytes`).
        lanes: number of lanes ``L`` (1..n); default :func:`default_lanes`. Ignored (``L = 0``)
            when there are no symbols or the table has a single symbol.
        backend: ``"auto"`` (constriction if usable), ``"constriction"`` or ``"numpy"``; every
            backend produces the same bytes.

    Returns:
        The block: ``u32 L``, ``L`` x ``u32`` word counts, then the words of lane 0, 1, ... (u32 LE).

    Raises:
        InvalidInputError: a value not in the table, a non-integer input, a bad ``lanes`` or backend.
    """
    if not isinstance(table, FrequencyTable):
        raise InvalidInputError(f"table must be a FrequencyTable, got {type(table).__name__}")
    cs = _resolve_backend(backend)
    arr = np.asarray(symbols)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        if not (arr.size == 0 and arr.dtype.kind == "f"):
            raise InvalidInputError(f"symbols must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    values = arr.reshape(-1)
    n = values.size
    ranks = _ranks(values, table)
    if n == 0 or table.num_symbols == 1:
        return np.zeros(1, dtype="<u4").tobytes()
    if lanes is None:
        hist = np.bincount(ranks, minlength=table.num_symbols)
        lanes = default_lanes(n, float(np.dot(hist, table._ideal_bits_per_rank())))
    else:
        try:
            lanes = int(lanes)
        except (TypeError, ValueError):
            raise InvalidInputError(f"lanes must be an integer, got {lanes!r}") from None
        if not 1 <= lanes <= n:
            raise InvalidInputError(f"lanes must be in 1..{n} (the number of symbols), got {lanes}")
        if lanes >= 1 << 32:
            raise LimitExceededError(f"lanes must be < 2**32, got {lanes}")
    if cs is not None:
        counts, words = _encode_constriction(cs, ranks, table, lanes)
    else:
        counts, words = _encode_numpy(ranks, table, lanes)
    if counts.size and int(counts.max()) >= 1 << 32:
        raise LimitExceededError("ANS block: a lane has 2**32 or more words; use more lanes")
    header = np.empty(lanes + 1, dtype="<u4")
    header[0] = lanes
    header[1:] = counts
    return header.tobytes() + words.astype("<u4", copy=False).tobytes()


def decode(buf: Any, count: int, table: FrequencyTable, *, backend: str = "auto",
           out_dtype: Any = np.uint32) -> np.ndarray:
    """Decode an ANS block of exactly ``count`` symbols; the block must fill ``buf`` exactly.

    Args:
        buf: the block (bytes-like). Not modified.
        count: number of symbols (from the tensor header); the output has this many elements.
        table: the block's entropy model.
        backend: ``"auto"``, ``"constriction"`` or ``"numpy"``; every backend returns the same array.
            ``"auto"`` picks the one expected to be faster (numpy wins for blocks with many lanes).
        out_dtype: integer dtype of the result; every table symbol must fit it.

    Returns:
        1-D array of ``count`` symbol values.

    Raises:
        TruncatedError: ``buf`` ends before the block does.
        CorruptDataError: bad lane count, extra bytes, a lane that does not decode cleanly, or a
            table symbol that ``out_dtype`` cannot hold. Error offsets are positions in ``buf``.
        InvalidInputError: bad ``count``, ``table``, ``backend`` or ``out_dtype``.
    """
    if not isinstance(table, FrequencyTable):
        raise InvalidInputError(f"table must be a FrequencyTable, got {type(table).__name__}")
    try:
        n = int(count)
        if n != count:
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidInputError(f"count must be an integer, got {count!r}") from None
    if n < 0:
        raise InvalidInputError(f"count must be >= 0, got {n}")
    try:
        odt = np.dtype(out_dtype)
    except TypeError:
        raise InvalidInputError(f"bad out_dtype {out_dtype!r}") from None
    if odt == np.bool_ or odt.kind not in "iu":
        raise InvalidInputError(f"out_dtype must be an integer dtype, got {odt}")
    cs = _resolve_backend(backend)
    try:
        data = np.frombuffer(buf, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as exc:
        raise InvalidInputError(f"ANS block: cannot read a buffer from {type(buf).__name__}: {exc}") from None
    size = data.size
    if n > 0 and int(table.symbols[-1]) > int(np.iinfo(odt).max):
        raise CorruptDataError(f"ANS block: table symbol {int(table.symbols[-1])} does not fit {odt}")
    if size < 4:
        raise TruncatedError("ANS block: missing lane count", offset=size)
    lanes = int(data[:4].view("<u4")[0])

    if n == 0 or table.num_symbols == 1:
        if lanes != 0:
            raise CorruptDataError(f"ANS block: {lanes} lanes where 0 are required "
                                   f"({'no symbols' if n == 0 else 'single-symbol table'})", offset=0)
        if size != 4:
            raise CorruptDataError(f"ANS block: {size - 4} bytes after the end of the block", offset=4)
        return np.full(n, table.symbols[0], dtype=odt)

    if not 1 <= lanes <= n:
        raise CorruptDataError(f"ANS block: lane count {lanes} not in 1..{n}", offset=0)
    header_end = 4 + 4 * lanes
    if header_end > size:
        raise TruncatedError(f"ANS block: {lanes} lane word counts need {4 * lanes} bytes, "
                             f"{size - 4} left", offset=size)
    counts = data[4:header_end].view("<u4").astype(np.int64)
    total = int(counts.sum())
    end = header_end + 4 * total
    if end > size:
        raise TruncatedError(f"ANS block: lanes hold {total} words ({4 * total} bytes), "
                             f"{size - header_end} bytes left", offset=size)
    if end < size:
        raise CorruptDataError(f"ANS block: {size - end} bytes after the end of the block", offset=end)
    words = data[header_end:end].view("<u4").astype(np.uint32)  # aligned native copy
    starts = np.zeros(lanes, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    nonempty = np.flatnonzero(counts)
    last = starts[nonempty] + counts[nonempty] - 1
    zero_last = np.flatnonzero(words[last] == 0)
    if zero_last.size:
        j = int(nonempty[zero_last[0]])
        raise CorruptDataError(f"ANS block: lane {j} ends in a zero word",
                               offset=header_end + 4 * int(last[zero_last[0]]))
    if cs is not None and not (backend == "auto" and _numpy_decode_is_faster(n, lanes)):
        return _decode_constriction(cs, words, starts, counts, n, table, odt, header_end)
    return _decode_numpy(words, starts, counts, n, table, odt, header_end)
