"""``surp``: the progressive SuRP codec (lossy, embedded; normative text: ``spec/rdc-v1.md`` section 5.5).

The stream format is :mod:`.surp_stream` (encoding side and shared definitions) and
:mod:`.surp_decode`; the pass that chooses what the stream says is a producer
(:mod:`rdformat.producers.surp`), which hands the writer coded chunks (:class:`~.base.Prepared`).
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptDataError, InvalidInputError
from ..format.dtypes import DtypeInfo
from .base import Codec
from .registry import register_codec
from .surp_decode import decode_prefix, decode_stream, segment_ends, segment_passes
from .surp_stream import (
    CLASS_NEW,
    CLASS_REFINE,
    GEOMETRIC_PRECISION,
    MAX_PASSES,
    NSYM,
    Run,
    SurpConfig,
    default_segment_bytes,
    encode_runs,
    geometric_table,
    indices_to_positions,
    permutation_params,
    positions_to_indices,
    run_key,
    thresholds,
)

__all__ = [
    "SurpCodec",
    "Run",
    "thresholds",
    "permutation_params",
    "positions_to_indices",
    "indices_to_positions",
    "encode_runs",
    "decode_prefix",
    "decode_stream",
    "segment_ends",
    "SurpConfig",
    "geometric_table",
    "run_key",
    "default_segment_bytes",
    "MAX_PASSES",
    "CLASS_NEW",
    "CLASS_REFINE",
    "GEOMETRIC_PRECISION",
    "NSYM",
]


# ---------------------------------------------------------------------------------------------
# the codec
# ---------------------------------------------------------------------------------------------


@register_codec
class SurpCodec(Codec):
    """Progressive SuRP codec (lossy): decodes the index streams that :mod:`rdformat.producers.surp` codes.

    The codec holds the decoder's parameters only (:class:`SurpConfig`). Its chunks are coded by the
    producer, which runs the pruning pass over the whole tensor and hands the writer finished chunks
    (``Prepared.chunks``); :meth:`encode_chunk` therefore refuses raw elements.
    """

    codec_id = "surp"
    lossless = False
    progressive = True

    def __init__(self, config: SurpConfig | dict | None = None) -> None:
        self.config = SurpConfig.from_json(config) if isinstance(config, dict) else config

    def get_config(self) -> dict:
        """The decoder parameters (``{}`` for an unconfigured codec)."""
        return self.config.to_json() if self.config is not None else {}

    @classmethod
    def from_config(cls, config: dict) -> "SurpCodec":
        """Rebuild from a tensor header (validated)."""
        return cls(SurpConfig.from_json(config))

    def encode_chunk(self, elements: np.ndarray, dtype: DtypeInfo) -> bytes:
        """Refused: SuRP chunks are coded by the pruning pass (``rdformat.save(..., method="surp")``)."""
        raise InvalidInputError("surp chunks are coded by the SuRP producer: use rdformat.save(..., "
                                "lossy=rdformat.Lossy(method='surp', sparsity=...)) instead of the codec")

    def progressive_segments(self, data: bytes | memoryview, count: int) -> list[tuple[int, float]]:
        """Segment ends, each valued by the threshold of its first pass (normalised units, the scale
        on which the pruning pass itself ranks weights of all tensors against each other)."""
        if self.config is None:
            raise CorruptDataError("surp: missing configuration")
        out = []
        for end, first_pass in segment_passes(data, count):
            out.append((end, float(self.config.t0 * self.config.decay ** first_pass)))
        return out

    def decode_chunk(self, data: memoryview, count: int, dtype: DtypeInfo, *,
                     max_bytes: int | None = None) -> np.ndarray:
        """Decode the chunk, or only its whole segments within the first ``max_bytes`` bytes."""
        if self.config is None:
            raise CorruptDataError("surp: missing configuration")
        if dtype.kind != "float":
            raise CorruptDataError(f"surp: cannot decode into {dtype.name}")
        return decode_prefix(data, count, dtype, self.config, max_bytes)
