"""SuRP planning: parameters, global statistics and the threshold schedule (see :mod:`.surp`).

One pass over the tensors gathers what the schedule needs (per-tensor L2 norms, the mean magnitude
and a fine histogram of log-magnitudes); :func:`plan` then fixes ``t0``, ``decay`` and the number of
passes for a sparsity, bits-per-weight or distortion target, simulating the pass on a sample where
the target is not a quantile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..codecs.surp import default_segment_bytes, thresholds
from ..errors import InvalidInputError
from ..format.dtypes import is_quantizable_float
from .ratecontrol import non_unit_dims

#: The paper's iterative sparsity schedule (each step prunes 20% of what is left, then finer).
PAPER_SCHEDULE: tuple[float, ...] = (0.2, 0.36, 0.488, 0.5904, 0.67232, 0.737856, 0.7903, 0.83224,
                                     0.8658, 0.893, 0.92, 0.94, 0.96, 0.97, 0.98, 0.99)

_HIST_RES = 4096  # histogram bins per octave of log2(u): count error ~1e-4 of N at worst
_HIST_LO = -96  # log2 u below this is lumped into the first bin
_HIST_BINS = (32 - _HIST_LO) * _HIST_RES  # u < 2**32 (u <= 1 with L2 normalisation)
_SAMPLE = 16384  # per-tensor sample for bits / distortion planning and the offset
_OFFSET_GRID = np.linspace(0.0, 0.75, 31)


def is_prunable(array: Any) -> bool:
    """Whether SuRP processes this tensor by default: a non-empty float tensor with two or more non-unit
    dimensions (of two or more bytes per element; vectors and float8 stay out)."""
    arr = np.asarray(array) if not hasattr(array, "dtype") else array
    return bool(is_quantizable_float(arr.dtype) and non_unit_dims(arr.shape) >= 2 and arr.size > 0)


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
    #: Per-tensor factor on the normalised magnitudes (``sqrt`` of relative sensitivity; default 1).
    emphasis: dict[str, float] = field(default_factory=dict)
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
        # A sensitive tensor's magnitudes count for more against the shared thresholds: its norm is
        # divided by its emphasis, so its weights are chosen earlier and refined further.
        norm = (_l2(arr) if self.normalize == "l2" else 1.0) / self.emphasis.get(name, 1.0)
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
                       select: Callable[[str, Any], bool] | None = None, normalize: str = "l2",
                       sensitivity: Mapping[str, float] | None = None) -> Statistics:
    """One pass over the tensors: per-tensor norms and samples, global mean and histogram.

    ``source`` is a mapping (may be lazy), an iterable of ``(name, array)`` pairs, or a callable
    returning a fresh one. ``select(name, array)`` picks the tensors SuRP processes (default
    :func:`is_prunable`); the others are recorded as pass-through. ``normalize``: see
    :class:`SurpParams`. ``sensitivity`` (per element of squared error, as for rate control) gives each
    tensor an emphasis ``sqrt(s / mean s)``: its thresholds are in effect that much finer, the analogue
    of rate control's step ``global_step / sqrt(s)``.
    """
    stats = Statistics(normalize=normalize)
    sel = select or (lambda name, arr: is_prunable(arr))
    if sensitivity:
        values = [float(v) for v in sensitivity.values()]
        if any(not (math.isfinite(v) and v > 0) for v in values):
            raise InvalidInputError("sensitivity values must be positive finite numbers")
        mean = sum(values) / len(values)
        stats.emphasis = {str(k): math.sqrt(float(v) / mean) for k, v in sensitivity.items()}
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
    """A plan from this tensor's own statistics (layer-wise SuRP)."""
    params = replace(params or SurpParams(), **kw)
    stats = Statistics(normalize=params.normalize)
    stats.add("tensor", np.asarray(array))
    return plan(stats, sparsity=sparsity, bits_per_weight=bits_per_weight, distortion=distortion, params=params)


def _first_pass(u: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Index of the first pass whose threshold is below u (``len(T)`` if none): #{p : T[p] >= u}."""
    rev = T[::-1]  # increasing
    return (T.size - np.searchsorted(rev, u, side="left")).astype(np.int32)


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


