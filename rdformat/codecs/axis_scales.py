"""Axis scales of the lossy codecs (``sq``, ``dq``; spec 5.6, format 1.4): a step per channel.

One step per tensor spends bits evenly on every weight of it, yet the outputs of a network feel the
channels of one tensor very differently (output channels whose activations feed a sensitive head, input
channels that carry large activations): measured spreads reach 100x within one tensor. A tensor of rank
>= 2 may therefore carry integer exponents ``e0`` (one per index of axis 0) and ``e1`` (one per index of
axis 1); element ``[i, j, ...]`` is the codec's reconstruction multiplied by ``2 ** ((e0[i] + e1[j]) / 4)``.
A separable (row x column) profile costs one byte per channel and captures both the output-channel and
the input-channel structure, whatever way round a framework lays its matrices out.

The multiplication is normative and bit-exact: the chunk's values (already rounded to the tensor's
dtype) are widened to float64, multiplied by ``factor(e0[i] + e1[j])`` and rounded to the dtype again,
where ``factor(e) = ldexp(ROOTS[e mod 4], e div 4)`` (floor division) with the four float64 constants of
:data:`ROOTS` - no ``pow`` whose last bit could differ between platforms.

Stored in the codec configuration as ``scale0`` / ``scale1``: standard base64 of the int8 exponents
(absent = all zero). Every exponent is within +-:data:`MAX_EXPONENT`; a length that differs from the
tensor's axis is a :class:`CorruptDataError`.
"""

from __future__ import annotations

import base64
import binascii
import math

import numpy as np

from ..errors import CorruptDataError, InvalidInputError

#: 2 ** (k / 4) for k = 0..3, correctly rounded float64 (written in hex so no platform's pow is involved).
ROOTS = (1.0, float.fromhex("0x1.306fe0a31b715p+0"), float.fromhex("0x1.6a09e667f3bcdp+0"),
         float.fromhex("0x1.ae89f995ad3adp+0"))
#: Exponents stay within +-64 per axis (a factor of 2**16 either way: far beyond any useful spread).
MAX_EXPONENT = 64
KEYS = ("scale0", "scale1")
#: Elements multiplied per block by :meth:`AxisScales.apply` (bounds its float64 temporaries).
BLOCK_ELEMENTS = 1 << 18


def factor(e: np.ndarray) -> np.ndarray:
    """``2 ** (e / 4)`` for integer exponents, exactly as spec 5.6 defines it (float64)."""
    e = np.asarray(e, dtype=np.int64)
    return np.ldexp(np.asarray(ROOTS)[e % 4], (e // 4).astype(np.int32))


def encode(exponents: np.ndarray) -> str:
    """The configuration string of one axis's exponents."""
    e = np.asarray(exponents)
    if e.ndim != 1 or e.dtype.kind not in "iu" or (e.size and int(np.abs(e).max()) > MAX_EXPONENT):
        raise InvalidInputError(f"axis scale exponents must be a 1-D integer array within +-{MAX_EXPONENT}")
    return base64.b64encode(e.astype(np.int8).tobytes()).decode("ascii")


def decode(text: object, codec_id: str, key: str) -> np.ndarray:
    """The int8 exponents of a configuration string (untrusted: validated here)."""
    if not isinstance(text, str) or not text:
        raise CorruptDataError(f"{codec_id}: {key} must be a non-empty base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CorruptDataError(f"{codec_id}: {key} is not valid base64") from None
    if not raw:
        raise CorruptDataError(f"{codec_id}: {key} holds no exponent")
    e = np.frombuffer(raw, dtype=np.int8)
    if int(np.abs(e.astype(np.int16)).max()) > MAX_EXPONENT:
        raise CorruptDataError(f"{codec_id}: {key} holds an exponent beyond +-{MAX_EXPONENT}")
    return e


class AxisScales:
    """The exponents of one tensor (``None`` for an axis without scales)."""

    def __init__(self, e0: np.ndarray | None = None, e1: np.ndarray | None = None) -> None:
        self.e0 = None if e0 is None or not np.any(e0) else np.asarray(e0, dtype=np.int8)
        self.e1 = None if e1 is None or not np.any(e1) else np.asarray(e1, dtype=np.int8)

    def __bool__(self) -> bool:
        return self.e0 is not None or self.e1 is not None

    def config(self) -> dict:
        """The configuration entries (empty when every exponent is zero)."""
        return {key: encode(e) for key, e in zip(KEYS, (self.e0, self.e1)) if e is not None}

    @classmethod
    def from_config(cls, config: dict, codec_id: str) -> "AxisScales":
        """Read ``scale0`` / ``scale1`` from a codec configuration."""
        e0, e1 = (decode(config[k], codec_id, k) if k in config else None for k in KEYS)
        return cls(e0, e1)

    def check_shape(self, shape: tuple[int, ...], codec_id: str) -> None:
        """Refuse exponents that do not match the tensor's axes (before anything is decoded)."""
        for axis, e in enumerate((self.e0, self.e1)):
            if e is None:
                continue
            if len(shape) < 2:
                raise CorruptDataError(f"{codec_id}: axis scales on a tensor of rank {len(shape)} (needs rank >= 2)")
            if e.size != shape[axis]:
                raise CorruptDataError(f"{codec_id}: {KEYS[axis]} holds {e.size} exponents for axis {axis} of "
                                       f"length {shape[axis]}")

    def exponents(self, shape: tuple[int, ...]) -> np.ndarray:
        """Per-element exponent sums ``e0[i] + e1[j]``, broadcastable to ``shape``."""
        rest = (1,) * (len(shape) - 2)
        total = np.zeros((1, 1) + rest, dtype=np.int64)
        if self.e0 is not None:
            total = total + self.e0.astype(np.int64).reshape((-1, 1) + rest)
        if self.e1 is not None:
            total = total + self.e1.astype(np.int64).reshape((1, -1) + rest)
        return total

    def apply(self, flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The normative multiplication of decoded values (spec 5.6), in place on ``flat`` (returned).

        Done in blocks of rows, so the float64 temporaries stay a few MiB whatever the tensor's size
        (a large tensor must not cost several times its own memory to finish).
        """
        tensor = flat.reshape(shape)
        factors = factor(self.exponents(shape))  # broadcastable: (rows or 1, cols or 1, 1, ...)
        row = max(1, math.prod(shape[1:]))
        step = max(1, BLOCK_ELEMENTS // row)
        for start in range(0, shape[0], step):
            part = tensor[start:start + step]
            f = factors[start:start + step] if factors.shape[0] > 1 else factors
            part[...] = (part.astype(np.float64) * f).astype(flat.dtype)
        return flat

    def divide(self, array: np.ndarray) -> np.ndarray:
        """Encoder side: ``array / factor`` in float64 (what the quantizer sees)."""
        return np.asarray(array, dtype=np.float64) / factor(self.exponents(array.shape))


class AxisScaled:
    """Mixin of the codecs that accept axis scales (they set ``self.scales``, an :class:`AxisScales`)."""

    codec_id: str
    scales: AxisScales

    @property
    def transforms_tensor(self) -> bool:
        """True when the tensor carries axis scales."""
        return bool(self.scales)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse scales that do not match the tensor's axes."""
        self.scales.check_shape(tuple(shape), self.codec_id)

    def finish_tensor(self, flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Apply the axis scales (spec 5.6) to the decoded tensor."""
        return self.scales.apply(flat, tuple(shape)) if self.scales else flat
