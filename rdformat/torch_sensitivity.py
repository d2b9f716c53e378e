"""Output sensitivity of a live PyTorch module by noise injection (encoder side, torch imported lazily).

Same estimator and normalisation as :mod:`rdformat.producers.sensitivity` (squared relative output
error per unit of squared weight error, per element); this module only supplies the ``run`` callback:
parameters are overwritten in place under ``torch.no_grad()`` for a forward pass and restored
bit for bit afterwards, whatever happens (the module is never left modified, even on exceptions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidInputError
from .producers.channels import ChannelSensitivity
from .producers.sensitivity import (DEFAULT_GROUP, DEFAULT_NOISE, DEFAULT_ROUNDS, default_probe_names,
                                    estimate_output_sensitivity, relative_output_error)

#: Random output projections of :func:`channel_profiles` (one backward pass each per batch).
DEFAULT_PROBES = 32

if TYPE_CHECKING:  # annotations only: torch is imported inside the functions
    import torch

    from .producers.compensate import InputCovariance


def _flatten_outputs(out: Any) -> list[np.ndarray]:
    """Tensors of a module's output (a tensor, or tuples/lists/dicts of them), as float64 numpy arrays."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out.detach().to("cpu", torch.float64).numpy()] if out.is_floating_point() else []
    if isinstance(out, Mapping):
        return [a for k in out for a in _flatten_outputs(out[k])]
    if isinstance(out, (list, tuple)):
        return [a for item in out for a in _flatten_outputs(item)]
    return []  # non-tensor extras (None, ints) carry no signal


def _call(module: Any, batch: Any) -> Any:
    """``module(batch)``; a tuple is positional arguments, a dict keyword arguments."""
    if isinstance(batch, tuple):
        return module(*batch)
    if isinstance(batch, Mapping):
        return module(**batch)
    return module(batch)


def _run_batches(module: Any, batches: Sequence[Any]) -> list[np.ndarray]:
    """The module's float outputs on every batch, each output concatenated over the batches."""
    per_batch = [_flatten_outputs(_call(module, b)) for b in batches]
    return [np.concatenate([p[i].reshape(1, *p[i].shape) if p[i].ndim == 0 else p[i] for p in per_batch])
            for i in range(len(per_batch[0]))]


def _batches(inputs: Any) -> list[Any]:
    # A list is several batches; a tensor, tuple (positional args) or dict (kwargs) is one batch.
    return list(inputs) if isinstance(inputs, list) else [inputs]


