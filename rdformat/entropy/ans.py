"""Multi-lane stack ANS coder, bit-exact with ``constriction.stream.stack.AnsCoder``: public API and backends.

The coder is constriction's ``AnsCoder`` (32-bit words, 64-bit state) at precision 24 with a
categorical model whose integer frequencies are the table's frequencies scaled by ``2**(24-Q)``.
Three interchangeable backends produce identical bytes and identical decoded arrays:

* ``"numba"`` - compiled loops with direct slot tables, or a search of the cumulative frequencies for tables
  a batch uses too little to expand (:mod:`.ans_numba`, glued in by :mod:`.ans_compiled`),
  used when numba imports; numba is imported on first use, never by ``import rdformat``;
* ``"constriction"`` - the Rust library (:mod:`.ans_constriction`), used when importable and when a
  once-per-process self-check shows that it reproduces our integer model exactly;
* ``"numpy"`` - the reference (:mod:`.ans_numpy`), vectorised *across lanes* (one numpy operation advances
  every lane by one symbol), so files decode where neither accelerator installs. :func:`decode_many`
  advances the lanes of several blocks together, which is what makes it fast on small blocks.

A block of ``n`` symbols is split into ``L`` independent ANS streams ("lanes"): symbol ``i`` goes
to lane ``i % L``. Block byte format (normative text: ``spec/entropy.md``, section 6.2)::

    u32        L                    number of lanes; 0 iff n == 0 or the table has one symbol
    L x u32    word count of each lane
    words      every lane's 32-bit words (little-endian), lane 0 first

Set ``RDFORMAT_NO_NUMBA=1`` and/or ``RDFORMAT_NO_CONSTRICTION=1`` to disable an accelerator (or call
:func:`set_backend` / :func:`use_backend`).

One module on purpose (over 500 lines): the public coder API and the backend choice share the block
format checks that every backend must apply identically.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import threading
from typing import Any, Iterator

import numpy as np

from ..errors import CorruptDataError, InvalidInputError, LimitExceededError, RdcError, TruncatedError
from . import ans_constriction as _cs
from . import ans_numpy as _np
from .ans_numpy import CODER_PRECISION, Block
from .models import FrequencyTable

__all__ = [
    "encode", "decode", "decode_many", "available_backends", "set_backend", "use_backend", "default_lanes",
    "compiled_active", "decode_threads", "background", "parallel_map", "decode_map", "CODER_PRECISION",
    "MAX_DEFAULT_LANES",
]

#: Upper bound of the lane count :func:`default_lanes` picks (``lanes=`` may ask for more).
MAX_DEFAULT_LANES = 4096
#: :func:`default_lanes` gives each lane at least this many symbols.
MIN_DEFAULT_SYMBOLS_PER_LANE = 256
#: Cost of one lane in bits, rounded up: its u32 word count plus 4-5 bytes of final state (measured
#: 8.0-9.0 bytes, more for fewer bits per symbol).
LANE_COST_BITS = 72
#: Default share of the coded size that :func:`default_lanes` may spend on lanes.
DEFAULT_LANE_OVERHEAD = 0.005

_ENV_NO_NUMBA = "RDFORMAT_NO_NUMBA"
#: Before the compiled kernels have run in a process, ``"auto"`` hands them a job only if it has at least
#: this many symbols (or elements): importing numba and loading its cached kernels costs 1-2 s once, more
#: than the numpy and constriction coders spend on a small model. ``RDFORMAT_NUMBA_MIN_SYMBOLS`` overrides it.
NUMBA_COLD_MIN_SYMBOLS = 4_000_000
_ENV_COLD_MIN = "RDFORMAT_NUMBA_MIN_SYMBOLS"
#: ``ans_numba.ERR_TOO_MANY_WORDS`` (not imported from there: that would import numba).
_NUMBA_TOO_MANY_WORDS = 9
_BACKEND_NAMES = ("auto", "numba", "constriction", "numpy")
#: :func:`decode_map` cuts a batch into this many runs per thread, handed out in order to free threads.
DECODE_MAP_RUNS_PER_THREAD = 8
#: ... but a run gets at least about this much work (symbols or elements): each costs ~0.1 ms of setup.
DECODE_MAP_RUN_WORK = 1 << 17


# --------------------------------------------------------------------------------------------
# backend selection
# --------------------------------------------------------------------------------------------

_numba_lock = threading.Lock()
_numba_result: tuple[Any, str] | None = None  # (ans_compiled module or None, reason)
_numba_warm = False  # the compiled kernels have been chosen once in this process (numba is loaded)


def _numba_pays(work: int | None) -> bool:
    """Whether ``"auto"`` may use the compiled kernels for a job of ``work`` symbols (None: unknown)."""
    if _numba_warm:
        return True
    raw = os.environ.get(_ENV_COLD_MIN, "").strip()
    least = int(raw) if raw.isdigit() else NUMBA_COLD_MIN_SYMBOLS
    return work is not None and work >= least or least == 0


_pin_lock = threading.Lock()
_pin_depth = 0  # open pinned_choice() blocks (any thread)
_pinned: tuple[Any, str] | None = None  # what _numba() decided inside them


@contextlib.contextmanager
def pinned_choice() -> Iterator[None]:
    """Inside the block, whether the compiled backend is usable is decided once (on first use), not on
    every call of :func:`compiled_active`: codecs ask per chunk, and the ``RDFORMAT_NO_NUMBA`` lookup
    (~1.5 us) took 3% of loading a small model. For one load or one tensor read; nested and concurrent
    blocks share the decision until the last one ends."""
    global _pin_depth, _pinned
    with _pin_lock:
        if _pin_depth == 0:
            _pinned = None  # decided afresh (a late write of an earlier block may remain)
        _pin_depth += 1
    try:
        yield
    finally:
        with _pin_lock:
            _pin_depth -= 1
            if _pin_depth == 0:
                _pinned = None


def _numba() -> tuple[Any, str]:
    """(the :mod:`.ans_compiled` module, "") if the numba backend is usable, else (None, reason).

    The first call imports numba (about half a second); compiled kernels load from numba's cache.
    """
    global _pinned
    pinned = _pinned
    if pinned is not None and _pin_depth:
        return pinned
    res = _numba_unpinned()
    if _pin_depth:
        _pinned = res
    return res


def _numba_unpinned() -> tuple[Any, str]:
    """What :func:`_numba` decides, from the environment and the import."""
    global _numba_result
    if os.environ.get(_ENV_NO_NUMBA, "").strip() not in ("", "0"):
        return None, f"disabled by {_ENV_NO_NUMBA}"
    if sys.byteorder != "little":  # the kernels read the lanes' little-endian words in place
        return None, "the compiled backend needs a little-endian machine"
    res = _numba_result
    if res is not None:
        return res
    with _numba_lock:
        if _numba_result is None:
            try:
                from . import ans_compiled  # noqa: PLC0415 - optional accelerator, imported on first use

                mod, reason = (ans_compiled, "") if ans_compiled.AVAILABLE else (None, "numba is not installed")
            except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
                mod, reason = None, f"numba not usable: {type(exc).__name__}: {exc}"
            _numba_result = (mod, reason)
        return _numba_result


def available_backends() -> list[str]:
    """Usable backends, fastest first: a sublist of ``["numba", "constriction", "numpy"]``.

    numba counts if it imports and ``RDFORMAT_NO_NUMBA`` is not set (calling this imports it);
    constriction if it imports, passes the once-per-process bit-exactness self-check, and
    ``RDFORMAT_NO_CONSTRICTION`` is not set.
    """
    names = ["numba"] if _numba()[0] is not None else []
    if _cs.constriction_module()[0] is not None:
        names.append("constriction")
    return names + ["numpy"]


_preferred = "auto"  # what backend="auto" means; see set_backend()


def set_backend(name: str) -> str:
    """Choose what ``backend="auto"`` means in this process; returns the previous choice.

    ``"auto"`` (the default) picks numba when usable, else per call whichever of constriction and numpy is
    expected to be faster; ``"numpy"`` always uses the pure numpy coder; ``"numba"`` and ``"constriction"``
    use that accelerator whenever it is usable (and numpy otherwise, silently: files must always load).
    Every backend gives identical results, so this only changes speed; it exists for benchmarks and
    tests. :func:`use_backend` is the context-manager form.
    """
    global _preferred
    if name not in _BACKEND_NAMES:
        raise InvalidInputError(f"unknown backend {name!r}; expected one of {', '.join(_BACKEND_NAMES)}")
    old, _preferred = _preferred, name
    return old


@contextlib.contextmanager
def use_backend(name: str) -> Any:
    """``with use_backend("numpy"): ...`` - :func:`set_backend` for the duration of a block."""
    old = set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def _resolve_backend(backend: str, work: int | None = None) -> tuple[str, Any, bool]:
    """(backend name, its module or None for numpy, whether constriction may still yield to numpy).

    ``work``: symbols (or elements) of the job, for ``"auto"``'s choice of numba before it is loaded.
    """
    global _numba_warm
    if backend not in _BACKEND_NAMES:
        raise InvalidInputError(f"unknown backend {backend!r}; expected one of {', '.join(_BACKEND_NAMES)}")
    strict = backend != "auto"  # an explicit backend= that is not usable is an error
    if backend == "auto":
        backend = _preferred
    if backend == "numpy":
        return "numpy", None, False
    if backend == "numba" or backend == "auto" and _numba_pays(work):
        mod, reason = _numba()
        if mod is not None:
            _numba_warm = True
            return "numba", mod, False
        if backend == "numba":
            if strict:
                raise InvalidInputError(f"backend 'numba' is not available ({reason})")
            return "numpy", None, False
    cs, reason = _cs.constriction_module()
    if cs is not None:
        return "constriction", cs, backend == "auto"
    if strict:
        raise InvalidInputError(f"backend 'constriction' is not available ({reason})")
    return "numpy", None, False


def compiled_active(work: int | None = None) -> bool:
    """Whether compiled kernels serve ``backend="auto"`` now, for a job of ``work`` elements.

    True when the numba backend is selected (the default where numba imports) and either already in use
    in this process or ``work`` is large enough to pay for loading it (:data:`NUMBA_COLD_MIN_SYMBOLS`).
    Codecs then use their compiled kernels (``rdformat.codecs.kernels_numba``) too, producers theirs;
    with any other backend they run their numpy code. Results are identical either way.
    """
    global _numba_warm
    # what _resolve_backend("auto", work) decides, without its constriction check (called per chunk)
    if _preferred in ("numpy", "constriction") or _preferred == "auto" and not _numba_pays(work):
        return False
    if _numba()[0] is None:  # not installed, or disabled by RDFORMAT_NO_NUMBA
        return False
    _numba_warm = True
    return True


def decode_threads(work: int | None = None) -> int:
    """Threads the compiled backend decodes a job of ``work`` elements on (1 when it is not active)."""
    mod = _numba()[0] if compiled_active(work) else None
    return mod.threads() if mod is not None else 1


def background(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` started on the compiled backend's decode pool when it runs several threads, else run
    now; returns a ``concurrent.futures.Future`` (``.result()``). For work that spends its time in compiled
    kernels, which release the GIL: the caller goes on meanwhile (e.g. the next chunk prepared while this
    one is coded)."""
    mod = _numba()[0] if compiled_active() else None
    if mod is not None and mod.threads() > 1:
        return mod.submit(fn, *args)
    from concurrent.futures import Future  # noqa: PLC0415 - not imported by ``import rdformat`` (6 ms)

    done = Future()
    try:
        done.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - raised by result(), as from a pool
        done.set_exception(exc)
    return done


