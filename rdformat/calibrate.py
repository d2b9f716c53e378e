"""Task-aware lossy compression for ``rdc compress``: where the per-tensor sensitivity comes from, and
the ``--max-output-error`` target.

Rate control spends bits by weighted squared weight error; the weights are each tensor's output
sensitivity (how much the model's outputs move per unit of squared error in that tensor). This module
decides where that sensitivity comes from, in order: a JSON file the user gives (``--sensitivity``,
written by either estimator), else, for a runnable ONNX model, noise injection through onnxruntime
(:mod:`rdformat.onnx_calibration`) on the user's calibration inputs or synthetic ones; a model that
cannot be run falls back to weight-error allocation with a one-line notice, never an error. The
search for an output-error target runs the compressed model itself.

Encoder-side only: a file's decoding never depends on any of this.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .api import Lossy
from .errors import CalibrationUnavailable, InvalidInputError
from .file.reader import load as _load
from .format.atomic import atomic_output
from .producers.channels import ChannelSensitivity

#: Hugging Face checkpoints larger than this are not run for task-aware allocation: the model is built
#: in float32 next to the file's tensors (about 5x the file in memory for a bfloat16 checkpoint).
HF_MAX_FILE_BYTES = 1 << 30
#: ``--max-output-error`` searches bits per weight in this range (levels only, as ``--bits``).
SEARCH_BITS = (0.5, 16.0)
#: Bisection steps of that search: the bits found are within (16 - 0.5) / 2**9 ~ 0.03 of the best.
SEARCH_STEPS = 9


@dataclass
class TaskAware:
    """The sensitivity chosen for a model and how it was obtained (``notice``: one line for the user)."""

    sensitivity: dict[str, Any] | None
    notice: str
    seconds: float = 0.0
    #: input covariances of the model's layers (error compensation), measured on real calibration inputs
    covariance: dict[str, Any] | None = None


def read_sensitivity_file(path: str | os.PathLike) -> dict[str, Any]:
    """A sensitivity JSON: ``{"tensor name": value, ...}`` (or that mapping under a ``"sensitivity"`` key).

    A value is a positive finite number, or ``{"mean": number, "axis0": [...], "axis1": [...]}`` for a
    tensor with channel profiles (:class:`~rdformat.producers.channels.ChannelSensitivity`); anything
    else is a one-line :class:`InvalidInputError`.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidInputError(f"sensitivity file {path}: cannot read it as JSON ({type(exc).__name__})") from None
    if isinstance(data, dict) and isinstance(data.get("sensitivity"), dict):
        data = data["sensitivity"]
    if not isinstance(data, dict) or not data:
        raise InvalidInputError(f"sensitivity file {path}: expected a JSON object of tensor name -> number")
    out = {}
    for name, value in data.items():
        if isinstance(value, dict):
            try:
                out[str(name)] = ChannelSensitivity.from_json(value, str(name))
            except InvalidInputError as exc:
                raise InvalidInputError(f"sensitivity file {path}: {exc.message}") from None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise InvalidInputError(f"sensitivity file {path}: {name!r} has {value!r}; values must be positive numbers")
        out[str(name)] = float(value)
    return out


