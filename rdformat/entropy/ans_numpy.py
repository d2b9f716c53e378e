"""The pure-numpy ANS coder: the reference backend of :mod:`rdformat.entropy.ans` (spec/entropy.md, 6.2).

The encoder runs every lane at once (one numpy operation per step, or a Python loop for few lanes);
the decoder (:func:`decode_lockstep`) advances every lane of *every* block of a batch together, one numpy
operation per step, and finishes the last few long lanes in Python. Works wherever numpy does.
"""

from __future__ import annotations

import sys
from bisect import bisect_right

import numpy as np

from ..errors import CorruptDataError, InvalidInputError
from .models import FrequencyTable

#: Precision (bits) of the ANS coder; table frequencies are scaled up to it.
CODER_PRECISION = 24

_U64 = np.uint64
#: Byte offset of bits 8..23 inside a native uint64 (the numpy decoder reads them as a uint16 view).
_SLOT16_OFFSET = 1 if sys.byteorder == "little" else 5
_MASK24 = (1 << CODER_PRECISION) - 1


def ranks_of(values: np.ndarray, table: FrequencyTable) -> np.ndarray:
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
        # ranks are below m <= 2**16: uint16 ranks straight from the lookup unless m itself (the mark of an
        # absent value) needs more
        kind = np.uint16 if m < 1 << 16 else np.uint32
        lut = np.full(top + 1, m, dtype=kind)
        lut[sym] = np.arange(m, dtype=kind)
        found = lut[v]
        if int(found.max()) >= m:
            bad_msg = "symbol value not in the table"
        else:
            ranks = found.astype(np.uint16, copy=False)
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


