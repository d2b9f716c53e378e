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

from ..dtypes import DtypeInfo
from ..entropy import ans
from ..errors import CorruptDataError
from . import register_codec
from .base import ChunkPlan, Codec
from .sq import SQCodec, _ungroup, encode_levels, unzigzag

#: next_state = NEXT_STATE[state][level & 1]; the quantizer of a state is ``state >> 1``.
NEXT_STATE = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], dtype=np.int8)
#: Longest chain: bounds the sequential steps a decoder takes per chunk (hostile files included).
MAX_CHAIN = 1024
DEFAULT_CHAIN = 256


def dq_reconstruct(levels: np.ndarray, step: float, chain: int, dtype: np.dtype) -> np.ndarray:
    """The normative reconstruction (spec 5.4) of one chunk's levels, in float64 then rounded to ``dtype``.

    Vectorised across chains: the state machine advances one position of every chain per step.
    """
    q = np.asarray(levels).astype(np.int32, copy=False).reshape(-1)
    n = q.size
    if n == 0:
        return np.zeros(0, dtype=dtype)
    chains = -(-n // chain)
    width = min(chain, n)
    if chains * width != n:
        padded = np.zeros(chains * width, dtype=np.int32)
        padded[:n] = q
        q = padded
    by_chain = q.reshape(chains, width)  # row c is chain c (natural order: no transposes)
    parity = (by_chain & 1).astype(np.uint8)  # two's complement: parity of k == parity of |k|
    quantizer = np.empty((chains, width), dtype=np.uint8)
    state = np.zeros(chains, dtype=np.uint8)
    for t in range(width):
        quantizer[:, t] = state >> 1
        state = _NEXT_FLAT[(state << 1) | parity[:, t]]
    # k != 0: x = sgn(k) * (2|k| - quantizer) * S = (2k - sgn(k) * quantizer) * S, an exact integer times S.
    ints = 2 * q - np.sign(q) * quantizer.reshape(-1)
    values = ints.astype(np.float64) * step
    return values[:n].astype(dtype)


_NEXT_FLAT = NEXT_STATE.astype(np.uint8).reshape(-1)


@register_codec
class DQCodec(Codec):
    """Trellis-coded quantization levels (see module docstring).

    Args:
        step: the step ``S`` (> 0, finite); reconstructions are integer multiples of it.
        chain: elements per trellis chain (1..65536).
        stats: informational figures recorded at encode time (ignored by decoders).
    """

    codec_id = "dq"
    lossless = False

    def __init__(self, step: float, chain: int = DEFAULT_CHAIN, stats: dict | None = None) -> None:
        if not isinstance(step, (int, float)) or isinstance(step, bool) or not math.isfinite(step) or step <= 0:
            raise CorruptDataError(f"dq: step must be a finite number > 0, got {step!r}")
        if not isinstance(chain, int) or isinstance(chain, bool) or not 1 <= chain <= MAX_CHAIN:
            raise CorruptDataError(f"dq: chain must be an integer in 1..{MAX_CHAIN}, got {chain!r}")
        self.step = float(step)
        self.chain = chain
        self.stats = dict(stats or {})

    @property
    def chunk_multiple(self) -> int:
        """Writers keep ``chunk_elements`` a multiple of this, so chains never straddle chunks."""
        return self.chain

    def get_config(self) -> dict:
        """Step and chain length."""
        config = {"step": self.step, "chain": self.chain}
        if self.stats:
            config["stats"] = self.stats
        return config

    @classmethod
    def from_config(cls, config: dict) -> "DQCodec":
        """Rebuild from a tensor header; unknown keys are refused except ``stats``."""
        if set(config) - {"step", "chain", "stats"} or "step" not in config or "chain" not in config:
            raise CorruptDataError(f"dq: bad configuration keys {sorted(config)}")
        stats = config.get("stats")
        return cls(config["step"], config["chain"], stats if isinstance(stats, dict) else None)

    def encode_chunk(self, elements: np.ndarray, dtype: DtypeInfo) -> bytes:
        """Store the chunk's levels (the ``sq`` level payload)."""
        return encode_levels(elements, "dq")

    def decode_levels(self, data: memoryview, count: int) -> np.ndarray:
        """The stored integer levels of one chunk."""
        return SQCodec(1.0).decode_levels(data, count)

    def plan_chunk(self, data: memoryview, count: int, dtype: DtypeInfo) -> ChunkPlan:
        """The chunk's ANS block, then the trellis reconstruction."""
        if dtype.kind != "float":
            raise CorruptDataError(f"dq codec cannot produce dtype {dtype.name}")
        out_dtype = dtype.numpy.newbyteorder("<")
        k, radix, table, block, pos = SQCodec._parse(data, count)
        if k == 0:
            return ChunkPlan([], lambda _decoded: np.zeros(count, dtype=out_dtype))

        def finish(decoded: list) -> np.ndarray:
            symbols = decoded[0]
            SQCodec._check_padding(symbols, k, radix, count, pos)
            levels = unzigzag(_ungroup(symbols, k, radix)[:count])
            return dq_reconstruct(levels, self.step, self.chain, out_dtype)

        return ChunkPlan([(block, -(-count // k), table, np.uint32)], finish)

    def decode_chunk(self, data: memoryview, count: int, dtype: DtypeInfo) -> np.ndarray:
        """Decode levels and reconstruct them to the tensor's dtype."""
        plan = self.plan_chunk(data, count, dtype)
        return plan.finish(ans.decode_many(plan.blocks))
