"""Decoding SuRP streams (see :mod:`.surp_stream` for the layout): segments, replay, prefixes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..entropy import FrequencyTable, ans
from ..errors import CorruptDataError, LimitExceededError, RdcError, TruncatedError
from ..format.dtypes import DtypeInfo
from .surp_stream import (
    CLASS_NEW,
    CLASS_REFINE,
    ESC,
    MAX_ESC_EXP,
    MAX_K,
    MAX_PASSES,
    TABLE_GEOMETRIC,
    TABLE_NEW,
    TABLE_SAME,
    SurpConfig,
    _read_varint,
    _unpack_fields,
    geometric_table,
    permutation_params,
    positions_to_indices,
    run_key,
    thresholds,
)

#: Replay work allowed per byte of stream (element updates of the kept-weight arrays), plus
#: :data:`WORK_PER_ELEMENT` per element of the chunk. Replaying a pass costs work proportional to the
#: weights kept so far, so passes x kept weights could reach ~32768 per byte (4096 passes, 8 weights
#: per byte); real streams use at most ~100 per byte (8 bits/weight) and ~90 per element. Past the
#: budget the stream is refused (LimitExceededError): the decoder's time is linear in the stream's
#: and the output's size.
WORK_PER_BYTE = 1024
WORK_PER_ELEMENT = 256
WORK_BASE = 1 << 20


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


def segment_passes(data: bytes | memoryview, count: int) -> list[tuple[int, int]]:
    """``(end offset, pass of its first piece)`` of every segment of a chunk's data."""
    buf = bytes(data)
    return [(seg.end, seg.pieces[0].pass_index) for seg in _iter_segments(buf, count, None)]


class _Replay:
    """Decoder state: kept weights (sorted permuted positions) with reconstruction and residual bound.

    The weights a NEW(p) run adds stay pending until REFINE(p) is over: REFINE(p) ranks the weights
    kept at the *start* of pass p.
    """

    def __init__(self, count: int, cfg: SurpConfig, budget: int | None = None) -> None:
        self.n = count
        self.work = 0
        self.budget = budget
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

    def _spend(self, n: int) -> None:
        """Account for ``n`` element updates; refuse a stream that needs more than its budget."""
        self.work += n
        if self.budget is not None and self.work > self.budget:
            raise LimitExceededError(
                f"surp: replaying this stream needs over {self.budget} element updates (passes x kept "
                "weights), more than its size justifies; refused")

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
        self._spend(self.pos.size + x.size)
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
        self._spend(2 * self.pos.size)
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
            self._spend(hi - lo)
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
                self._spend(self.pos.size)
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
    rep = _Replay(int(count), cfg, WORK_BASE + WORK_PER_BYTE * len(buf) + WORK_PER_ELEMENT * int(count))
    segs = list(_iter_segments(buf, int(count), max_bytes))
    total = lambda s: sum(p.count for p in s.pieces)  # noqa: E731
    if len(segs) > 1:
        decoded = ans.decode_many([(s.block, total(s), s.table, np.uint8) for s in segs])
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
