"""Streaming .rdc writer: tensors are encoded and written as they are given; the file is atomic."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import BinaryIO

import numpy as np

from ..format import records as C
from ..format.atomic import AtomicFile
from ..codecs import Codec, Prepared, get_codec_class
from ..codecs import bytesplit
from ..codecs.bytesplit import ByteSplitCodec
from ..codecs.raw import RawCodec
from ..entropy import ans
from ..format.dtypes import DtypeInfo, by_numpy, little_endian
from ..errors import InvalidInputError
from .layering import LayerSpool

DEFAULT_CHUNK_BYTES = C.DEFAULT_CHUNK_BYTES
#: Codec names accepted by ``save``/``Writer`` besides registered codec ids.
CODEC_ALIASES = {"lossless": "bytesplit"}


def resolve_codec(codec: str | Codec | None) -> Codec:
    """A codec instance from an id, an alias such as ``"lossless"``, or an instance."""
    if codec is None:
        codec = "lossless"
    if isinstance(codec, Codec):
        return codec
    if not isinstance(codec, str):
        raise InvalidInputError(f"codec must be a codec id or a Codec instance, not {type(codec).__name__}")
    return get_codec_class(CODEC_ALIASES.get(codec, codec))()


def _check_name(name: object, what: str = "tensor name") -> str:
    if not isinstance(name, str):
        raise InvalidInputError(f"{what} must be a str, not {type(name).__name__}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} {name!r} is not encodable as UTF-8 (lone surrogate?)") from None
    if not raw:
        raise InvalidInputError(f"{what} must not be empty")
    if len(raw) > C.MAX_NAME_BYTES:
        raise InvalidInputError(f"{what} is {len(raw)} UTF-8 bytes; the limit is {C.MAX_NAME_BYTES}")
    return name


def _tell(stream) -> int | None:
    """The stream's position when it can seek back there later, else None (pipes; files opened for
    appending, where every write lands at the end whatever the position)."""
    if "a" in str(getattr(stream, "mode", "")):
        return None
    try:
        if stream.seekable():
            return stream.tell()
    except (AttributeError, OSError, ValueError):
        pass
    return None


def _group_data(codec: Codec, parts: list[np.ndarray], info, compact: bool = False) -> tuple[Codec, bytes]:
    """A group's codec and data: ``codec`` over the concatenated elements, or raw when that is no larger.
    ``compact``: bytesplit may code the exponent plane member by member (format 1.5)."""
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if not flat.size:
        return RawCodec(), b""
    if compact and isinstance(codec, ByteSplitCodec) and len(parts) > 1:
        data = codec.encode_chunk(flat, info, segments=[p.size for p in parts if p.size])
    else:
        data = codec.encode_chunk(flat, info)
    if codec.lossless and not isinstance(codec, RawCodec) and len(data) >= flat.nbytes:
        return RawCodec(), flat.tobytes()
    return codec, data


def _group_cost(codec: Codec, data: bytes) -> int:
    config = C._config_json(_pack_config(codec), "pack")
    return len(data) + len(codec.codec_id) + len(config) + 4


def _pack_config(codec: Codec) -> dict:
    """A codec's configuration in a PACK group: statistics go to the members' binary fields instead."""
    config = dict(codec.get_config())
    config.pop("stats", None)
    return config


def _lossy_groups(queued: list[tuple], idx: list[int]) -> list[tuple[list[int], "C.PackGroup"]]:
    """Lossy tensors with one configuration (same step...): one group when that codes smaller than one
    group each. Levels decode the same concatenated as alone, except for ``dq``'s chains, which run on
    across a member boundary unless every member before the last fills whole chains."""
    info, codec = queued[idx[0]][1], queued[idx[0]][4]
    own = [([i], _group_data(queued[i][4], [queued[i][5]], info)) for i in idx]
    sets: list[list[int]] = [[idx[0]]]
    multiple = codec.chunk_multiple
    for i in idx[1:]:
        if queued[sets[-1][-1]][5].size % multiple == 0:
            sets[-1].append(i)
        else:
            sets.append([i])
    alone = {m[0]: coded for m, coded in own}
    # a set of one tensor with the first tensor's codec object is coded exactly as that tensor alone: reuse
    # it (lossy tensors rarely share a configuration, and coding levels is the writer's slowest step)
    shared = [(m, alone[m[0]] if len(m) == 1 and queued[m[0]][4] is codec else
               _group_data(codec, [queued[i][5] for i in m], info)) for m in sets]
    best = min((own, shared), key=lambda groups: sum(_group_cost(*coded) for _m, coded in groups))
    return [(m, C.PackGroup(chosen.codec_id, _pack_config(chosen), data)) for m, (chosen, data) in best]


def _pack_groups(queued: list[tuple], compact: bool = False) -> list[tuple[list[int], "C.PackGroup"]]:
    """Split queued tensors into PACK groups: lossless tensors of one dtype and codec share one group (one
    set of entropy tables) unless a large one codes smaller on its own; lossy tensors share one when their
    configurations are equal and that codes smaller (:func:`_lossy_groups`)."""
    keyed: dict[tuple, list[int]] = {}
    for i, (_name, info, _shape, _structural, codec, _flat) in enumerate(queued):
        key = (info.code, codec.codec_id, C._config_json(_pack_config(codec), "pack"))
        keyed.setdefault(key, []).append(i)
    out = []
    for idx in keyed.values():
        codec = queued[idx[0]][4]
        if not codec.lossless:
            out += _lossy_groups(queued, idx)
            continue
        sets = [list(idx)]
        info, codec = queued[idx[0]][1], queued[idx[0]][4]
        coded = {}

        def encode(members: list[int]) -> tuple[Codec, bytes]:
            key = tuple(members)
            if key not in coded:
                coded[key] = _group_data(codec, [queued[i][5] for i in members], info, compact)
            return coded[key]

        if codec.lossless and len(idx) > 1:
            # Large tensors whose statistics differ from the rest code smaller with tables of their own.
            for i in sorted(idx, key=lambda i: -queued[i][5].nbytes):
                if queued[i][5].nbytes < 4096 or len(sets[0]) == 1:
                    break
                rest = [j for j in sets[0] if j != i]
                now = _group_cost(*encode(sets[0]))
                split = _group_cost(*encode(rest)) + _group_cost(*encode([i]))
                if split < now:
                    sets[0] = rest
                    sets.append([i])
        for members in sets:
            chosen, data = encode(members)
            out.append((members, C.PackGroup(chosen.codec_id, _pack_config(chosen), data)))
    return out


def _dtype_info(dtype: np.dtype, name: str) -> DtypeInfo:
    """The dtype table row of a tensor's dtype; an unsupported one (complex, strings, objects) is an
    InvalidInputError that names the tensor, so a user knows which entry of a checkpoint to convert."""
    try:
        return by_numpy(dtype)
    except InvalidInputError as exc:
        raise exc.with_context(tensor=name) from None


class Writer:
    """Write an .rdc file tensor by tensor without holding the model in memory.

    With a path, bytes go to a temporary file in the same folder that replaces the target only
    when :meth:`close` succeeds, so an interrupted write never leaves a broken file under the
    target name. With a binary stream (a pipe, a socket) bytes are written straight through.

    Use as a context manager::

        with rdformat.Writer("model.rdc", metadata={"arch": "mlp"}) as w:
            w.add("fc.weight", weights)
            w.add_alias("head.weight", "fc.weight")
    """

    def __init__(
        self,
        target: str | os.PathLike | BinaryIO,
        *,
        metadata: Mapping | None = None,
        graph: bytes | None = None,
        graph_format: str = "onnx",
        codec: str | Codec | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        small_records: bool = True,
        compress_records: bool = True,
        layered: bool = False,
        layer_bytes: int | None = None,
        pack_records: bool = True,
        compact: bool = True,
        max_minor: int | None = None,
    ) -> None:
        if not (1 <= chunk_bytes <= C.MAX_CHUNK_DECODED_BYTES):
            raise InvalidInputError(f"chunk_bytes must be between 1 and {C.MAX_CHUNK_DECODED_BYTES}")
        if max_minor is not None:
            # the newest format the file may need: the structures of later minors are not written
            if not (C.VERSION_MINOR_BASE <= max_minor <= C.VERSION_MINOR):
                raise InvalidInputError(f"max_minor must be between {C.VERSION_MINOR_BASE} and {C.VERSION_MINOR}")
            if layered and max_minor < C.VERSION_MINOR_LAYERS:
                raise InvalidInputError(f"layered files need format 1.{C.VERSION_MINOR_LAYERS} (max_minor={max_minor})")
            compact = compact and max_minor >= C.VERSION_MINOR_DICT
            pack_records = pack_records and max_minor >= C.VERSION_MINOR_PACK
            compress_records = compress_records and max_minor >= C.VERSION_MINOR_ZLIB
        self.max_minor = C.VERSION_MINOR if max_minor is None else max_minor
        self._elements_coded = 0  # elements this writer has coded so far (see add: compiled kernels)
        self.default_codec = resolve_codec(codec)
        #: store single-chunk tensors with under SMALL_DATA_BYTES of data as one SMALL record (format 1.1);
        #: False writes TENSOR + CHUNK records only, which 1.0 readers can read.
        self.small_records = small_records
        #: store the metadata and the graph zlib-compressed (format 1.2) when that saves at least
        #: C.ZLIB_MIN_SAVING bytes; False writes plain META/GRAPH records, which 1.1 readers can read.
        self.compress_records = compress_records
        #: store runs of small single-chunk tensors as PACK records (format 1.3): compact headers, one index
        #: entry per pack, and coded data shared by tensors of one dtype; False writes 1.2 records only.
        self.pack_records = pack_records and small_records
        #: format 1.5 where it saves bytes: metadata and PACK directories deflated with the preset dictionary
        #: (DMETA, ZPACK), the compact index, bytesplit exponent planes coded per packed member; False writes
        #: 1.3 records only.
        self.compact = compact and compress_records
        #: format 1.6 where it saves bytes (unless ``max_minor`` is below 6, or ``compact=False``): the file
        #: ends with one TAIL record (compact index and end) instead of INDEX + END records (always smaller,
        #: about 60 bytes on a small model), and bytesplit may code the top two planes of floats together.
        #: ``max_minor=5`` keeps files readable by 1.5 readers (and lower values by older ones).
        self.v16 = self.compact and self.max_minor >= C.VERSION_MINOR_TAIL
        self._minor_needed = C.VERSION_MINOR_BASE  # raised by the records and codec features the file uses
        self._pack: list[tuple] = []  # tensors waiting for the next PACK record
        self._pack_bytes = 0
        self._packed = False
        self.chunk_bytes = chunk_bytes
        #: progressive tensors (SuRP) are layered (format 1.3): their segments of all tensors follow
        #: the tensors in LAYER records, by value, so a prefix of the file refines the whole model.
        self.layered = layered
        #: target size of a LAYER record (default: about 1/64 of the layered bytes, at least 1 KiB)
        if layer_bytes is not None and layer_bytes < 1:
            raise InvalidInputError("layer_bytes must be >= 1")
        self.layer_bytes = layer_bytes
        self._spool: LayerSpool | None = None
        self._tensor_count = 0
        self._entries: list[tuple[int, str, int, int]] = []
        self._record_count = 0  # records written so far (a TAIL leaves the entries out when they are few)
        self._tensors: set[str] = set()
        self._names: set[str] = set()
        self._closed = False
        self._file: AtomicFile | None = None
        if isinstance(target, (str, os.PathLike)):
            self._file = AtomicFile(target)
            self._stream: BinaryIO = self._file.stream
        else:
            if not hasattr(target, "write"):
                raise InvalidInputError("target must be a path or a binary stream with .write()")
            self._stream = target
        self.pos = 0
        try:
            leading = []  # (record type, payload, index entry kind) of the META and GRAPH records
            if metadata is not None:
                try:
                    meta = json.dumps(dict(metadata), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
                except (TypeError, ValueError) as exc:
                    raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from None
                leading.append(C.meta_record(meta.encode("utf-8"), compress=compress_records,
                                             dictionary=self.compact) + (C.ENTRY_META,))
            if graph is not None:
                fmt = _check_name(graph_format, "graph format")
                leading.append(C.graph_record(fmt, bytes(graph), compress=compress_records,
                                              lzma_ok=self.max_minor >= C.VERSION_MINOR_LZMA)
                               + (C.ENTRY_GRAPH,))
            # The file is 1.2 only when it holds a compressed record (1.1 readers read every other file).
            compressed = any(rtype not in (C.REC_META, C.REC_GRAPH) for rtype, _p, _k in leading)
            self._minor = (C.VERSION_MINOR_LAYERS if layered else
                           C.VERSION_MINOR_ZLIB if compressed else C.VERSION_MINOR_BASE)
            # The minor version is raised at close (1.3: a PACK record, 1.4: axis scales): in place when the
            # target can seek back, else announced now (readers never depend on the minor version).
            self._header_at = _tell(self._stream)
            if any(rtype == C.REC_DMETA for rtype, _p, _k in leading):
                self._minor_needed = C.VERSION_MINOR_DICT
            if any(rtype == C.REC_XGRAPH for rtype, _p, _k in leading):
                self._minor_needed = max(self._minor_needed, C.VERSION_MINOR_LZMA)
            if self._header_at is None:  # cannot seek back: announce the newest minor (features may follow)
                self._minor = self.max_minor
            self._minor = max(self._minor, self._minor_needed)
            self._write(C.file_header(self._minor))
            for rtype, payload, kind in leading:
                flags = 0 if rtype in (C.REC_META, C.REC_GRAPH) else C.FLAG_REQUIRED  # every compressed kind
                self._record(rtype, payload, kind=kind, name="", flags=flags)
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------ low level
    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self.pos += len(data)

    def _record(self, rtype: int, payload: bytes, *, kind: int | None = None, name: str = "", flags: int = 0,
                prefix: bytes = b"") -> int:
        """Write a record whose payload is ``prefix + payload`` (written in pieces: a chunk's data is not
        copied into a frame first, which cost a lossless save a tenth of its time)."""
        offset = self.pos
        size = len(prefix) + len(payload)
        self._write(C.record_head(rtype, size, flags))
        if prefix:
            self._write(prefix)
        self._write(payload)
        self._write(C.payload_crc(payload, prefix))
        self._record_count += 1
        if kind is not None:
            self._entries.append((kind, name, offset, self.pos - offset))
        return offset

    # ------------------------------------------------------------------ public
    def add(
        self,
        name: str,
        array: np.typing.ArrayLike,
        *,
        structural: bool = False,
        codec: str | Codec | None = None,
    ) -> None:
        """Encode ``array`` and append it under ``name`` (the caller's array is never modified)."""
        self._check_open()
        name = _check_name(name)
        if name in self._names:
            raise InvalidInputError(f"duplicate tensor name {name!r}")
        coded: tuple[bytes, ...] | None = None  # chunks a producer coded already
        if isinstance(array, Prepared):
            # Already produced (quantized levels, coded chunks...): declare the decoded dtype, store.
            info = _dtype_info(array.dtype, name)
            shape = tuple(int(d) for d in array.shape)
            numel = int(np.prod(shape, dtype=object))
            chosen = array.codec
            if structural and not chosen.lossless:
                raise InvalidInputError(f"tensor {name!r} is structural and must not be stored lossy")
            if array.chunks is not None:
                coded = tuple(array.chunks)
                chunk_elements = int(array.chunk_elements or 0)
                if numel and (chunk_elements < 1 or chunk_elements * info.itemsize > C.MAX_CHUNK_DECODED_BYTES
                              or len(coded) != -(-numel // chunk_elements)):
                    raise InvalidInputError(f"tensor {name!r}: {len(coded)} coded chunks of {chunk_elements} "
                                            f"elements do not fit shape {shape}")
                flat = None
            else:
                flat = little_endian(np.asarray(array.elements)).reshape(-1)
                if flat.size != numel:
                    raise InvalidInputError(f"tensor {name!r}: {flat.size} prepared elements for shape {shape}")
        else:
            arr = np.asarray(array)
            info = _dtype_info(arr.dtype, name)
            shape = tuple(int(d) for d in arr.shape)
            flat = little_endian(arr).reshape(-1)
            numel = flat.size
            chosen = resolve_codec(codec) if codec is not None else self.default_codec
            if structural and not chosen.lossless:
                chosen = resolve_codec("lossless")
            chosen = chosen.for_tensor(arr, info)
            if isinstance(chosen, ByteSplitCodec) and not self.v16:
                chosen.joint = False  # plane mode 5 is format 1.6 (for_tensor made this instance)
        if chosen.transforms_tensor:
            if self.max_minor < C.VERSION_MINOR_SCALES:
                raise InvalidInputError(f"tensor {name!r}: axis scales need format 1.{C.VERSION_MINOR_SCALES} "
                                        f"(max_minor={self.max_minor})")
            self._minor_needed = max(self._minor_needed, C.VERSION_MINOR_SCALES)
        if len(shape) > C.MAX_RANK:
            raise InvalidInputError(f"tensor {name!r} has rank {len(shape)}; the limit is {C.MAX_RANK}")
        if coded is None:
            # chunks are coded one at a time, each too small to pay for loading the compiled kernels; a
            # model that large (counted over the tensors written so far) pays for it, and every chunk
            # after that point uses them
            self._elements_coded += numel
            ans.compiled_active(self._elements_coded)
            chunk_elements = max(1, self.chunk_bytes // info.itemsize)
            multiple = chosen.chunk_multiple
            if multiple > 1:  # e.g. dq: trellis chains must not straddle chunks
                chunk_elements = max(multiple, chunk_elements // multiple * multiple)
            payloads = chosen.encode_chunks(flat, chunk_elements, info)
        else:
            chunk_elements = max(1, chunk_elements)
            payloads = iter(coded)
        chunk_count = -(-numel // chunk_elements)
        if (self.pack_records and coded is None and chunk_count <= 1 and not chosen.progressive
                and not chosen.transforms_tensor
                and numel * info.itemsize <= (C.PACK_TENSOR_BYTES if chosen.lossless else C.PACK_LOSSY_BYTES)
                and not (isinstance(chosen, RawCodec) and numel * info.itemsize >= C.SMALL_DATA_BYTES)):
            # (raw data of 4 KiB or more stays in an aligned CHUNK record, where it can be memory-mapped)
            self._pack_add(name, info, shape, structural, chosen, flat)
            return
        self._pack_flush()
        flags = C.TENSOR_STRUCTURAL if structural else 0
        if self.layered and chosen.progressive and coded is not None and any(len(c) for c in coded):
            flags |= C.TENSOR_LAYERED
            payloads = self._spool_chunks(payloads, numel, chunk_elements, chosen)
        if chunk_count == 1 and chosen.lossless and not isinstance(chosen, RawCodec) and flat is not None:
            # A single chunk can fall back to raw when coding does not pay (tiny tensors).
            only = next(payloads)
            if len(only) >= flat.nbytes:
                chosen, only = RawCodec(), flat.tobytes()
            payloads = iter([only])
        payloads = self._noted(payloads, chosen, numel, chunk_elements, info)
        header = C.TensorHeader(
            name=name,
            dtype_code=info.code,
            shape=shape,
            flags=flags,
            chunk_elements=chunk_elements,
            chunk_count=chunk_count,
            codec_id=chosen.codec_id,
            codec_config=chosen.get_config(),
        )
        if chunk_count <= 1 and self.small_records:
            only = next(payloads, b"")
            if len(only) < C.SMALL_DATA_BYTES:
                # One small chunk: header and data share one record (saves ~70 bytes per tensor).
                start = self._record(C.REC_SMALL, header.to_small_bytes(only), flags=C.FLAG_REQUIRED)
                self._names.add(name)
                self._tensors.add(name)
                self._entries.append((C.ENTRY_TENSOR, name, start, self.pos - start))
                self._tensor_count += 1
                return
            payloads = iter([only])
        start = self._record(C.REC_TENSOR, header.to_bytes())
        try:
            for index, data in enumerate(payloads):
                # Raw chunks big enough to be worth mapping are 64-byte aligned; others skip the padding.
                prefix = C.chunk_payload_prefix(index, self.pos + C.RECORD_HEADER_SIZE,
                                                align=isinstance(chosen, RawCodec) and len(data) >= 4096)
                self._record(C.REC_CHUNK, data, prefix=prefix)
        except BaseException:
            self.abort()
            raise
        self._names.add(name)
        self._tensors.add(name)
        self._entries.append((C.ENTRY_TENSOR, name, start, self.pos - start))
        self._tensor_count += 1

    def _note_bytesplit(self, data: bytes, count: int, info) -> None:
        """Raise the file's minor version to what a bytesplit chunk's plane modes need (1.5: shifted plane,
        1.6: joint planes)."""
        self._minor_needed = max(self._minor_needed, bytesplit.format_minor(data, count, info.itemsize))

    def _noted(self, payloads, codec: Codec, numel: int, chunk_elements: int, info):
        """``payloads``, each bytesplit chunk noted by :meth:`_note_bytesplit` as it passes."""
        for index, data in enumerate(payloads):
            if isinstance(codec, ByteSplitCodec):
                self._note_bytesplit(data, min(chunk_elements, numel - index * chunk_elements), info)
            yield data

    def _spool_chunks(self, payloads, numel: int, chunk_elements: int, codec: Codec):
        """Layered tensor: spool each chunk's segments for the LAYER records; its chunk records stay empty."""
        if self._spool is None:
            self._spool = LayerSpool()
        for index, data in enumerate(payloads):
            count = min(chunk_elements, numel - index * chunk_elements)
            self._spool.add_chunk(self._tensor_count, index, data, codec.progressive_segments(data, count))
            yield b""

    def add_alias(self, name: str, target: str) -> None:
        """Record ``name`` as another name of the already written tensor ``target`` (tied weights)."""
        self._check_open()
        name = _check_name(name)
        if name in self._names:
            raise InvalidInputError(f"duplicate tensor name {name!r}")
        if target not in self._tensors:
            raise InvalidInputError(f"alias {name!r} targets {target!r}, which has not been written as a tensor")
        self._pack_flush()
        payload = C.pack_str(name) + C.pack_str(target)
        self._record(C.REC_ALIAS, payload, kind=C.ENTRY_ALIAS, name=name)
        self._names.add(name)

    # ------------------------------------------------------------------ PACK records
    def _pack_add(self, name: str, info, shape: tuple[int, ...], structural: bool, codec: Codec,
                  flat: np.ndarray) -> None:
        """Queue a small tensor for the next PACK record (written when a tensor that is not packed, an
        alias or the end of the file comes, or when the queue holds PACK_FLUSH_BYTES)."""
        # a copy: the caller may reuse its array before the pack is written
        self._pack.append((name, info, shape, structural, codec, np.array(flat, copy=True)))
        # what the tensor adds to the record, about: lossy levels take a few bits per element
        self._pack_bytes += flat.nbytes if codec.lossless else flat.size // 2
        self._names.add(name)
        self._tensors.add(name)
        if self._pack_bytes >= C.PACK_FLUSH_BYTES:
            self._pack_flush()

    def _pack_flush(self) -> None:
        """Write the queued tensors as one PACK record."""
        if not self._pack:
            return
        queued, self._pack, self._pack_bytes = self._pack, [], 0
        self._pack_write(queued)

    def _pack_write(self, queued: list[tuple]) -> None:
        groups = _pack_groups(queued, self.compact)
        for members_, g in groups:
            if g.codec_id == "bytesplit":
                self._note_bytesplit(g.data, sum(queued[i][5].size for i in members_), queued[members_[0]][1])
        members, packed = [], []
        number: dict[int, int] = {}  # group key -> number, in order of first use
        for i, (name, info, shape, structural, codec, _flat) in enumerate(queued):
            key = next(k for k, (idx, _g) in enumerate(groups) if i in idx)
            if key not in number:
                number[key] = len(number)
                packed.append(groups[key][1])
            stats = getattr(codec, "stats", None) or None
            pair = None
            if stats is not None:
                err, sparsity = stats.get("err"), stats.get("sparsity")
                if isinstance(err, (int, float)) and isinstance(sparsity, (int, float)):
                    pair = (float(err), float(sparsity))
            members.append(C.PackMember(name, info.code, shape, C.TENSOR_STRUCTURAL if structural else 0,
                                        number[key], pair))
        payload, rtype = C.pack_payload(members, packed), C.REC_PACK
        if self.compact:
            zpayload = C.zpack_payload(members, packed)
            if len(zpayload) < len(payload):
                payload, rtype = zpayload, C.REC_ZPACK
                self._minor_needed = max(self._minor_needed, C.VERSION_MINOR_DICT)
        if len(payload) > C.MAX_PACK_BYTES and len(queued) > 1:  # levels coded larger than estimated
            half = len(queued) // 2
            self._pack_write(queued[:half])
            self._pack_write(queued[half:])
            return
        if len(payload) > C.MAX_PACK_BYTES:
            raise InvalidInputError(f"tensor {queued[0][0]!r}: pack record of {len(payload)} bytes is over the limit")
        start = self._record(rtype, payload, flags=C.FLAG_REQUIRED)
        self._entries.append((C.ENTRY_PACK, "", start, self.pos - start))
        self._packed = True

    def close(self) -> None:
        """Write the index and footer, then publish the file atomically."""
        if self._closed:
            return
        try:
            self._pack_flush()
            if self._spool is not None and len(self._spool):
                first = self.pos
                for payload in self._spool.payloads(self.layer_bytes):
                    self._record(C.REC_LAYER, payload, flags=C.FLAG_REQUIRED)
                self._entries.append((C.ENTRY_LAYERS, "", first, self.pos - first))
            index_offset = self.pos
            if self.v16:
                # a file of a few records is not indexed: a reader by name walks them (at most
                # UNINDEXED_RECORDS record headers), which costs less than the entries' bytes
                few = self._record_count <= C.UNINDEXED_RECORDS
                self._write(C.tail_record([] if few else self._entries, index_offset))
                file_length = self.pos
                self._minor_needed = max(self._minor_needed, C.VERSION_MINOR_TAIL)
            else:
                self._write(C.frame(C.REC_INDEX, C.index_payload(self._entries)))
                file_length = self.pos + C.END_RECORD_SIZE
                self._write(C.frame(C.REC_END, C.end_payload(index_offset, file_length)))
            if self._packed:
                self._minor_needed = max(self._minor_needed, C.VERSION_MINOR_PACK)
            if self._minor < self._minor_needed:
                self._stream.seek(self._header_at)
                self._stream.write(C.file_header(self._minor_needed))
                self._stream.seek(self._header_at + file_length)
            self._stream.flush()
            if self._file is not None:
                self._file.commit()
        except BaseException:
            self.abort()
            raise
        finally:
            if self._spool is not None:
                self._spool.close()
        self._closed = True

    def abort(self) -> None:
        """Drop a partial file: the temporary file is deleted and the target is left untouched."""
        if self._closed:
            return
        self._closed = True
        if self._spool is not None:
            self._spool.close()
        if self._file is not None:
            self._file.abort()

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidInputError("writer is closed")

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
