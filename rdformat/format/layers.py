"""LAYER records (format 1.3): the refinement pieces of layered progressive tensors.

A layered tensor (TENSOR flag ``LAYERED``) keeps only the start of each chunk's codec data in its own
chunk records; the rest follows, after every tensor, in LAYER records. Each LAYER record carries
*pieces*: ``(tensor ordinal, chunk index, bytes)``, where the ordinal counts TENSOR and SMALL records
in file order from 0. A chunk's data is its chunk record's data followed by its pieces in file order.
Writers order pieces by rate-distortion value, so that the first N bytes of a file hold the most
useful refinement of the whole model, and every LAYER record is checksummed on its own: a truncated
file still decodes from the layers it holds completely.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import MAX_CHUNK_PAYLOAD_BYTES, PayloadReader
from .wire import leb128

#: A tensor ordinal or chunk index above this is corrupt (no file can hold that many).
_MAX_COUNT = (1 << 63) - 1


@dataclass(frozen=True)
class LayerPiece:
    """One piece of a LAYER record: ``length`` bytes at absolute file ``offset`` for one chunk."""

    tensor: int  # ordinal of the tensor among the file's TENSOR/SMALL records
    chunk: int
    offset: int
    length: int


def layer_payload(pieces: list[tuple[int, int, bytes]]) -> bytes:
    """LAYER payload from ``(tensor ordinal, chunk index, data)`` pieces, in order."""
    out = [leb128(len(pieces))]
    for tensor, chunk, data in pieces:
        out += [leb128(tensor), leb128(chunk), leb128(len(data)), data]
    return b"".join(out)


def parse_layer(payload: bytes, base: int) -> list[LayerPiece]:
    """Parse a LAYER payload (``base``: absolute offset of the payload) -> its pieces.

    Structure only: whether each ordinal names a layered tensor and each chunk exists is the
    reader's check, which knows the tensors.
    """
    r = PayloadReader(payload, base, "layer")
    count = r.varint("layer piece count", len(payload))
    if count < 1:
        raise r.fail("a layer record holds no piece")
    pieces = []
    for _ in range(count):
        tensor = r.varint("layer piece tensor", _MAX_COUNT)
        chunk = r.varint("layer piece chunk", _MAX_COUNT)
        length = r.varint("layer piece length", MAX_CHUNK_PAYLOAD_BYTES)
        if length < 1:
            raise r.fail("a layer piece is empty")
        if length > len(payload) - r.pos:
            raise r.fail("layer piece data runs past the end of the layer record")
        pieces.append(LayerPiece(tensor, chunk, base + r.pos, length))
        r.pos += length
    r.finish()
    return pieces
