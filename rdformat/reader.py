"""Reading .rdc files: streaming iteration from any binary stream, and by-name access on files."""

from __future__ import annotations

import builtins
import io
import os
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from . import container as C
from .codecs import codec_from_config
from .dtypes import by_code
from .errors import (
    CorruptDataError,
    LimitExceededError,
    RdcError,
    TensorNotFoundError,
    TruncatedError,
    UnsupportedFeatureError,
)


@dataclass(frozen=True)
class Limits:
    """Reader-side caps, checked before anything is allocated (lower them on small devices)."""

    #: Largest decoded tensor accepted, in bytes.
    max_tensor_bytes: int = 1 << 36
    #: Largest metadata / graph record accepted, in bytes.
    max_meta_bytes: int = C.MAX_META_BYTES
    max_graph_bytes: int = C.MAX_GRAPH_BYTES


@dataclass(frozen=True)
class TensorInfo:
    """What the file says about a tensor, without decoding it."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    codec: str
    codec_config: dict
    structural: bool
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

    def __init__(self, source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO, *, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._owns = False
        if isinstance(source, (str, os.PathLike)):
            self._stream: BinaryIO = builtins.open(source, "rb")
            self._owns = True
            self.name = os.fspath(source)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self._stream = io.BytesIO(bytes(source))
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
        self._pending: C.RecordHead | None = None
        self.metadata: dict = {}
        self.graph: bytes | None = None
        self.graph_format: str | None = None
        try:
            self._src = C.Source(self._stream)
            self._start = self._src.pos
            self.version = C.read_file_header(self._src)
            self._read_leading_records()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ leading records
    def _read_leading_records(self) -> None:
        """Read META/GRAPH records at the start; keep the first other record head for iteration."""
        while True:
            head = C.read_record_head(self._src)
            if head.rtype in (C.REC_META, C.REC_GRAPH):
                self._consume_leading(head)
            elif head.rtype in C.RECORD_NAMES:
                self._pending = head
                return
            else:
                C.skip_record(self._src, head)

    def _consume_leading(self, head: C.RecordHead) -> None:
        cap = self.limits.max_meta_bytes if head.rtype == C.REC_META else self.limits.max_graph_bytes
        if head.length > cap:
            raise LimitExceededError(f"{head.name} record is {head.length} bytes, over the reader limit {cap}",
                                     offset=head.offset, record=head.name)
        payload = C.read_payload(self._src, head)
        base = head.offset + C.RECORD_HEADER_SIZE
        if head.rtype == C.REC_META:
            self.metadata = C.parse_json_object(payload, "metadata", base)
        else:
            self.graph_format, self.graph = C.parse_graph(payload, base)

    # ------------------------------------------------------------------ streaming
    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(name, array)`` pairs in file order (aliases after their target)."""
        with self._lock:
            if self._iterated:
                if not self._src.seekable:
                    raise RdcError("a non-seekable stream can be iterated only once")
                self._src.seek(self._start)
                C.read_file_header(self._src)
                self._read_leading_records()
            self._iterated = True
            head, self._pending = self._pending, None
        recent: weakref.WeakValueDictionary[str, np.ndarray] = weakref.WeakValueDictionary()
        # Where this iteration continues: by-name reads from other threads may move the file.
        pos = head.offset + C.RECORD_HEADER_SIZE if head is not None else self._src.pos
        while True:
            with self._lock:
                if self._src.seekable and self._src.pos != pos:
                    self._src.seek(pos)  # by-name reads in between moved the file position
                if head is None:
                    head = C.read_record_head(self._src)
                if head.rtype == C.REC_TENSOR:
                    payload = C.read_payload(self._src, head)
                    header = C.parse_tensor_header(payload, head.offset + C.RECORD_HEADER_SIZE)
                    array = self._read_chunks(header, head)
                elif head.rtype == C.REC_ALIAS:
                    payload = C.read_payload(self._src, head)
                    alias, target = C.parse_alias(payload, head.offset + C.RECORD_HEADER_SIZE)
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
                    header = None
                elif head.rtype == C.REC_INDEX:
                    C.read_payload(self._src, head)
                    head = None
                    pos = self._src.pos
                    continue
                elif head.rtype == C.REC_END:
                    payload = C.read_payload(self._src, head)
                    _, length = C.parse_end(payload, head.offset + C.RECORD_HEADER_SIZE)
                    if length != head.end - self._start:
                        raise CorruptDataError("end record states a different file length", offset=head.offset, record="end")
                    return
                elif head.rtype in (C.REC_META, C.REC_GRAPH, C.REC_CHUNK):
                    raise CorruptDataError(f"unexpected {head.name} record", offset=head.offset, record=head.name)
                else:
                    C.skip_record(self._src, head)
                    head = None
                    pos = self._src.pos
                    continue
                head = None
                pos = self._src.pos
            if header is not None:
                recent[header.name] = array
                yield header.name, array
            else:
                yield alias, array

    def _read_chunks(self, header: C.TensorHeader, head: C.RecordHead) -> np.ndarray:
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
        rem = self._src.remaining()
        if rem is not None and header.chunk_count * (C.RECORD_OVERHEAD + 9) > rem:
            raise TruncatedError(
                f"tensor declares {header.chunk_count} chunks, more than the {rem} remaining bytes can hold",
                offset=head.offset, record="tensor", tensor=name,
            )
        try:
            codec = codec_from_config(header.codec_id, header.codec_config)
        except RdcError as exc:
            raise exc.with_context(offset=head.offset, record="tensor", tensor=name)
        except (TypeError, ValueError) as exc:
            raise CorruptDataError(f"invalid {header.codec_id} configuration: {exc}",
                                   offset=head.offset, record="tensor", tensor=name) from None
        dtype = info.numpy.newbyteorder("<")
        out = np.empty(numel, dtype=dtype)
        for index in range(header.chunk_count):
            chead = C.read_record_head(self._src, tensor=name)
            if chead.rtype != C.REC_CHUNK:
                raise CorruptDataError(
                    f"expected chunk {index} of {header.chunk_count}, found a {chead.name} record",
                    offset=chead.offset, record=chead.name, tensor=name,
                )
            payload = C.read_payload(self._src, chead, tensor=name)
            base = chead.offset + C.RECORD_HEADER_SIZE
            data = C.parse_chunk(payload, base, index, name)
            start = index * header.chunk_elements
            count = min(header.chunk_elements, numel - start)
            try:
                decoded = codec.decode_chunk(data, count, info)
            except RdcError as exc:
                raise exc.with_context(offset=chead.offset, record="chunk", tensor=name)
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a codec bug or unforeseen corruption: still an RdcError
                raise CorruptDataError(f"chunk {index} does not decode: {type(exc).__name__}: {exc}",
                                       offset=chead.offset, record="chunk", tensor=name) from exc
            if decoded.shape != (count,):
                raise CorruptDataError(f"chunk {index} decoded to {decoded.size} elements, expected {count}",
                                       offset=chead.offset, record="chunk", tensor=name)
            out[start : start + count] = decoded
        if info.kind == "bool" and numel and out.view(np.uint8).max() > 1:
            raise CorruptDataError("bool tensor holds values other than 0 and 1",
                                   offset=head.offset, record="tensor", tensor=name)
        return out.reshape(header.shape)

    # ------------------------------------------------------------------ by name
    def _load_index(self) -> dict[str, C.IndexEntry]:
        if self._index is not None:
            return self._index
        if not self._src.seekable:
            raise UnsupportedFeatureError(
                "access by name needs a seekable file; iterate over a stream instead"
            )
        size = self._src.size
        end_at = size - C.END_RECORD_SIZE
        if end_at < self._start + C.FILE_HEADER_SIZE:
            raise TruncatedError("file is too short to hold an end record", offset=size)
        self._src.seek(end_at)
        head = C.read_record_head(self._src)
        if head.rtype != C.REC_END or head.length != C.END_PAYLOAD_SIZE:
            raise TruncatedError("no end record at the end of the file (truncated or not closed)",
                                 offset=end_at, record="end")
        index_offset, length = C.parse_end(C.read_payload(self._src, head), end_at + C.RECORD_HEADER_SIZE)
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
        index: dict[str, C.IndexEntry] = {}
        order: list[str] = []
        aliases: dict[str, str] = {}
        for entry in entries:
            entry.offset += self._start
            if entry.kind in (C.ENTRY_TENSOR, C.ENTRY_ALIAS):
                if entry.name in index:
                    raise CorruptDataError(f"index lists {entry.name!r} twice", offset=ihead.offset, record="index")
                index[entry.name] = entry
                order.append(entry.name)
        self._index, self._order = index, order
        for name in order:
            if index[name].kind == C.ENTRY_ALIAS:
                aliases[name] = self._read_alias(index[name])
        self._aliases = aliases
        return index

    def _read_alias(self, entry: C.IndexEntry) -> str:
        self._src.seek(entry.offset)
        head = C.read_record_head(self._src, tensor=entry.name)
        if head.rtype != C.REC_ALIAS:
            raise CorruptDataError(f"index entry {entry.name!r} does not point to an alias record",
                                   offset=entry.offset, record=head.name, tensor=entry.name)
        name, target = C.parse_alias(C.read_payload(self._src, head, tensor=entry.name), entry.offset + C.RECORD_HEADER_SIZE)
        target_entry = self._index.get(target)
        if name != entry.name or target_entry is None or target_entry.kind != C.ENTRY_TENSOR:
            raise CorruptDataError(f"alias {entry.name!r} is inconsistent with the index",
                                   offset=entry.offset, record="alias", tensor=entry.name)
        return target

    def _tensor_header(self, entry: C.IndexEntry) -> tuple[C.TensorHeader, C.RecordHead]:
        self._src.seek(entry.offset)
        head = C.read_record_head(self._src, tensor=entry.name)
        if head.rtype != C.REC_TENSOR:
            raise CorruptDataError(f"index entry {entry.name!r} does not point to a tensor record",
                                   offset=entry.offset, record=head.name, tensor=entry.name)
        header = C.parse_tensor_header(C.read_payload(self._src, head, tensor=entry.name), entry.offset + C.RECORD_HEADER_SIZE)
        if header.name != entry.name:
            raise CorruptDataError(f"index entry {entry.name!r} points to tensor {header.name!r}",
                                   offset=entry.offset, record="tensor", tensor=entry.name)
        return header, head

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
        header, head = self._tensor_header(entry)
        return self._read_chunks(header, head)

    def get_tensor(self, name: str) -> np.ndarray:
        """Decode one tensor by name (seekable files), reading only its own records."""
        with self._lock:
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
            header, head = self._tensor_header(entry)
            dtype = by_code(header.dtype_code).numpy
            return TensorInfo(name, dtype, header.shape, header.codec_id, header.codec_config,
                              header.structural, entry.length, alias_of)

    def close(self) -> None:
        """Close the underlying file if this reader opened it."""
        if self._owns:
            self._stream.close()

    def __enter__(self) -> "RdcReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(source: str | os.PathLike | bytes | BinaryIO, *, limits: Limits | None = None) -> RdcReader:  # noqa: A001
    """Open an .rdc file, bytes, or binary stream (seekable or not) for reading."""
    return RdcReader(source, limits=limits)


def load(source: str | os.PathLike | bytes | BinaryIO, *, limits: Limits | None = None) -> dict[str, np.ndarray]:
    """Decode every tensor into a dict (aliases map to the same array object as their target)."""
    with RdcReader(source, limits=limits) as reader:
        return dict(iter(reader))
