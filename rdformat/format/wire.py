"""Wire primitives shared by every layer: unsigned LEB128 varints and the CRC-32 of records.

One encoder and one scalar decoder serve the container records, the entropy tables and the SuRP
stream; each caller states its own length cap (the spec fixes it per field) and names the field
for error messages. The vectorised decoder of many varints lives with the frequency tables
(:mod:`rdformat.entropy.models`), the only place that reads thousands at once.
"""

from __future__ import annotations

import zlib

from ..errors import CorruptDataError, InvalidInputError, TruncatedError


#: Buffers from this size on are checksummed by zlib-ng where it is installed (``rdformat[fast]``): its
#: CRC-32 uses carry-less multiplication, ~20 GB/s against the ~2.6 GB/s of the zlib that CPython links,
#: which made checksums a fifth of a lossless load. Smaller buffers do not pay for the module lookup.
FAST_CRC_MIN_BYTES = 1 << 16
_fast_crc: list = []  # [function or None], resolved on the first large buffer


def _zlib_ng_crc32():
    """zlib-ng's ``crc32`` (the same function as zlib's, faster), or None when it is not installed."""
    if not _fast_crc:
        try:
            from zlib_ng import zlib_ng  # noqa: PLC0415 - optional accelerator, imported on first use

            _fast_crc.append(zlib_ng.crc32)
        except ImportError:
            _fast_crc.append(None)
    return _fast_crc[0]


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """CRC-32 (ISO-HDLC, zlib's) of ``data``, continuing from ``value``."""
    if len(data) >= FAST_CRC_MIN_BYTES:
        fast = _zlib_ng_crc32()
        if fast is not None:
            return fast(data, value) & 0xFFFFFFFF
    return zlib.crc32(data, value) & 0xFFFFFFFF


def leb128(value: int) -> bytes:
    """Unsigned LEB128 in its shortest form: 7 bits per byte, least significant first, high bit = more."""
    value = int(value)
    if value < 0:
        raise InvalidInputError(f"a varint cannot hold the negative value {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_leb128(buf: bytes | bytearray | memoryview, pos: int, end: int, *, max_bytes: int,
                what: str) -> tuple[int, int]:
    """Decode one canonical varint at ``buf[pos]`` without reading at or past ``end``.

    Returns ``(value, position after it)``. A varint running into ``end`` is a :class:`TruncatedError`;
    one longer than ``max_bytes`` or ending in a ``0x00`` byte after others (not the shortest form) is a
    :class:`CorruptDataError`. Offsets in the errors are positions in ``buf``; ``what`` names the field.
    """
    value = 0
    for k in range(max_bytes):
        if pos + k >= end:
            raise TruncatedError(f"{what} varint runs past the end of the data", offset=pos + k)
        b = int(buf[pos + k])
        value |= (b & 0x7F) << (7 * k)
        if b < 0x80:
            if k > 0 and b == 0:
                raise CorruptDataError(f"{what} varint is not in its shortest form", offset=pos)
            return value, pos + k + 1
    raise CorruptDataError(f"{what} varint is longer than {max_bytes} bytes", offset=pos)
