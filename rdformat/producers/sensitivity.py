"""Per-tensor output sensitivity by noise injection, framework-free (numpy only).

Rate control (``rdformat.save(..., sensitivity=...)``) minimises ``sum_t s_t * ||dW_t||^2``: the
squared weight error of each tensor weighted by its sensitivity ``s_t``, which is therefore meant
*per element of squared error*. This module measures that weight on a runnable model, so the bits go
where the model's outputs feel them rather than where the weights are large.

Normalisation
-------------
Let ``y_o`` be the model's float outputs on the calibration inputs (all inputs of one call of ``run``
concatenated) and define the *relative output error* of a modified model as::

    err^2 = mean_o ||y'_o - y_o||^2 / ||y_o||^2          (one term per float output o)

so every output head counts equally whatever its scale (a box regressor and a softmax side by side).
For a weight error ``dW_t`` that looks like white noise (quantisation error does), linearising the
model gives ``E[err^2] = sum_t S_t * ||dW_t||^2`` with::

    S_t = E[ sum_o ||J_{o,t} e||^2 / (|O| ||y_o||^2) ] / E[||e||^2]   for e ~ N(0, sigma_t^2 I)

which is what :func:`estimate_output_sensitivity` returns: the expected squared relative output error
per unit of squared weight error, per element. (Cross terms between tensors vanish in expectation
because independent noises are zero-mean, so the contributions add.) Only ratios between tensors
matter to rate control; the absolute scale is what makes ``sum_t S_t ||dW_t||^2`` a prediction of
``err^2`` (see :func:`predicted_output_error`).

Estimator
---------
Each tensor ``t`` gets Gaussian noise ``e_t`` with ``sigma_t = noise * RMS(t)`` (small: the model stays
in its linear regime, and the noise is relative, so it is meaningful whatever the tensor's scale).
Several tensors are perturbed in the same forward pass: a group of ``G`` tensors is run ``K`` times
(``K`` the power of two above ``G``), tensor ``j`` carrying sign ``H[k, j+1]`` of a Sylvester-Hadamard
matrix in pass ``k``. Because the output change is (to first order) the sum of the tensors' own
changes ``u_t = J_t e_t`` and the sign columns are orthogonal, projecting the ``K`` output changes on
tensor ``j``'s column recovers ``u_t`` *exactly* (not only in expectation, as a scalar regression of
output energies would), however different the tensors' sensitivities are: a tensor 1000x less
sensitive than its neighbour is measured as precisely as the neighbour. The all-ones column is left
unused, so every even-order term of each tensor (``e_t^T H e_t``, the curvature bias of a one-sided
difference) cancels as it does in a central difference; only second-order cross terms of two tensors
of the same group can alias onto a third (they are zero-mean, and the groups are reshuffled every
round, so the aliasing changes between rounds). Cost: ``rounds * T * K / G`` forward passes plus one
reference pass for ``T`` tensors, about ``1.14 * rounds * T`` with the default ``G = 7``, instead of
``2 * rounds * T`` for one-tensor-at-a-time central differences.

Everything is seeded (``seed``): the same inputs give the same sensitivities.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import CalibrationUnavailable, InvalidInputError
from .channels import ChannelSensitivity
from .ratecontrol import plan, quantize

#: ``run(overrides) -> outputs``: runs the model with the tensors named in ``overrides`` replaced by
#: the given arrays (all other tensors at their original values) and returns the model's outputs.
RunFn = Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]

DEFAULT_NOISE = 0.02
DEFAULT_ROUNDS = 2
DEFAULT_GROUP = 7
#: Sensitivities are floored at this fraction of the largest one: a tensor measured as (nearly)
#: irrelevant would otherwise get an unbounded step, and a measurement that small is noise anyway.
DEFAULT_FLOOR = 1e-6


def float_outputs(outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The floating-point outputs, as float64 arrays (labels, indices and masks carry no gradient)."""
    out = []
    for o in outputs:
        a = np.asarray(o)
        if a.dtype.kind == "f" or a.dtype.name in ("bfloat16",) or a.dtype.name.startswith("float8"):
            out.append(a.astype(np.float64, copy=False))
        elif a.dtype.kind == "c":
            out.append(np.abs(a).astype(np.float64))
    return out


