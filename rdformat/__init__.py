"""rdformat: small, safe, versioned files for neural-network weights (.rdc).

Core API (numpy in, numpy out; no framework is imported here)::

    import rdformat
    rdformat.save({"w": array}, "model.rdc")          # lossless by default, atomic write
    tensors = rdformat.load("model.rdc")              # dict[str, np.ndarray]
    with rdformat.open("model.rdc") as f:             # streaming or by-name access
        w = f.get_tensor("w")

Framework adapters live in ``rdformat.torch``, ``rdformat.safetensors`` and ``rdformat.onnx``.

Layers (each imports only the ones before it; ``tests/test_layers.py`` enforces it): ``errors`` ->
``format`` (wire primitives, records, dtypes, atomic files) -> ``entropy`` -> ``codecs`` ->
``file`` (reader, writer) and ``producers`` (quantizers, rate control, SuRP, sensitivity) -> ``api``
(save/load/open) -> adapters (``torch``, ``safetensors``, ``onnx``, ``surp``, ``contrib``) -> ``cli``.
"""

from __future__ import annotations

from . import errors
from .errors import *  # noqa: F403  (every exception class is part of the top-level API)
from .codecs import Codec, get_codec_class, register_codec, registered_codecs
from .file.reader import Limits, RdcReader, TensorInfo, Truncation, load, open, salvage
from .file.writer import Writer
from .api import Lossy, SaveSummary, save
from ._moved import install as _install_moved_modules

_install_moved_modules()

from ._version import __version__  # noqa: E402

__all__ = [
    "save",
    "Lossy",
    "SaveSummary",
    "load",
    "open",
    "Writer",
    "RdcReader",
    "TensorInfo",
    "Truncation",
    "salvage",
    "Limits",
    "Codec",
    "register_codec",
    "get_codec_class",
    "registered_codecs",
    "errors",
    *errors.__all__,
    "__version__",
]
