"""``bytesplit``: lossless, bit-exact for every dtype.

Floats are first rotated left by one bit so the exponent fills the top byte and the sign drops to
the lowest bit. The elements are then split into byte planes (byte k of every element), and each
plane is stored raw, as a constant, or ANS-coded with its own frequency table, whichever is
smallest. Trained weights have few distinct exponents, so the exponent plane shrinks to about a
third while mantissa planes stay raw (they are close to uniform and would cost time for nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ..format.dtypes import DtypeInfo
from ..format.wire import leb128
from ..entropy import FrequencyTable, ans
from ..entropy.models import _varint_decode_many
from ..errors import CorruptDataError, RdcError
from .registry import register_codec
from .base import ChunkPlan, Codec, byte_view

PLANE_RAW = 0
PLANE_CONSTANT = 1
PLANE_ANS = 2
PLANE_ANS_PAIRS = 3
#: Since format 1.5: the plane coded by segments (the members of a PACK group), each byte shifted by its
#: segment's amount before one shared table codes them all (exponents relative to each tensor's scale).
PLANE_ANS_SHIFTED = 4
#: Since format 1.6: planes w-2 and w-1 coded together: the top byte (shifted by segments as in mode 4) joined
#: with the top ``t`` bits of the byte below it as one ANS symbol, the low 8-t bits of that byte packed.
PLANE_ANS_JOINT = 5
#: Joined bit counts the encoder tries (any 1..7 decodes): more bits cost a bigger table.
JOINT_BITS = (1, 2, 3)
#: Largest chunk (elements) the encoder tries the joint planes on. They code one ANS symbol per element where
#: the pair mode codes one per two, so they cost decode time for ~0.2% fewer bytes: worth it on the small
#: tensors of small models (where a few bytes decide against ZipNN and decode takes microseconds), not on
#: the large tensors whose load time users wait for (at 2**18, the 147,456-element attention matrices of a
#: BERT-small took a fifth of its load for 0.04% of its size). (Readers accept mode 5 at any size.)
JOINT_MAX_ELEMENTS = 1 << 17
#: Precision of a pair table (mode 3). A decoder's lookup table has ``2**Q`` two-byte slots per chunk: at
#: Q = 16 (128 KiB, cold for every chunk) the ANS kernel ran ~30% slower on a 22.7 M-weight model than at
#: Q = 14 (32 KiB), for 0.008% fewer bytes; 16 is kept only where it saves more (many rare pairs).
PAIR_PRECISION = 14
#: A pair table of more symbols than this is also tried at precision 16 (and used if 0.5% smaller).
PAIR_FINE_SYMBOLS = 1024
#: The byte a shifted plane maps each segment's median to (any value works; one value for all segments).
SHIFT_CENTRE = 128
TRANSFORMS = ("none", "rotl1")
_UINT = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def _rotate(words: np.ndarray, bits: int, left: bool) -> np.ndarray:
    one = words.dtype.type(1)
    back = words.dtype.type(bits - 1)
    if left:
        return (words << one) | (words >> back)
    return (words >> one) | (words << back)


@register_codec
class ByteSplitCodec(Codec):
    """Byte-plane split + per-plane ANS (see module docstring).

    Args:
        transform: ``"rotl1"`` (floats) or ``"none"``; ``None`` picks by dtype at encode time.
        precision: frequency-table precision in bits (encoder choice; tables record their own).
        min_gain: a plane is entropy-coded only if that saves at least this fraction of its bytes
            (encoder choice: trades a little size for decode speed).
        joint: may code the exponent plane of floats together with the top mantissa bits (plane mode 5,
            format 1.6) where that is smaller; False writes only the plane modes of format 1.5.
    """

    codec_id = "bytesplit"

    def __init__(self, transform: str | None = None, *, precision: int = 14, min_gain: float = 0.03,
                 joint: bool = True) -> None:
        if transform is not None and transform not in TRANSFORMS:
            raise CorruptDataError(f"bytesplit: unknown transform {transform!r}")
        self.transform = transform
        self.precision = precision
        self.min_gain = min_gain
        #: encoder choice: may code the top two planes of floats together (PLANE_ANS_JOINT, format 1.6)
        self.joint = joint

    def get_config(self) -> dict:
        """Only the transform is needed to decode."""
        return {} if self.transform is None else {"transform": self.transform}

    @classmethod
    def from_config(cls, config: dict) -> "ByteSplitCodec":
        """Rebuild from a tensor header."""
        if set(config) - {"transform"} or not isinstance(config.get("transform", "none"), str):
            raise CorruptDataError(f"bytesplit: bad configuration {config!r}")
        return cls(config.get("transform", "none"))

    def for_tensor(self, array: np.ndarray, dtype: DtypeInfo) -> "ByteSplitCodec":
        """Fix the transform from the dtype."""
        transform = self.transform or ("rotl1" if dtype.kind == "float" else "none")
        return ByteSplitCodec(transform, precision=self.precision, min_gain=self.min_gain, joint=self.joint)

    def _words(self, elements: np.ndarray, dtype: DtypeInfo) -> np.ndarray:
        words = elements.view(_UINT[dtype.itemsize])
        if self.transform == "rotl1":
            words = _rotate(words, 8 * dtype.itemsize, left=True)
        return words

    def encode_chunks(self, elements: np.ndarray, chunk_elements: int, dtype: DtypeInfo) -> Iterator[bytes]:
        """:meth:`encode_chunk` of each chunk, the next chunk's byte planes split (a compiled pass without the
        GIL) on the decode pool while this one is coded."""
        w, n = dtype.itemsize, elements.size
        if w not in (2, 4) or n <= chunk_elements or not ans.compiled_active(n):
            yield from super().encode_chunks(elements, chunk_elements, dtype)
            return
        from . import kernels_numba  # noqa: PLC0415 - optional accelerator, loaded on first use

        words = np.ascontiguousarray(elements).reshape(-1).view(_UINT[w])
        rotate = self.transform == "rotl1"
        ahead = None  # the split of the chunk coded next (the first chunk splits its own, on this thread)
        for i in range(0, n, chunk_elements):
            split = ahead.result() if ahead is not None else None
            after = i + chunk_elements
            ahead = (ans.background(kernels_numba.split_planes, words[after : after + chunk_elements], rotate)
                     if after < n else None)
            yield self.encode_chunk(elements[i : i + chunk_elements], dtype, split=split)

    def encode_chunk(self, elements: np.ndarray, dtype: DtypeInfo, *, segments: list[int] | None = None,
                     split: tuple[np.ndarray, np.ndarray] | None = None) -> bytes:
        """Encode each byte plane with the cheapest of raw / constant / ANS. ``segments`` (element counts
        summing to the chunk's, e.g. the members of a PACK group) also tries the top plane of a float dtype
        coded per segment (PLANE_ANS_SHIFTED, format 1.5). ``split``: the chunk's planes and byte counts as
        ``kernels_numba.split_planes`` gives them, if already made."""
        w = dtype.itemsize
        n = elements.size
        if split is not None:
            planes, counts = split
        elif w in (2, 4) and ans.compiled_active(n):
            from . import kernels_numba  # noqa: PLC0415 - optional accelerator, loaded on first use

            # one pass: the planes as contiguous rows and their byte counts
            planes, counts = kernels_numba.split_planes(np.ascontiguousarray(elements).reshape(-1).view(_UINT[w]),
                                                        self.transform == "rotl1")
        else:
            planes, counts = self._words(elements, dtype).view(np.uint8).reshape(-1, w).T, [None] * w
        # The top two planes of floats are usually replaced by the joint plane (format 1.6): they are sized
        # first and only written if the joint plane does not beat them.
        joint = self.joint and self.transform == "rotl1" and w >= 2 and 64 <= n <= JOINT_MAX_ELEMENTS
        out: list = []  # bytes, or (estimated size, function writing the plane)
        shifts = None
        for k in range(w):
            plane = np.ascontiguousarray(planes[k])
            coded = self._plane_choice(plane, counts[k]) if joint and k >= w - 2 else self._encode_plane(plane, counts[k])
            if segments is not None and k == w - 1 and self.transform == "rotl1" and len(segments) > 1:
                shifted, shifts = _encode_shifted(plane, segments, self.precision, with_shifts=True)
                if shifted is not None and len(shifted) < _size(coded):
                    coded = shifted
            out.append(coded)
        if joint:
            segs = list(zip(segments, shifts)) if segments is not None and shifts is not None else [(n, 0)]
            apart = _size(out[-1]) + _size(out[-2])
            slack = 16 + apart / 128  # more than an estimate misses by (see _plane_choice)
            coded = _encode_joint(np.ascontiguousarray(planes[w - 1]), np.ascontiguousarray(planes[w - 2]),
                                  segs, apart + slack)
            if coded is not None and len(coded) >= apart - slack:  # too close to call: write the planes
                out[-2:] = [_written(part) for part in out[-2:]]
                if len(coded) >= len(out[-1]) + len(out[-2]):
                    coded = None
            if coded is not None:
                out[-2:] = [coded]
        return b"".join(_written(part) for part in out)

    def _encode_plane(self, plane: np.ndarray, counts: np.ndarray | None = None) -> bytes:
        return self._plane_choice(plane, counts)[1]()

    def _plane_choice(self, plane: np.ndarray, counts: np.ndarray | None = None) -> tuple[float, Callable[[], bytes]]:
        """(size in bytes, exact for raw and constant planes, estimated for ANS ones; a function writing the
        plane) of the cheapest of raw / constant / ANS / ANS pairs. ``counts``: the plane's byte counts, if
        known."""
        n = plane.size
        compiled = ans.compiled_active(n)
        if compiled:
            from . import kernels_numba  # noqa: PLC0415 - optional accelerator, loaded on first use
        if counts is None:
            counts = kernels_numba.plane_histograms(plane, False)[0] if compiled else np.bincount(plane, minlength=256)
        present = np.flatnonzero(counts)
        if present.size == 1:
            return 2, lambda: bytes([PLANE_CONSTANT, int(present[0])])
        raw = (1 + n, lambda: _raw_plane(plane))
        overhead = 64 + 12 * max(1, n // 2048)
        c = counts[present].astype(np.float64)
        entropy_bits = n * np.log2(n) - float((c * np.log2(c)).sum())  # no table codes below it
        if entropy_bits * (1 - 1e-9) / 8 + overhead > n * (1.0 - self.min_gain):  # (float rounding)
            return raw  # what the estimate below decides, without a table
        table = FrequencyTable._from_histogram(present, counts[present], self.precision)
        bits = table.cost_bits(counts[present])
        estimate = bits / 8 + overhead
        if estimate > n * (1.0 - self.min_gain):
            return raw
        best = (estimate, PLANE_ANS, bits, n, table)
        pairs = None  # the pair symbols, once made
        if n >= 4096:
            # Coding byte pairs halves the symbols to decode; worth it while the bigger table stays small.
            # (counted only here: most planes of float weights stop above, raw)
            if compiled:
                pcounts = kernels_numba.plane_histograms(plane, True)[1]
            else:
                pairs = _pairs(plane)
                pcounts = np.bincount(pairs, minlength=1)
            ppresent = np.flatnonzero(pcounts)
            if ppresent.size <= 4096:
                ptable = FrequencyTable._from_histogram(ppresent, pcounts[ppresent], PAIR_PRECISION)
                pbits = ptable.cost_bits(pcounts[ppresent])
                if ppresent.size > PAIR_FINE_SYMBOLS:
                    fine = FrequencyTable._from_histogram(ppresent, pcounts[ppresent], 16)
                    fbits = fine.cost_bits(pcounts[ppresent])
                    if fbits < 0.995 * pbits:
                        ptable, pbits = fine, fbits
                pest = pbits / 8 + 3 * ppresent.size + 12 * max(1, n // 4096)
                if pest <= estimate * 1.005:
                    best = (pest, PLANE_ANS_PAIRS, pbits, -(-n // 2), ptable)
        _, mode, bits, symbols, table = best
        lanes = ans.default_lanes(symbols, bits)
        # the block: its ideal size plus about 8.1 bytes per lane (a word count, the final state, the last
        # word's unused bits: measured 7.7-8.6 on blocks of 8 lanes or more, 6-10.5 on fewer)
        size = 9 + table.stored_size() + bits / 8 + 4 + 8.1 * lanes

        def write() -> bytes:
            # ``lanes``: what ans.encode would count from the symbols' histogram, known here already
            block = ans.encode(plane if mode == PLANE_ANS else pairs if pairs is not None else _pairs(plane), table,
                               lanes=lanes)
            coded = table.to_bytes()
            if len(block) + len(coded) + 9 >= n:
                return _raw_plane(plane)
            return b"".join([bytes([mode]), coded, len(block).to_bytes(8, "little"), block])

        return min(size, n + 1), write  # (raw when the block would not be smaller)

    def min_data_bytes(self, count: int, dtype: DtypeInfo) -> int:
        """Smallest chunk data for ``count`` elements: every plane takes at least 2 bytes (reader's bomb check)."""
        return 2 * dtype.itemsize

    def plan_chunk(self, data: memoryview, count: int, dtype: DtypeInfo, *,
                   max_bytes: int | None = None) -> ChunkPlan:
        """Raw and constant planes now; ANS planes as blocks; interleave and undo the transform in finish."""
        w = dtype.itemsize
        buf = byte_view(data)  # no copy: chunks can be megabytes
        fills = []  # (plane, raw bytes or constant) - the planes are only allocated in finish
        blocks, coded = [], []  # coded: (plane, mode, offset) of each ANS block
        pos = 0
        k = -1
        while k + 1 < w:
            k += 1
            if pos >= len(buf):
                raise CorruptDataError(f"bytesplit chunk ends before plane {k}", offset=pos)
            mode = buf[pos]
            pos += 1
            if mode == PLANE_ANS_JOINT:
                if k != w - 2:
                    raise CorruptDataError(f"bytesplit plane {k}: mode 5 (joint) is allowed only at plane {w - 2} of "
                                           f"{w}-byte elements", offset=pos - 1)
                joint, table, n, pos = _read_joint(buf, pos, count, k)
                blocks.append((memoryview(buf)[pos : pos + n], count, table, np.uint16))
                pos += n
                low = -(-count * (8 - joint.bits) // 8)
                if low > len(buf) - pos:
                    raise CorruptDataError(f"bytesplit plane {k}: packed low bits are truncated", offset=pos)
                joint.low = np.frombuffer(buf, np.uint8, low, pos)
                _check_padding(joint.low, count * (8 - joint.bits), pos)
                coded.append((k, joint, pos))
                pos += low
                k += 1  # the joint mode stands for plane w-1 too
                continue
            if mode == PLANE_RAW:
                if pos + count > len(buf):
                    raise CorruptDataError(f"bytesplit raw plane {k} is truncated", offset=pos)
                fills.append((k, np.frombuffer(buf, np.uint8, count, pos)))
                pos += count
            elif mode == PLANE_CONSTANT:
                if pos + 1 > len(buf):
                    raise CorruptDataError(f"bytesplit constant plane {k} is truncated", offset=pos)
                fills.append((k, buf[pos]))
                pos += 1
            elif mode in (PLANE_ANS, PLANE_ANS_PAIRS, PLANE_ANS_SHIFTED):
                if mode == PLANE_ANS_SHIFTED:
                    segs, pos = _read_segments(buf, pos, count, k)
                try:
                    table, pos = FrequencyTable.from_bytes(buf, pos)
                except RdcError as exc:
                    raise exc.with_context(record="chunk")
                if mode == PLANE_ANS_SHIFTED:
                    n, pos = _read_varint(buf, pos, f"bytesplit plane {k} block length")
                else:
                    if pos + 8 > len(buf):
                        raise CorruptDataError(f"bytesplit plane {k} block length is truncated", offset=pos)
                    n = int.from_bytes(buf[pos : pos + 8], "little")
                    pos += 8
                if n > len(buf) - pos:
                    raise CorruptDataError(f"bytesplit plane {k} block runs past the chunk", offset=pos)
                limit = 65535 if mode == PLANE_ANS_PAIRS else 255
                if table.symbols[-1] > limit:
                    raise CorruptDataError(f"bytesplit plane {k} table has symbols above {limit}", offset=pos)
                block = memoryview(buf)[pos : pos + n]
                if mode == PLANE_ANS_SHIFTED:
                    blocks.append((block, count, table, np.uint8))
                    coded.append((k, segs, pos))  # the segments stand for the mode: undone in finish
                    pos += n
                    continue
                if mode == PLANE_ANS:
                    blocks.append((block, count, table, np.uint8))
                else:
                    blocks.append((block, -(-count // 2), table, np.uint16))
                coded.append((k, mode, pos))
                pos += n
            else:
                raise CorruptDataError(f"bytesplit plane {k} has unknown mode {mode}", offset=pos - 1)
        if pos != len(buf):
            raise CorruptDataError(f"{len(buf) - pos} trailing bytes after the bytesplit planes", offset=pos)

        def finish(decoded: list) -> np.ndarray:
            if ans.compiled_active():
                return _finish_compiled(decoded)
            planes = np.empty((count, w), dtype=np.uint8)
            for k, value in fills:
                planes[:, k] = value
            for (k, mode, at), symbols in zip(coded, decoded):
                if isinstance(mode, _Joint):
                    planes[:, k], planes[:, k + 1] = mode.planes(symbols, count)
                elif isinstance(mode, tuple):
                    planes[:, k] = _unshift(symbols, mode)
                elif mode == PLANE_ANS:
                    planes[:, k] = symbols
                else:
                    as_bytes = symbols.astype("<u2").view(np.uint8)
                    if count % 2 and as_bytes[-1]:
                        raise CorruptDataError(f"bytesplit plane {k}: nonzero padding byte", offset=at)
                    planes[:, k] = as_bytes[:count]
            words = planes.view(_UINT[w]).reshape(count)
            if self.transform == "rotl1":
                words = _rotate(words, 8 * w, left=False)
            return words.view(dtype.numpy.newbyteorder("<"))

        def _finish_compiled(decoded: list, out: np.ndarray | None = None) -> np.ndarray:
            # each plane where it already is (raw in the chunk's bytes, ANS where the decoder wrote it),
            # then one compiled pass interleaves; widths other than 2 and 4 go through a plane matrix
            from . import kernels_numba  # noqa: PLC0415 - optional accelerator, loaded on first use

            sources: list = [None] * w
            for k, value in fills:
                sources[k] = value if isinstance(value, np.ndarray) else np.full(count, value, dtype=np.uint8)
            for (k, mode, at), symbols in zip(coded, decoded):
                if isinstance(mode, _Joint):
                    sources[k], sources[k + 1] = kernels_numba.joint_planes(symbols, mode.bits, mode.segs, mode.low,
                                                                            count)
                elif isinstance(mode, tuple):
                    sources[k] = kernels_numba.unshift_plane(symbols, mode)
                elif mode == PLANE_ANS:
                    sources[k] = symbols
                else:
                    as_bytes = symbols.astype("<u2", copy=False).view(np.uint8)
                    if count % 2 and as_bytes[-1]:
                        raise CorruptDataError(f"bytesplit plane {k}: nonzero padding byte", offset=at)
                    sources[k] = as_bytes[:count]
            rotate = self.transform == "rotl1"
            if w in (2, 4):
                words = np.empty(count, dtype=_UINT[w]) if out is None else out
                kernels_numba.interleave_sources(sources, count, rotate, words)
                words = words[:count]
            else:
                planes = np.empty((w, count), dtype=np.uint8)
                for k, plane in enumerate(sources):
                    planes[k] = plane[:count]
                words = kernels_numba.interleave_planes(planes, count, rotate, out)
            return words.view(dtype.numpy.newbyteorder("<"))

        def into(decoded: list, out: np.ndarray) -> None:
            word = _UINT.get(w)
            if word is not None and ans.compiled_active():  # interleaved straight into the tensor
                _finish_compiled(decoded, out.view(word))
            else:
                out[:] = finish(decoded)

        return ChunkPlan(blocks, finish, into)

    def decode_chunk(self, data: memoryview, count: int, dtype: DtypeInfo, *,
                     max_bytes: int | None = None) -> np.ndarray:
        """Rebuild the planes (all ANS planes decoded together), interleave them and undo the transform."""
        plan = self.plan_chunk(data, count, dtype)
        return plan.finish(ans.decode_many(plan.blocks))


def _size(part) -> float:
    """Bytes of an encoded plane, or the estimate of a plane not written yet (see ``_plane_choice``)."""
    return len(part) if isinstance(part, bytes) else part[0]


def _raw_plane(plane: np.ndarray) -> bytes:
    """A raw plane: its mode byte, then the bytes (one copy: a lossless save of float weights writes most
    planes raw, and the mode byte prepended to a ``tobytes()`` copy cost a second one)."""
    return b"".join((_RAW_MODE, np.ascontiguousarray(plane)))


_RAW_MODE = bytes([PLANE_RAW])


def _written(part) -> bytes:
    """An encoded plane's bytes, writing a plane still held as ``(estimate, writer)``."""
    return part if isinstance(part, bytes) else part[1]()


def _pairs(plane: np.ndarray) -> np.ndarray:
    """Byte pairs as symbols ``b[2i] + 256 * b[2i+1]`` (an odd plane is padded with a zero byte)."""
    if plane.size % 2:
        plane = np.concatenate([plane, np.zeros(1, np.uint8)])
    return plane.view("<u2")  # (ANS takes uint16 symbols as they are: no wider copy)


# ------------------------------------------------------------------------------------------------
# PLANE_ANS_SHIFTED (format 1.5): u8 4, varint S, S x (varint length, u8 shift), table, varint n, block


def _shift_bytes(plane: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Byte 0 stays 0; byte b >= 1 becomes ((b - 1 - shift) mod 255) + 1 (a bijection of 0..255 per shift)."""
    b = plane.astype(np.int32)
    return np.where(b == 0, 0, (b - 1 - shifts) % 255 + 1).astype(np.uint8)


def _unshift(symbols: np.ndarray, segs: tuple) -> np.ndarray:
    """Inverse of :func:`_shift_bytes` for the segments ``((length, shift), ...)``."""
    lengths = np.fromiter((n for n, _s in segs), np.int64, len(segs))
    shifts = np.repeat(np.fromiter((s for _n, s in segs), np.int32, len(segs)), lengths)
    b = symbols.astype(np.int32)
    return np.where(b == 0, 0, (b - 1 + shifts) % 255 + 1).astype(np.uint8)


def _read_varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    """A canonical unsigned LEB128 value of at most 2**63 - 1 at ``buf[pos]``."""
    value, shift, start = 0, 0, pos
    while True:
        if pos >= len(buf):
            raise CorruptDataError(f"{what} is truncated", offset=start)
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and pos - start > 1:
                raise CorruptDataError(f"{what} is not in its shortest encoding", offset=start)
            break
        shift += 7
        if shift >= 63:
            raise CorruptDataError(f"{what} is too long", offset=start)
    return value, pos


def _read_segments(buf: bytes, pos: int, count: int, k: int) -> tuple[tuple, int]:
    """The segments of a shifted plane: 1..count of them, each of >= 1 elements and a shift <= 254, their
    lengths summing to ``count``."""
    what = f"bytesplit plane {k}"
    nseg, pos = _read_varint(buf, pos, f"{what} segment count")
    if not 1 <= nseg <= count:
        raise CorruptDataError(f"{what} has {nseg} segments for {count} elements", offset=pos)
    segs, total = [], 0
    for _ in range(nseg):
        n, pos = _read_varint(buf, pos, f"{what} segment length")
        if n < 1 or n > count - total:
            raise CorruptDataError(f"{what}: a segment of {n} elements does not fit the {count - total} left",
                                   offset=pos)
        if pos >= len(buf):
            raise CorruptDataError(f"{what} segment shift is truncated", offset=pos)
        shift = buf[pos]
        if shift > 254:
            raise CorruptDataError(f"{what} segment shift {shift} is over 254", offset=pos)
        pos += 1
        total += n
        segs.append((n, shift))
    if total != count:
        raise CorruptDataError(f"{what} segments cover {total} of {count} elements", offset=pos)
    return tuple(segs), pos


def _shifted_hist(hist: np.ndarray, shift: int) -> np.ndarray:
    """The histogram of :func:`_shift_bytes` of bytes whose histogram is ``hist``, for one ``shift``."""
    out = hist.copy()
    out[1:] = np.roll(hist[1:], -shift)
    return out


def _refine_shifts(plane: np.ndarray, segments: list[int], shifts: list[int], sweeps: int = 2) -> list[int]:
    """Shifts (one per segment) that lower the estimated size of the shifted plane, from ``shifts``.

    Encoder choice only (any shifts decode): coordinate descent over each segment's shift (its current
    value +-3 and its neighbours' values, which merge segments), scored by the empirical order-0 entropy
    of the shifted bytes plus ~2 bytes per table symbol and ~3 bytes per segment run; O(256) per trial."""
    m = len(segments)
    if m < 2 or m > 4096:
        return shifts
    starts = np.concatenate([[0], np.cumsum(segments)])
    hists = [np.bincount(plane[starts[i] : starts[i + 1]], minlength=256).astype(np.int64) for i in range(m)]
    cur = list(shifts)
    parts = [_shifted_hist(h, s) for h, s in zip(hists, cur)]
    total = np.sum(parts, axis=0)
    n = int(total.sum())

    def cost(counts: np.ndarray) -> float:
        c = counts[counts > 0].astype(np.float64)
        return (n * np.log2(n) - float((c * np.log2(c)).sum())) / 8 + 2 * c.size

    def runs(i: int, s: int) -> int:  # run starts that segment i's shift s makes, with its neighbours
        return (i == 0 or cur[i - 1] != s) + (i + 1 < m and cur[i + 1] != s)

    for _ in range(sweeps):
        changed = False
        for i in range(m):
            rest = total - parts[i]
            best_s, best = cur[i], cost(total) + 3 * runs(i, cur[i])
            cands = {(cur[i] + d) % 255 for d in (-3, -2, -1, 1, 2, 3)}
            cands.update(cur[j] for j in (i - 1, i + 1) if 0 <= j < m)
            for s in sorted(cands - {cur[i]}):
                trial = cost(rest + _shifted_hist(hists[i], s)) + 3 * runs(i, s)
                if trial < best - 1e-9:
                    best_s, best = s, trial
            if best_s != cur[i]:
                cur[i] = best_s
                parts[i] = _shifted_hist(hists[i], best_s)
                total = rest + parts[i]
                changed = True
        if not changed:
            break
    return cur


def _encode_shifted(plane: np.ndarray, segments: list[int], precision: int, *, with_shifts: bool = False):
    """The plane as PLANE_ANS_SHIFTED: each segment's bytes shifted so that its median nonzero byte lands on
    SHIFT_CENTRE, refined by :func:`_refine_shifts` when that codes smaller, adjacent segments with one shift
    merged, then one table for all; None when it cannot apply (a single symbol)."""
    if sum(segments) != plane.size or not segments:
        return (None, None) if with_shifts else None
    medians = []
    start = 0
    for n in segments:
        part = plane[start : start + n]
        start += n
        nz = part[part != 0]
        medians.append((int(np.median(nz)) - SHIFT_CENTRE) % 255 if nz.size else 0)
    best, chosen = None, medians
    for shifts in (medians, _refine_shifts(plane, segments, medians)):
        if best is not None and shifts == medians:
            continue
        coded = _encode_shifted_with(plane, segments, shifts, precision)
        if coded is not None and (best is None or len(coded) < len(best)):
            best, chosen = coded, shifts
    return (best, chosen) if with_shifts else best


def _merged_runs(segments) -> tuple[list[list[int]], np.ndarray]:
    """``(length, shift)`` segments with adjacent equal shifts merged into one run, and every element's shift."""
    runs: list[list[int]] = []
    for n, shift in segments:
        if runs and runs[-1][1] == shift:
            runs[-1][0] += n
        else:
            runs.append([n, shift])
    per_element = np.repeat(np.array([s for _n, s in runs], np.int32), np.array([n for n, _s in runs], np.int64))
    return runs, per_element


def _encode_shifted_with(plane: np.ndarray, segments: list[int], shifts: list[int], precision: int) -> bytes | None:
    """PLANE_ANS_SHIFTED with the given per-segment ``shifts`` (adjacent equal shifts merged)."""
    segs, per_element = _merged_runs(zip(segments, shifts))
    symbols = _shift_bytes(plane, per_element)
    counts = np.bincount(symbols, minlength=256)
    present = np.flatnonzero(counts)
    if present.size < 2:
        return None
    best = None
    for q in sorted({min(max(p, int(present.size - 1).bit_length() + 1), 14) for p in (10, 12, precision)}):
        table = FrequencyTable._from_histogram(present, counts[present], q)
        cost = table.cost_bits(counts[present]) / 8 + table.stored_size()
        if best is None or cost < best[0]:
            best = (cost, table)
    table = best[1]
    block = ans.encode(symbols, table)
    head = [bytes([PLANE_ANS_SHIFTED]), leb128(len(segs))] + [leb128(n) + bytes([s]) for n, s in segs]
    return b"".join(head + [table.to_bytes(), leb128(len(block)), block])


# ------------------------------------------------------------------------------------------------
# PLANE_ANS_JOINT (format 1.6), at plane w-2, standing for planes w-2 and w-1:
#   u8 5, u8 t (1..7), varint S, S x (varint length, u8 shift), joint table, varint n,
#   ANS block of count symbols, then ceil(count * (8 - t) / 8) bytes: the low 8-t bits of plane w-2, packed


class _Joint:
    """A parsed joint plane: its bit count, segments and (once read) packed low bits."""

    __slots__ = ("bits", "segs", "low")

    def __init__(self, bits: int, segs: tuple) -> None:
        self.bits, self.segs, self.low = bits, segs, None

    def planes(self, symbols: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(plane w-2, plane w-1) from the decoded symbols ``y``: the top byte is ``y >> t`` unshifted by its
        segment, the byte below it ``(y & (2**t - 1)) << (8 - t)`` or'ed with its packed low bits."""
        t = self.bits
        y = symbols.astype(np.uint16, copy=False)  # joint symbols are below 256 << 7
        top = (y >> np.uint16(t)).astype(np.uint8)
        if len(self.segs) > 1 or self.segs[0][1]:
            top = _unshift(top, self.segs)
        low = _unpack_bits(self.low, count, 8 - t)
        return ((y << np.uint16(8 - t)).astype(np.uint8) | low), top


def _pack_bits(values: np.ndarray, width: int) -> bytes:
    """The low ``width`` bits of each byte, element i in bits [i*width, (i+1)*width) of a little-endian bit
    stream (bit j is bit j % 8 of byte j // 8); unused bits of the last byte are 0.

    Eight values fill exactly ``width`` bytes: each group of eight is assembled in one 64-bit word."""
    n = -(-values.size * width // 8)
    groups = -(-values.size // 8)
    v = np.zeros(groups * 8, np.uint64)
    v[: values.size] = values & ((1 << width) - 1)
    shifts = (np.arange(8, dtype=np.uint64) * np.uint64(width))
    words = np.bitwise_or.reduce(v.reshape(groups, 8) << shifts, axis=1).astype("<u8")
    return words.view(np.uint8).reshape(groups, 8)[:, :width].reshape(-1)[:n].tobytes()


def _unpack_bits(packed: np.ndarray, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`_pack_bits`: ``count`` values of ``width`` bits, eight per 64-bit word."""
    groups = -(-count // 8)
    stream = np.zeros(groups * width, np.uint8)
    stream[: packed.size] = packed
    buf = np.zeros((groups, 8), np.uint8)
    buf[:, :width] = stream.reshape(groups, width)
    words = buf.view("<u8")  # (groups, 1)
    shifts = (np.arange(8, dtype=np.uint64) * np.uint64(width))
    return ((words >> shifts) & np.uint64((1 << width) - 1)).astype(np.uint8).reshape(-1)[:count]


def _check_padding(packed: np.ndarray, nbits: int, pos: int) -> None:
    """The unused bits of a packed bit stream's last byte must be zero."""
    if nbits % 8 and packed.size and int(packed[-1]) >> (nbits % 8):
        raise CorruptDataError("bytesplit joint plane: unused bits of the packed low bits are not zero",
                               offset=pos + packed.size - 1)


def _read_joint(buf, pos: int, count: int, k: int) -> tuple[_Joint, FrequencyTable, int, int]:
    """Parse a joint plane's header: (joint, table, block length, position of the block); every field checked."""
    what = f"bytesplit plane {k} (joint)"
    if pos >= len(buf):
        raise CorruptDataError(f"{what}: bit count is truncated", offset=pos)
    t = buf[pos]
    if not 1 <= t <= 7:
        raise CorruptDataError(f"{what}: {t} joined bits (1..7 allowed)", offset=pos)
    segs, pos = _read_segments(buf, pos + 1, count, k)
    table, pos = _read_joint_table(buf, pos, t, what)
    n, pos = _read_varint(buf, pos, f"{what} block length")
    if n > len(buf) - pos:
        raise CorruptDataError(f"{what}: block runs past the chunk", offset=pos)
    return _Joint(t, segs), table, n, pos


def _joint_table_parts(table: FrequencyTable, t: int) -> tuple[FrequencyTable, np.ndarray]:
    """What :func:`_joint_table_bytes` stores: the table of the top symbols ``y >> t`` (frequencies summed
    over their ``2**t`` joint symbols) and, per top symbol in order, the frequencies of its joint symbols
    ``0 .. 2**t - 2`` (0 = absent; the last is the remainder, not stored)."""
    top = table.symbols.astype(np.int64) >> t
    tops, first = np.unique(top, return_index=True)
    sums = np.add.reduceat(table.freqs.astype(np.int64), first)
    sub = np.zeros((tops.size, 1 << t), np.int64)
    sub[np.searchsorted(tops, top), table.symbols.astype(np.int64) & ((1 << t) - 1)] = table.freqs
    return FrequencyTable(table.precision, tops, sums), sub[:, :-1]


def _joint_table_bytes(table: FrequencyTable, t: int) -> bytes:
    """The joint table in its stored form: the top-symbol table (section 6.1), then the sub-frequencies of
    :func:`_joint_table_parts` as varints."""
    tops, stored = _joint_table_parts(table, t)
    return b"".join([tops.to_bytes()] + [leb128(int(f)) for f in stored.reshape(-1)])


def _joint_table_size(table: FrequencyTable, t: int) -> int:
    """``len(_joint_table_bytes(table, t))`` without writing it: the encoder sizes nine candidate tables a
    chunk, and writing each took a quarter of a lossless save."""
    tops, stored = _joint_table_parts(table, t)
    # sub-frequencies are below 2**17 (Q <= 16): one to three varint bytes each
    return tops.stored_size() + int(stored.size + np.count_nonzero(stored >= 1 << 7)
                                    + np.count_nonzero(stored >= 1 << 14))


def _read_joint_table(buf, pos: int, t: int, what: str) -> tuple[FrequencyTable, int]:
    """Parse a joint table (:func:`_joint_table_bytes`): every sub-frequency is bounded by what is left of its
    top symbol's frequency, so the joint table is valid by construction (sum 2**Q, every frequency >= 1)."""
    if ans.compiled_active():  # one compiled call; anything irregular falls through to the checks below
        from . import kernels_numba  # noqa: PLC0415 - optional accelerator, loaded on first use

        parsed = kernels_numba.parse_joint_table(np.frombuffer(buf, np.uint8), pos, t)
        if parsed is not None:
            q, symbols, freqs, end = parsed
            return FrequencyTable._unchecked(q, symbols, freqs), end
    try:
        tops, pos = FrequencyTable.from_bytes(buf, pos)
    except RdcError as exc:
        raise exc.with_context(record="chunk")
    if tops.symbols[-1] > 255:
        raise CorruptDataError(f"{what}: table has top symbols above 255", offset=pos)
    per = (1 << t) - 1
    if len(buf) - pos < tops.symbols.size * per:  # each varint takes at least a byte: checked before the loop
        raise CorruptDataError(f"{what}: joint frequencies are truncated", offset=pos)
    fast = _joint_frequencies(buf, pos, tops, t)
    if fast is not None:
        return fast
    # anything irregular: the loop below finds the first problem and names it
    symbols, freqs = [], []
    for e, f in zip(tops.symbols.tolist(), tops.freqs.tolist()):
        left = f
        for j in range(per + 1):
            if j < per:
                at = pos
                g, pos = _read_varint(buf, pos, f"{what} joint frequency")
                if g > left:
                    raise CorruptDataError(f"{what}: joint frequency {g} is over the {left} left of its top "
                                           f"symbol's {f}", offset=at)
            else:
                g = left
            left -= g
            if g:
                symbols.append((e << t) | j)
                freqs.append(g)
    return FrequencyTable(tops.precision, symbols, freqs), pos


def _joint_frequencies(buf, pos: int, tops: FrequencyTable, t: int) -> tuple[FrequencyTable, int] | None:
    """:func:`_read_joint_table`'s sub-frequencies read at once (a table of a large chunk has hundreds, and a
    loop over them cost a sixth of a lossless load); None when anything is irregular (a varint that is long,
    non-canonical or truncated, a sum over its top symbol's frequency), for the loop to report."""
    per = (1 << t) - 1
    m = tops.symbols.size
    try:
        values, end = _varint_decode_many(np.frombuffer(buf, np.uint8), pos, m * per, "joint frequency")
    except RdcError:
        return None
    sub = values.astype(np.int64).reshape(m, per)
    top_freqs = tops.freqs.astype(np.int64)
    used = np.cumsum(sub, axis=1)
    if (used > top_freqs[:, None]).any():
        return None
    full = np.concatenate([sub, (top_freqs - used[:, -1])[:, None]], axis=1)
    present = full > 0
    joint = (tops.symbols.astype(np.int64)[:, None] << t) | np.arange(per + 1, dtype=np.int64)
    return FrequencyTable(tops.precision, joint[present], full[present]), end


def _joint_bound(counts: np.ndarray, symbols: np.ndarray, t: int) -> float:
    """A lower bound of ``_joint_table_size(table, t) + table.cost_bits(counts) / 8`` for every table of
    these joint symbols (increasing) and counts: their entropy (no table codes below it) plus the smallest
    stored table (precision byte, count, a gap and a frequency byte per top symbol, ``2**t - 1``
    sub-frequency bytes each)."""
    c = counts.astype(np.float64)
    entropy = float(-(c * np.log2(c / c.sum())).sum()) / 8
    top = symbols >> t
    tops = int(np.count_nonzero(top[1:] != top[:-1])) + 1
    return entropy + 2 + tops * (2 + (1 << t) - 1)


def _encode_joint(top: np.ndarray, below: np.ndarray, segs: list[tuple[int, int]], budget: int) -> bytes | None:
    """Planes w-1 (``top``) and w-2 (``below``) as one PLANE_ANS_JOINT plane, for the joined bit count whose
    estimated size is smallest; None unless that is smaller than ``budget`` bytes (the two planes apart)."""
    merged, shifts = _merged_runs(segs)
    exp = _shift_bytes(top, shifts).astype(np.uint32)
    head = b"".join([leb128(len(merged))] + [leb128(n) + bytes([s]) for n, s in merged])
    count = top.size
    # one histogram at the finest split; every coarser one sums its columns (no pass over the chunk each)
    finest_bits = max(JOINT_BITS)
    finest = np.bincount((exp << finest_bits) | (below >> (8 - finest_bits)).astype(np.uint32))
    finest = np.concatenate([finest, np.zeros(-finest.size % (1 << finest_bits), finest.dtype)])
    finest = finest.reshape(-1, 1 << finest_bits)
    best = None
    for t in JOINT_BITS:
        counts = finest.reshape(finest.shape[0], 1 << t, -1).sum(axis=2).reshape(-1)
        present = np.flatnonzero(counts)
        low = -(-count * (8 - t) // 8)
        if best is not None and _joint_bound(counts[present], present, t) + 16 + low > best[0] * (1 + 1e-9):
            continue  # no table of this split can beat the best one: not built (small chunks try many)
        for q in sorted({min(max(p, int(present.size - 1).bit_length() + 1), 16) for p in (10, 12, 14)}):
            table = FrequencyTable._from_histogram(present, counts[present], q)
            estimate = _joint_table_size(table, t) + table.cost_bits(counts[present]) / 8 + 16 + low
            if best is None or estimate < best[0]:
                best = (estimate, t, table)
    if best is None or best[0] + len(head) + 4 >= budget:
        return None
    _estimate, t, table = best
    block = ans.encode((exp << t) | (below >> (8 - t)).astype(np.uint32), table)
    data = b"".join([bytes([PLANE_ANS_JOINT, t]), head, _joint_table_bytes(table, t), leb128(len(block)), block,
                     _pack_bits(below & ((1 << (8 - t)) - 1), 8 - t)])
    return data if len(data) < budget else None


def plane_modes(data: bytes | memoryview, count: int, itemsize: int) -> set[int]:
    """The plane modes bytesplit chunk ``data`` (of a valid file) uses: 4 needs format 1.5, 5 format 1.6."""
    buf = byte_view(data)  # no copy: the writer asks this of every chunk it writes
    modes: set[int] = set()
    pos, k = 0, 0
    while k < itemsize and pos < len(buf):
        mode = buf[pos]
        modes.add(mode)
        pos += 1
        if mode == PLANE_RAW:
            pos += count
        elif mode == PLANE_CONSTANT:
            pos += 1
        elif mode == PLANE_ANS_JOINT:
            _joint, _table, n, pos = _read_joint(buf, pos, count, k)
            return modes  # the last plane pair
        elif mode == PLANE_ANS_SHIFTED:
            _segs, pos = _read_segments(buf, pos, count, k)
            _table, pos = FrequencyTable.from_bytes(buf, pos)
            n, pos = _read_varint(buf, pos, "block length")
            pos += n
        else:
            _table, pos = FrequencyTable.from_bytes(buf, pos)
            pos += 8 + int.from_bytes(buf[pos : pos + 8], "little")
        k += 1
    return modes


def uses_shifted(data: bytes | memoryview, count: int, itemsize: int) -> bool:
    """Whether bytesplit chunk ``data`` (of a valid file) holds a PLANE_ANS_SHIFTED plane (format 1.5)."""
    return PLANE_ANS_SHIFTED in plane_modes(data, count, itemsize)


def format_minor(data: bytes | memoryview, count: int, itemsize: int) -> int:
    """The file format minor version bytesplit chunk ``data`` needs: 6 with a joint plane, 5 with a shifted
    plane, else 0 (modes 0-3 exist since 1.0)."""
    modes = plane_modes(data, count, itemsize)
    return 6 if PLANE_ANS_JOINT in modes else 5 if PLANE_ANS_SHIFTED in modes else 0
