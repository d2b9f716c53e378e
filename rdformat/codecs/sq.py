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

import math
import numpy as np

from ..dtypes import DtypeInfo
from ..entropy import FrequencyTable, ans
from ..errors import CorruptDataError, InvalidInputError, RdcError
from . import register_codec
from .base import Codec

MODE_ZERO = 0
MODE_TABLE = 1
#: Largest |level| the codec stores (zigzag symbols stay below 2**16, one table holds them all).
MAX_LEVEL = (1 << 15) - 1
#: Table precision: 16 bits keeps the model cost of rare large levels close to ideal.
TABLE_PRECISION = 16


def zigzag(levels: np.ndarray) -> np.ndarray:
    """Signed levels -> non-negative symbols: 0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ..."""
    q = levels.astype(np.int64, copy=False)
    return np.where(q < 0, -2 * q - 1, 2 * q).astype(np.uint32)


def unzigzag(symbols: np.ndarray) -> np.ndarray:
    """Inverse of :func:`zigzag`."""
    s = symbols.astype(np.int64, copy=False)
    return np.where(s & 1, -((s + 1) >> 1), s >> 1).astype(np.int32)


def dequantize(levels: np.ndarray, step: float, offset1: float, offset2: float, dtype: np.dtype) -> np.ndarray:
    """The normative reconstruction rule (spec 5.3), computed in float64 then rounded to ``dtype``."""
    q = levels.astype(np.int64, copy=False)
    m = np.abs(q).astype(np.float64)
    mag = (m - np.where(m == 1.0, offset1, offset2)) * step
    out = np.where(q == 0, 0.0, np.where(q < 0, -mag, mag))
    return out.astype(dtype)


