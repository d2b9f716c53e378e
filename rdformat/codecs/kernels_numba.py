"""Compiled (numba) kernels for the per-element work of the codecs, bit-exact with their numpy code.

An optional accelerator like :mod:`rdformat.entropy.ans_numba` (whose stored-table parser it reuses): imports
only numpy, numba, that module and the standard library, takes and returns plain numpy arrays, and
:data:`AVAILABLE` is ``False`` (the functions raise ``RuntimeError``) when numba is missing. Every kernel is
compiled with ``cache=True`` and ``nogil=True``.

* :func:`interleave_planes` - ``bytesplit``: byte planes -> elements, undoing ``rotl1`` on the way
  (replaces the ``planes[:, k] = ...`` fills, ``planes.view`` and ``_rotate(..., left=False)`` of
  ``ByteSplitCodec.plan_chunk``'s ``finish``); :func:`interleave_sources` does the same for 2- and 4-byte
  words reading each plane where it lies (chunk bytes, decoder output), without a plane matrix.
* :func:`joint_planes` - ``bytesplit`` plane mode 5: joint symbols and packed low bits -> the two planes
  (replaces ``_Joint.planes``' numpy passes).
* :func:`unshift_plane` - ``bytesplit`` plane mode 4: shifted bytes -> the plane (replaces ``_unshift``).
* :func:`gather_groups` - ``sq``/``dq``: decoded ranks (or group symbols) -> the ``k`` values of each
  group, cut at ``count`` (replaces ``lut[symbols].reshape(-1)[:count]`` in ``sq.group_values``).
* :func:`group_rows` - ``sq``/``dq``: a level table's group symbols -> the ``sq`` values (or levels) of
  each group (replaces ``_ungroup``, ``unzigzag``, ``dequantize`` and the table fill of a chunk: a dozen
  numpy calls on a few dozen symbols, most of a small chunk's decode).
* :func:`dq_reconstruct` - ``dq``: levels -> values through the 4-state trellis (replaces
  ``rdformat.codecs.dq.dq_reconstruct`` for float32/float64 outputs).
* :func:`parametric_freqs` - ``sq``/``dq``: the frequencies of a chunk's two-parameter model (replaces the
  numpy passes of ``sq._parametric_freqs``).
* :func:`place_class` - ``dq`` CLASSES: one class's levels into its segments of the chunk (replaces a
  padded row matrix and a masked assignment per class).
* :func:`plane_histograms` - ``bytesplit`` encoder: byte and byte-pair counts of a plane (replaces two
  ``np.bincount`` calls and the pair array they need).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["AVAILABLE", "interleave_planes", "interleave_sources", "joint_planes", "unshift_plane", "gather_groups", "group_rows", "dq_reconstruct",
           "plane_histograms", "parametric_freqs", "place_class", "DQ_NEXT_STATE"]

try:
    from numba import njit
except ImportError:  # optional accelerator
    njit = None
AVAILABLE = njit is not None

#: ``next_state = DQ_NEXT_STATE[state, level & 1]`` (spec 5.4; ``rdformat.codecs.dq.NEXT_STATE``); the
#: quantizer of a state is ``state >> 1``.
DQ_NEXT_STATE = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], dtype=np.int64)


def _octet_tables() -> tuple[np.ndarray, np.ndarray]:
    """For index ``state << 8 | parities`` (bit j = parity of the j-th of eight levels): the eight
    quantizer bits (bit j = quantizer of level j) and the state after the eight."""
    index = np.arange(4 << 8, dtype=np.int64)
    state = index >> 8
    quantizers = np.zeros(index.size, dtype=np.int64)
    for j in range(8):
        quantizers |= (state >> 1) << j
        state = DQ_NEXT_STATE[state, (index >> j) & 1]
    return quantizers.astype(np.uint8), state.astype(np.uint8)


DQ_OCTET_QUANTIZERS, DQ_OCTET_NEXT = _octet_tables()


def _unavailable(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("numba is not installed: the compiled codec kernels are unavailable")


if AVAILABLE:
    from ..entropy.ans_numba import _parse_table_body  # a stored table's body (the joint table's tops)

    _ONE = np.uint64(1)
    _S8 = np.uint64(8)

    @njit(cache=True, nogil=True)
    def _interleave_planes(planes: np.ndarray, count: int, rotate: bool, out: np.ndarray) -> int:
        width = planes.shape[0]
        if count < 0 or count > planes.shape[1] or out.size < count or width < 1 or width > 8:
            return -1
        top = np.uint64(8 * width - 1)
        # widths 2 and 4 take :func:`_interleave2` / :func:`_interleave4` (see interleave_planes)
        for i in range(count):
            word = np.uint64(0)
            for k in range(width - 1, -1, -1):
                word = (word << _S8) | np.uint64(planes[k, i])
            if rotate:  # rotate right by one bit within 8 * width bits (undo rotl1)
                word = (word >> _ONE) | ((word & _ONE) << top)
            out[i] = word
        return 0

    @njit(cache=True, nogil=True)
    def _interleave4(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, count: int, rotate: bool,
                     out: np.ndarray) -> int:
        if count < 0 or min(p0.size, p1.size, p2.size, p3.size, out.size) < count:
            return -1
        for i in range(count):
            word = (np.uint32(p0[i]) | (np.uint32(p1[i]) << np.uint32(8)) | (np.uint32(p2[i]) << np.uint32(16))
                    | (np.uint32(p3[i]) << np.uint32(24)))
            if rotate:
                word = (word >> np.uint32(1)) | (word << np.uint32(31))
            out[i] = word
        return 0

    @njit(cache=True, nogil=True)
    def _interleave2(p0: np.ndarray, p1: np.ndarray, count: int, rotate: bool, out: np.ndarray) -> int:
        if count < 0 or min(p0.size, p1.size, out.size) < count:
            return -1
        for i in range(count):
            half = np.uint16(p0[i]) | (np.uint16(p1[i]) << np.uint16(8))
            if rotate:
                half = (half >> np.uint16(1)) | (half << np.uint16(15))
            out[i] = half
        return 0

    @njit(cache=True, nogil=True, inline="always")
    def _unshift_table(lut: np.ndarray, shift: int) -> None:
        """``lut[b]``: byte ``b`` of a plane shifted by ``shift`` (bytesplit modes 4 and 5) unshifted: 0 stays
        0, b >= 1 becomes ((b - 1 + shift) mod 255) + 1 (a table per segment: no division per element)."""
        lut[0] = 0
        for v in range(1, 256):
            lut[v] = (v - 1 + shift) % 255 + 1

    @njit(cache=True, nogil=True)
    def _joint_planes(symbols: np.ndarray, bits: int, seg_length: np.ndarray, seg_shift: np.ndarray,
                      packed: np.ndarray, count: int, below: np.ndarray, top: np.ndarray) -> int:
        width = 8 - bits
        if (bits < 1 or bits > 7 or count < 0 or symbols.size < count or below.size < count or top.size < count
                or packed.size < (count * width + 7) // 8 or seg_length.size != seg_shift.size):
            return -1
        # the top byte: y >> t, unshifted through a 256-entry table per segment (no division per element)
        lut = np.empty(256, dtype=np.uint8)
        i = 0
        for g in range(seg_length.size):
            end = i + seg_length[g]
            if seg_length[g] < 0 or end > count:
                return -1
            _unshift_table(lut, seg_shift[g])
            for j in range(i, end):
                top[j] = lut[(np.int64(symbols[j]) >> bits) & 255]
            i = end
        if i != count:
            return -1
        # the byte below: (y << (8 - t)) & 255 or'ed with its low bits; eight values fill ``width`` bytes
        mask = np.uint64((1 << width) - 1)
        groups = count // 8
        for gi in range(groups):
            base = gi * width
            word = np.uint64(0)
            for b in range(width):
                word |= np.uint64(packed[base + b]) << np.uint64(8 * b)
            for k in range(8):
                j = gi * 8 + k
                below[j] = ((np.int64(symbols[j]) << width) & 255) | np.int64((word >> np.uint64(k * width)) & mask)
        for j in range(groups * 8, count):
            at = j * width
            byte = at >> 3
            word = np.uint64(packed[byte])
            if byte + 1 < packed.size:
                word |= np.uint64(packed[byte + 1]) << np.uint64(8)
            below[j] = ((np.int64(symbols[j]) << width) & 255) | np.int64((word >> np.uint64(at & 7)) & mask)
        return 0

    @njit(cache=True, nogil=True)
    def _unshift_plane(symbols: np.ndarray, seg_length: np.ndarray, seg_shift: np.ndarray, out: np.ndarray) -> int:
        """Bytes of a shifted plane back to the plane: per segment, byte 0 stays and b >= 1 becomes
        ((b - 1 + shift) mod 255) + 1, through a 256-entry table (no division per element)."""
        if seg_length.size != seg_shift.size:
            return -1
        lut = np.empty(256, dtype=np.uint8)
        i = 0
        for g in range(seg_length.size):
            end = i + seg_length[g]
            if seg_length[g] < 0 or end > symbols.size or end > out.size:
                return -1
            _unshift_table(lut, seg_shift[g])
            for j in range(i, end):
                out[j] = lut[symbols[j] & 255]
            i = end
        return 0 if i == symbols.size else -1

    @njit(cache=True, nogil=True)
    def _gather_groups(index: np.ndarray, values: np.ndarray, count: int, out: np.ndarray) -> int:
        rows, k = values.shape
        if count < 0 or out.size < count or index.size * k < count or k < 1:
            return -2
        whole = count // k  # groups copied entirely; the last one may be cut at count
        if k == 1:
            for i in range(whole):
                r = np.int64(index[i])
                if r < 0 or r >= rows:
                    return i
                out[i] = values[r, 0]
        else:
            for i in range(whole):
                r = np.int64(index[i])
                if r < 0 or r >= rows:
                    return i
                for j in range(k):
                    out[i * k + j] = values[r, j]
        tail = count - whole * k
        if tail:
            r = np.int64(index[whole])
            if r < 0 or r >= rows:
                return whole
            for j in range(tail):
                out[whole * k + j] = values[r, j]
        return -1

    @njit(cache=True, nogil=True)
    def _group_rows(symbols: np.ndarray, k: int, radix: int, step: float, offset1: float, offset2: float,
                    values: np.ndarray) -> int:
        """Row ``s`` of ``values``: the ``k`` levels of group symbol ``s`` of ``symbols`` (digits base
        ``radix``, zigzag), dequantized by the ``sq`` rule; -1, or the first index whose symbol is outside
        the rows."""
        for i in range(symbols.size):
            s = np.int64(symbols[i])
            r = s
            if r < 0 or r >= values.shape[0]:
                return i
            for j in range(k):
                z = s % radix
                s //= radix
                q = (z >> 1) ^ -(z & 1)  # zigzag: 0, 1, 2, 3, 4 ... -> 0, -1, 1, -2, 2 ...
                if q == 0:
                    values[r, j] = 0.0
                else:
                    # spec 5.3 in float64, the operations of sq.dequantize in its order
                    m = np.float64(abs(q))
                    mag = (m - (offset1 if m == 1.0 else offset2)) * step
                    values[r, j] = -mag if q < 0 else mag
        return -1

    @njit(cache=True, nogil=True)
    def _dq_reconstruct(levels: np.ndarray, step: float, chain: int, next_state: np.ndarray,
                        octet_quantizers: np.ndarray, octet_next: np.ndarray, out: np.ndarray) -> int:
        n = levels.size
        if chain < 1 or out.size < n:
            return -1
        # the transition table packed 2 bits per (state, parity): a shift instead of a dependent load
        packed = 0
        for s in range(4):
            for parity in range(2):
                packed |= np.int64(next_state[s, parity]) << (2 * (2 * s + parity))
        done = 0  # elements reconstructed by the eight-at-a-time passes
        state = 0  # the state after them (0 if they end where a chain ends)
        if chain % 8 == 0:
            # Chains cover whole octets: three passes that each run at memory speed, where one walk of
            # the state (a dependent shift per element) cost ~2 ns an element. (1) The levels' parities,
            # eight to a byte (vectorised); (2) per chain, one table step per octet turns its parities
            # into its eight quantizer bits (in place) and the state after it; (3) the values.
            octets = n // 8
            bits = np.empty(octets, dtype=np.uint8)
            for k in range(octets):
                b = 0
                for j in range(8):
                    b |= (levels[8 * k + j] & 1) << j
                bits[k] = b
            per_chain = chain // 8
            for first in range(0, octets, per_chain):
                state = 0
                for k in range(first, min(first + per_chain, octets)):
                    index = (state << 8) | np.int64(bits[k])
                    bits[k] = octet_quantizers[index]
                    state = np.int64(octet_next[index])
            if octets % per_chain == 0:
                state = 0  # the leftover elements start a chain
            for k in range(octets):
                quantizers = np.int32(bits[k])
                for j in range(8):
                    q = levels[8 * k + j]
                    sign = np.int32(q > 0) - np.int32(q < 0)
                    out[8 * k + j] = np.float64(2 * q - sign * ((quantizers >> j) & 1)) * step
            done = 8 * octets
        for first in range(done, n, chain):
            if first > done:
                state = 0  # every chain starts in state 0 (the first one here: where the octets left it)
            for i in range(first, min(first + chain, n)):
                q = np.int64(levels[i])
                # k != 0: x = (2k - sgn(k) * quantizer) * S, an exact integer times S (float64, then rounded)
                sign = np.int64(q > 0) - np.int64(q < 0)
                out[i] = np.float64(2 * q - sign * (state >> 1)) * step
                state = (packed >> (2 * (2 * state + (q & 1)))) & 3
        return 0

    @njit(cache=True, nogil=True)
    def _plane_histograms(plane: np.ndarray, counts: np.ndarray, pair_counts: np.ndarray) -> None:
        if pair_counts.size == 0:
            for i in range(plane.size):
                counts[plane[i]] += 1
            return
        # one pass over the pairs; the byte counts follow from them (low byte + high byte of each pair)
        last = plane.size - 1
        for i in range(0, last, 2):
            pair_counts[np.int64(plane[i]) | (np.int64(plane[i + 1]) << 8)] += 1
        if plane.size & 1:  # the odd last byte pairs with a zero pad byte
            pair_counts[plane[last]] += 1
        for hi in range(256):
            for lo in range(256):
                c = pair_counts[(hi << 8) | lo]
                counts[lo] += c
                counts[hi] += c
        if plane.size & 1:
            counts[0] -= 1  # the pad byte is not part of the plane

    @njit(cache=True, nogil=True)
    def _split_planes4(words: np.ndarray, rotate: bool, p0: np.ndarray, p1: np.ndarray, p2: np.ndarray,
                       p3: np.ndarray) -> None:
        # in the words' own unsigned type, without counting: the loop vectorises (counting in it would not)
        one, top, byte = np.uint32(1), np.uint32(31), np.uint32(255)
        for i in range(words.size):
            x = words[i]
            if rotate:
                x = (x << one) | (x >> top)
            p0[i] = x & byte
            p1[i] = (x >> np.uint32(8)) & byte
            p2[i] = (x >> np.uint32(16)) & byte
            p3[i] = x >> np.uint32(24)

    @njit(cache=True, nogil=True)
    def _split_planes2(words: np.ndarray, rotate: bool, p0: np.ndarray, p1: np.ndarray) -> None:
        one, top, byte = np.uint16(1), np.uint16(15), np.uint16(255)
        for i in range(words.size):
            x = words[i]
            if rotate:
                x = (x << one) | (x >> top)
            p0[i] = x & byte
            p1[i] = x >> np.uint16(8)

    @njit(cache=True, nogil=True)
    def _byte_counts4(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, sub: np.ndarray) -> None:
        # four planes in one pass, two partial histograms per plane (element i counts in copy i & 1; plane k's
        # at 512 k): a plane of few distinct bytes (exponents) would otherwise wait on the previous
        # increment of the same counter
        for i in range(p0.size):
            c = (i & 1) << 8
            sub[c + p0[i]] += 1
            sub[512 + c + p1[i]] += 1
            sub[1024 + c + p2[i]] += 1
            sub[1536 + c + p3[i]] += 1

    @njit(cache=True, nogil=True)
    def _byte_counts2(p0: np.ndarray, p1: np.ndarray, sub: np.ndarray) -> None:
        for i in range(p0.size):
            c = (i & 1) << 8
            sub[c + p0[i]] += 1
            sub[512 + c + p1[i]] += 1

    @njit(cache=True, nogil=True, inline="always")
    def _varint_at(data: np.ndarray, pos: int) -> tuple[int, int]:
        """(value, position after it) of a canonical varint of at most 5 bytes below 2**32 at ``data[pos]``;
        (-1, -1) for anything else (truncated, too long, non-canonical, too large)."""
        value = np.int64(0)
        for i in range(5):
            if pos + i >= data.size:
                return -1, -1
            byte = np.int64(data[pos + i])
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                if i > 0 and byte == 0:
                    return -1, -1
                if value >= np.int64(1) << 32:
                    return -1, -1
                return value, pos + i + 1
        return -1, -1

    @njit(cache=True, nogil=True)
    def _parse_joint_table(data: np.ndarray, pos: int, t: int, symbols: np.ndarray,
                           freqs: np.ndarray) -> tuple[int, int, int]:
        """(precision, number of joint symbols, end), or (-1, -1, -1) for anything irregular."""
        if pos >= data.size or t < 1 or t > 7:
            return -1, -1, -1
        q = np.int64(data[pos])
        if q < 1 or q > 16:
            return -1, -1, -1
        m, at = _varint_at(data, pos + 1)
        if m < 1 or m > 256 or m > (np.int64(1) << q):  # top symbols are bytes
            return -1, -1, -1
        # the top symbols' table is a stored table (spec 6.1)
        tops = np.empty(m, dtype=np.uint32)
        top_freqs = np.empty(m, dtype=np.uint32)
        at = _parse_table_body(data, at, m, q, tops, top_freqs)
        if at < 0 or tops[m - 1] > 255:
            return -1, -1, -1
        per = (np.int64(1) << t) - 1
        n = np.int64(0)
        for i in range(m):
            left = np.int64(top_freqs[i])
            for j in range(per + 1):
                if j < per:
                    g, at = _varint_at(data, at)
                    if g < 0 or g > left:
                        return -1, -1, -1
                else:
                    g = left
                left -= g
                if g > 0:
                    if n >= symbols.size:
                        return -1, -1, -1
                    symbols[n] = (np.int64(tops[i]) << t) | j
                    freqs[n] = g
                    n += 1
        return q, n, at

    @njit(cache=True, nogil=True)
    def _parametric_freqs(radix: int, precision: int, p0: int, theta: int, freqs: np.ndarray) -> None:
        total = np.int64(1) << precision
        nonzero = radix - 1
        f0 = max(1, min(total - nonzero, (p0 * total) >> 16))
        rest = total - f0 - nonzero
        top = (radix - 1 + 1) >> 1  # the largest magnitude, of symbol radix - 1
        weight = np.zeros(top + 1, dtype=np.int64)
        value = np.int64(1) << 24
        for m in range(1, top + 1):  # w(1) = 2**24, w(m + 1) = (w(m) * theta) >> 16: exact integers
            weight[m] = value
            value = (value * theta) >> 16
        wsum = np.int64(0)
        for s in range(1, radix):
            wsum += weight[(s + 1) >> 1]
        used = np.int64(0)
        for s in range(1, radix):
            f = (rest * weight[(s + 1) >> 1]) // wsum + 1 if wsum else np.int64(1)
            freqs[s] = f
            used += f
        freqs[0] = total - used

    @njit(cache=True, nogil=True)
    def _place_class(values: np.ndarray, classes: np.ndarray, c: int, width: int, out: np.ndarray) -> int:
        n = out.size
        at = 0
        for seg in range(classes.size):
            if classes[seg] != c:
                continue
            start = seg * width
            end = min(start + width, n)
            if start >= end or at + (end - start) > values.size:
                return -1
            for i in range(start, end):
                out[i] = values[at]
                at += 1
        return at

else:
    _interleave_planes = _interleave4 = _interleave2 = _joint_planes = _unavailable
    _gather_groups = _dq_reconstruct = _plane_histograms = _unshift_plane = _group_rows = _unavailable
    _parse_joint_table = _parametric_freqs = _place_class = _split_planes4 = _split_planes2 = _byte_counts4 = _byte_counts2 = _unavailable


def parametric_freqs(radix: int, precision: int, p0: int, theta: int, dtype: Any = np.int64) -> np.ndarray:
    """``sq``'s two-parameter model (spec 5.3): the frequencies (by symbol, ``int64`` or ``uint32``) of
    ``rdformat.codecs.sq.parametric_table`` for parameters it has checked (replaces ``_parametric_freqs``'
    numpy passes and cached weights)."""
    freqs = np.empty(radix, dtype=dtype)
    _parametric_freqs(radix, precision, p0, theta, freqs)
    return freqs


def place_class(values: np.ndarray, classes: np.ndarray, c: int, width: int, out: np.ndarray) -> int:
    """``dq`` CLASSES: the levels of class ``c`` (``values``, int32, in order) into the segments of ``out``
    (the chunk's int32 levels, cut into segments of ``width``; the last may be shorter) whose class in
    ``classes`` is ``c`` (replaces a padded row matrix, a mask and its assignment per class). Returns the
    number of values placed.

    Raises:
        ValueError: ``values`` too short for the class's segments or a segment past ``out`` (a caller bug:
            the class sizes come from ``classes``).
    """
    placed = _place_class(values, classes, int(c), int(width), out)
    if placed < 0:
        raise ValueError("place_class: the class's segments need more values or lie outside the chunk")
    return placed


def split_planes(words: np.ndarray, rotate: bool) -> tuple[np.ndarray, np.ndarray]:
    """``bytesplit`` encoder: the byte planes of ``uint16``/``uint32`` words in one pass, with their byte counts.

    Args:
        words: a 1-D ``uint16`` or ``uint32`` array (the chunk's elements viewed as unsigned words).
        rotate: apply ``rotl1`` first (rotate each word left by one bit).

    Returns:
        ``(planes, counts)``: ``planes[k]`` (a C-contiguous ``uint8`` row) is byte ``k`` (little-endian) of
        every (rotated) word; ``counts[k]`` (``int64[256]``) is ``np.bincount(planes[k], minlength=256)``.
    """
    words = np.ascontiguousarray(words).reshape(-1)
    width = words.dtype.itemsize
    if words.dtype.kind != "u" or width not in (2, 4):
        raise ValueError(f"split_planes: needs uint16 or uint32 words, got {words.dtype}")
    planes = np.empty((width, words.size), dtype=np.uint8)
    sub = np.zeros(width * 512, dtype=np.int64)
    if width == 4:
        _split_planes4(words, bool(rotate), planes[0], planes[1], planes[2], planes[3])
        _byte_counts4(planes[0], planes[1], planes[2], planes[3], sub)
    else:
        _split_planes2(words, bool(rotate), planes[0], planes[1])
        _byte_counts2(planes[0], planes[1], sub)
    return planes, sub.reshape(width, 2, 256).sum(axis=1)


def plane_histograms(plane: np.ndarray, pairs: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``bytesplit`` encoder statistics of a contiguous ``uint8`` plane in one pass each: the count of every
    byte value (``int64[256]``, ``np.bincount(plane, minlength=256)``) and, with ``pairs``, of every byte
    pair ``b[2i] + 256 * b[2i+1]`` (``int64[65536]``; an odd plane is padded with a zero byte)."""
    counts = np.zeros(256, dtype=np.int64)
    pair_counts = np.zeros(1 << 16 if pairs else 0, dtype=np.int64)
    _plane_histograms(plane, counts, pair_counts)
    return counts, (pair_counts if pairs else None)


def interleave_planes(planes: np.ndarray, count: int, rotate: bool, out: np.ndarray | None = None) -> np.ndarray:
    """Elements from their byte planes: ``out[i]`` has byte ``k`` (little-endian) equal to ``planes[k, i]``.

    Args:
        planes: ``uint8`` array of shape ``(w, >= count)``, ``w`` in 1..8: plane ``k`` of every element
            (raw planes copied in, constant planes filled, ANS planes decoded straight into their row,
            e.g. by ``ans_numba.decode_blocks`` with ``out=planes.reshape(-1)``).
        count: number of elements.
        rotate: undo ``rotl1`` (rotate each ``8w``-bit word right by one bit).
        out: optional destination, ``uint8``/``uint16``/``uint32``/``uint64`` matching ``w`` (allocated if None).

    Returns:
        ``out[:count]`` as unsigned words (view it as the tensor's dtype). Bit-exact with ``bytesplit``'s
        numpy ``finish``.

    Raises:
        ValueError: ``count`` larger than the planes, ``w`` not in 1..8, or ``out`` too small.
    """
    width = planes.shape[0]
    if out is None:
        out = np.empty(count, dtype={1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(width, np.uint64))
    if width in (2, 4) and planes.ndim == 2 and planes.shape[1] >= count:
        # the rows of a C-ordered plane matrix are contiguous vectors: the loops of interleave_sources
        interleave_sources(list(planes), count, rotate, out)
    elif _interleave_planes(planes, count, rotate, out) != 0:
        raise ValueError(f"interleave_planes: bad shapes (planes {planes.shape}, count {count}, out {out.shape})")
    return out[:count]


def interleave_sources(sources: list[np.ndarray], count: int, rotate: bool, out: np.ndarray) -> bool:
    """:func:`interleave_planes` reading each plane from its own 1-D ``uint8`` array (a raw plane in the
    chunk's bytes, an ANS plane where the decoder wrote it), so no plane is copied first.

    Only for 2 or 4 planes (``float16``/``bfloat16`` and ``float32``/``int32`` words); returns False, doing
    nothing, for other widths (the caller then fills a plane matrix). ``out`` is ``uint16``/``uint32``.

    Raises:
        ValueError: a source or ``out`` shorter than ``count``.
    """
    # one compiled signature per width: every source as a read-only C-contiguous uint8 vector
    src = []
    for a in sources:
        a = np.ascontiguousarray(a, dtype=np.uint8).reshape(-1)
        if a.flags.writeable:
            a = a.view()
            a.flags.writeable = False
        src.append(a)
    if len(src) == 4:
        status = _interleave4(src[0], src[1], src[2], src[3], count, rotate, out)
    elif len(src) == 2:
        status = _interleave2(src[0], src[1], count, rotate, out)
    else:
        return False
    if status != 0:
        raise ValueError(f"interleave_sources: a plane or the output is shorter than {count}")
    return True


def joint_planes(symbols: np.ndarray, bits: int, segs: tuple, packed: np.ndarray,
                 count: int) -> tuple[np.ndarray, np.ndarray]:
    """``bytesplit`` joint plane (mode 5) -> (plane w-2, plane w-1), bit-exact with ``_Joint.planes``.

    ``symbols``: the decoded joint symbols ``y`` (< 256 << 7); ``bits``: ``t``; ``segs``: the top plane's
    ``((length, shift), ...)`` segments (lengths summing to ``count``); ``packed``: the low ``8 - t`` bits of
    plane w-2, ``count`` values packed little-endian. The top byte is ``y >> t`` unshifted by its segment's
    shift, the byte below it ``(y << (8 - t)) & 255`` or'ed with its low bits.

    Raises:
        ValueError: inconsistent sizes (segments not covering ``count``, too few packed bytes).
    """
    below = np.empty(count, dtype=np.uint8)
    top = np.empty(count, dtype=np.uint8)
    lengths = np.fromiter((n for n, _s in segs), np.int64, len(segs))
    shifts = np.fromiter((sh for _n, sh in segs), np.int64, len(segs))
    if _joint_planes(symbols.reshape(-1), int(bits), lengths, shifts, packed, int(count), below, top) != 0:
        raise ValueError("joint_planes: segments, symbols or packed bits do not match the count")
    return below, top


def parse_joint_table(data: np.ndarray, pos: int, t: int) -> tuple[int, np.ndarray, np.ndarray, int] | None:
    """A ``bytesplit`` joint table (plane mode 5, spec 5.2) at ``data[pos]`` (``uint8``) for ``t`` joined bits:
    ``(precision, joint symbols, their frequencies, end)`` (symbols increasing, frequencies >= 1 summing to
    ``2**precision``: a valid table), bit-exact with ``bytesplit._read_joint_table``; None when anything is
    irregular (a varint that is truncated, long or non-canonical, a top symbol over 255, a bad precision,
    count, frequency or sum), for that parser to name the error. One compiled call: the Python parser cost
    ~95 us a chunk, a tenth of a small model's load."""
    width = (1 << t) * 256
    symbols = np.empty(width, dtype=np.int64)
    freqs = np.empty(width, dtype=np.int64)
    q, n, end = _parse_joint_table(data, int(pos), int(t), symbols, freqs)
    if q < 0:
        return None
    return int(q), symbols[:n], freqs[:n], int(end)


def unshift_plane(symbols: np.ndarray, segs: tuple) -> np.ndarray:
    """``bytesplit`` plane mode 4: the decoded bytes of a shifted plane, unshifted by their segments'
    ``((length, shift), ...)`` (lengths summing to the symbol count); bit-exact with ``bytesplit._unshift``.

    Raises:
        ValueError: the segments do not cover the symbols.
    """
    lengths = np.fromiter((n for n, _s in segs), np.int64, len(segs))
    shifts = np.fromiter((sh for _n, sh in segs), np.int64, len(segs))
    syms = symbols.reshape(-1)
    if syms.dtype != np.uint8:
        syms = syms.astype(np.uint8)  # plane symbols are bytes
    out = np.empty(syms.size, dtype=np.uint8)
    if _unshift_plane(syms, lengths, shifts, out) != 0:
        raise ValueError("unshift_plane: the segments do not cover the symbols")
    return out


def gather_groups(index: np.ndarray, values: np.ndarray, count: int, out: np.ndarray | None = None) -> tuple[int, np.ndarray]:
    """``out[i * k + j] = values[index[i], j]`` for the first ``count`` positions (``k = values.shape[1]``).

    Args:
        index: 1-D integer array: per group, a row of ``values`` (the ranks an ANS table built with
            ``values = arange(m)`` decodes to, or dense group symbols).
        values: 2-D ``(rows, k)`` array of any dtype (e.g. the dequantized values of each table symbol's
            group, float32; view float16/bfloat16 as uint16): what each row expands to.
        count: elements wanted (``<= index.size * k``; the padding of the last group is dropped).
        out: optional 1-D destination of ``values``' dtype with at least ``count`` elements.

    Returns:
        ``(status, out[:count])``: ``status`` is -1 on success, else the position in ``index`` of the first
        entry outside ``0..rows-1`` (corrupt data: the rest of ``out`` is undefined).

    Raises:
        ValueError: ``count`` larger than the groups hold, or ``out`` too small.
    """
    if out is None:
        out = np.empty(count, dtype=values.dtype)
    status = _gather_groups(index, values, count, out)
    if status == -2:
        raise ValueError(f"gather_groups: {count} elements do not fit {index.size} groups of {values.shape[1]} "
                         f"or an output of {out.size}")
    return int(status), out[:count]


def group_rows(symbols: np.ndarray, k: int, radix: int, step: float = 1.0, offset1: float = 0.0,
               offset2: float = 0.0) -> np.ndarray:
    """The ``sq`` values of each group symbol of a level table (spec 5.3), one row per possible symbol.

    Args:
        symbols: the table's group symbols (``FrequencyTable.symbols``: increasing, each below
            ``radix ** k``).
        k, radix: the group size and digit radix of the chunk.
        step, offset1, offset2: the dequantization; the defaults give the levels themselves (exact in
            float64: ``.astype(np.int32)`` for ``dq``).

    Returns:
        A float64 ``(radix ** k, k)`` array, row ``s`` for symbol ``s`` (rows of absent symbols zero), to
        be rounded to the tensor's dtype by the caller, as ``sq.dequantize`` does.

    Raises:
        ValueError: a symbol outside ``radix ** k`` rows (a caller bug: tables are checked when parsed).
    """
    values = np.zeros((radix ** k, k), dtype=np.float64)
    if _group_rows(symbols, int(k), int(radix), float(step), float(offset1), float(offset2), values) != -1:
        raise ValueError(f"group_rows: a symbol is outside the {radix ** k} rows of radix {radix}, k {k}")
    return values


def dq_reconstruct(levels: np.ndarray, step: float, chain: int, out_dtype: Any = np.float32,
                   out: np.ndarray | None = None) -> np.ndarray:
    """The ``dq`` reconstruction (spec 5.4), bit-exact with ``rdformat.codecs.dq.dq_reconstruct``.

    Each chain of ``chain`` consecutive levels starts in state 0; a level ``k`` in state ``s`` uses quantizer
    ``s >> 1`` and gives ``(2k - sgn(k) * (s >> 1)) * step`` computed in float64, then rounded to the output
    dtype; the next state is ``DQ_NEXT_STATE[s, k & 1]``.

    Args:
        levels: 1-D integer array (int32 from the level decoder).
        step: the codec's step (float64).
        chain: elements per chain, >= 1.
        out_dtype: ``float32`` or ``float64``. (Other float dtypes: ask for float64 and let numpy round it,
            ``.astype(dtype)``, which is what the numpy function does: a float32 result rounded again would
            not be bit-exact.)
        out: optional destination of ``out_dtype`` with at least ``levels.size`` elements.

    Raises:
        ValueError: ``chain < 1``, an unsupported ``out_dtype`` or a too small ``out``.
    """
    dt = np.dtype(out_dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dq_reconstruct: out_dtype must be float32 or float64, got {dt}")
    if out is None:
        out = np.empty(levels.size, dtype=dt)
    if _dq_reconstruct(levels.reshape(-1), float(step), int(chain), DQ_NEXT_STATE, DQ_OCTET_QUANTIZERS,
                       DQ_OCTET_NEXT, out) != 0:
        raise ValueError(f"dq_reconstruct: chain {chain} < 1 or output smaller than {levels.size}")
    return out[:levels.size]
