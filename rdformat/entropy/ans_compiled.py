"""The numba backend of :mod:`rdformat.entropy.ans`: batches of parsed ANS blocks through :mod:`.ans_numba`.

:mod:`rdformat.entropy.ans` imports this module only when the backend is first needed, because importing
numba takes about half a second (``import rdformat`` and ``rdc --help`` must not pay it). Blocks reach it
already parsed (reader checks 1-5 of spec 6.2 done by ``ans._parse_block``, which raises the errors), so
the only failure left is a lane that does not end cleanly, returned as data for ``ans`` to raise.

The kernels release the GIL: a batch is cut into contiguous runs of blocks of about equal symbol counts,
decoded by up to :func:`threads` threads at once (each writes its own part of the outputs).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np

from . import ans_numba as kern
from . import models as _models
from .ans_numpy import SLOTS_PER_SYMBOL as _SLOTS_PER_SYMBOL
from .ans_numpy import Block

#: Whether numba imported (the kernels exist).
AVAILABLE = kern.AVAILABLE
if AVAILABLE and not _models._FAST_TABLE:
    _models._FAST_TABLE.append(kern.parse_table_body)
#: Output dtypes the decode kernel is compiled for; other integer outputs are decoded to uint32 and
#: converted (each extra dtype would cost another compilation of the kernel on first use).
_KERNEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))
#: A batch with fewer symbols runs on the calling thread: a hand-off to the pool costs ~50 us, about
#: what the kernel decodes in that time.
PARALLEL_MIN_SYMBOLS = 1 << 18
_ENV_THREADS = "RDFORMAT_THREADS"
_DEFAULT_THREADS = max(1, min(2, os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None
_pool_width = 0
_pool_lock = threading.Lock()


def threads() -> int:
    """Threads a batch decodes on: ``RDFORMAT_THREADS`` if set (>= 1), else ``min(2, CPU count)``."""
    raw = os.environ.get(_ENV_THREADS, "").strip()
    if raw.isdigit() and int(raw) >= 1:
        return int(raw)
    return _DEFAULT_THREADS


def run_parallel(jobs: list) -> list:
    """Call every zero-argument function of ``jobs``, the first on the calling thread and the others on
    the shared pool (all on the calling thread with one thread); their results in order (a job's
    exception is raised when its turn comes)."""
    width = threads()
    if len(jobs) <= 1 or width <= 1:
        return [job() for job in jobs]
    pool = _shared_pool(width)
    futures = [pool.submit(job) for job in jobs[1:]]  # the caller works too instead of waiting
    return [jobs[0](), *(f.result() for f in futures)]


def _shared_pool(width: int) -> ThreadPoolExecutor:
    global _pool, _pool_width
    with _pool_lock:
        if _pool is None or _pool_width < width:  # a larger RDFORMAT_THREADS gets a larger pool
            _pool, _pool_width = ThreadPoolExecutor(max_workers=width, thread_name_prefix="rdformat-decode"), width
        return _pool


def submit(fn: Any, *args: Any) -> Future:
    """``fn(*args)`` started on the shared pool (sized by :func:`threads`)."""
    return _shared_pool(max(threads(), 1)).submit(fn, *args)


class LaneError(NamedTuple):
    """A lane that does not decode to its initial state: block position in the batch, lane, byte offset."""

    block: int
    lane: int
    offset: int


def _decode_tables(blocks: list[Block]) -> tuple[kern.DecodeTables, list[int]]:
    """Lookup tables of the distinct tables of ``blocks`` and each block's table index.

    A table gets its ``2**Q`` slots only when the batch decodes enough of its symbols
    (``ans_numpy.SLOTS_PER_SYMBOL``); the others are searched, so a batch of many tiny blocks with their
    own tables costs memory and time in proportion to its symbols (hostile files included).
    """
    order: dict[int, int] = {}
    tabs = []
    use: list[int] = []
    index = []
    for b in blocks:
        at = order.get(id(b.table))
        if at is None:
            at = order[id(b.table)] = len(tabs)
            tabs.append(b.table)
            use.append(0)
        use[at] += b.n
        index.append(at)
    expand = [(1 << t.precision) <= _SLOTS_PER_SYMBOL * u for t, u in zip(tabs, use)]
    if len(tabs) == 1:
        t = tabs[0]
        if expand[0]:
            return t._derived("numba", lambda: kern.decode_tables_for(t)), index
        return t._derived("numba-search", lambda: kern.decode_tables_for(t, expand=False)), index
    return kern.build_decode_tables([t.precision for t in tabs], [t.freqs for t in tabs],
                                    [t.symbols for t in tabs], expand), index


def decode(blocks: list[Block], width: int | None = None) -> tuple[list[np.ndarray], LaneError | None]:
    """Decode parsed blocks; (one array of ``b.n`` values of ``b.odt`` per block, None) or (partial, error).

    ``width``: threads to decode on (default: :func:`threads` for a batch of at least
    ``PARALLEL_MIN_SYMBOLS`` symbols, else 1); a job already running on the pool passes 1.

    The error concerns the first block (in batch order) with a lane that does not end cleanly, and its
    lowest such lane, as the numpy decoder reports it.
    """
    if len(blocks) == 1:
        return _decode_single(blocks[0])
    # Per-block bookkeeping on Python ints: batches hold a few to a few hundred blocks, and small numpy
    # calls per batch cost more than decoding a small model's symbols.
    counts = [b.n for b in blocks]
    starts, at = [], 0
    for b in blocks:
        starts.append(at)
        at += b.raw.size
    data = np.concatenate([b.raw for b in blocks])  # one writable buffer: one kernel signature
    tables, table_of = _decode_tables(blocks)
    # one output buffer per kernel dtype; a block's values are a view of it
    kdt = [b.odt if b.odt in _KERNEL_DTYPES else _U32 for b in blocks]
    groups: dict[np.dtype, list[int]] = {}
    for i, dt in enumerate(kdt):
        groups.setdefault(dt, []).append(i)
    out_start = [0] * len(blocks)
    outs = {}
    for dt, members in groups.items():
        at = 0
        for i in members:
            out_start[i] = at
            at += counts[i]
        outs[dt] = np.empty(at, dtype=dt)
    # runs of consecutive blocks of one dtype, cut so that each thread gets about as many symbols
    total = sum(counts)
    if width is None:
        width = threads() if total >= PARALLEL_MIN_SYMBOLS else 1
    share = -(-total // width)
    columns = (starts, [b.raw.size for b in blocks], counts, table_of, out_start)
    jobs = []
    for dt, members in groups.items():
        run: list[int] = []
        load = 0
        for i in members:
            run.append(i)
            load += counts[i]
            if load >= share:
                jobs.append(_job(data, columns, tables, outs[dt], run))
                run, load = [], 0
        if run:
            jobs.append(_job(data, columns, tables, outs[dt], run))
    # one thread: the jobs (one per output dtype) run here, without a hand-off to the pool
    errors = [e for e in (run_parallel(jobs) if width > 1 else [job() for job in jobs]) if e is not None]
    results = [outs[kdt[i]][out_start[i]:out_start[i] + b.n] for i, b in enumerate(blocks)]
    results = [r if r.dtype == b.odt else r.astype(b.odt) for r, b in zip(results, blocks)]
    return results, (min(errors) if errors else None)


_U32 = np.dtype(np.uint32)
#: A one-block batch's start, table and output position (writable like the batch path's arrays: a read-only
#: array is another numba type, another compilation; the kernel never writes it).
_ZERO = np.zeros(1, dtype=np.int64)


def _decode_single(b: Block) -> tuple[list[np.ndarray], LaneError | None]:
    """:func:`decode` of one block on this thread, without the batch bookkeeping (a small model's class
    maps and lone chunks decode one block at a time: the bookkeeping cost about as much as the kernel)."""
    dt = b.odt if b.odt in _KERNEL_DTYPES else _U32
    out = np.empty(b.n, dtype=dt)
    tables, _ = _decode_tables([b])
    data = b.raw.copy()  # writable and contiguous, as the batch's concatenation: the same kernel signature
    status = kern.decode_blocks(data, _ZERO, np.full(1, data.size, dtype=np.int64), np.full(1, b.n, dtype=np.int64),
                                _ZERO, tables, out, _ZERO)
    return [out if dt == b.odt else out.astype(b.odt)], _lane_error(status, [0])


def _lane_error(status: tuple, run: list[int]) -> LaneError | None:
    """The :class:`LaneError` of a :func:`.ans_numba.decode_blocks` status on parsed blocks (``run``: their
    batch positions), or None when they decoded."""
    code, b, lane, offset = status
    if code == kern.OK:
        return None
    if code != kern.ERR_LANE_STATE:  # the blocks were parsed: anything else is a bug here
        raise RuntimeError(f"compiled ANS decoder: unexpected status {code} on parsed blocks")
    return LaneError(run[int(b)], int(lane), int(offset))


def _job(data: np.ndarray, columns: tuple, tables: kern.DecodeTables, out: np.ndarray, run: list[int]):
    """A function decoding blocks ``run`` (batch positions) into ``out``; it returns a LaneError or None.
    ``columns``: per block of the batch, its start and size in ``data``, its symbol count, table index and
    start in ``out``."""
    starts, sizes, counts, table_of, out_start = (np.array([column[i] for i in run], dtype=np.int64)
                                                  for column in columns)
    args = (data, starts, sizes, counts, table_of, tables, out, out_start)

    def job() -> LaneError | None:
        return _lane_error(kern.decode_blocks(*args), run)

    return job


def encode(ranks: np.ndarray, freqs: np.ndarray, precision: int, lanes: int) -> tuple[int, int, np.ndarray]:
    """:func:`.ans_numba.encode_block` on ``uint16`` ranks (one compiled signature; ranks are < 2**16)."""
    return kern.encode_block(ranks.astype(np.uint16, copy=False), freqs, precision, lanes)


def ranks_of(values: np.ndarray, table: _models.FrequencyTable) -> np.ndarray | None:
    """:func:`.ans_numba.ranks_of`: the encoder's one-pass symbol -> rank lookup, or None (numpy's then)."""
    return kern.ranks_of(values, table)
