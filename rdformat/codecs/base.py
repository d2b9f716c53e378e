"""The codec interface shared by every codec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator

import numpy as np

from ..format.dtypes import DtypeInfo


def byte_view(data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    """``data`` as a sequence of byte values without copying it (a memoryview is cast to unsigned bytes)."""
    if isinstance(data, (bytes, bytearray)):
        return data
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class Codec:
    """Base class of tensor codecs.

    A codec instance holds the per-tensor configuration that is stored in the tensor header
    (``get_config``) and is rebuilt from it on read (``from_config``). Encoding happens chunk by
    chunk on flat little-endian element arrays; each chunk decodes on its own.
    """

    codec_id: ClassVar[str] = ""
    #: True when decoding returns exactly the encoded elements.
    lossless: ClassVar[bool] = True
    #: True when any whole-segment prefix of a chunk decodes to a coarser tensor (``max_bytes``).
    progressive: ClassVar[bool] = False

    @property
    def chunk_multiple(self) -> int:
        """Chunks must hold a multiple of this many elements (e.g. dq's trellis chains)."""
        return 1

    def min_data_bytes(self, count: int, dtype: DtypeInfo) -> int:
        """The fewest bytes a valid chunk of ``count`` elements can take (readers refuse files that
        cannot hold their declared chunks before allocating outputs)."""
        return 0

    @property
    def transforms_tensor(self) -> bool:
        """True when decoding needs the whole tensor's shape (:meth:`finish_tensor` is not the identity);
        such a configuration cannot share a PACK group with other tensors."""
        return False

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse a configuration that does not fit the tensor's shape (raise CorruptDataError).

        Readers call it before decoding anything of the tensor."""

    def finish_tensor(self, flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor's final flat elements from its decoded chunks (e.g. sq/dq axis scales, spec 5.5)."""
        return flat

    def get_config(self) -> dict:
        """JSON-able parameters a decoder needs (stored in the tensor header)."""
        return {}

    @classmethod
    def from_config(cls, config: dict) -> "Codec":
        """Rebuild a codec from its stored configuration (raise CorruptDataError if invalid)."""
        return cls(**config)

    def for_tensor(self, array: np.ndarray, dtype: DtypeInfo) -> "Codec":
        """The codec configured for one tensor (hook for codecs that adapt to the data)."""
        return self

    def encode_chunk(self, elements: np.ndarray, dtype: DtypeInfo) -> bytes:
        """Encode a flat, contiguous little-endian chunk of elements."""
        raise NotImplementedError

    def encode_chunks(self, elements: np.ndarray, chunk_elements: int, dtype: DtypeInfo) -> Iterator[bytes]:
        """:meth:`encode_chunk` of each run of ``chunk_elements`` elements of a flat tensor, in order (codecs
        may prepare the next chunk while one is coded)."""
        for i in range(0, elements.size, chunk_elements):
            yield self.encode_chunk(elements[i : i + chunk_elements], dtype)

    def decode_chunk(self, data: memoryview, count: int, dtype: DtypeInfo, *,
                     max_bytes: int | None = None) -> np.ndarray:
        """Decode one chunk into a flat array of ``count`` elements of ``dtype``.

        ``max_bytes`` (progressive codecs only): decode from the first ``max_bytes`` bytes of the
        chunk, giving a coarser tensor; other codecs are always given ``None``.
        """
        raise NotImplementedError

    def progressive_segments(self, data: bytes | memoryview, count: int) -> list[tuple[int, float]]:
        """Progressive codecs: ``(end, value)`` for every whole segment of a chunk's data, in order.

        ``end`` is the byte offset where the segment ends; ``value`` ranks segments across tensors
        (larger = more model quality per byte; non-increasing along a chunk). Writers of layered
        files (format 1.3) order the segments of all tensors by it.
        """
        raise NotImplementedError(f"{self.codec_id} is not a progressive codec")

    def plan_chunk(self, data: memoryview, count: int, dtype: DtypeInfo, *,
                   max_bytes: int | None = None) -> "ChunkPlan":
        """Decoding of one chunk split around its ANS blocks (see :class:`ChunkPlan`).

        Readers decode the blocks of many chunks together (``ans.decode_many`` steps all their lanes
        at once, much faster with numpy than block by block). The default has no blocks: ``finish``
        calls :meth:`decode_chunk`.
        """
        return ChunkPlan([], lambda _decoded: self.decode_chunk(data, count, dtype, max_bytes=max_bytes))

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash((self.codec_id, repr(sorted(self.get_config().items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.get_config().items()))
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True)
class Prepared:
    """A tensor already turned into what its codec stores (e.g. quantized levels, or coded chunks).

    Producers (quantizers, SuRP) return this; :meth:`rdformat.Writer.add` accepts it in place of
    an array and declares ``dtype`` and ``shape``. Either ``elements`` (what ``codec.encode_chunk``
    consumes, ``numel`` elements in C order, chunked by the writer) or ``chunks`` (payloads already
    coded by the producer, each of ``chunk_elements`` elements but the last) is given.
    """

    codec: Codec
    elements: np.ndarray | None  # what encode_chunk consumes, numel elements in C order
    dtype: np.dtype  # the dtype the decoder returns
    shape: tuple[int, ...]
    chunks: tuple[bytes, ...] | None = None
    chunk_elements: int | None = None


@dataclass
class ChunkPlan:
    """A chunk's ANS blocks and what turns their decoded symbols into the chunk's elements.

    ``blocks``: ``(buf, count, table, out_dtype)`` tuples for :func:`rdformat.entropy.ans.decode_many`
    (header checks already done); ``finish(decoded)`` gets one array per block, in order, and returns
    the flat elements (``into``, if set, writes them into a given array instead). Error offsets raised by
    any of them are relative to the chunk data.
    """

    blocks: list = field(default_factory=list)
    finish: Callable[[list], np.ndarray] = lambda decoded: np.zeros(0)
    #: Optional: ``into(decoded, out)`` writes what ``finish(decoded)`` returns straight into ``out`` (the
    #: chunk's ``count`` elements of the tensor's output, 1-D, little-endian dtype), saving a copy of every
    #: decoded byte; readers use it when present. Same errors as ``finish``.
    into: Callable[[list, np.ndarray], None] | None = None
