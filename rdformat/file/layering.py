"""Writer side of layered files (format 1.3): collect progressive segments, order them, cut layers.

Segments of every layered tensor wait in a temporary file (memory stays flat on big models) until the
writer closes; they are then written in LAYER records ordered by the value their codec gives them
(SuRP: the threshold of their pass, the scale on which SuRP ranks weights of all tensors), so any
prefix of the file holds the most useful refinement of the whole model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

from ..errors import InvalidInputError
from ..format.layers import layer_payload

#: LAYER records hold about 1/LAYER_COUNT of the layered bytes each, but at least LAYER_MIN_BYTES:
#: finer layers give finer prefixes; each record costs 20 bytes of framing.
LAYER_COUNT = 64
LAYER_MIN_BYTES = 1024


class LayerSpool:
    """Segments of layered tensors, spooled to a temporary file until the layers are written."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self._size = 0
        # (-value, tensor ordinal, chunk, sequence, spool offset, length)
        self._items: list[tuple[float, int, int, int, int, int]] = []

    def add_chunk(self, tensor: int, chunk: int, data: bytes | memoryview,
                  segments: list[tuple[int, float]]) -> None:
        """Spool one chunk's data, cut at its codec's segment ends, each with its value."""
        start = 0
        value = float("inf")
        for seq, (end, seg_value) in enumerate(segments):
            if not start < end <= len(data):
                raise InvalidInputError(f"segment ends {[e for e, _v in segments]} do not cut {len(data)} bytes")
            # A chunk's segments must stay in order: values are made non-increasing along the chunk.
            value = min(value, float(seg_value))
            self._file.write(bytes(data[start:end]))
            self._items.append((-value, tensor, chunk, seq, self._size, end - start))
            self._size += end - start
            start = end
        if start != len(data):
            raise InvalidInputError(f"segments cover {start} of a chunk's {len(data)} bytes")

    def __len__(self) -> int:
        return len(self._items)

    def payloads(self, layer_bytes: int | None = None) -> Iterator[bytes]:
        """LAYER payloads: segments by decreasing value (ties: file order), cut into layers of about
        ``layer_bytes`` (default: 1/LAYER_COUNT of the layered bytes, at least LAYER_MIN_BYTES)."""
        items = sorted(self._items)
        target = layer_bytes if layer_bytes is not None else max(LAYER_MIN_BYTES, self._size // LAYER_COUNT)
        pieces: list[tuple[int, int, bytes]] = []
        held = 0
        for _neg, tensor, chunk, _seq, pos, length in items:
            self._file.seek(pos)
            data = self._file.read(length)
            if pieces and pieces[-1][:2] == (tensor, chunk):  # consecutive segments of a chunk: one piece
                pieces[-1] = (tensor, chunk, pieces[-1][2] + data)
            else:
                pieces.append((tensor, chunk, data))
            held += length
            if held >= target:
                yield layer_payload(pieces)
                pieces, held = [], 0
        if pieces:
            yield layer_payload(pieces)

    def close(self) -> None:
        """Delete the temporary file."""
        self._file.close()
