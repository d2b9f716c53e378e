"""``dq``: dependent (trellis-coded) quantization levels, entropy-coded like ``sq``.

Two scalar quantizers share one step ``S``: Q0 reconstructs even multiples of ``S`` (``2kS``), Q1 odd
multiples and zero (``(2k - sgn k) S``). Which one a level uses is set by a 4-state machine driven by
the parity of the previous levels of its *chain* (a run of ``chain`` consecutive elements; each chain
starts in state 0). The union of the two quantizers is a lattice twice as fine as either, yet each
level only pays for its own quantizer's alphabet: an encoder that picks the levels by a Viterbi search
(:func:`rdformat.trellis.quantize_trellis`) gets closer to the rate-distortion bound than any scalar
quantizer (about 0.2 bit per weight at 3-5 bits per weight on Laplacian data).

The levels are stored exactly as ``sq`` stores them (spec 5.3: zigzag symbols, grouped, one ANS
block per chunk), so the entropy coder and all its decoders are shared; only the reconstruction
differs. Chains never cross a chunk boundary: writers make ``chunk_elements`` a multiple of ``chain``.
"""

from __future__ import annotations

import math

import numpy as np

from ..format.dtypes import DtypeInfo
from ..entropy import ans, entropy_bits
from ..errors import CorruptDataError, RdcError
from .registry import register_codec
from .axis_scales import KEYS as SCALE_KEYS, AxisScaled, AxisScales
from .base import ChunkPlan, Codec, byte_view
from .sq import MODE_ZERO, SQCodec, encode_levels, group_values, symbol_dtype, zigzag

#: next_state = NEXT_STATE[state][level & 1]; the quantizer of a state is ``state >> 1``.
NEXT_STATE = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], dtype=np.int8)
#: Longest chain: bounds the sequential steps a decoder takes per chunk (hostile files included).
MAX_CHAIN = 1024
DEFAULT_CHAIN = 256


