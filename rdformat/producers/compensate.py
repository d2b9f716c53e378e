"""Error-compensating quantization (encoder side): keep a layer's *outputs* close, not its weights.

Rounding each weight on its own spreads independent errors that the layer's outputs add up. With the
second moment of the layer's inputs, ``H = E[x x^T]`` over a few calibration inputs, the output error
of a weight row ``w`` quantized to ``q`` is ``(w - q) H (w - q)^T``: quantizing one input column at a
time and folding its error into the columns not yet quantized (the optimal brain surgeon update, as
in GPTQ, Frantar et al. 2022) makes the error of the later columns cancel part of the earlier ones.
The stored levels are ordinary ``sq`` levels; decoding is unchanged and needs no calibration data.

This module is numpy only. The framework adapters measure :class:`InputCovariance` (a live PyTorch
module: :func:`rdformat.torch_sensitivity.input_covariances`), and rate control passes it here
through :func:`rdformat.producers.ratecontrol.prepare_tensor`.

Each column's level is chosen by the same rule as :func:`~rdformat.producers.quantize.quantize_rdo`
(squared error plus ``lam`` times the level's code length under the tensor's own histogram), with
the squared error weighted by what the column's error costs after compensation (the diagonal of the
Cholesky factor of ``H^-1``, with ``H`` normalised to a mean diagonal of one, so that ``H = I`` gives
back plain RDO quantization exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from ..codecs.sq import MAX_LEVEL
from .quantize import DEFAULT_LAMBDA, QuantizedTensor, choose_levels, level_tables, quantize_rdo

#: Ridge added to ``H`` (fraction of its mean diagonal): keeps the factorisation stable when inputs
#: are few or collinear; GPTQ's default.
DEFAULT_DAMPING = 0.01
#: Columns updated together between the rank-``BLOCK`` updates of the rest (speed only).
BLOCK = 128
LAYOUTS = ("out_in", "in_out")
#: Widest layer input the collectors measure (a d x d float64 matrix: 128 MiB at 4096); wider layers are
#: quantized without compensation.
MAX_DIM = 4096


@dataclass(frozen=True)
class InputCovariance:
    """Second moment of the inputs one weight tensor multiplies, for error compensation.

    ``matrix`` has shape ``(groups, d, d)``. ``layout`` says how the weight tensor lines up with it:
    ``"out_in"`` — the tensor reshapes to ``(groups, out / groups, d)`` in C order (PyTorch Linear and
    ConvNd weights, ONNX Conv and ``Gemm`` with ``transB=1``: the trailing axes are the input patch);
    ``"in_out"`` — the tensor is ``(d, out)`` and the layer computes ``x @ W`` (ONNX MatMul, ``Gemm``
    with ``transB=0``; one group). ``samples`` is how many input vectors were averaged.
    """

    matrix: np.ndarray
    layout: str = "out_in"
    samples: int = 0

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix)
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3 or m.shape[1] != m.shape[2] or m.shape[1] == 0:
            raise InvalidInputError(f"an input covariance must be (groups, d, d), got shape {np.shape(self.matrix)}")
        if not np.all(np.isfinite(m)):
            raise InvalidInputError("an input covariance holds NaN or inf")
        if self.layout not in LAYOUTS:
            raise InvalidInputError(f"unknown covariance layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        object.__setattr__(self, "matrix", m.astype(np.float64, copy=False))

    def rows(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``(groups, rows per group, d)`` of a weight of ``shape``, or an error if they do not line up."""
        groups, d = self.matrix.shape[0], self.matrix.shape[1]
        size = int(np.prod(shape))
        if self.layout == "in_out":
            ok = groups == 1 and len(shape) == 2 and shape[0] == d
            rows = shape[1] if ok else 0
        else:
            ok = len(shape) >= 2 and size % (groups * d) == 0 and shape[0] % groups == 0 \
                and size // shape[0] == d
            rows = size // (groups * d) if ok else 0
        if not ok:
            raise InvalidInputError(f"input covariance {tuple(self.matrix.shape)} ({self.layout}) does not fit a "
                                    f"weight of shape {tuple(shape)}")
        return groups, rows, d


class CovarianceSums:
    """Running sums of ``x x^T`` per weight, as the collectors see input rows batch by batch.

    ``add(name, rows, layout)`` takes rows shaped ``(groups, n, d)`` (float64), keeping at most
    ``max_rows`` of them per call (sampled with ``rng``). A weight whose calls disagree on shape or
    layout (one initializer in different layers) is dropped: no single covariance describes it.
    """

    def __init__(self, max_rows: int, rng: np.random.Generator) -> None:
        self.max_rows, self.rng = max_rows, rng
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.layouts: dict[str, str] = {}
        self.dropped: set[str] = set()

    def add(self, name: str, rows: np.ndarray, layout: str = "out_in") -> None:
        """Accumulate one batch of input rows of ``name``'s layer."""
        if name in self.dropped:
            return
        if rows.shape[1] > self.max_rows:
            rows = rows[:, np.sort(self.rng.choice(rows.shape[1], self.max_rows, replace=False))]
        # batched BLAS: numpy's einsum runs this contraction as a plain loop (40x slower on PP-OCR)
        h = np.matmul(rows.transpose(0, 2, 1), rows)
        if name in self.sums and (self.sums[name].shape != h.shape or self.layouts[name] != layout):
            self.dropped.add(name)
            return
        self.sums[name] = self.sums[name] + h if name in self.sums else h
        self.counts[name] = self.counts.get(name, 0) + int(rows.shape[1])
        self.layouts[name] = layout

    def covariances(self) -> dict[str, InputCovariance]:
        """The mean ``x x^T`` of every weight seen (and not dropped)."""
        return {n: InputCovariance(h / self.counts[n], self.layouts[n], self.counts[n])
                for n, h in self.sums.items() if n not in self.dropped and self.counts[n]}


