"""Compiled (numba) Viterbi search of :mod:`rdformat.producers.trellis`, bit-exact with its numpy search.

Imported only when the numba backend is active (``rdformat.entropy.ans.compiled_active()``); it imports
numba at the top. The numpy search advances all chains together one position per step; this kernel takes
one chain at a time (four path costs in registers, the chain's decisions in a small buffer), computing the
same float32 costs in the same order, so both pick identical levels. Compiled with ``cache=True`` and
``nogil=True``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _viterbi_chains(a: np.ndarray, penalty: np.ndarray, zero_pen: np.float32, power: int, chain: int,
                    out: np.ndarray) -> None:
    """|levels| of every chain of ``a`` (float32 magnitudes in steps, a multiple of ``chain`` long) into ``out``."""
    top = penalty.size - 1
    half = np.float32(0.5)
    zero = np.float32(0.0)
    # per position of the chain: candidate |level| (rows: Q0 even, Q1 even, Q0 odd, Q1 odd) and, per
    # state, whether the path into it came from its second predecessor
    level = np.empty((chain, 4), dtype=np.int32)
    second_won = np.empty((chain, 4), dtype=np.bool_)
    cost = np.empty(4, dtype=np.float32)
    c = np.empty(4, dtype=np.float32)
    nxt = np.empty(4, dtype=np.float32)
    for first_pos in range(0, a.size, chain):
        c[0] = zero
        c[1] = np.inf
        c[2] = np.inf
        c[3] = np.inf
        for t in range(chain):
            x = a[first_pos + t]
            zero_cost = (x * x if power == 2 else x) + zero_pen
            for quantizer in range(2):
                lo = np.int32(np.floor((x + np.float32(quantizer)) * half))
                if lo > top - 1:
                    lo = top - 1
                hi = lo + 1
                # cost of the two bracketing levels (|x| = 2m - quantizer, or 0 for m = 0)
                r_lo = zero if lo == 0 else np.float32(2 * lo - quantizer)
                e_lo = x - r_lo
                c_lo = (e_lo * e_lo if power == 2 else abs(e_lo)) + penalty[lo]
                e_hi = x - np.float32(2 * hi - quantizer)
                c_hi = (e_hi * e_hi if power == 2 else abs(e_hi)) + penalty[hi]
                if (lo & 1) == 0:
                    even_m, even_c, odd_m, odd_c = lo, c_lo, hi, c_hi
                else:
                    even_m, even_c, odd_m, odd_c = hi, c_hi, lo, c_lo
                if zero_cost <= even_c:
                    even_m, even_c = 0, zero_cost
                level[t, quantizer] = even_m
                level[t, 2 + quantizer] = odd_m
                cost[quantizer] = even_c
                cost[2 + quantizer] = odd_c
            # state s <- predecessor FIRST[s] with cost row s, or SECOND[s] with row SWAP[s]
            # (FIRST = 0 2 0 2, SECOND = 1 3 1 3, SWAP = 2 3 0 1; the transitions of codecs.dq.NEXT_STATE)
            for s in range(4):
                p1 = 2 * (s & 1)
                f = c[p1] + cost[s]
                g = c[p1 + 1] + cost[s ^ 2]
                second_won[t, s] = g < f
                nxt[s] = g if g < f else f
            c[:] = nxt
        state = 0
        for s in range(1, 4):
            if c[s] < c[state]:
                state = s
        for t in range(chain - 1, -1, -1):
            code = 2 * state + (1 if second_won[t, state] else 0)
            # code -> level row: Q0 even, Q0 odd, Q1 even, Q1 odd, Q0 odd, Q0 even, Q1 odd, Q1 even
            row = (0, 2, 1, 3, 2, 0, 3, 1)[code]
            out[first_pos + t] = level[t, row]
            state = code & 3


def viterbi(a: np.ndarray, bits: np.ndarray, lam: float, power: int, chain: int) -> np.ndarray:
    """``trellis._viterbi`` compiled: |levels| (int32) for float32 magnitudes ``a`` (a multiple of ``chain``)."""
    # the rate penalties exactly as the numpy search computes them (same float32 roundings)
    zero_pen = np.float32(lam * bits[0])
    penalty = (np.float32(lam) * bits).astype(np.float32)
    out = np.empty(a.size, dtype=np.int32)
    _viterbi_chains(np.ascontiguousarray(a, dtype=np.float32), penalty, zero_pen, int(power), int(chain), out)
    return out