def write_sensitivity_file(sensitivity: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a sensitivity mapping as JSON (atomically), for ``rdc compress --sensitivity``."""
    text = json.dumps({"sensitivity": {k: v.to_json() if isinstance(v, ChannelSensitivity) else float(v)
                                       for k, v in sensitivity.items()}}, indent=1)
    with atomic_output(path) as fh:
        fh.write(text.encode("utf-8"))


def parse_input_shapes(items: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """``["x=1x3x224x224", ...]`` -> ``{"x": (1, 3, 224, 224)}`` (``--input-shape``)."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if sep and dims else None
        except ValueError:
            shape = None
        if not name or shape is None or any(d <= 0 for d in shape):
            raise InvalidInputError(f"--input-shape {item!r}: expected NAME=DxDx... with positive sizes, e.g. x=1x3x224x224")
        out[name] = shape
    return out


def _calibration(path: str | os.PathLike | None) -> tuple[Any, str]:
    from .onnx_calibration import load_calibration

    if path is None:
        return None, "synthetic inputs"
    return load_calibration(path), f"calibration inputs from {path}"


def onnx_sensitivity(model_path: str | os.PathLike, *, calibration: str | os.PathLike | None = None,
                     input_shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0,
                     compensate: bool = True) -> TaskAware:
    """Output sensitivity of an ONNX model's float initializers, or a fallback notice when it cannot run.

    With real ``calibration`` inputs and ``compensate``, the input covariances of its MatMul, Gemm and
    Conv layers are measured too (``covariance``: error-compensating quantization); never on
    synthetic inputs, whose activations say nothing about the model's real ones.

    Wrong calibration inputs (names, shapes) are the user's mistake and raise :class:`InvalidInputError`;
    a model that cannot run here (no onnxruntime, custom ops, unknown shapes) gives ``sensitivity=None``
    and a notice.
    """
    try:
        from .onnx_calibration import CalibrationUnavailable, onnx_output_sensitivity
    except ImportError as exc:  # pragma: no cover - the module itself imports nothing heavy
        return TaskAware(None, f"note: task-aware allocation unavailable ({exc}); allocating bits by weight error")
    start = time.perf_counter()
    inputs, source = _calibration(calibration)
    try:
        sens = onnx_output_sensitivity(model_path, inputs, input_shapes=input_shapes, seed=seed)
    except CalibrationUnavailable as exc:
        return TaskAware(None, f"note: the model cannot be run here ({exc.message}); allocating bits by weight error")
    covariance = None
    if compensate and inputs is not None:
        from .onnx_calibration import onnx_input_covariances

        try:
            covariance = onnx_input_covariances(model_path, inputs) or None
        except CalibrationUnavailable:
            covariance = None
    seconds = time.perf_counter() - start
    if not sens:
        return TaskAware(None, "note: no float weight to probe; allocating bits by weight error", seconds)
    profiled = sum(isinstance(v, ChannelSensitivity) for v in sens.values())
    return TaskAware(sens, f"task-aware: output sensitivity of {len(sens)} tensors"
                           + (f" ({profiled} with channel profiles)" if profiled else "")
                           + (f", error compensation for {len(covariance)} layers" if covariance else "")
                           + f" measured with onnxruntime on {source} ({seconds:.1f} s; --no-calibrate turns this off"
                           + (", --no-compensate the compensation)" if covariance else ")"),
                     seconds, covariance)


def hf_sensitivity(weights_path: str | os.PathLike, *, fmt: str = "safetensors", seed: int = 0) -> TaskAware | None:
    """Output sensitivity of a Hugging Face checkpoint (a ``.safetensors`` file, or with ``fmt="pytorch"``
    a ``pytorch_model.bin``, with a ``config.json`` beside it) on synthetic inputs, or a fallback notice;
    None when there is no config to run it by.

    Needs ``transformers`` (and torch); only its built-in architectures are built
    (:mod:`rdformat.hf_calibration`).
    """
    from .hf_calibration import find_config

    config = find_config(weights_path)
    if config is None:
        return None
    size = os.path.getsize(weights_path)
    if size > HF_MAX_FILE_BYTES:
        return TaskAware(None, f"note: {config.name} is here but the model is too large to run for task-aware "
                               f"allocation ({size / 2**30:.1f} GiB of weights, limit {HF_MAX_FILE_BYTES / 2**30:.0f} "
                               "GiB: it would be built in float32 in memory); allocating bits by weight error "
                               "(--sensitivity FILE.json gives a measured one)")
    start = time.perf_counter()
    try:
        from .hf_calibration import hf_output_sensitivity
        from .safetensors_io import read_safetensors

        if fmt == "pytorch":
            from .torch import read_checkpoint, to_numpy

            weights = {k: to_numpy(v, k) for k, v in read_checkpoint(weights_path).items()
                       if hasattr(v, "detach")}
        else:
            weights, _meta = read_safetensors(weights_path)
        sens, arch = hf_output_sensitivity(weights, config, seed=seed)
    except CalibrationUnavailable as exc:
        return TaskAware(None, f"note: {config.name} is here but the model cannot be run ({exc.message}); "
                               "allocating bits by weight error")
    seconds = time.perf_counter() - start
    if not sens:
        return TaskAware(None, "note: no float weight to probe; allocating bits by weight error", seconds)
    return TaskAware(sens, f"task-aware: output sensitivity of {len(sens)} tensors measured by running {arch} "
                           f"({config.name} beside the weights) with transformers on synthetic inputs "
                           f"({seconds:.1f} s; --no-calibrate turns this off)", seconds)


def search_output_error(compress: Callable[[Lossy, Any], Any], evaluate: Callable[[Mapping[str, Any]], float],
                        target: float, base: Lossy) -> tuple[Lossy, float]:
    """The fewest bits per weight whose compressed model keeps the output error within ``target``.

    ``compress(lossy, stream)`` writes a candidate file into ``stream``; ``evaluate(tensors)`` runs the
    model with the decoded tensors and returns its relative RMS output change. Bisection on ``bits``
    (monotone in practice: finer steps, closer outputs); returns the chosen target and its measured
    error. When even the finest setting misses, that setting and its error are returned (the caller
    reports it).
    """
    if not (isinstance(target, (int, float)) and math.isfinite(target) and target > 0):
        raise InvalidInputError(f"--max-output-error must be a positive number, not {target!r}")

    def at(bits: float) -> Lossy:
        return replace(base, bits=bits, rel_error=None, size=None)

    def trial(bits: float) -> float:
        buf = io.BytesIO()
        compress(at(bits), buf)
        return evaluate(_load(buf.getvalue()))

    lo, hi = SEARCH_BITS
    err_hi = trial(hi)
    if err_hi > target:
        return at(hi), err_hi
    best = (hi, err_hi)
    for _ in range(SEARCH_STEPS):
        mid = 0.5 * (lo + hi)
        err = trial(mid)
        if err <= target:
            hi, best = mid, (mid, err)
        else:
            lo = mid
    return at(round(best[0], 4)), best[1]


def onnx_output_error_search(model_path: str | os.PathLike, target: float, base: Lossy, *,
                             calibration: str | os.PathLike | None = None,
                             input_shapes: Mapping[str, Sequence[int]] | None = None) -> tuple[Lossy, float]:
    """:func:`search_output_error` for an ONNX model: one onnxruntime session evaluates every candidate."""
    from . import onnx as rdc_onnx
    from .onnx_calibration import OnnxProbe

    from .onnx_calibration import DEFAULT_MAX_SAMPLES

    inputs, _source = _calibration(calibration)
    # the same sample cap as the sensitivity estimate: the search runs the model a dozen times
    probe = OnnxProbe(model_path, inputs, input_shapes=input_shapes, max_samples=DEFAULT_MAX_SAMPLES)
    return search_output_error(lambda lossy, stream: rdc_onnx.compress_file(model_path, stream, lossy=lossy),
                               probe.output_error, target, base)


__all__ = ["TaskAware", "read_sensitivity_file", "write_sensitivity_file", "parse_input_shapes",
           "onnx_sensitivity", "search_output_error", "onnx_output_error_search"]
