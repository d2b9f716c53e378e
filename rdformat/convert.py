"""Convert any supported file to ``.rdc`` and back, choosing the adapter by the file's format.

What the ``rdc`` command calls: :func:`compress_file` detects the input's format (content first, then
name) and hands it to its adapter (:mod:`rdformat.torch`, :mod:`rdformat.safetensors`,
:mod:`rdformat.onnx`, :mod:`rdformat.npz`); :func:`decompress_file` picks the output's adapter from
the suffix. A framework that is not installed is a :class:`MissingDependencyError` naming the extra.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from .adapters import FORMATS, Progress, detect_format, format_from_suffix, refuse_input_as_output, require
from .api import Limits
from .errors import InvalidInputError

#: Output suffixes :func:`decompress_file` understands.
DECOMPRESS_SUFFIXES = (".safetensors", ".safetensors.index.json", ".pt", ".pth", ".onnx", ".npz")


def adapter_for(fmt: str) -> ModuleType:
    """The adapter module of a format (its framework imported now, or a clear error)."""
    if fmt == "pytorch":
        require("torch", "torch")
        from . import torch as module
    elif fmt in ("safetensors", "safetensors-index"):
        from . import safetensors as module
    elif fmt == "onnx":
        require("onnx", "onnx")
        from . import onnx as module
    elif fmt == "npz":
        from . import npz as module
    elif fmt == "rdc":
        raise InvalidInputError("the file is already an .rdc container")
    else:
        raise InvalidInputError(f"unknown format {fmt!r}; known: {', '.join(FORMATS[:-1])}")
    return module


def compress_file(src: str | os.PathLike, dst: str | os.PathLike, *, fmt: str | None = None, codec: Any = "lossless",
                  lossy: Any = None, progress: Progress | None = None, **options: Any) -> str:
    """Convert a framework file into an .rdc container; returns the detected source format.

    ``lossy``: a :class:`rdformat.Lossy` or a mapping of its fields (lossless when None). ``options`` go to
    the adapter (e.g. PyTorch's ``key``).
    """
    fmt = fmt or detect_format(src)
    adapter_for(fmt).compress_file(src, dst, codec=codec, lossy=lossy, progress=progress, **options)
    return fmt


def output_format(dst: str | os.PathLike) -> str:
    """The output format named by ``dst``'s suffix (for :func:`decompress_file`)."""
    fmt = format_from_suffix(dst)
    if fmt in (None, "rdc"):
        raise InvalidInputError(f"cannot tell the output format from {Path(dst).name!r}; use one of: "
                                + ", ".join(DECOMPRESS_SUFFIXES))
    return fmt


def decompress_file(src: str | os.PathLike, dst: str | os.PathLike, *, fmt: str | None = None,
                    progress: Progress | None = None, budget: int | None = None, limits: Limits | None = None,
                    **options: Any) -> str:
    """Restore an .rdc container into a framework file chosen by ``dst``'s suffix; returns the format.

    ``budget``: read at most about that many bytes, progressive tensors decoded from a prefix of their
    streams (a coarser model; see ``rdformat.open``). ``limits``: the reader limits (decompression bombs;
    the defaults when None). ``options`` go to the adapter (e.g. ONNX's
    ``external_data``).
    """
    fmt = fmt or output_format(dst)
    if isinstance(src, (str, os.PathLike)):
        refuse_input_as_output(dst, [src], what="decompress")
    adapter_for(fmt).decompress_file(src, dst, progress=progress, budget=budget, limits=limits, **options)
    return fmt


__all__ = ["DECOMPRESS_SUFFIXES", "adapter_for", "compress_file", "decompress_file", "output_format"]
