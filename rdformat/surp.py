"""SuRP, successive-refinement pruning: the user-facing module.

``rdformat.surp.save(tensors, "model.rdc", sparsity=0.9)`` is ``rdformat.save`` with
``lossy=rdformat.Lossy(method="surp", sparsity=0.9)``; ``compress`` runs the pass in memory. The
method, the pass and its planning live in :mod:`rdformat.producers.surp`; the stream format in
:mod:`rdformat.codecs.surp`; the prune-retrain loop in :mod:`rdformat.contrib.iterative_surp`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np

from .api import Lossy, SaveSummary
from .api import save as _save
from .file.reader import RdcReader
from .producers import surp as _producer
from .producers.surp import (  # noqa: F401  (re-exported)
    PAPER_SCHEDULE,
    EncodedTensor,
    Statistics,
    SurpParams,
    SurpPlan,
    SurpResult,
    TensorEncoder,
    collect_statistics,
    compress,
    encode_tensor,
    is_prunable,
    plan,
    plan_tensor,
    surp_runs,
)

__all__ = [*_producer.__all__, "save", "load_budget", "budget_fraction", "iterative_surp"]


def save(source: Mapping[str, Any], target: str | os.PathLike | BinaryIO, *, sparsity: float | None = None,
         bits: float | None = None, distortion: float | None = None, params: SurpParams | None = None,
         workers: int = 1, metadata: Mapping | None = None, chunk_bytes: int | None = None,
         select: Callable[[str, Any], bool] | None = None, aliases: Mapping[str, str] | None = None,
         structural: set[str] | frozenset[str] = frozenset(), bits_per_weight: float | None = None) -> SaveSummary:
    """Write an ``.rdc`` file: SuRP streams for the prunable tensors (or those ``select`` accepts), the
    others lossless. One target: ``sparsity``, ``bits`` (stream bits per weight) or ``distortion``.

    Returns the :class:`~rdformat.api.SaveSummary`; its ``surp`` field holds the :class:`SurpResult`.
    ``bits_per_weight=`` is the deprecated name of ``bits=``.
    """
    if bits_per_weight is not None:
        warnings.warn("rdformat.surp.save(bits_per_weight=) is deprecated; use bits=", DeprecationWarning,
                      stacklevel=2)
        bits = bits_per_weight if bits is None else bits
    spec = Lossy(method="surp", sparsity=sparsity, bits=bits, distortion=distortion, params=params, workers=workers)
    kwargs: dict[str, Any] = {}
    if chunk_bytes is not None:
        kwargs["chunk_bytes"] = chunk_bytes
    return _save(source, target, lossy=spec, metadata=metadata, quantize=select, aliases=aliases,
                 structural=structural, **kwargs)


def budget_fraction(path: str | os.PathLike, max_bytes: int) -> float:
    """Deprecated: the share of every SuRP chunk that ``rdformat.open(path, budget=max_bytes)`` decodes."""
    warnings.warn("rdformat.surp.budget_fraction is deprecated; rdformat.open(path, budget=N) plans budgets",
                  DeprecationWarning, stacklevel=2)
    with RdcReader(path, budget=max_bytes) as reader:
        return float(reader.prefix_fraction if reader.prefix_fraction is not None else 1.0)


def load_budget(path: str | os.PathLike, max_bytes: int) -> dict[str, np.ndarray]:
    """Deprecated: ``dict(rdformat.open(path, budget=max_bytes))``."""
    warnings.warn("rdformat.surp.load_budget is deprecated; use rdformat.open(path, budget=N)", DeprecationWarning,
                  stacklevel=2)
    with RdcReader(path, budget=max_bytes) as reader:
        return dict(iter(reader))


def iterative_surp(*args: Any, **kwargs: Any) -> list[dict]:
    """The paper's prune-retrain schedule on a PyTorch model: see
    :func:`rdformat.contrib.iterative_surp.iterative_surp` (torch is imported there, when called)."""
    from .contrib.iterative_surp import iterative_surp as run

    return run(*args, **kwargs)