def output_sensitivity(
    module: "torch.nn.Module",
    inputs: Any,
    *,
    names: Sequence[str] | None = None,
    noise: float = DEFAULT_NOISE,
    seed: int = 0,
    rounds: int = DEFAULT_ROUNDS,
    group: int = DEFAULT_GROUP,
    channels: bool = True,
    probes: int = DEFAULT_PROBES,
) -> dict[str, Any]:
    """Per-parameter output sensitivity of ``module`` on ``inputs``, for ``rdformat.save(sensitivity=)``.

    Args:
        module: the model; run in eval mode (its training flag is restored afterwards).
        inputs: one batch (a tensor; a tuple of positional arguments; a dict of keyword arguments)
            or a list of such batches. Random normal inputs of the right shape work when no data is
            at hand (the estimate needs the model's response, not its accuracy).
        names: parameter names (as in ``state_dict``) to probe; default: float parameters with two
            or more dimensions and 16+ elements (those rate control quantises).
        noise, seed, rounds, group: see :func:`rdformat.producers.sensitivity.estimate_output_sensitivity`.
        channels: also measure each parameter's profile along its first two axes (output and input
            channels) with :func:`channel_profiles`; those parameters then map to a
            :class:`~rdformat.producers.channels.ChannelSensitivity` (mean from noise injection,
            profile from gradients), which gives their channels their own steps.
        probes: random output projections of :func:`channel_profiles`.

    Returns:
        ``{parameter name: sensitivity}``: squared relative output error per unit of squared weight
        error, per element (only ratios matter to rate control); a ``ChannelSensitivity`` for
        profiled parameters (``float()`` of it is the same per-tensor figure).

    The parameters are bit-identical afterwards, also when the forward pass raises.
    """
    import torch

    params = dict(module.named_parameters())
    weights = {n: p.detach().to("cpu", torch.float32 if p.dtype == torch.bfloat16 else p.dtype).numpy().copy()
               for n, p in params.items() if p.is_floating_point()}
    probe = list(default_probe_names(weights) if names is None else names)
    for n in probe:
        if n not in weights:
            raise InvalidInputError(f"{n!r} is not a floating-point parameter of the module")
    batches = _batches(inputs)
    if not batches:
        raise InvalidInputError("output_sensitivity needs at least one input batch")
    saved = {n: params[n].detach().clone() for n in probe}
    was_training = module.training
    touched: set[str] = set()

    def run(overrides: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            for n in touched - set(overrides):  # back to the original before the next pass
                params[n].copy_(saved[n])
            touched.intersection_update(overrides)
            for n, arr in overrides.items():
                params[n].copy_(torch.from_numpy(np.ascontiguousarray(arr)))
                touched.add(n)
            return _run_batches(module, batches)

    module.eval()
    try:
        result: dict[str, Any] = estimate_output_sensitivity(weights, run, probe, noise=noise, seed=seed,
                                                             rounds=rounds, group=group)
    finally:
        with torch.no_grad():
            for n, original in saved.items():
                params[n].copy_(original)
        module.train(was_training)
    if channels:
        try:
            profiles = channel_profiles(module, inputs, [n for n in probe if weights[n].ndim >= 2],
                                        probes=probes, seed=seed)
        except RuntimeError:  # a module that autograd cannot differentiate keeps per-tensor figures
            profiles = {}
        for n, (axis0, axis1) in profiles.items():
            result[n] = ChannelSensitivity(result[n], axis0, axis1)
    return result


def channel_profiles(module: "torch.nn.Module", inputs: Any, names: Sequence[str] | None = None, *,
                     probes: int = DEFAULT_PROBES, seed: int = 0) -> dict[str, tuple[np.ndarray | None, np.ndarray | None]]:
    """How the output sensitivity of each parameter varies along its axes 0 and 1 (channels).

    The per-element sensitivity of the module's relative output error (the normalisation of
    :mod:`rdformat.producers.sensitivity`) is the diagonal of ``J^T W J``; with random Gaussian output
    projections ``v`` (random signs), the squared gradient of ``v . y`` has exactly that expectation (Hutchinson's
    diagonal estimator), so ``probes`` backward passes measure every element at once. Slices are then
    averaged along axis 0 and along axis 1.

    Returns:
        ``{name: (axis0 profile or None, axis1 profile or None)}`` for parameters of rank >= 2
        (an axis of length 1 has no profile). Parameters and their ``.grad`` are left untouched.

    Raises:
        RuntimeError: the outputs do not depend differentiably on the parameters.
    """
    import torch

    params = dict(module.named_parameters())
    chosen = [n for n in (names if names is not None else params) if params[n].is_floating_point()
              and params[n].dim() >= 2]
    if not chosen or probes < 1:
        return {}
    batches = _batches(inputs)
    generator = torch.Generator().manual_seed(seed)
    was_training = module.training
    module.eval()
    flags = {n: p.requires_grad for n, p in params.items()}
    try:
        with torch.no_grad():  # ||y_o||^2 over all batches, as the relative output error defines it
            energies = [[float(y.double().pow(2).sum()) for y in _float_tensors(_call(module, b))] for b in batches]
        count = len(energies[0])
        totals = [sum(e[o] for e in energies) for o in range(count)]
        weights = [1.0 / math.sqrt(max(t, 1e-300)) for t in totals]
        sums = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in chosen}
        for n in chosen:
            params[n].requires_grad_(True)
        with torch.enable_grad():
            for _ in range(probes):
                for b in batches:
                    ys = _float_tensors(_call(module, b))
                    # Rademacher projections: the lowest-variance Hutchinson estimate of the diagonal
                    loss = sum(((torch.randint(0, 2, y.shape, generator=generator) * 2 - 1).to(y.dtype) * y).sum() * w
                               for y, w in zip(ys, weights))
                    grads = torch.autograd.grad(loss, [params[n] for n in chosen], allow_unused=True)
                    for n, g in zip(chosen, grads):
                        if g is not None:
                            sums[n] += g.double() ** 2
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        module.train(was_training)
    out = {}
    for n in chosen:
        diag = (sums[n] / (probes * max(count, 1))).numpy()
        profiles = separable_profiles(diag.reshape(diag.shape[0], diag.shape[1], -1).mean(axis=2))
        if profiles is not None:
            out[n] = profiles
    return out


