"""Rate control across a whole model: one Lagrangian slope shared by every lossy tensor.

With an MSE criterion and entropy-coded uniform quantization, the bit allocation that minimises the
total (sensitivity-weighted) squared error for a given total rate gives every tensor the same slope
``dD/dR``; at moderate and high rates that means the same quantization step in absolute units,
divided by ``sqrt(sensitivity)`` for tensors whose errors cost more (e.g. a detector's output head).
So the whole model is steered by one number, the global step, found by bisection on a
deterministic sample of the weights until the target (bits per weight, relative L2 error, or
file size) is met; the full tensors are then quantized with their steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..codecs.axis_scales import AxisScales, factor
from ..codecs.base import Prepared
from ..errors import InvalidInputError
from ..format.dtypes import is_float, is_quantizable_float
from .quantize import DEFAULT_LAMBDA, quantize_rdo, quantize_uniform
from .trellis import quantize_trellis
from ..codecs.sq import zigzag
from ..entropy import entropy_bits

if TYPE_CHECKING:
    from .compensate import InputCovariance

#: Tensors with fewer elements, or fewer than two dimensions (biases, norms), stay lossless.
DEFAULT_MIN_ELEMENTS = 16
#: Approximate per-tensor container cost in bytes (records, CRCs, header, index entry).
TENSOR_OVERHEAD_BYTES = 140


def non_unit_dims(shape: tuple[int, ...]) -> int:
    """How many dimensions are longer than 1: a ``1xCx1x1`` bias is a vector (1), a ``CxK`` weight a matrix.

    Lossy policies look at this, not at ``ndim``: exporters reshape per-channel vectors to broadcast
    shapes, which must not turn them into matrices that get coarse steps.
    """
    return sum(1 for d in shape if d > 1)


def is_lossy_candidate(array: np.ndarray, *, structural: bool = False, min_elements: int = DEFAULT_MIN_ELEMENTS) -> bool:
    """Whether the default policy quantizes this tensor (float, two or more non-unit dims, large enough, finite)."""
    arr = np.asarray(array)
    if structural or non_unit_dims(arr.shape) < 2 or arr.size < min_elements:
        return False
    if not is_quantizable_float(arr.dtype):
        return False
    return bool(np.all(np.isfinite(arr.astype(np.float32, copy=False))))


#: 1-D float tensors (biases, norm gains) at least this long are quantized finely by default.
FINE_MIN_ELEMENTS = 64
#: Their step: at most this fraction of their RMS (relative error about 0.1%, ~10 bits per value)...
FINE_REL_STEP = 1.0 / 256
#: ...and at most this fraction of the model's global step...
FINE_GLOBAL_FRACTION = 0.25
#: ...unless the largest level would exceed this.
FINE_MAX_LEVEL = 500


def is_fine_candidate(array: np.ndarray, *, structural: bool = False) -> bool:
    """Whether the default policy stores this tensor with a fine step (a float vector: one non-unit dimension,
    long enough, finite)."""
    arr = np.asarray(array)
    if structural or arr.ndim == 0 or non_unit_dims(arr.shape) != 1 or arr.size < FINE_MIN_ELEMENTS:
        return False
    if not is_quantizable_float(arr.dtype):
        return False
    return bool(np.all(np.isfinite(arr.astype(np.float32, copy=False))))


def fine_step(array: np.ndarray, global_step: float) -> float | None:
    """The step of a finely quantized 1-D tensor, or None to keep it lossless (all zero)."""
    a = np.asarray(array, dtype=np.float64)
    rms = float(np.sqrt(np.mean(np.square(a))))
    if rms == 0.0:
        return None
    step = min(rms * FINE_REL_STEP, global_step * FINE_GLOBAL_FRACTION)
    # Levels within +-511 keep the 5-byte parametric model usable (an explicit table of a few hundred
    # distinct levels would cost more than the values).
    return max(step, float(np.max(np.abs(a))) / FINE_MAX_LEVEL)


@dataclass
class RatePlan:
    """Steps chosen for the lossy tensors and what the sample predicted."""

    steps: dict[str, float]
    global_step: float
    predicted_bits_per_weight: float
    predicted_rel_error: float
    lossy_weights: int
    weights: dict[str, float] = field(default_factory=dict)
    method: str = "sq"


def _entropy_bits(levels: np.ndarray) -> float:
    return entropy_bits(zigzag(levels.reshape(-1)))[0]


METHODS = ("sq", "dq")


def quantize(x: np.ndarray, step: float, method: str, lam: float = DEFAULT_LAMBDA, iterations: int = 3):
    """Levels of ``x`` for ``method``: ``sq`` (RDO scalar, slope ``lam``) or ``dq`` (trellis, its own slope)."""
    if method == "dq":
        return quantize_trellis(x, step)  # one round is enough for the trellis (see quantize_trellis)
    return quantize_rdo(x, step, lam=lam, iterations=iterations)


class _Sampled:
    """A deterministic subsample of each lossy tensor, standing in for it during the search."""

    def __init__(self, tensors: Mapping[str, np.ndarray], names: list[str], budget: int, seed: int) -> None:
        total = sum(int(np.asarray(tensors[n]).size) for n in names)
        rng = np.random.default_rng(seed)
        self.items = []
        for name in names:
            flat = np.asarray(tensors[name]).reshape(-1)
            take = min(flat.size, max(4096, int(budget * flat.size / max(total, 1))))
            idx = np.sort(rng.choice(flat.size, size=take, replace=False)) if take < flat.size else slice(None)
            sample = flat[idx].astype(np.float32)
            self.items.append((name, sample, flat.size / sample.size, flat.size))

    def evaluate(self, global_step: float, weights: dict[str, float], lam: float, method: str = "sq",
                 overhead: bool = True, compensated: Mapping[str, tuple] | None = None) -> tuple[float, float]:
        """(total bits, total squared error) predicted for the full tensors.

        ``overhead``: count the entropy tables and ANS lane state (what a file size pays) besides the
        levels' own information; a bits-per-weight target counts the levels only, so that ``bits=4``
        means four bits per quantized weight however small the tensors are. ``compensated``: tensors
        quantized with error compensation instead, as ``{name: (row sample, covariance, scale)}``
        (:func:`_row_sample`; ``sq`` only).
        """
        bits = err = 0.0
        for name, sample, scale, _ in self.items:
            if compensated and name in compensated:
                from .compensate import quantize_compensated

                part, cov, extrapolate = compensated[name]
                q = quantize_compensated(part, global_step * weights[name], cov, lam=lam)
            else:
                part, extrapolate = sample, scale
                q = quantize(sample, global_step * weights[name], method, lam, iterations=2)
            # entropy of the levels, plus ~1% for ANS lanes and ~300 bytes of table per 1M weights
            bits += extrapolate * _entropy_bits(q.levels) * (1.01 if overhead else 1.0)
            if overhead:
                bits += 2400 * math.ceil(scale * sample.size / (1 << 20))
            err += extrapolate * float(np.sum((q.dequantize().astype(np.float64) - part) ** 2))
        return bits, err


def plan(
    tensors: Mapping[str, np.ndarray],
    *,
    bits: float | None = None,
    rel_error: float | None = None,
    size: int | None = None,
    lossy: list[str] | None = None,
    sensitivity: Mapping[str, float] | None = None,
    lossless_bytes: int = 0,
    lam: float = DEFAULT_LAMBDA,
    sample: int = 1 << 19,
    seed: int = 0,
    method: str = "auto",
    covariance: "Mapping[str, InputCovariance] | None" = None,
) -> RatePlan:
    """Choose per-tensor steps meeting exactly one target.

    Args:
        tensors: all tensors of the model (lossless ones count in the relative error's norm).
        bits: target bits per weight over the lossy tensors.
        rel_error: target ``||w - w_hat|| / ||w||`` over all float tensors of the model.
        size: target file size in bytes (``lossless_bytes`` and container overhead are subtracted).
        lossy: names of the tensors to quantize (default: :func:`is_lossy_candidate`).
        sensitivity: optional per-tensor weight of squared error (e.g. mean Fisher information from
            a calibration batch); a tensor with sensitivity s gets step ``global_step / sqrt(s)``.
            Lossy tensors it does not name count as the mean of those it does.
        lossless_bytes: bytes the lossless tensors will take (for ``size``).
        lam: Lagrangian slope of the quantizer (steps**2 per bit).
        sample: number of weights sampled for the search.
        method: ``"sq"`` (scalar RDO quantization), ``"dq"`` (trellis-coded quantization) or
            ``"auto"``: both are planned on the sample and the one predicted to meet the target
            with fewer bits (or less error, for a bits or size target) is kept.
        covariance: input covariances of tensors that will be quantized with error compensation
            (``sq`` only): a bits or size target is then met by the compensated levels, which cost
            more bits at a given step than plain rounding (the search is refined on whole sampled
            rows, which compensation treats independently).
    """
    if method not in METHODS + ("auto",):
        raise InvalidInputError(f"unknown lossy method {method!r}; known: sq, dq, auto")
    targets = [t for t in (bits, rel_error, size) if t is not None]
    if len(targets) != 1:
        raise InvalidInputError("give exactly one of bits, rel_error or size")
    names = list(lossy) if lossy is not None else [n for n, a in tensors.items() if is_lossy_candidate(a)]
    if not names:
        raise InvalidInputError("no tensor qualifies for lossy coding (float, >= 2-D, >= "
                                f"{DEFAULT_MIN_ELEMENTS} elements); store losslessly instead")
    sens = dict(sensitivity or {})
    for n, s in sens.items():
        if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
            raise InvalidInputError(f"sensitivity of {n!r} must be a positive finite number, got {s!r}")
    full = sensitivity_of(names, sens)
    mean_sens = float(np.mean(list(full.values())))
    weights = {n: 1.0 / math.sqrt(full[n] / mean_sens) for n in names}
    n_lossy = sum(int(np.asarray(tensors[n]).size) for n in names)
    norm2 = squared_norm(tensors)
    amaxes = {n: float(np.max(np.abs(np.asarray(tensors[n], dtype=np.float32)), initial=0.0)) for n in names}
    amax = max(amaxes.values())
    if amax == 0.0:
        return RatePlan({n: 1.0 for n in names}, 1.0, 0.0, 0.0, n_lossy, weights, "sq")

    if bits is not None:
        if not (0 < bits <= 16):
            raise InvalidInputError(f"bits per weight must be in (0, 16], got {bits}")
        target_bits = bits * n_lossy
    elif size is not None:
        overhead = TENSOR_OVERHEAD_BYTES * len(tensors) + 200
        budget = size - lossless_bytes - overhead
        if budget <= 0:
            raise InvalidInputError(f"size {size} bytes is too small: the lossless tensors and container "
                                    f"alone need about {lossless_bytes + overhead}")
        target_bits = 8.0 * budget
    else:
        if not (0 < rel_error < 1):
            raise InvalidInputError(f"rel_error must be in (0, 1), got {rel_error}")
        target_err = (rel_error ** 2) * norm2

    sampled = _Sampled(tensors, names, sample, seed)
    candidates = []
    # tiny step: many bits; huge step: ~0 bits -- for every tensor, whatever its sensitivity weight (a
    # bracket of the unweighted step would stop the finest-weighted tensors' steps short of a high target)
    bracket = (math.log(amax / 16000.0 / max(weights.values())), math.log(amax * 4.0 / min(weights.values())))
    # The finest step any tensor can still use (its own levels at the edge of the bracket's range). One
    # tensor of a far wider range than the rest (a causal mask of 0 and finfo.min, stored as a constant)
    # sets ``amax``; when the target is missed even at the bracket's finest step, the search continues
    # below it, where that tensor's step is clamped to its level range (quantize) and the others' fit.
    finest = min((math.log(a / 16000.0 / weights[n]) for n, a in amaxes.items() if a > 0), default=bracket[0])
    for m in (METHODS if method == "auto" else (method,)):
        goal = (target_err if rel_error is not None else None, None if rel_error is not None else target_bits)
        step, b, e = _search(sampled, bracket, weights, lam, m, *goal, overhead=bits is None)
        if _misses(*goal, b, e) and finest < bracket[0] and math.log(step) < bracket[0] + 0.01:
            bracket = (finest, bracket[0] + 0.01)
            step, b, e = _search(sampled, bracket, weights, lam, m, *goal, overhead=bits is None)
        if method == "auto":
            # dq's step at equal fidelity is about half of sq's (its two quantizers interleave): a
            # narrower search saves most of the trellis evaluations.
            bracket = (max(math.log(step / 6.0), bracket[0]), math.log(step * 1.5))
        # rel_error: fewest bits wins; bits / size: least error wins (a method that cannot reach the
        # target at all is ranked by how far it misses).
        key = (e > target_err * 1.02, b) if rel_error is not None else (b > target_bits * 1.02, e)
        candidates.append((key, m, step, b, e))
    _, m, step, b, e = min(candidates)
    comp = {n: c for n, c in (covariance or {}).items() if n in weights}
    if comp and m == "sq" and rel_error is None:
        step, b, e = _search_compensated(tensors, names, comp, sampled, step, weights, lam, target_bits,
                                         overhead=bits is None, budget=sample, seed=seed)
    return RatePlan({n: step * weights[n] for n in names}, step, b / n_lossy, math.sqrt(e / norm2) if norm2 else 0.0,
                    n_lossy, weights, m)


def _search(sampled: _Sampled, bracket: tuple[float, float], weights: dict[str, float], lam: float, method: str,
            target_err: float | None, target_bits: float | None, *, overhead: bool = True) -> tuple[float, float, float]:
    """Bisection on the log of the global step: (step, predicted bits, predicted squared error)."""
    return _bisect(lambda step: sampled.evaluate(step, weights, lam, method, overhead), bracket,
                   lambda b, e: _misses(target_err, target_bits, b, e), 26, 0.004)


def _misses(target_err: float | None, target_bits: float | None, bits: float, err: float) -> bool:
    """Whether predicted ``bits`` and squared error ``err`` fall short of the target (an error over
    ``target_err``, or fewer bits than ``target_bits``: the step must get finer)."""
    return (err > target_err) if target_err is not None else (bits < target_bits)


def sensitivity_of(names: Iterable[str], sensitivity: Mapping[str, float]) -> dict[str, float]:
    """Each tensor's sensitivity as rate control counts it: its own, or for a tensor the mapping lacks (an
    ONNX subgraph's weight, which calibration cannot probe) the mean of the given ones, i.e. the global
    step. The given values have no absolute scale, so a fixed 1.0 made such a tensor up to 100x more or
    less sensitive than the measured tensors beside it."""
    names = list(names)
    given = [sensitivity[n] for n in names if n in sensitivity]
    unknown = float(np.mean(given)) if given else 1.0
    return {n: float(sensitivity.get(n, unknown)) for n in names}


def _bisect(evaluate, bracket: tuple[float, float], too_coarse, steps: int, tolerance: float) -> tuple[float, float, float]:
    """Bisection on a log step: ``evaluate(step) -> (bits, error)``; ``too_coarse(bits, error)`` sends it finer."""
    lo, hi = bracket
    result = None
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        b, e = evaluate(math.exp(mid))
        result = (mid, b, e)
        if too_coarse(b, e):
            hi = mid
        else:
            lo = mid
        if hi - lo < tolerance:
            break
    mid, b, e = result
    return math.exp(mid), b, e


def _row_sample(array: np.ndarray, cov: "InputCovariance", rows: int, rng: np.random.Generator):
    """Whole rows (output units) of ``array``, with the factor that scales them to the tensor:
    compensation treats rows independently, so a row sample predicts the tensor's compensated bits
    and error (the covariance fits the sample as it fits the tensor)."""
    g, r, d = cov.rows(np.shape(array))
    a = np.asarray(array)
    if r <= rows:
        return a, cov, 1.0
    pick = np.sort(rng.choice(r, rows, replace=False))
    sub = a[:, pick] if cov.layout == "in_out" else a.reshape(g, r, d)[:, pick].reshape(g * rows, d)
    return sub, cov, r / rows


def _search_compensated(tensors: Mapping[str, np.ndarray], names: list[str], comp: Mapping[str, "InputCovariance"],
                        sampled: "_Sampled", step: float, weights: dict[str, float], lam: float, target_bits: float,
                        *, overhead: bool, budget: int, seed: int) -> tuple[float, float, float]:
    """Bisection on the global step (around the uncompensated plan's) with compensated tensors
    evaluated on row samples: (step, predicted bits, predicted squared error)."""
    rng = np.random.default_rng(seed + 1)
    total = sum(int(np.asarray(tensors[n]).size) for n in names)
    rows = {}
    for name in comp:
        a = np.asarray(tensors[name])
        g, r, d = comp[name].rows(a.shape)
        want = max(4, int(math.ceil(budget * a.size / max(total, 1) / max(g * d, 1))))
        rows[name] = _row_sample(a, comp[name], min(r, want), rng)
    return _bisect(lambda s: sampled.evaluate(s, weights, lam, "sq", overhead, compensated=rows),
                   (math.log(step / 4.0), math.log(step * 16.0)), lambda b, _e: b < target_bits, 12, 0.01)


def select_tensors(tensors: Mapping[str, np.ndarray], *, structural: Iterable[str] = (),
                   names: Iterable[str] | None = None, fine: bool = True) -> tuple[list[str], set[str]]:
    """Which tensors a lossy save quantizes with the model's slope, and which get a fine step.

    ``names`` overrides the default policy (:func:`is_lossy_candidate`); fine steps
    (:func:`is_fine_candidate`) apply only under the default policy and with ``fine``.
    """
    structural = set(structural)
    if names is None:
        lossy = [n for n, a in tensors.items() if n not in structural and is_lossy_candidate(a)]
    else:
        lossy = list(names)
        for n in lossy:
            if n not in tensors:
                raise InvalidInputError(f"lossy tensor {n!r} is not in the model")
            if n in structural:
                raise InvalidInputError(f"tensor {n!r} is structural and is never stored lossy")
    fine_names: set[str] = set()
    if fine and names is None:
        fine_names = {n for n, a in tensors.items() if n not in structural and is_fine_candidate(a)}
    return lossy, fine_names


@dataclass
class PreparedTensor:
    """A quantized tensor ready for the writer, with its squared error (for the model's figures)."""

    prepared: Prepared
    squared_error: float
    sparsity: float


def prepare_tensor(array: np.ndarray, step: float, method: str, *, fine: bool = False,
                   lam: float = DEFAULT_LAMBDA, scales: AxisScales | None = None,
                   covariance: "InputCovariance | None" = None) -> PreparedTensor:
    """Quantize one tensor with its planned step (``fine``: the uniform fine quantizer of vectors).

    ``scales``: axis scales (spec 5.6): the tensor divided by them is quantized, and the codec
    multiplies them back. ``covariance``: the second moment of the layer's inputs; the ``sq`` levels
    are then chosen to keep the layer's outputs close (:func:`~rdformat.producers.compensate.
    quantize_compensated`). The stored configuration carries the tensor's relative L2 error and
    sparsity (what ``rdc info`` shows), rounded to three digits.
    """
    source = np.asarray(array)
    if covariance is not None and not fine:
        if method != "sq":
            raise InvalidInputError(f"error compensation stores sq levels, not {method}")
        from .compensate import quantize_compensated

        factors = factor(scales.exponents(source.shape)) if scales else None
        q = quantize_compensated(source, step, covariance, lam=lam, scales=factors)
    else:
        if scales:
            source = scales.divide(source).astype(source.dtype)
        q = quantize_uniform(source, step) if fine else quantize(source, step, method, lam)
    decoded = q.dequantize()
    if scales:
        decoded = scales.apply(decoded.reshape(-1), decoded.shape).reshape(decoded.shape)
    a64 = np.asarray(array, dtype=np.float64)
    diff = decoded.astype(np.float64) - a64
    e2 = float(np.sum(diff * diff))
    norm = float(np.sum(a64 * a64))
    stats = {"err": float(f"{math.sqrt(e2 / norm) if norm else 0.0:.3g}"), "sparsity": float(f"{q.sparsity:.3g}")}
    prepared = q.prepared(stats)
    if scales:
        prepared.codec.scales = scales
    return PreparedTensor(prepared, e2, q.sparsity)


def squared_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """Sum of squares of every float tensor (the denominator of the model's relative L2 error)."""
    return sum(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)) for a in tensors.values()
               if is_float(np.asarray(a).dtype))
