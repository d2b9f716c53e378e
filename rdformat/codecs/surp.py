"""``surp``: the progressive SuRP index stream (lossy, embedded; normative text: ``spec/surp.md``).

A chunk's data is the sequence of weight indices that successive-refinement pruning (SuRP, see
:mod:`rdformat.surp`) chose, coded so that the decoder can replay the reconstruction:

* The elements of a chunk are visited in a fixed pseudo-random order (an affine "golden ratio"
  permutation of the chunk, :func:`permutation_params`), so that stopping anywhere inside a pass keeps
  an evenly spread subset of that pass's weights instead of the first rows of the tensor.
* Pass ``p`` has the threshold ``T[p] = t0 * decay**p`` (computed by repeated float64
  multiplication, :func:`thresholds`). It consists of a NEW run (which not-yet-kept weights become
  ``T[p]`` and get a sign) and then a REFINE run (which already-kept weights get ``T[p]`` more).
  A run is a sorted set of ranks in its domain (the not-yet-kept, resp. kept, weights in permuted
  order at the start of the pass), coded as gaps. NEW runs come first: per bit they lower the
  distortion more than the REFINE run of the same pass, so prefixes cut inside a pass cost less.
* Gaps are Rice-split: the quotient ``gap >> k`` is an ANS symbol (escape classes for large
  quotients), the ``k`` low bits and the escape mantissas are raw bits, and so are the signs.
  A segment's table is explicit, the previous segment's, or a one-byte geometric table (small
  segments: ~40 bytes less than an explicit table).
* The stream is cut into *segments*, each with a byte length, its own (or the previous) frequency
  table, one ANS block and its raw bits, so any whole-segment prefix decodes
  (:func:`decode_prefix`): a coarser model, with fewer kept weights or less precise ones.

The decoder tracks, for every kept weight, the upper bound ``B`` of its residual that the stream
implies, and returns ``sign * (sum of its thresholds + offset * B) * norm``; weights never chosen
are exactly zero.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..dtypes import DtypeInfo
from ..entropy import FrequencyTable, ans
from ..container import leb128
from ..errors import CorruptDataError, InvalidInputError, RdcError, TruncatedError
from . import register_codec
from .base import Codec

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
    "prefix_fraction",
    "SurpConfig",
    "geometric_table",
    "run_key",
    "default_segment_bytes",
    "MAX_PASSES",
]

#: Passes are numbered 0..MAX_PASSES-1 (the threshold shrinks by ``decay`` each pass, so real
#: streams use a few dozen); the bound keeps the decoder's threshold table small.
MAX_PASSES = 4096
#: Quotients below ESC are their own symbol; larger ones use escape classes ESC + e.
ESC = 20
#: Largest escape class exponent (quotients stay below 2**31).
MAX_ESC_EXP = 30
#: Largest Rice shift.
MAX_K = 30
CLASS_REFINE = 0
CLASS_NEW = 1
TABLE_NEW = 0
TABLE_SAME = 1
TABLE_GEOMETRIC = 2
#: Size of the symbol alphabet (quotients 0..ESC-1, escape classes ESC..ESC+MAX_ESC_EXP).
NSYM = ESC + MAX_ESC_EXP + 1
#: Precision of the geometric tables.
GEOMETRIC_PRECISION = 12
_GOLDEN64 = 0x9E3779B97F4A7C15
_CONFIG_KEYS = {"norm", "t0", "decay", "umax", "offset", "seed"}


# ---------------------------------------------------------------------------------------------
# shared definitions: threshold schedule and visiting order
# ---------------------------------------------------------------------------------------------


def thresholds(t0: float, decay: float, count: int) -> np.ndarray:
    """``T[p] = t0 * decay**p`` for p < count, by repeated float64 multiplication (bit-exact everywhere)."""
    out = np.empty(max(0, int(count)), dtype=np.float64)
    t = float(t0)
    for p in range(out.size):
        out[p] = t
        t = t * float(decay)
    return out


def permutation_params(n: int, seed: int = 0) -> tuple[int, int]:
    """``(a, c)`` of the visiting order: permuted position ``j`` holds element ``(a*j + c) % n``.

    ``a`` is the first integer >= max(1, floor(n * 0.618...)) coprime with ``n`` (a Weyl sequence with
    the golden ratio: every prefix of the order is spread evenly over the chunk); ``c`` is derived
    from ``seed``. All integer arithmetic, so every implementation gets the same order.
    """
    n = int(n)
    if n <= 1:
        return 1, 0
    a = max(1, (n * _GOLDEN64) >> 64)
    while math.gcd(a, n) != 1:
        a += 1
    c = ((int(seed) * _GOLDEN64) & ((1 << 64) - 1)) % n
    return a, c


def positions_to_indices(pos: np.ndarray, n: int, a: int, c: int) -> np.ndarray:
    """Element indices of permuted positions (``(a*j + c) % n``; exact for n < 2**32)."""
    p = np.asarray(pos, dtype=np.uint64)
    return ((p * np.uint64(a % n if n else 0) + np.uint64(c)) % np.uint64(max(n, 1))).astype(np.int64)


def indices_to_positions(idx: np.ndarray, n: int, a: int, c: int) -> np.ndarray:
    """Permuted positions of element indices (inverse of :func:`positions_to_indices`)."""
    if n <= 1:
        return np.zeros(np.asarray(idx).shape, dtype=np.int64)
    inv = pow(a % n, -1, n)
    i = np.asarray(idx, dtype=np.int64)
    d = ((i - c) % n).astype(np.uint64)
    return ((d * np.uint64(inv)) % np.uint64(n)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# varints and raw bits
# ---------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value = int(value)
    if value < 0 or value >= 1 << 64:
        raise InvalidInputError(f"varint out of range: {value}")
    return leb128(value)


def _read_varint(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """Canonical LEB128, at most 9 bytes (< 2**63); ``end`` bounds the read."""
    value = 0
    for k in range(9):
        if pos + k >= end:
            raise TruncatedError(f"surp: {what} runs past the end of its segment", offset=pos)
        b = buf[pos + k]
        value |= (b & 0x7F) << (7 * k)
        if b < 0x80:
            if k > 0 and b == 0:
                raise CorruptDataError(f"surp: non-canonical varint for {what}", offset=pos)
            return value, pos + k + 1
    raise CorruptDataError(f"surp: varint for {what} is longer than 9 bytes", offset=pos)


def _pack_bits(widths: np.ndarray, values: np.ndarray, signs: np.ndarray) -> bytes:
    """Fields of ``widths[i]`` bits holding ``values[i]`` (LSB first), then one bit per sign."""
    widths = widths.astype(np.int64, copy=False)
    total = int(widths.sum()) + int(signs.size)
    if total == 0:
        return b""
    bits = np.zeros(((total + 7) // 8) * 8, dtype=np.uint8)
    offs = np.zeros(widths.size, dtype=np.int64)
    if widths.size > 1:
        np.cumsum(widths[:-1], out=offs[1:])
    v = values.astype(np.uint64, copy=False)
    maxw = int(widths.max()) if widths.size else 0
    for b in range(maxw):
        sel = np.flatnonzero(widths > b)
        bits[offs[sel] + b] = ((v[sel] >> np.uint64(b)) & np.uint64(1)).astype(np.uint8)
    base = int(widths.sum())
    bits[base:base + signs.size] = signs.astype(np.uint8)
    return np.packbits(bits, bitorder="little").tobytes()


def _unpack_fields(raw: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Read fields of ``widths`` bits (each <= 56) LSB-first from the byte array ``raw``."""
    n = widths.size
    out = np.zeros(n, dtype=np.uint64)
    if n == 0 or not widths.any():
        return out
    offs = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(widths[:-1], out=offs[1:])
    padded = np.zeros(raw.size + 8, dtype=np.uint8)
    padded[:raw.size] = raw
    byte = offs >> 3
    word = np.zeros(n, dtype=np.uint64)
    for j in range(8):  # gather 8 bytes little-endian: any field of <= 56 bits starting at bit offs & 7
        word |= padded[byte + j].astype(np.uint64) << np.uint64(8 * j)
    word >>= (offs & 7).astype(np.uint64)
    mask = (np.uint64(1) << widths.astype(np.uint64)) - np.uint64(1)
    return word & mask