@register_codec
class SQCodec(Codec):
    """Entropy-coded scalar-quantized levels (see module docstring).

    Args:
        step: quantization step (> 0, finite).
        offset1: reconstruction offset for ``|q| == 1``, in steps, in [0, 1).
        offset2: reconstruction offset for ``|q| >= 2``, in steps, in [0, 1).
        stats: informational figures recorded at encode time (ignored by decoders).
    """

    codec_id = "sq"
    lossless = False

    def __init__(self, step: float, offset1: float = 0.0, offset2: float = 0.0, stats: dict | None = None) -> None:
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

    def get_config(self) -> dict:
        """Step and offsets (exact float64 values round-trip through JSON)."""
        config = {"step": self.step, "offset1": self.offset1, "offset2": self.offset2}
        if self.stats:
            config["stats"] = self.stats
        return config

    @classmethod
    def from_config(cls, config: dict) -> "SQCodec":
        """Rebuild from a tensor header; unknown keys are refused except ``stats``."""
        extra = set(config) - {"step", "offset1", "offset2", "stats"}
        if extra or "step" not in config:
            raise CorruptDataError(f"sq: bad configuration keys {sorted(config)}")
        stats = config.get("stats")
        return cls(config["step"], config.get("offset1", 0.0), config.get("offset2", 0.0),
                   stats if isinstance(stats, dict) else None)

    def encode_chunk(self, elements: np.ndarray, dtype: DtypeInfo) -> bytes:
        """Encode a chunk of integer levels as ANS-coded groups of ``k`` zigzag symbols."""
        if elements.dtype.kind not in "iu":
            raise InvalidInputError("the sq codec stores integer levels; quantize with rdformat.quantize first")
        if elements.size and int(np.abs(elements.astype(np.int64)).max()) > MAX_LEVEL:
            raise InvalidInputError(f"sq levels must be within +-{MAX_LEVEL}; use a larger step")
        if not elements.any():
            return bytes([MODE_ZERO])
        z = zigzag(elements)
        radix = int(z.max()) + 1
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
                table = FrequencyTable.from_counts(present, counts[present], precision=precision)
                table_bytes = table.to_bytes()
                # ideal payload + table + ~8 bytes per ANS lane (one lane per ~1024 symbols at most)
                cost = table.cost_bits(counts[present]) / 8 + len(table_bytes) + 8 * max(1, groups.size // 1024)
                # Larger groups decode proportionally faster: take them unless they cost over 1% more.
                if best is None or cost <= best[0] * (1.01 if k > best[1] else 1.0):
                    best = (min(cost, best[0]) if best else cost, k, groups, table, table_bytes)
        _, k, groups, table, table_bytes = best
        head = bytes([MODE_TABLE, k]) + radix.to_bytes(4, "little")
        return head + table_bytes + ans.encode(groups, table)

    def decode_levels(self, data: memoryview, count: int) -> np.ndarray:
        """The stored integer levels of one chunk."""
        k, radix, table, symbols = self._decode_symbols(data, count)
        if k == 0:
            return np.zeros(count, dtype=np.int32)
        return unzigzag(_ungroup(symbols, k, radix)[:count])

    def _decode_symbols(self, data: memoryview, count: int) -> tuple[int, int, FrequencyTable | None, np.ndarray | None]:
        buf = bytes(data)
        if not buf:
            raise CorruptDataError("sq chunk is empty", offset=0)
        if buf[0] == MODE_ZERO:
            if len(buf) != 1:
                raise CorruptDataError("sq all-zero chunk has trailing bytes", offset=1)
            return 0, 0, None, None
        if buf[0] != MODE_TABLE:
            raise CorruptDataError(f"sq chunk has unknown mode {buf[0]}", offset=0)
        if len(buf) < 6:
            raise CorruptDataError("sq chunk header is truncated", offset=len(buf))
        k, radix = buf[1], int.from_bytes(buf[2:6], "little")
        if not 1 <= k <= MAX_GROUP or not 1 <= radix <= 2 * MAX_LEVEL + 1 or radix ** k > MAX_GROUP_SYMBOLS:
            raise CorruptDataError(f"sq chunk has an invalid group size {k} or radix {radix}", offset=1)
        try:
            table, pos = FrequencyTable.from_bytes(buf, 6)
        except RdcError as exc:
            raise exc.with_context(record="chunk")
        if int(table.symbols[-1]) >= radix ** k:
            raise CorruptDataError("sq table holds a symbol beyond radix**k", offset=6)
        ngroups = -(-count // k)
        symbols = ans.decode(memoryview(buf)[pos:], ngroups, table, out_dtype=np.uint32)
        if count % k:
            # Padding digits of the last group must be zero (one valid encoding per chunk).
            tail = _ungroup(symbols[-1:], k, radix)[count % k :]
            if tail.any():
                raise CorruptDataError("sq chunk has nonzero padding in its last group", offset=pos)
        return k, radix, table, symbols

    def decode_chunk(self, data: memoryview, count: int, dtype: DtypeInfo) -> np.ndarray:
        """Decode levels and dequantize them to the tensor's dtype (one table lookup per group)."""
        if dtype.kind != "float":
            raise CorruptDataError(f"sq codec cannot produce dtype {dtype.name}")
        out_dtype = dtype.numpy.newbyteorder("<")
        k, radix, table, symbols = self._decode_symbols(data, count)
        if k == 0:
            return np.zeros(count, dtype=out_dtype)
        # Reconstruct each present group once, then gather: decoding is one lookup per group.
        present = table.symbols.astype(np.int64)
        values = dequantize(unzigzag(_ungroup(present, k, radix)), self.step, self.offset1, self.offset2, out_dtype)
        values = values.reshape(-1, k)
        if radix ** k <= 4 * symbols.size:
            lut = np.zeros((radix ** k, k), dtype=out_dtype)
            lut[present] = values
            return lut[symbols].reshape(-1)[:count]
        # Few symbols, large alphabet: map each symbol to its table rank instead of a dense table.
        return values[np.searchsorted(present, symbols)].reshape(-1)[:count]


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
    s = symbols.astype(np.int64).reshape(-1, 1)
    return ((s // (radix ** np.arange(k, dtype=np.int64))) % radix).reshape(-1)
