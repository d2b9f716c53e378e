"""Multi-lane stack ANS coder, bit-exact with ``constriction.stream.stack.AnsCoder``.

The coder is constriction's ``AnsCoder`` (32-bit words, 64-bit state) at precision 24 with a
categorical model whose integer frequencies are the table's frequencies scaled by ``2**(24-Q)``.
Two interchangeable backends produce identical bytes and identical decoded arrays:

* ``"constriction"`` - the Rust library, used when importable and when a once-per-process
  self-check shows that it reproduces our integer model exactly;
* ``"numpy"`` - our own implementation, vectorised *across lanes* (one numpy operation advances
  every lane by one symbol), so files decode where constriction has no wheel. :func:`decode_many`
  advances the lanes of several blocks together, which is what makes it fast on small blocks.

A block of ``n`` symbols is split into ``L`` independent ANS streams ("lanes"): symbol ``i`` goes
to lane ``i % L``. Block byte format (normative text: ``spec/entropy.md``, section 6.2)::

    u32        L                    number of lanes; 0 iff n == 0 or the table has one symbol
    L x u32    word count of each lane
    words      every lane's 32-bit words (little-endian), lane 0 first

Set the environment variable ``RDFORMAT_NO_CONSTRICTION=1`` to force the numpy backend (or call
:func:`set_backend` / :func:`use_backend`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from bisect import bisect_right
from typing import Any

import numpy as np

from ..errors import CorruptDataError, InvalidInputError, LimitExceededError, RdcError, TruncatedError
from .models import FrequencyTable

__all__ = [
    "encode", "decode", "decode_many", "available_backends", "set_backend", "use_backend", "default_lanes",
    "CODER_PRECISION", "MAX_DEFAULT_LANES",
]

#: Precision (bits) of the ANS coder; table frequencies are scaled up to it.
CODER_PRECISION = 24
#: Upper bound of the lane count :func:`default_lanes` picks (``lanes=`` may ask for more).
MAX_DEFAULT_LANES = 4096
#: :func:`default_lanes` gives each lane at least this many symbols.
MIN_DEFAULT_SYMBOLS_PER_LANE = 256
#: Cost of one lane in bits, rounded up: its u32 word count plus 4-5 bytes of final state (measured
#: 8.0-9.0 bytes, more for fewer bits per symbol).
LANE_COST_BITS = 72
#: Default share of the coded size that :func:`default_lanes` may spend on lanes.
DEFAULT_LANE_OVERHEAD = 0.005

_U64 = np.uint64
#: Byte offset of bits 8..23 inside a native uint64 (the numpy decoder reads them as a uint16 view).
_SLOT16_OFFSET = 1 if sys.byteorder == "little" else 5
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


#: Up to this many active lanes the numpy decoder refills states with full-width arithmetic (fewer numpy
#: calls); above it, on the selected lanes only (less work per lane).
_BRANCHLESS_REFILL_MAX_LANES = 512
#: With this many lanes or fewer the numpy backend runs a plain Python loop per lane: a lockstep step
#: costs ~13 us of numpy call overhead, a scalar symbol ~0.6 us.
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


class _Block:
    """A validated ANS block (reader checks 1-5 of spec section 6.2 passed), ready to decode."""

    __slots__ = ("index", "n", "table", "odt", "lanes", "words", "starts", "counts", "word_base")

    def __init__(self, index: int, n: int, table: FrequencyTable, odt: np.dtype, words: np.ndarray,
                 starts: np.ndarray, counts: np.ndarray, word_base: int) -> None:
        self.index = index  # position in the caller's list (for error reports)
        self.n = n
        self.table = table
        self.odt = odt
        self.lanes = int(counts.size)
        self.words = words  # uint32, every lane's words, lane-major
        self.starts = starts  # int64, first word of each lane
        self.counts = counts  # int64, words of each lane
        self.word_base = word_base  # byte offset of words[0] in the caller's buffer


def _lane_error(block: _Block, j: int) -> CorruptDataError:
    return CorruptDataError(f"ANS block: lane {j} does not decode to its initial state "
                            f"(corrupt data or wrong table/count)", offset=block.word_base + 4 * int(block.starts[j]))


def _scalar_arrays(table: FrequencyTable) -> tuple[list[int], list[int]]:
    """k and c per rank as Python lists (for the scalar loop; c doubles as the bisect key)."""
    def build() -> tuple[list[int], list[int]]:
        k, c, _ = _enc_arrays(table)
        return k.tolist(), c.tolist()
    return table._derived("scalar", build)


class _Tables:
    """The coder arrays of the distinct tables of a batch, concatenated.

    With ``P`` the largest precision of the batch, ``slot_rank`` maps the ``P``-bit slot
    ``(S & (2**24-1)) >> (24-P)`` of a state, plus ``i << P`` for table ``i``, to the symbol's rank in its
    table (a table of precision ``Q < P`` has each of its slots repeated ``2**(P-Q)`` times). Per global
    rank ``rbase[i] + rank``: ``km = k - 2**24`` (wrapping) and ``c``. The slot table is the only large
    one, so it holds local ranks, uint8 when every table has at most 256 symbols: random lookups into it
    are what a step costs most once several tables are in play.
    """

    def __init__(self, tabs: list[FrequencyTable]) -> None:
        self.tabs = tabs
        m = np.array([t.num_symbols for t in tabs], dtype=np.int64)
        self.rbase = np.zeros(len(tabs), dtype=np.int64)
        np.cumsum(m[:-1], out=self.rbase[1:])
        self.bits = max(t.precision for t in tabs)
        self.rank_dtype = np.dtype(np.uint8 if int(m.max()) <= 1 << 8 else np.uint16)  # m <= 2**16

    def slot_rank(self) -> tuple[np.ndarray, np.ndarray]:
        """(slot -> rank in its table, ``[km, c]`` per global rank)."""
        rt = self.rank_dtype
        parts = [np.repeat(np.arange(t.num_symbols, dtype=rt), t.freqs.astype(np.intp) << (self.bits - t.precision))
                 for t in self.tabs]
        slot_rank = parts[0] if len(parts) == 1 else np.concatenate(parts)
        encs = [_enc_arrays(t) for t in self.tabs]
        k = encs[0][0] if len(encs) == 1 else np.concatenate([e[0] for e in encs])
        c = encs[0][1] if len(encs) == 1 else np.concatenate([e[1] for e in encs])
        kc = np.empty((k.size, 2), dtype=_U64)
        kc[:, 0] = k - _U64(1 << CODER_PRECISION)  # wraps modulo 2**64 on purpose
        kc[:, 1] = c
        return slot_rank, kc



def _decode_lockstep(blocks: list[_Block]) -> list[np.ndarray]:
    """Decode every lane of every block at once: one numpy operation advances all active lanes by one symbol.

    Lanes are sorted by their symbol count (descending), so the lanes still running at step ``t`` are a
    prefix of the lane arrays; the rank (in its block's table) decoded by each lane at each step is stored
    in ``rows``, step after step (step ``t`` holds one entry per active lane). When few lanes are left
    (``<= _SCALAR_MAX_LANES``, where numpy's per-call overhead dominates) they are finished one by one in
    Python. Lanes without words (every symbol has rank 0) never change state and are not stepped at all.
    """
    nb = len(blocks)
    # -- per-lane arrays, in block order ---------------------------------------------------------
    lanes_b = np.fromiter((b.lanes for b in blocks), dtype=np.int64, count=nb)
    lane_off = np.zeros(nb + 1, dtype=np.int64)
    np.cumsum(lanes_b, out=lane_off[1:])
    total = int(lane_off[-1])
    tab_of: dict[int, int] = {}
    for b in blocks:
        tab_of.setdefault(id(b.table), len(tab_of))
    tix = np.fromiter((tab_of[id(b.table)] for b in blocks), dtype=np.int64, count=nb)
    tabs = _Tables(list({id(b.table): b.table for b in blocks}.values()))
    if nb == 1:
        b = blocks[0]
        flat = b.words.astype(_U64)
        lo, cnt = b.starts, b.counts
        full, rest = divmod(b.n, b.lanes)
        nsym = np.full(total, full, dtype=np.int64)
        nsym[:rest] += 1
    else:
        wsize = np.fromiter((b.words.size for b in blocks), dtype=np.int64, count=nb)
        wbase = np.zeros(nb, dtype=np.int64)
        np.cumsum(wsize[:-1], out=wbase[1:])
        flat = np.concatenate([b.words for b in blocks]).astype(_U64)
        lo = np.concatenate([b.starts + wb for b, wb in zip(blocks, wbase.tolist())])
        cnt = np.concatenate([b.counts for b in blocks])
        nsym = np.empty(total, dtype=np.int64)
        for b, a in zip(blocks, lane_off.tolist()):
            full, rest = divmod(b.n, b.lanes)
            nsym[a:a + b.lanes] = full
            nsym[a:a + rest] += 1
    lane_tab = np.repeat(tix, lanes_b)
    # -- initial states: pop the last word (nonzero, checked by the parser), then one more if any ---
    end = lo + cnt
    pos = end.copy()  # the next word to pop is flat[pos - 1]
    state = np.zeros(total, dtype=_U64)
    has = cnt > 0
    state[has] = flat[end[has] - 1]
    pos[has] -= 1
    more = pos > lo
    state[more] = (state[more] << _U64(32)) | flat[pos[more] - 1]
    pos[more] -= 1
    # -- order lanes by the number of steps they run ---------------------------------------------
    neff = np.where(has, nsym, 0)
    order = np.argsort(-neff, kind="stable")
    identity = bool(np.all(order[1:] > order[:-1])) if total > 1 else True
    if not identity:
        neff_s, state, pos, lo_s, lane_tab_s = neff[order], state[order], pos[order], lo[order], lane_tab[order]
    else:
        neff_s, lo_s, lane_tab_s = neff, lo, lane_tab
    steps = int(neff_s[0]) if total else 0
    # active[t] = lanes with neff > t; offs[t] = start of step t's entries in rows
    ends_at = np.bincount(neff_s, minlength=steps + 1)
    active = total - np.cumsum(ends_at)[:steps]
    offs = np.zeros(steps + 1, dtype=np.int64)
    np.cumsum(active, out=offs[1:])
    rows = np.zeros(int(offs[-1]) or 1, dtype=tabs.rank_dtype) if offs[-1] < 2 else np.empty(
        int(offs[-1]), dtype=tabs.rank_dtype)  # ranks in their tables (never empty: see outputs)
    longest = max(-(-b.n // b.lanes) for b in blocks)
    if offs.size <= longest:  # blocks whose lanes have no words are not stepped; index past them
        offs = np.concatenate([offs, np.full(longest + 1 - offs.size, offs[-1], dtype=np.int64)])
    t_switch = int(np.searchsorted(-active, -_SCALAR_MAX_LANES, side="left")) if steps else 0
    if t_switch:
        _lockstep_steps(tabs, lane_tab_s, flat, state, pos, lo_s, rows, offs, active, t_switch)
    # -- stragglers: lanes still running at t_switch, one at a time in Python ---------------------
    n_left = int(active[t_switch]) if t_switch < steps else 0
    for s in range(n_left):
        ti = int(lane_tab_s[s])
        kl, cl = _scalar_arrays(tabs.tabs[ti])
        st, p, a = int(state[s]), int(pos[s]), int(lo_s[s])
        w = flat[a:p].tolist()
        p -= a
        got: list[int] = []
        add = got.append
        for _ in range(int(neff_s[s]) - t_switch):
            q = st & _MASK24
            r = bisect_right(cl, q) - 1
            add(r)
            st = (st >> 24) * kl[r] + (q - cl[r])
            if st < 0x100000000 and p:
                p -= 1
                st = (st << 32) | w[p]
        state[s] = st
        pos[s] = p + a
        if got:
            rows[offs[t_switch:t_switch + len(got)] + s] = got
    # -- every lane must end in state 0 with all its words consumed --------------------------------
    bad = np.flatnonzero((state != 0) | (pos != lo_s))
    if bad.size:
        lane = int(order[bad].min())
        bi = int(np.searchsorted(lane_off, lane, side="right")) - 1
        err = _lane_error(blocks[bi], lane - int(lane_off[bi]))
        err.block_index = blocks[bi].index  # type: ignore[attr-defined]
        raise err
    # -- outputs: the symbols of the ranks, gathered in block order -------------------------------
    results = []
    if not identity:
        col = np.empty(total, dtype=np.int64)
        col[order] = np.arange(total, dtype=np.int64)
    for bi, b in enumerate(blocks):
        lut = b.table.symbols.astype(b.odt)
        if nb == 1 and identity and rows.size == b.n:  # rows are already in block order
            results.append(lut.take(rows, mode="clip"))
            continue
        a, L, n = int(lane_off[bi]), b.lanes, b.n
        full, rest = divmod(n, L)
        cols = col[a:a + L] if not identity else np.arange(a, a + L, dtype=np.int64)
        idx = np.empty((full + (1 if rest else 0), L), dtype=np.int64)
        np.add(offs[:idx.shape[0], None], cols[None, :], out=idx)
        out = lut.take(rows.take(idx.reshape(-1)[:n], mode="clip"), mode="clip")
        empty = np.flatnonzero(cnt[a:a + L] == 0)
        if empty.size:  # lanes without words decode to rank 0 only
            out[:full * L].reshape(full, L)[:, empty] = lut[0]
            out[full * L:][empty[empty < rest]] = lut[0]
        results.append(out)
    return results


def _lockstep_steps(tabs: _Tables, lane_tab: np.ndarray, flat: np.ndarray, state: np.ndarray, pos: np.ndarray,
                    lo: np.ndarray, rows: np.ndarray, offs: np.ndarray, active: np.ndarray, t_end: int) -> None:
    """Steps ``0..t_end-1`` of :func:`_decode_lockstep` for the lanes active at each step (a prefix)."""
    slot_rank, kc_tab = tabs.slot_rank()
    multi = len(tabs.tabs) > 1
    base = (lane_tab << tabs.bits) if multi else None  # each table's slots
    rbase = tabs.rbase[lane_tab] if multi else None  # each table's first global rank
    sh = None if tabs.bits == 16 else np.uint16(16 - tabs.bits)
    lanes = int(active[0])
    gg = np.empty(lanes, dtype=np.intp)
    ri = np.empty(lanes, dtype=np.intp)
    kc = np.empty((lanes, 2), dtype=_U64)
    hh = np.empty(lanes, dtype=_U64)
    ww = np.empty(lanes, dtype=_U64)
    nn = np.empty(lanes, dtype=_U64)
    ok = np.empty(lanes, dtype=np.bool_)
    s5 = _U64(5)
    s32 = _U64(32)
    s24 = _U64(CODER_PRECISION)
    lim = _U64(1 << 32)
    rshift, lshift, mul, add, sub, less, greater, bor, copyto = (
        np.right_shift, np.left_shift, np.multiply, np.add, np.subtract, np.less, np.greater, np.bitwise_or,
        np.copyto)
    take_r, take_kc, take_w = slot_rank.take, kc_tab.take, flat.take
    pos_u = pos.view(_U64)
    lo_u = lo.view(_U64)
    # segments of constant active-lane count
    cuts = np.flatnonzero(active[1:t_end] != active[:t_end - 1]) + 1
    bounds = [0] + cuts.tolist() + [t_end]
    offs_l = offs.tolist()
    for t0, t1 in zip(bounds[:-1], bounds[1:]):
        A = int(active[t0])
        st, ps, pu, lw, lu = state[:A], pos[:A], pos_u[:A], lo[:A], lo_u[:A]
        # bits 8..23 of every state, read in place (a uint16 view), hold the slot
        slot16 = np.ndarray((A,), dtype=np.uint16, buffer=state, offset=_SLOT16_OFFSET, strides=(8,))
        g, r_, h_, w_, n_, ok_ = gg[:A], ri[:A], hh[:A], ww[:A], nn[:A], ok[:A]
        kc_ = kc[:A]
        k_, c_ = kc_[:, 0], kc_[:, 1]
        base_ = None if base is None else base[:A]
        rbase_ = None if rbase is None else rbase[:A]
        # No lane pops more than one word per step: none can run dry for min(words left) steps.
        t = t0
        while t < t1:
            safe = min(t1, t + int((ps - lw).min()))
            check = safe <= t
            stop = t + 1 if check else safe
            for u in range(t, stop):
                row = rows[offs_l[u]:offs_l[u] + A]
                # the slot identifies the symbol's rank in its table
                if sh is None and base_ is None:
                    take_r(slot16, out=row, mode="clip")
                else:
                    if sh is None:
                        add(slot16, base_, out=g)
                    else:
                        rshift(slot16, sh, out=g)
                        if base_ is not None:
                            add(g, base_, out=g)
                    take_r(g, out=row, mode="clip")
                if rbase_ is None:
                    copyto(r_, row)
                else:
                    add(row, rbase_, out=r_)
                take_kc(r_, axis=0, out=kc_, mode="clip")
                # S = (S >> 24) * k + (S & (2**24-1)) - c  ==  S + (S >> 24) * (k - 2**24) - c  (mod 2**64)
                rshift(st, s24, out=h_)
                mul(h_, k_, out=h_)
                add(st, h_, out=st)
                sub(st, c_, out=st)
                if A <= _BRANCHLESS_REFILL_MAX_LANES:
                    # refill (S = S << 32 | next word) the lanes whose state fell below 2**32 and that
                    # have words left, without branches: n = 1 for those lanes, else 0
                    less(st, lim, out=n_, casting="unsafe")
                    if check:
                        greater(pu, lu, out=ok_)
                        mul(n_, ok_, out=n_, casting="unsafe")
                    sub(pu, n_, out=pu)
                    take_w(ps, out=w_, mode="clip")
                    mul(w_, n_, out=w_)
                    lshift(n_, s5, out=n_)
                    lshift(st, n_, out=st)
                    bor(st, w_, out=st)
                else:
                    # the same on the selected lanes only (cheaper when there are many lanes)
                    less(st, lim, out=ok_)
                    sel = ok_.nonzero()[0]
                    if sel.size:
                        p = ps.take(sel)
                        if check:
                            keep = p > lw.take(sel)
                            if not keep.all():
                                sel = sel[keep]
                                p = p[keep]
                        p -= 1
                        ps[sel] = p
                        st[sel] = (st.take(sel) << s32) | take_w(p)
            t = stop


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


_preferred = "auto"  # what backend="auto" means; see set_backend()


def set_backend(name: str) -> str:
    """Choose what ``backend="auto"`` means in this process; returns the previous choice.

    ``"auto"`` (the default) picks per call the backend expected to be faster, ``"numpy"`` always uses
    the pure numpy coder, ``"constriction"`` uses constriction whenever it is usable (and numpy otherwise,
    silently: files must always load). Every backend gives identical results, so this only changes speed;
    it exists for benchmarks and tests. :func:`use_backend` is the context-manager form.
    """
    global _preferred
    if name not in _BACKEND_NAMES:
        raise InvalidInputError(f"unknown backend {name!r}; expected one of {', '.join(_BACKEND_NAMES)}")
    old, _preferred = _preferred, name
    return old


@contextlib.contextmanager
def use_backend(name: str) -> Any:
    """``with use_backend("numpy"): ...`` - :func:`set_backend` for the duration of a block."""
    old = set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def _resolve_backend(backend: str) -> tuple[Any, bool]:
    """(constriction module or None for numpy, whether the choice may still go to the faster backend)."""
    if backend not in _BACKEND_NAMES:
        raise InvalidInputError(f"unknown backend {backend!r}; expected one of {', '.join(_BACKEND_NAMES)}")
    free = backend == "auto"
    if free:
        backend, free = _preferred, _preferred == "auto"
        if backend == "constriction":
            return _constriction()[0], False
    if backend == "numpy":
        return None, False
    cs, reason = _constriction()
    if cs is None and backend == "constriction":
        raise InvalidInputError(f"backend 'constriction' is not available ({reason})")
    return cs, free


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


#: Cost model of the two decoders (seconds; measured on x86-64, one core). constriction: per symbol
#: (binary-search model lookup behind a dynamic binding) and per lane (one coder object each). numpy:
#: per lockstep step (~16 numpy calls), per symbol stepped, per straggler symbol (Python loop), per block.
_CS_PER_SYMBOL, _CS_PER_LANE = 35e-9, 2.5e-6
_NP_PER_STEP, _NP_PER_SYMBOL, _NP_PER_SCALAR_SYMBOL, _NP_PER_BLOCK = 13e-6, 9e-9, 0.8e-6, 60e-6


def _numpy_decode_is_faster(blocks: list[_Block]) -> bool:
    """Whether the lockstep numpy decoder is expected to beat constriction on these blocks."""
    n = sum(b.n for b in blocks)
    lanes = sum(b.lanes for b in blocks)
    t_cs = n * _CS_PER_SYMBOL + lanes * _CS_PER_LANE
    # lanes sorted by length; the lockstep runs while more than _SCALAR_MAX_LANES lanes are active
    per_lane = np.sort(np.concatenate([np.full(b.lanes, -(-b.n // b.lanes), dtype=np.int64) for b in blocks]))
    steps = int(per_lane[-_SCALAR_MAX_LANES - 1]) if per_lane.size > _SCALAR_MAX_LANES else 0
    scalar = int(np.maximum(per_lane[-_SCALAR_MAX_LANES:] - steps, 0).sum())
    t_np = steps * _NP_PER_STEP + n * _NP_PER_SYMBOL + scalar * _NP_PER_SCALAR_SYMBOL + len(blocks) * _NP_PER_BLOCK
    return t_np < t_cs


def default_lanes(n: int, ideal_bits: float, *, size_bits: float | None = None,
                  overhead: float = DEFAULT_LANE_OVERHEAD) -> int:
    """Lane count :func:`encode` picks for ``n`` symbols whose ideal coded size is ``ideal_bits``.

    Lanes make decoding parallel (the numpy decoder advances all lanes of a block, or of several
    blocks, with each numpy operation: fewer steps, less time) and cost 8-9 bytes each (4 for the
    word count, 4-5 for the final state). The count spends at most ``overhead`` (default 0.5%) of
    ``size_bits`` on lanes; ``size_bits`` defaults to ``ideal_bits``, a codec whose block is only part of
    what it stores (e.g. one byte plane among raw ones) may pass the size of the whole. At most 4096
    lanes, at least 256 symbols per lane, at least one lane:
    ``max(1, min(4096, n // 256, floor(overhead * size_bits / 72)))``.
    """
    if n <= 0:
        return 0
    budget = overhead * (ideal_bits if size_bits is None else size_bits)
    by_size = int(budget // LANE_COST_BITS) if budget > 0 else 0
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
    cs, _ = _resolve_backend(backend)
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




def _check_decode_args(count: Any, table: Any, out_dtype: Any) -> tuple[int, np.dtype]:
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
    return n, odt.newbyteorder("=")


def _parse_block(buf: Any, n: int, table: FrequencyTable, odt: np.dtype, index: int) -> np.ndarray | _Block:
    """Apply the reader checks of spec section 6.2; a trivial block's output, or the block to decode."""
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
    return _Block(index, n, table, odt, words, starts, counts, header_end)


def _decode_parsed(blocks: list[_Block], cs: Any, free: bool) -> list[np.ndarray]:
    if not blocks:
        return []
    if cs is not None and not (free and _numpy_decode_is_faster(blocks)):
        out = []
        for b in blocks:
            try:
                out.append(_decode_constriction(cs, b.words, b.starts, b.counts, b.n, b.table, b.odt,
                                                b.word_base))
            except CorruptDataError as exc:
                exc.block_index = b.index  # type: ignore[attr-defined]
                raise
        return out
    return _decode_lockstep(blocks)


def decode(buf: Any, count: int, table: FrequencyTable, *, backend: str = "auto",
           out_dtype: Any = np.uint32) -> np.ndarray:
    """Decode an ANS block of exactly ``count`` symbols; the block must fill ``buf`` exactly.

    Args:
        buf: the block (bytes-like). Not modified.
        count: number of symbols (from the tensor header); the output has this many elements.
        table: the block's entropy model.
        backend: ``"auto"``, ``"constriction"`` or ``"numpy"``; every backend returns the same array.
            ``"auto"`` picks the one expected to be faster (numpy wins for blocks with many lanes),
            unless :func:`set_backend` fixed a choice.
        out_dtype: integer dtype of the result; every table symbol must fit it.

    Returns:
        1-D array of ``count`` symbol values.

    Raises:
        TruncatedError: ``buf`` ends before the block does.
        CorruptDataError: bad lane count, extra bytes, a lane that does not decode cleanly, or a
            table symbol that ``out_dtype`` cannot hold. Error offsets are positions in ``buf``.
        InvalidInputError: bad ``count``, ``table``, ``backend`` or ``out_dtype``.
    """
    n, odt = _check_decode_args(count, table, out_dtype)
    cs, free = _resolve_backend(backend)
    parsed = _parse_block(buf, n, table, odt, 0)
    if isinstance(parsed, np.ndarray):
        return parsed
    return _decode_parsed([parsed], cs, free)[0]


def decode_many(blocks: Any, *, backend: str = "auto", out_dtype: Any = np.uint32) -> list[np.ndarray]:
    """Decode several ANS blocks at once; same results as :func:`decode` on each, usually much faster.

    The numpy backend advances the lanes of *all* blocks together, one numpy operation per step for
    every lane of every block, so many small blocks (byte planes of a chunk, chunks of a tensor, small
    tensors) cost about as many steps as the longest one instead of the sum.

    Args:
        blocks: iterable of ``(buf, count, table)`` or ``(buf, count, table, out_dtype)`` tuples,
            with the meaning of :func:`decode`'s arguments (each block fills its ``buf`` exactly).
        backend: as for :func:`decode`.
        out_dtype: default integer dtype of the results (a 4-tuple overrides it for its block).

    Returns:
        One 1-D array per block, in order.

    Raises:
        The errors of :func:`decode`. Every block is checked before any is decoded; the error concerns
        the first failing block, whose position in ``blocks`` is the exception's ``block_index``
        attribute (error offsets are positions in that block's ``buf``).
    """
    cs, free = _resolve_backend(backend)
    results: list[Any] = []
    pending: list[_Block] = []
    for i, item in enumerate(blocks):
        try:
            if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
                raise InvalidInputError(f"decode_many: block {i} must be (buf, count, table[, out_dtype]), "
                                        f"got {type(item).__name__}")
            n, odt = _check_decode_args(item[1], item[2], item[3] if len(item) == 4 else out_dtype)
            parsed = _parse_block(item[0], n, item[2], odt, i)
        except RdcError as exc:
            exc.block_index = i  # type: ignore[attr-defined]
            raise
        if isinstance(parsed, _Block):
            pending.append(parsed)
        results.append(parsed)
    decoded = iter(_decode_parsed(pending, cs, free))
    return [next(decoded) if isinstance(r, _Block) else r for r in results]
