"""SuRP: successive-refinement pruning with a real, embedded index stream.

Method (Isik, No, Weissman, "Successive Pruning for Model Compression via Rate Distortion Theory",
arXiv 2102.08329). Weights are modelled as i.i.d. Laplacian; for absolute-error distortion the
rate-distortion function is ``R(D) = log2(b / D)`` bits per weight (``b = mean |w|``). SuRP divides
each layer by its L2 norm, keeps the signs apart, works on the magnitudes ``u`` and reconstructs
them from zero by adding thresholds: a weight whose residual exceeds the current threshold gets the
threshold added to its reconstruction and subtracted from its residual. The decoder knows the
thresholds, so the bitstream is the sequence of chosen indices; weights never chosen stay exactly
zero, and every prefix of the stream is a valid, coarser (sparser) model.

The literal algorithm (the authors' code; ``tests/test_surp.py`` keeps a copy) picks *one* index at
a time among those above the threshold ``T = alpha * log(n / log n) * mean(residual)``, multiplies
``T`` by ``(n-1)/n`` after each pick, and when nothing exceeds ``T`` re-estimates it from the mean
residual. Every pick scans all ``n`` weights, hence hours for a few million weights.

What this module does instead (vectorised, streaming, deterministic):

1. **Global statistics, one pass over the tensors** (:func:`collect_statistics`): per tensor its L2
   norm; globally ``N``, ``b = mean(u)`` (``1/lambda``) and a fine histogram of ``log2 u``.
2. **A fixed threshold schedule** ``T[p] = t0 * decay**p`` (:class:`SurpPlan`), with
   ``t0 ~ alpha * log(N / log N) * b`` (the paper's first threshold). Each *pass* ``p`` selects, in
   one numpy step, *every* residual above ``T[p]`` (first among the weights not kept yet, then among
   the kept ones, "refinement"; each set in a fixed pseudo-random order) and subtracts ``T[p]``.

   Relation to the one-index-at-a-time algorithm: within a pass the threshold is frozen instead of
   shrinking by ``(n-1)/n`` per pick, and the next pass divides it by ``1/decay`` instead of
   re-estimating it from the mean residual. Because a weight's fate then depends only on its own
   magnitude and the schedule, (a) tensors are processed independently (sharded models, process
   pools), (b) the decoder needs only ``t0`` and ``decay`` (no global state), (c) a weight is kept
   after pass ``p`` iff ``u > T[p]``, so the kept set at a given sparsity is the one the literal
   algorithm converges to (the largest normalised magnitudes); the two differ only in the *band*
   of magnitudes between the last two thresholds, where the literal algorithm keeps a random
   subset and this one, for a sparsity target, aligns the schedule so a threshold falls exactly on
   the target's magnitude quantile (no band). ``tests/test_surp.py`` checks both statements.
   A "refresh" of the literal algorithm (nothing exceeds the threshold) corresponds here to passes
   that select nothing; they cost nothing in the stream. The per-pass decay replaces the literal
   ``(n-1)/n`` decay: the latter selects ~log n weights per refresh, so its threshold falls in
   ~n/log n tiny steps; ``decay=0.5`` halves it per pass (bit-plane like), which also codes better
   (measured in ``tools/bench_surp.py``: the literal schedule spends its bits on over-precise
   values of few weights).
3. **Decoder-side offset**: the stream also tells the decoder an upper bound ``B`` of every kept
   weight's residual; it adds ``offset * B`` (``offset`` chosen by the encoder, 0 = the paper's
   plain sum of thresholds). Weights never chosen stay exactly zero.
4. **Stopping**: at a target sparsity (the schedule is aligned so a threshold lands on the
   magnitude quantile, found in the histogram: met within ~1e-4), a target bits per weight or a
   target distortion (the last threshold is bisected on a per-tensor sample; measured within ~2%).
   Streams end at pass boundaries (where the rate-distortion trade-off is best); ``refine_passes``
   extra passes after a sparsity target refine the kept weights without adding any.
   :class:`SurpPlan` can also stop inside a run (``cut``), which is what any prefix of a longer
   stream is.

Which tensors: by default every float tensor with 2+ dims (:func:`is_prunable`); the others go
through the lossless codec. The byte format is :mod:`rdformat.codecs.surp` / ``spec/surp.md``.

numpy only at import; :func:`iterative_surp` imports torch when called.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .codecs.surp import (
    CLASS_NEW,
    CLASS_REFINE,
    Run,
    SurpCodec,
    SurpConfig,
    decode_stream,
    encode_runs,
    indices_to_positions,
    permutation_params,
    prefix_fraction,
    thresholds,
)
from .errors import InvalidInputError

__all__ = [
    "PAPER_SCHEDULE",
    "SurpParams",
    "SurpPlan",
    "Statistics",
    "EncodedTensor",
    "SurpResult",
    "is_prunable",
    "collect_statistics",
    "plan",
    "plan_tensor",
    "surp_runs",
    "TensorEncoder",
    "encode_tensor",
    "compress",
    "save",
    "load_budget",
    "budget_fraction",
    "iterative_surp",
]

#: The paper's iterative sparsity schedule (each step prunes 20% of what is left, then finer).
PAPER_SCHEDULE: tuple[float, ...] = (0.2, 0.36, 0.488, 0.5904, 0.67232, 0.737856, 0.7903, 0.83224,
                                     0.8658, 0.893, 0.92, 0.94, 0.96, 0.97, 0.98, 0.99)

_HIST_RES = 4096  # histogram bins per octave of log2(u): count error ~1e-4 of N at worst
_HIST_LO = -96  # log2 u below this is lumped into the first bin
_HIST_BINS = (32 - _HIST_LO) * _HIST_RES  # u < 2**32 (u <= 1 with L2 normalisation)
_SAMPLE = 16384  # per-tensor sample for bits / distortion planning and the offset
_OFFSET_GRID = np.linspace(0.0, 0.75, 31)


def is_prunable(array: Any) -> bool:
    """Whether SuRP processes this tensor by default: a non-empty float tensor with 2+ dims."""
    arr = np.asarray(array) if not hasattr(array, "dtype") else array
    kind = np.dtype(arr.dtype).kind
    name = np.dtype(arr.dtype).name
    is_float = kind == "f" or name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")
    return bool(is_float and arr.ndim >= 2 and arr.size > 0)


def _magnitudes(values: np.ndarray, norm: float) -> np.ndarray:
    """Normalised magnitudes |w| / norm in float64 (exact division of the widened values)."""
    w = np.asarray(values).reshape(-1).astype(np.float64)
    if not np.all(np.isfinite(w)):
        raise InvalidInputError("SuRP needs finite weights (found NaN or inf)")
    if norm <= 0:
        return np.zeros(w.size, dtype=np.float64)
    return np.abs(w) / norm


_BLOCK = 1 << 20  # elements per block when scanning big tensors (bounds temporary memory)


def _l2(values: np.ndarray) -> float:
    """L2 norm in float64, summed block by block (the same order everywhere: encoder == statistics)."""
    w = np.asarray(values).reshape(-1)
    acc = 0.0
    for i in range(0, w.size, _BLOCK):
        blk = w[i:i + _BLOCK].astype(np.float64)
        acc += float(np.dot(blk, blk))
    return math.sqrt(acc)


# ---------------------------------------------------------------------------------------------
# parameters, statistics, plans
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurpParams:
    """Knobs of the pass.

    Attributes:
        alpha: the first threshold is ``alpha * log(N / log N) * b`` (the paper's form; for a sparsity
            target the schedule is shifted so a threshold lands on the target, staying within a
            factor ``decay`` of this).
        decay: threshold factor per pass, in [0.5, 1). 0.5 halves the threshold per pass.
        offset: decoder-side reconstruction offset as a fraction of the residual bound; ``None``
            picks the value minimising the absolute error on a sample; 0 is the paper's decoder.
        refine_passes: after a sparsity target is reached, this many more passes refine the kept
            weights without adding new ones.
        seed: selects the pseudo-random visiting order (deterministic for a given seed).
        segment_bytes: target segment size of the stream (default ~1/128 byte per weight).
        normalize: ``"l2"`` divides each tensor by its L2 norm (the paper); ``"none"`` keeps raw
            magnitudes, so the kept set is the global magnitude-pruning one (see
            ``tools/results/surp_digits.md``: L2 normalisation favours small layers).
    """

    alpha: float = 1.0
    decay: float = 0.5
    offset: float | None = None
    refine_passes: int = 3
    seed: int = 0
    segment_bytes: int | None = None
    normalize: str = "l2"

    def __post_init__(self) -> None:
        if self.normalize not in ("l2", "none"):
            raise InvalidInputError(f"normalize must be 'l2' or 'none', got {self.normalize!r}")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise InvalidInputError(f"alpha must be > 0, got {self.alpha}")
        if not 0.5 <= self.decay < 1:
            # below 1/2 the later thresholds sum to less than the gap a first pick leaves
            raise InvalidInputError(f"decay must be in [0.5, 1), got {self.decay}")
        if self.offset is not None and not 0 <= self.offset <= 1:
            raise InvalidInputError(f"offset must be in [0, 1] or None, got {self.offset}")
        if self.refine_passes < 0:
            raise InvalidInputError("refine_passes must be >= 0")


@dataclass
class TensorStats:
    """One pass over a tensor: what the plan needs."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    n: int
    norm: float
    sum_u: float
    umax: float
    zeros: int
    sample: np.ndarray  # normalised magnitudes of a strided sample (<= _SAMPLE)


