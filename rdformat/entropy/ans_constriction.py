"""The constriction backend of :mod:`rdformat.entropy.ans`: constriction's Rust ``AnsCoder`` behind our model.

Used only when ``constriction`` imports and a once-per-process self-check shows that it reproduces the
numpy reference coder exactly (:func:`constriction_module`); ``RDFORMAT_NO_CONSTRICTION=1`` disables it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from ..errors import CorruptDataError
from .models import FrequencyTable
from .ans_numpy import _U64, enc_arrays, encode_numpy, ranks_of

_ENV_DISABLE = "RDFORMAT_NO_CONSTRICTION"


def _constriction_model(cs: Any, table: FrequencyTable) -> Any:
    """A constriction ``Categorical`` whose fixed-point cdf at precision 24 is exactly ours.

    constriction's ``perfect=False`` quantiser maps weights ``w`` to ``cdf_i = floor(W_i * (2**24 - m) /
    sum(w)) + i`` with ``W_i`` the prefix sums. With ``w = k - 1`` the scale is exactly 1.0, so
    ``cdf_i = sum_{j<i} k_j``. Requires m >= 2.
    """
    def build() -> Any:
        k, _, _ = enc_arrays(table)
        return cs.stream.model.Categorical((k - _U64(1)).astype(np.float64), perfect=False)
    return table._derived("cmodel", build)


def encode_constriction(cs: Any, ranks: np.ndarray, table: FrequencyTable,
                        lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(word count per lane, all words lane-major) of ``ranks`` in ``lanes`` lanes; same as ``encode_numpy``."""
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


def decode_constriction(cs: Any, words: np.ndarray, starts: np.ndarray, counts: np.ndarray, n: int,
                        table: FrequencyTable, out_dtype: np.dtype, word_base: int) -> np.ndarray:
    """The ``n`` symbols of one parsed block (lane ``j``: ``counts[j]`` words from ``starts[j]``)."""
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


# the once-per-process self-check
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
        ranks = ranks_of(np.asarray(values), table)
        c_np, w_np = encode_numpy(ranks, table, lanes)
        c_cs, w_cs = encode_constriction(cs, ranks, table, lanes)
        if not (np.array_equal(c_np, c_cs) and np.array_equal(w_np, w_cs)):
            return "constriction output differs from the reference coder"
        starts = np.concatenate([[0], np.cumsum(c_cs)[:-1]]).astype(np.int64)
        got = decode_constriction(cs, w_cs, starts, c_cs, values.size, table, np.dtype(np.uint32), 0)
        if not np.array_equal(got, values):
            return "constriction does not decode the reference coder's output"
    return ""


def constriction_module() -> tuple[Any, str]:
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
