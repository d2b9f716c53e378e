"""Reading .rdc files: streaming iteration from any binary stream, and by-name access on files.

One module on purpose (over 500 lines): streaming iteration, by-name access and budgeted reads apply
the same record rules to the same stream under one lock; split, each would need the others' state.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import math
import mmap
import numbers
import os
import stat
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..format import crc_ahead
from ..format import records as C
from ..codecs import Codec, codec_from_config, get_codec_class
from ..format.dtypes import by_code
from ..format.layers import parse_layer
from ..entropy import ans
from ..errors import (
    ChecksumError,
    CorruptDataError,
    InvalidInputError,
    LimitExceededError,
    RdcError,
    TensorNotFoundError,
    TruncatedError,
    UnsupportedFeatureError,
)


#: On a stream of unknown length, a tensor output larger than this is grown as its chunks arrive
#: instead of being allocated up front, so memory follows the data that actually arrived.
STREAM_PREALLOC_BYTES = 64 << 20
#: A whole read of an in-memory file this large checksums its records ahead on another core (when the
#: compiled backend decodes on several threads): a thread start costs ~0.1 ms, the CRC of 16 MiB ~0.8 ms.
CRC_AHEAD_MIN_BYTES = 16 << 20
_MAX_INTP = np.iinfo(np.intp).max
#: Default :attr:`Limits.max_output_bytes`: 4 GiB decoded per read (a model of 2 G float16 weights).
DEFAULT_MAX_OUTPUT_BYTES = 4 << 30
#: Default :attr:`Limits.max_ratio`: lossless float data compresses 1.1-1.5x, 2-bit quantization 16x,
#: 99%-sparse SuRP about 250x; 1024x leaves room above all of them.
DEFAULT_MAX_RATIO = 1024.0
#: Default :attr:`Limits.ratio_floor_bytes`: 64 MiB, what any file may decode to whatever its size.
DEFAULT_RATIO_FLOOR_BYTES = 64 << 20


@dataclass(frozen=True)
class Limits:
    """Reader-side caps, checked from headers and the index before anything is allocated.

    The defaults fit a small device (a board with 1-4 GiB of memory) and every model up to a few GiB;
    raise them (or pass ``None`` where allowed) for larger trusted files. A read is one ``load``, one
    iteration, or all by-name reads of one open reader (each distinct tensor counted once).
    """

    #: Largest decoded tensor accepted, in bytes.
    max_tensor_bytes: int = 1 << 36
    #: Largest metadata / graph accepted, in bytes: caps the stored record and, for compressed records
    #: (format 1.2), the decompressed size, checked before decompressing.
    max_meta_bytes: int = C.MAX_META_BYTES
    max_graph_bytes: int = C.MAX_GRAPH_BYTES
    #: Total decoded bytes of one read (``None``: no limit). ``rdc --max-output``.
    max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES
    #: Decoded bytes per stored byte of the file (or, on a stream, of the bytes read so far) that a read
    #: may produce beyond ``ratio_floor_bytes`` (``None``: no limit). ``rdc --max-ratio``.
    max_ratio: float | None = DEFAULT_MAX_RATIO
    #: Output always allowed whatever the ratio, so small legitimate files (an all-zero tensor, a very
    #: sparse SuRP model) still load.
    ratio_floor_bytes: int = DEFAULT_RATIO_FLOOR_BYTES

    def __post_init__(self) -> None:
        for name in ("max_tensor_bytes", "max_meta_bytes", "max_graph_bytes", "ratio_floor_bytes",
                     "max_output_bytes"):
            value = getattr(self, name)
            if value is None and name == "max_output_bytes":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise InvalidInputError(f"Limits.{name} must be an integer >= 0, not {value!r}")
        ratio = self.max_ratio
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, numbers.Real)
                                  or not 0 < ratio < math.inf):
            raise InvalidInputError(f"Limits.max_ratio must be a positive finite number or None, not {ratio!r}")

    def output_allowance(self, stored_bytes: int) -> int | None:
        """Decoded bytes a read of ``stored_bytes`` stored bytes may produce (None: unlimited)."""
        allowed = self.max_output_bytes
        if self.max_ratio is not None:
            by_ratio = max(int(self.max_ratio * stored_bytes), self.ratio_floor_bytes)
            allowed = by_ratio if allowed is None else min(allowed, by_ratio)
        return allowed


class _OutputMeter:
    """Decoded bytes of one read, checked against :class:`Limits` before each allocation.

    ``names``: for by-name reads, the tensors already counted (reading one again costs nothing more, so a
    long-lived reader serving the same tensors never runs out); ``None`` for an iteration.
    """

    __slots__ = ("limits", "decoded", "names")

    def __init__(self, limits: Limits, *, by_name: bool = False) -> None:
        self.limits = limits
        self.decoded = 0
        self.names: set[str] | None = set() if by_name else None

    def charge(self, nbytes: int, stored: int, *, known_size: bool, offset: int, record: str, tensor: str) -> None:
        """Count ``nbytes`` more decoded bytes; LimitExceededError (nothing counted) if a limit is passed.

        ``stored``: the file's size (``known_size``) or, on a stream, the bytes read so far.
        """
        if self.names is not None and tensor in self.names:
            return  # read again by name: counted once
        lim = self.limits
        total = self.decoded + nbytes
        if lim.max_output_bytes is not None and total > lim.max_output_bytes:
            raise LimitExceededError(
                f"decoding this would bring the read's output to {total} bytes, over the reader's total "
                f"output limit of {lim.max_output_bytes} bytes (raise Limits.max_output_bytes, "
                "rdc --max-output, if the file is trusted)",
                offset=offset, record=record, tensor=tensor)
        if lim.max_ratio is not None:
            allowed = max(int(lim.max_ratio * stored), lim.ratio_floor_bytes)
            if total > allowed:
                what = "file" if known_size else "stream read so far"
                raise LimitExceededError(
                    f"decoding this would bring the read's output to {total} bytes from a {what} of {stored} "
                    f"bytes, over the reader's compression-ratio limit ({lim.max_ratio:g}x, at least "
                    f"{lim.ratio_floor_bytes} bytes: {allowed}); a decompression bomb? (raise Limits.max_ratio, "
                    "rdc --max-ratio, if the file is trusted)",
                    offset=offset, record=record, tensor=tensor)
        self.decoded = total
        if self.names is not None:
            self.names.add(tensor)


@dataclass(frozen=True)
class Truncation:
    """What a partial read of a truncated layered file (``open(..., partial=True)``) left out."""

    #: Byte offset (from the start of the file) where the file ends or its first incomplete record starts.
    offset: int
    #: Complete LAYER records that were decoded, and their bytes (framing included).
    layers: int
    layer_bytes: int

    def __str__(self) -> str:
        return (f"the file is truncated at byte {self.offset}: decoded from its first {self.layers} complete "
                f"layer record(s) ({self.layer_bytes} bytes of refinement); later layers are missing, so the "
                "progressive tensors are coarser (sparser) than in the whole file")


@dataclass(frozen=True)
class TensorInfo:
    """What the file says about a tensor, without decoding it."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    codec: str
    codec_config: dict
    structural: bool
    #: bytes of its records (for a layered tensor: plus the data of its pieces in the layer records)
    stored_bytes: int
    alias_of: str | None = None

    @property
    def nbytes(self) -> int:
        """Decoded size in bytes."""
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