def _finite_reference(reference: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """The reference float outputs with their non-finite entries zeroed, and per output the mask of its
    finite entries (None: all finite).

    A model may give inf or NaN at some positions of its outputs (a log-mel front end on synthetic
    inputs that are negative, a fully masked attention row); those positions say nothing about any
    weight, and one NaN there made every figure NaN. Only positions finite in the reference count.
    """
    masks = [None if bool(np.isfinite(y).all()) else np.isfinite(y) for y in reference]
    return _on_finite(reference, masks), masks


def _on_finite(outputs: Sequence[np.ndarray], masks: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """``outputs`` with the positions that are not finite in the reference (``masks``) zeroed."""
    return [y if m is None or np.shape(y) != m.shape else np.where(m, y, 0.0) for y, m in zip(outputs, masks)]


def _output_weights(reference: Sequence[np.ndarray]) -> list[float]:
    """Weight of each output's squared change in ``err^2``: ``1 / (|O| * ||y_o||^2)``.

    An output that is identically zero has no scale of its own; it is weighted per element like the
    mean of the others instead of being dropped (a change there is still a change).
    """
    energies = [float(np.vdot(y, y).real) for y in reference]
    sizes = [max(y.size, 1) for y in reference]
    positive = [e / s for e, s in zip(energies, sizes) if e > 0]
    per_element = (sum(positive) / len(positive)) if positive else 1.0
    n = max(len(reference), 1)
    return [1.0 / (n * (e if e > 0 else per_element * s)) for e, s in zip(energies, sizes)]


def relative_output_error(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """Relative RMS change of a model's outputs: ``sqrt(mean_o ||c_o - r_o||^2 / ||r_o||^2)``.

    ``reference`` and ``candidate`` are the outputs of the original and the modified model on the same
    inputs (same order and shapes); only floating-point outputs count, each output equally. This is
    the quantity :func:`estimate_output_sensitivity` predicts (squared) and the one a
    ``--max-output-error`` target bounds.
    """
    ref = float_outputs(reference)
    cand = float_outputs(candidate)
    if len(ref) != len(cand):
        raise InvalidInputError(f"the runs returned {len(ref)} and {len(cand)} float outputs")
    if not ref:
        raise InvalidInputError("the model has no floating-point output to compare")
    for r, c in zip(ref, cand):
        if r.shape != c.shape:
            raise InvalidInputError(f"output shapes differ between the runs: {r.shape} vs {c.shape}")
    ref, masks = _finite_reference(ref)
    cand = _on_finite(cand, masks)
    total = 0.0
    for w, r, c in zip(_output_weights(ref), ref, cand):
        d = c - r
        total += w * float(np.vdot(d, d).real)
    # a candidate that is not finite where the reference is: as far from it as can be
    return math.sqrt(total) if math.isfinite(total) else math.inf


def predicted_output_error(sensitivity: Mapping[str, float], original: Mapping[str, np.ndarray],
                           modified: Mapping[str, np.ndarray]) -> float:
    """The relative output error that ``sensitivity`` predicts for replacing ``original`` by ``modified``.

    ``sqrt(sum_t S_t * ||modified_t - original_t||^2)`` over the tensors present in all three
    mappings: a cheap check of an estimate against :func:`relative_output_error` of a real run.
    """
    total = 0.0
    for name, s in sensitivity.items():
        if name in original and name in modified:
            d = np.asarray(modified[name], np.float64) - np.asarray(original[name], np.float64)
            total += float(s) * float(np.vdot(d, d))
    return math.sqrt(total)


def _hadamard(k: int) -> np.ndarray:
    """Sylvester-Hadamard matrix of order ``k`` (a power of two): orthogonal +-1 columns."""
    h = np.ones((1, 1))
    while h.shape[0] < k:
        h = np.block([[h, h], [h, -h]])
    return h


def default_probe_names(weights: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the tensors rate control quantises: float, two or more dimensions, 16+ elements, finite.

    Probing anything else would cost forward passes for a sensitivity that rate control never uses
    (a tensor holding inf or NaN, e.g. a ``-inf`` attention mask, is always stored losslessly; its noise
    would make every output NaN).
    """
    names = []
    for name, w in weights.items():
        a = np.asarray(w)
        is_float = a.dtype.kind == "f" or a.dtype.name == "bfloat16"
        if is_float and a.ndim >= 2 and a.size >= 16 and bool(np.isfinite(a).all()):
            names.append(name)
    return names


def _noise_scale(w: np.ndarray, noise: float, fallback_rms: float) -> float:
    rms = float(np.sqrt(np.mean(np.square(w, dtype=np.float64)))) if w.size else 0.0
    # An all-zero tensor has no scale of its own; borrow the typical one so it still gets probed.
    return noise * (rms if rms > 0 else fallback_rms)


def estimate_output_sensitivity(
    weights: Mapping[str, np.ndarray],
    run: RunFn,
    names: Sequence[str] | None = None,
    *,
    noise: float = DEFAULT_NOISE,
    seed: int = 0,
    rounds: int = DEFAULT_ROUNDS,
    group: int = DEFAULT_GROUP,
    floor: float = DEFAULT_FLOOR,
    reference: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """Per-tensor output sensitivity (squared relative output error per unit squared weight error).

    Args:
        weights: the model's tensors by name (numpy arrays; only those in ``names`` are perturbed).
        run: ``run(overrides) -> outputs``; runs the model on the calibration inputs with the named
            tensors replaced and returns its outputs (same order and shapes every call).
        names: tensors to probe; default: :func:`default_probe_names` (those rate control quantises).
        noise: perturbation as a fraction of each tensor's RMS (small keeps the model linear).
        seed: seeds the noise and the grouping; equal inputs and seed give equal results.
        rounds: independent noise draws per tensor (each round reshuffles the groups).
        group: tensors perturbed together (Hadamard sign design, see the module docstring); 1 gives
            one-tensor-at-a-time central differences.
        floor: results are at least ``floor * max(result)`` (rate control needs positive values).
        reference: the outputs of ``run({})`` if the caller already has them (saves one pass).

    Returns:
        ``{name: S_t}`` with ``sum_t S_t * ||dW_t||^2`` approximating the squared relative output
        error (see :func:`relative_output_error`) for white-noise-like weight errors ``dW_t``.
        Outputs are compared where the reference is finite. A tensor that cannot be measured (its noise
        overflows its dtype, e.g. a ``finfo.min`` mask, or makes finite outputs inf/NaN, or changes
        nothing while some reference outputs are not finite) gets the largest figure measured: rate
        control then treats it as the most sensitive tensor.

    Raises:
        InvalidInputError: unknown or non-float names, or bad parameters.
        CalibrationUnavailable: the model has no float output, or no probed tensor measurably changes
            its finite entries (callers fall back to weight-error allocation).
    """
    if not (noise > 0 and math.isfinite(noise)):
        raise InvalidInputError(f"noise must be a positive fraction of the tensors' RMS, got {noise!r}")
    if rounds < 1 or group < 1:
        raise InvalidInputError(f"rounds and group must be at least 1, got rounds={rounds}, group={group}")
    names = list(default_probe_names(weights) if names is None else names)
    for name in names:
        if name not in weights:
            raise InvalidInputError(f"no tensor named {name!r} to probe")
        kind = np.asarray(weights[name]).dtype
        if not (kind.kind == "f" or kind.name == "bfloat16"):
            raise InvalidInputError(f"tensor {name!r} is {kind}, only float tensors can be probed")
    if not names:
        return {}

    ref = float_outputs(run({}) if reference is None else reference)
    if not ref:
        raise CalibrationUnavailable("the model has no floating-point output to measure sensitivity on")
    ref, masks = _finite_reference(ref)
    out_w = _output_weights(ref)

    originals = {n: np.asarray(weights[n]) for n in names}
    rms_all = [float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) for a in originals.values() if a.size]
    fallback_rms = max([r for r in rms_all if r > 0], default=1.0)
    sigmas = {n: _noise_scale(originals[n], noise, fallback_rms) for n in names}

    rng = np.random.default_rng(seed)
    totals = dict.fromkeys(names, 0.0)
    unmeasurable: set[str] = set()
    for _ in range(rounds):
        order = [names[i] for i in rng.permutation(len(names))]
        for start in range(0, len(order), group):
            members = order[start:start + group]
            k = 1 << math.ceil(math.log2(len(members) + 1))
            signs = _hadamard(k)[:, 1:len(members) + 1]  # skip the all-ones column: even terms cancel
            deltas: dict[str, np.ndarray] = {}
            for n in members:
                w = originals[n]
                e = rng.standard_normal(w.shape) * sigmas[n]
                # The perturbation actually applied after rounding to the tensor's dtype (float16
                # weights round a 2% noise noticeably): measure with what the model really saw.
                plus = (w.astype(np.float64) + e).astype(w.dtype)
                deltas[n] = plus.astype(np.float64) - w.astype(np.float64)
                minus = (w.astype(np.float64) - deltas[n]).astype(w.dtype)
                if not (np.isfinite(plus).all() and np.isfinite(minus).all()):
                    # beyond the dtype's range: an inf in one pass would poison the group's every figure
                    deltas[n] = np.zeros(w.shape)
                    unmeasurable.add(n)
            projections = {n: [np.zeros_like(y) for y in ref] for n in members}
            for row in range(k):
                overrides = {n: (originals[n].astype(np.float64) + signs[row, j] * deltas[n]).astype(originals[n].dtype)
                             for j, n in enumerate(members)}
                outs = float_outputs(run(overrides))
                if len(outs) != len(ref):
                    raise InvalidInputError("the model returned a different number of outputs between runs")
                outs = _on_finite(outs, masks)
                for j, n in enumerate(members):
                    s = signs[row, j] / k
                    for acc, y, y0 in zip(projections[n], outs, ref):
                        acc += s * (y - y0)
            for n in members:
                energy = sum(w_o * float(np.vdot(p, p).real) for w_o, p in zip(out_w, projections[n]))
                applied = float(np.vdot(deltas[n], deltas[n]))
                totals[n] += energy / applied if applied > 0 else 0.0
    result = {n: totals[n] / rounds for n in names}
    if any(m is not None for m in masks):
        # no effect where the reference is finite may be an effect hidden where it is not (a weight behind
        # a log of negative synthetic inputs): unknown, not irrelevant (the floor would zero it)
        unmeasurable.update(n for n, v in result.items() if v == 0)
    measured = [v for n, v in result.items() if n not in unmeasurable and math.isfinite(v)]
    top = max(measured, default=0.0)
    if not top > 0:
        raise CalibrationUnavailable("no probed tensor measurably changes the model's finite outputs")
    lowest = top * floor
    return {n: top if n in unmeasurable or not math.isfinite(v) else max(v, lowest) for n, v in result.items()}


#: ``squared_error(overrides) -> err^2``: the squared relative output error (see
#: :func:`relative_output_error`) of the model run with the tensors in ``overrides`` replaced.
SquaredErrorFn = Callable[[Mapping[str, np.ndarray]], float]

#: Re-plans of :func:`refine_sensitivity` by default (each: one plan, one quantization, one pass per tensor).
DEFAULT_REFINE_ITERATIONS = 2


def quantization_sensitivity(
    weights: Mapping[str, np.ndarray],
    quantized: Mapping[str, np.ndarray],
    squared_error: SquaredErrorFn,
    *,
    floor: float = DEFAULT_FLOOR,
) -> dict[str, float]:
    """Sensitivity measured with each tensor's *actual* quantization error, one tensor at a time.

    For every name in ``quantized``: run the model with that tensor replaced by its quantized version
    (all others original) and divide the squared relative output error by the squared weight error,
    ``S_t = err^2(W_t -> Q(W_t)) / ||Q(W_t) - W_t||^2``. Unlike the Gaussian estimate this sees the
    error quantization really makes (dead-zone zeros, errors that follow the weights' magnitudes) and
    every order of the model's response to it, at the operating point. Deterministic (no randomness).
    A tensor whose quantization changes nothing keeps no value (absent from the result).
    """
    result: dict[str, float] = {}
    for name, q in quantized.items():
        w = np.asarray(weights[name])
        q = np.asarray(q).astype(w.dtype, copy=False)
        d = q.astype(np.float64) - w.astype(np.float64)
        applied = float(np.vdot(d, d))
        if applied <= 0:
            continue
        e2 = float(squared_error({name: q}))
        if not math.isfinite(e2) or e2 < 0:
            raise InvalidInputError(f"the output error with {name!r} quantized is not a finite number")
        result[name] = e2 / applied
    if result:
        top = max(result.values())
        if top > 0:
            result = {n: max(v, top * floor) for n, v in result.items()}
        else:
            result = {}
    return result


def refine_sensitivity(
    tensors: Mapping[str, np.ndarray],
    sensitivity: Mapping[str, float],
    squared_error: SquaredErrorFn,
    *,
    lossy: Sequence[str],
    iterations: int = DEFAULT_REFINE_ITERATIONS,
    method: str = "auto",
    damping: float = 0.5,
    covariance: Mapping[str, Any] | None = None,
    **target: float,
) -> dict[str, float]:
    """Sensitivity re-measured at the operating point of a target: plan, quantize, measure, re-plan.

    The noise-injection estimate assumes that quantization error behaves like small white Gaussian
    noise. At the few bits per weight users ask for it does not quite: dead zones zero whole groups of
    small weights, errors are as large as the weights, and the model's response is no longer linear.
    Each iteration plans the steps for ``target`` (``bits=``, ``rel_error=`` or ``size=``, as
    :func:`rdformat.producers.ratecontrol.plan`) with the current sensitivity, quantizes every tensor
    of ``lossy`` with its planned step, and replaces each tensor's sensitivity by
    :func:`quantization_sensitivity` of that real error; the next plan uses it. Cost per iteration: one
    plan, one quantization of the model and one forward pass per tensor.

    Args:
        tensors: the model's tensors (all of them, as given to ``rdformat.save``).
        sensitivity: the starting estimate (e.g. :func:`estimate_output_sensitivity`).
        squared_error: ``squared_error(overrides) -> err^2`` of the model with ``overrides`` (one
            tensor at a time here), on calibration inputs -- never on the evaluation data.
        lossy: the tensors rate control quantizes (``rdformat.producers.ratecontrol.select_tensors``).
        iterations: re-measurements (1 or more).
        method: quantizer as in ``plan`` (``auto`` lets each plan choose).
        covariance: input covariances of tensors that will be stored with error compensation
            (:mod:`rdformat.producers.compensate`): they are measured with those levels (``sq``).

    Returns:
        ``{name: S_t}`` for the names of ``lossy`` (tensors the quantizer leaves unchanged keep their
        starting value, rescaled to the measured ones), ready for ``rdformat.save(..., sensitivity=)``
        with the same target.
    """
    if iterations < 1:
        raise InvalidInputError(f"iterations must be at least 1, got {iterations}")
    if not 0.0 <= damping < 1.0:
        raise InvalidInputError(f"damping must be in [0, 1), got {damping}")
    names = list(lossy)
    missing = [n for n in names if n not in sensitivity]
    if missing:
        raise InvalidInputError(f"refine_sensitivity needs a starting sensitivity for every lossy tensor; "
                                f"{missing[0]!r} has none")
    sens = {n: float(sensitivity[n]) for n in names}
    comp = {n: c for n, c in (covariance or {}).items() if n in sens}
    if comp:
        from .compensate import quantize_compensated
    for _ in range(iterations):
        rp = plan(tensors, lossy=names, sensitivity=sens, method="sq" if comp else method, covariance=comp or None,
                  **target)
        quantized = {n: (quantize_compensated(np.asarray(tensors[n]), rp.steps[n], comp[n]) if n in comp
                         else quantize(np.asarray(tensors[n]), rp.steps[n], rp.method)).dequantize() for n in names}
        measured = quantization_sensitivity(tensors, quantized, squared_error)
        if not measured:
            break
        # Tensors without a measurement (unchanged by quantization) keep their value relative to the
        # others: scaled by the median ratio of measured to previous values.
        ratio = float(np.median([measured[n] / sens[n] for n in measured]))
        # Geometric damping: the measurement belongs to this plan's steps, and the next plan moves them
        # (a full jump oscillates between over- and under-protected tensors).
        sens = {n: sens[n] ** damping * measured[n] ** (1 - damping) if n in measured
                else sens[n] * ratio ** (1 - damping) for n in names}
    # Channel profiles (within-tensor ratios) are kept; only the tensors' levels were re-measured.
    return {n: ChannelSensitivity(v, sensitivity[n].axis0, sensitivity[n].axis1)
            if isinstance(sensitivity[n], ChannelSensitivity) else v for n, v in sens.items()}


#: Slices perturbed together by :func:`estimate_channel_profiles` (16 passes per group).
DEFAULT_CHANNEL_GROUP = 15
#: Slices measured at most by :func:`estimate_channel_profiles` (about one forward pass each); longer
#: axes are measured in bins of neighbouring indices so the cost stays bounded on large models.
DEFAULT_MAX_SLICES = 4096


def estimate_channel_profiles(
    weights: Mapping[str, np.ndarray],
    run: RunFn,
    names: Sequence[str],
    *,
    noise: float = DEFAULT_NOISE,
    seed: int = 0,
    group: int = DEFAULT_CHANNEL_GROUP,
    max_slices: int = DEFAULT_MAX_SLICES,
    reference: Sequence[np.ndarray] | None = None,
    seconds: float | None = None,
) -> dict[str, tuple[np.ndarray | None, np.ndarray | None]]:
    """How each tensor's output sensitivity varies along its axes 0 and 1 (its channels).

    The estimator of :func:`estimate_output_sensitivity` with *slices* as the probed units: slice ``i``
    of axis 0 (or 1) of a tensor gets its own noise and its own Hadamard sign column, so one group of
    ``group`` slices (of any tensors, overlapping ones included: the output changes still add) costs
    the next power of two of forward passes. Each slice's figure is its mean per-element sensitivity.
    If the tensors' axes hold more than ``max_slices`` slices together, each axis is measured in bins
    of neighbouring indices (all indices of a bin share its figure).

    ``seconds``: a wall-clock budget; tensors are measured largest first, and those not finished when
    it runs out get no profile (their channels keep one step).

    Outputs are compared where the reference is finite; a slice whose noise gives no finite figure
    (it overflows the dtype or makes those outputs inf/NaN) leaves its tensor without a profile.

    Returns:
        ``{name: (axis0 profile or None, axis1 profile or None)}`` for tensors of rank >= 2 (an axis of
        length 1 has no profile); only ratios within a profile are meaningful.
    """
    started = time.perf_counter()
    if group < 1 or max_slices < 2:
        raise InvalidInputError(f"group and max_slices must be positive, got group={group}, max_slices={max_slices}")
    tensors = {n: np.asarray(weights[n]) for n in names if np.asarray(weights[n]).ndim >= 2}
    axes = [(n, axis, tensors[n].shape[axis]) for n in tensors for axis in (0, 1) if tensors[n].shape[axis] > 1]
    if not axes:
        return {}
    total = sum(length for _n, _a, length in axes)
    ratio = min(1.0, max_slices / total)
    units = []  # (name, axis, bin); the bins of one axis are consecutive, from first_unit[(name, axis)]
    bins_of, first_unit = {}, {}
    for n, axis, length in axes:
        bins = length if ratio >= 1 else max(2, int(length * ratio))
        bins_of[(n, axis)] = (bins, np.arange(length) * bins // length)
        first_unit[(n, axis)] = len(units)
        units.extend((n, axis, b) for b in range(bins))
    ref = float_outputs(run({}) if reference is None else reference)
    if not ref:
        raise CalibrationUnavailable("the model has no floating-point output to measure sensitivity on")
    ref, masks = _finite_reference(ref)
    out_w = _output_weights(ref)
    rms_all = [float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))) for a in tensors.values() if a.size]
    fallback_rms = max([r for r in rms_all if r > 0], default=1.0)
    rng = np.random.default_rng(seed)
    values = np.zeros(len(units))
    # Groups hold the slices of one tensor where possible (random order within it): a pass then rebuilds
    # one tensor, not fifteen, which on large models costs more than the forward pass itself.
    position = {n: i for i, n in enumerate(sorted(tensors, key=lambda n: -tensors[n].size))}  # largest first
    shuffle = rng.permutation(len(units))
    order = sorted(range(len(units)), key=lambda u: (position[units[u][0]], shuffle[u]))
    wide: dict[str, np.ndarray] = {}
    measured = np.zeros(len(units), dtype=bool)
    for start in range(0, len(order), group):
        if seconds is not None and time.perf_counter() - started > seconds:
            break
        members = order[start:start + group]
        k = 1 << math.ceil(math.log2(len(members) + 1))
        signs = _hadamard(k)[:, 1:len(members) + 1]
        deltas = []  # (tensor name, slice index, perturbation of the slice's elements)
        for u in members:
            n, axis, b = units[u]
            w = tensors[n]
            sigma = _noise_scale(w, noise, fallback_rms)
            mask = bins_of[(n, axis)][1] == b
            index = (mask,) if axis == 0 else (slice(None), mask)
            part = w[index].astype(np.float64)
            # Random signs of a fixed size, not Gaussian noise: every element then weighs the same in
            # the slice's figure (a Gaussian draw lets a few elements dominate a short slice).
            plus = (part + (rng.integers(0, 2, part.shape) * 2.0 - 1.0) * sigma).astype(w.dtype)
            deltas.append((n, index, plus.astype(np.float64) - part))
        # float64 copies of this group's tensors, kept from the previous group when it had the same ones
        wide = {n: wide[n] if n in wide else tensors[n].astype(np.float64) for n, _i, _d in deltas}
        projections = [[np.zeros_like(y) for y in ref] for _ in members]
        for row in range(k):
            work = {n: a.copy() for n, a in wide.items()}
            for j, (n, index, d) in enumerate(deltas):
                work[n][index] += signs[row, j] * d
            outs = float_outputs(run({n: a.astype(tensors[n].dtype) for n, a in work.items()}))
            if len(outs) != len(ref):
                raise InvalidInputError("the model returned a different number of outputs between runs")
            outs = _on_finite(outs, masks)
            for j in range(len(members)):
                s = signs[row, j] / k
                for acc, y, y0 in zip(projections[j], outs, ref):
                    acc += s * (y - y0)
        for j, u in enumerate(members):
            energy = sum(w_o * float(np.vdot(p, p).real) for w_o, p in zip(out_w, projections[j]))
            applied = float(np.vdot(deltas[j][2], deltas[j][2]))
            values[u] = energy / applied if applied > 0 else 0.0
            # a slice whose noise overflowed or made the outputs inf/NaN: its tensor gets no profile
            measured[u] = math.isfinite(values[u])
    def span(n: str, axis: int) -> slice:
        first = first_unit[(n, axis)]
        return slice(first, first + bins_of[(n, axis)][0])

    complete = {n for n in tensors if all(measured[span(an, a)].all() for an, a, _l in axes if an == n)}
    result: dict[str, list] = {n: [None, None] for n in complete}
    for (n, axis, _length) in axes:
        if n in complete:
            result[n][axis] = values[span(n, axis)][bins_of[(n, axis)][1]]
    out = {}
    for n, (a0, a1) in result.items():
        if any(p is not None and p.max() > 0 for p in (a0, a1)):
            out[n] = tuple(p if p is not None and p.max() > 0 else None for p in (a0, a1))
    return out


def channel_passes(shapes: Sequence[tuple[int, ...]], *, group: int = DEFAULT_CHANNEL_GROUP,
                   max_slices: int = DEFAULT_MAX_SLICES) -> int:
    """Number of ``run`` calls :func:`estimate_channel_profiles` makes for tensors of these shapes."""
    total = sum(s[a] for s in shapes if len(s) >= 2 for a in (0, 1) if s[a] > 1)
    units = min(total, max(max_slices, 2)) if total else 0
    full, rest = divmod(units, group)
    k = 1 << math.ceil(math.log2(group + 1))
    return full * k + ((1 << math.ceil(math.log2(rest + 1))) if rest else 0)


def budgeted_samples(tensor_count: int, samples: int, pass_seconds: float, seconds: float | None, *,
                     rounds: int = DEFAULT_ROUNDS, group: int = DEFAULT_GROUP) -> tuple[int, int]:
    """``(samples, rounds)`` whose :func:`estimate_output_sensitivity` fits in ``seconds`` of wall time,
    when one forward pass over all ``samples`` takes ``pass_seconds``.

    A pass costs about the same per sample, so the samples kept are the budget's share of them; below
    one sample, noise rounds go (never below one of each). ``seconds=None``: no limit.
    """
    cost = forward_passes(tensor_count, rounds=rounds, group=group) * pass_seconds
    if seconds is None or cost <= seconds:
        return samples, rounds
    keep = int(samples * seconds / cost)
    if keep >= 1:
        return keep, rounds
    return 1, max(1, min(rounds, int(rounds * seconds * max(samples, 1) / cost)))


def forward_passes(tensor_count: int, *, rounds: int = DEFAULT_ROUNDS, group: int = DEFAULT_GROUP) -> int:
    """Number of ``run`` calls :func:`estimate_output_sensitivity` makes for ``tensor_count`` tensors."""
    passes = 1
    full, rest = divmod(tensor_count, group)
    for members, count in ((group, full), (rest, 1 if rest else 0)):
        passes += rounds * count * (1 << math.ceil(math.log2(members + 1))) if count else 0
    return passes


__all__ = [
    "RunFn",
    "estimate_output_sensitivity",
    "estimate_channel_profiles",
    "channel_passes",
    "relative_output_error",
    "predicted_output_error",
    "default_probe_names",
    "float_outputs",
    "forward_passes",
    "budgeted_samples",
    "quantization_sensitivity",
    "refine_sensitivity",
]