def enc_arrays(table: FrequencyTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per rank: k = f << (24-Q), c = cum << (24-Q), and the flush threshold k << 40 (uint64)."""
    def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = _U64(CODER_PRECISION - table.precision)
        k = table.freqs.astype(_U64) << s
        c = table._cumulative()[:-1].astype(_U64) << s
        kt = k << _U64(64 - CODER_PRECISION)
        return k, c, kt
    return table._derived("enc", build)


#: Up to this many active lanes the numpy decoder refills states with full-width arithmetic (fewer numpy
#: calls); above it, on the selected lanes only (less work per lane).
_BRANCHLESS_REFILL_MAX_LANES = 512
#: With this many lanes or fewer the numpy backend runs a plain Python loop per lane: a lockstep step
#: costs ~13 us of numpy call overhead, a scalar symbol ~0.6 us.
_SCALAR_MAX_LANES = 16


def _encode_scalar(ranks: np.ndarray, table: FrequencyTable, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Python-int version of :func:`encode_numpy` (fast for few lanes)."""
    k_tab, c_tab, _ = enc_arrays(table)
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


def encode_numpy(ranks: np.ndarray, table: FrequencyTable, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode ``ranks`` into ``lanes`` streams; returns (word count per lane, all words lane-major)."""
    if lanes <= _SCALAR_MAX_LANES:
        return _encode_scalar(ranks, table, lanes)
    n = ranks.size
    k_tab, c_tab, kt_tab = enc_arrays(table)
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


class Block:
    """A validated ANS block (reader checks 1-5 of spec section 6.2 passed), ready to decode."""

    __slots__ = ("index", "n", "table", "odt", "lanes", "_words", "starts", "counts", "word_base", "raw")

    def __init__(self, index: int, n: int, table: FrequencyTable, odt: np.dtype, words: np.ndarray,
                 starts: np.ndarray, counts: np.ndarray, word_base: int, raw: np.ndarray) -> None:
        self.index = index  # position in the caller's list (for error reports)
        self.n = n
        self.table = table
        self.odt = odt
        self.lanes = int(counts.size)
        self._words = words  # every lane's words, lane-major: a little-endian view of raw until first used
        self.starts = starts  # int64, first word of each lane
        self.counts = counts  # int64, words of each lane
        self.word_base = word_base  # byte offset of words[0] in the caller's buffer
        self.raw = raw  # uint8, the whole block as given (what the compiled decoder reads)

    @property
    def words(self) -> np.ndarray:
        """Every lane's words, lane-major, as an aligned native ``uint32`` copy made on first use (the
        compiled decoder reads ``raw`` and never needs it)."""
        if not (self._words.dtype == np.uint32 and self._words.flags.aligned and self._words.flags.writeable):
            self._words = self._words.astype(np.uint32)
        return self._words


def _lane_error(block: Block, j: int) -> CorruptDataError:
    return CorruptDataError(f"ANS block: lane {j} does not decode to its initial state "
                            f"(corrupt data or wrong table/count)", offset=block.word_base + 4 * int(block.starts[j]))


def _scalar_arrays(table: FrequencyTable) -> tuple[list[int], list[int]]:
    """k and c per rank as Python lists (for the scalar loop; c doubles as the bisect key)."""
    def build() -> tuple[list[int], list[int]]:
        k, c, _ = enc_arrays(table)
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
        encs = [enc_arrays(t) for t in self.tabs]
        k = encs[0][0] if len(encs) == 1 else np.concatenate([e[0] for e in encs])
        c = encs[0][1] if len(encs) == 1 else np.concatenate([e[1] for e in encs])
        kc = np.empty((k.size, 2), dtype=_U64)
        kc[:, 0] = k - _U64(1 << CODER_PRECISION)  # wraps modulo 2**64 on purpose
        kc[:, 1] = c
        return slot_rank, kc

    def search_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted search keys, ``[km, c]`` per global rank): what replaces the slot table when expanding
        the tables would cost more than their blocks' symbols justify.

        Key of global rank ``rbase[i] + r``: ``(i << 24) | c_r`` (c scaled to 24 bits); a state ``S`` of a
        lane of table ``i`` decodes to the last key ``<= (i << 24) | (S & (2**24-1))``, so the memory is
        linear in the tables' symbol counts (which their stored bytes bound), whatever their precision.
        """
        encs = [enc_arrays(t) for t in self.tabs]
        k = np.concatenate([e[0] for e in encs])
        keys = np.concatenate([e[1] | _U64(i << CODER_PRECISION) for i, e in enumerate(encs)])
        kc = np.empty((k.size, 2), dtype=_U64)
        kc[:, 0] = k - _U64(1 << CODER_PRECISION)  # wraps modulo 2**64 on purpose
        kc[:, 1] = keys & _U64(_MASK24)
        return keys, kc


#: The numpy decoder expands a table to ``2**Q`` slots (one lookup per symbol) only when its blocks in a
#: batch decode at least ``2**Q / SLOTS_PER_SYMBOL`` symbols; other tables are searched (log m per symbol),
#: so the memory of a batch's lookup tables stays below this many bytes per decoded symbol (a file of
#: thousands of tiny chunks, each with its own table, used to cost 64 KiB per table).
SLOTS_PER_SYMBOL = 8


def tables_worth_expanding(blocks: list[Block]) -> list[bool]:
    """Per block: whether its table's symbols in this batch justify a ``2**Q``-slot lookup table."""
    use: dict[int, int] = {}
    for b in blocks:
        use[id(b.table)] = use.get(id(b.table), 0) + b.n
    return [(1 << b.table.precision) <= SLOTS_PER_SYMBOL * use[id(b.table)] for b in blocks]



def decode_lockstep(blocks: list[Block], *, expand: bool = True) -> list[np.ndarray]:
    """Decode every lane of every block at once: one numpy operation advances all active lanes by one symbol.

    Lanes are sorted by their symbol count (descending), so the lanes still running at step ``t`` are a
    prefix of the lane arrays; the rank (in its block's table) decoded by each lane at each step is stored
    in ``rows``, step after step (step ``t`` holds one entry per active lane). When few lanes are left
    (``<= _SCALAR_MAX_LANES``, where numpy's per-call overhead dominates) they are finished one by one in
    Python. Lanes without words (every symbol has rank 0) never change state and are not stepped at all.
    ``expand=False`` looks symbols up by a search instead of ``2**Q``-slot tables (see :data:`SLOTS_PER_SYMBOL`).
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
        _lockstep_steps(tabs, lane_tab_s, flat, state, pos, lo_s, rows, offs, active, t_switch, expand)
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
                    lo: np.ndarray, rows: np.ndarray, offs: np.ndarray, active: np.ndarray, t_end: int,
                    expand: bool = True) -> None:
    """Steps ``0..t_end-1`` of :func:`decode_lockstep` for the lanes active at each step (a prefix)."""
    if expand:
        slot_rank, kc_tab = tabs.slot_rank()
    else:
        keys, kc_tab = tabs.search_keys()
        slot_rank = None
        key_base = lane_tab.astype(_U64) << _U64(CODER_PRECISION)  # each lane's table, in the key's top bits
        lane_rbase = tabs.rbase[lane_tab]
        mask24 = _U64(_MASK24)
        search = keys.searchsorted
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
    take_r = slot_rank.take if slot_rank is not None else None
    take_kc, take_w = kc_tab.take, flat.take
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
                if not expand:
                    # the last key <= (table << 24) | (S & (2**24-1)) is the symbol's global rank
                    np.bitwise_and(st, mask24, out=h_)
                    np.bitwise_or(h_, key_base[:A], out=h_)
                    r_[...] = search(h_, side="right")
                    r_ -= 1
                    np.subtract(r_, lane_rbase[:A], out=row, casting="unsafe")
                # the slot identifies the symbol's rank in its table
                elif sh is None and base_ is None:
                    take_r(slot16, out=row, mode="clip")
                else:
                    if sh is None:
                        add(slot16, base_, out=g)
                    else:
                        rshift(slot16, sh, out=g)
                        if base_ is not None:
                            add(g, base_, out=g)
                    take_r(g, out=row, mode="clip")
                if not expand:
                    pass  # r_ holds the global rank already
                elif rbase_ is None:
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
