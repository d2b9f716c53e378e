"""Quantizers: float tensors -> integer levels for the ``sq`` codec (the producers of lossy files).

* :func:`quantize_rdo` — uniform dead-zone quantization whose levels are chosen to minimise
  ``distortion + lambda * rate`` under the entropy model the coder will use (iterated with the
  model, since each depends on the other), with reconstruction offsets fitted to the data.
* :func:`quantize_uniform` — plain rounding to the nearest multiple of the step.
* :func:`magnitude_prune` — zero the smallest weights; with :func:`quantize_uniform`, the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codecs.base import Prepared
from ..codecs.sq import MAX_LEVEL, SQCodec, dequantize
from ..errors import InvalidInputError
from ..format.dtypes import is_float

#: Lagrangian slope in units of step**2 per bit. High-rate theory gives 2 ln2 / 12 = 0.1155 for MSE;
#: the benchmark sweep on Laplacian and MTCNN weights found this value as good or better at all rates.
DEFAULT_LAMBDA = 0.12


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer levels plus the rule that turns them back into floats."""

    levels: np.ndarray  # int32, same shape as the source tensor
    step: float
    offset1: float
    offset2: float
    dtype: np.dtype  # float dtype of the source tensor

    def dequantize(self) -> np.ndarray:
        """The reconstruction a decoder returns (bit-identical to decoding the stored file)."""
        return dequantize(self.levels, self.step, self.offset1, self.offset2, self.dtype).reshape(self.levels.shape)

    @property
    def codec(self) -> SQCodec:
        """The configured codec that stores these levels."""
        return SQCodec(self.step, self.offset1, self.offset2)

    def prepared(self, stats: dict | None = None) -> Prepared:
        """What :meth:`rdformat.Writer.add` takes to store this tensor."""
        codec = SQCodec(self.step, self.offset1, self.offset2, stats)
        return Prepared(codec, self.levels.reshape(-1), np.dtype(self.dtype), tuple(self.levels.shape))

    @property
    def sparsity(self) -> float:
        """Fraction of zero levels."""
        return float(np.count_nonzero(self.levels == 0) / max(1, self.levels.size))


def _check_float(x: np.ndarray, what: str = "tensor") -> np.ndarray:
    arr = np.asarray(x)
    if not is_float(arr.dtype):
        raise InvalidInputError(f"{what}: lossy quantization needs a float tensor, got {arr.dtype}")
    a32 = arr.astype(np.float64 if arr.dtype == np.float64 else np.float32, copy=False)
    if not np.all(np.isfinite(a32)):
        raise InvalidInputError(f"{what}: NaN or inf values cannot be stored by the lossy codec; "
                                "store this tensor losslessly")
    return a32


def _check_step(step: float, amax: float) -> float:
    step = float(step)
    if not np.isfinite(step) or step <= 0:
        raise InvalidInputError(f"step must be a positive finite number, got {step}")
    # Keep every level within the codec's range (a smaller step would be lossless territory anyway).
    step = max(step, amax / (MAX_LEVEL - 1)) if amax > 0 else step
    return float(f"{step:.6g}")  # stored in the header as JSON: a short exact decimal


def quantize_uniform(x: np.ndarray, step: float) -> QuantizedTensor:
    """Round to the nearest multiple of ``step`` (midpoint reconstruction): the baseline quantizer."""
    a = _check_float(x)
    step = _check_step(step, float(np.abs(a).max(initial=0.0)))
    levels = np.rint(a / step).astype(np.int32)
    return QuantizedTensor(levels, step, 0.0, 0.0, np.asarray(x).dtype)