def dq_reconstruct(levels: np.ndarray, step: float, chain: int, dtype: np.dtype) -> np.ndarray:
    """The normative reconstruction (spec 5.4) of one chunk's levels, in float64 then rounded to ``dtype``.

    Vectorised across chains, and 8 positions per step: a table maps (state, 8 parity bits) to the
    8 quantizer choices and the state that follows.
    """
    q = np.asarray(levels).astype(np.int32, copy=False).reshape(-1)
    n = q.size
    if n == 0:
        return np.zeros(0, dtype=dtype)
    chains = -(-n // chain)
    width = min(chain, n)
    words = -(-width // 8)
    parity = np.zeros((chains, words * 8), dtype=np.uint8)
    flat_parity = (q & 1).astype(np.uint8)  # two's complement: parity of k == parity of |k|
    if chains * width == n:
        parity[:, :width] = flat_parity.reshape(chains, width)
    else:
        full = n // width
        parity[:full, :width] = flat_parity[: full * width].reshape(full, width)
        parity[full, : n - full * width] = flat_parity[full * width :]
    packed = np.packbits(parity, axis=1, bitorder="little")  # (chains, words): bit i = position 8j + i
    quantizer_bits = np.empty_like(packed)
    table_q, table_next = _state_tables()
    state = np.zeros(chains, dtype=np.uint16)
    for j in range(words):
        index = (state << 8) | packed[:, j]
        quantizer_bits[:, j] = table_q[index]
        state = table_next[index]
    quantizer = np.unpackbits(quantizer_bits, axis=1, bitorder="little")[:, :width]
    quantizer = quantizer.reshape(-1)[:n]
    # k != 0: x = sgn(k) * (2|k| - quantizer) * S = (2k - sgn(k) * quantizer) * S, an exact integer times S.
    ints = 2 * q - np.sign(q) * quantizer
    return (ints.astype(np.float64) * step).astype(dtype)


def _reconstruct_compiled(levels: np.ndarray, step: float, chain: int, dtype: np.dtype) -> np.ndarray:
    """:func:`dq_reconstruct` by the compiled kernel (float32/float64 directly, other floats via float64)."""
    from . import kernels_numba  # noqa: PLC0415 - optional accelerator, loaded on first use

    direct = dtype.newbyteorder("=") in (np.dtype(np.float32), np.dtype(np.float64))
    out = kernels_numba.dq_reconstruct(levels.astype(np.int32, copy=False), step, chain,
                                       dtype if direct else np.float64)
    return out.view(dtype) if direct else out.astype(dtype)


_TABLES: tuple[np.ndarray, np.ndarray] | None = None


def _state_tables() -> tuple[np.ndarray, np.ndarray]:
    """For index ``state << 8 | parity_bits`` (bit i = parity of position i): the quantizer bits of
    the 8 positions and the state after them (built once)."""
    global _TABLES
    if _TABLES is None:
        index = np.arange(4 << 8, dtype=np.uint16)
        state = (index >> 8).astype(np.uint8)
        bits = np.zeros(index.size, dtype=np.uint8)
        for i in range(8):
            bits |= (state >> 1) << i
            state = _NEXT_FLAT[(state << 1) | ((index >> i) & 1).astype(np.uint8)]
        _TABLES = (bits, state.astype(np.uint16))
    return _TABLES


_NEXT_FLAT = NEXT_STATE.astype(np.uint8).reshape(-1)

#: Level-payload mode only ``dq`` chunks use: segments sorted into classes, one model per class.
MODE_CLASSES = 3
MAX_CLASSES = 8
MAX_SEGMENT = 1 << 20
#: Segment lengths the encoder tries (besides a producer's hint such as the row length).
SEGMENT_CANDIDATES = (256, 1024)
CLASS_COUNTS = (2, 3, 4, 6, 8)


def _entropy_bytes(symbols: np.ndarray) -> float:
    """Zero-order code length plus a rough table cost: the proxy used to compare class layouts."""
    bits, distinct = entropy_bits(symbols)
    return bits / 8 + 2.5 * distinct + 12


def _histogram_bytes(counts: np.ndarray) -> float:
    """:func:`_entropy_bytes` of the symbols whose histogram is ``counts`` (the same float operations on the
    same nonzero counts, so the same result to the last bit)."""
    counts = counts[counts > 0].astype(np.float64)
    bits = float(-(counts * np.log2(counts / counts.sum())).sum())
    return bits / 8 + 2.5 * int(counts.size) + 12


def encode_dq_levels(levels: np.ndarray, segment_hint: int | None = None) -> bytes:
    """One chunk's level payload: a single model (spec 5.3 modes) or CLASSES when that is smaller.

    CLASSES cuts the chunk into segments (e.g. rows), sorts the segments into 2-8 classes by their
    mean |level| and codes each class with its own model: weights of real layers change scale from row
    to row, which one static model cannot follow.
    """
    single = encode_levels(levels, "dq")
    n = levels.size
    if single[0] == MODE_ZERO or n < 2048:
        return single
    z = zigzag(levels)
    mags = np.abs(levels.astype(np.int64))
    best = (_entropy_bytes(z) * 0.99, None)
    for seg in dict.fromkeys(([segment_hint] if segment_hint else []) + list(SEGMENT_CANDIDATES)):
        if not 1 <= seg <= MAX_SEGMENT or n < 8 * seg:
            continue
        starts = np.arange(0, n, seg)
        lengths = np.minimum(seg, n - starts)
        seg_mean = np.add.reduceat(mags, starts) / lengths
        # Every layout's class histograms are sums of per-segment histograms, computed once per segment
        # length (one pass over the chunk instead of one per class and layout) when they stay small.
        radix = int(z.max()) + 1
        seg_hist = None
        if starts.size * radix <= max(4 * n, 1 << 16):
            seg_hist = np.bincount(np.repeat(np.arange(starts.size, dtype=np.int64) * radix, lengths) + z,
                                   minlength=starts.size * radix).reshape(starts.size, radix)
        for k in CLASS_COUNTS:
            edges = np.unique(np.quantile(seg_mean, np.arange(1, k) / k))
            classes = np.searchsorted(edges, seg_mean, side="right")
            per_element = None
            cost = 6 + 4 * (edges.size + 2) + classes.size * np.log2(edges.size + 1) / 8
            if seg_hist is not None:
                cost += sum(_histogram_bytes(seg_hist[classes == c].sum(axis=0)) for c in range(edges.size + 1))
            else:
                per_element = np.repeat(classes, lengths)
                cost += sum(_entropy_bytes(z[per_element == c]) for c in range(edges.size + 1))
            if cost < best[0]:
                best = (cost, (seg, edges.size + 1, classes, lengths, per_element))
    if best[1] is None:
        return single
    seg, count, classes, lengths, per_element = best[1]
    if per_element is None:
        per_element = np.repeat(classes, lengths)
    parts = [bytes([MODE_CLASSES]) + seg.to_bytes(4, "little") + bytes([count])]
    for payload in [encode_levels(classes.astype(np.int32), "dq")] + [
            encode_levels(levels[per_element == c], "dq") for c in range(count)]:
        parts.append(len(payload).to_bytes(4, "little") + payload)
    classed = b"".join(parts)
    return classed if len(classed) < len(single) else single


@register_codec
class DQCodec(AxisScaled, Codec):
    """Trellis-coded quantization levels (see module docstring).

    Args:
        step: the step ``S`` (> 0, finite); reconstructions are integer multiples of it.
        chain: elements per trellis chain (1..65536).
        stats: informational figures recorded at encode time (ignored by decoders).
        segment_hint: encoder hint, not stored (see below).
        scales: per-channel step factors (spec 5.6), applied to the whole decoded tensor.
    """

    codec_id = "dq"
    lossless = False

    def __init__(self, step: float, chain: int = DEFAULT_CHAIN, stats: dict | None = None,
                 segment_hint: int | None = None, scales: AxisScales | None = None) -> None:
        if not isinstance(step, (int, float)) or isinstance(step, bool) or not math.isfinite(step) or step <= 0:
            raise CorruptDataError(f"dq: step must be a finite number > 0, got {step!r}")
        if not isinstance(chain, int) or isinstance(chain, bool) or not 1 <= chain <= MAX_CHAIN:
            raise CorruptDataError(f"dq: chain must be an integer in 1..{MAX_CHAIN}, got {chain!r}")
        self.step = float(step)
        self.chain = chain
        self.stats = dict(stats or {})
        #: encoder hint, not stored: a natural segment length for CLASSES (the row length)
        self.segment_hint = segment_hint
        self.scales = scales if scales is not None else AxisScales()

    @property
    def chunk_multiple(self) -> int:
        """Writers keep ``chunk_elements`` a multiple of this, so chains never straddle chunks."""
        return self.chain

    def get_config(self) -> dict:
        """Step, chain length and axis scales."""
        config = {"step": self.step, "chain": self.chain}
        config.update(self.scales.config())
        if self.stats:
            config["stats"] = self.stats
        return config

    @classmethod
    def from_config(cls, config: dict) -> "DQCodec":
        """Rebuild from a tensor header; unknown keys are refused except ``stats``."""
        if set(config) - {"step", "chain", "stats", *SCALE_KEYS} or "step" not in config or "chain" not in config:
            raise CorruptDataError(f"dq: bad configuration keys {sorted(config)}")
        stats = config.get("stats")
        return cls(config["step"], config["chain"], stats if isinstance(stats, dict) else None,
                   scales=AxisScales.from_config(config, "dq"))

    def encode_chunk(self, elements: np.ndarray, dtype: DtypeInfo) -> bytes:
        """Store the chunk's levels (the ``sq`` level payload, or CLASSES)."""
        return encode_dq_levels(elements, self.segment_hint)

    def decode_levels(self, data: memoryview, count: int) -> np.ndarray:
        """The stored integer levels of one chunk."""
        blocks, finish = self._plan_levels(data, count)
        return finish(ans.decode_many(blocks))

    @staticmethod
    def _plan_levels(data: memoryview, count: int):
        """(ANS blocks, function of their decoded symbols -> int32 levels) of one chunk."""
        buf = byte_view(data)  # no copy: chunks can be megabytes
        if not buf or buf[0] != MODE_CLASSES:
            k, radix, table, block, pos = SQCodec.parse_payload(buf, count)
            if k == 0:
                return [], lambda _decoded: np.zeros(count, dtype=np.int32)

            def single(decoded: list) -> np.ndarray:
                SQCodec.check_padding(decoded[0], k, radix, count, pos)
                return group_values(decoded[0], table, k, radix, count, np.int32)

            return [(block, -(-count // k), table, symbol_dtype(table))], single
        if len(buf) < 6:
            raise CorruptDataError("dq CLASSES header is truncated", offset=len(buf))
        seg, n_classes = int.from_bytes(buf[1:5], "little"), buf[5]
        if not 1 <= seg <= MAX_SEGMENT or not 2 <= n_classes <= MAX_CLASSES:
            raise CorruptDataError(f"dq CLASSES has segment length {seg} or {n_classes} classes out of range",
                                   offset=1)
        pos = 6
        segments = -(-count // seg)
        parts = []
        for _part in range(n_classes + 1):  # the class map, then one payload per class
            if pos + 4 > len(buf):
                raise CorruptDataError("dq CLASSES payload is truncated", offset=pos)
            size = int.from_bytes(buf[pos : pos + 4], "little")
            if size > len(buf) - pos - 4:
                raise CorruptDataError(f"dq CLASSES part of {size} bytes overruns the chunk", offset=pos)
            parts.append((pos + 4, memoryview(buf)[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if pos != len(buf):
            raise CorruptDataError("dq CLASSES payload has trailing bytes", offset=pos)
        try:
            classes = SQCodec(1.0).decode_levels(parts[0][1], segments)
        except RdcError as exc:
            raise CorruptDataError(f"dq class map: {exc.message}", offset=parts[0][0] + (exc.offset or 0)) from None
        if segments and (int(classes.min()) < 0 or int(classes.max()) >= n_classes):
            raise CorruptDataError(f"dq class map holds a class outside 0..{n_classes - 1}", offset=parts[0][0])
        # Elements per class from the segments' classes (no per-element class array): every segment is
        # ``width`` long but the last, ``pad`` shorter; one segment is the whole chunk (``seg`` may be far
        # larger than the chunk).
        width = seg if segments > 1 else max(count, 1)
        pad = width * segments - count
        sizes = np.bincount(classes, minlength=n_classes).astype(np.int64) * width
        if segments:
            sizes[int(classes[-1])] -= pad
        blocks, layouts, tables = [], [], []
        for c in range(n_classes):
            start, part = parts[c + 1]
            try:
                k, radix, table, block, sub = SQCodec.parse_payload(part, int(sizes[c]))
            except RdcError as exc:
                raise CorruptDataError(f"dq class {c}: {exc.message}", offset=start + (exc.offset or 0)) from None
            if k:
                blocks.append((block, -(-int(sizes[c]) // k), table, symbol_dtype(table)))
            layouts.append((k, radix, start + sub))
            tables.append(table)

        def classed(decoded: list) -> np.ndarray:
            if ans.compiled_active():
                from . import kernels_numba  # noqa: PLC0415 - optional accelerator, loaded on first use

                # each class's levels straight into its segments (a zero class leaves its segments zero)
                levels = np.zeros(count, dtype=np.int32)
                it = iter(decoded)
                for c, (k, radix, where) in enumerate(layouts):
                    if k:
                        symbols = next(it)
                        SQCodec.check_padding(symbols, k, radix, int(sizes[c]), where)
                        values = group_values(symbols, tables[c], k, radix, int(sizes[c]), np.int32)
                        kernels_numba.place_class(values, classes, c, width, levels)
                return levels
            # Segment rows of the chunk padded to whole segments: class c's levels fill its rows in order,
            # the last segment's class gets ``pad`` zeros at its end (cut off again below).
            rows = np.zeros((segments, width), dtype=np.int32)
            it = iter(decoded)
            for c, (k, radix, where) in enumerate(layouts):
                if k:
                    symbols = next(it)
                    n = int(sizes[c])
                    SQCodec.check_padding(symbols, k, radix, n, where)
                    values = group_values(symbols, tables[c], k, radix, n, np.int32)
                    if pad and c == int(classes[-1]):
                        values = np.concatenate([values, np.zeros(pad, dtype=values.dtype)])
                    rows[classes == c] = values.reshape(-1, width)
            return rows.reshape(-1)[:count]

        return blocks, classed

    def plan_chunk(self, data: memoryview, count: int, dtype: DtypeInfo, *,
                   max_bytes: int | None = None) -> ChunkPlan:
        """The chunk's ANS block, then the trellis reconstruction."""
        if dtype.kind != "float":
            raise CorruptDataError(f"dq codec cannot produce dtype {dtype.name}")
        out_dtype = dtype.numpy.newbyteorder("<")
        blocks, levels_of = self._plan_levels(data, count)
        if not blocks:  # every level is zero (mode ZERO, or CLASSES whose parts are all ZERO)
            return ChunkPlan([], lambda _decoded: np.zeros(count, dtype=out_dtype))

        def finish(decoded: list) -> np.ndarray:
            reconstruct = _reconstruct_compiled if ans.compiled_active() else dq_reconstruct
            return reconstruct(levels_of(decoded), self.step, self.chain, out_dtype)

        def into(decoded: list, out: np.ndarray) -> None:
            if ans.compiled_active() and out_dtype.newbyteorder("=") in (np.dtype(np.float32), np.dtype(np.float64)):
                from . import kernels_numba  # noqa: PLC0415 - optional accelerator, loaded on first use

                levels = levels_of(decoded)
                if levels.size != count:  # every element of ``out`` must be written
                    raise CorruptDataError(f"dq chunk decoded to {levels.size} levels, expected {count}")
                # reconstructed straight into the tensor (float32/float64; others round via float64)
                kernels_numba.dq_reconstruct(levels.astype(np.int32, copy=False), self.step, self.chain,
                                             out.dtype, out=out)
            else:
                out[:] = finish(decoded)

        return ChunkPlan(blocks, finish, into)

    def decode_chunk(self, data: memoryview, count: int, dtype: DtypeInfo, *,
                     max_bytes: int | None = None) -> np.ndarray:
        """Decode levels and reconstruct them to the tensor's dtype."""
        plan = self.plan_chunk(data, count, dtype)
        return plan.finish(ans.decode_many(plan.blocks))
