"""``sq``: scalar-quantized levels, entropy-coded (the lossy codec).

A tensor is stored as integer levels ``q`` (most of them zero after rate-distortion optimised
quantization) and a dequantization rule: ``x = sign(q) * (|q| - offset) * step`` where the offset is
``offset1`` for ``|q| == 1`` and ``offset2`` for larger levels. The offsets move reconstructions from
bin midpoints to the conditional means of a peaked (Laplacian-like) weight distribution, which
lowers the error at no cost in rate. Levels are zigzag-mapped to symbols and ANS-coded per chunk
with an exact frequency table of the chunk's own statistics, so zero runs cost a fraction of a bit
each and positions of nonzeros are implied by the symbol stream.

The codec stores levels; producing them (choosing ``step`` and levels) is the job of
:mod:`rdformat.quantize`.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any

import numpy as np

from ..format.dtypes import DtypeInfo
from ..entropy import FrequencyTable, ans
from ..errors import CorruptDataError, InvalidInputError, RdcError
from .registry import register_codec
from .axis_scales import KEYS as SCALE_KEYS, AxisScaled, AxisScales
from .base import ChunkPlan, Codec, byte_view

MODE_ZERO = 0
MODE_TABLE = 1
MODE_PARAMETRIC = 2
#: Largest |level| the codec stores (zigzag symbols stay below 2**16, one table holds them all).
MAX_LEVEL = (1 << 15) - 1
#: Table precision: 16 bits keeps the model cost of rare large levels close to ideal.
TABLE_PRECISION = 16
#: A finer table with more lookup slots (``2**Q``) than a quarter of the chunk's symbols is taken only if it
#: codes the chunk at least this fraction smaller: a decoder fills the slots of every table and looks each
#: symbol up in them, and at Q = 16 (128 KiB of slots, out of the first-level cache) MTCNN R-Net and O-Net
#: loaded 4-9% slower than with this rule, for 0.003-0.08% fewer bytes (``sq`` and ``dq`` at 4 bits; the
#: 22.7 M-weight model's files grew by 0.03% / 0.007%).
FINE_TABLE_GAIN = 0.003


def zigzag(levels: np.ndarray) -> np.ndarray:
    """Signed levels -> non-negative symbols: 0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ..."""
    q = levels.astype(np.int64, copy=False)
    # 2q for q >= 0, -2q - 1 for q < 0: q >> 63 is 0 or -1 (all ones), so the xor is the two cases at once
    return ((q << 1) ^ (q >> 63)).astype(np.uint32)


def unzigzag(symbols: np.ndarray) -> np.ndarray:
    """Inverse of :func:`zigzag`."""
    s = symbols.astype(np.int64, copy=False)
    return ((s >> 1) ^ -(s & 1)).astype(np.int32)  # odd s: ~(s >> 1) = -((s + 1) >> 1)


def dequantize(levels: np.ndarray, step: float, offset1: float, offset2: float, dtype: np.dtype) -> np.ndarray:
    """The normative reconstruction rule (spec 5.3), computed in float64 then rounded to ``dtype``."""
    q = levels.astype(np.int64, copy=False)
    m = np.abs(q).astype(np.float64)
    mag = (m - np.where(m == 1.0, offset1, offset2)) * step
    out = np.where(q == 0, 0.0, np.where(q < 0, -mag, mag))
    return out.astype(dtype)


@register_codec
class SQCodec(AxisScaled, Codec):
    """Entropy-coded scalar-quantized levels (see module docstring).

    Args:
        step: quantization step (> 0, finite).
        offset1: reconstruction offset for ``|q| == 1``, in steps, in [0, 1).
        offset2: reconstruction offset for ``|q| >= 2``, in steps, in [0, 1).
        stats: informational figures recorded at encode time (ignored by decoders).
        scales: per-channel step factors (spec 5.6), applied to the whole decoded tensor.
    """

    codec_id = "sq"
    lossless = False

    def __init__(self, step: float, offset1: float = 0.0, offset2: float = 0.0, stats: dict | None = None,
                 scales: AxisScales | None = None) -> None:
        for name, value, lo, hi in (("step", step, 0.0, math.inf), ("offset1", offset1, 0.0, 1.0),
                                    ("offset2", offset2, 0.0, 1.0)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise CorruptDataError(f"sq: {name} must be a finite number, got {value!r}")
            if not (lo <= value < hi) or (name == "step" and value <= 0):
                raise CorruptDataError(f"sq: {name}={value!r} out of range")
        self.step = float(step)
        self.offset1 = float(offset1)
        self.offset2 = float(offset2)
        self.stats = dict(stats or {})
        self.scales = scales if scales is not None else AxisScales()

    def get_config(self) -> dict:
        """Step, offsets and axis scales (exact float64 values round-trip through JSON)."""
        config = {"step": self.step}
        # Zero offsets are the default: leaving them out keeps small tensors' headers short.
        if self.offset1:
            config["offset1"] = self.offset1
        if self.offset2:
            config["offset2"] = self.offset2
        config.update(self.scales.config())
        if self.stats:
            config["stats"] = self.stats
        return config

    @classmethod
    def from_config(cls, config: dict) -> "SQCodec":
        """Rebuild from a tensor header; unknown keys are refused except ``stats``."""
        extra = set(config) - {"step", "offset1", "offset2", "stats", *SCALE_KEYS}
        if extra or "step" not in config:
            raise CorruptDataError(f"sq: bad configuration keys {sorted(config)}")
        stats = config.get("stats")
        return cls(config["step"], config.get("offset1", 0.0), config.get("offset2", 0.0),
                   stats if isinstance(stats, dict) else None, AxisScales.from_config(config, "sq"))

    def encode_chunk(self, elements: np.ndarray, dtype: DtypeInfo) -> bytes:
        """Encode a chunk of integer levels with the cheapest model: explicit table or parametric."""
        return encode_levels(elements, "sq")

    def decode_levels(self, data: memoryview, count: int) -> np.ndarray:
        """The stored integer levels of one chunk."""
        k, radix, table, block, pos = self.parse_payload(data, count)
        if k == 0:
            return np.zeros(count, dtype=np.int32)
        symbols = ans.decode(block, -(-count // k), table, out_dtype=symbol_dtype(table))
        self.check_padding(symbols, k, radix, count, pos)
        return group_values(symbols, table, k, radix, count, np.int32)

    @staticmethod
    def parse_payload(data: memoryview, count: int) -> tuple[int, int, FrequencyTable | None, memoryview | None, int]:
        """(k, radix, table, ANS block, its offset) of a level payload (spec 5.3; also used by dq);
        k == 0 for an all-zero chunk."""
        buf = byte_view(data)  # no copy: chunks can be megabytes
        if not buf:
            raise CorruptDataError("sq chunk is empty", offset=0)
        if buf[0] == MODE_ZERO:
            if len(buf) != 1:
                raise CorruptDataError("sq all-zero chunk has trailing bytes", offset=1)
            return 0, 0, None, None, 1
        if buf[0] not in (MODE_TABLE, MODE_PARAMETRIC):
            raise CorruptDataError(f"sq chunk has unknown mode {buf[0]}", offset=0)
        if len(buf) < 6:
            raise CorruptDataError("sq chunk header is truncated", offset=len(buf))
        k, radix = buf[1], int.from_bytes(buf[2:6], "little")
        if not 1 <= k <= MAX_GROUP or not 1 <= radix <= 2 * MAX_LEVEL + 1 or radix ** k > MAX_GROUP_SYMBOLS:
            raise CorruptDataError(f"sq chunk has an invalid group size {k} or radix {radix}", offset=1)
        if buf[0] == MODE_PARAMETRIC:
            if k != 1 or radix > MAX_PARAMETRIC_RADIX or len(buf) < 11:
                raise CorruptDataError("sq parametric chunk has a bad header", offset=1)
            precision, p0, theta = struct.unpack_from("<BHH", buf, 6)
            table = parametric_table(radix, precision, p0, theta)  # validates the parameters
            pos = 11
        else:
            try:
                table, pos = FrequencyTable.from_bytes(buf, 6)
            except RdcError as exc:
                raise exc.with_context(record="chunk")
        if int(table.symbols[-1]) >= radix ** k:
            raise CorruptDataError("sq table holds a symbol beyond radix**k", offset=6)
        return k, radix, table, memoryview(buf)[pos:], pos

    @staticmethod
    def check_padding(symbols: np.ndarray, k: int, radix: int, count: int, pos: int) -> None:
        """Refuse a last group whose digits past ``count`` are not zero (spec 5.3; also used by dq)."""
        if count % k:
            # Padding digits of the last group must be zero (one valid encoding per chunk): the digits from
            # count % k on are the last symbol divided by radix ** (count % k).
            if int(symbols[-1]) // radix ** (count % k):
                raise CorruptDataError("sq chunk has nonzero padding in its last group", offset=pos)

    def plan_chunk(self, data: memoryview, count: int, dtype: DtypeInfo, *,
                   max_bytes: int | None = None) -> ChunkPlan:
        """The chunk's ANS block and the dequantization that follows it (one table lookup per group)."""
        if dtype.kind != "float":
            raise CorruptDataError(f"sq codec cannot produce dtype {dtype.name}")
        out_dtype = dtype.numpy.newbyteorder("<")
        k, radix, table, block, pos = self.parse_payload(data, count)
        if k == 0:
            return ChunkPlan([], lambda _decoded: np.zeros(count, dtype=out_dtype))

        def finish(decoded: list, out: np.ndarray | None = None) -> np.ndarray:
            self.check_padding(decoded[0], k, radix, count, pos)
            return group_values(decoded[0], table, k, radix, count, out_dtype,
                                (self.step, self.offset1, self.offset2), out)

        def into(decoded: list, out: np.ndarray) -> None:
            got = finish(decoded, out)
            if not np.may_share_memory(got, out):  # only the compiled gather writes into ``out``
                out[:] = got

        return ChunkPlan([(block, -(-count // k), table, symbol_dtype(table))], finish, into)

    def decode_chunk(self, data: memoryview, count: int, dtype: DtypeInfo, *,
                     max_bytes: int | None = None) -> np.ndarray:
        """Decode levels and dequantize them to the tensor's dtype."""
        plan = self.plan_chunk(data, count, dtype)
        return plan.finish(ans.decode_many(plan.blocks))


def symbol_dtype(table: FrequencyTable) -> type:
    """What a level block's symbols decode to: ``uint16`` when every symbol of its table fits (half the
    bytes the ANS decoder writes and the gather reads again), else ``uint32``."""
    return np.uint16 if int(table.symbols[-1]) < 1 << 16 else np.uint32


#: A chunk's lookup table gets a row per possible group symbol when it has at most this many rows, or at
#: most four per decoded symbol: small chunks of a large alphabet (fine steps) then gather from it too
#: instead of searching their table's symbols, at a bounded cost (the rows are 8 values at most).
DENSE_MIN_ROWS = 4096


def _dense(rows: int, symbols: int) -> bool:
    """Whether a chunk of ``symbols`` group symbols with ``rows`` possible ones decodes by a dense table."""
    return rows <= max(4 * symbols, DENSE_MIN_ROWS)


def group_values(symbols: np.ndarray, table: FrequencyTable, k: int, radix: int, count: int, dtype: Any,
                 dequant: tuple[float, float, float] | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """The first ``count`` values of a chunk's group symbols (``k`` per symbol): its levels (``dequant``
    None, ``dtype`` int32), or the levels dequantized by ``(step, offset1, offset2)`` to ``dtype``. Each
    present group is reconstructed once, then gathered: from a dense table (a row per possible group
    symbol), or by each symbol's rank in the table. ``out``: where the compiled gather writes (a view of it
    is returned). Used by sq and dq."""
    step, offset1, offset2 = dequant or (1.0, 0.0, 0.0)
    dense = _dense(radix ** k, symbols.size)
    if dense and ans.compiled_active():
        from . import kernels_numba  # noqa: PLC0415 - optional accelerator, loaded on first use

        # float64 rows rounded to the dtype, as sq.dequantize does (levels are exact in float64)
        lut = kernels_numba.group_rows(table.symbols, k, radix, step, offset1, offset2).astype(dtype)
        return gather_compiled(symbols, lut, count, out)
    present = table.symbols.astype(np.int64)
    values = unzigzag(_ungroup(present, k, radix))
    if dequant is not None:
        values = dequantize(values, step, offset1, offset2, dtype)
    values = values.reshape(-1, k)
    if dense:
        lut = np.zeros((radix ** k, k), dtype=values.dtype)
        lut[present] = values
        return lut[symbols].reshape(-1)[:count]
    # Few symbols, large alphabet: map each symbol to its table rank instead of a dense table.
    return values[np.searchsorted(present, symbols)].reshape(-1)[:count]


def gather_compiled(symbols: np.ndarray, lut: np.ndarray, count: int, out: np.ndarray | None = None) -> np.ndarray:
    """``lut[symbols].reshape(-1)[:count]`` by a compiled gather; ``symbols`` (``uint16`` or ``uint32``) are
    below ``len(lut)``.

    The rows are moved as unsigned words of their item size, so one compiled gather serves every dtype of
    2, 4 or 8 bytes; 1-byte floats (float8) take the numpy gather rather than another compilation.
    ``out`` (optional, ``count`` elements of ``lut``'s item size): where the values go (a view of it is
    returned); else a new array.
    """
    word = _WORD.get(lut.dtype.itemsize)
    if word is None:
        return lut[symbols].reshape(-1)[:count]
    from . import kernels_numba  # noqa: PLC0415 - optional accelerator, loaded on first use

    words = lut.view(word)
    status, out = kernels_numba.gather_groups(symbols, words, count, None if out is None else out.view(word))
    if status != -1:  # cannot happen: parse_payload bounds the table's symbols by radix**k
        raise CorruptDataError(f"level symbol {int(symbols[status])} outside the table", offset=0)
    return out.view(lut.dtype)


_WORD = {2: np.dtype(np.uint16), 4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}


def encode_levels(elements: np.ndarray, codec_id: str = "sq") -> bytes:
    """Level payload of one chunk (spec 5.3, shared by ``sq`` and ``dq``): the cheapest of ZERO, TABLE, PARAMETRIC."""
    best = choose_level_model(elements, codec_id)
    if best is None:
        return bytes([MODE_ZERO])
    _, mode, k, groups, table, model_bytes, radix = best
    head = bytes([mode, k]) + radix.to_bytes(4, "little")
    return head + model_bytes + ans.encode(groups, table)


def choose_level_model(elements: np.ndarray, codec_id: str = "sq"):
    """The cheapest level model for ``elements``, without coding them.

    Returns ``None`` for an all-zero chunk, else ``(estimated bytes, mode, k, group symbols, table,
    model bytes, radix)``; the estimate includes the model and the ANS lanes.
    """
    if elements.dtype.kind not in "iu":
        raise InvalidInputError(f"the {codec_id} codec stores integer levels; quantize with rdformat.quantize first")
    if elements.size and int(np.abs(elements.astype(np.int64)).max()) > MAX_LEVEL:
        raise InvalidInputError(f"{codec_id} levels must be within +-{MAX_LEVEL}; use a larger step")
    if not elements.any():
        return None
    z = zigzag(elements)
    radix = int(z.max()) + 1
    lanes_bytes = 8 * max(1, z.size // 1024)
    # (estimated bytes, mode, group size k, symbols, table, model bytes)
    best = None
    for k in range(1, MAX_GROUP + 1):
        if radix ** k > MAX_GROUP_SYMBOLS or (k > 1 and k > z.size):
            break
        groups = _group(z, k, radix)
        counts = np.bincount(groups)
        present = np.flatnonzero(counts)
        # Coarser tables cost fewer bytes to store: small chunks pick a lower precision.
        lowest = max(8, int(present.size - 1).bit_length() + 1)
        for precision in sorted({min(max(p, lowest), TABLE_PRECISION) for p in (10, 12, 14, 16)}):
            table = FrequencyTable._from_histogram(present, counts[present], precision)
            table_bytes = table.to_bytes()
            cost = table.cost_bits(counts[present]) / 8 + len(table_bytes) + lanes_bytes
            # Larger groups decode proportionally faster: take them unless they cost over 1% more.
            if best is None or cost <= (best[0] * (1.01 if k > best[2] else 1.0)
                                        * _finer(precision, best[4].precision, groups.size)):
                best = (min(cost, best[0]) if best else cost, MODE_TABLE, k, groups, table, table_bytes)
    if radix <= MAX_PARAMETRIC_RADIX:
        # Small chunks: a two-parameter model costs 5 bytes where an explicit table costs hundreds.
        counts = np.bincount(z, minlength=radix)
        fcounts = counts.astype(np.float64)
        chosen = None
        for precision, p0, theta in _parametric_candidates(counts):
            # FrequencyTable.cost_bits of the candidate's table, without building (and validating) it
            freqs = _parametric_freqs(radix, precision, p0, theta)
            cost = float(np.dot(fcounts, precision - np.log2(freqs.astype(np.float64)))) / 8 + 5 + lanes_bytes
            if cost < best[0] * _finer(precision, best[4].precision if chosen is None else chosen[0], z.size):
                best = (cost, MODE_PARAMETRIC, 1, z, None, struct.pack("<BHH", precision, p0, theta))
                chosen = (precision, p0, theta)
        if chosen is not None:
            best = best[:4] + (parametric_table(radix, *chosen),) + best[5:]
    return (*best, radix)


def _finer(precision: int, best_precision: int, symbols: int) -> float:
    """Cost factor a candidate table of ``precision`` for ``symbols`` symbols must beat the best so far (of
    ``best_precision``) by: ``1 - FINE_TABLE_GAIN`` when it is finer and has more lookup slots than a quarter
    of the symbols, else 1."""
    if precision > best_precision and (1 << precision) > symbols // 4:
        return 1.0 - FINE_TABLE_GAIN
    return 1.0


MAX_GROUP = 8
#: Group symbols stay below 2**16 so one table (precision 16) and a dense lookup table hold them.
MAX_GROUP_SYMBOLS = 1 << 16


def _group(z: np.ndarray, k: int, radix: int) -> np.ndarray:
    """Pack ``k`` consecutive zigzag symbols into one: sum(z[j] * radix**j); the tail is zero-padded."""
    if k == 1:
        return z.astype(np.int64)
    pad = (-z.size) % k
    zz = np.concatenate([z.astype(np.int64), np.zeros(pad, np.int64)]).reshape(-1, k)
    return zz @ (radix ** np.arange(k, dtype=np.int64))


def _ungroup(symbols: np.ndarray, k: int, radix: int) -> np.ndarray:
    """Inverse of :func:`_group` (without removing the padding)."""
    if k == 1:  # the digit is the symbol (symbols are below radix ** k)
        return symbols.astype(np.int64)
    s = symbols.astype(np.int64).reshape(-1, 1)
    return ((s // (radix ** np.arange(k, dtype=np.int64))) % radix).reshape(-1)


#: The parametric model lists every symbol below the radix, so it is only offered for small alphabets.
MAX_PARAMETRIC_RADIX = 1024


def parametric_table(radix: int, precision: int, p0: int, theta: int) -> FrequencyTable:
    """The normative two-parameter model of spec section 5.3 (integer arithmetic only).

    Zigzag symbol 0 (level 0) gets about ``p0 / 2**16`` of the mass; a symbol of magnitude m >= 1
    gets a weight ``w(m)`` with ``w(1) = 2**24`` and ``w(m+1) = (w(m) * theta) >> 16`` (a discrete
    Laplacian). Every symbol below ``radix`` gets a frequency of at least 1.
    """
    # valid by construction (symbols 0..radix-1, radix <= 2**precision, frequencies >= 1 summing to 2**precision)
    freqs = _parametric_freqs(radix, precision, p0, theta, np.uint32)
    return FrequencyTable._owned(precision, np.arange(radix, dtype=np.uint32), freqs)


@functools.lru_cache(maxsize=256)
def _laplace_weights(theta: int, symbols: int) -> tuple[np.ndarray, np.ndarray]:
    """``w(m)`` of :func:`parametric_table` for each zigzag symbol 1 .. ``symbols`` - 1 (magnitude
    ``(symbol + 1) >> 1``) and their running sums (read-only; cached: an encoder scores a few ``p0`` and
    precisions per ``theta``, and the recurrence is sequential). ``symbols`` is a power of two (at most
    MAX_PARAMETRIC_RADIX): a decoder's small radix does not pay for the recurrence up to 512."""
    w = np.zeros(symbols // 2 + 1, dtype=np.int64)
    value = 1 << 24
    ws = []
    for _m in range(1, w.size):  # sequential on purpose: the exact integer recurrence is normative
        if not value:  # theta < 2**16: once zero, every later weight is zero too
            break
        ws.append(value)
        value = (value * theta) >> 16
    w[1:1 + len(ws)] = ws
    by_symbol = w[(np.arange(1, symbols, dtype=np.int64) + 1) >> 1]
    running = np.cumsum(by_symbol)
    by_symbol.flags.writeable = False
    running.flags.writeable = False
    return by_symbol, running


def _parametric_freqs(radix: int, precision: int, p0: int, theta: int, dtype: type = np.int64) -> np.ndarray:
    """The frequencies (by symbol, a new array of ``dtype``: int64 or uint32) of :func:`parametric_table`;
    the same checks."""
    if not (2 <= radix <= MAX_PARAMETRIC_RADIX and 8 <= precision <= 16 and 1 <= p0 <= 65535 and 1 <= theta <= 65535):
        raise CorruptDataError(f"sq parametric model out of range (radix {radix}, precision {precision}, "
                               f"p0 {p0}, theta {theta})")
    total = 1 << precision
    if radix > total:
        raise CorruptDataError(f"sq parametric model: {radix} symbols do not fit precision {precision}")
    if ans.compiled_active():  # a decoder builds one model per chunk: a few numpy calls cost more than this
        from . import kernels_numba  # noqa: PLC0415 - optional accelerator, loaded on first use

        return kernels_numba.parametric_freqs(radix, precision, p0, theta, dtype)
    nonzero = radix - 1
    f0 = max(1, min(total - nonzero, (p0 * total) >> 16))
    rest = total - f0 - nonzero
    by_symbol, running = _laplace_weights(theta, max(16, 1 << (radix - 1).bit_length()))
    weights = by_symbol[:nonzero]  # symbols 1 .. radix - 1
    wsum = int(running[nonzero - 1])
    freqs = np.empty(radix, dtype=np.int64)
    if wsum:
        np.floor_divide(rest * weights, wsum, out=freqs[1:])
        freqs[1:] += 1
    else:
        freqs[1:] = 1
    freqs[0] = total - int(freqs[1:].sum())
    return freqs if dtype is np.int64 else freqs.astype(dtype)


def _parametric_candidates(counts: np.ndarray):
    """A few (precision, p0, theta) settings around the maximum-likelihood fit of the counts."""
    n = int(counts.sum())
    c0 = int(counts[0])
    mags = (np.arange(counts.size) + 1) >> 1
    nz = n - c0
    mean_mag = float((counts[1:] * mags[1:]).sum()) / nz if nz else 1.0
    theta0 = min(max(1.0 - 1.0 / max(mean_mag, 1.0 + 1e-9), 1 / 65536), 65535 / 65536)
    p00 = min(max(c0 / n, 1 / 65536), 65535 / 65536)
    lowest = max(8, int(counts.size - 1).bit_length() + 1)
    for precision in sorted({min(max(p, lowest), 16) for p in (12, 16)}):
        for dp in (0.85, 1.0, 1.15):
            for dt in (0.9, 1.0, 1.1):
                p0 = int(min(max(round(p00 * dp * 65536), 1), 65535))
                theta = int(min(max(round(theta0 ** dt * 65536), 1), 65535))
                yield precision, p0, theta