def _as_groups(array: np.ndarray, cov: InputCovariance) -> np.ndarray:
    """The weight as ``(groups, rows, d)`` float64 (a copy: compensation updates it in place)."""
    g, r, d = cov.rows(array.shape)
    a = np.array(array, dtype=np.float64)
    return (a.T if cov.layout == "in_out" else a).reshape(g, r, d)


def _from_groups(levels: np.ndarray, shape: tuple[int, ...], cov: InputCovariance) -> np.ndarray:
    if cov.layout == "in_out":
        return np.ascontiguousarray(levels.reshape(shape[1], shape[0]).T)
    return levels.reshape(shape)


def _inverse_factor(h: np.ndarray, damping: float) -> np.ndarray:
    """Upper Cholesky factor ``U`` of ``H^-1`` (``H`` normalised to mean diagonal 1, damped)."""
    h = np.array(h, dtype=np.float64)
    diag = np.diag(h).copy()
    dead = diag <= 0
    mean = float(diag[~dead].mean()) if np.any(~dead) else 1.0
    h /= mean
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    idx = np.arange(h.shape[0])
    h[idx, idx] += np.where(dead, 1.0, damping)
    for _ in range(6):  # an ill-conditioned H: more ridge until it factorises
        try:
            inv = np.linalg.inv(np.linalg.cholesky(h))
            # H^-1 = L^-T L^-1; its upper Cholesky factor is that of (L^-1)^T L^-1 -> compute directly
            hinv = inv.T @ inv
            return np.linalg.cholesky(hinv).T
        except np.linalg.LinAlgError:
            h[idx, idx] += damping * 10
            damping *= 10
    raise InvalidInputError("input covariance could not be factorised (not positive definite)")


def quantize_compensated(x: np.ndarray, step: float, covariance: InputCovariance, *, lam: float = DEFAULT_LAMBDA,
                         scales: np.ndarray | None = None, damping: float = DEFAULT_DAMPING) -> QuantizedTensor:
    """``sq`` levels of ``x`` with each column's error folded into the columns after it.

    Args:
        x: float weight tensor (not modified), laid out as ``covariance.layout`` says.
        step: quantization step, as for :func:`~rdformat.producers.quantize.quantize_rdo` (which
            also supplies the reconstruction offsets and the rate table, from ``x`` itself).
        covariance: the layer's input second moment.
        lam: Lagrangian slope (steps**2 per bit).
        scales: per-element factors the decoder multiplies the levels' values by (axis scales,
            broadcastable to ``x``); ``x`` is then the *unscaled* tensor and the levels quantize
            ``x / scales``. They must be separable (row factor times column factor), as axis scales are.
        damping: ridge, as a fraction of ``H``'s mean diagonal.
    """
    src = np.asarray(x)
    g, r, d = covariance.rows(src.shape)
    work_src = src if scales is None else (np.asarray(src, np.float64) / scales)
    first = quantize_rdo(work_src, step, lam=lam)  # step clamp, offsets and rate table of the tensor
    step, off1, off2 = first.step, first.offset1, first.offset2
    # compensation can push a weight past the tensor's largest magnitude: tables reach a little beyond
    top = min(int(np.abs(work_src).max(initial=0.0) / step) + 3, MAX_LEVEL)
    recon, penalty = level_tables(np.abs(first.levels), top, off1, off2, lam, np.float64)

    w = _as_groups(work_src, covariance)  # in steps below
    w /= step
    col_scale = None
    if scales is not None:
        full = np.broadcast_to(np.asarray(scales, np.float64), src.shape)
        fg = _as_groups(full, covariance)
        col_scale = fg[:, :1, :] / fg[:, :1, :1]  # separable: column factors relative to column 0
    levels = np.zeros((g, r, d), dtype=np.int32)
    for gi in range(g):
        h = covariance.matrix[gi]
        if col_scale is not None:  # error of the scaled weights: H' = C H C
            c = col_scale[gi, 0]
            h = h * np.outer(c, c)
        # Columns in their natural order, each rounded by the plain RDO rule: weighting a column's
        # rounding by its cost after compensation (1 / U_jj^2) is greedy and measured worse, and
        # GPTQ's "act order" measured no better.
        u = _inverse_factor(h, damping)
        wg = w[gi]
        for start in range(0, d, BLOCK):
            end = min(start + BLOCK, d)
            errs = np.zeros((r, end - start))
            for j in range(start, end):
                col = wg[:, j]
                a = np.abs(col)
                k = choose_levels(a, np.minimum(np.floor(a).astype(np.int64), recon.size - 2), recon, penalty)
                levels[gi, :, j] = np.where(col < 0, -k, k)
                err = (col - np.where(col < 0, -recon[k], recon[k])) / u[j, j]
                errs[:, j - start] = err
                if j + 1 < end:
                    wg[:, j + 1:end] -= np.outer(err, u[j, j + 1:end])
            if end < d:
                wg[:, end:] -= errs @ u[start:end, end:]
    out = _from_groups(levels, src.shape, covariance)
    return QuantizedTensor(out.astype(np.int32), step, off1, off2, src.dtype)


__all__ = ["InputCovariance", "CovarianceSums", "quantize_compensated", "DEFAULT_DAMPING", "MAX_DIM"]
