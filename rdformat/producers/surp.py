"""SuRP: successive-refinement pruning with a real, embedded index stream.

Method (Isik, No, Weissman, "Successive Pruning for Model Compression via Rate Distortion Theory",
arXiv 2102.08329). Weights are modelled as i.i.d. Laplacian; for absolute-error distortion the
rate-distortion function is ``R(D) = log2(b / D)`` bits per weight (``b = mean |w|``). SuRP divides
each layer by its L2 norm, keeps the signs apart, works on the magnitudes ``u`` and reconstructs
them from zero by adding thresholds: a weight whose residual exceeds the current threshold gets the
threshold added to its reconstruction and subtracted from its residual. The decoder knows the
thresholds, so the bitstream is the sequence of chosen indices; weights never chosen stay exactly
zero, and every prefix of the stream is a valid, coarser (sparser) model.

The literal algorithm (the authors' code; ``tests/test_surp.py`` keeps a copy) picks *one* index at
a time among those above the threshold ``T = alpha * log(n / log n) * mean(residual)``, multiplies
``T`` by ``(n-1)/n`` after each pick, and when nothing exceeds ``T`` re-estimates it from the mean
residual. Every pick scans all ``n`` weights, hence hours for a few million weights.

What this module does instead (vectorised, streaming, deterministic):

1. **Global statistics, one pass over the tensors** (:func:`collect_statistics`): per tensor its L2
   norm; globally ``N``, ``b = mean(u)`` (``1/lambda``) and a fine histogram of ``log2 u``.
2. **A fixed threshold schedule** ``T[p] = t0 * decay**p`` (:class:`SurpPlan`), with
   ``t0 ~ alpha * log(N / log N) * b`` (the paper's first threshold). Each *pass* ``p`` selects, in
   one numpy step, *every* residual above ``T[p]`` (first among the weights not kept yet, then among
   the kept ones, "refinement"; each set in a fixed pseudo-random order) and subtracts ``T[p]``.

   Relation to the one-index-at-a-time algorithm: within a pass the threshold is frozen instead of
   shrinking by ``(n-1)/n`` per pick, and the next pass divides it by ``1/decay`` instead of
   re-estimating it from the mean residual. Because a weight's fate then depends only on its own
   magnitude and the schedule, (a) tensors are processed independently (sharded models, process
   pools), (b) the decoder needs only ``t0`` and ``decay`` (no global state), (c) a weight is kept
   after pass ``p`` iff ``u > T[p]``, so the kept set at a given sparsity is the one the literal
   algorithm converges to (the largest normalised magnitudes); the two differ only in the *band*
   of magnitudes between the last two thresholds, where the literal algorithm keeps a random
   subset and this one, for a sparsity target, aligns the schedule so a threshold falls exactly on
   the target's magnitude quantile (no band). ``tests/test_surp.py`` checks both statements.
   A "refresh" of the literal algorithm (nothing exceeds the threshold) corresponds here to passes
   that select nothing; they cost nothing in the stream. The per-pass decay replaces the literal
   ``(n-1)/n`` decay: the latter selects ~log n weights per refresh, so its threshold falls in
   ~n/log n tiny steps; ``decay=0.5`` halves it per pass (bit-plane like), which also codes better
   (measured in ``tools/bench_surp.py``: the literal schedule spends its bits on over-precise
   values of few weights).
3. **Decoder-side offset**: the stream also tells the decoder an upper bound ``B`` of every kept
   weight's residual; it adds ``offset * B`` (``offset`` chosen by the encoder, 0 = the paper's
   plain sum of thresholds). Weights never chosen stay exactly zero.
4. **Stopping**: at a target sparsity (the schedule is aligned so a threshold lands on the
   magnitude quantile, found in the histogram: met within ~1e-4), a target bits per weight or a
   target distortion (the last threshold is bisected on a per-tensor sample; measured within ~2%).
   Streams end at pass boundaries (where the rate-distortion trade-off is best); ``refine_passes``
   extra passes after a sparsity target refine the kept weights without adding any.
   :class:`SurpPlan` can also stop inside a run (``cut``), which is what any prefix of a longer
   stream is.

Which tensors: by default every float tensor with 2+ dims (:func:`is_prunable`); the others go
through the lossless codec. The byte format is :mod:`rdformat.codecs.surp` / ``spec/rdc-v1.md`` section 5.5.

numpy only at import; :func:`iterative_surp` imports torch when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codecs.base import Prepared
from ..codecs.surp_stream import (
    CLASS_NEW,
    CLASS_REFINE,
    Run,
    SurpConfig,
    encode_runs,
    indices_to_positions,
    permutation_params,
    thresholds,
)
from ..codecs.surp import SurpCodec
from ..codecs.surp_decode import decode_stream
from ..errors import InvalidInputError
from ..format.dtypes import by_numpy
from ..format.records import DEFAULT_CHUNK_BYTES
from .surp_plan import (  # noqa: F401  (re-exported: the planning half of SuRP)
    _SAMPLE,
    PAPER_SCHEDULE,
    Statistics,
    SurpParams,
    SurpPlan,
    _auto_offset,
    _first_pass,
    _l2,
    _magnitudes,
    _pairs,
    collect_statistics,
    is_prunable,
    plan,
    plan_tensor,
)

__all__ = [
    "PAPER_SCHEDULE",
    "SurpParams",
    "SurpPlan",
    "Statistics",
    "EncodedTensor",
    "SurpResult",
    "is_prunable",
    "collect_statistics",
    "plan",
    "plan_tensor",
    "surp_runs",
    "TensorEncoder",
    "encode_tensor",
    "compress",
    "encode_iter",
]

def surp_runs(values: np.ndarray, norm: float, plan_: SurpPlan) -> list[Run]:
    """Run the vectorised SuRP pass on one chunk (flat values) and return its runs in stream order.

    Pass ``p`` is a NEW run (not-yet-kept weights with ``u > T[p]`` join with value ``T[p]``) then a
    REFINE run (kept weights whose residual exceeds ``T[p]`` get ``T[p]`` more); both rank their
    domain as it was at the start of the pass, in permuted order. NEW runs go before REFINE runs
    because they lower the distortion more per bit (measured), so cuts inside a pass cost less.
    """
    u = _magnitudes(values, norm)
    n = u.size
    total = max(plan_.passes, plan_.new_passes)
    if n == 0 or total == 0 or norm <= 0:
        return []
    T = thresholds(plan_.t0, plan_.decay, total)
    fp = _first_pass(u, T)
    idx = np.flatnonzero(fp < plan_.new_passes)
    a, c = permutation_params(n, plan_.seed)
    pos = indices_to_positions(idx, n, a, c)
    order = np.argsort(pos, kind="stable")
    idx, pos = idx[order], pos[order]
    fpa = fp[idx]
    ua = u[idx]
    w = np.asarray(values).reshape(-1)
    neg = np.signbit(w[idx].astype(np.float64))
    last_new = plan_.new_passes - 1 >= plan_.passes  # the stream ends with a NEW run
    cutpos = int(math.floor(plan_.cut * n)) if plan_.cut < 1.0 else n
    if cutpos < n and last_new:
        keep = (fpa != plan_.new_passes - 1) | (pos < cutpos)
        pos, fpa, ua, neg = pos[keep], fpa[keep], ua[keep], neg[keep]
    r = ua.copy()
    runs: list[Run] = []
    for p in range(total):
        t = float(T[p])
        sig = fpa < p
        cs = np.cumsum(sig)
        if p < plan_.new_passes:
            sel = np.flatnonzero(fpa == p)
            runs.append(Run(p, CLASS_NEW, pos[sel] - cs[sel], neg[sel], not (cutpos < n and last_new and
                                                                             p == plan_.new_passes - 1)))
            new_sel = sel
        else:
            new_sel = None
        if p < plan_.passes:
            cut_here = cutpos < n and not last_new and p == plan_.passes - 1
            cand = sig & (r > t)
            if cut_here:
                cand &= pos < cutpos
            sel = np.flatnonzero(cand)
            if sel.size:
                r[sel] -= t
            runs.append(Run(p, CLASS_REFINE, cs[sel] - 1, None, not cut_here))
        if new_sel is not None and new_sel.size:
            r[new_sel] = ua[new_sel] - t  # after REFINE(p): new weights are not in its domain
    return runs


class TensorEncoder:
    """Encodes the chunks of one tensor under a plan (its norm, ``umax`` and offset fixed here)."""

    def __init__(self, plan_: SurpPlan, array: np.ndarray, norm: float | None = None) -> None:
        arr = np.asarray(array)
        self.plan = plan_
        # ``norm``: the statistics' value (which carries any sensitivity emphasis); else recomputed.
        self.norm = norm if norm is not None else (_l2(arr) if plan_.normalize == "l2" else 1.0)
        flat = arr.reshape(-1)
        # max(|w|) / norm == max(|w| / norm): division by a positive number is monotonic
        amax = float(np.max(np.abs(flat))) if flat.size else 0.0
        if not math.isfinite(amax):
            raise InvalidInputError("SuRP needs finite weights (found NaN or inf)")
        self.umax = amax / self.norm if self.norm > 0 else 0.0
        offset = plan_.offset
        if offset is None:
            stride = max(1, flat.size // (4 * _SAMPLE))
            offset = _auto_offset(_magnitudes(flat[::stride], self.norm), plan_, self.umax)
        self.config = SurpConfig(norm=self.norm, t0=plan_.t0, decay=plan_.decay, umax=self.umax,
                                 offset=float(offset), seed=plan_.seed)

    def encode_chunk(self, elements: np.ndarray) -> bytes:
        """The stream of one chunk of this tensor."""
        runs = surp_runs(elements, self.norm, self.plan)
        return encode_runs(runs, int(np.asarray(elements).size), segment_bytes=self.plan.segment_bytes)


# ---------------------------------------------------------------------------------------------
# encoded tensors, compress / save / load
# ---------------------------------------------------------------------------------------------


@dataclass
class EncodedTensor:
    """One tensor's SuRP encoding: config and one stream per chunk."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    config: SurpConfig
    chunk_elements: int
    payloads: list[bytes]

    @property
    def n(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def stream_bytes(self) -> int:
        """Bytes of the coded streams (chunk data only)."""
        return sum(len(p) for p in self.payloads)

    def chunk_counts(self) -> list[int]:
        """Elements of each chunk."""
        return [min(self.chunk_elements, self.n - i) for i in range(0, self.n, self.chunk_elements)]

    def prepared(self) -> Prepared:
        """What :meth:`rdformat.Writer.add` takes to store this tensor: its coded chunks."""
        return Prepared(SurpCodec(self.config), None, np.dtype(self.dtype), self.shape,
                        chunks=tuple(self.payloads), chunk_elements=self.chunk_elements)

    def decode(self, fraction: float | None = None) -> np.ndarray:
        """The decoded tensor; with ``fraction``, from the whole segments in that share of each chunk."""
        info = by_numpy(self.dtype)
        out = np.zeros(self.n, dtype=self.dtype)
        for i, data in enumerate(self.payloads):
            start = i * self.chunk_elements
            count = min(self.chunk_elements, self.n - start)
            limit = None if fraction is None else int(math.floor(fraction * len(data)))
            idx, vals, _ = decode_stream(data, count, self.config, limit)
            out[start + idx] = (vals * self.config.norm).astype(info.numpy)
        return out.reshape(self.shape)


def _chunk_elements(itemsize: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // itemsize)


def encode_tensor(name: str, array: np.ndarray, plan_: SurpPlan, chunk_bytes: int | None = None,
                  norm: float | None = None) -> EncodedTensor:
    """Encode one prunable tensor under a (global) plan, chunked like :class:`rdformat.Writer`
    (``norm``: the one its statistics used)."""
    arr = np.asarray(array)
    enc = TensorEncoder(plan_, arr, norm)
    ce = _chunk_elements(arr.dtype.itemsize, chunk_bytes or DEFAULT_CHUNK_BYTES)
    flat = arr.reshape(-1)
    payloads = [enc.encode_chunk(flat[i:i + ce]) for i in range(0, flat.size, ce)]
    return EncodedTensor(name, tuple(arr.shape), arr.dtype, enc.config, ce, payloads)


@dataclass
class SurpResult:
    """Output of :func:`compress`: encodings, the plan and measured statistics."""

    plan: SurpPlan
    stats: Statistics
    encoded: dict[str, EncodedTensor]
    passthrough: list[str]

    @property
    def n(self) -> int:
        """Processed weights."""
        return self.stats.n

    @property
    def stream_bytes(self) -> int:
        """Bytes of all SuRP streams."""
        return sum(e.stream_bytes for e in self.encoded.values())

    @property
    def bits_per_weight(self) -> float:
        """Stream bits per processed weight."""
        return 8.0 * self.stream_bytes / max(self.n, 1)

    def decode(self, fraction: float | None = None) -> dict[str, np.ndarray]:
        """Decoded SuRP tensors (pass-through tensors are not included)."""
        return {k: e.decode(fraction) for k, e in self.encoded.items()}

    def measure(self, source: Any, fraction: float | None = None) -> dict[str, float]:
        """Sparsity, bits/weight and relative distortion of the decoded tensors against ``source``."""
        kept = 0
        err = 0.0
        tot = 0.0
        for name, array in _pairs(source):
            e = self.encoded.get(name)
            if e is None:
                continue
            dec = e.decode(fraction).astype(np.float64).reshape(-1)
            norm = e.config.norm
            w = np.asarray(array).astype(np.float64).reshape(-1)
            kept += int(np.count_nonzero(dec))
            if norm > 0:
                err += float(np.abs(w - dec).sum()) / norm
                tot += float(np.abs(w).sum()) / norm
        used = self.stream_bytes if fraction is None else sum(
            _prefix_bytes(e, fraction) for e in self.encoded.values())
        return {"sparsity": 1.0 - kept / max(self.n, 1), "bits_per_weight": 8.0 * used / max(self.n, 1),
                "distortion": err / tot if tot else 0.0}


def _prefix_bytes(e: EncodedTensor, fraction: float) -> int:
    total = 0
    for i, data in enumerate(e.payloads):
        count = min(e.chunk_elements, e.n - i * e.chunk_elements)
        _, _, used = decode_stream(data, count, e.config, int(math.floor(fraction * len(data))))
        total += used
    return total


def _encode_job(job: tuple[str, np.ndarray, SurpPlan, int, float]) -> EncodedTensor:
    return encode_tensor(*job)


def encode_iter(source: Any, stats: Statistics, plan_: SurpPlan, chunk_bytes: int, workers: int,
                  ) -> Iterator[tuple[str, Any, EncodedTensor | None]]:
    """(name, array, encoding or None for pass-through) in source order; parallel with ``workers``."""
    if workers <= 1:
        for name, array in _pairs(source):
            if name in stats.tensors:
                yield name, array, encode_tensor(name, np.asarray(array), plan_, chunk_bytes,
                                                 stats.tensors[name].norm)
            else:
                yield name, array, None
        return
    from concurrent.futures import ProcessPoolExecutor

    pending: list[tuple[str, Any, Any]] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for name, array in _pairs(source):
            fut = None
            if name in stats.tensors:
                fut = pool.submit(_encode_job, (name, np.asarray(array), plan_, chunk_bytes, stats.tensors[name].norm))
            pending.append((name, array, fut))
            while len(pending) > 2 * workers:  # bounded look-ahead keeps memory near 2*workers tensors
                n0, a0, f0 = pending.pop(0)
                yield n0, a0, (f0.result() if f0 is not None else None)
        for n0, a0, f0 in pending:
            yield n0, a0, (f0.result() if f0 is not None else None)


def compress(source: Any, *, sparsity: float | None = None, bits_per_weight: float | None = None,
             distortion: float | None = None, params: SurpParams | None = None, workers: int = 1,
             chunk_bytes: int | None = None, select: Callable[[str, Any], bool] | None = None,
             sensitivity: Mapping[str, float] | None = None) -> SurpResult:
    """Global statistics (one pass), a plan, then every prunable tensor encoded independently.

    ``source``: a mapping name -> array, or a callable returning ``(name, array)`` pairs (read twice).
    ``sensitivity``: per-tensor weight of squared error (sensitive tensors keep more weights).
    Returns a :class:`SurpResult` (encodings in memory; see :func:`save` to write a file).
    """
    params = params or SurpParams()
    stats = collect_statistics(source, select, params.normalize, sensitivity=sensitivity)
    p = plan(stats, sparsity=sparsity, bits_per_weight=bits_per_weight, distortion=distortion, params=params)
    encoded = {}
    for name, _, enc in encode_iter(source, stats, p, chunk_bytes or DEFAULT_CHUNK_BYTES, workers):
        if enc is not None:
            encoded[name] = enc
    return SurpResult(p, stats, encoded, list(stats.passthrough))