def magnitude_prune(x: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of ``x`` with the ``sparsity`` fraction of smallest-magnitude entries set to zero."""
    a = np.array(x, copy=True)
    k = int(round(sparsity * a.size))
    if k <= 0:
        return a
    flat = a.reshape(-1)
    idx = np.argpartition(np.abs(flat.astype(np.float64)), k - 1)[:k]
    flat[idx] = 0
    return a


def _rates(levels_abs: np.ndarray, nonzero_sign_bits: float = 1.0) -> np.ndarray:
    """Ideal code length in bits of each magnitude (sign included), from the current histogram."""
    hist = np.bincount(levels_abs.reshape(-1), minlength=2).astype(np.float64)
    # Two signed symbols share each nonzero magnitude; smooth so unseen magnitudes stay finite.
    hist = hist + 0.5
    p = hist / hist.sum()
    bits = -np.log2(p)
    bits[1:] += nonzero_sign_bits
    return bits


def level_tables(levels_abs: np.ndarray, top: int, off1: float, off2: float, lam: float,
                 dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Per-level lookup tables of the RDO decision for magnitudes ``0..top`` at least: reconstruction
    (in steps, with the offsets) and rate penalty (``lam`` times the code length under the histogram
    of ``levels_abs``)."""
    bits = _rates(levels_abs)
    if bits.size < top + 1:
        bits = np.concatenate([bits, np.full(top + 1 - bits.size, bits[-1] + 1.0)])
    axis = np.arange(bits.size, dtype=dtype)
    recon = np.where(axis == 1, dtype(1.0 - off1), axis - dtype(off2)).astype(dtype)
    recon[0] = 0.0
    penalty = (dtype(lam) * bits).astype(dtype)
    return recon, penalty


def choose_levels(a: np.ndarray, base: np.ndarray, recon: np.ndarray, penalty: np.ndarray,
                  power: int = 2) -> np.ndarray:
    """The magnitude among {0, ``base``, ``base`` + 1} minimising ``|a - recon|**power + penalty`` for
    magnitudes ``a`` (in steps) with ``base = floor(a)``."""

    def cost(level: np.ndarray) -> np.ndarray:
        err = a - recon[level]
        return (err * err if power == 2 else np.abs(err)) + penalty[level]

    c_lo = cost(base)
    c_hi = cost(base + 1)
    k = base + (c_hi < c_lo)
    np.minimum(c_lo, c_hi, out=c_lo)
    k[(a * a if power == 2 else a) + penalty[0] <= c_lo] = 0
    return k


def _fit_offsets(a: np.ndarray, k: np.ndarray, distortion: str) -> tuple[float, float]:
    """Reconstruction offsets (in steps) minimising the error of the chosen levels."""
    if distortion == "mse":
        # Mean of (k - a) over |q| == 1 and over |q| >= 2, in one pass with bincount.
        cls = np.minimum(k, 2)
        sums = np.bincount(cls, weights=k - a, minlength=3)
        counts = np.bincount(cls, minlength=3)
        means = [sums[i] / counts[i] if counts[i] else 0.0 for i in (1, 2)]
    else:
        means = [float(np.median(k[sel] - a[sel])) if sel.any() else 0.0 for sel in (k == 1, k >= 2)]
    # Four significant digits are plenty and keep the tensor header short.
    return tuple(float(f"{min(max(float(m), 0.0), 0.5):.4g}") for m in means)


def quantize_rdo(
    x: np.ndarray,
    step: float,
    *,
    lam: float = DEFAULT_LAMBDA,
    distortion: str = "mse",
    iterations: int = 3,
) -> QuantizedTensor:
    """Rate-distortion optimised dead-zone quantization.

    Each |x|/step is given the level among {0, floor, floor+1} that minimises
    ``err(level)**p + lam * bits(level)`` (p = 2 for ``"mse"``, 1 for ``"mae"``; err in steps),
    where ``bits`` comes from the histogram of the previous iteration (the coder stores exactly
    such a table per chunk) and reconstructions use the fitted offsets. Zeros stay zero.

    Args:
        x: float tensor (not modified). NaN/inf are refused.
        step: quantization step (> 0); clamped up so that no level exceeds the codec's range.
        lam: Lagrangian slope in units of step**2 (mse) or step (mae) per bit.
        distortion: ``"mse"`` or ``"mae"``.
        iterations: model/decision refinement rounds.
    """
    if distortion not in ("mse", "mae"):
        raise InvalidInputError(f"distortion must be 'mse' or 'mae', got {distortion!r}")
    src = _check_float(x)
    flat = src.reshape(-1)
    amax = float(np.abs(flat).max(initial=0.0))
    step = _check_step(step, amax)
    a = np.abs(flat) / step
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    floor = np.floor(a)
    base = floor.astype(np.int32)
    frac = a - floor
    # Start from a dead-zone quantizer (rounding offset 1/3 below the midpoint), then refine.
    k = base + (frac >= np.float32(0.5 + 1.0 / 6.0))
    off1, off2 = _fit_offsets(a, k, distortion)
    power = 2 if distortion == "mse" else 1
    for _ in range(iterations):
        recon, penalty = level_tables(k, int(base.max(initial=0)) + 2, off1, off2, lam, np.float32)
        k = choose_levels(a, base, recon, penalty, power)
        off1, off2 = _fit_offsets(a, k, distortion)
    levels = np.where(flat < 0, -k, k).astype(np.int32).reshape(np.shape(x))
    return QuantizedTensor(levels, step, off1, off2, np.asarray(x).dtype)
