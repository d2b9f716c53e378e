"""Codecs: one tensor <-> independently decodable chunk payloads (the "array -> bytes" stage).

Each codec is a module with a class that has a stable ``codec_id``, ``get_config``/``from_config``
and chunk encode/decode; :mod:`.registry` maps ids to classes. Importing this package registers
the built-in codecs; third-party codecs plug in through the ``rdformat.codecs`` entry-point group.
"""

from __future__ import annotations

from .base import ChunkPlan, Codec, Prepared
from .registry import codec_from_config, get_codec_class, register_codec, registered_codecs
from . import raw as _raw  # noqa: E402,F401  (each built-in codec registers itself on import)
from . import bytesplit as _bytesplit  # noqa: E402,F401
from . import sq as _sq  # noqa: E402,F401
from . import dq as _dq  # noqa: E402,F401
from . import surp as _surp  # noqa: E402,F401

__all__ = ["ChunkPlan", "Codec", "Prepared", "register_codec", "get_codec_class", "codec_from_config",
           "registered_codecs"]
