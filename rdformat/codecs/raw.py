"""``raw``: elements stored as little-endian bytes, aligned in the file so they can be mapped."""

from __future__ import annotations

import numpy as np

from ..format.dtypes import DtypeInfo
from ..errors import CorruptDataError
from .base import Codec
from .registry import register_codec


@register_codec
class RawCodec(Codec):
    """Stores the elements unchanged (little-endian). The fallback for incompressible data."""

    codec_id = "raw"

    @classmethod
    def from_config(cls, config: dict) -> "RawCodec":
        """Raw takes no parameters."""
        if config:
            raise CorruptDataError(f"raw codec takes no parameters, got {sorted(config)}")
        return cls()

    def encode_chunk(self, elements: np.ndarray, dtype: DtypeInfo) -> bytes:
        """The chunk's bytes as they are."""
        return elements.tobytes()

    def min_data_bytes(self, count: int, dtype: DtypeInfo) -> int:
        """Smallest chunk data that can hold ``count`` elements (the reader's bomb check)."""
        return count * dtype.itemsize

    def decode_chunk(self, data: memoryview, count: int, dtype: DtypeInfo, *,
                     max_bytes: int | None = None) -> np.ndarray:
        """View the bytes as elements (no copy)."""
        if len(data) != count * dtype.itemsize:
            raise CorruptDataError(f"raw chunk holds {len(data)} bytes, expected {count * dtype.itemsize}")
        return np.frombuffer(data, dtype=dtype.numpy.newbyteorder("<"), count=count)
