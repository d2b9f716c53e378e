"""Compiled (numba) ANS block coder, bit-exact with ``spec/entropy.md`` section 6.2.

(Slightly over 500 lines on purpose: every kernel sits next to the thin Python entry point that states its
contract; :mod:`.ans_compiled` is the glue to :mod:`.ans`.)

An optional accelerator for :mod:`rdformat.entropy.ans`: it imports only numpy, numba and the standard
library, takes and returns plain numpy arrays, and reports problems as integer error codes, so that the
caller maps them to its own exceptions. Without numba the module still imports and :data:`AVAILABLE` is
``False`` (its functions then raise ``RuntimeError``).

Every kernel is compiled with ``cache=True`` (the machine code is stored next to this file, in
``__pycache__``, and reused by later processes) and ``nogil=True`` (threads decode blocks in parallel).

**Tables.** A frequency table of precision ``Q`` with ``m`` symbols becomes a direct lookup table of
``2**Q`` entries, ``slot_rank`` (``uint8`` when every table of the set has at most 256 symbols, else
``uint16``): the ``f[r]`` entries from ``cum[r]`` on hold ``r``. Per rank, ``rank_value`` holds what
the decoder outputs (``uint32``): normally the symbol ``s[r]``, or ``r`` itself when the caller builds the
table with ``values = arange(m)`` to get ranks (e.g. to gather dequantized values next); and
``rank_coder`` holds ``k | c << 24 | v << 48`` (``uint64``; ``k = f << (24-Q)``, ``c = cum << (24-Q)``,
both < 2**24; ``v`` the value when it is below 2**16, else 0). With every value of a table in those top
bits, one load per symbol gives the decoder all it needs: with the second load of ``rank_value`` the
decode loop ran 1.7x slower (it was bound by instructions and register spills, not by latency). The tables of a
set are concatenated: table ``i`` has precision ``precision[i]`` and ``num_symbols[i]`` symbols, its slots
start at ``slot_rank[slot_base[i]]`` (``slot_base[i]`` is -1 for a table built without slots: the decoder
finds ranks from its cumulative frequencies instead, through at most ``2**BUCKET_BITS`` buckets built per
block, or by a binary search in a short block) and its ranks at ``rank_base[i]``. :func:`build_decode_tables` makes this
layout and validates the tables (spec 6.1), which is what makes every lookup safe: the decode kernels take
tables only from it (they re-check that each table's ranges lie inside the arrays) and treat only the
*blocks* as untrusted.

**Blocks.** A batch is a byte buffer ``data`` and, per block ``b``: its bytes
``data[block_start[b] : block_start[b] + block_size[b]]``, its symbol count ``block_count[b]``, its table
``block_table[b]``, and where its symbols go: symbol ``i`` is written to
``out[out_start[b] + i * out_stride[b]]`` (``out`` is 1-D, of any integer dtype; a stride > 1 writes into
an interleaved layout). Every reader check of spec 6.2 is applied to every block before any is decoded
(the same order and offsets as ``rdformat.entropy.ans.decode_many``); then the blocks are decoded in
order, four lanes of a block at a time with their states in registers (four independent dependency chains
keep the CPU's pipelines full, without a load and store of every lane's state per symbol), or, for a table
without slots, every lane in lockstep.

**Status.** Decode kernels return ``(code, block, lane, offset)`` (``int64``): ``code`` is :data:`OK` or
one of the ``ERR_*`` constants, ``block`` the index of the failing block in the batch, ``lane`` the lane
concerned (``-1`` if none) and ``offset`` the byte position in that block that the error concerns
(``-1`` if none). :data:`ERROR_CLASS` names the ``rdformat.errors`` class for each code. On an error the
output may have been partly written. A compiled loop never reads or writes outside its arrays, on any
input: every word read is checked against its lane's bounds, every output position against ``out``.

One module on purpose (over 500 lines): the compiled kernels share their table layout, error codes and
bounds checks, which must stay side by side with the decode loops that rely on them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "AVAILABLE", "OK", "ERR_TRUNCATED", "ERR_LANE_COUNT", "ERR_TRAILING_BYTES", "ERR_ZERO_LAST_WORD",
    "ERR_LANE_STATE", "ERR_SYMBOL_RANGE", "ERR_BAD_ARGUMENT", "ERR_RANK", "ERR_TOO_MANY_WORDS", "ERROR_CLASS",
    "DecodeTables", "build_decode_tables", "decode_tables_for", "decode_blocks", "decode_block",
    "encode_block", "encode_capacity", "output_max", "parse_table_body",
]

#: Success.
OK = 0
#: The block ends early: fewer than 4 bytes, or than its lane header or its words need (``TruncatedError``).
ERR_TRUNCATED = 1
#: ``L`` is not 0 where it must be (no symbols, single-symbol table), or not in ``1..count`` (``CorruptDataError``).
ERR_LANE_COUNT = 2
#: Bytes after the end of the block (``CorruptDataError``); ``offset`` is where the block should end.
ERR_TRAILING_BYTES = 3
#: A lane's last word is zero (``CorruptDataError``); ``offset`` is that word's position.
ERR_ZERO_LAST_WORD = 4
#: A lane does not end in state 0 with all its words consumed (``CorruptDataError``); ``offset`` is the
#: position of the lane's first word.
ERR_LANE_STATE = 5
#: A symbol of the block's table does not fit the output dtype (``CorruptDataError``); ``offset`` is -1.
ERR_SYMBOL_RANGE = 6
#: The caller's arrays are inconsistent: a table index or slot range outside the tables, an output
#: position outside ``out``, a bad precision, frequency or lane count (``InvalidInputError``: a bug, not data).
ERR_BAD_ARGUMENT = 7
#: Encoder: a rank is not below the table's symbol count (``InvalidInputError``); ``offset`` is its index.
ERR_RANK = 8
#: Encoder: a lane would have 2**32 words or more (``LimitExceededError``).
ERR_TOO_MANY_WORDS = 9

#: ``rdformat.errors`` class name of each error code.
ERROR_CLASS = {
    ERR_TRUNCATED: "TruncatedError", ERR_LANE_COUNT: "CorruptDataError", ERR_TRAILING_BYTES: "CorruptDataError",
    ERR_ZERO_LAST_WORD: "CorruptDataError", ERR_LANE_STATE: "CorruptDataError",
    ERR_SYMBOL_RANGE: "CorruptDataError", ERR_BAD_ARGUMENT: "InvalidInputError", ERR_RANK: "InvalidInputError",
    ERR_TOO_MANY_WORDS: "LimitExceededError",
}

#: Precision of the coder (spec 6.2: ``P = 24``); table frequencies are scaled up to it.
CODER_PRECISION = 24
#: Largest table precision ``Q``.
MAX_TABLE_PRECISION = 16
#: A table decoded without its ``2**Q`` slots uses up to ``2**BUCKET_BITS`` buckets (see the decode loop).
BUCKET_BITS = 12
#: The decode loop runs steps without the lane bound check in stretches of at least this many (shorter
#: stretches cost more in setup than they save).
UNBOUNDED_MIN_STEPS = 16

try:
    import numba
    from numba import njit
except ImportError:  # the accelerator is optional: the numpy coder stays the reference
    numba = None
AVAILABLE = numba is not None


class DecodeTables(NamedTuple):
    """Lookup tables of one or more frequency tables, concatenated (see the module docstring)."""

    precision: np.ndarray  # int64 per table: Q, 1..16
    num_symbols: np.ndarray  # int64 per table: m
    slot_base: np.ndarray  # int64 per table: index of its slot 0 in ``slot_rank``
    rank_base: np.ndarray  # int64 per table: index of its rank 0 in ``rank_coder`` / ``rank_value``
    slot_rank: np.ndarray  # uint8 or uint16 per slot: the rank whose range holds the slot
    rank_coder: np.ndarray  # uint64 per rank: k | c << 24
    rank_value: np.ndarray  # uint32 per rank: the decoder's output


def _unavailable(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("numba is not installed: the compiled ANS coder is unavailable")


if AVAILABLE:
    _U64 = np.uint64
    _MASK24 = np.uint64((1 << CODER_PRECISION) - 1)
    _LOW32 = np.uint64(0xFFFFFFFF)
    _TWO32 = np.uint64(1 << 32)
    _S8 = np.uint64(8)
    _S16 = np.uint64(16)
    _S24 = np.uint64(CODER_PRECISION)
    _S32 = np.uint64(32)
    _S48 = np.uint64(48)
    _S40 = np.uint64(64 - CODER_PRECISION)
    _ONE = np.uint64(1)
    _TWO = np.uint64(2)
    _THREE = np.uint64(3)
    _FOUR = np.uint64(4)
    _FIVE = np.uint64(5)
    _SIX = np.uint64(6)
    _SEVEN = np.uint64(7)

    @njit(cache=True, nogil=True, inline="always")
    def _read_u32(data: np.ndarray, p: int) -> np.uint64:
        """Little-endian u32 at byte ``p`` (any alignment), as uint64."""
        return (_U64(data[p]) | (_U64(data[p + 1]) << _S8) | (_U64(data[p + 2]) << _S16)
                | (_U64(data[p + 3]) << _S24))

    @njit(cache=True, nogil=True)
    def _build_tables(precision: np.ndarray, table_start: np.ndarray, freqs: np.ndarray, values: np.ndarray,
                      slot_base: np.ndarray, slot_rank: np.ndarray, rank_coder: np.ndarray,
                      rank_value: np.ndarray) -> int:
        """Fill the lookup arrays; -1 on success, else the index of the first table breaking spec 6.1."""
        for i in range(precision.size):
            q = precision[i]
            a, b = table_start[i], table_start[i + 1]
            size = np.int64(1) << q
            base = slot_base[i]  # < 0: no slots (the decoder searches this table)
            if (q < 1 or q > MAX_TABLE_PRECISION or b <= a or b - a > size or b > freqs.size or b > rank_coder.size
                    or (base >= 0 and base + size > slot_rank.size)):
                return i
            sh = CODER_PRECISION - q
            cum = np.int64(0)
            for r in range(a, b):
                f = np.int64(freqs[r])
                if f < 1 or cum + f > size:
                    return i
                packed = _U64(values[r]) << _S48 if values[r] < 65536 else _U64(0)
                rank_coder[r] = _U64(f << sh) | (_U64(cum << sh) << _S24) | packed
                rank_value[r] = values[r]
                if base >= 0:
                    slot_rank[base + cum:base + cum + f] = r - a
                cum += f
            if cum != size:
                return i
        return -1

    def _single_table_builder(rank_type: Any) -> Any:
        """A compiled builder of one table's lookup arrays with ``rank_type`` slots (uint8 or uint16)."""

        @njit(cache=True, nogil=True)
        def build(q: int, freqs: np.ndarray, values: np.ndarray, expand: bool) -> tuple:
            m = freqs.size
            precision = np.full(1, q, dtype=np.int64)
            num_symbols = np.full(1, m, dtype=np.int64)
            slot_base = np.full(1, 0 if expand else -1, dtype=np.int64)
            rank_base = np.zeros(1, dtype=np.int64)
            table_start = np.array([0, m], dtype=np.int64)
            slot_rank = np.empty((np.int64(1) << q) if expand else 0, dtype=rank_type)
            rank_coder = np.empty(m, dtype=np.uint64)
            rank_value = np.empty(m, dtype=np.uint32)
            flat = np.empty(m, dtype=np.int64)
            for r in range(m):
                flat[r] = freqs[r]
            bad = _build_tables(precision, table_start, flat, values, slot_base, slot_rank, rank_coder, rank_value)
            return bad, precision, num_symbols, slot_base, rank_base, slot_rank, rank_coder, rank_value

        return build

    _build_single8 = _single_table_builder(np.uint8)
    _build_single16 = _single_table_builder(np.uint16)

    @njit(cache=True, nogil=True)
    def _check_block(data: np.ndarray, start: int, size: int, count: int, table: int, precision: np.ndarray,
                     num_symbols: np.ndarray, slot_base: np.ndarray, rank_base: np.ndarray, slot_rank: np.ndarray,
                     rank_value: np.ndarray, out_size: int, out_start: int, out_stride: int,
                     out_max: int) -> tuple[int, int, int]:
        """Reader checks 1-5 and 7 of spec 6.2 plus the argument checks; (code, lane, offset)."""
        if table < 0 or table >= precision.size:
            return ERR_BAD_ARGUMENT, -1, -1
        q = precision[table]
        m = num_symbols[table]
        if (q < 1 or q > MAX_TABLE_PRECISION or m < 1 or m > (np.int64(1) << q)
                or (slot_base[table] >= 0 and slot_base[table] + (np.int64(1) << q) > slot_rank.size)
                or rank_base[table] < 0
                or rank_base[table] + m > rank_value.size):
            return ERR_BAD_ARGUMENT, -1, -1
        if start < 0 or size < 0 or start + size > data.size or count < 0:
            return ERR_BAD_ARGUMENT, -1, -1
        if count > 0 and (out_start < 0 or out_stride < 1 or out_start + (count - 1) * out_stride >= out_size):
            return ERR_BAD_ARGUMENT, -1, -1
        if count > 0:
            for r in range(rank_base[table], rank_base[table] + m):
                if np.int64(rank_value[r]) > out_max:
                    return ERR_SYMBOL_RANGE, -1, -1
        if size < 4:
            return ERR_TRUNCATED, -1, size
        lanes = np.int64(_read_u32(data, start))
        if count == 0 or m == 1:
            if lanes != 0:
                return ERR_LANE_COUNT, -1, 0
            if size != 4:
                return ERR_TRAILING_BYTES, -1, 4
            return OK, -1, -1
        if lanes < 1 or lanes > count:
            return ERR_LANE_COUNT, -1, 0
        header_end = 4 + 4 * lanes
        if header_end > size:
            return ERR_TRUNCATED, -1, size
        room = (size - header_end) // 4  # words that fit; the sum stops as soon as it passes (no overflow)
        total = np.int64(0)
        for j in range(lanes):
            total += np.int64(_read_u32(data, start + 4 + 4 * j))
            if total > room:
                return ERR_TRUNCATED, -1, size
        end = header_end + 4 * total
        if end != size:  # end < size here
            return ERR_TRAILING_BYTES, -1, end
        at = header_end  # end of lane j's words, relative to the block
        for j in range(lanes):
            words = np.int64(_read_u32(data, start + 4 + 4 * j))
            at += 4 * words
            if words > 0 and _read_u32(data, start + at - 4) == 0:
                return ERR_ZERO_LAST_WORD, j, at - 4
        return OK, -1, -1

    @njit(cache=True, nogil=True, inline="always")
    def _refill(s: np.uint64, p: np.uint64, need: bool, wp: np.ndarray) -> tuple:
        """(state, word position) after a step: the lane's next word shifted in when ``need``; wp[p] is inside
        the array for every p a lane can reach, so the read is unconditional (no unpredictable branch)."""
        refilled = (s << _S32) | _U64(wp[p])
        return (refilled if need else s), p - _U64(need)

    @njit(cache=True, nogil=True, inline="always")
    def _advance(s: np.uint64, sh: np.uint64, slots: np.ndarray, coder: np.ndarray) -> tuple:
        """(state before refill, decoded value) of one symbol (spec 6.2), for a table whose values sit in
        ``coder``'s top 16 bits: S = (S >> 24) * k + (q - c)."""
        q = s & _MASK24
        kc = coder[slots[q >> sh]]
        return (s >> _S24) * (kc & _MASK24) + q - ((kc >> _S24) & _MASK24), kc >> _S48

    @njit(cache=True, nogil=True, inline="always")
    def _step(s: np.uint64, p: np.uint64, lo: np.uint64, sh: np.uint64, slots: np.ndarray,
              coder: np.ndarray, wp: np.ndarray) -> tuple:
        """One symbol of one lane: (new state, new word position, decoded value); the lane refills when
        its state fell below 2**32 and it has words left. Positions are unsigned: numba then indexes
        without the wraparound code of negative indices."""
        s, v = _advance(s, sh, slots, coder)
        s, p = _refill(s, p, (s < _TWO32) & (p > lo), wp)
        return s, p, v

    @njit(cache=True, nogil=True, inline="always")
    def _step_unbounded(s: np.uint64, p: np.uint64, sh: np.uint64, slots: np.ndarray, coder: np.ndarray,
                        wp: np.ndarray) -> tuple:
        """:func:`_step` for a lane known to hold a word for this step (its position above its first word):
        the same result without the bound check."""
        s, v = _advance(s, sh, slots, coder)
        s, p = _refill(s, p, s < _TWO32, wp)
        return s, p, v

    @njit(cache=True, nogil=True)
    def _lanes_by_groups(state: np.ndarray, pos: np.ndarray, low: np.ndarray, full: int, rest: int,
                         sh: np.uint64, slots: np.ndarray, coder: np.ndarray, wp: np.ndarray,
                         out: np.ndarray, out_start: int, out_stride: int) -> None:
        """Every lane through its ``full`` (+1 for the first ``rest`` lanes) symbols, eight or four lanes at a
        time with their states in registers: independent dependency chains keep the CPU busy where one
        lane after the other, or all lanes in lockstep through memory, would wait (eight chains: the ANS
        kernel ~10% faster than four on blocks of many lanes; they take the steps no lane of the eight can
        run out of words in, groups of four finish). Each lane decodes the same symbols in the same order
        as in lockstep, so the output is identical. ``coder`` holds the values (every value of the table
        is below 2**16)."""
        lanes = state.size
        row = _U64(lanes * out_stride)
        stride = _U64(out_stride)
        g8_end = lanes - lanes % 8
        first = np.zeros(lanes // 4, dtype=np.int64)  # steps a group of four lanes starts at
        for g in range(0, g8_end, 8):
            s0, s1, s2, s3 = state[g], state[g + 1], state[g + 2], state[g + 3]
            s4, s5, s6, s7 = state[g + 4], state[g + 5], state[g + 6], state[g + 7]
            p0, p1, p2, p3 = _U64(pos[g]), _U64(pos[g + 1]), _U64(pos[g + 2]), _U64(pos[g + 3])
            p4, p5, p6, p7 = _U64(pos[g + 4]), _U64(pos[g + 5]), _U64(pos[g + 6]), _U64(pos[g + 7])
            lw = low[g:g + 8]
            o = _U64(out_start + g * out_stride)
            t = np.int64(0)
            while True:  # only the unbounded steps (see below); the rest runs four lanes at a time
                m0 = min(min(p0 - _U64(lw[0]), p1 - _U64(lw[1])), min(p2 - _U64(lw[2]), p3 - _U64(lw[3])))
                m1 = min(min(p4 - _U64(lw[4]), p5 - _U64(lw[5])), min(p6 - _U64(lw[6]), p7 - _U64(lw[7])))
                safe = min(np.int64(min(m0, m1)), full - t)
                if safe < UNBOUNDED_MIN_STEPS:
                    break
                for _t in range(safe):
                    s0, p0, v0 = _step_unbounded(s0, p0, sh, slots, coder, wp)
                    s1, p1, v1 = _step_unbounded(s1, p1, sh, slots, coder, wp)
                    s2, p2, v2 = _step_unbounded(s2, p2, sh, slots, coder, wp)
                    s3, p3, v3 = _step_unbounded(s3, p3, sh, slots, coder, wp)
                    s4, p4, v4 = _step_unbounded(s4, p4, sh, slots, coder, wp)
                    s5, p5, v5 = _step_unbounded(s5, p5, sh, slots, coder, wp)
                    s6, p6, v6 = _step_unbounded(s6, p6, sh, slots, coder, wp)
                    s7, p7, v7 = _step_unbounded(s7, p7, sh, slots, coder, wp)
                    out[o] = v0
                    out[o + stride] = v1
                    out[o + _TWO * stride] = v2
                    out[o + _THREE * stride] = v3
                    out[o + _FOUR * stride] = v4
                    out[o + _FIVE * stride] = v5
                    out[o + _SIX * stride] = v6
                    out[o + _SEVEN * stride] = v7
                    o += row
                t += safe
            state[g], state[g + 1], state[g + 2], state[g + 3] = s0, s1, s2, s3
            state[g + 4], state[g + 5], state[g + 6], state[g + 7] = s4, s5, s6, s7
            pos[g], pos[g + 1], pos[g + 2], pos[g + 3] = p0, p1, p2, p3
            pos[g + 4], pos[g + 5], pos[g + 6], pos[g + 7] = p4, p5, p6, p7
            first[g // 4] = t  # the steps left: four lanes at a time below, bounded
            first[g // 4 + 1] = t
        g_end = lanes - lanes % 4
        for g in range(0, g_end, 4):
            s0, s1, s2, s3 = state[g], state[g + 1], state[g + 2], state[g + 3]
            p0, p1, p2, p3 = _U64(pos[g]), _U64(pos[g + 1]), _U64(pos[g + 2]), _U64(pos[g + 3])
            l0, l1, l2, l3 = _U64(low[g]), _U64(low[g + 1]), _U64(low[g + 2]), _U64(low[g + 3])
            t = first[g // 4]
            o = _U64(out_start + g * out_stride) + _U64(t) * row
            # A step pops at most one word per lane, so while every lane of the group has at least as many
            # words left as the steps run, no lane can run out: those steps skip the bound check (10% faster).
            while True:
                safe = min(np.int64(min(min(p0 - l0, p1 - l1), min(p2 - l2, p3 - l3))), full - t)
                if safe < UNBOUNDED_MIN_STEPS:
                    break
                for _t in range(safe):
                    s0, p0, v0 = _step_unbounded(s0, p0, sh, slots, coder, wp)
                    s1, p1, v1 = _step_unbounded(s1, p1, sh, slots, coder, wp)
                    s2, p2, v2 = _step_unbounded(s2, p2, sh, slots, coder, wp)
                    s3, p3, v3 = _step_unbounded(s3, p3, sh, slots, coder, wp)
                    out[o] = v0
                    out[o + stride] = v1
                    out[o + _TWO * stride] = v2
                    out[o + _THREE * stride] = v3
                    o += row
                t += safe
            for _t in range(t, full):
                s0, p0, v0 = _step(s0, p0, l0, sh, slots, coder, wp)
                s1, p1, v1 = _step(s1, p1, l1, sh, slots, coder, wp)
                s2, p2, v2 = _step(s2, p2, l2, sh, slots, coder, wp)
                s3, p3, v3 = _step(s3, p3, l3, sh, slots, coder, wp)
                out[o] = v0
                out[o + stride] = v1
                out[o + _TWO * stride] = v2
                out[o + _THREE * stride] = v3
                o += row
            state[g], state[g + 1], state[g + 2], state[g + 3] = s0, s1, s2, s3
            pos[g], pos[g + 1], pos[g + 2], pos[g + 3] = p0, p1, p2, p3
        # The last 1-3 lanes together (two or three chains at once: blocks of a few lanes are common in
        # small models, and one lane after the other waits on each symbol's lookup).
        left = lanes - g_end
        if left >= 2:
            g = g_end
            s0, s1, s2 = state[g], state[g + 1], state[g + left - 1]
            p0, p1, p2 = _U64(pos[g]), _U64(pos[g + 1]), _U64(pos[g + left - 1])
            l0, l1, l2 = _U64(low[g]), _U64(low[g + 1]), _U64(low[g + left - 1])
            o = _U64(out_start + g * out_stride)
            if left == 3:
                for _t in range(full):
                    s0, p0, v0 = _step(s0, p0, l0, sh, slots, coder, wp)
                    s1, p1, v1 = _step(s1, p1, l1, sh, slots, coder, wp)
                    s2, p2, v2 = _step(s2, p2, l2, sh, slots, coder, wp)
                    out[o] = v0
                    out[o + stride] = v1
                    out[o + _TWO * stride] = v2
                    o += row
                state[g + 2], pos[g + 2] = s2, p2
            else:
                for _t in range(full):
                    s0, p0, v0 = _step(s0, p0, l0, sh, slots, coder, wp)
                    s1, p1, v1 = _step(s1, p1, l1, sh, slots, coder, wp)
                    out[o] = v0
                    out[o + stride] = v1
                    o += row
            state[g], state[g + 1], pos[g], pos[g + 1] = s0, s1, p0, p1
        elif left == 1:
            j = g_end
            s, p, lo = state[j], _U64(pos[j]), _U64(low[j])
            o = _U64(out_start + j * out_stride)
            for _t in range(full):
                s, p, v = _step(s, p, lo, sh, slots, coder, wp)
                out[o] = v
                o += row
            state[j] = s
            pos[j] = p
        o = _U64(out_start) + _U64(full) * row
        for j in range(rest):  # the last, partial step
            s, p, v = _step(state[j], _U64(pos[j]), _U64(low[j]), sh, slots, coder, wp)
            state[j] = s
            pos[j] = p
            out[o + _U64(j) * stride] = v

    @njit(cache=True, nogil=True)
    def _decode_checked_block(data: np.ndarray, start: int, size: int, count: int, table: int,
                              precision: np.ndarray, num_symbols: np.ndarray, slot_base: np.ndarray,
                              rank_base: np.ndarray, slot_rank: np.ndarray, rank_coder: np.ndarray,
                              rank_value: np.ndarray, out: np.ndarray, out_start: int,
                              out_stride: int) -> tuple[int, int]:
        """Decode a block that passed :func:`_check_block`; (-1, -1) or (bad lane, offset of its first word)."""
        if count == 0:
            return -1, -1
        rbase = rank_base[table]
        m = num_symbols[table]
        if m == 1:
            value = rank_value[rbase]
            for i in range(count):
                out[out_start + i * out_stride] = value
            return -1, -1
        sh = _U64(CODER_PRECISION - precision[table])
        lanes = np.int64(_read_u32(data, start))
        header_end = 4 + 4 * lanes
        if lanes < 1 or header_end > size:  # checked by _check_block; re-read here, so bounded again
            return 0, 0
        nw = (size - header_end) // 4
        # The lanes' words seen from one word earlier (wp[i + 1] = word i; wp[0] is the header's last word,
        # never used: a lane pops wp[pos] only while pos is above its first word, pos >= 1), in place in
        # ``data`` (no copy of the block): wp[pos] is inside the view for every pos in 0..nw, so the refill
        # below reads unconditionally and selects (no unpredictable branch), without leaving the array.
        wp = data[start + header_end - 4:start + header_end + 4 * nw].view(np.uint32)
        expanded = slot_base[table] >= 0
        slots = slot_rank[slot_base[table]:slot_base[table] + (np.int64(1) << precision[table])] if expanded \
            else slot_rank[0:0]
        coder = rank_coder[rbase:rbase + m]
        value = rank_value[rbase:rbase + m]
        state = np.empty(lanes, dtype=np.uint64)
        pos = np.empty(lanes, dtype=np.int64)  # number of the lane's words not popped yet, plus its first
        low = np.empty(lanes, dtype=np.int64)  # index of the lane's first word
        at = np.int64(0)
        for j in range(lanes):
            low[j] = at
            p = at + np.int64(_read_u32(data, start + 4 + 4 * j))
            if p > nw:  # likewise: no lane may point past the words copied
                return j, header_end + 4 * at
            at = p
            s = _U64(0)
            if p > low[j]:
                s = _U64(wp[p])
                p -= 1
                if p > low[j]:
                    s = (s << _S32) | _U64(wp[p])
                    p -= 1
            state[j] = s
            pos[j] = p
        full = count // lanes
        rest = count - full * lanes
        row = lanes * out_stride
        small_values = True  # every value in coder's top bits (the fast loop)
        for r in range(m):
            if value[r] >= 65536:
                small_values = False
                break
        if expanded and small_values:
            _lanes_by_groups(state, pos, low, full, rest, sh, slots, coder, wp, out, out_start, out_stride)
        else:
            # A table whose 2**Q slots the batch does not justify: a block of enough symbols gets buckets,
            # the first rank of each 2**(24-B) range of states (at most 2**B entries, B <= 12), then steps
            # up the cumulative starts from there (at most 2**(Q-B) steps: every rank spans a slot or
            # more); a short block searches them.
            bits = min(precision[table], BUCKET_BITS)
            bucketed = not expanded and count >= (np.int64(1) << bits) // 4
            bsh = _U64(CODER_PRECISION - bits)
            bucket = np.empty((np.int64(1) << bits) if bucketed else 0, dtype=np.int64)
            r = np.int64(0)
            for b in range(bucket.size):
                start = _U64(b) << bsh
                while r + 1 < m and ((coder[r + 1] >> _S24) & _MASK24) <= start:
                    r += 1
                bucket[b] = r
            for t in range(full + 1):
                active = lanes if t < full else rest
                o = out_start + t * row
                for j in range(active):
                    s = state[j]
                    q = s & _MASK24
                    if expanded:  # values of 2**16 and more: in rank_value only
                        r = np.int64(slots[q >> sh])
                    elif bucketed:
                        r = bucket[q >> bsh]
                        while r + 1 < m and ((coder[r + 1] >> _S24) & _MASK24) <= q:
                            r += 1
                    else:
                        # search the cumulative starts (c_0 = 0 <= q, so the largest rank with c_r <= q exists)
                        lo, hi = np.int64(0), m
                        while hi - lo > 1:
                            mid = (lo + hi) >> 1
                            if ((coder[mid] >> _S24) & _MASK24) <= q:
                                lo = mid
                            else:
                                hi = mid
                        r = lo
                    kc = coder[r]
                    # S = (S >> 24) * k + (q - c)
                    s = (s >> _S24) * (kc & _MASK24) + q - ((kc >> _S24) & _MASK24)
                    p = pos[j]
                    need = (s < _TWO32) & (p > low[j])
                    refilled = (s << _S32) | _U64(wp[p])
                    state[j] = refilled if need else s
                    pos[j] = p - np.int64(need)
                    out[o + j * out_stride] = value[r]
        for j in range(lanes):
            if state[j] != 0 or pos[j] != low[j]:
                return j, header_end + 4 * low[j]
        return -1, -1

    @njit(cache=True, nogil=True)
    def _decode_blocks(data: np.ndarray, block_start: np.ndarray, block_size: np.ndarray, block_count: np.ndarray,
                       block_table: np.ndarray, precision: np.ndarray, num_symbols: np.ndarray,
                       slot_base: np.ndarray, rank_base: np.ndarray, slot_rank: np.ndarray, rank_coder: np.ndarray,
                       rank_value: np.ndarray, out: np.ndarray, out_start: np.ndarray, out_stride: np.ndarray,
                       out_max: int) -> tuple[int, int, int, int]:
        nb = block_start.size
        nt = precision.size
        if (block_size.size != nb or block_count.size != nb or block_table.size != nb or out_start.size != nb
                or out_stride.size != nb or num_symbols.size != nt or slot_base.size != nt
                or rank_base.size != nt or rank_coder.size != rank_value.size):
            return ERR_BAD_ARGUMENT, -1, -1, -1
        for b in range(nb):
            code, lane, offset = _check_block(data, block_start[b], block_size[b], block_count[b], block_table[b],
                                              precision, num_symbols, slot_base, rank_base, slot_rank,
                                              rank_value, out.size, out_start[b], out_stride[b], out_max)
            if code != OK:
                return code, b, lane, offset
        for b in range(nb):
            lane, offset = _decode_checked_block(data, block_start[b], block_size[b], block_count[b],
                                                 block_table[b], precision, num_symbols, slot_base, rank_base,
                                                 slot_rank, rank_coder, rank_value, out, out_start[b],
                                                 out_stride[b])
            if lane >= 0:
                return ERR_LANE_STATE, b, lane, offset
        return OK, -1, -1, -1

    @njit(cache=True, nogil=True)
    def _decode_one(data: np.ndarray, count: int, table: int, precision: np.ndarray, num_symbols: np.ndarray,
                    slot_base: np.ndarray, rank_base: np.ndarray, slot_rank: np.ndarray, rank_coder: np.ndarray,
                    rank_value: np.ndarray, out: np.ndarray, out_max: int) -> tuple[int, int, int, int]:
        """One block filling ``data``, into ``out[0:count]`` (fewer arguments to type-check per call)."""
        one = np.ones(1, dtype=np.int64)
        return _decode_blocks(data, one - 1, np.full(1, data.size, dtype=np.int64), np.full(1, count, dtype=np.int64),
                              np.full(1, table, dtype=np.int64), precision, num_symbols, slot_base, rank_base,
                              slot_rank, rank_coder, rank_value, out, one - 1, one, out_max)

    @njit(cache=True, nogil=True)
    def _encode_block(ranks: np.ndarray, freqs: np.ndarray, precision: int, lanes: int,
                      out: np.ndarray) -> tuple[int, int]:
        """(code, bytes written or failing position); see :func:`encode_block`."""
        n = ranks.size
        m = freqs.size
        if precision < 1 or precision > MAX_TABLE_PRECISION or m < 1 or m > (np.int64(1) << precision):
            return ERR_BAD_ARGUMENT, -1
        k = np.empty(m, dtype=np.uint64)
        c = np.empty(m, dtype=np.uint64)
        sh = _U64(CODER_PRECISION - precision)
        cum = np.int64(0)
        for r in range(m):
            f = np.int64(freqs[r])
            if f < 1:
                return ERR_BAD_ARGUMENT, -1
            k[r] = _U64(f) << sh
            c[r] = _U64(cum) << sh
            cum += f
        if cum != np.int64(1) << precision:
            return ERR_BAD_ARGUMENT, -1
        for i in range(n):
            if np.int64(ranks[i]) >= m or ranks[i] < 0:
                return ERR_RANK, i
        if n == 0 or m == 1:
            lanes = 0
        elif lanes < 1 or lanes > n:
            return ERR_BAD_ARGUMENT, -1
        if out.size < encode_capacity_words(n, lanes) * 4:
            return ERR_BAD_ARGUMENT, -1
        out[0] = lanes & 0xFF
        out[1] = (lanes >> 8) & 0xFF
        out[2] = (lanes >> 16) & 0xFF
        out[3] = (lanes >> 24) & 0xFF
        if lanes == 0:
            return OK, 4
        full = n // lanes
        rest = n - full * lanes
        steps = full + (1 if rest else 0) + 2  # + the two flush words
        # words[e, j]: lane j's e-th word in emission order (each step emits at most one word per lane)
        words = np.empty((steps, lanes), dtype=np.uint32)
        emitted = np.zeros(lanes, dtype=np.int64)
        state = np.zeros(lanes, dtype=np.uint64)
        # symbols are encoded backwards: step t (last first) covers symbols t * lanes + j
        for t in range(full, -1, -1):  # t == full: the last, partial step (lanes < rest)
            active = lanes if t < full else rest
            for j in range(active):
                r = np.int64(ranks[t * lanes + j])
                kr = k[r]
                s = state[j]
                if (s >> _S40) >= kr:
                    words[emitted[j], j] = np.uint32(s & _LOW32)
                    emitted[j] += 1
                    s >>= _S32
                state[j] = ((s // kr) << _S24) | (c[r] + s % kr)
        # flush: the state's words, least significant first, without trailing zero words
        for j in range(lanes):
            s = state[j]
            while s != 0:
                words[emitted[j], j] = np.uint32(s & _LOW32)
                emitted[j] += 1
                s >>= _S32
        at = 4 + 4 * lanes
        for j in range(lanes):
            count = emitted[j]
            if count >= np.int64(1) << 32:
                return ERR_TOO_MANY_WORDS, j
            h = 4 + 4 * j
            out[h] = count & 0xFF
            out[h + 1] = (count >> 8) & 0xFF
            out[h + 2] = (count >> 16) & 0xFF
            out[h + 3] = (count >> 24) & 0xFF
            for e in range(count):
                w = words[e, j]
                out[at] = w & 0xFF
                out[at + 1] = (w >> 8) & 0xFF
                out[at + 2] = (w >> 16) & 0xFF
                out[at + 3] = (w >> 24) & 0xFF
                at += 4
        return OK, at

    @njit(cache=True, nogil=True)
    def encode_capacity_words(n: int, lanes: int) -> int:
        """Upper bound of a block's size in 4-byte units: lane count, lane lengths, and per lane at most
        one word per symbol plus two flush words."""
        return 1 + lanes + n + 2 * lanes

    @njit(cache=True, nogil=True)
    def _parse_varints(data: np.ndarray, pos: int, m: int, first: np.ndarray, second: np.ndarray) -> tuple[int, int]:
        """Two runs of ``m`` canonical varints (< 2**32) from ``data[pos]`` into ``first`` and ``second``;
        (end of the first run, end of the second) or (-1, -1) on anything irregular."""
        p = np.int64(pos)
        ends = np.zeros(2, dtype=np.int64)
        for run in range(2):
            out = first if run == 0 else second
            for i in range(m):
                value = np.uint64(0)
                shift = np.uint64(0)
                count = 0
                while True:
                    if p >= data.size or count == 5:
                        return -1, -1
                    byte = data[p]
                    p += 1
                    count += 1
                    value |= np.uint64(byte & 0x7F) << shift
                    shift += np.uint64(7)
                    if byte < 0x80:
                        break
                if (count > 1 and byte == 0) or value >= np.uint64(1 << 32):
                    return -1, -1
                out[i] = value
            ends[run] = p
        return ends[0], ends[1]

    @njit(cache=True, nogil=True)
    def _parse_table_body(data: np.ndarray, pos: int, m: int, q: int, symbols: np.ndarray,
                          freqs: np.ndarray) -> int:
        """A stored table's ``m`` symbols and frequencies (spec 6.1) from its two varint runs at ``pos``:
        fills ``symbols`` and ``freqs`` (uint32) and returns the end offset, or -1 on anything a reader must
        refuse (an irregular varint, a symbol >= 2**31, a frequency > 2**q, a sum other than 2**q)."""
        first = np.empty(m, dtype=np.uint64)
        second = np.empty(m, dtype=np.uint64)
        mid, end = _parse_varints(data, pos, m, first, second)
        if end < 0:
            return -1
        symbol = np.uint64(0)
        total = np.uint64(0)
        top = np.uint64(1) << np.uint64(q)
        for i in range(m):
            symbol += first[i] + (np.uint64(1) if i else np.uint64(0))
            if symbol >= np.uint64(1 << 31) or second[i] >= top:
                return -1
            symbols[i] = symbol
            freqs[i] = second[i] + np.uint64(1)
            total += second[i] + np.uint64(1)
        if total != top:
            return -1
        return end

    @njit(cache=True, nogil=True)
    def _ranks_by_lut(values: np.ndarray, lut: np.ndarray, absent: int, ranks: np.ndarray) -> int:
        """ranks[i] = lut[values[i]] in one pass; returns the first i whose value lies past ``lut`` or maps to
        ``absent`` (the mark of a value not in the table), else -1."""
        for i in range(values.size):
            v = np.int64(values[i])
            if v >= lut.size:
                return i
            r = lut[v]
            if r == absent:
                return i
            ranks[i] = r
        return -1

else:
    _build_tables = _decode_blocks = _decode_one = _encode_block = encode_capacity_words = _unavailable
    _step = _lanes_by_groups = _ranks_by_lut = _unavailable
    _parse_varints = _parse_table_body = _build_single8 = _build_single16 = _unavailable


# --------------------------------------------------------------------------------------------------
# Python entry points (thin: argument shaping only; all loops are compiled)
# --------------------------------------------------------------------------------------------------


_OUTPUT_MAX: dict[np.dtype, int] = {}


def output_max(dtype: Any) -> int:
    """Largest value an integer ``dtype`` holds, capped at 2**32 - 1 (values are u32)."""
    dt = np.dtype(dtype)
    top = _OUTPUT_MAX.get(dt)
    if top is None:
        top = _OUTPUT_MAX[dt] = min(int(np.iinfo(dt).max), (1 << 32) - 1)
    return top


def build_decode_tables(precisions: Any, freqs: list[np.ndarray], values: list[np.ndarray],
                        expand: Any = None) -> DecodeTables:
    """Concatenated lookup tables (see the module docstring) of one or more frequency tables.

    Args:
        precisions: ``Q`` of each table (1..16).
        freqs: per table, its frequencies by rank (integers >= 1 summing to ``2**Q``, at most ``2**Q`` of
            them: a ``FrequencyTable.freqs``).
        values: per table, what the decoder outputs for each rank: ``table.symbols``, or ``arange(m)`` to
            decode ranks. Each value below 2**32.
        expand: per table, whether it gets its ``2**Q``-slot lookup table (default: all). A table without
            one (``slot_base`` -1) is decoded from its cumulative frequencies (buckets, or a binary search in
            short blocks): slower per symbol, but a batch of many small blocks with their own tables does not
            pay ``2**Q`` slots each.

    Returns:
        A :class:`DecodeTables`: ``2**Q`` bytes per table (twice that if a table has over 256 symbols)
        plus 12 bytes per symbol. Build it once per table and reuse it (it is immutable in use).

    Raises:
        ValueError: inconsistent lengths, a value >= 2**32, or a table breaking spec 6.1 (a caller bug:
            ``FrequencyTable`` validates tables already).
    """
    # The bookkeeping is on Python ints (a batch has a few tables): loading a file of small tensors builds
    # tables for every chunk, and a dozen small numpy calls per build cost more than decoding its symbols.
    if not isinstance(precisions, (list, tuple)):
        precisions = np.asarray(precisions, dtype=np.int64).reshape(-1)
    q = [int(p) for p in precisions]
    if len(freqs) != len(q) or len(values) != len(q):
        raise ValueError("build_decode_tables: precisions, freqs and values differ in length")
    sizes = [int(np.size(f)) for f in freqs]
    if any(int(np.size(v)) != n for v, n in zip(values, sizes)):
        raise ValueError("build_decode_tables: a table's values and freqs differ in length")
    if q and (min(q) < 1 or max(q) > MAX_TABLE_PRECISION):
        raise ValueError(f"build_decode_tables: precision outside 1..{MAX_TABLE_PRECISION}")
    keep = [True] * len(q) if expand is None else [bool(k) for k in np.asarray(expand).reshape(-1)]
    if len(keep) != len(q):
        raise ValueError("build_decode_tables: expand and precisions differ in length")
    table_start, slot_base = [0], []
    slots = 0
    for p, n, k in zip(q, sizes, keep):
        table_start.append(table_start[-1] + n)
        slot_base.append(slots if k else -1)
        slots += (1 << p) if k else 0
    flat_freqs = _flat(freqs, np.int64)
    flat_values = _flat(values, np.int64 if any(np.asarray(v).dtype != np.uint32 for v in values) else np.uint32)
    if flat_values.dtype != np.uint32:
        if flat_values.size and (int(flat_values.min()) < 0 or int(flat_values.max()) >= 1 << 32):
            raise ValueError("build_decode_tables: values must be in 0..2**32-1")
        flat_values = flat_values.astype(np.uint32)
    rank_dtype = np.uint8 if not sizes or max(sizes) <= 256 else np.uint16
    slot_rank = np.empty(slots, dtype=rank_dtype)
    rank_coder = np.empty(flat_freqs.size, dtype=np.uint64)
    rank_value = np.empty(flat_freqs.size, dtype=np.uint32)
    precision = np.array(q, dtype=np.int64)
    starts = np.array(table_start, dtype=np.int64)
    bases = np.array(slot_base, dtype=np.int64)
    bad = _build_tables(precision, starts, flat_freqs, flat_values, bases, slot_rank, rank_coder, rank_value)
    if bad >= 0:
        raise ValueError(f"build_decode_tables: table {bad} breaks spec 6.1 (symbol count or frequencies)")
    return DecodeTables(precision, np.array(sizes, dtype=np.int64), bases, starts[:-1], slot_rank, rank_coder,
                        rank_value)


def _flat(arrays: list, dtype: Any) -> np.ndarray:
    """The arrays (flattened) one after the other as one C-contiguous array of ``dtype`` (a copy)."""
    if len(arrays) == 1:
        return np.array(np.asarray(arrays[0]).reshape(-1), dtype=dtype)
    if not arrays:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(a).reshape(-1) for a in arrays]).astype(dtype, copy=False)


def ranks_of(values: np.ndarray, table: Any) -> np.ndarray | None:
    """``uint16`` ranks (indices in ``table.symbols``) of 1-D ``uint8``/``uint16`` ``values`` in one compiled
    pass, or None if a value is not in the table or the input does not suit the lookup (the caller then
    takes ``ans_numpy.ranks_of``, which names the value or does the work)."""
    if values.dtype not in (np.uint8, np.uint16) or values.ndim != 1 or table.num_symbols >= 0xFFFF:
        return None
    top = int(table.symbols[-1])
    if top >= 1 << 16:  # no uint8/uint16 value reaches the larger symbols: the lookup stops at 2**16
        top = (1 << 16) - 1

    def build() -> np.ndarray:
        lut = np.full(top + 1, 0xFFFF, dtype=np.uint16)
        present = table.symbols[table.symbols <= top]
        lut[present] = np.arange(present.size, dtype=np.uint16)
        return lut

    lut = table._derived("rank-lut", build)
    ranks = np.empty(values.size, dtype=np.uint16)
    return ranks if _ranks_by_lut(values, lut, 0xFFFF, ranks) < 0 else None


def decode_tables_for(table: Any, *, ranks: bool = False, expand: bool = True) -> DecodeTables:
    """:func:`build_decode_tables` for one object with ``precision``, ``freqs`` and ``symbols`` attributes
    (a ``FrequencyTable``, which is valid by construction); ``ranks=True`` makes the decoder output ranks
    instead of symbols, ``expand=False`` leaves its slots out. One compiled call: a file of small chunks
    builds a table for each."""
    freqs = table.freqs
    values = np.arange(freqs.size, dtype=np.uint32) if ranks else table.symbols
    if freqs.dtype != np.uint32 or values.dtype != np.uint32 or not 1 <= table.precision <= MAX_TABLE_PRECISION:
        return build_decode_tables([table.precision], [freqs], [values], None if expand else [False])
    build = _build_single8 if freqs.size <= 256 else _build_single16
    bad, *arrays = build(int(table.precision), freqs, values, bool(expand))
    if bad >= 0:
        raise ValueError("build_decode_tables: table 0 breaks spec 6.1 (symbol count or frequencies)")
    return DecodeTables(*arrays)


def decode_blocks(data: np.ndarray, block_start: np.ndarray, block_size: np.ndarray, block_count: np.ndarray,
                  block_table: np.ndarray, tables: DecodeTables, out: np.ndarray, out_start: np.ndarray,
                  out_stride: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """Decode a batch of ANS blocks into ``out``; returns ``(code, block, lane, offset)``.

    Args:
        data: C-contiguous ``uint8`` 1-D array holding the blocks (e.g. ``np.frombuffer(buf, np.uint8)``;
            read-only is fine).
        block_start, block_size: ``int64`` per block: its first byte in ``data`` and its exact size.
        block_count: ``int64`` per block: its number of symbols (from the codec).
        block_table: ``int64`` per block: index of its table in ``tables``.
        tables: from :func:`build_decode_tables`.
        out: 1-D integer array (any dtype and strides) that receives the values.
        out_start, out_stride: ``int64`` per block: symbol ``i`` of block ``b`` goes to
            ``out[out_start[b] + i * out_stride[b]]``; ``out_stride`` defaults to 1 everywhere.

    Returns:
        ``(OK, -1, -1, -1)``, or the first error: reader checks are applied to all blocks before any
        is decoded, so the error concerns the first block failing them (else the first block with a
        lane that does not end cleanly, and its lowest such lane). Codes and offsets: module docstring.
        Releases the GIL while it runs.
    """
    if out_stride is None:
        out_stride = np.ones(np.shape(block_start), dtype=np.int64)
    return _decode_blocks(data, block_start, block_size, block_count, block_table, *tables, out, out_start,
                          out_stride, output_max(out.dtype))


def decode_block(data: np.ndarray, count: int, tables: DecodeTables, out: np.ndarray,
                 table: int = 0) -> tuple[int, int, int, int]:
    """Decode one block filling all of ``data`` (C-contiguous ``uint8``) into ``out[0:count]``, with table
    ``table`` of ``tables``; :func:`decode_blocks`'s status (``block`` is 0 on an error). ``out`` is 1-D, of
    any integer dtype and strides (e.g. a column ``planes[:, k]``)."""
    return _decode_one(data, count, table, *tables, out, output_max(out.dtype))


def parse_table_body(data: np.ndarray, pos: int, m: int, q: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """A stored frequency table after its precision ``q`` and symbol count ``m`` (``spec/entropy.md`` 6.1):
    ``(symbols, freqs, end)`` as new ``uint32`` arrays, or None wherever the table must be refused (the
    caller's own parser then names the error)."""
    symbols = np.empty(m, dtype=np.uint32)
    freqs = np.empty(m, dtype=np.uint32)
    end = _parse_table_body(data, pos, m, q, symbols, freqs)
    return None if end < 0 else (symbols, freqs, int(end))


def encode_capacity(n: int, lanes: int) -> int:
    """Bytes an ``out`` buffer of :func:`encode_block` needs for ``n`` symbols in ``lanes`` lanes."""
    return 4 * (1 + lanes + n + 2 * lanes)


def encode_block(ranks: np.ndarray, freqs: np.ndarray, precision: int, lanes: int,
                 out: np.ndarray | None = None) -> tuple[int, int, np.ndarray]:
    """Encode ranks into an ANS block (spec 6.2), bit-exact with ``rdformat.entropy.ans.encode``.

    Args:
        ranks: 1-D integer array (any integer dtype): the rank of every symbol, in block order (the
            caller maps symbol values to ranks, e.g. with ``ans_numpy.ranks_of``).
        freqs: the table's frequencies by rank (``FrequencyTable.freqs``), summing to ``2**precision``.
        precision: the table's ``Q``, 1..16.
        lanes: ``L``, 1..n; ignored (0 lanes) when ``n == 0`` or the table has one symbol.
        out: optional ``uint8`` buffer of at least :func:`encode_capacity` bytes (allocated if None).

    Returns:
        ``(code, size, out)``: on :data:`OK` the block is ``out[:size]``. Otherwise ``size`` is the
        index of the bad rank (:data:`ERR_RANK`), the lane (:data:`ERR_TOO_MANY_WORDS`) or -1
        (:data:`ERR_BAD_ARGUMENT`: bad table, lane count or ``out`` too small).
    """
    n = int(ranks.size)
    used_lanes = 0 if n == 0 or freqs.size == 1 else max(int(lanes), 1)
    if out is None:
        out = np.empty(encode_capacity(n, min(used_lanes, max(n, 1))), dtype=np.uint8)
    code, size = _encode_block(ranks.reshape(-1), freqs, int(precision), int(lanes), out)
    return int(code), int(size), out