def parallel_map(fn: Any, items: list, work: int | None = None) -> list:
    """``[fn(x) for x in items]``, spread over the compiled backend's decode threads when it is active.

    Meant for per-chunk work that spends its time in compiled kernels or large numpy operations (which
    release the GIL). The items are cut into one contiguous run per thread; results come back in order
    and an exception propagates as from the loop. Without the numba backend, with one thread, or when
    ``work`` (elements, if known) is below ``ans_compiled.PARALLEL_MIN_SYMBOLS``, it is the plain loop.
    """
    mod = _numba()[0] if len(items) > 1 and compiled_active() else None
    if mod is not None and work is not None and work < mod.PARALLEL_MIN_SYMBOLS:
        mod = None  # a thread hand-off costs more than it saves
    width = mod.threads() if mod is not None else 1
    if width <= 1:
        return [fn(x) for x in items]
    step = -(-len(items) // width)
    runs = [items[i:i + step] for i in range(0, len(items), step)]
    return [r for part in mod.run_parallel([lambda run=run: [fn(x) for x in run] for run in runs]) for r in part]


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------




#: Cost model of the two decoders (seconds; measured on x86-64, one core). constriction: per symbol
#: (binary-search model lookup behind a dynamic binding) and per lane (one coder object each). numpy:
#: per lockstep step (~16 numpy calls), per symbol stepped, per straggler symbol (Python loop), per block.
_CS_PER_SYMBOL, _CS_PER_LANE = 35e-9, 2.5e-6
_NP_PER_STEP, _NP_PER_SYMBOL, _NP_PER_SCALAR_SYMBOL, _NP_PER_BLOCK = 13e-6, 9e-9, 0.8e-6, 60e-6


def _numpy_decode_is_faster(blocks: list[Block]) -> bool:
    """Whether the lockstep numpy decoder is expected to beat constriction on these blocks."""
    n = sum(b.n for b in blocks)
    lanes = sum(b.lanes for b in blocks)
    t_cs = n * _CS_PER_SYMBOL + lanes * _CS_PER_LANE
    # lanes sorted by length; the lockstep runs while more than _SCALAR_MAX_LANES lanes are active
    per_lane = np.sort(np.concatenate([np.full(b.lanes, -(-b.n // b.lanes), dtype=np.int64) for b in blocks]))
    steps = int(per_lane[-_np._SCALAR_MAX_LANES - 1]) if per_lane.size > _np._SCALAR_MAX_LANES else 0
    scalar = int(np.maximum(per_lane[-_np._SCALAR_MAX_LANES:] - steps, 0).sum())
    t_np = steps * _NP_PER_STEP + n * _NP_PER_SYMBOL + scalar * _NP_PER_SCALAR_SYMBOL + len(blocks) * _NP_PER_BLOCK
    return t_np < t_cs


def default_lanes(n: int, ideal_bits: float, *, size_bits: float | None = None,
                  overhead: float = DEFAULT_LANE_OVERHEAD) -> int:
    """Lane count :func:`encode` picks for ``n`` symbols whose ideal coded size is ``ideal_bits``.

    Lanes make decoding parallel (the numpy decoder advances all lanes of a block, or of several
    blocks, with each numpy operation: fewer steps, less time) and cost 8-9 bytes each (4 for the
    word count, 4-5 for the final state). The count spends at most ``overhead`` (default 0.5%) of
    ``size_bits`` on lanes; ``size_bits`` defaults to ``ideal_bits``, a codec whose block is only part of
    what it stores (e.g. one byte plane among raw ones) may pass the size of the whole. At most 4096
    lanes, at least 256 symbols per lane, at least one lane:
    ``max(1, min(4096, n // 256, floor(overhead * size_bits / 72)))``.
    """
    if n <= 0:
        return 0
    budget = overhead * (ideal_bits if size_bits is None else size_bits)
    by_size = int(budget // LANE_COST_BITS) if budget > 0 else 0
    return max(1, min(MAX_DEFAULT_LANES, n // MIN_DEFAULT_SYMBOLS_PER_LANE, by_size))


def encode(symbols: np.ndarray, table: FrequencyTable, *, lanes: int | None = None,
           backend: str = "auto") -> bytes:
    """Encode ``symbols`` (integers, any shape, flattened in C order) into an ANS block.

    Args:
        symbols: values that must all be present in ``table``. Not modified.
        table: the entropy model; store it next to the block (:meth:`FrequencyTable.to_bytes`).
        lanes: number of lanes ``L`` (1..n); default :func:`default_lanes`. Ignored (``L = 0``)
            when there are no symbols or the table has a single symbol.
        backend: ``"auto"`` (numba, else constriction, if usable), ``"numba"``, ``"constriction"`` or
            ``"numpy"``; every backend produces the same bytes.

    Returns:
        The block: ``u32 L``, ``L`` x ``u32`` word counts, then the words of lane 0, 1, ... (u32 LE).

    Raises:
        InvalidInputError: a value not in the table, a non-integer input, a bad ``lanes`` or backend.
    """
    if not isinstance(table, FrequencyTable):
        raise InvalidInputError(f"table must be a FrequencyTable, got {type(table).__name__}")
    arr = np.asarray(symbols)
    name, mod, _ = _resolve_backend(backend, arr.size)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        if not (arr.size == 0 and arr.dtype.kind == "f"):
            raise InvalidInputError(f"symbols must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    values = arr.reshape(-1)
    n = values.size
    # the compiled lookup maps byte and pair symbols in one pass (numpy's takes four); anything it does not
    # take, a value not in the table included, goes to numpy's, which names the value
    ranks = mod.ranks_of(values, table) if name == "numba" else None
    if ranks is None:
        ranks = _np.ranks_of(values, table)
    if n == 0 or table.num_symbols == 1:
        return np.zeros(1, dtype="<u4").tobytes()
    if lanes is None:
        hist = np.bincount(ranks, minlength=table.num_symbols)
        lanes = default_lanes(n, float(np.dot(hist, table._ideal_bits_per_rank())))
    else:
        try:
            lanes = int(lanes)
        except (TypeError, ValueError):
            raise InvalidInputError(f"lanes must be an integer, got {lanes!r}") from None
        if not 1 <= lanes <= n:
            raise InvalidInputError(f"lanes must be in 1..{n} (the number of symbols), got {lanes}")
        if lanes >= 1 << 32:
            raise LimitExceededError(f"lanes must be < 2**32, got {lanes}")
    if name == "numba":
        code, size, out = mod.encode(ranks, table.freqs, table.precision, lanes)
        if code == _NUMBA_TOO_MANY_WORDS:
            raise LimitExceededError("ANS block: a lane has 2**32 or more words; use more lanes")
        if code != 0:  # ranks were validated above: anything else is a bug
            raise InvalidInputError(f"compiled ANS encoder refused its input (status {code})")
        return out[:size].tobytes()
    if name == "constriction":
        counts, words = _cs.encode_constriction(mod, ranks, table, lanes)
    else:
        counts, words = _np.encode_numpy(ranks, table, lanes)
    if counts.size and int(counts.max()) >= 1 << 32:
        raise LimitExceededError("ANS block: a lane has 2**32 or more words; use more lanes")
    header = np.empty(lanes + 1, dtype="<u4")
    header[0] = lanes
    header[1:] = counts
    return header.tobytes() + words.astype("<u4", copy=False).tobytes()





def _check_decode_args(count: Any, table: Any, out_dtype: Any) -> tuple[int, np.dtype]:
    if not isinstance(table, FrequencyTable):
        raise InvalidInputError(f"table must be a FrequencyTable, got {type(table).__name__}")
    try:
        n = int(count)
        if n != count:
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidInputError(f"count must be an integer, got {count!r}") from None
    if n < 0:
        raise InvalidInputError(f"count must be >= 0, got {n}")
    try:
        odt = np.dtype(out_dtype)
    except TypeError:
        raise InvalidInputError(f"bad out_dtype {out_dtype!r}") from None
    if odt == np.bool_ or odt.kind not in "iu":
        raise InvalidInputError(f"out_dtype must be an integer dtype, got {odt}")
    return n, odt.newbyteorder("=")


#: Largest value of each integer output dtype (``np.iinfo`` costs microseconds per call).
_DTYPE_MAX: dict[np.dtype, int] = {}
#: Blocks with at most this many lanes have their lane header checked with ``struct`` rather than numpy
#: (a few microseconds less per block: files of many small tensors hold many such blocks).
_SCALAR_HEADER_LANES = 32


def _parse_block(buf: Any, n: int, table: FrequencyTable, odt: np.dtype, index: int) -> np.ndarray | Block:
    """Apply the reader checks of spec section 6.2; a trivial block's output, or the block to decode."""
    try:
        data = np.frombuffer(buf, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as exc:
        raise InvalidInputError(f"ANS block: cannot read a buffer from {type(buf).__name__}: {exc}") from None
    size = data.size
    top = _DTYPE_MAX.get(odt)
    if top is None:
        top = _DTYPE_MAX[odt] = int(np.iinfo(odt).max)
    if n > 0 and int(table.symbols[-1]) > top:
        raise CorruptDataError(f"ANS block: table symbol {int(table.symbols[-1])} does not fit {odt}")
    if size < 4:
        raise TruncatedError("ANS block: missing lane count", offset=size)
    (lanes,) = struct.unpack_from("<I", data, 0)

    if n == 0 or table.num_symbols == 1:
        if lanes != 0:
            raise CorruptDataError(f"ANS block: {lanes} lanes where 0 are required "
                                   f"({'no symbols' if n == 0 else 'single-symbol table'})", offset=0)
        if size != 4:
            raise CorruptDataError(f"ANS block: {size - 4} bytes after the end of the block", offset=4)
        return np.full(n, table.symbols[0], dtype=odt)

    if not 1 <= lanes <= n:
        raise CorruptDataError(f"ANS block: lane count {lanes} not in 1..{n}", offset=0)
    header_end = 4 + 4 * lanes
    if header_end > size:
        raise TruncatedError(f"ANS block: {lanes} lane word counts need {4 * lanes} bytes, "
                             f"{size - 4} left", offset=size)
    small = lanes <= _SCALAR_HEADER_LANES
    if small:
        lane_words = struct.unpack_from(f"<{lanes}I", data, 4)
        total = sum(lane_words)
    else:
        counts = data[4:header_end].view("<u4").astype(np.int64)
        total = int(counts.sum())
    end = header_end + 4 * total
    if end > size:
        raise TruncatedError(f"ANS block: lanes hold {total} words ({4 * total} bytes), "
                             f"{size - header_end} bytes left", offset=size)
    if end < size:
        raise CorruptDataError(f"ANS block: {size - end} bytes after the end of the block", offset=end)
    words = data[header_end:end].view("<u4")  # a view (Block.words copies it when a decoder needs it)
    if small:
        # the same checks as below, lane by lane: no lane may end in a zero word
        first, at = [], 0
        for j, count in enumerate(lane_words):
            first.append(at)
            at += count
            if count and struct.unpack_from("<I", data, header_end + 4 * (at - 1))[0] == 0:
                raise CorruptDataError(f"ANS block: lane {j} ends in a zero word", offset=header_end + 4 * (at - 1))
        return Block(index, n, table, odt, words, np.array(first, dtype=np.int64),
                     np.array(lane_words, dtype=np.int64), header_end, data)
    starts = np.zeros(lanes, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    nonempty = np.flatnonzero(counts)
    last = starts[nonempty] + counts[nonempty] - 1
    zero_last = np.flatnonzero(words[last] == 0)
    if zero_last.size:
        j = int(nonempty[zero_last[0]])
        raise CorruptDataError(f"ANS block: lane {j} ends in a zero word",
                               offset=header_end + 4 * int(last[zero_last[0]]))
    return Block(index, n, table, odt, words, starts, counts, header_end, data)


def _decode_parsed(blocks: list[Block], name: str, mod: Any, free: bool) -> list[np.ndarray]:
    """Decode parsed blocks with the backend ``name`` (module ``mod``); lane errors carry ``block_index``.

    Blocks whose table's ``2**Q`` slots their symbols do not justify (many tiny chunks, each with its own
    table) go to the numpy decoder's search path when numpy decodes (its lookups expand every table; the
    numba decoder and constriction search such tables themselves), so decoding costs memory and time
    linear in the file and output sizes.
    """
    if not blocks:
        return []
    if name == "numba":  # the compiled decoder searches the tables not worth expanding itself
        return _decode_expanded(blocks, name, mod, free)
    if name == "constriction" and not (free and _numpy_decode_is_faster(blocks)):
        # constriction searches its model's cumulative frequencies (memory linear in the table's symbols,
        # no 2**Q slots), so every block may go to it; numpy's search path runs a Python loop per symbol
        # once few lanes remain, which made small models (one lane per tensor) load 10x slower.
        return _decode_expanded(blocks, name, mod, free)
    worth = _np.tables_worth_expanding(blocks)
    if all(worth):
        return _decode_expanded(blocks, name, mod, free)
    groups = [([b for b, w in zip(blocks, worth) if w], lambda g: _decode_expanded(g, name, mod, free)),
              ([b for b, w in zip(blocks, worth) if not w], lambda g: _np.decode_lockstep(g, expand=False))]
    results: dict[int, np.ndarray] = {}
    errors = []
    for group, decode_group in groups:
        if not group:
            continue
        try:
            results.update(zip(map(id, group), decode_group(group)))
        except RdcError as exc:
            if getattr(exc, "block_index", None) is None:
                raise
            errors.append(exc)
    if errors:  # the first failing block of the batch, whichever group it was in
        raise min(errors, key=lambda e: e.block_index)  # type: ignore[attr-defined]
    return [results[id(b)] for b in blocks]


def _decode_compiled(blocks: list[Block], mod: Any, width: int | None = None) -> list[np.ndarray]:
    """Parsed blocks through the compiled decoder (on ``width`` threads); a lane error carries ``block_index``."""
    out, err = mod.decode(blocks, width)
    if err is not None:
        b = blocks[err.block]
        exc = CorruptDataError(f"ANS block: lane {err.lane} does not decode to its initial state "
                               f"(corrupt data or wrong table/count)", offset=err.offset)
        exc.block_index = b.index  # type: ignore[attr-defined]
        raise exc
    return out


def _decode_expanded(blocks: list[Block], name: str, mod: Any, free: bool) -> list[np.ndarray]:
    """:func:`_decode_parsed` for blocks whose tables are worth expanding to ``2**Q`` slots (numba: any)."""
    if name == "numba":
        return _decode_compiled(blocks, mod)
    if name == "constriction" and not (free and _numpy_decode_is_faster(blocks)):
        out = []
        for b in blocks:
            try:
                out.append(_cs.decode_constriction(mod, b.words, b.starts, b.counts, b.n, b.table, b.odt,
                                                   b.word_base))
            except CorruptDataError as exc:
                exc.block_index = b.index  # type: ignore[attr-defined]
                raise
        return out
    return _np.decode_lockstep(blocks)


def decode(buf: Any, count: int, table: FrequencyTable, *, backend: str = "auto",
           out_dtype: Any = np.uint32) -> np.ndarray:
    """Decode an ANS block of exactly ``count`` symbols; the block must fill ``buf`` exactly.

    Args:
        buf: the block (bytes-like). Not modified.
        count: number of symbols (from the tensor header); the output has this many elements.
        table: the block's entropy model.
        backend: ``"auto"``, ``"numba"``, ``"constriction"`` or ``"numpy"``; every backend returns the
            same array. ``"auto"`` picks numba when usable, else the faster of constriction and numpy
            (numpy wins for blocks with many lanes), unless :func:`set_backend` fixed a choice.
        out_dtype: integer dtype of the result; every table symbol must fit it.

    Returns:
        1-D array of ``count`` symbol values.

    Raises:
        TruncatedError: ``buf`` ends before the block does.
        CorruptDataError: bad lane count, extra bytes, a lane that does not decode cleanly, or a
            table symbol that ``out_dtype`` cannot hold. Error offsets are positions in ``buf``.
        InvalidInputError: bad ``count``, ``table``, ``backend`` or ``out_dtype``.
    """
    n, odt = _check_decode_args(count, table, out_dtype)
    name, mod, free = _resolve_backend(backend, n)
    parsed = _parse_block(buf, n, table, odt, 0)
    if isinstance(parsed, np.ndarray):
        return parsed
    return _decode_parsed([parsed], name, mod, free)[0]


def decode_many(blocks: Any, *, backend: str = "auto", out_dtype: Any = np.uint32) -> list[np.ndarray]:
    """Decode several ANS blocks at once; same results as :func:`decode` on each, usually much faster.

    The numpy backend advances the lanes of *all* blocks together, one numpy operation per step for
    every lane of every block, so many small blocks (byte planes of a chunk, chunks of a tensor, small
    tensors) cost about as many steps as the longest one instead of the sum.

    Args:
        blocks: iterable of ``(buf, count, table)`` or ``(buf, count, table, out_dtype)`` tuples,
            with the meaning of :func:`decode`'s arguments (each block fills its ``buf`` exactly).
        backend: as for :func:`decode`.
        out_dtype: default integer dtype of the results (a 4-tuple overrides it for its block).

    Returns:
        One 1-D array per block, in order.

    Raises:
        The errors of :func:`decode`. Every block is checked before any is decoded; the error concerns
        the first failing block, whose position in ``blocks`` is the exception's ``block_index``
        attribute (error offsets are positions in that block's ``buf``).
    """
    if backend != "auto":
        _resolve_backend(backend)  # an unknown or unusable backend fails before any block is read
    results, pending = _parse_many(blocks, out_dtype)
    name, mod, free = _resolve_backend(backend, sum(b.n for b in pending))
    return _merged(results, _decode_parsed(pending, name, mod, free))


def _merged(results: list[Any], decoded: list[np.ndarray]) -> list[np.ndarray]:
    """:func:`_parse_many`'s results with each parsed Block replaced, in order, by its decoded array."""
    it = iter(decoded)
    return [next(it) if isinstance(r, Block) else r for r in results]


def _parse_many(blocks: Any, out_dtype: Any) -> tuple[list[Any], list[Block]]:
    """:func:`decode_many`'s reader checks of every block, in order: (per block, its output if trivial, else
    its parsed :class:`Block`; the Blocks). An error carries the failing block's ``block_index``."""
    results: list[Any] = []
    pending: list[Block] = []
    for i, item in enumerate(blocks):
        try:
            if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
                raise InvalidInputError(f"decode_many: block {i} must be (buf, count, table[, out_dtype]), "
                                        f"got {type(item).__name__}")
            n, odt = _check_decode_args(item[1], item[2], item[3] if len(item) == 4 else out_dtype)
            parsed = _parse_block(item[0], n, item[2], odt, i)
        except RdcError as exc:
            exc.block_index = i  # type: ignore[attr-defined]
            raise
        if isinstance(parsed, Block):
            pending.append(parsed)
        results.append(parsed)
    return results, pending


def _balanced_runs(work: list[int], width: int) -> list[tuple[int, int]]:
    """Cut ``range(len(work))`` into at most ``width`` contiguous nonempty runs of about equal total work."""
    total = sum(work)
    runs, start, acc = [], 0, 0
    for i, w in enumerate(work):
        acc += w
        # close the run once it holds its share of the work (the last run takes the rest)
        if len(runs) < width - 1 and acc * width >= total * (len(runs) + 1) and i + 1 < len(work):
            runs.append((start, i + 1))
            start = i + 1
    runs.append((start, len(work)))
    return runs


def decode_map(groups: list, fn: Any, work: list[int] | None = None, *, backend: str = "auto",
               out_dtype: Any = np.uint32) -> list:
    """``[fn(i, decode_many(groups[i])) for i in range(len(groups))]``, decoding and ``fn`` side by side.

    With the compiled backend and a batch worth threads, the groups are cut into contiguous runs (of about
    an eighth of a thread's share of ``work``, e.g. elements per chunk, default their symbols; at least
    ``DECODE_MAP_RUN_WORK`` each), handed in order to whichever thread is free. A thread decodes a run's
    blocks in one call, then calls ``fn`` on each of its groups while the decoded symbols are still in
    cache: no barrier between decoding and ``fn``. ``fn`` must be thread-safe and spend its time in code
    that releases the GIL (compiled kernels, large numpy operations).

    Args:
        groups: per group, a list of blocks as :func:`decode_many` takes them (e.g. a chunk's ANS blocks).
        fn: called as ``fn(i, decoded)`` with group ``i``'s decoded arrays, in order within a thread.
        work: per group, its cost for the split between threads.
        backend, out_dtype: as for :func:`decode_many`.

    Returns:
        ``fn``'s results, in group order.

    Raises:
        The errors of :func:`decode_many` on all the groups' blocks in order (``block_index`` counts blocks
        across groups), before any result is returned; an exception of ``fn`` propagates.
    """
    if backend != "auto":
        _resolve_backend(backend)
    bounds = [0]
    for g in groups:
        bounds.append(bounds[-1] + len(g))
    results, pending = _parse_many([b for g in groups for b in g], out_dtype)
    total = sum(b.n for b in pending)
    name, mod, free = _resolve_backend(backend, total)
    width = mod.threads() if name == "numba" and len(groups) > 1 and total >= mod.PARALLEL_MIN_SYMBOLS else 1
    if width <= 1:
        values = _merged(results, _decode_parsed(pending, name, mod, free))
        return [fn(i, values[bounds[i]:bounds[i + 1]]) for i in range(len(groups))]
    if work is None:
        work = [sum(getattr(r, "n", 0) for r in results[bounds[i]:bounds[i + 1]]) for i in range(len(groups))]

    # runs of about an eighth of a thread's share, taken in order by whichever thread is free: a static
    # split left one thread idle for a quarter of a load (chunks of equal size do not finish equally fast)
    runs = _balanced_runs(work, max(width, min(width * DECODE_MAP_RUNS_PER_THREAD, sum(work) // DECODE_MAP_RUN_WORK)))
    done: list = [None] * len(runs)
    taken = iter(range(len(runs)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                k = next(taken, None)
            if k is None:
                return
            g0, g1 = runs[k]
            part = results[bounds[g0]:bounds[g1]]
            try:  # one thread per run: the other threads are busy with other runs
                blocks = [r for r in part if isinstance(r, Block)]
                values = _merged(part, _decode_compiled(blocks, mod, 1) if blocks else [])
            except CorruptDataError as exc:  # a lane error: reported for the whole batch below
                done[k] = (exc, [])
                continue
            base = bounds[g0]
            done[k] = (None, [fn(i, values[bounds[i] - base:bounds[i + 1] - base]) for i in range(g0, g1)])

    mod.run_parallel([worker] * min(width, len(runs)))
    errors = [e for e, _r in done if e is not None]
    if errors:  # the first failing block of the batch, as decode_many reports it
        raise min(errors, key=lambda e: e.block_index)  # type: ignore[attr-defined]
    return [r for _e, part in done for r in part]
