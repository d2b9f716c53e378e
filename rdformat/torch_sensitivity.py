"""Output sensitivity of a live PyTorch module by noise injection (encoder side, torch imported lazily).

Same estimator and normalisation as :mod:`rdformat.producers.sensitivity` (squared relative output
error per unit of squared weight error, per element); this module only supplies the ``run`` callback:
parameters are overwritten in place under ``torch.no_grad()`` for a forward pass and restored
bit for bit afterwards, whatever happens (the module is never left modified, even on exceptions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidInputError
from .producers.sensitivity import (DEFAULT_GROUP, DEFAULT_NOISE, DEFAULT_ROUNDS, default_probe_names,
                                    estimate_output_sensitivity, relative_output_error)

if TYPE_CHECKING:  # annotations only: torch is imported inside the functions
    import torch


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
) -> dict[str, float]:
    """Per-parameter output sensitivity of ``module`` on ``inputs``, for ``rdformat.save(sensitivity=)``.

    Args:
        module: the model; run in eval mode (its training flag is restored afterwards).
        inputs: one batch (a tensor; a tuple of positional arguments; a dict of keyword arguments)
            or a list of such batches. Random normal inputs of the right shape work when no data is
            at hand (the estimate needs the model's response, not its accuracy).
        names: parameter names (as in ``state_dict``) to probe; default: float parameters with two
            or more dimensions and 16+ elements (those rate control quantises).
        noise, seed, rounds, group: see :func:`rdformat.producers.sensitivity.estimate_output_sensitivity`.

    Returns:
        ``{parameter name: sensitivity}``: squared relative output error per unit of squared weight
        error, per element (only ratios matter to rate control).

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
        return estimate_output_sensitivity(weights, run, probe, noise=noise, seed=seed, rounds=rounds, group=group)
    finally:
        with torch.no_grad():
            for n, original in saved.items():
                params[n].copy_(original)
        module.train(was_training)


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


__all__ = ["output_sensitivity", "output_error"]