def separable_profiles(matrix: np.ndarray, floor: float = 1e-6) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """Axis profiles ``a``, ``b`` of the best separable fit ``log m_ij ~ log a_i + log b_j`` (least squares).

    A log-domain fit rather than slice means: per-element estimates are noisy (a scaled chi-square
    each) and a few large ones would dominate an arithmetic mean of their slice. Entries are floored
    at ``floor`` times the largest. ``None`` if the matrix is all zero.
    """
    top = float(matrix.max()) if matrix.size else 0.0
    if not top > 0:
        return None
    logs = np.log(np.maximum(matrix, top * floor))
    row = logs.mean(axis=1)
    col = logs.mean(axis=0) - logs.mean()  # the two-way additive fit (exact for a complete table)
    axis0 = np.exp(row - row.max()) if matrix.shape[0] > 1 else None
    axis1 = np.exp(col - col.max()) if matrix.shape[1] > 1 else None
    return axis0, axis1


def _float_tensors(out: Any) -> list:
    """The floating-point tensors of a module's output (the same walk as :func:`_flatten_outputs`)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, Mapping):
        return [a for k in out for a in _float_tensors(out[k])]
    if isinstance(out, (list, tuple)):
        return [a for item in out for a in _float_tensors(item)]
    return []


def output_error(module: "torch.nn.Module", state_dict: Mapping[str, Any], inputs: Any) -> float:
    """Relative RMS change of ``module``'s outputs on ``inputs`` when its parameters/buffers are
    replaced by ``state_dict`` (numpy arrays or tensors, by name; missing names keep their value).

    The module is restored bit for bit afterwards.
    """
    import torch

    current = module.state_dict()
    saved = {n: current[n].detach().clone() for n in state_dict if n in current}
    unknown = [n for n in state_dict if n not in current]
    if unknown:
        raise InvalidInputError(f"{unknown[0]!r} is not a parameter or buffer of the module")
    batches = _batches(inputs)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            ref = _run_batches(module, batches)
            for n, value in state_dict.items():
                t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
                current[n].copy_(t.to(current[n].dtype))
            new = _run_batches(module, batches)
    finally:
        with torch.no_grad():
            for n, original in saved.items():
                current[n].copy_(original)
        module.train(was_training)
    return relative_output_error(ref, new)


def input_covariances(module: "torch.nn.Module", inputs: Any, *, max_rows: int = 1 << 16,
                      seed: int = 0) -> dict[str, "InputCovariance"]:
    """Second moments of the inputs of every ``Linear`` and ``Conv1d``/``Conv2d`` weight of ``module``
    on ``inputs`` (one batch, or a list of batches), keyed by the weight's ``state_dict`` name: what
    error-compensating quantization (:mod:`rdformat.producers.compensate`) needs.

    Convolution inputs are unfolded into patches (one row per output position); at most ``max_rows``
    rows per batch and layer are kept, sampled with ``seed``. Layers with string padding, non-zero
    padding modes or inputs wider than ``MAX_DIM`` (4096) are skipped (their weights are quantized
    without compensation). The module is run in eval mode under ``torch.no_grad()`` and left as it was.
    """
    import torch
    import torch.nn.functional as F

    from .producers.compensate import MAX_DIM, CovarianceSums

    sums = CovarianceSums(max_rows, np.random.default_rng(seed))
    hooks = []

    def patches(layer: Any, x: "torch.Tensor") -> "torch.Tensor":
        if isinstance(layer, torch.nn.Linear):
            return x.reshape(-1, x.shape[-1]).unsqueeze(0)
        g = layer.groups
        if isinstance(layer, torch.nn.Conv1d):
            x = x.unsqueeze(-2)
            k, d, p, s = (1, *layer.kernel_size), (1, *layer.dilation), (0, *layer.padding), (1, *layer.stride)
        else:
            k, d, p, s = layer.kernel_size, layer.dilation, layer.padding, layer.stride
        cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # (N, C*kh*kw, L), C-major like the weight
        n, dim, length = cols.shape
        return cols.reshape(n, g, dim // g, length).permute(1, 0, 3, 2).reshape(g, n * length, dim // g)

    def hook_for(name: str):
        def hook(layer: Any, args: tuple) -> None:
            sums.add(name, patches(layer, args[0].detach().to(torch.float64)).numpy())
        return hook

    for mod_name, layer in module.named_modules():
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            continue
        if layer.weight[0].numel() > MAX_DIM:  # one output unit's inputs: the width of the covariance
            continue
        if not isinstance(layer, torch.nn.Linear) and (isinstance(layer.padding, str) or layer.padding_mode != "zeros"):
            continue
        hooks.append(layer.register_forward_pre_hook(hook_for(f"{mod_name}.weight" if mod_name else "weight")))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for batch in _batches(inputs):
                _call(module, batch)
    finally:
        for hk in hooks:
            hk.remove()
        module.train(was_training)
    return sums.covariances()


__all__ = ["output_sensitivity", "output_error", "input_covariances"]