@dataclass
class Statistics:
    """Global statistics of the tensors SuRP processes (one pass, tensor by tensor)."""

    tensors: dict[str, TensorStats] = field(default_factory=dict)
    passthrough: list[str] = field(default_factory=list)
    normalize: str = "l2"
    hist: np.ndarray = field(default_factory=lambda: np.zeros(_HIST_BINS, dtype=np.int64))

    @property
    def n(self) -> int:
        """Number of weights SuRP processes."""
        return sum(t.n for t in self.tensors.values())

    @property
    def mean_u(self) -> float:
        """``b = 1/lambda``: mean normalised magnitude."""
        n = self.n
        return sum(t.sum_u for t in self.tensors.values()) / n if n else 0.0

    @property
    def zeros(self) -> int:
        """Weights that are exactly zero (never chosen)."""
        return sum(t.zeros for t in self.tensors.values())

    def add(self, name: str, array: np.ndarray) -> TensorStats:
        """Account for one prunable tensor."""
        arr = np.asarray(array)
        flat = arr.reshape(-1)
        norm = _l2(arr) if self.normalize == "l2" else 1.0
        sum_u, umax, zeros = 0.0, 0.0, 0
        for i in range(0, flat.size, _BLOCK):  # block by block: temporaries stay ~40 MB
            u = _magnitudes(flat[i:i + _BLOCK], norm)
            pos = u[u > 0]
            zeros += u.size - pos.size
            sum_u += float(u.sum())
            umax = max(umax, float(u.max(initial=0.0)))
            if pos.size:
                b = np.floor((np.log2(pos) - _HIST_LO) * _HIST_RES).astype(np.int64)
                np.clip(b, 0, _HIST_BINS - 1, out=b)
                self.hist += np.bincount(b, minlength=_HIST_BINS)
        stride = max(1, flat.size // _SAMPLE)
        ts = TensorStats(name, tuple(arr.shape), str(arr.dtype), int(flat.size), norm, sum_u, umax, int(zeros),
                         _magnitudes(flat[::stride], norm))
        self.tensors[name] = ts
        return ts

    def quantile_threshold(self, kept: float) -> float:
        """A ``tau`` with about ``kept`` weights above it."""
        total_nz = self.n - self.zeros
        if kept >= total_nz:
            lo = min((float(t.sample[t.sample > 0].min()) for t in self.tensors.values()
                      if np.any(t.sample > 0)), default=1.0)
            return self._smallest_positive(lo) * 0.5
        if kept <= 0:
            return max(t.umax for t in self.tensors.values())
        rev = np.cumsum(self.hist[::-1])  # rev[j]: count in the top j+1 bins
        j = int(np.searchsorted(rev, kept, side="left"))  # top bins 0..j hold >= kept
        i = _HIST_BINS - 1 - j
        above = float(rev[j - 1]) if j else 0.0
        c = float(self.hist[i])
        frac = (kept - above) / c if c else 0.0  # share of bin i (from its top) that is kept
        x = i + 1.0 - frac
        return float(2.0 ** (x / _HIST_RES + _HIST_LO))

    def _smallest_positive(self, fallback: float) -> float:
        nz = np.flatnonzero(self.hist)
        if not nz.size:
            return fallback
        return float(2.0 ** (nz[0] / _HIST_RES + _HIST_LO))


def _pairs(source: Any) -> Iterator[tuple[str, Any]]:
    if callable(source) and not isinstance(source, Mapping):
        source = source()
    items = source.items() if isinstance(source, Mapping) else source
    for name, array in items:
        yield name, array


def collect_statistics(source: Mapping[str, Any] | Iterable[tuple[str, Any]] | Callable[[], Iterable],
                       select: Callable[[str, Any], bool] | None = None, normalize: str = "l2") -> Statistics:
    """One pass over the tensors: per-tensor norms and samples, global mean and histogram.

    ``source`` is a mapping (may be lazy), an iterable of ``(name, array)`` pairs, or a callable
    returning a fresh one. ``select(name, array)`` picks the tensors SuRP processes (default
    :func:`is_prunable`); the others are recorded as pass-through. ``normalize``: see
    :class:`SurpParams`.
    """
    stats = Statistics(normalize=normalize)
    sel = select or (lambda name, arr: is_prunable(arr))
    for name, array in _pairs(source):
        if sel(name, array):
            stats.add(name, np.asarray(array))
        else:
            stats.passthrough.append(name)
    return stats


@dataclass(frozen=True)
class SurpPlan:
    """A global stopping point on a global threshold schedule (shared by every tensor).

    The stream is NEW(0), REFINE(0), NEW(1), REFINE(1), ... with NEW runs for passes
    ``< new_passes`` and REFINE runs for passes ``< passes``. Its last run (NEW(new_passes-1) if
    ``new_passes > passes``, else REFINE(passes-1)) keeps only the selections at permuted positions
    ``< floor(cut * count)`` of each chunk. A sparsity target ends with NEW(P) (T[P] on the magnitude
    quantile) and ``refine_passes`` REFINE runs after it.
    """

    t0: float
    decay: float
    passes: int
    new_passes: int
    cut: float = 1.0
    offset: float | None = None
    seed: int = 0
    segment_bytes: int | None = None
    target: dict = field(default_factory=dict)
    normalize: str = "l2"

    def codec(self) -> SurpCodec:
        """A codec applying this plan to every prunable tensor passed to :func:`rdformat.save`."""
        return SurpCodec(plan=self)

    def thresholds(self) -> np.ndarray:
        """The pass thresholds ``T[0..max(passes, new_passes)-1]``."""
        return thresholds(self.t0, self.decay, max(self.passes, self.new_passes))


def _reference_t0(n: int, b: float, alpha: float) -> float:
    s = math.log(n / math.log(n)) if n > 3 else 1.0
    return alpha * max(s, 1.0) * b


def _aligned(tau: float, t_floor: float, decay: float) -> tuple[float, int]:
    """(t0, P): the smallest P >= 0 with t0 = tau / decay**P >= t_floor (so t0 * decay**P ~ tau)."""
    if tau >= t_floor:
        return tau, 0
    p = max(0, int(math.ceil(math.log(tau / t_floor) / math.log(decay) - 1e-9)))
    while tau / decay ** p < t_floor and p < 4000:
        p += 1
    return tau / decay ** p, p


def _start_floor(stats: Statistics, params: SurpParams) -> float:
    """Lowest admissible first threshold: ``decay`` x the paper's ``alpha * log(N/log N) * b``, and at
    least ``decay * umax``. A weight is picked at most once per pass and the later thresholds sum to
    ``T[p] * decay / (1 - decay) >= T[p-1] - T[p]`` (for decay >= 1/2), so any magnitude up to
    ``T[0] / decay`` is reachable; a larger one would stay short of its value for ever."""
    n = stats.n
    b = stats.mean_u
    umax = max((t.umax for t in stats.tensors.values()), default=0.0)
    t_ref = _reference_t0(n, b, params.alpha) if b > 0 else 1.0
    return max(params.decay * t_ref, params.decay * umax, 1e-300)


def plan(stats: Statistics, *, sparsity: float | None = None, bits_per_weight: float | None = None,
         distortion: float | None = None, params: SurpParams | None = None) -> SurpPlan:
    """Choose the schedule and stopping point for exactly one target.

    Args:
        sparsity: fraction of processed weights that end at zero (met within ~1e-4 from the
            histogram; the schedule is aligned so a threshold equals the magnitude quantile).
        bits_per_weight: coded stream size / processed weights (estimated on the samples).
        distortion: relative distortion ``sum|u - u_hat| / sum|u|`` in the normalised domain
            (``R(D) = log2(1/distortion)`` for a Laplacian); estimated on the samples.
        params: :class:`SurpParams`.
    """
    params = params or SurpParams()
    given = [x is not None for x in (sparsity, bits_per_weight, distortion)]
    if sum(given) != 1:
        raise InvalidInputError("give exactly one of sparsity, bits_per_weight, distortion")
    if stats.normalize != params.normalize:
        raise InvalidInputError(f"statistics were collected with normalize={stats.normalize!r}, "
                                f"params ask for {params.normalize!r}")
    return replace(_plan(stats, sparsity, bits_per_weight, distortion, params), normalize=params.normalize)


def _plan(stats: Statistics, sparsity: float | None, bits_per_weight: float | None, distortion: float | None,
          params: SurpParams) -> SurpPlan:
    n = stats.n
    if n == 0:
        return SurpPlan(1.0, params.decay, 0, 0, 1.0, params.offset or 0.0, params.seed, params.segment_bytes)
    t_floor = _start_floor(stats, params)
    if sparsity is not None:
        if not 0 <= sparsity <= 1:
            raise InvalidInputError(f"sparsity must be in [0, 1], got {sparsity}")
        kept = (1.0 - sparsity) * n
        tau = stats.quantile_threshold(kept)
        t0, p = _aligned(tau, t_floor, params.decay)
        return SurpPlan(t0, params.decay, p + params.refine_passes, p + 1, 1.0, params.offset,
                        params.seed, params.segment_bytes, {"sparsity": sparsity})
    return _plan_by_sample(stats, t_floor, params, bits_per_weight, distortion)


def plan_tensor(array: np.ndarray, *, sparsity: float | None = None, bits_per_weight: float | None = None,
                distortion: float | None = None, params: SurpParams | None = None, **kw: Any) -> SurpPlan:
    """A plan from this tensor's own statistics (layer-wise SuRP; used by ``SurpCodec(sparsity=...)``)."""
    params = replace(params or SurpParams(), **kw)
    stats = Statistics(normalize=params.normalize)
    stats.add("tensor", np.asarray(array))
    return plan(stats, sparsity=sparsity, bits_per_weight=bits_per_weight, distortion=distortion, params=params)


# ---------------------------------------------------------------------------------------------
# the pass
# ---------------------------------------------------------------------------------------------


def _first_pass(u: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Index of the first pass whose threshold is below u (``len(T)`` if none): #{p : T[p] >= u}."""
    rev = T[::-1]  # increasing
    return (T.size - np.searchsorted(rev, u, side="left")).astype(np.int32)


def surp_runs(values: np.ndarray, norm: float, plan_: SurpPlan) -> list[Run]:
    """Run the vectorised SuRP pass on one chunk (flat values) and return its runs in stream order.

    Pass ``p`` is a NEW run (not-yet-kept weights with ``u > T[p]`` join with value ``T[p]``) then a
    REFINE run (kept weights whose residual exceeds ``T[p]`` get ``T[p]`` more); both rank their
    domain as it was at the start of the pass, in permuted order. NEW runs go before REFINE runs
    because they lower the distortion more per bit (measured), so cuts inside a pass cost less.
    """
    u = _magnitudes(values, norm)
    n = u.size
    total = max(plan_.passes, plan_.new_passes)
    if n == 0 or total == 0 or norm <= 0:
        return []
    T = thresholds(plan_.t0, plan_.decay, total)
    fp = _first_pass(u, T)
    idx = np.flatnonzero(fp < plan_.new_passes)
    a, c = permutation_params(n, plan_.seed)
    pos = indices_to_positions(idx, n, a, c)
    order = np.argsort(pos, kind="stable")
    idx, pos = idx[order], pos[order]
    fpa = fp[idx]
    ua = u[idx]
    w = np.asarray(values).reshape(-1)
    neg = np.signbit(w[idx].astype(np.float64))
    last_new = plan_.new_passes - 1 >= plan_.passes  # the stream ends with a NEW run
    cutpos = int(math.floor(plan_.cut * n)) if plan_.cut < 1.0 else n
    if cutpos < n and last_new:
        keep = (fpa != plan_.new_passes - 1) | (pos < cutpos)
        pos, fpa, ua, neg = pos[keep], fpa[keep], ua[keep], neg[keep]
    r = ua.copy()
    runs: list[Run] = []
    for p in range(total):
        t = float(T[p])
        sig = fpa < p
        cs = np.cumsum(sig)
        if p < plan_.new_passes:
            sel = np.flatnonzero(fpa == p)
            runs.append(Run(p, CLASS_NEW, pos[sel] - cs[sel], neg[sel], not (cutpos < n and last_new and
                                                                             p == plan_.new_passes - 1)))
            new_sel = sel
        else:
            new_sel = None
        if p < plan_.passes:
            cut_here = cutpos < n and not last_new and p == plan_.passes - 1
            cand = sig & (r > t)
            if cut_here:
                cand &= pos < cutpos
            sel = np.flatnonzero(cand)
            if sel.size:
                r[sel] -= t
            runs.append(Run(p, CLASS_REFINE, cs[sel] - 1, None, not cut_here))
        if new_sel is not None and new_sel.size:
            r[new_sel] = ua[new_sel] - t  # after REFINE(p): new weights are not in its domain
    return runs


def _simulate(u: np.ndarray, umax: np.ndarray | float, T: np.ndarray, passes: int, new_passes: int,
              on_run: Callable[[np.ndarray, np.ndarray, bool], None] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pass on magnitudes ``u`` with the decoder's residual bounds; returns (first pass, residual,
    bound). ``on_run(domain, hit, is_new)`` sees every run (domain indices, which of them are picked)."""
    fp = _first_pass(u, T)
    r = u.copy()
    bound = np.zeros_like(u)
    for p in range(max(passes, new_passes)):
        t = float(T[p])
        tested = np.flatnonzero(fp < p)
        new = None
        if p < new_passes:
            cand = np.flatnonzero(fp >= p)
            hit = fp[cand] == p
            if on_run is not None:
                on_run(cand, hit, True)
            new = cand[hit]
        if p < passes:
            hit = r[tested] > t
            if on_run is not None:
                on_run(tested, hit, False)
            bt = bound[tested]
            bound[tested] = np.where(hit, bt - t, np.minimum(bt, t))
            r[tested[hit]] -= t
        if new is not None:  # NEW(p) weights join after REFINE(p)
            um = umax if np.isscalar(umax) else umax[new]
            hi = um if p == 0 else np.minimum(um, float(T[p - 1]))
            r[new] = u[new] - t
            bound[new] = hi - t
    return fp, r, bound


def _err(r: np.ndarray, bound: np.ndarray, sig: np.ndarray, lost: np.ndarray,
         weight: np.ndarray | None = None) -> np.ndarray:
    """Summed absolute error for each grid offset: kept weights |r - o*B|, others their magnitude."""
    rk = r[sig]
    bk = np.maximum(bound[sig], 0.0)
    wk = None if weight is None else weight[sig]
    miss = float(lost[~sig].sum()) if weight is None else float(np.dot(lost[~sig], weight[~sig]))
    if rk.size == 0:
        return np.full(_OFFSET_GRID.size, miss)
    e = np.abs(rk[None, :] - _OFFSET_GRID[:, None] * bk[None, :])
    return (e.sum(axis=1) if wk is None else e @ wk) + miss


def _h2(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 1e-300, 1.0)
    y = np.clip(1.0 - x, 1e-300, 1.0)
    return -(x * np.log2(x) + y * np.log2(y))


class _SampleModel:
    """All tensors' samples in one array (<= 2**18 values), to predict bits and distortion of a plan."""

    def __init__(self, stats: Statistics, limit: int = 1 << 18, segment_bytes: int | None = None) -> None:
        n = stats.n
        us, tids, ws, ums = [], [], [], []
        for i, ts in enumerate(stats.tensors.values()):
            want = max(64, int(limit * ts.n / max(n, 1)))
            s = ts.sample[:: max(1, ts.sample.size // want)]
            us.append(s)
            tids.append(np.full(s.size, i, dtype=np.int64))
            ws.append(np.full(s.size, ts.n / max(s.size, 1)))
            ums.append(np.full(s.size, ts.umax))
        self.u = np.concatenate(us) if us else np.zeros(0)
        self.tid = np.concatenate(tids) if tids else np.zeros(0, dtype=np.int64)
        self.w = np.concatenate(ws) if ws else np.zeros(0)
        self.umax = np.concatenate(ums) if ums else np.zeros(0)
        self.tensors = len(us)
        self.total_u = float(np.dot(self.u, self.w))
        from .codecs.surp import default_segment_bytes

        seg = [segment_bytes or default_segment_bytes(min(ts.n, 1 << 20)) for ts in stats.tensors.values()]
        self.segment_bytes = np.array(seg, dtype=np.float64)
        self.fixed_segments = segment_bytes is not None

    def _bits(self, dom: np.ndarray, hit: np.ndarray, signs: bool) -> np.ndarray:
        """Estimated bits of one run per tensor: domain * H(hits / domain) (+ one bit per sign)."""
        m = np.bincount(self.tid[dom], minlength=self.tensors).astype(np.float64)
        k = np.bincount(self.tid[dom[hit]], minlength=self.tensors).astype(np.float64)
        scale = np.bincount(self.tid[dom], weights=self.w[dom], minlength=self.tensors)
        frac = np.where(m > 0, k / np.maximum(m, 1), 0.0)
        bits = scale * _h2(frac)
        if signs:
            bits += np.bincount(self.tid[dom[hit]], weights=self.w[dom[hit]], minlength=self.tensors)
        return bits

    def evaluate(self, t0: float, decay: float, passes: int, new_passes: int) -> tuple[float, np.ndarray]:
        """(estimated stream bits, summed absolute error per grid offset) at the end of ``passes``."""
        T = thresholds(t0, decay, max(passes, new_passes))
        bits = np.zeros(self.tensors)
        runs = np.zeros(self.tensors)

        def on_run(dom: np.ndarray, hit: np.ndarray, is_new: bool) -> None:
            nonlocal bits, runs
            b = self._bits(dom, hit, is_new)
            bits = bits + b
            runs = runs + (b > 0)

        fp, r, bound = _simulate(self.u, self.umax, T, passes, new_passes, on_run)
        sig = fp < new_passes
        # Coding overhead (measured): ~1% of the ideal size, ~30 bytes per segment, ~3 per run.
        seg = self.segment_bytes if self.fixed_segments else np.minimum(self.segment_bytes,
                                                                        np.maximum(128.0, bits / 8.0 / 8.0))
        segments = np.ceil(bits / 8.0 / seg)
        total = float((bits * 1.01 + 8.0 * (30.0 * segments + 3.0 * runs)).sum())
        return total, _err(r, bound, sig, self.u, self.w)


def _plan_by_sample(stats: Statistics, t_floor: float, params: SurpParams, bits: float | None,
                    dist: float | None) -> SurpPlan:
    """Bits / distortion targets: bisect the last threshold (a pass boundary) on the samples."""
    model = _SampleModel(stats, segment_bytes=params.segment_bytes)
    n = stats.n
    umax = max(t.umax for t in stats.tensors.values())
    if umax <= 0 or model.total_u <= 0:
        return SurpPlan(1.0, params.decay, 0, 0, 1.0, params.offset or 0.0, params.seed, params.segment_bytes)
    j_fixed = None if params.offset is None else int(np.argmin(np.abs(_OFFSET_GRID - params.offset)))

    def at(tau: float) -> tuple[float, float, float, int, float]:
        t0, p = _aligned(tau, t_floor, params.decay)
        b, e = model.evaluate(t0, params.decay, p, p + 1)
        j = int(np.argmin(e)) if j_fixed is None else j_fixed
        return b / n, float(e[j]) / model.total_u, t0, p, float(_OFFSET_GRID[j])

    # log2(tau): lo = low threshold (many bits, small distortion), hi = umax (nothing kept).
    lo, hi = math.log2(umax) - 40.0, math.log2(umax)
    for _ in range(48):
        mid = 0.5 * (lo + hi)
        b, d, *_ = at(2.0 ** mid)
        if bits is not None:  # the most bits within the target: smallest tau with b <= bits
            lo, hi = (lo, mid) if b <= bits else (mid, hi)
        else:  # the fewest bits reaching the distortion: largest tau with d <= dist
            lo, hi = (mid, hi) if d <= dist else (lo, mid)
        if hi - lo < 1e-4:
            break
    tau = 2.0 ** (hi if bits is not None else lo)
    _, _, t0, p, off = at(tau)
    return SurpPlan(t0, params.decay, p, p + 1, 1.0, params.offset if params.offset is not None else off,
                    params.seed, params.segment_bytes,
                    {"bits_per_weight": bits} if bits is not None else {"distortion": dist})


def _auto_offset(sample: np.ndarray, plan_: SurpPlan, umax: float) -> float:
    """Offset minimising the sample's absolute error at the plan's stopping point."""
    if sample.size == 0 or plan_.new_passes == 0:
        return 0.0
    T = thresholds(plan_.t0, plan_.decay, max(plan_.passes, plan_.new_passes))
    fp, r, bound = _simulate(sample, umax, T, plan_.passes, plan_.new_passes)
    sig = fp < plan_.new_passes
    if not sig.any():
        return 0.0
    e = _err(r, bound, sig, sample)
    return float(_OFFSET_GRID[int(np.argmin(e))])


class TensorEncoder:
    """Encodes the chunks of one tensor under a plan (the codec's ``for_tensor`` creates one)."""

    def __init__(self, plan_: SurpPlan, array: np.ndarray) -> None:
        arr = np.asarray(array)
        self.plan = plan_
        self.norm = _l2(arr) if plan_.normalize == "l2" else 1.0
        flat = arr.reshape(-1)
        # max(|w|) / norm == max(|w| / norm): division by a positive number is monotonic
        amax = float(np.max(np.abs(flat))) if flat.size else 0.0
        if not math.isfinite(amax):
            raise InvalidInputError("SuRP needs finite weights (found NaN or inf)")
        self.umax = amax / self.norm if self.norm > 0 else 0.0
        offset = plan_.offset
        if offset is None:
            stride = max(1, flat.size // (4 * _SAMPLE))
            offset = _auto_offset(_magnitudes(flat[::stride], self.norm), plan_, self.umax)
        self.config = SurpConfig(norm=self.norm, t0=plan_.t0, decay=plan_.decay, umax=self.umax,
                                 offset=float(offset), seed=plan_.seed)

    def encode_chunk(self, elements: np.ndarray) -> bytes:
        """The stream of one chunk of this tensor."""
        runs = surp_runs(elements, self.norm, self.plan)
        return encode_runs(runs, int(np.asarray(elements).size), segment_bytes=self.plan.segment_bytes)


# ---------------------------------------------------------------------------------------------
# encoded tensors, compress / save / load
# ---------------------------------------------------------------------------------------------


@dataclass
class EncodedTensor:
    """One tensor's SuRP encoding: config and one stream per chunk."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    config: SurpConfig
    chunk_elements: int
    payloads: list[bytes]

    @property
    def n(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def stream_bytes(self) -> int:
        """Bytes of the coded streams (chunk data only)."""
        return sum(len(p) for p in self.payloads)

    def chunk_counts(self) -> list[int]:
        """Elements of each chunk."""
        return [min(self.chunk_elements, self.n - i) for i in range(0, self.n, self.chunk_elements)]

    def codec(self) -> SurpCodec:
        """A codec that writes the precomputed streams (for ``Writer.add`` with the same chunk_bytes)."""
        return SurpCodec(self.config, payloads=self.payloads, chunk_counts=self.chunk_counts())

    def decode(self, fraction: float | None = None) -> np.ndarray:
        """The decoded tensor; with ``fraction``, from the whole segments in that share of each chunk."""
        from .dtypes import by_numpy

        info = by_numpy(self.dtype)
        out = np.zeros(self.n, dtype=self.dtype)
        for i, data in enumerate(self.payloads):
            start = i * self.chunk_elements
            count = min(self.chunk_elements, self.n - start)
            limit = None if fraction is None else int(math.floor(fraction * len(data)))
            idx, vals, _ = decode_stream(data, count, self.config, limit)
            out[start + idx] = (vals * self.config.norm).astype(info.numpy)
        return out.reshape(self.shape)


def _chunk_elements(itemsize: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // itemsize)


def encode_tensor(name: str, array: np.ndarray, plan_: SurpPlan, chunk_bytes: int | None = None) -> EncodedTensor:
    """Encode one prunable tensor under a (global) plan, chunked like :class:`rdformat.Writer`."""
    from .writer import DEFAULT_CHUNK_BYTES

    arr = np.asarray(array)
    enc = TensorEncoder(plan_, arr)
    ce = _chunk_elements(arr.dtype.itemsize, chunk_bytes or DEFAULT_CHUNK_BYTES)
    flat = arr.reshape(-1)
    payloads = [enc.encode_chunk(flat[i:i + ce]) for i in range(0, flat.size, ce)]
    return EncodedTensor(name, tuple(arr.shape), arr.dtype, enc.config, ce, payloads)


@dataclass
class SurpResult:
    """Output of :func:`compress`: encodings, the plan and measured statistics."""

    plan: SurpPlan
    stats: Statistics
    encoded: dict[str, EncodedTensor]
    passthrough: list[str]

    @property
    def n(self) -> int:
        """Processed weights."""
        return self.stats.n

    @property
    def stream_bytes(self) -> int:
        """Bytes of all SuRP streams."""
        return sum(e.stream_bytes for e in self.encoded.values())

    @property
    def bits_per_weight(self) -> float:
        """Stream bits per processed weight."""
        return 8.0 * self.stream_bytes / max(self.n, 1)

    def decode(self, fraction: float | None = None) -> dict[str, np.ndarray]:
        """Decoded SuRP tensors (pass-through tensors are not included)."""
        return {k: e.decode(fraction) for k, e in self.encoded.items()}

    def measure(self, source: Any, fraction: float | None = None) -> dict[str, float]:
        """Sparsity, bits/weight and relative distortion of the decoded tensors against ``source``."""
        kept = 0
        err = 0.0
        tot = 0.0
        for name, array in _pairs(source):
            e = self.encoded.get(name)
            if e is None:
                continue
            dec = e.decode(fraction).astype(np.float64).reshape(-1)
            norm = e.config.norm
            w = np.asarray(array).astype(np.float64).reshape(-1)
            kept += int(np.count_nonzero(dec))
            if norm > 0:
                err += float(np.abs(w - dec).sum()) / norm
                tot += float(np.abs(w).sum()) / norm
        used = self.stream_bytes if fraction is None else sum(
            _prefix_bytes(e, fraction) for e in self.encoded.values())
        return {"sparsity": 1.0 - kept / max(self.n, 1), "bits_per_weight": 8.0 * used / max(self.n, 1),
                "distortion": err / tot if tot else 0.0}


def _prefix_bytes(e: EncodedTensor, fraction: float) -> int:
    total = 0
    for i, data in enumerate(e.payloads):
        count = min(e.chunk_elements, e.n - i * e.chunk_elements)
        _, _, used = decode_stream(data, count, e.config, int(math.floor(fraction * len(data))))
        total += used
    return total


def _encode_job(job: tuple[str, np.ndarray, SurpPlan, int]) -> EncodedTensor:
    return encode_tensor(*job)


def _encoded_iter(source: Any, stats: Statistics, plan_: SurpPlan, chunk_bytes: int, workers: int,
                  ) -> Iterator[tuple[str, Any, EncodedTensor | None]]:
    """(name, array, encoding or None for pass-through) in source order; parallel with ``workers``."""
    if workers <= 1:
        for name, array in _pairs(source):
            if name in stats.tensors:
                yield name, array, encode_tensor(name, np.asarray(array), plan_, chunk_bytes)
            else:
                yield name, array, None
        return
    from concurrent.futures import ProcessPoolExecutor

    pending: list[tuple[str, Any, Any]] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for name, array in _pairs(source):
            fut = None
            if name in stats.tensors:
                fut = pool.submit(_encode_job, (name, np.asarray(array), plan_, chunk_bytes))
            pending.append((name, array, fut))
            while len(pending) > 2 * workers:  # bounded look-ahead keeps memory near 2*workers tensors
                n0, a0, f0 = pending.pop(0)
                yield n0, a0, (f0.result() if f0 is not None else None)
        for n0, a0, f0 in pending:
            yield n0, a0, (f0.result() if f0 is not None else None)


def compress(source: Any, *, sparsity: float | None = None, bits_per_weight: float | None = None,
             distortion: float | None = None, params: SurpParams | None = None, workers: int = 1,
             chunk_bytes: int | None = None, select: Callable[[str, Any], bool] | None = None) -> SurpResult:
    """Global statistics (one pass), a plan, then every prunable tensor encoded independently.

    ``source``: a mapping name -> array, or a callable returning ``(name, array)`` pairs (read twice).
    Returns a :class:`SurpResult` (encodings in memory; see :func:`save` to write a file).
    """
    from .writer import DEFAULT_CHUNK_BYTES

    params = params or SurpParams()
    stats = collect_statistics(source, select, params.normalize)
    p = plan(stats, sparsity=sparsity, bits_per_weight=bits_per_weight, distortion=distortion, params=params)
    encoded = {}
    for name, _, enc in _encoded_iter(source, stats, p, chunk_bytes or DEFAULT_CHUNK_BYTES, workers):
        if enc is not None:
            encoded[name] = enc
    return SurpResult(p, stats, encoded, list(stats.passthrough))


def save(source: Any, target: str | os.PathLike, *, sparsity: float | None = None,
         bits_per_weight: float | None = None, distortion: float | None = None,
         params: SurpParams | None = None, workers: int = 1, metadata: Mapping | None = None,
         chunk_bytes: int | None = None, select: Callable[[str, Any], bool] | None = None,
         lossless: str = "lossless") -> SurpResult:
    """Write an ``.rdc`` file: SuRP streams for the prunable tensors, ``lossless`` for the others.

    Streams tensor by tensor (two passes over ``source``: statistics, then encode-and-write);
    ``workers`` > 1 encodes tensors in a process pool while writing in order.
    """
    from .writer import DEFAULT_CHUNK_BYTES, Writer

    cb = chunk_bytes or DEFAULT_CHUNK_BYTES
    params = params or SurpParams()
    stats = collect_statistics(source, select, params.normalize)
    p = plan(stats, sparsity=sparsity, bits_per_weight=bits_per_weight, distortion=distortion, params=params)
    meta = dict(metadata or {})
    meta.setdefault("surp", {"target": p.target, "weights": stats.n})
    encoded = {}
    with Writer(target, metadata=meta, codec=lossless, chunk_bytes=cb) as w:
        for name, array, enc in _encoded_iter(source, stats, p, cb, workers):
            if enc is None:
                w.add(name, np.asarray(array))
            else:
                w.add(name, np.asarray(array), codec=enc.codec())
                encoded[name] = EncodedTensor(enc.name, enc.shape, enc.dtype, enc.config, enc.chunk_elements,
                                              enc.payloads)
    return SurpResult(p, stats, encoded, list(stats.passthrough))


def budget_fraction(path: str | os.PathLike, max_bytes: int) -> float:
    """Share of every SuRP chunk's bytes that a total budget of ``max_bytes`` allows.

    Non-SuRP tensors and container overhead are read in full and come off the budget first; the
    rest is shared by the SuRP streams in proportion to their sizes.
    """
    from . import reader

    size = os.path.getsize(path)
    with reader.open(path) as r:
        surp = 0
        for name in r.keys():
            info = r.info(name)
            if info.alias_of is None and info.codec == "surp":
                surp += info.stored_bytes
    if surp == 0:
        return 1.0
    left = max_bytes - (size - surp)
    return float(min(1.0, max(0.0, left / surp)))


def load_budget(path: str | os.PathLike, max_bytes: int) -> dict[str, np.ndarray]:
    """Load a file reading at most about ``max_bytes``: every SuRP tensor from a prefix of its stream.

    The budget is shared across SuRP tensors in proportion to their stream sizes (each chunk decodes
    its whole segments within ``floor(f * len)`` bytes, ``f`` from :func:`budget_fraction`); other
    tensors are read in full. Built on ``rdformat.open`` iteration.
    """
    from . import reader

    frac = budget_fraction(path, max_bytes)
    with prefix_fraction(frac):
        with reader.open(path) as r:
            return dict(iter(r))


# ---------------------------------------------------------------------------------------------
# iterative SuRP with retraining (PyTorch)
# ---------------------------------------------------------------------------------------------


def iterative_surp(model: Any, train_step: Callable[[Any], Any], *, schedule: Sequence[float] = PAPER_SCHEDULE,
                   steps_per_stage: int = 100, state_dir: str | os.PathLike | None = None,
                   params: SurpParams | None = None, select: Callable[[str, Any], bool] | None = None,
                   optimizer: Any = None, on_stage: Callable[[int, float, Any], Any] | None = None,
                   ) -> list[dict]:
    """Prune with SuRP along ``schedule``, retraining between stages; resumable.

    For each sparsity ``s`` of ``schedule`` (increasing): one-shot SuRP of the selected parameters
    to ``s`` (global statistics; the model's weights become the SuRP reconstruction, zeros exactly
    zero), then ``steps_per_stage`` calls of ``train_step(model)`` (one optimisation step each) with
    the pruned weights held at zero: their gradients are masked and they are re-zeroed after every
    step (momentum or weight decay cannot revive them). Zeros stay zero at the next stage, so masks
    only grow.

    ``params`` default: ``SurpParams(refine_passes=8)``.
    ``state_dir``: after every stage the model (and ``optimizer``) state, the masks and the log are
    saved there; calling again with the same directory resumes after the last finished stage.
    ``on_stage(stage, sparsity, model)`` runs after each stage (e.g. evaluation); its return value
    is logged. Returns the log: one dict per stage.
    """
    import torch  # noqa: PLC0415 - torch only when this function is used

    # Intermediate reconstructions are not stored: refine them well, so retraining starts from
    # (nearly) the kept weights' own values, as in the literal algorithm where a weight enters
    # when the slowly shrinking threshold just passes below it.
    params = params or SurpParams(refine_passes=8)
    sched = [float(s) for s in schedule]
    if any(b <= a for a, b in zip(sched, sched[1:])):
        raise InvalidInputError("schedule must be strictly increasing")
    sel = select or (lambda name, p: p.dtype.is_floating_point and p.dim() >= 2)
    named = {name: p for name, p in model.named_parameters() if sel(name, p)}
    if not named:
        raise InvalidInputError("no parameters selected for SuRP")
    log: list[dict] = []
    start = 0
    state_path = Path(state_dir) if state_dir is not None else None
    masks: dict[str, Any] = {}
    if state_path is not None and (state_path / "progress.json").exists():
        progress = json.loads((state_path / "progress.json").read_text())
        if progress.get("schedule") != sched:
            raise InvalidInputError(f"{state_path} holds a run with another schedule")
        start = int(progress["done"])
        log = list(progress["log"])
        model.load_state_dict(torch.load(state_path / "model.pt", weights_only=True))
        masks = torch.load(state_path / "masks.pt", weights_only=True)
        if optimizer is not None and (state_path / "optimizer.pt").exists():
            optimizer.load_state_dict(torch.load(state_path / "optimizer.pt", weights_only=True))
    hooks = []

    def apply_masks() -> None:
        with torch.no_grad():
            for name, m in masks.items():
                named[name].mul_(m)

    try:
        for name, prm in named.items():
            hooks.append(prm.register_hook(lambda g, name=name: g * masks[name] if name in masks else g))
        apply_masks()
        for stage in range(start, len(sched)):
            s = sched[stage]
            weights = {name: prm.detach().cpu().numpy().astype(np.float32) for name, prm in named.items()}
            res = compress(weights, sparsity=s, params=params)
            dec = res.decode()
            with torch.no_grad():
                for name, prm in named.items():
                    t = torch.from_numpy(np.ascontiguousarray(dec[name])).to(prm.dtype).to(prm.device)
                    prm.copy_(t)
                    masks[name] = (t != 0).to(prm.dtype)
            for _ in range(int(steps_per_stage)):
                train_step(model)
                apply_masks()
            entry = {"stage": stage, "sparsity": s, "bits_per_weight": res.bits_per_weight,
                     "kept": int(sum(int(m.sum().item()) for m in masks.values()))}
            if on_stage is not None:
                entry["metrics"] = on_stage(stage, s, model)
            log.append(entry)
            if state_path is not None:
                state_path.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), state_path / "model.pt")
                torch.save(masks, state_path / "masks.pt")
                if optimizer is not None:
                    torch.save(optimizer.state_dict(), state_path / "optimizer.pt")
                tmp = state_path / "progress.json.tmp"
                tmp.write_text(json.dumps({"schedule": sched, "done": stage + 1, "log": log}, default=_jsonable))
                os.replace(tmp, state_path / "progress.json")
    finally:
        for h in hooks:
            h.remove()
    return log


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if hasattr(x, "item"):
        return x.item()
    return str(x)