# ---------------------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """The selections of one run: pass, class, sorted domain ranks, and (NEW runs) their signs.

    ``complete`` is False for a run the encoder stopped inside (only the last run of a stream).
    """

    pass_index: int
    cls: int
    ranks: np.ndarray
    negative: np.ndarray | None = None
    complete: bool = True


def _symbols(gaps: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(symbols, raw field widths, raw field values) of gaps under Rice shift ``k``."""
    q = gaps >> np.int64(k)
    rem = gaps & np.int64((1 << k) - 1)
    sym = q.copy()
    width = np.full(gaps.size, k, dtype=np.int64)
    value = rem.astype(np.uint64)
    big = np.flatnonzero(q >= ESC)
    if big.size:
        v = q[big] - (ESC - 1)  # >= 1
        e = np.frexp(v.astype(np.float64))[1].astype(np.int64) - 1  # exact: v < 2**53
        mant = v - (np.int64(1) << e)
        sym[big] = ESC + e
        width[big] += e
        value[big] |= mant.astype(np.uint64) << np.uint64(k)
    return sym, width, value


def _entropy_bits(sym: np.ndarray) -> tuple[float, np.ndarray]:
    counts = np.bincount(sym, minlength=NSYM).astype(np.float64)
    tot = counts.sum()
    nz = counts > 0
    bits = np.zeros_like(counts)
    bits[nz] = -np.log2(counts[nz] / tot)
    return float(np.dot(counts, bits)), bits


