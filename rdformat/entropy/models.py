"""Entropy models for the ANS coder: integer frequency tables.

A :class:`FrequencyTable` assigns every *present* symbol (a non-negative integer < 2**31) an
integer frequency ``f >= 1`` at precision ``Q`` (1..16 bits): the frequencies sum to ``2**Q`` and
the model probability of a symbol is ``f / 2**Q``. The coder (:mod:`rdformat.entropy.ans`) codes
the *rank* of a symbol (its index in the sorted table), so only the present symbols cost table
space.

Byte format of a table (normative text: ``spec/entropy.md``, section 6.1)::

    u8       Q                      precision, 1..16
    varint   m                      number of present symbols, 1..2**Q
    m varint gaps                   first symbol value, then s[i] - s[i-1] - 1
    m varint freq - 1               each freq in 1..2**Q, sum of freqs == 2**Q

``varint`` is unsigned LEB128 (7 bits per byte, least significant group first, high bit = "more
bytes follow"), canonical (no superfluous trailing zero groups) and at most 5 bytes (< 2**32).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CorruptDataError, InvalidInputError, TruncatedError
from ..format.wire import leb128, read_leb128

__all__ = ["FrequencyTable", "MAX_PRECISION", "MAX_SYMBOL", "DEFAULT_PRECISION", "entropy_bits"]

#: Largest table precision Q (bits). The coder works at 24 bits; 16 leaves room for exact scaling.
MAX_PRECISION = 16
#: Default precision for byte alphabets.
DEFAULT_PRECISION = 14
#: Symbol values must be strictly below this bound.
MAX_SYMBOL = 1 << 31

_VARINT_MAX_BYTES = 5  # values < 2**32
#: A compiled parser of a stored table after its count (``ans_numba.parse_table_body``), installed by the
#: numba backend when it loads: the numpy parser costs tens of microseconds a table, a real cost when every
#: chunk of a small model has its own. Same table; on anything irregular it returns None and the numpy
#: parser below raises the error.
_FAST_TABLE: list = []


# --------------------------------------------------------------------------------------------
# varints
# --------------------------------------------------------------------------------------------


#: Up to this many values, varints are written and sized by a Python loop (numpy's fixed cost per call is
#: larger: an encoder sizes and writes several small tables per chunk).
_SMALL_VARINT_RUN = 64


def _varint_size(values: np.ndarray) -> int:
    """Bytes of the canonical LEB128 encodings of ``values`` (uint64, each < 2**32), summed."""
    v = np.asarray(values, dtype=np.uint64)
    if v.size <= _SMALL_VARINT_RUN:
        return sum(1 + (x >= 1 << 7) + (x >= 1 << 14) + (x >= 1 << 21) + (x >= 1 << 28) for x in v.tolist())
    return int(v.size + sum(np.count_nonzero(v >> np.uint64(7 * k)) for k in range(1, _VARINT_MAX_BYTES)))


def _varint_encode_many(values: np.ndarray) -> bytes:
    """Canonical LEB128 encoding of every value of ``values`` (uint64, each < 2**32), concatenated."""
    v = np.asarray(values, dtype=np.uint64)
    if v.size <= _SMALL_VARINT_RUN:
        return b"".join(leb128(x) for x in v.tolist())
    nbytes = np.ones(v.size, dtype=np.int64)
    for k in range(1, _VARINT_MAX_BYTES):
        nbytes += (v >> np.uint64(7 * k)) != 0
    starts = np.zeros(v.size, dtype=np.int64)
    np.cumsum(nbytes[:-1], out=starts[1:])
    out = np.empty(int(nbytes.sum()), dtype=np.uint8)
    for k in range(_VARINT_MAX_BYTES):
        sel = nbytes > k
        if not sel.any():
            break
        group = ((v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        group |= np.where(nbytes[sel] > k + 1, np.uint8(0x80), np.uint8(0))
        out[starts[sel] + k] = group
    return out.tobytes()


def _varint_decode_one(data: np.ndarray, pos: int, what: str) -> tuple[int, int]:
    """Decode one canonical varint (< 2**32) at ``data[pos]``; return (value, position after it)."""
    value, end = read_leb128(data, pos, data.size, max_bytes=_VARINT_MAX_BYTES, what=f"frequency table: {what}")
    if value >= 1 << 32:
        raise CorruptDataError(f"frequency table: {what} varint exceeds 32 bits", offset=pos)
    return value, end


def _varint_decode_many(data: np.ndarray, pos: int, count: int, what: str) -> tuple[np.ndarray, int]:
    """Decode ``count`` consecutive canonical varints starting at ``data[pos]`` (vectorised).

    Returns (uint64 values, position after the last one). Reads at most ``count * 5`` bytes.
    """
    if count == 0:
        return np.zeros(0, dtype=np.uint64), pos
    remaining = data.size - pos
    if remaining < count:  # every varint takes at least one byte
        raise TruncatedError(f"frequency table: {count} {what} varints need at least {count} bytes, "
                             f"{remaining} left", offset=data.size)
    region = data[pos:pos + min(remaining, count * _VARINT_MAX_BYTES)]
    ends = np.flatnonzero(region < 0x80)[:count]
    # Varint lengths; a missing terminator is a truncation only if the data really ran out.
    starts = np.zeros(ends.size, dtype=np.int64)
    if ends.size > 1:
        starts[1:] = ends[:-1] + 1
    lens = ends - starts + 1
    too_long = np.flatnonzero(lens > _VARINT_MAX_BYTES)
    if too_long.size:
        raise CorruptDataError(f"frequency table: {what} varint longer than {_VARINT_MAX_BYTES} bytes",
                               offset=pos + int(starts[too_long[0]]))
    if ends.size < count:
        tail = (int(ends[-1]) + 1) if ends.size else 0
        if region.size - tail >= _VARINT_MAX_BYTES:  # 5 bytes without a terminator: too long
            raise CorruptDataError(f"frequency table: {what} varint longer than {_VARINT_MAX_BYTES} bytes",
                                   offset=pos + tail)
        raise TruncatedError(f"frequency table: {what} varints run past the end of the data", offset=data.size)
    noncanon = np.flatnonzero((lens > 1) & (region[ends] == 0))
    if noncanon.size:
        raise CorruptDataError(f"frequency table: non-canonical {what} varint",
                               offset=pos + int(starts[noncanon[0]]))
    total = int(ends[-1]) + 1
    groups = (region[:total] & 0x7F).astype(np.uint64)
    shifts = (np.arange(total, dtype=np.int64) - np.repeat(starts, lens)) * 7
    values = np.add.reduceat(groups << shifts.astype(np.uint64), starts)
    big = np.flatnonzero(values >= np.uint64(1 << 32))
    if big.size:
        raise CorruptDataError(f"frequency table: {what} varint exceeds 32 bits", offset=pos + int(starts[big[0]]))
    return values, pos + total


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------


def _normalise(counts: np.ndarray, precision: int) -> np.ndarray:
    """Integer frequencies >= 1 summing to 2**precision that (nearly) minimise the coded size.

    Minimises ``sum(c_i * -log2(f_i))`` (separable, convex in each ``f_i``): proportional start with
    symbols whose share is below one unit pinned to 1, fix the sum greedily, then improve by moving
    single units from the cheapest loser to the best gainer until no move helps. Deterministic.
    """
    total_units = 1 << precision
    m = counts.size
    c = counts.astype(np.float64)
    if m == total_units:
        return np.ones(m, dtype=np.int64)
    if not np.any(c > 0):
        c = np.ones(m, dtype=np.float64)
    # 1. proportional start; symbols whose share is < 1 unit are pinned to 1 (iterated to a fixed point)
    pinned = c <= 0
    while True:
        free = ~pinned
        budget = total_units - int(pinned.sum())
        share = np.zeros(m, dtype=np.float64)
        share[free] = c[free] * (budget / float(c[free].sum()))
        newly = free & (share < 1.0)
        if not newly.any():
            break
        pinned |= newly
    f = np.where(pinned, 1.0, np.floor(share + 0.5)).astype(np.int64)
    np.maximum(f, 1, out=f)

    def gains() -> np.ndarray:  # cost decrease of adding one unit
        return c * np.log2((f + 1) / f)

    def losses() -> np.ndarray:  # cost increase of removing one unit (inf where f == 1)
        lo = np.full(m, np.inf)
        big = f > 1
        fb = f[big]
        lo[big] = c[big] * np.log2(fb / (fb - 1))
        return lo

    # 2. fix the sum: each round moves at most one unit per symbol
    diff = total_units - int(f.sum())
    while diff != 0:
        if diff > 0:
            order = np.argsort(-gains(), kind="stable")[:diff]
            f[order] += 1
            diff -= order.size
        else:
            lo = losses()
            eligible = int(np.count_nonzero(np.isfinite(lo)))
            order = np.argsort(lo, kind="stable")[:min(-diff, eligible)]
            f[order] -= 1
            diff += order.size
    # 3. polish: move units from the cheapest losers to the best gainers while that lowers the cost.
    #    A symbol can't be both a selected gainer and loser (its loss always exceeds its gain).
    for _ in range(64):
        g = gains()
        lo = losses()
        gi = np.argsort(-g, kind="stable")
        li = np.argsort(lo, kind="stable")
        better = g[gi] > lo[li] * (1.0 + 1e-12)
        k = int(np.argmin(better)) if not better.all() else better.size
        if k == 0:
            break
        f[gi[:k]] += 1
        f[li[:k]] -= 1
    return f


# --------------------------------------------------------------------------------------------
# FrequencyTable
# --------------------------------------------------------------------------------------------


def _as_int_array(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        if arr.size == 0 and arr.dtype.kind == "f":
            arr = arr.astype(np.int64)
        else:
            raise InvalidInputError(f"{what} must be an integer array, got dtype {arr.dtype}")
    return arr.reshape(-1)


def _check_precision_and_symbols(precision: Any, symbols: Any, other: np.ndarray, other_name: str) -> tuple[int, np.ndarray]:
    """Shared input checks of the table constructors: precision range, symbol count and values."""
    try:
        q = int(precision)
    except (TypeError, ValueError):
        raise InvalidInputError(f"precision must be an integer, got {precision!r}") from None
    if not 1 <= q <= MAX_PRECISION:
        raise InvalidInputError(f"precision must be in 1..{MAX_PRECISION}, got {q}")
    sym = _as_int_array(symbols, "symbols")
    if sym.size != other.size:
        raise InvalidInputError(f"symbols and {other_name} differ in length ({sym.size} vs {other.size})")
    if sym.size == 0:
        raise InvalidInputError("a frequency table needs at least one symbol")
    if sym.size > (1 << q):
        raise InvalidInputError(f"{sym.size} symbols do not fit precision {q} (at most {1 << q})")
    if int(sym.min()) < 0 or int(sym.max()) >= MAX_SYMBOL:
        raise InvalidInputError("symbol values must be in 0..2**31-1")
    return q, sym


class FrequencyTable:
    """An immutable integer frequency table (the entropy model of one ANS block).

    Attributes:
        precision: ``Q``, 1..16; the frequencies sum to ``2**Q``.
        symbols: read-only ``uint32`` array of the present symbol values, strictly increasing, each < 2**31.
        freqs: read-only ``uint32`` array aligned with ``symbols``, each >= 1, summing to ``2**precision``.

    The constructor validates its arguments and raises :class:`~rdformat.errors.InvalidInputError`.
    Use :meth:`from_counts` / :meth:`from_values` to build a table from statistics and
    :meth:`to_bytes` / :meth:`from_bytes` for the stored form.
    """

    __slots__ = ("precision", "symbols", "freqs", "_cache")

    precision: int
    symbols: np.ndarray
    freqs: np.ndarray

    def __init__(self, precision: int, symbols: Any, freqs: Any) -> None:
        """Build a table from explicit ``symbols`` and ``freqs`` (validated; arrays are copied)."""
        frq = _as_int_array(freqs, "freqs")
        q, sym = _check_precision_and_symbols(precision, symbols, frq, "freqs")
        if sym.size > 1 and not np.all(sym[1:] > sym[:-1]):
            raise InvalidInputError("symbols must be strictly increasing")
        if int(frq.min()) < 1:
            raise InvalidInputError("every frequency must be >= 1")
        if int(frq.max()) > (1 << q) or int(frq.astype(np.int64).sum()) != (1 << q):
            raise InvalidInputError(f"frequencies must sum to 2**{q}")
        sym = sym.astype(np.uint32)  # always a fresh copy
        frq = frq.astype(np.uint32)
        sym.flags.writeable = False
        frq.flags.writeable = False
        object.__setattr__(self, "precision", q)
        object.__setattr__(self, "symbols", sym)
        object.__setattr__(self, "freqs", frq)
        object.__setattr__(self, "_cache", {})

    @classmethod
    def _unchecked(cls, precision: int, symbols: np.ndarray, freqs: np.ndarray) -> "FrequencyTable":
        """A table from arrays its caller has already validated (as ``__init__`` would): a decoder parses
        one table per chunk, and checking every table twice costs more than decoding a small chunk."""
        return cls._owned(precision, symbols.astype(np.uint32), freqs.astype(np.uint32))  # fresh copies

    @classmethod
    def _owned(cls, precision: int, symbols: np.ndarray, freqs: np.ndarray) -> "FrequencyTable":
        """:meth:`_unchecked` on ``uint32`` arrays nobody else holds (made read-only here, not copied)."""
        symbols.flags.writeable = False
        freqs.flags.writeable = False
        table = cls.__new__(cls)
        object.__setattr__(table, "precision", int(precision))
        object.__setattr__(table, "symbols", symbols)
        object.__setattr__(table, "freqs", freqs)
        object.__setattr__(table, "_cache", {})
        return table

    # -- immutability / value semantics ------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrequencyTable is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("FrequencyTable is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrequencyTable):
            return NotImplemented
        return (self.precision == other.precision and np.array_equal(self.symbols, other.symbols)
                and np.array_equal(self.freqs, other.freqs))

    def __hash__(self) -> int:
        return hash((self.precision, self.symbols.tobytes(), self.freqs.tobytes()))

    def __repr__(self) -> str:
        m = self.symbols.size

        def short(a: np.ndarray) -> str:
            if m <= 8:
                return "[" + ", ".join(str(int(x)) for x in a) + "]"
            return "[" + ", ".join(str(int(x)) for x in a[:6]) + f", ... ({m} total)]"

        return f"FrequencyTable(precision={self.precision}, symbols={short(self.symbols)}, freqs={short(self.freqs)})"

    def __reduce__(self) -> tuple:
        return (FrequencyTable, (self.precision, self.symbols, self.freqs))

    @property
    def num_symbols(self) -> int:
        """Number of present symbols ``m``."""
        return int(self.symbols.size)

    # -- construction from statistics ---------------------------------------------------------

    @classmethod
    def from_counts(cls, symbols: Any, counts: Any, precision: int = DEFAULT_PRECISION) -> "FrequencyTable":
        """Normalise symbol counts into a table of the given precision.

        Args:
            symbols: distinct symbol values (any order), each in 0..2**31-1.
            counts: non-negative counts aligned with ``symbols`` (integers or finite floats).
            precision: ``Q`` in 1..16.

        Every listed symbol is kept and gets a frequency >= 1, including symbols whose count is 0
        (drop them beforehand if they are not wanted). The integer frequencies (nearly) minimise
        ``sum(count * -log2(freq / 2**Q))``; the result is deterministic.

        Raises:
            InvalidInputError: more symbols than ``2**precision``, duplicates, bad values or counts.
        """
        cnt = np.asarray(counts).reshape(-1)
        if cnt.dtype == np.bool_ or cnt.dtype.kind not in "iuf":
            raise InvalidInputError(f"counts must be numeric, got dtype {cnt.dtype}")
        q, sym = _check_precision_and_symbols(precision, symbols, cnt, "counts")
        cf = cnt.astype(np.float64)
        if not np.all(np.isfinite(cf)) or np.any(cf < 0):
            raise InvalidInputError("counts must be finite and non-negative")
        order = np.argsort(sym, kind="stable")
        sym = sym[order]
        cf = cf[order]
        if sym.size > 1 and not np.all(sym[1:] != sym[:-1]):
            raise InvalidInputError("symbols must be distinct")
        return cls(q, sym, _normalise(cf, q))

    @classmethod
    def _from_histogram(cls, symbols: np.ndarray, counts: np.ndarray, precision: int) -> "FrequencyTable":
        """:meth:`from_counts` for an encoder's own histogram: ``symbols`` strictly increasing integers >= 0
        (``np.flatnonzero(counts)``) and their integer counts. The same table, without checking again what
        the histogram guarantees (encoders build several candidate tables per chunk); anything it does not
        (precision, symbol range and count) goes to :meth:`from_counts`, which raises its errors."""
        q = int(precision)
        if not 1 <= q <= MAX_PRECISION or not 1 <= symbols.size <= 1 << q or int(symbols[-1]) >= MAX_SYMBOL:
            return cls.from_counts(symbols, counts, precision)
        return cls._owned(q, symbols.astype(np.uint32), _normalise(counts, q).astype(np.uint32))

    @classmethod
    def from_values(cls, values: np.ndarray, precision: int = DEFAULT_PRECISION) -> "FrequencyTable":
        """Table of the histogram of ``values`` (integers in 0..2**31-1, any shape, not empty).

        Raises:
            InvalidInputError: empty input, non-integer dtype, values out of range, or more distinct
                values than ``2**precision``.
        """
        v = _as_int_array(values, "values")
        if v.size == 0:
            raise InvalidInputError("cannot build a frequency table from no values")
        lo, hi = int(v.min()), int(v.max())
        if lo < 0 or hi >= MAX_SYMBOL:
            raise InvalidInputError("values must be in 0..2**31-1")
        if hi < max(1 << 16, 2 * v.size):
            hist = np.bincount(v.astype(np.intp, copy=False), minlength=hi + 1)
            sym = np.flatnonzero(hist)
            cnt = hist[sym]
        else:
            sym, cnt = np.unique(v, return_counts=True)
        return cls.from_counts(sym, cnt, precision)

    # -- cost --------------------------------------------------------------------------------

    def cost_bits(self, counts: np.ndarray) -> float:
        """Ideal coded size in bits of ``counts[i]`` occurrences of ``symbols[i]``.

        ``sum(counts * (precision - log2(freqs)))``; the real ANS block adds a few bytes per lane.
        """
        cnt = np.asarray(counts, dtype=np.float64).reshape(-1)
        if cnt.size != self.symbols.size:
            raise InvalidInputError(f"counts must align with the {self.symbols.size} table symbols, got {cnt.size}")
        bits = self.precision - np.log2(self.freqs.astype(np.float64))
        return float(np.dot(cnt, bits))

    # -- bytes -------------------------------------------------------------------------------

    def _stored_varints(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The three varint runs after the precision byte: symbol count, symbol gaps, frequencies - 1."""
        sym = self.symbols.astype(np.uint64)
        gaps = np.empty_like(sym)
        gaps[0] = sym[0]
        gaps[1:] = sym[1:] - sym[:-1] - np.uint64(1)
        return np.array([sym.size], dtype=np.uint64), gaps, self.freqs.astype(np.uint64) - np.uint64(1)

    def to_bytes(self) -> bytes:
        """The stored form (see module docstring / ``spec/entropy.md``)."""
        return bytes([self.precision]) + b"".join(_varint_encode_many(v) for v in self._stored_varints())

    def stored_size(self) -> int:
        """``len(self.to_bytes())``, counted without writing the bytes (encoders size many candidates)."""
        return 1 + sum(_varint_size(v) for v in self._stored_varints())

    @classmethod
    def from_bytes(cls, buf: Any, offset: int = 0) -> tuple["FrequencyTable", int]:
        """Parse a stored table at ``buf[offset:]``; return ``(table, offset just after it)``.

        Safe on hostile input: raises only :class:`~rdformat.errors.TruncatedError` (the data ends
        inside the table) or :class:`~rdformat.errors.CorruptDataError` (bad precision, count,
        varint, symbol range or frequency sum); error offsets are positions in ``buf``.
        """
        try:
            data = np.frombuffer(buf, dtype=np.uint8)
        except (TypeError, ValueError, BufferError) as exc:
            raise InvalidInputError(f"frequency table: cannot read a buffer from {type(buf).__name__}: {exc}") from None
        pos = int(offset)
        if pos < 0 or pos > data.size:
            raise InvalidInputError(f"frequency table: offset {pos} outside the buffer (size {data.size})")
        if pos >= data.size:
            raise TruncatedError("frequency table: no data", offset=data.size)
        q = int(data[pos])
        if not 1 <= q <= MAX_PRECISION:
            raise CorruptDataError(f"frequency table: precision {q} not in 1..{MAX_PRECISION}", offset=pos)
        pos += 1
        m_pos = pos
        m, pos = _varint_decode_one(data, pos, "symbol count")
        if not 1 <= m <= (1 << q):
            raise CorruptDataError(f"frequency table: symbol count {m} not in 1..2**{q}", offset=m_pos)
        if data.size - pos < 2 * m:
            raise TruncatedError(f"frequency table: {m} symbols need at least {2 * m} more bytes, "
                                 f"{data.size - pos} left", offset=data.size)
        parsed = _FAST_TABLE[0](data, pos, m, q) if _FAST_TABLE else None
        if parsed is not None:  # the compiled parser made every check below
            sym, freqs, end = parsed
            return cls._owned(q, sym, freqs), end
        gaps_pos = pos
        gaps, pos = _varint_decode_many(data, pos, m, "symbol gap")
        freqs_pos = pos
        fm1, pos = _varint_decode_many(data, pos, m, "frequency")
        sym = np.cumsum(gaps, dtype=np.uint64) + np.arange(m, dtype=np.uint64)  # < 2**49, exact
        if int(sym[-1]) >= MAX_SYMBOL:
            raise CorruptDataError("frequency table: symbol value >= 2**31", offset=gaps_pos)
        if int(fm1.max()) >= (1 << q):
            raise CorruptDataError(f"frequency table: frequency > 2**{q}", offset=freqs_pos)
        freqs = fm1 + np.uint64(1)
        if int(freqs.sum()) != (1 << q):
            raise CorruptDataError(f"frequency table: frequencies sum to {int(freqs.sum())}, not 2**{q}",
                                   offset=freqs_pos)
        # every check of __init__ is done above: symbols strictly increase (gaps >= 0, plus one each), are
        # below 2**31, count 1..2**Q; frequencies are >= 1 and sum to 2**Q
        return cls._unchecked(q, sym, freqs), pos

    # -- derived arrays used by the coder (cached; the table is immutable) ----------------------

    def _derived(self, key: str, build: Any) -> Any:
        cache = self._cache
        val = cache.get(key)
        if val is None:
            val = build()
            cache[key] = val
        return val

    def _cumulative(self) -> np.ndarray:
        """Left cumulative frequencies (int64, length m + 1, last = 2**Q)."""
        def build() -> np.ndarray:
            cum = np.zeros(self.symbols.size + 1, dtype=np.int64)
            np.cumsum(self.freqs, out=cum[1:])
            cum.flags.writeable = False
            return cum
        return self._derived("cum", build)

    def _ideal_bits_per_rank(self) -> np.ndarray:
        return self._derived("bits", lambda: self.precision - np.log2(self.freqs.astype(np.float64)))


def entropy_bits(symbols: np.ndarray) -> tuple[float, int]:
    """Zero-order code length in bits of non-negative integer ``symbols`` under their own histogram,
    and the number of distinct symbols (what an exact table would list)."""
    counts = np.bincount(np.asarray(symbols).reshape(-1))
    counts = counts[counts > 0].astype(np.float64)
    return float(-(counts * np.log2(counts / counts.sum())).sum()), int(counts.size)
