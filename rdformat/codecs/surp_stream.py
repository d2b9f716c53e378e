"""``surp``: the progressive SuRP index stream (lossy, embedded; normative text: ``spec/rdc-v1.md`` 5.5).

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

import functools
import math
from dataclasses import dataclass

import numpy as np

from ..entropy import FrequencyTable, ans
from ..errors import CorruptDataError, InvalidInputError
from ..format.wire import leb128, read_leb128

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
    if value >= 1 << 63:
        raise InvalidInputError(f"varint out of range: {value}")
    return leb128(value)


def _read_varint(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """Canonical LEB128, at most 9 bytes (< 2**63); ``end`` bounds the read."""
    return read_leb128(buf, pos, end, max_bytes=9, what=f"surp: {what}")


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
    theta = j/256, every symbol of the alphabet at least 1; integer arithmetic only (spec/rdc-v1.md 5.5)."""
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


def run_key(pass_index: int, cls: int) -> int:
    """Stream order of runs: NEW(0), REFINE(0), NEW(1), REFINE(1), ..."""
    return 2 * pass_index + (0 if cls == CLASS_NEW else 1)


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
            try:  # a JSON integer beyond float range raises OverflowError in isfinite/float
                ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            except OverflowError:
                ok = False
            if not ok:
                shown = repr(v) if not isinstance(v, int) or v.bit_length() < 64 else f"an integer of {v.bit_length()} bits"
                raise CorruptDataError(f"surp: {key} must be a finite number, got {shown}")
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