def _choose_k(gaps: np.ndarray) -> int:
    """Rice shift minimising (empirical symbol entropy + raw bits); estimated on <= 65536 gaps."""
    g = gaps if gaps.size <= 65536 else gaps[:: gaps.size // 65536 + 1]
    mean = float(g.mean()) if g.size else 0.0
    k0 = int(math.floor(math.log2(mean + 1.0)))
    best_k, best = 0, math.inf
    for k in range(max(0, k0 - 3), min(MAX_K, k0 + 1) + 1):
        sym, width, _ = _symbols(g, k)
        cost = _entropy_bits(sym)[0] + float(width.sum())
        if cost < best - 1e-9:
            best_k, best = k, cost
    return best_k


@dataclass
class _CodedRun:
    run: Run
    k: int
    sym: np.ndarray
    width: np.ndarray
    value: np.ndarray
    cost: np.ndarray  # estimated bits per selection (for segmentation)


def _code_run(run: Run) -> _CodedRun:
    ranks = np.asarray(run.ranks, dtype=np.int64)
    gaps = np.diff(ranks, prepend=np.int64(-1)) - 1
    if gaps.size and int(gaps.min()) < 0:
        raise InvalidInputError("surp: run ranks must be strictly increasing and >= 0")
    k = _choose_k(gaps)
    sym, width, value = _symbols(gaps, k)
    _, bits = _entropy_bits(sym)
    cost = bits[sym] + width + (1.0 if run.cls == CLASS_NEW else 0.0)
    return _CodedRun(run, k, sym, width, value, cost)


@functools.lru_cache(maxsize=256)
def geometric_table(j: int) -> FrequencyTable:
    """The table of mode GEOMETRIC with parameter ``j`` (1..255): quotient q has weight ~ theta**q,
    theta = j/256, every symbol of the alphabet at least 1; integer arithmetic only (spec/surp.md)."""
    if not 1 <= j <= 255:
        raise CorruptDataError(f"surp: geometric table parameter {j} not in 1..255")
    total = 1 << GEOMETRIC_PRECISION
    f = [1] * NSYM
    a = total * (256 - j)
    for q in range(ESC):
        f[q] = max(1, a >> 8)
        a = (a * j) >> 8
    f[0] -= sum(f) - total  # f[0] stays >= 1 for every j (checked in the tests)
    return FrequencyTable(GEOMETRIC_PRECISION, np.arange(NSYM), np.array(f, dtype=np.int64))


def _cost(table: FrequencyTable, present: np.ndarray, counts: np.ndarray) -> float:
    idx = np.searchsorted(table.symbols, present)
    return float(np.dot(counts, table.precision - np.log2(table.freqs[idx].astype(np.float64))))


def _best_table(sym_counts: np.ndarray, prev: FrequencyTable | None) -> tuple[bytes, FrequencyTable]:
    """Header bytes (mode [+ table]) and the table for a segment: the cheapest of reusing the
    previous table, a one-byte geometric table, or an explicit table."""
    present = np.flatnonzero(sym_counts)
    counts = sym_counts[present]
    best: tuple[float, bytes, FrequencyTable] | None = None
    qs = np.minimum(present, ESC)
    mean_q = float(np.dot(qs, counts) / max(counts.sum(), 1))
    j0 = int(round(256 * mean_q / (1.0 + mean_q)))
    for j in sorted({min(255, max(1, j0 + d)) for d in (-16, -8, -4, -2, 0, 2, 4, 8)}):
        table = geometric_table(j)
        bits = _cost(table, present, counts) + 16.0
        if best is None or bits < best[0] - 1e-9:
            best = (bits, bytes([TABLE_GEOMETRIC, j]), table)
    if prev is not None and np.isin(present, prev.symbols).all():
        bits = _cost(prev, present, counts) + 8.0
        if bits < best[0] - 1e-9:
            best = (bits, bytes([TABLE_SAME]), prev)
    total = int(counts.sum())
    # Precision: ~4 units per symbol occurrence at most (more cannot pay for its table bytes).
    q = int(min(14, max(8, math.ceil(math.log2(max(total, 1))) + 2)))
    while present.size > (1 << q):
        q += 1
    table = FrequencyTable.from_counts(present, counts, precision=q)
    raw = table.to_bytes()
    bits = table.cost_bits(counts) + 8.0 * (len(raw) + 1)
    if best is None or bits < best[0] - 1e-9:
        best = (bits, bytes([TABLE_NEW]) + raw, table)
    assert best is not None
    return best[1], best[2]


def default_segment_bytes(count: int) -> int:
    """Target segment size for a chunk of ``count`` elements: ~1/128 byte per element, 512..65536.

    A budgeted read can waste at most one partial segment per chunk, i.e. ~1/16 bit per weight.
    """
    return int(min(65536, max(512, count // 128)))


def encode_runs(runs: list[Run], count: int, *, segment_bytes: int | None = None) -> bytes:
    """The chunk data for ``runs`` (in stream order) of a chunk of ``count`` elements.

    Empty runs are dropped. Segments hold about ``segment_bytes`` bytes (default
    :func:`default_segment_bytes`, lowered to an eighth of the stream, down to 128 bytes) and at
    most ``max(count, 4096)`` selections.
    """
    coded = [_code_run(r) for r in runs if np.asarray(r.ranks).size]
    if not coded:
        return b""
    costs = np.concatenate([c.cost for c in coded])
    if segment_bytes is None:
        # ~1/128 byte per element, but at least ~8 segments per stream (down to 128 bytes) so that
        # budgeted reads of small tensors still get a useful prefix.
        segment_bytes = min(default_segment_bytes(count), max(128, int(costs.sum() / 64)))
    target_bits = 8.0 * segment_bytes
    cap = max(int(count), 4096)
    # Stream-order selection index -> segment: cut when the estimated bits or the count overflow.
    cum = np.cumsum(costs)
    n_sel = costs.size
    cuts = [0]
    start = 0
    while start < n_sel:
        base = cum[start - 1] if start else 0.0
        end = int(np.searchsorted(cum, base + target_bits, side="right"))
        end = min(max(end, start + 1), start + cap, n_sel)
        cuts.append(end)
        start = end
    run_starts = np.cumsum([0] + [c.sym.size for c in coded])
    out = bytearray()
    prev_table: FrequencyTable | None = None
    prev_pass = 0
    for s in range(len(cuts) - 1):
        a, b = cuts[s], cuts[s + 1]
        head = bytearray()
        pieces = []
        for i, c in enumerate(coded):
            lo, hi = max(a, run_starts[i]) - run_starts[i], min(b, run_starts[i + 1]) - run_starts[i]
            if lo < hi:
                pieces.append((c, lo, hi))
        head += _varint(len(pieces))
        syms, widths, values, signs = [], [], [], []
        for c, lo, hi in pieces:
            r = c.run
            last = hi == c.sym.size and r.complete
            head += _varint(r.pass_index - prev_pass)
            prev_pass = r.pass_index
            head.append(r.cls | (int(last) << 1) | (c.k << 2))
            head += _varint(hi - lo)
            syms.append(c.sym[lo:hi])
            widths.append(c.width[lo:hi])
            values.append(c.value[lo:hi])
            if r.cls == CLASS_NEW:
                signs.append(np.asarray(r.negative[lo:hi], dtype=bool))
        sym = np.concatenate(syms)
        counts = np.bincount(sym, minlength=NSYM)
        table_bytes, table = _best_table(counts, prev_table)
        prev_table = table
        block = ans.encode(sym, table)
        raw = _pack_bits(np.concatenate(widths), np.concatenate(values),
                         np.concatenate(signs) if signs else np.zeros(0, dtype=bool))
        body = bytes(head) + table_bytes + _varint(len(block)) + block + raw
        out += _varint(len(body)) + body
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------


@dataclass
class SurpConfig:
    """The parameters a decoder needs (the codec config JSON)."""

    norm: float
    t0: float
    decay: float
    umax: float
    offset: float
    seed: int

    def to_json(self) -> dict:
        """JSON-able dict (floats round-trip exactly through Python's ``json``)."""
        return {"norm": float(self.norm), "t0": float(self.t0), "decay": float(self.decay),
                "umax": float(self.umax), "offset": float(self.offset), "seed": int(self.seed)}

    @classmethod
    def from_json(cls, config: dict) -> "SurpConfig":
        """Validate and build (CorruptDataError on anything out of range)."""
        if not isinstance(config, dict) or set(config) != _CONFIG_KEYS:
            raise CorruptDataError(f"surp: configuration must have exactly the keys {sorted(_CONFIG_KEYS)}, "
                                   f"got {sorted(config) if isinstance(config, dict) else config!r}")
        vals = {}
        for key in ("norm", "t0", "decay", "umax", "offset"):
            v = config[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise CorruptDataError(f"surp: {key} must be a finite number, got {v!r}")
            vals[key] = float(v)
        seed = config["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 64:
            raise CorruptDataError(f"surp: seed must be an integer in 0..2**64-1, got {seed!r}")
        if vals["norm"] < 0 or vals["umax"] < 0:
            raise CorruptDataError("surp: norm and umax must be >= 0")
        if not vals["t0"] > 0:
            raise CorruptDataError("surp: t0 must be > 0")
        if not 0 < vals["decay"] < 1:
            raise CorruptDataError("surp: decay must be in (0, 1)")
        if not 0 <= vals["offset"] <= 1:
            raise CorruptDataError("surp: offset must be in [0, 1]")
        return cls(seed=seed, **vals)


@dataclass
class _Piece:
    pass_index: int
    cls: int
    end: bool
    k: int
    count: int


@dataclass
class _Segment:
    start: int  # offset of the length varint in the chunk data
    end: int  # offset just after the segment
    pieces: list[_Piece]
    table: FrequencyTable
    block: memoryview
    raw: np.ndarray  # raw-bit bytes


def _parse_segment(buf: bytes, pos: int, prev_table: FrequencyTable | None, count: int,
                   prev_pass: int) -> tuple[_Segment, int]:
    start = pos
    body_len, pos = _read_varint(buf, pos, len(buf), "segment length")
    end = pos + body_len
    if end > len(buf):
        raise TruncatedError(f"surp: segment of {body_len} bytes runs past the end of the chunk", offset=start)
    n_pieces, pos = _read_varint(buf, pos, end, "piece count")
    if not 1 <= n_pieces <= body_len:
        raise CorruptDataError(f"surp: bad piece count {n_pieces}", offset=start)
    pieces = []
    total = 0
    for _ in range(n_pieces):
        delta, pos = _read_varint(buf, pos, end, "pass delta")
        if pos >= end:
            raise TruncatedError("surp: piece header runs past the end of its segment", offset=pos)
        flags = buf[pos]
        pos += 1
        cnt, pos = _read_varint(buf, pos, end, "piece count")
        prev_pass += delta
        k = flags >> 2
        if prev_pass >= MAX_PASSES:
            raise CorruptDataError(f"surp: pass {prev_pass} beyond the limit {MAX_PASSES}", offset=pos)
        if k > MAX_K or cnt < 1:
            raise CorruptDataError(f"surp: bad piece (k={k}, count={cnt})", offset=pos)
        total += cnt
        pieces.append(_Piece(prev_pass, flags & 1, bool(flags & 2), k, cnt))
    if total > max(count, 4096):
        raise CorruptDataError(f"surp: segment holds {total} selections, more than allowed for "
                               f"{count} elements", offset=start)
    if pos >= end:
        raise TruncatedError("surp: segment ends before its table", offset=pos)
    mode = buf[pos]
    pos += 1
    if mode == TABLE_SAME:
        if prev_table is None:
            raise CorruptDataError("surp: the first segment cannot reuse a table", offset=pos - 1)
        table = prev_table
    elif mode == TABLE_GEOMETRIC:
        if pos >= end:
            raise TruncatedError("surp: segment ends inside its table", offset=pos)
        table = geometric_table(buf[pos])
        pos += 1
    elif mode == TABLE_NEW:
        try:
            table, pos = FrequencyTable.from_bytes(memoryview(buf)[:end], pos)
        except TruncatedError as exc:
            raise CorruptDataError(f"surp: segment table is cut short: {exc.message}", offset=pos) from None
    else:
        raise CorruptDataError(f"surp: unknown table mode {mode}", offset=pos - 1)
    if int(table.symbols[-1]) > ESC + MAX_ESC_EXP:
        raise CorruptDataError("surp: table has symbols outside the alphabet", offset=pos)
    block_len, pos = _read_varint(buf, pos, end, "block length")
    if block_len > end - pos:
        raise CorruptDataError("surp: ANS block runs past its segment", offset=pos)
    block = memoryview(buf)[pos:pos + block_len]
    pos += block_len
    raw = np.frombuffer(buf, dtype=np.uint8, count=end - pos, offset=pos)
    return _Segment(start, end, pieces, table, block, raw), prev_pass


def _iter_segments(buf: bytes, count: int, max_bytes: int | None) -> Iterator[_Segment]:
    """Whole segments; with ``max_bytes``, stop before the first one that does not end within it."""
    pos = 0
    prev_table = None
    prev_pass = 0
    limit = len(buf) if max_bytes is None else min(len(buf), max(0, int(max_bytes)))
    while pos < len(buf):
        if max_bytes is not None:
            try:
                body_len, body = _read_varint(buf, pos, limit, "segment length")
            except TruncatedError:
                return
            if body + body_len > limit:
                return
        seg, next_pass = _parse_segment(buf, pos, prev_table, count, prev_pass)
        yield seg
        prev_table, prev_pass, pos = seg.table, next_pass, seg.end


def segment_ends(data: bytes | memoryview, count: int) -> list[int]:
    """Byte offsets at which whole-segment prefixes of a chunk's data end (the last is ``len(data)``)."""
    buf = bytes(data)
    return [seg.end for seg in _iter_segments(buf, count, None)]


def run_key(pass_index: int, cls: int) -> int:
    """Stream order of runs: NEW(0), REFINE(0), NEW(1), REFINE(1), ..."""
    return 2 * pass_index + (0 if cls == CLASS_NEW else 1)


class _Replay:
    """Decoder state: kept weights (sorted permuted positions) with reconstruction and residual bound.

    The weights a NEW(p) run adds stay pending until REFINE(p) is over: REFINE(p) ranks the weights
    kept at the *start* of pass p.
    """

    def __init__(self, count: int, cfg: SurpConfig) -> None:
        self.n = count
        self.cfg = cfg
        self.T = thresholds(cfg.t0, cfg.decay, 1)
        self.pos = np.zeros(0, dtype=np.int64)
        self.rec = np.zeros(0, dtype=np.float64)
        self.bound = np.zeros(0, dtype=np.float64)
        self.neg = np.zeros(0, dtype=bool)
        self.key = -1  # run_key of the open run (-1: none yet)
        self.last = -1  # last rank of the open run
        self.closed = True  # the open run ended (END flag)
        self.pending: tuple[int, list[np.ndarray], list[np.ndarray]] | None = None  # NEW(p) not merged
        self.shift: np.ndarray | None = None  # pos - arange, for NEW rank -> position

    def thr(self, p: int) -> float:
        if p >= self.T.size:
            self.T = thresholds(self.cfg.t0, self.cfg.decay, max(p + 1, 2 * self.T.size))
        t = float(self.T[p])
        if not t > 0:
            raise CorruptDataError(f"surp: pass {p} has a zero threshold (underflow)")
        return t

    def _merge(self) -> None:
        """Add the pending NEW(p) weights (value T[p], bound min(umax, T[p-1]) - T[p])."""
        if self.pending is None:
            return
        p, xs, ns = self.pending
        self.pending = None
        self.shift = None
        if not xs:
            return
        x = np.concatenate(xs)
        ng = np.concatenate(ns)
        t = self.thr(p)
        hi = self.cfg.umax if p == 0 else min(self.cfg.umax, self.thr(p - 1))
        at = np.searchsorted(self.pos, x)
        self.pos = np.insert(self.pos, at, x)
        self.rec = np.insert(self.rec, at, t)
        self.bound = np.insert(self.bound, at, hi - t)
        self.neg = np.insert(self.neg, at, ng)

    def _advance(self, key: int) -> None:
        """Close the open run and account for the runs strictly between it and ``key`` (performed,
        no selections): a complete REFINE(q) tightens every untested bound to T[q]; NEW(q) weights
        join after REFINE(q)."""
        a = self.key
        if a >= 0 and a % 2 == 1:  # open REFINE(q)
            if self.closed and self.last + 1 < self.pos.size:
                tail = self.bound[self.last + 1:]
                np.minimum(tail, self.thr(a // 2), out=tail)
            self._merge()
        first, last = (a + 1) // 2, (key - 2) // 2  # skipped REFINE(q) for first <= q <= last
        if last >= first:
            if self.pos.size:
                np.minimum(self.bound, self.thr(first), out=self.bound)
            self._merge()  # NEW(first) joins after REFINE(first); later skipped passes add nothing new
            if last > first and self.pos.size:
                np.minimum(self.bound, self.thr(last), out=self.bound)
        self.key = key

    def piece(self, pc: _Piece, gaps: np.ndarray, neg: np.ndarray | None) -> None:
        key = run_key(pc.pass_index, pc.cls)
        if key == self.key:
            if self.closed:
                raise CorruptDataError("surp: a piece continues a run that already ended")
        else:
            if key < self.key:
                raise CorruptDataError("surp: runs out of order")
            self._advance(key)
            self.last, self.closed = -1, False
        ranks = self.last + 1 + np.cumsum(gaps + 1) - 1
        t = self.thr(pc.pass_index)
        if pc.cls == CLASS_REFINE:
            dom = self.pos.size
            if ranks.size and int(ranks[-1]) >= dom:
                raise CorruptDataError(f"surp: refinement rank {int(ranks[-1])} outside the {dom} kept weights")
            lo, hi = self.last + 1, int(ranks[-1]) + 1
            old = self.bound[lo:hi].copy()
            seg = np.minimum(old, t)
            rel = ranks - lo
            seg[rel] = old[rel] - t
            self.bound[lo:hi] = seg
            self.rec[ranks] += t
        else:
            dom = self.n - self.pos.size
            if ranks.size and int(ranks[-1]) >= dom:
                raise CorruptDataError(f"surp: new rank {int(ranks[-1])} outside the {dom} candidates")
            if self.shift is None:
                self.shift = self.pos - np.arange(self.pos.size, dtype=np.int64)
            x = ranks + np.searchsorted(self.shift, ranks, side="right")
            if self.pending is None:
                self.pending = (pc.pass_index, [], [])
            self.pending[1].append(x)
            self.pending[2].append(neg)
        self.last = int(ranks[-1])
        self.closed = pc.end

    def finish(self) -> None:
        """End of the (prefix of the) stream: close the open run, add pending weights."""
        a = self.key
        if a >= 0 and a % 2 == 1 and self.closed and self.last + 1 < self.pos.size:
            tail = self.bound[self.last + 1:]
            np.minimum(tail, self.thr(a // 2), out=tail)
        self._merge()
        self.key = 1 << 62

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """(element indices, signed normalised values) of the kept weights."""
        a, c = permutation_params(self.n, self.cfg.seed)
        idx = positions_to_indices(self.pos, self.n, a, c)
        mag = self.rec + self.cfg.offset * np.maximum(self.bound, 0.0)
        return idx, np.where(self.neg, -mag, mag)


def _apply_segment(rep: _Replay, seg: _Segment, syms: np.ndarray) -> None:
    k_of = np.repeat(np.array([p.k for p in seg.pieces], dtype=np.int64),
                     [p.count for p in seg.pieces])
    sym = syms.astype(np.int64)
    big = sym >= ESC
    e = np.where(big, sym - ESC, 0)
    widths = k_of + e
    if int(widths.max(initial=0)) > 56:
        raise CorruptDataError("surp: raw field wider than 56 bits")
    n_signs = sum(p.count for p in seg.pieces if p.cls == CLASS_NEW)
    total_bits = int(widths.sum()) + n_signs
    if seg.raw.size != (total_bits + 7) // 8:
        if seg.raw.size < (total_bits + 7) // 8:
            raise TruncatedError("surp: raw bits end early", offset=seg.end)
        raise CorruptDataError("surp: bytes after the raw bits of a segment", offset=seg.end)
    fields = _unpack_fields(seg.raw, widths).astype(np.int64)
    rem = fields & ((np.int64(1) << k_of) - 1)
    mant = fields >> k_of
    q = np.where(big, (ESC - 1) + (np.int64(1) << e) + mant, sym)
    gaps = (q << k_of) | rem
    if int(gaps.max(initial=0)) >= 1 << 40:
        raise CorruptDataError("surp: gap out of range")
    base = int(widths.sum())
    bits = np.unpackbits(seg.raw, bitorder="little")
    if total_bits % 8 and bits[total_bits:].any():
        raise CorruptDataError("surp: nonzero padding bits", offset=seg.end - 1)
    signs = bits[base:base + n_signs].astype(bool)
    at = 0
    s_at = 0
    for pc in seg.pieces:
        g = gaps[at:at + pc.count]
        neg = None
        if pc.cls == CLASS_NEW:
            neg = signs[s_at:s_at + pc.count]
            s_at += pc.count
        rep.piece(pc, g, neg)
        at += pc.count


def decode_stream(data: bytes | memoryview, count: int, config: SurpConfig | dict,
                  max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Decode a chunk's stream (or its longest whole-segment prefix within ``max_bytes``).

    Returns ``(indices, signed normalised values, bytes used)``; multiply the values by ``norm``.
    """
    cfg = config if isinstance(config, SurpConfig) else SurpConfig.from_json(config)
    buf = bytes(data)
    rep = _Replay(int(count), cfg)
    segs = list(_iter_segments(buf, int(count), max_bytes))
    total = lambda s: sum(p.count for p in s.pieces)  # noqa: E731
    many = getattr(ans, "decode_many", None)
    if many is not None and len(segs) > 1:
        decoded = many([(s.block, total(s), s.table, np.uint8) for s in segs])
    else:
        decoded = [ans.decode(s.block, total(s), s.table, out_dtype=np.uint8) for s in segs]
    for seg, syms in zip(segs, decoded):
        try:
            _apply_segment(rep, seg, syms)
        except RdcError as exc:
            raise exc.with_context(offset=seg.start)
    rep.finish()
    idx, vals = rep.values()
    used = segs[-1].end if segs else 0
    return idx, vals, used


def decode_prefix(data: bytes | memoryview, count: int, dtype: DtypeInfo, config: SurpConfig | dict,
                  max_bytes: int | None = None) -> np.ndarray:
    """The chunk decoded from its whole segments within the first ``max_bytes`` bytes (all if None).

    Any prefix is a valid coarser model: weights not yet chosen are zero. Returns ``count`` elements
    of ``dtype`` (little-endian).
    """
    cfg = config if isinstance(config, SurpConfig) else SurpConfig.from_json(config)
    idx, vals, _ = decode_stream(data, count, cfg, max_bytes)
    out = np.zeros(int(count), dtype=dtype.numpy.newbyteorder("<"))
    out[idx] = (vals * cfg.norm).astype(dtype.numpy)
    return out


# A budgeted read (rdformat.surp.load_budget) sets the fraction of every chunk's bytes to decode.
_PREFIX_FRACTION: contextvars.ContextVar[float | None] = contextvars.ContextVar("surp_prefix_fraction",
                                                                                default=None)


@contextlib.contextmanager
def prefix_fraction(fraction: float | None) -> Iterator[None]:
    """Within the block, :meth:`SurpCodec.decode_chunk` decodes only whole segments within
    ``floor(fraction * len(data))`` bytes of each chunk (the hook behind budgeted reads)."""
    token = _PREFIX_FRACTION.set(fraction)
    try:
        yield
    finally:
        _PREFIX_FRACTION.reset(token)


# ---------------------------------------------------------------------------------------------
# the codec
# ---------------------------------------------------------------------------------------------


@register_codec
class SurpCodec(Codec):
    """Progressive SuRP codec (lossy). See the module docstring and ``spec/surp.md``.

    Used three ways:

    * ``SurpCodec(sparsity=0.9)`` (or ``bits_per_weight=`` / ``distortion=``) with
      :func:`rdformat.save`: every float tensor of 2+ dims is pruned on its own to that target
      (layer-wise statistics); others go to the lossless codec.
    * ``rdformat.surp.plan(...).codec()``: the same with one global schedule (global statistics).
    * ``rdformat.surp.compress`` / ``save`` pass precomputed chunk payloads (parallel encoding).
    """

    codec_id = "surp"
    lossless = False
    #: Any whole-segment prefix of a chunk decodes (see :meth:`decode_chunk_prefix`).
    progressive = True

    def __init__(self, config: SurpConfig | dict | None = None, *, plan: object | None = None,
                 payloads: list[bytes] | None = None, chunk_counts: list[int] | None = None,
                 **targets: object) -> None:
        self.config = SurpConfig.from_json(config) if isinstance(config, dict) else config
        self._plan = plan
        self._payloads = list(payloads) if payloads is not None else None
        self._counts = list(chunk_counts) if chunk_counts is not None else None
        self._targets = targets
        self._encoder: object | None = None

    def get_config(self) -> dict:
        """The decoder parameters (``{}`` for an unconfigured codec)."""
        return self.config.to_json() if self.config is not None else {}

    @classmethod
    def from_config(cls, config: dict) -> "SurpCodec":
        """Rebuild from a tensor header (validated)."""
        return cls(SurpConfig.from_json(config))

    def for_tensor(self, array: np.ndarray, dtype: DtypeInfo) -> Codec:
        """Configure for one tensor: SuRP for float tensors of 2+ dims, lossless otherwise."""
        if self.config is not None and self._payloads is not None:
            return self
        from .. import surp as _surp  # the pass lives in rdformat.surp (imports this module)

        if not _surp.is_prunable(array):
            from .bytesplit import ByteSplitCodec

            return ByteSplitCodec().for_tensor(array, dtype)
        plan = self._plan if self._plan is not None else _surp.plan_tensor(array, **self._targets)
        encoder = _surp.TensorEncoder(plan, array)
        codec = SurpCodec(encoder.config)
        codec._encoder = encoder
        return codec

    def encode_chunk(self, elements: np.ndarray, dtype: DtypeInfo) -> bytes:
        """The stream of one chunk (precomputed, or encoded here from the elements)."""
        if self._payloads is not None:
            if not self._payloads:
                raise InvalidInputError("surp: more chunks requested than were precomputed")
            if self._counts is not None and self._counts.pop(0) != int(np.asarray(elements).size):
                raise InvalidInputError("surp: the writer's chunking differs from the precomputed streams "
                                        "(use the same chunk_bytes)")
            return self._payloads.pop(0)
        if self._encoder is None:
            raise InvalidInputError("surp: call for_tensor() before encode_chunk()")
        return self._encoder.encode_chunk(elements)  # type: ignore[attr-defined]

    def decode_chunk(self, data: memoryview, count: int, dtype: DtypeInfo) -> np.ndarray:
        """Decode the chunk (a prefix of it inside :func:`prefix_fraction`)."""
        if self.config is None:
            raise CorruptDataError("surp: missing configuration")
        if dtype.kind != "float":
            raise CorruptDataError(f"surp: cannot decode into {dtype.name}")
        frac = _PREFIX_FRACTION.get()
        limit = None if frac is None else int(math.floor(frac * len(data)))
        return decode_prefix(data, count, dtype, self.config, limit)

    def decode_chunk_prefix(self, data: memoryview, count: int, dtype: DtypeInfo, max_bytes: int) -> np.ndarray:
        """Decode the whole segments within the first ``max_bytes`` bytes of the chunk."""
        if self.config is None:
            raise CorruptDataError("surp: missing configuration")
        return decode_prefix(data, count, dtype, self.config, max_bytes)
