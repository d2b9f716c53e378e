"""Record checksums computed ahead of the reader, on another core, for large files held in memory.

A whole read of an in-memory file checks every record's CRC-32 on the thread that parses and plans the
records, while the decode threads wait for work: ~3.5 ms of a 40 ms two-thread load of a 76 MB file,
with the other core idle. :class:`CrcAhead` walks the file's record heads and checksums their payloads in
one compiled loop that calls zlib-ng's C ``zng_crc32`` without the GIL (a Python loop would need the GIL
between records, which the planning thread holds for up to the 5 ms switch interval at a time). The reader
asks :meth:`CrcAhead.crc` for the CRC of the payload it reads; an answer is the CRC of exactly those
bytes, or None (not computed yet, not a record the walk reached, nothing available), and the reader then
computes it itself. Results are therefore identical whoever computes them, and every check and error
stays the reader's: the walk trusts nothing, stops at the first head that does not fit in the file and
never reads outside it.

Optional: needs numba and zlib-ng (``rdformat[fast]``); without either, :func:`start` returns None.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

#: Records the walk checksums at most (the arrays it fills are allocated up front: 24 bytes a record).
MAX_RECORDS = 1 << 16
_DONE = 1 << 32  # a computed CRC is stored as crc | _DONE: 0 means "not yet"

_kernel: list = []  # [(compiled walk, zng_crc32 as a ctypes function)] or [None], resolved once


def _resolve() -> Any:
    """The compiled walk and the C CRC function, or None when numba or zlib-ng is missing."""
    if not _kernel:
        try:
            import ctypes  # noqa: PLC0415

            from numba import njit  # noqa: PLC0415 - optional accelerator, loaded on first use
            from zlib_ng import zlib_ng  # noqa: PLC0415

            lib = ctypes.CDLL(zlib_ng.__file__)
            proto = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32)
            crc_fn = proto(("zng_crc32", lib))  # zlib-ng's public C API, linked into its Python module
        except (ImportError, OSError, AttributeError):
            _kernel.append(None)
            return None

        @njit(cache=True, nogil=True)
        def walk(crc_fn: Any, data: np.ndarray, base: int, pos: int, offsets: np.ndarray, lengths: np.ndarray,
                 crcs: np.ndarray) -> int:
            """Checksum the payload of each record from ``pos`` on: ``offsets``/``lengths`` of the payload,
            then ``crcs`` (written last: a reader seeing it sees the others). Stops at a head or payload
            that does not fit in ``data``, or when the arrays are full; returns the records done."""
            end = data.size
            for i in range(crcs.size):
                if pos + 16 > end:
                    return i
                length = np.uint64(0)
                for k in range(8):  # the head: u16 type, u16 flags, u64 payload length, u32 head CRC
                    length |= np.uint64(data[pos + 4 + k]) << np.uint64(8 * k)
                room = end - pos - 20  # the head and the payload's CRC trailer around the payload
                if room < 0 or length > np.uint64(room):
                    return i
                n = np.int64(length)
                offsets[i] = pos + 16
                lengths[i] = n
                crc = np.uint32(0)
                at = pos + 16
                while n > 0:  # zng_crc32 takes a 32-bit length
                    step = min(n, 1 << 30)
                    crc = crc_fn(crc, base + at, np.uint32(step))
                    at += step
                    n -= step
                crcs[i] = np.uint64(crc) | np.uint64(_DONE)
                pos = at + 4
            return crcs.size

        _kernel.append((walk, crc_fn))
    return _kernel[0]


class CrcAhead:
    """CRCs of an in-memory file's record payloads, computed on a background thread (see the module)."""

    def __init__(self, memory: memoryview, first_record: int, resolved: Any) -> None:
        walk, crc_fn = resolved
        self._memory = memory  # held until the walk ends: it reads the caller's buffer
        data = np.frombuffer(memory, dtype=np.uint8)
        count = min(MAX_RECORDS, max(1, (data.size - first_record) // 20 + 1))
        self._offsets = np.zeros(count, dtype=np.int64)
        self._lengths = np.zeros(count, dtype=np.int64)
        self._crcs = np.zeros(count, dtype=np.uint64)
        self._next = 0  # records are read in order: where the next lookup starts
        args = (crc_fn, data, data.ctypes.data, first_record, self._offsets, self._lengths, self._crcs)
        self._thread = threading.Thread(target=walk, args=args, name="rdformat-crc-ahead", daemon=True)
        self._thread.start()

    def crc(self, offset: int, length: int) -> int | None:
        """The CRC-32 of ``memory[offset:offset + length]`` if the walk has computed it, else None."""
        crcs, k = self._crcs, self._next
        while k < crcs.size and crcs[k] and self._offsets[k] < offset:
            k += 1  # records the reader skipped or read another way
        if k == crcs.size or not crcs[k] or self._offsets[k] != offset or self._lengths[k] != length:
            return None
        self._next = k + 1
        return int(crcs[k]) & 0xFFFFFFFF

    def join(self) -> None:
        """Wait for the walk to end (it ends on its own after one pass over the file)."""
        self._thread.join()


def start(memory: memoryview, first_record: int) -> CrcAhead | None:
    """A :class:`CrcAhead` walking ``memory`` from the record at ``first_record``, or None without numba or
    zlib-ng."""
    resolved = _resolve()
    return None if resolved is None else CrcAhead(memory, first_record, resolved)
