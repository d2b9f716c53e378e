"""Per-channel sensitivity and the axis scales it buys (encoder side; spec 5.6 stores the result).

Rate control gives each tensor one step, ``global_step / sqrt(S_t)``. Within one tensor, the outputs
of a network feel the channels very differently: the error of weight ``[i, j]`` of a layer reaches the
outputs through the gain of output channel ``i`` and is scaled by the energy of input channel ``j``, so
its sensitivity is close to separable, ``S_ij ~ S * a_i * b_j``. A :class:`ChannelSensitivity` records
``S`` (the tensor's mean, what rate control weighs tensors by) and the slice means ``a`` (along axis 0)
and ``b`` (along axis 1), whichever estimator measured them (noise injection on ONNX slices,
gradients of a live PyTorch module).

High-rate theory puts the step of element ``[i, j]`` at ``1 / sqrt(S_ij)``; :func:`axis_scales` follows a
fraction ``strength`` of that spread (``step ~ (a_i b_j) ** (-strength / 2)``), because measured profiles
are noisy and most weights sit at low rate where the quantizer's dead zone already adapts: on MTCNN a
strength of 0.7 gave the smallest file at equal output error (0.5 and 1.0 were 4-8% larger). Exponents
are quarter octaves, centred on the geometric mean so the tensor's own step stays representative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..codecs.axis_scales import MAX_EXPONENT, AxisScales, factor
from ..errors import InvalidInputError

#: Fraction of the measured log-spread that the steps follow (see the module docstring).
DEFAULT_STRENGTH = 0.7
#: Profiles are clipped to this ratio either side of their geometric mean before scaling (a slice
#: measured as irrelevant would otherwise get an unbounded step; a measurement that far out is noise).
MAX_SPREAD = 1e4


class ChannelSensitivity(float):
    """A tensor's output sensitivity per element (the float value) and its profile along axes 0 and 1.

    ``axis0[i]`` is the mean sensitivity of slice ``i`` of axis 0 (any positive scale: only ratios are
    used), ``axis1`` likewise; ``None`` for an axis not measured. It *is* a float (the per-tensor
    figure), so a mapping of these works wherever per-tensor sensitivities are expected (rate control,
    comparisons, JSON); only the lossy writer looks at the profiles.
    """

    axis0: np.ndarray | None
    axis1: np.ndarray | None

    def __new__(cls, mean: float, axis0: np.ndarray | None = None,
                axis1: np.ndarray | None = None) -> "ChannelSensitivity":
        if isinstance(mean, bool) or not isinstance(mean, (int, float)) or not math.isfinite(mean) or mean <= 0:
            raise InvalidInputError(f"sensitivity must be a positive finite number, got {mean!r}")
        obj = super().__new__(cls, float(mean))
        for name, profile in (("axis0", axis0), ("axis1", axis1)):
            if profile is not None:
                p = np.asarray(profile, dtype=np.float64).reshape(-1)
                if not p.size or not np.all(np.isfinite(p)) or np.any(p < 0) or not p.max() > 0:
                    raise InvalidInputError(f"sensitivity profile {name} must hold finite non-negative values, "
                                            "not all zero")
                profile = p
            setattr(obj, name, profile)
        return obj

    def __getnewargs__(self) -> tuple:
        return (float(self), self.axis0, self.axis1)

    @property
    def mean(self) -> float:
        """The per-tensor figure (what rate control weighs the tensor by)."""
        return float(self)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n}[{getattr(self, n).size}]" for n in ("axis0", "axis1") if getattr(self, n) is not None)
        return f"ChannelSensitivity({float(self)!r}{', ' + sizes if sizes else ''})"

    def to_json(self) -> dict:
        """JSON form (``rdc compress --sensitivity FILE.json`` reads it back)."""
        out: dict = {"mean": float(self.mean)}
        for name in ("axis0", "axis1"):
            profile = getattr(self, name)
            if profile is not None:
                out[name] = [float(f"{v:.4g}") for v in profile]
        return out

    @classmethod
    def from_json(cls, value: object, name: str = "") -> "ChannelSensitivity":
        """Inverse of :meth:`to_json` (raises InvalidInputError on anything else)."""
        if not isinstance(value, Mapping) or "mean" not in value or set(value) - {"mean", "axis0", "axis1"}:
            raise InvalidInputError(f"sensitivity of {name!r} must be a number or an object with keys mean, "
                                    "axis0, axis1")
        axes = []
        for key in ("axis0", "axis1"):
            v = value.get(key)
            if v is not None and not (isinstance(v, list) and all(isinstance(x, (int, float))
                                                                  and not isinstance(x, bool) for x in v)):
                raise InvalidInputError(f"sensitivity {key} of {name!r} must be a list of numbers")
            axes.append(None if v is None else np.asarray(v, dtype=np.float64))
        mean = value["mean"]
        if isinstance(mean, bool) or not isinstance(mean, (int, float)):
            raise InvalidInputError(f"sensitivity mean of {name!r} must be a number")
        return cls(float(mean), axes[0], axes[1])


def _log_profile(profile: np.ndarray | None, length: int) -> np.ndarray | None:
    """Centred natural log of a profile (geometric mean 0), clipped to +-log(MAX_SPREAD)."""
    if profile is None or length < 2:
        return None
    p = np.asarray(profile, dtype=np.float64)
    if p.size != length:
        raise InvalidInputError(f"sensitivity profile has {p.size} values for an axis of length {length}")
    p = np.maximum(p, p.max() / MAX_SPREAD)
    logs = np.log(p)
    logs -= logs.mean()
    return np.clip(logs, -math.log(MAX_SPREAD), math.log(MAX_SPREAD))


def axis_scales(sensitivity: ChannelSensitivity, shape: tuple[int, ...],
                strength: float = DEFAULT_STRENGTH) -> tuple[AxisScales, float]:
    """The axis scales of one tensor and the per-element sensitivity of the scaled tensor.

    Returns ``(scales, S')``: quantizing ``W / factor`` with step ``global_step / sqrt(S')`` and
    multiplying back gives each channel the step ``strength`` of high-rate theory asks for; ``S'`` is
    ``mean(S_ij * factor_ij ** 2)`` under the separable model (what rate control weighs the tensor by).
    """
    if not 0 <= strength <= 2:
        raise InvalidInputError(f"channel strength must be in [0, 2], got {strength}")
    mean = float(sensitivity.mean)
    if len(shape) < 2 or strength == 0:
        return AxisScales(), mean
    exps, weight = [], mean
    numel = math.prod(shape)
    for axis, profile in ((0, sensitivity.axis0), (1, sensitivity.axis1)):
        logs = _log_profile(profile, shape[axis])
        if logs is None or not _pays(logs, numel, strength):
            exps.append(None)
            continue
        # step ~ S ** (-strength / 2): factor = 2 ** (e / 4) with e = -2 * strength * log2(S / gm)
        e = np.clip(np.round(-2.0 * strength * logs / math.log(2.0)), -MAX_EXPONENT, MAX_EXPONENT).astype(np.int64)
        exps.append(e)
        rel = np.exp(logs)
        weight *= float(np.mean(rel * factor(e) ** 2) / np.mean(rel))
    return AxisScales(*exps), weight


#: Bits a stored exponent costs (base64 of one byte) and the margin its predicted saving must clear.
EXPONENT_BITS = 32 / 3
PAY_MARGIN = 2.0


def _pays(logs: np.ndarray, numel: int, strength: float) -> bool:
    """Whether an axis's scales are worth their bytes: the high-rate saving of following the profile,
    ``0.5 * log2(arithmetic / geometric mean)`` bits per element (``strength`` of the spread followed),
    must exceed :data:`PAY_MARGIN` times what the exponents cost. Small tensors and flat profiles (input
    channels that all carry alike) keep one step."""
    followed = np.exp(strength * logs)  # the part of the profile the steps follow
    saving = numel * 0.5 * math.log2(float(np.mean(followed)) / math.exp(float(np.mean(np.log(followed)))))
    return saving > PAY_MARGIN * EXPONENT_BITS * logs.size


#: Bits per weight below which channel steps are off, and from which they follow ``strength`` fully.
LOW_RATE, HIGH_RATE = 1.0, 3.0


def rate_strength(strength: float, bits_per_weight: float) -> float:
    """``strength`` scaled for the rate the model is quantized at: 0 up to :data:`LOW_RATE` bits per
    weight, rising linearly to the full value at :data:`HIGH_RATE`.

    Per-channel steps rest on high-rate theory (every weight's error is uniform noise of its step). At
    about one bit per weight most weights quantize to zero whatever their step, and coarser steps on
    channels measured as insensitive remove what little of them survives: on the digits CNN at 1
    bit/weight channel steps cost 14% more bytes at equal accuracy, while on MTCNN at 3.7 bits/weight
    they saved 10%.
    """
    ramp = (bits_per_weight - LOW_RATE) / (HIGH_RATE - LOW_RATE)
    return strength * min(1.0, max(0.0, ramp))


def split_sensitivity(sensitivity: Mapping[str, object] | None) -> tuple[dict[str, float], dict[str, ChannelSensitivity]]:
    """Per-tensor floats for rate control, and the entries that carry channel profiles."""
    floats: dict[str, float] = {}
    channels: dict[str, ChannelSensitivity] = {}
    for name, value in (sensitivity or {}).items():
        if isinstance(value, ChannelSensitivity):
            channels[name] = value
            floats[name] = float(value.mean)
        else:
            floats[name] = value  # validated by rate control
    return floats, channels