class RdcReader:
    """An open .rdc file or stream. Create with :func:`rdformat.open`.

    Iterating yields ``(name, array)`` in file order, holding at most one chunk and one decoded
    tensor (works on pipes and sockets). On a seekable file, :meth:`get_tensor` reads one tensor
    through the index without touching the others; it is safe to call from several threads.
    """

    def __init__(self, source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO, *,
                 limits: Limits | None = None, budget: int | None = None, partial: bool = False) -> None:
        self.limits = limits or Limits()
        #: Iteration of a truncated layered file decodes what its complete layers describe (else: error).
        self.partial = bool(partial)
        #: After iterating a truncated file with ``partial=True``: what was cut (else None).
        self.truncation: Truncation | None = None
        #: Layered files under a budget: LAYER records that end after this absolute offset are not read.
        self._layer_limit: int | None = None
        self._layers_entry: C.IndexEntry | None = None
        self._index_list: list[tuple[int, str, int, int]] | None = None
        self._index_at: int | None = None
        self._ordinals: dict[str, int] = {}
        self._layer_dir: dict[int, list] | None = None
        #: With a byte budget: the share of every progressive chunk's bytes that is decoded.
        self._prefix_fraction: float | None = None
        self._owns = False
        self._memory: memoryview | None = None
        self._mmap: mmap.mmap | None = None
        if isinstance(source, (str, os.PathLike)):
            self._stream: BinaryIO = builtins.open(source, "rb")
            self._owns = True
            self.name = os.fspath(source)
            self._memory = self._map(self._stream)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            # bytes are immutable: read in place (chunk payloads are views of them); other buffers are
            # copied once, since the caller could change them while they are read
            data = source if isinstance(source, bytes) else bytes(source)
            self._stream = io.BytesIO(data)
            self._memory = memoryview(data)
            self.name = "<bytes>"
        elif hasattr(source, "read"):
            self._stream = source
            self.name = getattr(source, "name", "<stream>")
        else:
            raise TypeError(f"cannot read .rdc from {type(source).__name__}; give a path, bytes or a binary stream")
        self._lock = threading.RLock()
        self._index: dict[str, C.IndexEntry] | None = None
        self._order: list[str] | None = None
        self._aliases: dict[str, str] | None = None
        self._iterated = False
        self._stream_order: list[str] = []  # names in file order, as the last iteration met them
        self._salvage: tuple[list, int] | None = None  # after a partial read of a truncated file
        self._pending: C.RecordHead | None = None
        self._leading: list[tuple[int, int, int]] = []  # (kind, offset, length) of META/GRAPH records
        self._metadata: dict = {}
        # The metadata's JSON text (checked: CRC, size, zlib) until first use: parsing a large text costs
        # far more time and memory than its bytes, and reading one tensor by name never needs it.
        self._meta_text: tuple[bytes, str, int] | None = None  # (text, what, offset)
        # by-name reads of this reader form one read for the output limits (each tensor counted once)
        self._named_meter = _OutputMeter(self.limits, by_name=True)
        self.graph: bytes | None = None
        self.graph_format: str | None = None
        try:
            self._src = C.Source(self._stream, memory=self._memory)
            self._start = self._src.pos
            self.version = C.read_file_header(self._src)
            self._read_leading_records()
            if budget is not None:
                self._prefix_fraction = self._plan_budget(int(budget))
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ budgeted reads
    @property
    def prefix_fraction(self) -> float | None:
        """Under a read budget, the share of every progressive chunk's bytes that is decoded (else None)."""
        return self._prefix_fraction

    def _plan_budget(self, budget: int) -> float:
        """Share of every progressive chunk's bytes that a total read budget of ``budget`` bytes allows.

        Planned from the index: tensors of non-progressive codecs and the container's own records are
        read in full and come off the budget first; the rest is shared by the progressive streams in
        proportion to their sizes. The file position is restored for iteration.
        """
        if budget < 0:
            raise InvalidInputError(f"a read budget must be >= 0 bytes, not {budget}")
        if not self._src.seekable:
            raise UnsupportedFeatureError("a read budget needs a seekable file (it is planned from the index)")
        here = self._src.pos
        try:
            index = self._load_index()
            layers = self._layers_entry
            if layers is not None:
                # Layered file (1.3): the budget is a prefix of the file. The tensor records before the
                # layers are always read (as in 1.1 files, what is not progressive is charged first);
                # the layers that end within the budget are read, no other.
                base = layers.offset - self._start
                self._layer_limit = self._start + max(budget, base)
                return float(min(1.0, max(0, budget - base) / layers.length)) if layers.length else 1.0
            progressive = 0
            for entry in index.values():
                if entry.kind != C.ENTRY_TENSOR:
                    continue
                header, _head, _inline = self._tensor_header(entry)
                if get_codec_class(header.codec_id).progressive:
                    progressive += entry.length
            size = self._src.size - self._start
        finally:
            self._src.seek(here)
        if progressive == 0:
            return 1.0
        return float(min(1.0, max(0.0, (budget - (size - progressive)) / progressive)))

    # ------------------------------------------------------------------ leading records
    @property
    def metadata(self) -> dict:
        """The file's metadata (a JSON object; ``{}`` when the file has none), parsed on first use.

        Raises CorruptDataError when the stored text is not a JSON object (reading every tensor, by
        iteration or :func:`load`, checks it too).
        """
        with self._lock:
            if self._meta_text is not None:
                text, what, offset = self._meta_text
                self._metadata = C.parse_json_object(text, what, offset)
                self._meta_text = None
            return self._metadata

    def _read_leading_records(self, *, again: bool = False) -> None:
        """Read META/GRAPH records at the start; keep the first other record head for iteration.

        ``again`` (a second iteration of a seekable file): the payloads were checked at open; skip them.
        """
        self._leading = []
        while True:
            head = C.read_record_head(self._src)
            if head.rtype in C.LEADING_KINDS:
                kind = C.LEADING_KINDS[head.rtype]
                if any(k >= kind for k, _, _ in self._leading):  # at most one of each, META first
                    raise CorruptDataError(f"unexpected {head.name} record (at most one META, then one GRAPH, "
                                           "plain or compressed)",
                                           offset=head.offset, record=head.name)
                if again:
                    self._src.skip(head.length + C.RECORD_TRAILER_SIZE, what=f"a {head.name} record")
                else:
                    self._consume_leading(head)
                self._leading.append((kind, head.offset - self._start, head.end - head.offset))
            elif head.rtype in C.RECORD_NAMES:
                self._pending = head
                return
            else:
                C.skip_record(self._src, head)

    def _consume_leading(self, head: C.RecordHead) -> None:
        """Read a META or GRAPH record, plain or compressed; the reader limits cap the decompressed size too."""
        is_meta = C.LEADING_KINDS[head.rtype] == C.ENTRY_META
        cap = self.limits.max_meta_bytes if is_meta else self.limits.max_graph_bytes
        if head.length > cap:
            raise LimitExceededError(f"{head.name} record is {head.length} bytes, over the reader limit {cap}",
                                     offset=head.offset, record=head.name)
        payload = C.read_payload(self._src, head)
        base = head.offset + C.RECORD_HEADER_SIZE
        if head.rtype == C.REC_META:
            self._meta_text = (payload, "metadata", base)
        elif head.rtype == C.REC_ZMETA:
            self._meta_text = (C.parse_zmeta(payload, base, cap), "metadata (decompressed)", base + 8)
        elif head.rtype == C.REC_DMETA:
            self._meta_text = (C.parse_dmeta(payload, base, cap), "metadata (decompressed)", base)
        elif head.rtype == C.REC_GRAPH:
            self.graph_format, self.graph = C.parse_graph(payload, base)
        elif head.rtype == C.REC_XGRAPH:
            self.graph_format, self.graph = C.parse_xgraph(payload, base, cap)
        else:
            self.graph_format, self.graph = C.parse_zgraph(payload, base, cap)

    # ------------------------------------------------------------------ streaming
    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(name, array)`` pairs in file order (aliases after their target)."""
        with self._lock:
            if self._iterated:
                if not self._src.seekable:
                    raise RdcError("a non-seekable stream can be iterated only once")
                self._src.seek(self._start)
                C.read_file_header(self._src)
                self._read_leading_records(again=True)
            self._iterated = True
            head, self._pending = self._pending, None
        self.metadata  # noqa: B018 - a whole read checks the metadata too (parsed lazily otherwise)
        meter = _OutputMeter(self.limits)
        recent: weakref.WeakValueDictionary[str, np.ndarray] = weakref.WeakValueDictionary()
        # What the index must list (kind, name, offset, stored length), and the names in use.
        entries = [(kind, "", offset, length) for kind, offset, length in self._leading]
        names: set[str] = set()
        tensors: set[str] = set()
        self._stream_order = order = []
        index_at: int | None = None
        queue: list[_PendingTensor] = []  # tensors read and planned, decoded together (ans.decode_many)
        queued = queued_chunks = 0
        # Layered tensors (1.3) by ordinal: decoded once their LAYER records are read (at the index).
        layered: dict[int, _PendingTensor] = {}
        deferred: list[tuple[str, str]] = []  # aliases of layered tensors, yielded after them
        ordinal = 0
        layer_first: int | None = None  # relative offset of the first LAYER record
        layer_end = 0
        layer_count = 0
        finished = False

        def stop(cut: int | None) -> list[tuple[str, np.ndarray]]:
            """End the iteration early: a truncated file read partially (``cut``: where its last whole
            record ends) or a budget reached; what is planned so far is decoded."""
            if cut is not None:
                self.truncation = Truncation(cut - self._start, layer_count, layer_end - (layer_first or 0))
                self._salvage = self._salvage_plan(entries, layer_first, layer_end, index_at, cut)
            if index_at is not None:  # cut after the index: everything was yielded there
                return []
            return self._finish_tensors(queue) + self._finish_layered(layered, deferred, False)
        # Where this iteration continues: by-name reads from other threads may move the file.
        pos = head.offset + C.RECORD_HEADER_SIZE if head is not None else self._src.pos
        first = head.offset if head is not None else pos
        if (self._memory is not None and len(self._memory) - first >= CRC_AHEAD_MIN_BYTES
                and ans.decode_threads(len(self._memory)) > 1):
            # the records' CRCs, computed on the core that waits while this thread parses and plans
            self._src.crc_ahead = crc_ahead.start(self._memory, first)
        while True:
            with self._lock:
                if self._src.seekable and self._src.pos != pos:
                    self._src.seek(pos)  # by-name reads in between moved the file position
                if head is None:
                    try:
                        head = C.read_record_head(self._src)
                    except TruncatedError:
                        if not (self.partial and (layer_first is not None or index_at is not None
                                                  or self._layer_head_at(pos))):
                            raise
                        head = None  # a truncated layered file, read partially: stop at the last whole layer
                ready: list[tuple[str, np.ndarray]] = []
                if head is None or (self._layer_limit is not None and head.rtype == C.REC_LAYER
                                    and head.end > self._layer_limit):
                    if head is not None:  # a budget stops before this layer: what was read must agree with the index
                        self._check_budget_prefix(entries, layer_first)
                    ready = stop(pos if head is None else None)
                    finished = True
                    head = None
                else:
                    if index_at is not None and head.rtype != C.REC_END:
                        raise CorruptDataError(f"{head.name} record after the index record (only the end record "
                                               "may follow it)", offset=head.offset, record=head.name)
                    rel = head.offset - self._start
                    if queue and (head.rtype not in (C.REC_TENSOR, C.REC_SMALL, *C.PACK_TYPES)
                                  or queued >= DECODE_BATCH_BYTES or queued_chunks >= DECODE_BATCH_CHUNKS):
                        # decode what is queued (aliases need their targets; the batch is big enough)
                        ready = self._finish_tensors(queue)
                        queue, queued, queued_chunks = [], 0, 0
                        pos = self._src.pos  # just after this record's head, which stays pending
                if ready or finished:
                    pass
                elif layer_first is not None and head.rtype in (C.REC_TENSOR, C.REC_SMALL, C.REC_ALIAS, *C.PACK_TYPES):
                    raise CorruptDataError(f"{head.name} record after a layer record (layers follow every tensor)",
                                           offset=head.offset, record=head.name)
                elif head.rtype in (C.REC_TENSOR, C.REC_SMALL):
                    payload = C.read_payload(self._src, head)
                    header, inline = _parse_tensor_record(head, payload)
                    if header.name in names:
                        raise CorruptDataError(f"duplicate name {header.name!r}", offset=head.offset,
                                               record=head.name, tensor=header.name)
                    pending = self._plan_tensor(header, head, inline, meter)
                    if pending.layered is not None:
                        layered[ordinal] = pending
                    else:
                        queue.append(pending)
                        queued += pending.nbytes
                        queued_chunks += len(pending.chunks)
                    ordinal += 1
                    order.append(header.name)
                    names.add(header.name)
                    tensors.add(header.name)
                    entries.append((C.ENTRY_TENSOR, header.name, rel, self._src.pos - head.offset))
                    head = None
                    pos = self._src.pos
                    continue
                elif head.rtype in C.PACK_TYPES:
                    payload = C.read_payload(self._src, head)
                    # planned now, decoded with the tensors around it: one batch keeps both threads busy
                    pack = self._plan_pack(head, payload, meter)
                    for m in pack.members:
                        if m.name in names:
                            raise CorruptDataError(f"duplicate name {m.name!r}", offset=head.offset,
                                                   record=head.name, tensor=m.name)
                        names.add(m.name)
                        tensors.add(m.name)
                        order.append(m.name)
                    queue.append(pack)
                    queued += sum(g.nbytes for g in pack.groups.values())
                    queued_chunks += len(pack.groups)
                    entries.append((C.ENTRY_PACK, "", rel, head.end - head.offset))
                    head = None
                    pos = self._src.pos
                    continue
                elif head.rtype == C.REC_ALIAS:
                    payload = C.read_payload(self._src, head)
                    alias, target = C.parse_alias(payload, head.offset + C.RECORD_HEADER_SIZE)
                    if alias in names:
                        raise CorruptDataError(f"duplicate name {alias!r}", offset=head.offset, record="alias",
                                               tensor=alias)
                    if target not in tensors:
                        raise CorruptDataError(f"alias {alias!r} refers to {target!r}, which is not a tensor "
                                               "written before it", offset=head.offset, record="alias", tensor=alias)
                    order.append(alias)
                    if any(p.header.name == target for p in layered.values()):
                        deferred.append((alias, target))  # its target is decoded after the layers
                        names.add(alias)
                        entries.append((C.ENTRY_ALIAS, alias, rel, head.end - head.offset))
                        head = None
                        pos = self._src.pos
                        continue
                    array = recent.get(target)
                    if array is None:
                        if not self._src.seekable:
                            raise RdcError(
                                f"alias {alias!r} refers to {target!r}, which was already released; keep the "
                                "arrays you iterate or read from a seekable file",
                                offset=head.offset, record="alias",
                            )
                        here = self._src.pos
                        array = self._get_by_name(target, follow_alias=False)
                        self._src.seek(here)
                    names.add(alias)
                    entries.append((C.ENTRY_ALIAS, alias, rel, head.end - head.offset))
                elif head.rtype == C.REC_LAYER:
                    try:
                        payload = C.read_payload(self._src, head)
                    except TruncatedError:  # on a stream of unknown length the cut shows inside the record
                        if not self.partial:
                            raise
                        ready, finished, head = stop(head.offset), True, None
                    else:
                        self._add_layer(head, payload, layered)
                        if layer_first is None:
                            layer_first = rel
                        layer_end = head.end - self._start
                        layer_count += 1
                        head = None
                        pos = self._src.pos
                        continue
                elif head.rtype == C.REC_INDEX:
                    if layer_first is not None:
                        entries.append((C.ENTRY_LAYERS, "", layer_first, layer_end - layer_first))
                    if self._index_list is not None and self._index_at == rel:
                        # already read and checked (a budget was planned from it): not read a second time
                        listed = self._index_list
                        finished = True  # and its end record was checked then too
                    else:
                        payload = C.read_payload(self._src, head)
                        listed = [(e.kind, e.name, e.offset, e.length)
                                  for e in C.parse_index(payload, head.offset + C.RECORD_HEADER_SIZE, None)]
                    if listed != entries:
                        raise CorruptDataError("the index does not list the records of the file",
                                               offset=head.offset, record="index")
                    index_at = rel
                    head = None
                    pos = self._src.pos
                    ready = self._finish_layered(layered, deferred)
                    if not ready and not finished:
                        continue
                elif head.rtype == C.REC_TAIL:
                    # since 1.6: the compact index and the end of the file in one record
                    if layer_first is not None:
                        entries.append((C.ENTRY_LAYERS, "", layer_first, layer_end - layer_first))
                    payload = C.read_payload(self._src, head)
                    tail_entries, length = C.parse_tail(payload, head.offset + C.RECORD_HEADER_SIZE, None)
                    # a TAIL without entries is not indexed: its entries are the records just read
                    if tail_entries and [(e.kind, e.name, e.offset, e.length) for e in tail_entries] != entries:
                        raise CorruptDataError("the index does not list the records of the file",
                                               offset=head.offset, record="tail")
                    if length != head.end - self._start:
                        raise CorruptDataError("tail record states a different file length", offset=head.offset,
                                               record="tail")
                    rem = self._src.remaining()
                    if rem:
                        raise CorruptDataError(f"{rem} bytes after the tail record", offset=self._src.pos,
                                               record="tail")
                    index_at = rel
                    ready = self._finish_layered(layered, deferred)
                    finished = True
                    head = None
                elif head.rtype == C.REC_END:
                    if index_at is None:
                        raise CorruptDataError("end record without an index record", offset=head.offset, record="end")
                    payload = C.read_payload(self._src, head)
                    index_offset, length = C.parse_end(payload, head.offset + C.RECORD_HEADER_SIZE)
                    if length != head.end - self._start:
                        raise CorruptDataError("end record states a different file length", offset=head.offset, record="end")
                    if index_offset != index_at:
                        raise CorruptDataError("end record does not point to the index record", offset=head.offset,
                                               record="end")
                    rem = self._src.remaining()
                    if rem:
                        raise CorruptDataError(f"{rem} bytes after the end record", offset=self._src.pos, record="end")
                    return
                elif head.rtype in C.LEADING_KINDS or head.rtype == C.REC_CHUNK:
                    raise CorruptDataError(f"unexpected {head.name} record", offset=head.offset, record=head.name)
                else:
                    C.skip_record(self._src, head)
                    head = None
                    pos = self._src.pos
                    continue
                if not ready and not finished:
                    head = None
                    pos = self._src.pos
            if ready:
                for tname, tarray in ready:
                    recent[tname] = tarray
                    yield tname, tarray
            elif not finished:
                yield alias, array
            if finished:
                return

    # ------------------------------------------------------------------ PACK records (format 1.3)
    def _decode_pack(self, head: C.RecordHead, payload: bytes, meter: "_OutputMeter",
                     only: str | None = None) -> list[tuple[str, np.ndarray]]:
        """The tensors of a PACK record in order (``only``: just that member, decoding only its group)."""
        return self._finish_tensors([self._plan_pack(head, payload, meter, only)])

    def _plan_pack(self, head: C.RecordHead, payload: bytes, meter: "_OutputMeter",
                   only: str | None = None) -> "_PlannedPack":
        """Parse a PACK record and plan the groups needed (``only``: just that member's)."""
        members, groups = C.parse_pack_record(head.rtype, payload, head.offset + C.RECORD_HEADER_SIZE)
        # the groups needed, planned in order, then decoded together (one batch of ANS blocks: a pack of
        # small tensors would otherwise pay the per-batch cost once per group)
        planned: dict[int, _PendingTensor] = {}
        for m in members:
            if (only is None or m.name == only) and m.group not in planned:
                planned[m.group] = self._plan_group(head, members, groups[m.group], meter)
        return _PlannedPack([m for m in members if only is None or m.name == only], planned)

    def _group_header(self, head: C.RecordHead, members: list, group: "C.PackGroup") -> C.TensorHeader:
        """A group of a PACK record as a one-chunk tensor of its members' concatenated elements."""
        first = members[group.members[0]]
        itemsize = 1
        try:
            itemsize = by_code(group.dtype_code).itemsize
            if get_codec_class(group.codec_id).progressive:
                raise CorruptDataError(f"progressive codec {group.codec_id!r} in a pack record")
        except RdcError as exc:
            raise exc.with_context(offset=group.offset, record="pack", tensor=first.name)
        for i in group.members:
            span = itemsize  # numpy must be able to represent each member's shape
            for d in members[i].shape:
                span *= d or 1
            if span > _MAX_INTP:
                raise LimitExceededError(f"shape {members[i].shape} is too large to represent",
                                         offset=head.offset, record="pack", tensor=members[i].name)
        flags = C.TENSOR_STRUCTURAL if any(members[i].flags for i in group.members) else 0
        return C.TensorHeader(first.name, group.dtype_code, (group.numel,), flags, max(group.numel, 1),
                              1 if group.numel else 0, group.codec_id, group.codec_config)

    def _plan_group(self, head: C.RecordHead, members: list, group: "C.PackGroup",
                    meter: "_OutputMeter") -> "_PendingTensor":
        header = self._group_header(head, members, group)
        data = group.data if isinstance(group.data, memoryview) else memoryview(group.data)
        try:
            info = by_code(header.dtype_code)
            codec = codec_from_config(header.codec_id, header.codec_config)
            if codec.transforms_tensor:  # a group's elements span several tensors: no per-tensor axes
                raise CorruptDataError(f"{header.codec_id} configuration with axis scales in a pack group")
            need = codec.min_data_bytes(group.numel, info)
        except RdcError as exc:
            raise exc.with_context(offset=group.offset, record="pack", tensor=header.name)
        except (TypeError, ValueError) as exc:
            raise CorruptDataError(f"invalid {header.codec_id} configuration: {exc}", offset=group.offset,
                                   record="pack", tensor=header.name) from None
        if group.numel and len(data) < need:  # refused before the output is allocated
            raise CorruptDataError(f"pack group of {group.numel} elements holds {len(data)} bytes of "
                                   f"{header.codec_id} data, fewer than the {need} it needs",
                                   offset=group.offset, record="pack", tensor=header.name)
        return self._plan_tensor(header, head, data, meter, codec)

    def _read_pack(self, entry: C.IndexEntry) -> tuple[C.RecordHead, bytes]:
        """The PACK record an index entry points to (its head and payload)."""
        self._src.seek(entry.offset)
        head = C.read_record_head(self._src, tensor=entry.name or None)
        if head.rtype not in C.PACK_TYPES or head.end - head.offset != entry.length:
            raise CorruptDataError(f"index entry {entry.name!r} does not point to a pack record of its length",
                                   offset=entry.offset, record=head.name, tensor=entry.name or None)
        return head, C.read_payload(self._src, head, tensor=entry.name or None)

    def _read_chunks(self, header: C.TensorHeader, head: C.RecordHead, inline: memoryview | None,
                     meter: "_OutputMeter") -> np.ndarray:
        return self._finish_tensors([self._plan_tensor(header, head, inline, meter)])[0][1]

    def _plan_tensor(self, header: C.TensorHeader, head: C.RecordHead,
                     inline: memoryview | None, meter: "_OutputMeter",
                     codec: Codec | None = None) -> "_PendingTensor":
        """Read a tensor's chunk records and plan their decoding (ANS blocks not decoded yet).

        ``inline``: the data of the one chunk of a SMALL record (no CHUNK records follow it).
        ``meter``: the read's output so far; the tensor's decoded bytes are charged to it before its
        output is allocated (on a stream, chunk by chunk as they arrive).
        ``codec``: the header's codec when the caller already built it (a pack group's).
        """
        name = header.name
        try:
            info = by_code(header.dtype_code)
        except RdcError as exc:
            raise exc.with_context(offset=head.offset, record="tensor", tensor=name)
        numel = header.numel
        nbytes = numel * info.itemsize
        if nbytes > self.limits.max_tensor_bytes:
            raise LimitExceededError(
                f"tensor declares {nbytes} bytes, over the reader limit of {self.limits.max_tensor_bytes} "
                "(raise Limits.max_tensor_bytes if the file is trusted)",
                offset=head.offset, record="tensor", tensor=name,
            )
        if header.chunk_elements * info.itemsize > C.MAX_CHUNK_DECODED_BYTES and numel:
            raise LimitExceededError(
                f"chunks of {header.chunk_elements} elements exceed the format's decoded chunk limit",
                offset=head.offset, record="tensor", tensor=name,
            )
        span = info.itemsize  # numpy must be able to represent the shape, even with a 0 dimension
        for d in header.shape:
            span *= d or 1
        if span > _MAX_INTP:
            raise LimitExceededError(f"shape {header.shape} is too large to represent",
                                     offset=head.offset, record="tensor", tensor=name)
        try:
            if codec is None:
                codec = codec_from_config(header.codec_id, header.codec_config)
        except RdcError as exc:
            raise exc.with_context(offset=head.offset, record="tensor", tensor=name)
        except (TypeError, ValueError) as exc:
            raise CorruptDataError(f"invalid {header.codec_id} configuration: {exc}",
                                   offset=head.offset, record="tensor", tensor=name) from None
        try:
            codec.check_shape(header.shape)  # e.g. axis scales (spec 5.6) must match the tensor's axes
        except RdcError as exc:
            raise exc.with_context(offset=head.offset, record="tensor", tensor=name)
        rem = self._src.remaining()
        known = rem is not None
        # what the output limits measure against: the whole file, or on a stream the bytes read so far
        stored = (self._src.size if known else self._src.pos) - self._start
        layered = bool(header.flags & C.TENSOR_LAYERED)
        if layered and not codec.progressive:
            raise CorruptDataError(f"tensor is marked layered but its codec {header.codec_id!r} is not progressive",
                                   offset=head.offset, record=head.name, tensor=name)
        if inline is not None:
            meter.charge(nbytes, stored, known_size=known, offset=head.offset, record=head.name, tensor=name)
            dtype = info.numpy.newbyteorder("<")
            if layered:  # decoded after its layers: the output is allocated then
                pend = _PendingTensor(header, head, info, np.empty(0, dtype))
                pend.layered, pend.codec = ([bytearray(inline)] if numel else []), codec
                return pend
            pend = _PendingTensor(header, head, info, self._allocate(numel, dtype, nbytes, head, name))
            pend.codec = codec
            if numel:
                with _chunk_errors(0, head, name):
                    plan = codec.plan_chunk(inline, numel, info, max_bytes=self._chunk_budget(codec, inline))
                pend.chunks.append((0, head, 0, numel, plan))
                pend.nbytes += nbytes
            return pend
        if rem is not None and header.chunk_count:
            # Every chunk record takes 29 bytes plus what its codec needs at least: refuse a file that
            # cannot hold the declared chunks before allocating the output (decompression bombs).
            need = header.chunk_count * (C.RECORD_OVERHEAD + 9)
            last = numel - (header.chunk_count - 1) * header.chunk_elements
            need += ((header.chunk_count - 1) * codec.min_data_bytes(header.chunk_elements, info)
                     + codec.min_data_bytes(last, info))
            if need > rem:
                raise TruncatedError(
                    f"tensor declares {header.chunk_count} {header.codec_id} chunks, which need at least {need} "
                    f"bytes; {rem} remain",
                    offset=head.offset, record="tensor", tensor=name,
                )
        dtype = info.numpy.newbyteorder("<")
        if known:
            meter.charge(nbytes, stored, known_size=True, offset=head.offset, record=head.name, tensor=name)
            grow = False
        else:
            # On a stream of unknown length a large output, or one the bytes read so far do not justify
            # yet, grows as its chunks arrive and are charged (memory follows data).
            allowance = self.limits.output_allowance(stored)
            grow = nbytes > STREAM_PREALLOC_BYTES or (allowance is not None and meter.decoded + nbytes > allowance)
        if layered:  # decoded after its layers: the output is allocated then
            out = np.empty(0, dtype)
        else:
            out = self._allocate(0 if grow else numel, dtype, nbytes, head, name)
        pend = _PendingTensor(header, head, info, out)
        pend.codec = codec
        if layered:
            pend.layered, pend.codec = [], codec
        for index in range(header.chunk_count):
            chead = C.read_record_head(self._src, tensor=name)
            if chead.rtype != C.REC_CHUNK:
                raise CorruptDataError(
                    f"expected chunk {index} of {header.chunk_count}, found a {chead.name} record",
                    offset=chead.offset, record=chead.name, tensor=name,
                )
            payload = C.read_payload(self._src, chead, tensor=name, view=True)
            base = chead.offset + C.RECORD_HEADER_SIZE
            data = C.parse_chunk(payload, base, index, name)
            start = index * header.chunk_elements
            count = min(header.chunk_elements, numel - start)
            if not known:
                meter.charge(count * info.itemsize, self._src.pos - self._start, known_size=False,
                             offset=chead.offset, record="chunk", tensor=name)
            if layered:
                pend.layered.append(bytearray(data))
                continue
            with _chunk_errors(index, chead, name):
                plan = codec.plan_chunk(data, count, info, max_bytes=self._chunk_budget(codec, data))
            pend.chunks.append((index, chead, start, count, plan))
            pend.nbytes += count * info.itemsize
            if pend.nbytes >= DECODE_BATCH_BYTES or len(pend.chunks) >= DECODE_BATCH_CHUNKS:
                # a big tensor, or one of many chunks: decode what is planned so far
                self._decode_pending([pend])
        return pend

    def _chunk_budget(self, codec, data: memoryview) -> int | None:
        """The bytes of a chunk to decode: a prefix for progressive codecs under a budget, else all."""
        if self._prefix_fraction is None or not codec.progressive or self._layer_limit is not None:
            return None
        return int(math.floor(self._prefix_fraction * len(data)))

    # ------------------------------------------------------------------ layered tensors (1.3)
    def _add_layer(self, head: C.RecordHead, payload: bytes, layered: dict[int, "_PendingTensor"]) -> None:
        """Append a LAYER record's pieces to the chunks of their (layered) tensors."""
        for piece in parse_layer(payload, head.offset + C.RECORD_HEADER_SIZE):
            pend = layered.get(piece.tensor)
            data = memoryview(payload)[piece.offset - head.offset - C.RECORD_HEADER_SIZE:][:piece.length]
            self._add_piece(pend, piece, head, data)

    def _add_piece(self, pend: "_PendingTensor | None", piece, head: C.RecordHead, data) -> None:
        if pend is None:
            raise CorruptDataError(f"layer piece for tensor #{piece.tensor}, which is not a layered tensor of "
                                   "this file", offset=piece.offset, record="layer")
        name = pend.header.name
        if piece.chunk >= len(pend.layered):
            raise CorruptDataError(f"layer piece for chunk {piece.chunk}; the tensor has {len(pend.layered)}",
                                   offset=piece.offset, record="layer", tensor=name)
        chunk = pend.layered[piece.chunk]
        if len(chunk) + len(data) > C.MAX_CHUNK_PAYLOAD_BYTES:
            raise LimitExceededError(f"chunk {piece.chunk}'s data grows over {C.MAX_CHUNK_PAYLOAD_BYTES} bytes",
                                     offset=piece.offset, record="layer", tensor=name)
        chunk += data
        pend.pieces += 1

    def _finish_layered(self, layered: dict[int, "_PendingTensor"], deferred: list[tuple[str, str]],
                        complete: bool = True) -> list[tuple[str, np.ndarray]]:
        """Decode the layered tensors from their chunks' data; then their aliases.

        ``complete``: all layers were read, so every layered tensor must have had a piece (a layered
        tensor always has one: a file whose index or layers lost them is corrupt)."""
        pends = list(layered.values())
        layered.clear()
        for pend in pends:
            if complete and not pend.pieces:
                raise CorruptDataError("layered tensor without any layer piece (are the file's layer records or its "
                                       "index's layers entry missing?)", offset=pend.head.offset,
                                       record=pend.head.name, tensor=pend.header.name)
            self._plan_layered(pend)
        done = self._finish_tensors(pends)
        arrays = dict(done)
        done += [(alias, arrays[target]) for alias, target in deferred]
        deferred.clear()
        return done

    def _plan_layered(self, pend: "_PendingTensor") -> None:
        """Allocate a layered tensor's output and plan its chunks (data: chunk record + layer pieces)."""
        header, head, info = pend.header, pend.head, pend.info
        numel = header.numel
        pend.out = self._allocate(numel, pend.out.dtype, numel * info.itemsize, head, header.name)
        for index, data in enumerate(pend.layered):
            start = index * header.chunk_elements
            count = min(header.chunk_elements, numel - start)
            with _chunk_errors(index, head, header.name):
                plan = pend.codec.plan_chunk(memoryview(data), count, info, max_bytes=None)
            pend.chunks.append((index, head, start, count, plan))
            pend.nbytes += count * info.itemsize
        pend.layered = None

    def _check_budget_prefix(self, entries: list, layer_first: int | None) -> None:
        """A budgeted read stopped in the layers: the records read must be what the index lists."""
        expected = self._index_list or []
        listed = [e for e in expected if e[0] == C.ENTRY_LAYERS]
        if entries + listed != expected or (layer_first is not None and listed[0][2] != layer_first):
            raise CorruptDataError("the index does not list the records of the file", record="index")

    def _salvage_plan(self, entries: list, layer_first: int | None, layer_end: int, index_at: int | None,
                      cut: int) -> tuple[list, int]:
        """What :func:`salvage` keeps of a truncated layered file: (index entries, relative end)."""
        if index_at is not None:  # cut after its index: the index stands
            return list(entries), index_at
        kept = list(entries)
        if layer_first is not None:
            kept.append((C.ENTRY_LAYERS, "", layer_first, layer_end - layer_first))
            return kept, layer_end
        return kept, cut - self._start

    def _layer_head_at(self, pos: int) -> bool:
        """Whether a valid LAYER record header starts at ``pos`` (a truncated file cut inside its layers)."""
        if not self._src.seekable:
            return False
        self._src.seek(pos)
        raw = self._src.read_upto(C.RECORD_HEADER_SIZE)
        return (len(raw) == C.RECORD_HEADER_SIZE and C._REC_HEAD.unpack_from(raw)[0] == C.REC_LAYER
                and C._U32.unpack_from(raw, 12)[0] == C.crc32(raw[:12]))

    def _layer_directory(self) -> dict[int, list]:
        """Random access: the pieces of every layered tensor (LAYER records verified once, then cached)."""
        if self._layer_dir is not None:
            return self._layer_dir
        directory: dict[int, list] = {}
        entry = self._layers_entry
        if entry is not None:
            end = entry.offset + entry.length
            self._src.seek(entry.offset)
            first = True
            while self._src.pos < end:
                head = C.read_record_head(self._src)
                if head.end > end or (first and head.rtype != C.REC_LAYER):
                    raise CorruptDataError("the index's layer region does not match the layer records",
                                           offset=head.offset, record=head.name)
                first = False
                if head.rtype != C.REC_LAYER:
                    if head.rtype in C.RECORD_NAMES:
                        raise CorruptDataError(f"{head.name} record among the layer records", offset=head.offset,
                                               record=head.name)
                    C.skip_record(self._src, head)
                    continue
                if self._layer_limit is not None and head.end > self._layer_limit:
                    break  # a budget: later layers are not read
                payload = C.read_payload(self._src, head)
                for piece in parse_layer(payload, head.offset + C.RECORD_HEADER_SIZE):
                    if piece.tensor >= len(self._ordinals):
                        raise CorruptDataError(f"layer piece for tensor #{piece.tensor}; the file has "
                                               f"{len(self._ordinals)} tensors", offset=piece.offset, record="layer")
                    directory.setdefault(piece.tensor, []).append((piece, head))
            # the rules of the streaming path: pieces only for layered tensors, and chunks that exist
            by_ordinal = {i: n for n, i in self._ordinals.items()}
            for ordinal, pieces in directory.items():
                header = self._tensor_header(self._index[by_ordinal[ordinal]])[0]
                for piece, _head in pieces:
                    if not header.flags & C.TENSOR_LAYERED:
                        raise CorruptDataError(f"layer piece for tensor #{ordinal}, which is not a layered tensor "
                                               "of this file", offset=piece.offset, record="layer")
                    if piece.chunk >= header.chunk_count:
                        raise CorruptDataError(f"layer piece for chunk {piece.chunk}; the tensor has "
                                               f"{header.chunk_count}", offset=piece.offset, record="layer",
                                               tensor=header.name)
        self._layer_dir = directory
        return directory

    def _read_layered(self, pend: "_PendingTensor", name: str) -> np.ndarray:
        """Random access to a layered tensor: its pieces from the layer records, then decode."""
        for piece, head in self._layer_directory().get(self._ordinals[name], []):
            self._src.seek(piece.offset)
            data = self._src.read_exact(piece.length, what="a layer piece", record="layer", tensor=name)
            self._add_piece(pend, piece, head, data)
        return self._finish_layered({0: pend}, [], self._layer_limit is None)[0][1]

    def _decode_pending(self, pending: list["_PendingTensor"]) -> None:
        """Decode the ANS blocks of the planned chunks of ``pending`` and write the chunks out: on the compiled
        backend each decode thread finishes (dequantizes, interleaves, ...) its chunks right after decoding
        them (the kernels release the GIL); errors still come in order."""
        work = [(pend, chunk) for pend in pending for chunk in pend.chunks]
        for pend in pending:
            self._grow(pend)
        try:
            errors = ans.decode_map([chunk[4].blocks for _p, chunk in work],
                                    lambda i, decoded: _finish_chunk((*work[i], decoded)),
                                    [chunk[3] for _p, chunk in work])
        except RdcError as exc:
            i = getattr(exc, "block_index", None)
            if i is None:
                raise
            for pend, (index, chead, _s, _c, plan) in work:  # the chunk holding block i
                if i < len(plan.blocks):
                    raise exc.with_context(offset=chead.offset, record="chunk", tensor=pend.header.name)
                i -= len(plan.blocks)
            raise
        for error in errors:
            if error is not None:
                raise error
        for pend in pending:
            pend.chunks.clear()
            pend.nbytes = 0

    @staticmethod
    def _grow(pend: "_PendingTensor") -> None:
        """Grow a stream's output (realloc, usually without copying) to hold the planned chunks."""
        out = pend.out
        for index, chead, start, count, _plan in pend.chunks:
            if start + count > out.size:
                try:
                    out.resize(min(pend.header.numel, max(start + count, 2 * out.size)), refcheck=False)
                except (MemoryError, ValueError) as exc:
                    raise LimitExceededError(f"cannot allocate memory for the tensor ({exc})", offset=chead.offset,
                                             record="chunk", tensor=pend.header.name) from None

    def _finish_tensors(self, pending: list) -> list[tuple[str, np.ndarray]]:
        """Decode everything still planned in ``pending`` (tensors and packs, together), then return the
        tensors in order."""
        flat: list[_PendingTensor] = []
        for item in pending:
            flat.extend(item.groups.values() if isinstance(item, _PlannedPack) else [item])
        self._decode_pending(flat)
        out_list = []
        for item in pending:
            if isinstance(item, _PlannedPack):
                arrays = {g: self._tensor_array(pend)[1] for g, pend in item.groups.items()}
                out_list.extend((m.name, arrays[m.group][m.start : m.start + m.numel].reshape(m.shape))
                                for m in item.members)
            else:
                out_list.append(self._tensor_array(item))
        return out_list

    @staticmethod
    def _tensor_array(pend: "_PendingTensor") -> tuple[str, np.ndarray]:
        """A decoded tensor's name and array (checked, finished, in its shape)."""
        header, head, info, out = pend.header, pend.head, pend.info, pend.out
        if info.kind == "bool" and header.numel and out.view(np.uint8).max() > 1:
            raise CorruptDataError("bool tensor holds values other than 0 and 1",
                                   offset=head.offset, record="tensor", tensor=header.name)
        if pend.codec is not None and pend.codec.transforms_tensor:
            out = pend.codec.finish_tensor(out, header.shape)
        return header.name, out.reshape(header.shape)

    def _allocate(self, numel: int, dtype: np.dtype, nbytes: int, head: C.RecordHead, name: str) -> np.ndarray:
        """The output array; an allocation the machine refuses is a LimitExceededError, not a crash."""
        try:
            return np.empty(numel, dtype=dtype)
        except (MemoryError, ValueError) as exc:
            raise LimitExceededError(
                f"cannot allocate {nbytes} bytes for the tensor ({type(exc).__name__}); lower "
                "Limits.max_tensor_bytes to refuse such files early",
                offset=head.offset, record="tensor", tensor=name,
            ) from None

    # ------------------------------------------------------------------ by name
    def _load_index(self) -> dict[str, C.IndexEntry]:
        if self._index is not None:
            return self._index
        if not self._src.seekable:
            raise UnsupportedFeatureError(
                "access by name needs a seekable file; iterate over a stream instead"
            )
        size = self._src.size
        entries, index_offset, ihead = self._find_index(size)
        # The index must describe a well-formed file: entries in file order without overlap, ending
        # before the index; its META/GRAPH entries are exactly the leading records read at open.
        prev_end = C.FILE_HEADER_SIZE
        for entry in entries:
            if entry.offset < prev_end or entry.length < C.RECORD_OVERHEAD:
                raise CorruptDataError(f"index entry {entry.name!r} overlaps another or is out of file order",
                                       offset=ihead.offset, record="index")
            prev_end = entry.offset + entry.length
        if prev_end > index_offset:
            raise CorruptDataError("an index entry runs into the index record", offset=ihead.offset, record="index")
        # Between the entries there may be only unknown optional records (what iteration skips): a record
        # the index leaves out would otherwise be invisible by name while iteration refuses the file.
        at = C.FILE_HEADER_SIZE
        for start, length in [(e.offset, e.length) for e in entries] + [(index_offset, 0)]:
            if start > at:
                self._check_unlisted(at, start, ihead.offset)
            at = start + length
        if [(e.kind, e.offset, e.length) for e in entries if e.kind in (C.ENTRY_META, C.ENTRY_GRAPH)] != self._leading:
            raise CorruptDataError("index META/GRAPH entries do not match the records at the start of the file",
                                   offset=ihead.offset, record="index")
        layers = [e for e in entries if e.kind == C.ENTRY_LAYERS]
        if len(layers) > 1 or (layers and entries[-1] is not layers[0]):
            raise CorruptDataError("the index lists the layer region more than once or before a tensor",
                                   offset=ihead.offset, record="index")
        index_list = [(e.kind, e.name, e.offset, e.length) for e in entries]
        index: dict[str, C.IndexEntry] = {}
        order: list[str] = []
        aliases: dict[str, str] = {}
        ordinals: dict[str, int] = {}
        for entry in entries:
            entry.offset += self._start
            if entry.kind == C.ENTRY_TENSOR:
                ordinals[entry.name] = len(ordinals)
            if entry.kind == C.ENTRY_PACK:
                # the members' names are in the record: one entry per member, all pointing at the record
                head, payload = self._read_pack(entry)
                members, _groups = C.parse_pack_record(head.rtype, payload, head.offset + C.RECORD_HEADER_SIZE)
                for m in members:
                    if m.name in index:
                        raise CorruptDataError(f"index lists {m.name!r} twice", offset=head.offset, record="pack",
                                               tensor=m.name)
                    index[m.name] = C.IndexEntry(C.ENTRY_PACK, m.name, entry.offset, entry.length)
                    order.append(m.name)
            elif entry.kind in (C.ENTRY_TENSOR, C.ENTRY_ALIAS):
                if entry.name in index:
                    raise CorruptDataError(f"index lists {entry.name!r} twice", offset=ihead.offset, record="index")
                index[entry.name] = entry
                order.append(entry.name)
        for name in order:
            if index[name].kind == C.ENTRY_ALIAS:
                aliases[name] = self._read_alias(index[name], index)
        # Published only once complete: a failed load leaves the reader without a half-built index.
        self._layers_entry = layers[0] if layers else None
        self._index_list, self._ordinals, self._index_at = index_list, ordinals, index_offset
        self._index, self._order, self._aliases = index, order, aliases
        return index

    def _find_index(self, size: int) -> tuple[list[C.IndexEntry], int, C.RecordHead]:
        """The index entries, the index's relative offset and its record head, from the end of the file:
        an END record (36 bytes) pointing at an INDEX record, or (since 1.6) a TAIL record, found through the
        u32 at its end that states its payload length. The last 36 bytes are read once for both; every
        length is checked before it is used."""
        span = size - self._start - C.FILE_HEADER_SIZE  # bytes after the file header
        if span < min(C.END_RECORD_SIZE, C.MIN_TAIL_RECORD_SIZE):
            raise TruncatedError("file is too short to hold an end record", offset=size)
        k = min(span, C.END_RECORD_SIZE)
        self._src.seek(size - k)
        last = self._src.read_exact(k, what="the end of the file", record="end")
        if k == C.END_RECORD_SIZE:
            rtype, _, length = C._REC_HEAD.unpack_from(last)
            if rtype == C.REC_END and length == C.END_PAYLOAD_SIZE:
                if C._U32.unpack_from(last, 12)[0] != C.crc32(last[:12]):
                    raise ChecksumError("record header CRC mismatch", offset=size - k, record="end")
                return self._index_from_end(size, size - k, last)
        # since 1.6: a TAIL record, whose payload ends with a u32 stating the payload bytes before it
        body = C._U32.unpack_from(last, k - 2 * C.RECORD_TRAILER_SIZE)[0]
        record = C.RECORD_OVERHEAD + body + C.TAIL_TRAILER_SIZE
        tail_at = size - record
        if record > span or body + C.TAIL_TRAILER_SIZE > C.MAX_INDEX_BYTES:
            raise TruncatedError("no end record at the end of the file (nor a tail record: truncated, not "
                                 "closed, or followed by other bytes)", offset=size - k, record="end")
        if record > k:  # the rest of the record, before the bytes already read
            self._src.seek(tail_at)
            last = self._src.read_exact(record - k, what="the tail record", record="tail") + last
        raw = last[len(last) - record :]
        rtype, flags, length = C._REC_HEAD.unpack_from(raw)
        if rtype != C.REC_TAIL or length != body + C.TAIL_TRAILER_SIZE:
            raise TruncatedError("no end record at the end of the file (nor a tail record: truncated, not "
                                 "closed, or followed by other bytes)", offset=tail_at, record="end")
        if C._U32.unpack_from(raw, 12)[0] != C.crc32(raw[:12]):
            raise ChecksumError("record header CRC mismatch", offset=tail_at, record="tail")
        payload = raw[C.RECORD_HEADER_SIZE : C.RECORD_HEADER_SIZE + length]
        if C._U32.unpack_from(raw, C.RECORD_HEADER_SIZE + length)[0] != C.crc32(payload):
            raise ChecksumError("tail record payload CRC mismatch (data is corrupt)", offset=tail_at, record="tail")
        entries, _length = C.parse_tail(payload, tail_at + C.RECORD_HEADER_SIZE, size - self._start)
        if not entries:  # not indexed (spec 3.1): the entries are those a walk of the records finds
            entries = self._walk_entries(tail_at)
        return entries, tail_at - self._start, C.RecordHead(rtype, flags, length, tail_at)

    def _walk_entries(self, end: int) -> list[C.IndexEntry]:
        """The index entries of the records from the file header to absolute offset ``end`` (a TAIL without
        entries), as a streaming reader lists them: META/GRAPH, TENSOR + its CHUNK records, SMALL, PACK,
        ALIAS, the LAYER region; unknown optional records are skipped, anything else is refused. Reads record
        headers and the payloads that hold names only; every length is checked by the record reader."""
        entries: list[C.IndexEntry] = []
        pos = self._start + C.FILE_HEADER_SIZE
        layers: list[int] = []
        while pos < end:
            self._src.seek(pos)
            head = C.read_record_head(self._src)
            if head.end > end:
                raise CorruptDataError(f"{head.name} record runs into the tail record", offset=pos, record=head.name)
            rel, length = pos - self._start, head.end - pos
            if head.rtype in C.LEADING_KINDS:
                entries.append(C.IndexEntry(C.LEADING_KINDS[head.rtype], "", rel, length))
            elif head.rtype in (C.REC_TENSOR, C.REC_SMALL):
                header, _inline = _parse_tensor_record(head, C.read_payload(self._src, head))
                tail = head.end
                for _chunk in range(header.chunk_count if head.rtype == C.REC_TENSOR else 0):  # its CHUNK records
                    if tail >= end:
                        break
                    self._src.seek(tail)
                    chead = C.read_record_head(self._src, tensor=header.name)
                    if chead.rtype != C.REC_CHUNK or chead.end > end:
                        break
                    tail = chead.end
                entries.append(C.IndexEntry(C.ENTRY_TENSOR, header.name, rel, tail - pos))
                pos = tail
                continue
            elif head.rtype in C.PACK_TYPES:
                entries.append(C.IndexEntry(C.ENTRY_PACK, "", rel, length))
            elif head.rtype == C.REC_ALIAS:
                name, _target = C.parse_alias(C.read_payload(self._src, head), pos + C.RECORD_HEADER_SIZE)
                entries.append(C.IndexEntry(C.ENTRY_ALIAS, name, rel, length))
            elif head.rtype == C.REC_LAYER:
                layers[:] = [layers[0] if layers else rel, rel + length]
            elif head.rtype in C.RECORD_NAMES:  # CHUNK out of place, INDEX, END, TAIL
                raise CorruptDataError(f"unexpected {head.name} record", offset=pos, record=head.name)
            else:
                C.skip_record(self._src, head)  # unknown: skipped if optional, else UnsupportedFeatureError
            pos = head.end
        if layers:
            entries.append(C.IndexEntry(C.ENTRY_LAYERS, "", layers[0], layers[1] - layers[0]))
        return entries

    def _index_from_end(self, size: int, end_at: int, raw: bytes) -> tuple[list[C.IndexEntry], int, C.RecordHead]:
        """The INDEX record an END record at ``end_at`` (its 36 bytes: ``raw``) points to (1.0-1.5 files)."""
        payload = raw[C.RECORD_HEADER_SIZE : C.RECORD_HEADER_SIZE + C.END_PAYLOAD_SIZE]
        if C._U32.unpack_from(raw, C.RECORD_HEADER_SIZE + C.END_PAYLOAD_SIZE)[0] != C.crc32(payload):
            raise ChecksumError("end record payload CRC mismatch (data is corrupt)", offset=end_at, record="end")
        index_offset, length = C.parse_end(payload, end_at + C.RECORD_HEADER_SIZE)
        if length != size - self._start:
            raise CorruptDataError(f"end record states a file length of {length}, the file has {size - self._start}",
                                   offset=end_at, record="end")
        index_at = self._start + index_offset
        if not (self._start + C.FILE_HEADER_SIZE <= index_at < end_at):
            raise CorruptDataError("end record points outside the file", offset=end_at, record="end")
        self._src.seek(index_at)
        ihead = C.read_record_head(self._src)
        if ihead.rtype != C.REC_INDEX or ihead.end != end_at:
            raise CorruptDataError("end record does not point to the index record", offset=index_at, record="index")
        entries = C.parse_index(C.read_payload(self._src, ihead), index_at + C.RECORD_HEADER_SIZE, end_at - self._start)
        return entries, index_offset, ihead

    def _check_unlisted(self, start: int, end: int, index_at: int) -> None:
        """The records from ``start`` to ``end`` (relative offsets), which the index does not list, must be
        unknown optional ones, ending exactly at ``end``; the same rules as iteration applies to them."""
        pos = self._start + start
        while pos < self._start + end:
            self._src.seek(pos)
            head = C.read_record_head(self._src)
            if head.rtype in C.RECORD_NAMES:
                raise CorruptDataError(f"the index does not list the {head.name} record at byte offset {pos}",
                                       offset=index_at, record="index")
            C.skip_record(self._src, head)  # an unknown REQUIRED record: UnsupportedFeatureError
            pos = head.end
        if pos != self._start + end:
            raise CorruptDataError(f"a record the index does not list overlaps the record at byte offset "
                                   f"{self._start + end}", offset=index_at, record="index")

    def _read_alias(self, entry: C.IndexEntry, index: dict[str, C.IndexEntry]) -> str:
        self._src.seek(entry.offset)
        head = C.read_record_head(self._src, tensor=entry.name)
        if head.rtype != C.REC_ALIAS:
            raise CorruptDataError(f"index entry {entry.name!r} does not point to an alias record",
                                   offset=entry.offset, record=head.name, tensor=entry.name)
        name, target = C.parse_alias(C.read_payload(self._src, head, tensor=entry.name), entry.offset + C.RECORD_HEADER_SIZE)
        target_entry = index.get(target)
        if (name != entry.name or head.end - head.offset != entry.length or target_entry is None
                or target_entry.kind not in (C.ENTRY_TENSOR, C.ENTRY_PACK) or target_entry.offset > entry.offset):
            raise CorruptDataError(f"alias {entry.name!r} is inconsistent with the index",
                                   offset=entry.offset, record="alias", tensor=entry.name)
        return target

    def _tensor_header(self, entry: C.IndexEntry) -> tuple[C.TensorHeader, C.RecordHead, memoryview | None]:
        self._src.seek(entry.offset)
        head = C.read_record_head(self._src, tensor=entry.name)
        if head.rtype not in (C.REC_TENSOR, C.REC_SMALL):
            raise CorruptDataError(f"index entry {entry.name!r} does not point to a tensor record",
                                   offset=entry.offset, record=head.name, tensor=entry.name)
        header, inline = _parse_tensor_record(head, C.read_payload(self._src, head, tensor=entry.name))
        if header.name != entry.name:
            raise CorruptDataError(f"index entry {entry.name!r} points to tensor {header.name!r}",
                                   offset=entry.offset, record=head.name, tensor=entry.name)
        return header, head, inline

    def _entry(self, name: str) -> C.IndexEntry:
        index = self._load_index()
        entry = index.get(name)
        if entry is None:
            raise TensorNotFoundError(f"no tensor named {name!r} in {self.name}", tensor=name)
        return entry

    def _get_by_name(self, name: str, follow_alias: bool = True) -> np.ndarray:
        entry = self._entry(name)
        if entry.kind == C.ENTRY_ALIAS:
            entry = self._entry(self._aliases[name])
        if entry.kind == C.ENTRY_PACK:
            head, payload = self._read_pack(entry)
            return self._decode_pack(head, payload, self._named_meter, only=entry.name)[0][1]
        header, head, inline = self._tensor_header(entry)
        pend = self._plan_tensor(header, head, inline, self._named_meter)
        if self._src.pos != entry.offset + entry.length:
            raise CorruptDataError(f"index entry {entry.name!r} does not match the length of its records",
                                   offset=entry.offset, record="tensor", tensor=entry.name)
        if pend.layered is not None:
            return self._read_layered(pend, entry.name)
        return self._finish_tensors([pend])[0][1]

    def get_tensor(self, name: str) -> np.ndarray:
        """Decode one tensor by name (seekable files), reading only its own records."""
        with self._lock, ans.pinned_choice():
            return self._get_by_name(name)

    def keys(self) -> list[str]:
        """Names of all tensors and aliases, in file order."""
        with self._lock:
            self._load_index()
            return list(self._order)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._load_index()

    @property
    def aliases(self) -> dict[str, str]:
        """Alias name -> target tensor name."""
        with self._lock:
            self._load_index()
            return dict(self._aliases)

    def info(self, name: str) -> TensorInfo:
        """Dtype, shape, codec and stored size of a tensor, without decoding it."""
        with self._lock:
            entry = self._entry(name)
            alias_of = None
            if entry.kind == C.ENTRY_ALIAS:
                alias_of = self._aliases[name]
                entry = self._entry(alias_of)
            if entry.kind == C.ENTRY_PACK:
                return self._pack_info(name, entry, alias_of)
            header, _head, _inline = self._tensor_header(entry)
            dtype = by_code(header.dtype_code).numpy
            stored = entry.length
            if header.flags & C.TENSOR_LAYERED:  # and its pieces in the layer records
                stored += sum(piece.length for piece, _h in self._layer_directory().get(self._ordinals[entry.name], []))
            return TensorInfo(name, dtype, header.shape, header.codec_id, header.codec_config,
                              header.structural, stored, alias_of)

    def _pack_info(self, name: str, entry: C.IndexEntry, alias_of: str | None) -> TensorInfo:
        """TensorInfo of a packed tensor: its group's codec; stored bytes are its share of the group's data
        (by element count); binary statistics shown as the ``stats`` of its configuration."""
        head, payload = self._read_pack(entry)
        members, groups = C.parse_pack_record(head.rtype, payload, head.offset + C.RECORD_HEADER_SIZE)
        m = next(m for m in members if m.name == entry.name)
        g = groups[m.group]
        config = dict(g.codec_config)
        if m.stats is not None:
            config["stats"] = {"err": m.stats[0], "sparsity": m.stats[1]}
        stored = round(len(g.data) * m.numel / g.numel) if g.numel else 0
        try:
            dtype = by_code(m.dtype_code).numpy
        except RdcError as exc:
            raise exc.with_context(offset=head.offset, record="pack", tensor=m.name)
        return TensorInfo(name, dtype, m.shape, g.codec_id, config, bool(m.flags & C.TENSOR_STRUCTURAL), stored,
                          alias_of)

    def _map(self, stream: BinaryIO) -> memoryview | None:
        """The file mapped read-only (chunk payloads are then views of the page cache, not copies: a
        quarter of a lossless load was copying them), or None where that is not possible or not wanted:
        not POSIX, not a regular file, empty, or ``RDFORMAT_NO_MMAP=1``."""
        if os.name != "posix" or os.environ.get(_ENV_NO_MMAP, "").strip() not in ("", "0"):
            return None
        try:
            info = os.fstat(stream.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
                return None
            # not populated up front: reading one tensor by name must not read the whole file
            self._mmap = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None
        if hasattr(self._mmap, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            with contextlib.suppress(OSError):
                self._mmap.madvise(mmap.MADV_SEQUENTIAL)
        return memoryview(self._mmap)

    def close(self) -> None:
        """Close the underlying file if this reader opened it."""
        if self._mmap is not None:
            # views of the mapping may outlive the reader (plans not yet collected): the mapping then
            # closes when the last of them goes
            with contextlib.suppress(BufferError):
                if self._memory is not None:
                    self._memory.release()
                self._mmap.close()
            self._memory = self._mmap = None
            src = getattr(self, "_src", None)  # absent when the constructor failed early
            if src is not None:
                src.memory = None
        if self._owns:
            self._stream.close()

    def __enter__(self) -> "RdcReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(source: str | os.PathLike | bytes | BinaryIO, *, limits: Limits | None = None,  # noqa: A001
         budget: int | None = None, partial: bool = False) -> RdcReader:
    """Open an .rdc file, bytes, or binary stream (seekable or not) for reading.

    ``budget`` (bytes, seekable files only): progressive SuRP tensors decode from fewer bytes, giving a
    coarser model. In a layered file (format 1.3, what ``rdformat`` writes for SuRP) the budget is a
    prefix of the file: only its first ``budget`` bytes are read, plus the index at its end. In older
    files it is shared by the progressive streams in proportion to their sizes.
    ``partial``: iterating a truncated layered file (a partial download) decodes the model its complete
    layer records describe instead of failing; ``reader.truncation`` then says what was cut.
    """
    return RdcReader(source, limits=limits, budget=budget, partial=partial)


def load(source: str | os.PathLike | bytes | BinaryIO, *, limits: Limits | None = None,
         budget: int | None = None, partial: bool = False) -> dict[str, np.ndarray]:
    """Decode every tensor into a dict (aliases map to the same array object as their target).

    ``budget`` and ``partial``: as for :func:`open`.
    """
    with ans.pinned_choice(), RdcReader(source, limits=limits, budget=budget, partial=partial) as reader:
        decoded = dict(iter(reader))
        # file order (layered tensors are decoded after the layers, at the end of iteration)
        return {name: decoded[name] for name in reader._stream_order}


def salvage(source: str | os.PathLike | bytes | BinaryIO, *,
            limits: Limits | None = None) -> tuple[bytes, Truncation | None]:
    """A complete, valid file from a truncated layered file (a partial download), and what was cut.

    Every record of ``source`` is read and checked as a partial read does (``open(..., partial=True)``);
    the result holds its records up to the last complete LAYER record, then a new INDEX and END, so any
    reader or converter can use it. A file that is not truncated comes back unchanged (and ``None``).
    """
    with RdcReader(source, limits=limits, partial=True) as reader:
        if not reader._src.seekable:
            raise UnsupportedFeatureError("salvage needs a file or bytes (it copies the complete records)")
        for _item in reader:
            pass
        if reader.truncation is None:
            reader._src.seek(reader._start)
            return reader._src.read_exact(reader._src.size - reader._start, what="the file"), None
        entries, end = reader._salvage
        reader._src.seek(reader._start)
        body = bytearray(reader._src.read_exact(end, what="the complete records"))
    body += C.frame(C.REC_INDEX, C.index_payload(entries))
    body += C.frame(C.REC_END, C.end_payload(end, len(body) + C.END_RECORD_SIZE))
    return bytes(body), reader.truncation


#: Set to 1 to read files with copies instead of mapping them (e.g. files that another process may
#: truncate while they are read: a mapped file cut under the reader ends the process with SIGBUS).
_ENV_NO_MMAP = "RDFORMAT_NO_MMAP"
#: ``RdcReader`` iteration decodes the ANS blocks of several tensors together, up to this many decoded bytes.
DECODE_BATCH_BYTES = 64 << 20
#: ... and up to this many chunks: what a planned chunk holds (its tables, blocks, plan) costs a few KiB
#: whatever its size, so a file of many tiny chunks is decoded in batches of bounded memory.
DECODE_BATCH_CHUNKS = 1024


class _PlannedPack:
    """A PACK record read and planned: the members to return, and the planned groups they lie in."""

    __slots__ = ("members", "groups")

    def __init__(self, members: list, groups: dict[int, "_PendingTensor"]) -> None:
        self.members = members
        self.groups = groups


class _PendingTensor:
    """A tensor whose chunk records are read and planned, waiting for its ANS blocks to be decoded."""

    __slots__ = ("header", "head", "info", "out", "nbytes", "chunks", "layered", "codec", "pieces")

    def __init__(self, header, head, info, out: np.ndarray) -> None:
        self.header, self.head, self.info, self.out = header, head, info, out
        self.nbytes = 0  # decoded bytes of the planned chunks
        self.chunks: list = []  # (index, chunk record head, first element, count, ChunkPlan)
        #: A layered tensor: each chunk's data so far (its chunk record's, then its layer pieces).
        self.layered: list[bytearray] | None = None
        self.codec = None
        self.pieces = 0  # layer pieces added to ``layered``


def _parse_tensor_record(head: C.RecordHead, payload: bytes) -> tuple[C.TensorHeader, memoryview | None]:
    """A TENSOR record's header (its chunks follow), or a SMALL record's header and inline data."""
    base = head.offset + C.RECORD_HEADER_SIZE
    if head.rtype == C.REC_SMALL:
        return C.parse_small(payload, base)
    return C.parse_tensor_header(payload, base), None


def _finish_chunk(item: tuple) -> RdcError | None:
    """Turn one chunk's decoded blocks into its elements, written into the tensor; the error, if any."""
    pend, (index, chead, start, count, plan), decoded = item
    name = pend.header.name
    try:
        if plan.into is not None:  # the codec writes the chunk in place (no copy of the decoded bytes)
            with _chunk_errors(index, chead, name):
                plan.into(decoded, pend.out[start:start + count])
            return None
        with _chunk_errors(index, chead, name):
            elements = plan.finish(decoded)
        if elements.shape != (count,):
            raise CorruptDataError(f"chunk {index} decoded to {elements.size} elements, expected {count}",
                                   offset=chead.offset, record="chunk", tensor=name)
    except RdcError as exc:
        return exc
    pend.out[start : start + count] = elements
    return None


@contextlib.contextmanager
def _chunk_errors(index: int, chead, name: str):
    """Codec errors of a chunk as RdcErrors with the chunk's context."""
    try:
        yield
    except RdcError as exc:
        raise exc.with_context(offset=chead.offset, record="chunk", tensor=name)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a codec bug or unforeseen corruption: still an RdcError
        raise CorruptDataError(f"chunk {index} does not decode: {type(exc).__name__}: {exc}",
                               offset=chead.offset, record="chunk", tensor=name) from exc
