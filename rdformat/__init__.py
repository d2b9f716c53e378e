"""rdformat: small, safe, versioned files for neural-network weights (.rdc).

Core API (numpy in, numpy out; no framework is imported here)::

    import rdformat
    rdformat.save({"w": array}, "model.rdc")          # lossless by default, atomic write
    tensors = rdformat.load("model.rdc")              # dict[str, np.ndarray]
    with rdformat.open("model.rdc") as f:             # streaming or by-name access
        w = f.get_tensor("w")

Framework adapters live in ``rdformat.torch``, ``rdformat.safetensors`` and ``rdformat.onnx``.
"""

from __future__ import annotations

from . import errors
from .errors import (
    ChecksumError,
    CorruptDataError,
    InvalidInputError,
    LimitExceededError,
    NotRdcError,
    RdcError,
    TensorNotFoundError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)
from .codecs import Codec, get_codec_class, register_codec, registered_codecs
from .reader import Limits, RdcReader, TensorInfo, load, open
from .writer import Writer, save

__version__ = "0.2.0"

__all__ = [
    "save",
    "load",
    "open",
    "Writer",
    "RdcReader",
    "TensorInfo",
    "Limits",
    "Codec",
    "register_codec",
    "get_codec_class",
    "registered_codecs",
    "errors",
    "RdcError",
    "NotRdcError",
    "UnsupportedVersionError",
    "TruncatedError",
    "ChecksumError",
    "CorruptDataError",
    "LimitExceededError",
    "UnsupportedFeatureError",
    "TensorNotFoundError",
    "InvalidInputError",
    "__version__",
]
