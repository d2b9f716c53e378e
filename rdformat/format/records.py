"""Byte layout of the .rdc container: file header, record framing, checksums and record payloads.

This module knows bytes and records only; it knows nothing of codecs or frameworks. Every function
that parses untrusted bytes checks each length against the bytes actually present before using it,
and raises an :class:`~rdformat.errors.RdcError` subclass naming the record and byte offset.
The layout is specified in ``spec/rdc-v1.md``; keep the two in step.

One module on purpose (over 500 lines): every record's bytes, written and parsed, sit side by side
here as they do in ``spec/rdc-v1.md`` section 2, so a change to a record changes one place.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import (
    ChecksumError,
    CorruptDataError,
    InvalidInputError,
    LimitExceededError,
    NotRdcError,
    RdcError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)
from .wire import crc32, leb128, read_leb128

MAGIC = b"\x89RDC\r\n\x1a\n"
VERSION_MAJOR = 1
#: Newest minor version this module reads and writes. Writers write 3 when a file holds a PACK or LAYER
#: record (1.3), 2 when it uses a 1.2 feature (compressed META/GRAPH records) and 1 otherwise, so files
#: without newer features stay readable by older readers.
VERSION_MINOR = 7
VERSION_MINOR_ZLIB = 2
VERSION_MINOR_PACK = 3
#: Since 1.5: metadata and PACK directories deflated with the preset dictionary (DMETA, ZPACK records),
#: the compact index (CINDEX) and bytesplit's segmented exponent plane (1.4: sq/dq axis scales).
VERSION_MINOR_DICT = 5
#: Since 1.6: the TAIL record (a compact index and the end of the file in one record).
VERSION_MINOR_TAIL = 6
#: Since 1.7: the XGRAPH record (a graph blob compressed with LZMA2, about 40% smaller than zlib on ONNX graphs).
VERSION_MINOR_LZMA = 7
VERSION_MINOR_BASE = 1
VERSION_MINOR_COMPRESSED = VERSION_MINOR_ZLIB
VERSION_MINOR_LAYERS = 3
VERSION_MINOR_SCALES = 4
FILE_HEADER_SIZE = 16
RECORD_HEADER_SIZE = 16
RECORD_TRAILER_SIZE = 4
RECORD_OVERHEAD = RECORD_HEADER_SIZE + RECORD_TRAILER_SIZE
END_PAYLOAD_SIZE = 16
END_RECORD_SIZE = RECORD_OVERHEAD + END_PAYLOAD_SIZE
CHUNK_ALIGNMENT = 64
#: Writers cut tensors into chunks of about this many decoded bytes (each decodes on its own).
DEFAULT_CHUNK_BYTES = 4 << 20

# Record types (spec: "Record types").
REC_META = 1
REC_GRAPH = 2
REC_TENSOR = 3
REC_CHUNK = 4
REC_ALIAS = 5
REC_INDEX = 6
REC_END = 7
REC_SMALL = 8  # since 1.1: a tensor header and its one chunk in one record (always REQUIRED)
REC_ZMETA = 9  # since 1.2: META compressed with zlib (always REQUIRED)
REC_ZGRAPH = 10  # since 1.2: GRAPH whose blob is compressed with zlib (always REQUIRED)
REC_LAYER = 12  # since 1.3: refinement pieces of layered progressive tensors (always REQUIRED)
REC_PACK = 11  # since 1.3: several small tensors with compact headers and shared coded data (always REQUIRED)
REC_DMETA = 13  # since 1.5: META deflated with the preset dictionary (always REQUIRED)
REC_ZPACK = 14  # since 1.5: a PACK record whose directory is deflated with the preset dictionary (always REQUIRED)
REC_TAIL = 15  # since 1.6: compact index + end of file in one record, the last of the file (always REQUIRED)
REC_XGRAPH = 16  # since 1.7: GRAPH whose blob is compressed with raw LZMA2 (always REQUIRED)
RECORD_NAMES = {
    REC_META: "meta",
    REC_GRAPH: "graph",
    REC_TENSOR: "tensor",
    REC_CHUNK: "chunk",
    REC_ALIAS: "alias",
    REC_INDEX: "index",
    REC_END: "end",
    REC_SMALL: "small tensor",
    REC_ZMETA: "compressed meta",
    REC_ZGRAPH: "compressed graph",
    REC_LAYER: "layer",
    REC_PACK: "pack",
    REC_DMETA: "dictionary meta",
    REC_ZPACK: "compressed pack",
    REC_TAIL: "tail",
    REC_XGRAPH: "lzma graph",
}
#: Record types that hold a PACK (plain, or with a deflated directory); both are indexed as kind 5.
PACK_TYPES = (REC_PACK, REC_ZPACK)
FLAG_REQUIRED = 0x0001

# Index entry kinds.
ENTRY_TENSOR = 1
ENTRY_ALIAS = 2
ENTRY_META = 3
ENTRY_GRAPH = 4
ENTRY_LAYERS = 6  # since 1.3: the LAYER records, as one region (offset of the first, total length)
ENTRY_PACK = 5  # since 1.3: a PACK record (empty name); its members' names are in the record
#: META/GRAPH record types (plain and compressed) -> their index entry kind.
LEADING_KINDS = {REC_META: ENTRY_META, REC_ZMETA: ENTRY_META, REC_DMETA: ENTRY_META, REC_GRAPH: ENTRY_GRAPH,
                 REC_ZGRAPH: ENTRY_GRAPH, REC_XGRAPH: ENTRY_GRAPH}

# Tensor flags.
TENSOR_STRUCTURAL = 0x01
#: Since 1.3: the tensor's chunk records hold only the start of each chunk's data; the rest follows in
#: LAYER records after every tensor (progressive codecs only).
TENSOR_LAYERED = 0x02

# Hard limits of the format (spec: "Limits"). A file that exceeds one is invalid.
MAX_NAME_BYTES = 1024
MAX_RANK = 64
MAX_CODEC_ID_BYTES = 64
MAX_GRAPH_FORMAT_BYTES = 64
MAX_TENSOR_HEADER_BYTES = 1 << 20
MAX_META_BYTES = 64 << 20
MAX_GRAPH_BYTES = 1 << 31
MAX_INDEX_BYTES = 1 << 30
MAX_CHUNK_PAYLOAD_BYTES = 1 << 28
MAX_CHUNK_DECODED_BYTES = 1 << 28
MAX_UNKNOWN_RECORD_BYTES = 1 << 30
MAX_DIM = (1 << 63) - 1
MAX_PACK_BYTES = 4 << 20
#: Writers pack single-chunk tensors of at most this many decoded bytes, and write a PACK record once
#: the tensors waiting for it hold PACK_FLUSH_BYTES.
PACK_TENSOR_BYTES = 64 << 10
#: ... and lossy (quantized) single-chunk tensors of at most this many decoded bytes (their levels code to
#: a few bits per element, so the record stays small).
PACK_LOSSY_BYTES = 2 << 20
PACK_FLUSH_BYTES = 1 << 20

PAYLOAD_LIMITS = {
    REC_META: MAX_META_BYTES,
    REC_GRAPH: MAX_GRAPH_BYTES,
    REC_TENSOR: MAX_TENSOR_HEADER_BYTES,
    REC_CHUNK: MAX_CHUNK_PAYLOAD_BYTES,
    REC_ALIAS: 2 * (MAX_NAME_BYTES + 2),
    REC_INDEX: MAX_INDEX_BYTES,
    REC_END: END_PAYLOAD_SIZE,
    REC_SMALL: MAX_TENSOR_HEADER_BYTES,
    REC_ZMETA: MAX_META_BYTES,
    REC_ZGRAPH: MAX_GRAPH_BYTES,
    REC_LAYER: MAX_CHUNK_PAYLOAD_BYTES,
    REC_PACK: MAX_PACK_BYTES,
    REC_DMETA: MAX_META_BYTES,
    REC_ZPACK: MAX_PACK_BYTES,
    REC_TAIL: MAX_INDEX_BYTES,
    REC_XGRAPH: MAX_GRAPH_BYTES,
}
#: Writers store a tensor as one SMALL record when its single chunk's data is shorter than this
#: (such data is never memory-mapped, so nothing is lost by leaving it unaligned).
SMALL_DATA_BYTES = 4096
#: Writers store META and GRAPH compressed (zlib level 9) only when that saves at least this many bytes:
#: a smaller saving is not worth making the file need a 1.2 reader.
ZLIB_MIN_SAVING = 64
ZLIB_LEVEL = 9

#: Since 1.5: the preset dictionary of DMETA and ZPACK records (spec 1.5): words that metadata JSON and
#: tensor names of common models repeat, so that small texts compress too. Normative: these exact bytes.
PRESET_DICT = (
    b'running_mean.running_var.num_batches_tracked.downsample.shortcut.layer1.layer2.layer3.layer4.'
    b'blocks.layers.encoder.decoder.model.backbone.stem.stage.attention.attn.self.query.key.value.'
    b'dense.output.intermediate.mlp.fc1.fc2.proj.norm1.norm2.ln_f.embeddings.embed_tokens.lm_head.head.'
    b'classifier.features.bn1.bn2.bn3.conv1.conv2.conv3.weight.bias'
    b'{"transform":"rotl1"}bytesplit{"step":sq{"chain":dq'
    b'{"rdformat":{"source_format":"onnx","adapter_version":1,"source_name":".onnx","graph_initializers":'
    b'"external_data":"safetensors","safetensors_metadata":{"format":"pt"},"shards":[{"file":"tensors":['
    b'"checkpoint_key":"state_dict","extra_entries":{"key_order":["folded_pruning":["strides":{'
    b'"state_dict_metadata":[["",{"version":1}],"layouts":[1,0,0,1,0,0],"source_name":".pt"}}'
    b'"pytorch","adapter_version":1,"modules":[{"version":1},'
)
#: Writers use a DMETA record instead of a plain META record only when that saves at least this many bytes.
DICT_MIN_SAVING = 8

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_REC_HEAD = struct.Struct("<HHQ")
_FILE_HEAD = struct.Struct("<8sHH")


def record_name(rtype: int) -> str:
    """Human name of a record type, for messages."""
    return RECORD_NAMES.get(rtype, f"unknown type {rtype}")


# --------------------------------------------------------------------------------------------
# Writing


def file_header(minor: int = VERSION_MINOR_BASE) -> bytes:
    """The 16-byte file header: magic, version, CRC of both (``minor``: the file's minor version)."""
    head = _FILE_HEAD.pack(MAGIC, VERSION_MAJOR, minor)
    return head + _U32.pack(crc32(head))


def record_head(rtype: int, length: int, flags: int = 0) -> bytes:
    """The 16-byte record header for a payload of ``length`` bytes."""
    head = _REC_HEAD.pack(rtype, flags, length)
    return head + _U32.pack(crc32(head))


def frame(rtype: int, payload: bytes, flags: int = 0) -> bytes:
    """A whole record: header, payload and payload CRC."""
    return record_head(rtype, len(payload), flags) + payload + payload_crc(payload)


def payload_crc(payload: bytes, prefix: bytes = b"") -> bytes:
    """The 4-byte trailer of a record whose payload is ``prefix + payload``."""
    return _U32.pack(crc32(payload, crc32(prefix)) if prefix else crc32(payload))


def pack_str(text: str, width: struct.Struct = _U16) -> bytes:
    """Length-prefixed UTF-8 string."""
    raw = text.encode("utf-8")
    return width.pack(len(raw)) + raw


def _config_json(config: dict, tensor: str) -> str:
    """A codec configuration as the compact, sorted JSON a tensor header stores (spec 1.3: no NaN or
    infinity tokens, which other JSON parsers refuse)."""
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"tensor {tensor!r}: codec configuration is not strict JSON ({exc})") from None


@dataclass
class TensorHeader:
    """Decoded payload of a TENSOR record."""

    name: str
    dtype_code: int
    shape: tuple[int, ...]
    flags: int
    chunk_elements: int
    chunk_count: int
    codec_id: str
    codec_config: dict = field(default_factory=dict)

    @property
    def numel(self) -> int:
        """Number of elements (product of the shape; 1 for a 0-d tensor)."""
        return math.prod(self.shape)

    @property
    def structural(self) -> bool:
        """Whether an adapter marked the tensor as steering shapes/control flow (never lossy)."""
        return bool(self.flags & TENSOR_STRUCTURAL)

    def to_small_bytes(self, data: bytes) -> bytes:
        """Serialise as a SMALL record payload: the header with varint dimensions, then ``data``."""
        codec = self.codec_id.encode("ascii")
        config = _config_json(self.codec_config, self.name).encode("utf-8")
        parts = [
            pack_str(self.name),
            struct.pack("<HBB", self.dtype_code, len(self.shape), self.flags),
            b"".join(leb128(d) for d in self.shape),
            bytes([len(codec)]) + codec,
            leb128(len(config)) + config,
            data,
        ]
        return b"".join(parts)

    def to_bytes(self) -> bytes:
        """Serialise as a TENSOR record payload."""
        parts = [
            pack_str(self.name),
            struct.pack("<HBB", self.dtype_code, len(self.shape), self.flags),
            b"".join(_U64.pack(d) for d in self.shape),
            _U64.pack(self.chunk_elements),
            _U64.pack(self.chunk_count),
            pack_str(self.codec_id),
            pack_str(_config_json(self.codec_config, self.name), _U32),
        ]
        return b"".join(parts)


def deflate_dict(data: bytes) -> bytes:
    """``data`` as a raw deflate stream (RFC 1951, no zlib header) primed with :data:`PRESET_DICT`."""
    co = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, PRESET_DICT)
    return co.compress(data) + co.flush()


def meta_record(meta: bytes, *, compress: bool = True, dictionary: bool = True) -> tuple[int, bytes]:
    """(record type, payload) for the metadata JSON text ``meta``: deflated with the preset dictionary
    (DMETA, 1.5) when ``dictionary`` and that saves at least DICT_MIN_SAVING bytes; else compressed with
    zlib when that saves at least ZLIB_MIN_SAVING bytes (and ``compress``), else a plain one."""
    if compress and dictionary:
        packed = leb128(len(meta)) + deflate_dict(meta)
        if len(packed) + DICT_MIN_SAVING <= len(meta):
            return REC_DMETA, packed
    if compress and len(meta) > ZLIB_MIN_SAVING:
        packed = _U64.pack(len(meta)) + zlib.compress(meta, ZLIB_LEVEL)
        if len(packed) + ZLIB_MIN_SAVING <= len(meta):
            return REC_ZMETA, packed
    return REC_META, meta


def graph_record(fmt: str, blob: bytes, *, compress: bool = True, lzma_ok: bool = False) -> tuple[int, bytes]:
    """(record type, payload) for a graph blob: compressed GRAPH when that saves at least ZLIB_MIN_SAVING
    bytes (and ``compress``), else a plain GRAPH record; with ``lzma_ok`` (a 1.7 file), XGRAPH when LZMA2
    saves another ZLIB_MIN_SAVING bytes over zlib."""
    head = pack_str(fmt)
    best = (REC_GRAPH, head + blob)
    if compress and len(blob) > ZLIB_MIN_SAVING:
        packed = _U64.pack(len(blob)) + zlib.compress(blob, ZLIB_LEVEL)
        if len(packed) + ZLIB_MIN_SAVING <= len(blob):
            best = (REC_ZGRAPH, head + packed)
        xz = lzma_pack(blob) if lzma_ok else None
        if xz is not None and len(head) + len(xz) + ZLIB_MIN_SAVING <= len(best[1]):
            best = (REC_XGRAPH, head + xz)
    return best


#: XGRAPH dictionary sizes: at least liblzma's minimum, at most 64 MiB (what a decoder allocates).
LZMA_MIN_DICT = 4096
LZMA_MAX_DICT = 64 << 20


def _lzma_filters(dict_size: int) -> list[dict]:
    import lzma

    # Every parameter explicit: the decoder of a raw stream needs exactly the encoder's filter chain.
    return [{"id": lzma.FILTER_LZMA2, "dict_size": dict_size, "lc": 3, "lp": 0, "pb": 2}]


def lzma_pack(blob: bytes) -> bytes | None:
    """XGRAPH data for ``blob``: ``u64`` size, ``u32`` dictionary size, raw LZMA2 stream; None without
    Python's lzma module."""
    try:
        import lzma
    except ImportError:
        return None
    dict_size = max(LZMA_MIN_DICT, min(len(blob), LZMA_MAX_DICT))
    filters = _lzma_filters(dict_size)
    filters[0].update(mode=lzma.MODE_NORMAL, nice_len=273, mf=lzma.MF_BT4, depth=0)
    stream = lzma.compress(blob, format=lzma.FORMAT_RAW, filters=filters)
    return _U64.pack(len(blob)) + _U32.pack(dict_size) + stream


def chunk_payload_prefix(index: int, data_offset_in_file: int, *, align: bool = True) -> bytes:
    """CHUNK payload bytes before the codec data: index, pad length and zero padding.

    ``data_offset_in_file`` is where the payload would start. With ``align`` the padding makes the
    codec data start at a multiple of CHUNK_ALIGNMENT so stored bytes can be memory-mapped in place
    (the writer aligns raw chunks; entropy-coded chunks are never mapped, so they skip the padding).
    """
    unpadded = data_offset_in_file + 9
    pad = (-unpadded) % CHUNK_ALIGNMENT if align else 0
    return _U64.pack(index) + bytes([pad]) + bytes(pad)


def index_payload(entries: list[tuple[int, str, int, int]]) -> bytes:
    """INDEX payload from (kind, name, record offset, stored length) entries."""
    parts = [_U64.pack(len(entries))]
    for kind, name, offset, length in entries:
        parts.append(bytes([kind]) + pack_str(name) + _U64.pack(offset) + _U64.pack(length))
    return b"".join(parts)


#: A TAIL payload ends with this field: the byte length of the payload before it (spec 3.1, since 1.6).
TAIL_TRAILER_SIZE = 4
#: Writers leave the TAIL's entries out (count 0: a reader by name walks the records) when the file holds at
#: most this many records before it: walking them costs a reader that many record headers.
UNINDEXED_RECORDS = 8
#: Smallest TAIL record: framing, a 1-byte file length, a 1-byte entry count and the trailer.
MIN_TAIL_RECORD_SIZE = RECORD_OVERHEAD + 2 + TAIL_TRAILER_SIZE


def tail_record(entries: list[tuple[int, str, int, int]], offset: int) -> bytes:
    """A whole TAIL record (since 1.6) starting at relative offset ``offset``: the compact index of
    (kind, name, record offset, stored length) entries in file order and the file's length.

    Entries store each offset as the gap from the end of the previous entry (the first: from the end of
    the file header), so a file whose records the index lists back to back spends one byte per offset."""
    parts = [leb128(len(entries))]
    prev_end = FILE_HEADER_SIZE
    for kind, name, at, length in entries:
        raw = name.encode("utf-8")
        if at < prev_end:
            raise InvalidInputError(f"index entry {name!r} at {at} overlaps the previous one (ends at {prev_end})")
        parts += [bytes([kind]), leb128(len(raw)), raw, leb128(at - prev_end), leb128(length)]
        prev_end = at + length
    body = b"".join(parts)
    # the file length counts this record, whose size depends on the length's own varint: settle it
    length = offset + RECORD_OVERHEAD + len(body) + 1 + TAIL_TRAILER_SIZE
    while True:
        head = leb128(length)
        total = offset + RECORD_OVERHEAD + len(head) + len(body) + TAIL_TRAILER_SIZE
        if total == length:
            break
        length = total
    payload = head + body
    return frame(REC_TAIL, payload + _U32.pack(len(payload)), FLAG_REQUIRED)


def parse_tail(payload: bytes, base: int, file_size: int | None) -> tuple[list["IndexEntry"], int]:
    """Parse a TAIL payload (since 1.6) -> (index entries with absolute-from-start offsets, stated file length).

    Every field is checked: the trailer must state exactly the bytes before it, every entry's kind and name
    follow the INDEX rules, and every entry must end within the stated file length (and ``file_size``)."""
    r = PayloadReader(payload, base, "tail")
    if len(payload) < 2 + TAIL_TRAILER_SIZE:
        raise r.fail(f"tail record of {len(payload)} bytes is shorter than its smallest form")
    body = len(payload) - TAIL_TRAILER_SIZE
    stated = _U32.unpack_from(payload, body)[0]
    if stated != body:
        r.pos = body
        raise r.fail(f"tail trailer states {stated} bytes before it, the record has {body}")
    r.data = payload[:body]  # the entries must end exactly where the trailer starts
    file_length = r.varint("file length", MAX_DIM)
    if file_size is not None and file_length != file_size:
        raise r.fail(f"tail record states a file length of {file_length}, the file has {file_size}")
    count = r.varint("index entry count", MAX_DIM)
    if count > body // 4:  # an entry takes at least 4 bytes
        raise r.fail(f"tail record declares {count} index entries, more than its {body} bytes can hold")
    entries = []
    prev_end = FILE_HEADER_SIZE
    for _ in range(count):
        kind = r.u8("index entry kind")
        if kind not in (ENTRY_TENSOR, ENTRY_ALIAS, ENTRY_META, ENTRY_GRAPH, ENTRY_PACK, ENTRY_LAYERS):
            raise r.fail(f"unknown index entry kind {kind}")
        unnamed = kind in (ENTRY_META, ENTRY_GRAPH, ENTRY_PACK, ENTRY_LAYERS)
        n = r.varint("index entry name length", MAX_NAME_BYTES)
        if unnamed and n:
            raise r.fail(f"index entry of kind {kind} must have an empty name")
        if not unnamed and not n:
            raise r.fail("index entry name is empty")
        try:
            name = r.take(n, "index entry name").decode("utf-8")
        except UnicodeDecodeError:
            raise r.fail("index entry name is not valid UTF-8") from None
        offset = prev_end + r.varint("index entry gap", file_length)
        length = r.varint("index entry length", file_length)
        if offset + length > file_length:
            raise r.fail(f"index entry {name!r} points outside the file")
        prev_end = offset + length
        entries.append(IndexEntry(kind, name, offset, length))
    r.finish()
    return entries, file_length


def end_payload(index_offset: int, file_length: int) -> bytes:
    """END payload: where the index record starts and the total file length."""
    return _U64.pack(index_offset) + _U64.pack(file_length)


# --------------------------------------------------------------------------------------------
# Reading


class Source:
    """A binary stream with an absolute byte position, for seekable and non-seekable input alike.

    Reads are done in bounded pieces so a forged length never makes us allocate more than the
    bytes that actually arrive.
    """

    PIECE = 1 << 20

    def __init__(self, stream: BinaryIO, *, start: int = 0, memory: memoryview | None = None) -> None:
        self.stream = stream
        self.pos = start
        #: The whole input when it is in memory (``stream`` reads it): :meth:`read_view` slices it
        #: instead of copying.
        self.memory = memory
        #: CRCs of record payloads computed ahead on another core (:mod:`.crc_ahead`), or None.
        self.crc_ahead = None
        self.size: int | None = None
        try:
            if stream.seekable():
                here = stream.tell()
                self.size = stream.seek(0, 2)
                stream.seek(here)
                self.pos = here
        except (AttributeError, OSError, ValueError):
            self.size = None

    @property
    def seekable(self) -> bool:
        """True when random access (the index) is possible."""
        return self.size is not None

    def remaining(self) -> int | None:
        """Bytes left after the current position, when known."""
        return None if self.size is None else self.size - self.pos

    def seek(self, offset: int) -> None:
        """Move to an absolute offset (seekable sources only)."""
        self.stream.seek(offset)
        self.pos = offset

    def read_exact(self, n: int, *, what: str, record: str | None = None, tensor: str | None = None) -> bytes:
        """Read exactly ``n`` bytes or raise TruncatedError naming ``what``."""
        start = self.pos
        rem = self.remaining()
        if rem is not None and n > rem:
            raise TruncatedError(
                f"file ends inside {what}: needs {n} bytes, {rem} remain",
                offset=start, record=record, tensor=tensor,
            )
        if n <= self.PIECE or rem is not None:
            # one read when the size is known to be there (the pieces below keep memory following the
            # data on streams of unknown length, at the cost of two extra copies)
            data = self.stream.read(n)
            got = len(data) if data else 0
            if got < n:
                more = [data or b""]
                while got < n:  # pipes/sockets may return short reads
                    piece = self.stream.read(n - got)
                    if not piece:
                        break
                    more.append(piece)
                    got += len(piece)
                data = b"".join(more)
        else:
            buf = bytearray()
            while len(buf) < n:
                piece = self.stream.read(min(self.PIECE, n - len(buf)))
                if not piece:
                    break
                buf += piece
            data = bytes(buf)
            got = len(data)
        self.pos += got
        if got < n:
            raise TruncatedError(
                f"file ends inside {what}: needs {n} bytes, got {got}",
                offset=start, record=record, tensor=tensor,
            )
        return data

    def read_upto(self, n: int) -> bytes:
        """Read ``n`` bytes, or fewer only when the data ends first (n must be small)."""
        parts, got = [], 0
        while got < n:
            piece = self.stream.read(n - got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        self.pos += got
        return b"".join(parts)

    def read_view(self, n: int, *, what: str, record: str | None = None,
                  tensor: str | None = None) -> bytes | memoryview:
        """:meth:`read_exact`, without a copy when the input is in memory (a read-only view of it): a
        lossless load spent an eighth of its time copying chunk payloads out of the caller's bytes."""
        if self.memory is None:
            return self.read_exact(n, what=what, record=record, tensor=tensor)
        start = self.pos
        rem = len(self.memory) - start
        if n > rem:
            raise TruncatedError(f"file ends inside {what}: needs {n} bytes, {max(rem, 0)} remain",
                                 offset=start, record=record, tensor=tensor)
        self.stream.seek(start + n)
        self.pos = start + n
        return self.memory[start : start + n]

    def skip(self, n: int, *, what: str) -> None:
        """Skip ``n`` bytes (seek when possible, read and drop otherwise)."""
        if self.seekable:
            rem = self.remaining()
            if n > rem:
                raise TruncatedError(f"file ends inside {what}", offset=self.pos)
            self.seek(self.pos + n)
            return
        left = n
        while left:
            piece = self.stream.read(min(self.PIECE, left))
            if not piece:
                raise TruncatedError(f"file ends inside {what}", offset=self.pos)
            left -= len(piece)
            self.pos += len(piece)


def read_file_header(src: Source) -> tuple[int, int]:
    """Read and check the file header; returns (major, minor)."""
    data = src.read_upto(FILE_HEADER_SIZE)
    if len(data) < FILE_HEADER_SIZE:
        if data and MAGIC.startswith(data[: len(MAGIC)]):
            raise TruncatedError("file is shorter than the 16-byte .rdc header", offset=0, record="file header")
        raise NotRdcError("not an .rdc file: magic bytes missing", offset=0)
    magic, major, minor = _FILE_HEAD.unpack_from(data)
    if magic != MAGIC:
        if magic[1:4] == b"RDC":
            raise NotRdcError(
                "damaged .rdc magic bytes (file was probably transferred in text mode, which rewrites "
                "line endings); transfer it in binary mode",
                offset=0,
            )
        raise NotRdcError("not an .rdc file: magic bytes missing", offset=0)
    if _U32.unpack_from(data, 12)[0] != crc32(data[:12]):
        raise ChecksumError("file header CRC mismatch", offset=0, record="file header")
    if major != VERSION_MAJOR:
        raise UnsupportedVersionError(
            f"file is .rdc version {major}.{minor}; this reader supports major version {VERSION_MAJOR} "
            "only: upgrade rdformat",
            offset=8,
        )
    return major, minor


@dataclass
class RecordHead:
    """A parsed record header."""

    rtype: int
    flags: int
    length: int
    offset: int  # absolute offset of the record's first byte

    @property
    def name(self) -> str:
        """Human name of the record type."""
        return record_name(self.rtype)

    @property
    def end(self) -> int:
        """Offset of the byte after the record."""
        return self.offset + RECORD_OVERHEAD + self.length


def read_record_head(src: Source, *, tensor: str | None = None) -> RecordHead:
    """Read and verify a record header, checking its length against limits and the file size."""
    offset = src.pos
    data = src.read_exact(RECORD_HEADER_SIZE, what="a record header", record="record header", tensor=tensor)
    rtype, flags, length = _REC_HEAD.unpack_from(data)
    if _U32.unpack_from(data, 12)[0] != crc32(data[:12]):
        raise ChecksumError("record header CRC mismatch", offset=offset, record="record header", tensor=tensor)
    head = RecordHead(rtype, flags, length, offset)
    limit = PAYLOAD_LIMITS.get(rtype, MAX_UNKNOWN_RECORD_BYTES)
    if length > limit:
        raise LimitExceededError(
            f"{head.name} record declares {length} payload bytes, over the format's limit of {limit}",
            offset=offset, record=head.name, tensor=tensor,
        )
    rem = src.remaining()
    if rem is not None and length + RECORD_TRAILER_SIZE > rem:
        raise TruncatedError(
            f"{head.name} record declares {length} payload bytes but only {max(rem - 4, 0)} remain",
            offset=offset, record=head.name, tensor=tensor,
        )
    return head


def read_payload(src: Source, head: RecordHead, *, tensor: str | None = None,
                 view: bool = False) -> bytes | memoryview:
    """Read a record's payload and trailing CRC; verify the CRC. ``view``: the payload may be a read-only
    memoryview of an in-memory input (:meth:`Source.read_view`) instead of a copy."""
    read = src.read_view if view else src.read_exact
    at = src.pos
    payload = read(head.length, what=f"a {head.name} record", record=head.name, tensor=tensor)
    trailer = src.read_exact(RECORD_TRAILER_SIZE, what=f"a {head.name} record CRC", record=head.name, tensor=tensor)
    # the CRC of exactly these bytes, if computed ahead; else computed here
    actual = src.crc_ahead.crc(at, len(payload)) if src.crc_ahead is not None else None
    if _U32.unpack(trailer)[0] != (crc32(payload) if actual is None else actual):
        raise ChecksumError(
            f"{head.name} record payload CRC mismatch (data is corrupt)",
            offset=head.offset, record=head.name, tensor=tensor,
        )
    return payload


def skip_record(src: Source, head: RecordHead) -> None:
    """Skip an unknown optional record (its CRC is not checked: its content is not used)."""
    if head.flags & FLAG_REQUIRED:
        raise UnsupportedFeatureError(
            f"record of unknown type {head.rtype} is marked required; upgrade rdformat to read this file",
            offset=head.offset, record=head.name,
        )
    src.skip(head.length + RECORD_TRAILER_SIZE, what=f"an unknown record of type {head.rtype}")


class PayloadReader:
    """Bounds-checked cursor over one record payload; every read names the record and offset."""

    def __init__(self, data: bytes, base: int, record: str, tensor: str | None = None) -> None:
        self.data = data
        self.pos = 0
        self.base = base  # absolute offset of data[0]
        self.record = record
        self.tensor = tensor

    def fail(self, message: str, cls: type = CorruptDataError) -> Exception:
        """An exception located at the cursor."""
        return cls(message, offset=self.base + self.pos, record=self.record, tensor=self.tensor)

    def take(self, n: int, what: str) -> bytes:
        """The next ``n`` bytes."""
        if n > len(self.data) - self.pos:
            raise self.fail(f"{what} runs past the end of the {self.record} record")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        """One unsigned byte."""
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        """Little-endian u16."""
        return _U16.unpack(self.take(2, what))[0]

    def u32(self, what: str) -> int:
        """Little-endian u32."""
        return _U32.unpack(self.take(4, what))[0]

    def u64(self, what: str) -> int:
        """Little-endian u64."""
        return _U64.unpack(self.take(8, what))[0]

    def varint(self, what: str, limit: int) -> int:
        """An unsigned LEB128 value of at most ``limit``, in its shortest encoding (at most 10 bytes)."""
        pos = self.pos
        if pos < len(self.data):  # one byte (most fields of a small file): no call into the general reader
            value = self.data[pos]
            if value < 0x80:
                if value > limit:
                    raise self.fail(f"{what} {value} is over the limit of {limit}", LimitExceededError)
                self.pos = pos + 1
                return value
        try:
            value, self.pos = read_leb128(self.data, self.pos, len(self.data), max_bytes=10, what=what)
        except RdcError as exc:  # located in this record; running out of the record is corruption
            raise self.fail(exc.message) from None
        if value > limit:
            raise self.fail(f"{what} {value} is over the limit of {limit}", LimitExceededError)
        return value

    def text(self, what: str, limit: int, *, width: int = 2, allow_empty: bool = False) -> str:
        """A length-prefixed UTF-8 string of at most ``limit`` bytes."""
        n = self.u8(what) if width == 1 else self.u16(what) if width == 2 else self.u32(what)
        if n > limit:
            raise self.fail(f"{what} is {n} bytes, over the limit of {limit}", LimitExceededError)
        if n == 0 and not allow_empty:
            raise self.fail(f"{what} is empty")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def finish(self) -> None:
        """Require that the whole payload was consumed."""
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} unexpected trailing bytes in the {self.record} record")


#: JSON texts nesting deeper than this are refused (spec 1.3: readers accept 64 levels). A fixed bound,
#: so whether a text parses never depends on how deep in the call stack a reader happens to parse it
#: (Python's parser fails at the interpreter's recursion limit, counted from the caller's depth).
MAX_JSON_DEPTH = 512
_DEPTH_SLICE = 1 << 18


def json_depth_exceeds(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON text opens more than ``limit`` arrays/objects at once (brackets in strings ignored).

    A text with at most ``limit`` opening brackets is decided at once; others are scanned with numpy in
    slices of 256 KiB, in time linear in the text whatever it holds: a quote preceded by an even run of
    backslashes opens or closes a string, a bracket outside strings moves the depth.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    import numpy as np  # noqa: PLC0415 - only texts with many brackets need it

    depth = 0
    quotes = 0  # string delimiters so far (odd: inside a string)
    run = 0  # backslashes just before the slice
    for at in range(0, len(data), _DEPTH_SLICE):
        a = np.frombuffer(data, np.uint8, min(_DEPTH_SLICE, len(data) - at), at)
        n = a.size
        delim = np.flatnonzero(a == 0x22)
        backslash = a == 0x5C
        if run or backslash.any():  # a quote after an odd run of backslashes is escaped
            last_other = np.maximum.accumulate(np.where(backslash, -1, np.arange(n, dtype=np.int64)))
            prev = last_other[np.maximum(delim - 1, 0)]
            before = np.where(prev >= 0, delim - 1 - prev, delim + run)
            before[delim == 0] = run
            delim = delim[before % 2 == 0]
            run = n - 1 - int(last_other[-1]) if last_other[-1] >= 0 else run + n
        opens = (a == 0x5B) | (a == 0x7B)
        brackets = np.flatnonzero(opens | (a == 0x5D) | (a == 0x7D))
        step = np.where(opens[brackets], 1, -1)
        step[(np.searchsorted(delim, brackets) + quotes) % 2 == 1] = 0  # inside a string
        if step.size:
            running = np.cumsum(step)
            running += depth
            if int(running.max()) > limit:
                return True
            depth = int(running[-1])
        quotes += delim.size
    return False


def parse_json_object(data: bytes, what: str, offset: int, tensor: str | None = None) -> dict:
    """Parse a UTF-8 JSON object (metadata, codec configuration) nesting at most :data:`MAX_JSON_DEPTH` deep."""
    data = bytes(data) if not isinstance(data, bytes) else data
    if json_depth_exceeds(data):
        raise CorruptDataError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels", offset=offset, tensor=tensor)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptDataError(f"{what} is not valid JSON: {exc}", offset=offset, tensor=tensor) from None
    if not isinstance(value, dict):
        raise CorruptDataError(f"{what} must be a JSON object", offset=offset, tensor=tensor)
    return value


def _tensor_prefix(r: PayloadReader) -> tuple[str, int, int, int]:
    """Name, dtype code, rank and flags: the fields TENSOR and SMALL payloads start with."""
    name = r.text("tensor name", MAX_NAME_BYTES)
    r.tensor = name
    dtype_code = r.u16("dtype code")
    rank = r.u8("rank")
    flags = r.u8("tensor flags")
    if rank > MAX_RANK:
        raise r.fail(f"rank {rank} is over the limit of {MAX_RANK}", LimitExceededError)
    return name, dtype_code, rank, flags


def parse_tensor_header(payload: bytes, base: int) -> TensorHeader:
    """Parse a TENSOR record payload (``base``: absolute offset of the payload)."""
    r = PayloadReader(payload, base, "tensor")
    name, dtype_code, rank, flags = _tensor_prefix(r)
    shape = tuple(r.u64("dimension") for _ in range(rank))
    if any(d > MAX_DIM for d in shape):
        raise r.fail("a dimension is over 2**63-1", LimitExceededError)
    chunk_elements = r.u64("chunk element count")
    chunk_count = r.u64("chunk count")
    codec_id = r.text("codec id", MAX_CODEC_ID_BYTES)
    config_start = r.pos
    config_raw = r.take(r.u32("codec config length"), "codec config")
    r.finish()
    config = parse_json_object(config_raw, "codec configuration", base + config_start, name)
    header = TensorHeader(name, dtype_code, shape, flags, chunk_elements, chunk_count, codec_id, config)
    numel = header.numel
    if numel == 0:
        if chunk_count != 0:
            raise r.fail(f"empty tensor declares {chunk_count} chunks")
    else:
        if chunk_elements == 0:
            raise r.fail("chunk element count is 0 for a non-empty tensor")
        expected = -(-numel // chunk_elements)
        if chunk_count != expected:
            raise r.fail(f"chunk count {chunk_count} does not match {numel} elements in chunks of {chunk_elements}")
    return header


def parse_small(payload: bytes, base: int) -> tuple[TensorHeader, memoryview]:
    """Parse a SMALL record payload -> (its tensor header, the data of its one chunk)."""
    r = PayloadReader(payload, base, "small tensor")
    name, dtype_code, rank, flags = _tensor_prefix(r)
    shape = tuple(r.varint("dimension", MAX_DIM) for _ in range(rank))
    codec_id = r.text("codec id", MAX_CODEC_ID_BYTES, width=1)
    config_start = r.pos
    config_raw = r.take(r.varint("codec config length", MAX_TENSOR_HEADER_BYTES), "codec config")
    config = parse_json_object(config_raw, "codec configuration", base + config_start, name)
    data = memoryview(payload)[r.pos :]
    numel = 1
    for d in shape:
        numel *= d
    if numel == 0 and len(data):
        raise r.fail(f"empty tensor carries {len(data)} bytes of data")
    header = TensorHeader(name, dtype_code, shape, flags, max(numel, 1), 1 if numel else 0, codec_id, config)
    return header, data


def parse_alias(payload: bytes, base: int) -> tuple[str, str]:
    """Parse an ALIAS record payload -> (alias name, target name)."""
    r = PayloadReader(payload, base, "alias")
    name = r.text("alias name", MAX_NAME_BYTES)
    target = r.text("alias target", MAX_NAME_BYTES)
    r.finish()
    return name, target


def parse_graph(payload: bytes, base: int) -> tuple[str, bytes]:
    """Parse a GRAPH record payload -> (format name, blob)."""
    r = PayloadReader(payload, base, "graph")
    fmt = r.text("graph format", MAX_GRAPH_FORMAT_BYTES)
    return fmt, payload[r.pos :]


def inflate(r: PayloadReader, cap: int, limit: int) -> bytes:
    """The rest of ``r``'s payload: a ``u64`` decompressed size, then a zlib stream (RFC 1950) that must
    decompress to exactly that many bytes and end exactly at the end of the payload.

    The size is checked against the format's ``limit`` and the reader's ``cap`` before anything is
    decompressed, and decompression never produces more than the declared size plus one byte, so a
    zlib bomb costs at most ``cap`` bytes of memory.
    """
    size = _declared_size(r, cap, limit)
    return _decompress_rest(r, zlib.decompressobj(), size, "zlib", zlib.error)


def _declared_size(r: PayloadReader, cap: int, limit: int) -> int:
    """A compressed record's ``u64`` decompressed size, refused over ``min(cap, limit)`` before decoding."""
    size_at = r.pos
    size = r.u64("decompressed size")
    bound = min(cap, limit)
    if size > bound:
        r.pos = size_at
        which = "the format's limit" if size > limit else "the reader limit"
        raise r.fail(f"{r.record} record declares {size} decompressed bytes, over {which} of {bound}",
                     LimitExceededError)
    return size


def _decompress_rest(r: PayloadReader, d, size: int, kind: str, error: type) -> bytes:
    """The rest of ``r``'s payload through decompressor ``d`` (zlib's or lzma's): exactly ``size`` bytes,
    ending exactly at the payload's end; never more than ``size + 1`` bytes are produced."""
    try:
        out = d.decompress(memoryview(r.data)[r.pos :], size + 1)
    except error as exc:
        raise r.fail(f"{r.record} record: the {kind} stream is corrupt ({exc})") from None
    if len(out) > size:  # a decompression bomb, or damage: stopped at the declared size
        raise r.fail(f"{r.record} record: the {kind} stream decompresses to more than its declared {size} bytes",
                     LimitExceededError)
    if not d.eof:
        raise r.fail(f"{r.record} record: the {kind} stream ends early (incomplete) after {len(out)} bytes")
    if d.unused_data:
        r.pos = len(r.data) - len(d.unused_data)
        raise r.fail(f"{len(d.unused_data)} bytes after the {kind} stream in the {r.record} record")
    if len(out) != size:
        raise r.fail(f"{r.record} record: the {kind} stream decompresses to {len(out)} bytes, {size} declared")
    r.pos = len(r.data)
    return out


def inflate_dict(r: PayloadReader, size: int, end: int) -> bytes:
    """Inflate the raw deflate stream (primed with :data:`PRESET_DICT`) in ``r.data[r.pos:end]``, which must
    decompress to exactly ``size`` bytes (checked by the caller against its limits) and end exactly at
    ``end``; never produces more than ``size + 1`` bytes."""
    d = zlib.decompressobj(-15, PRESET_DICT)
    try:
        out = d.decompress(memoryview(r.data)[r.pos : end], size + 1)
    except zlib.error as exc:
        raise r.fail(f"{r.record} record: the deflate stream is corrupt ({exc})") from None
    if len(out) > size:
        raise r.fail(f"{r.record} record: the deflate stream decompresses to more than its declared {size} bytes",
                     LimitExceededError)
    if not d.eof:
        raise r.fail(f"{r.record} record: the deflate stream ends early (incomplete) after {len(out)} bytes")
    if d.unused_data:
        r.pos = end - len(d.unused_data)
        raise r.fail(f"{len(d.unused_data)} bytes after the deflate stream in the {r.record} record")
    if len(out) != size:
        raise r.fail(f"{r.record} record: the deflate stream decompresses to {len(out)} bytes, {size} declared")
    r.pos = end
    return out


def parse_dmeta(payload: bytes, base: int, cap: int) -> bytes:
    """Parse a DMETA payload (1.5) -> the metadata JSON text (at most ``cap`` bytes)."""
    r = PayloadReader(payload, base, "dictionary meta")
    size_at = r.pos
    bound = min(cap, MAX_META_BYTES)
    size = r.varint("decompressed size", 1 << 63)
    if size > bound:
        r.pos = size_at
        which = "the format's limit" if size > MAX_META_BYTES else "the reader limit"
        raise r.fail(f"dictionary meta record declares {size} decompressed bytes, over {which} of {bound}",
                     LimitExceededError)
    return inflate_dict(r, size, len(payload))


def parse_zmeta(payload: bytes, base: int, cap: int) -> bytes:
    """Parse a compressed META payload -> the metadata JSON text (at most ``cap`` bytes)."""
    return inflate(PayloadReader(payload, base, "compressed meta"), cap, MAX_META_BYTES)


def parse_xgraph(payload: bytes, base: int, cap: int) -> tuple[str, bytes]:
    """Parse an LZMA-compressed GRAPH payload -> (format name, blob of at most ``cap`` bytes).

    The declared size is checked against the format's limit and ``cap`` before anything is decompressed,
    the dictionary size (what the decoder allocates) must lie within 4 KiB and max(4 KiB, declared size),
    and decompression never produces more than the declared size plus one byte.
    """
    r = PayloadReader(payload, base, "lzma graph")
    fmt = r.text("graph format", MAX_GRAPH_FORMAT_BYTES)
    size = _declared_size(r, cap, MAX_GRAPH_BYTES)
    dict_size = r.u32("dictionary size")
    if not LZMA_MIN_DICT <= dict_size <= max(LZMA_MIN_DICT, min(size, LZMA_MAX_DICT)):
        raise r.fail(f"lzma graph record: dictionary size {dict_size} is outside {LZMA_MIN_DICT}.."
                     f"{max(LZMA_MIN_DICT, min(size, LZMA_MAX_DICT))} for {size} bytes")
    try:
        import lzma
    except ImportError:
        raise UnsupportedFeatureError("this Python has no lzma module, which the file's graph record needs "
                                      "(a Python built with liblzma reads it)") from None
    d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(dict_size))
    return fmt, _decompress_rest(r, d, size, "LZMA2", lzma.LZMAError)


def parse_zgraph(payload: bytes, base: int, cap: int) -> tuple[str, bytes]:
    """Parse a compressed GRAPH payload -> (format name, blob of at most ``cap`` bytes)."""
    r = PayloadReader(payload, base, "compressed graph")
    fmt = r.text("graph format", MAX_GRAPH_FORMAT_BYTES)
    return fmt, inflate(r, cap, MAX_GRAPH_BYTES)


def parse_chunk(payload: bytes, base: int, expected_index: int, tensor: str) -> memoryview:
    """Parse a CHUNK payload: check its index and padding, return the codec data."""
    r = PayloadReader(payload, base, "chunk", tensor)
    index = r.u64("chunk index")
    if index != expected_index:
        raise r.fail(f"chunk {index} found where chunk {expected_index} was expected")
    pad = r.u8("chunk padding length")
    if pad >= CHUNK_ALIGNMENT:
        raise r.fail(f"chunk padding {pad} is not below {CHUNK_ALIGNMENT}")
    if any(r.take(pad, "chunk padding")):
        raise r.fail("chunk padding bytes are not zero")
    return memoryview(payload)[r.pos :]


@dataclass
class IndexEntry:
    """One INDEX entry."""

    kind: int
    name: str
    offset: int
    length: int


def parse_index(payload: bytes, base: int, file_size: int | None) -> list[IndexEntry]:
    """Parse an INDEX payload; offsets are checked against the file size."""
    r = PayloadReader(payload, base, "index")
    count = r.u64("index entry count")
    if count > len(payload) // 19:  # each entry takes at least 19 bytes
        raise r.fail(f"index declares {count} entries, more than its {len(payload)} bytes can hold")
    entries = []
    for _ in range(count):
        kind = r.u8("index entry kind")
        if kind not in (ENTRY_TENSOR, ENTRY_ALIAS, ENTRY_META, ENTRY_GRAPH, ENTRY_PACK, ENTRY_LAYERS):
            raise r.fail(f"unknown index entry kind {kind}")
        unnamed = kind in (ENTRY_META, ENTRY_GRAPH, ENTRY_PACK, ENTRY_LAYERS)
        name = r.text("index entry name", MAX_NAME_BYTES, allow_empty=unnamed)
        if unnamed and name:
            raise r.fail(f"index entry of kind {kind} must have an empty name")
        offset = r.u64("index entry offset")
        length = r.u64("index entry length")
        if offset < FILE_HEADER_SIZE or (file_size is not None and offset + length > file_size):
            raise r.fail(f"index entry {name!r} points outside the file")
        entries.append(IndexEntry(kind, name, offset, length))
    r.finish()
    return entries


def parse_end(payload: bytes, base: int) -> tuple[int, int]:
    """Parse the END payload -> (index offset, file length)."""
    if len(payload) != END_PAYLOAD_SIZE:
        raise CorruptDataError("end record has the wrong size", offset=base, record="end")
    return _U64.unpack_from(payload, 0)[0], _U64.unpack_from(payload, 8)[0]


# --------------------------------------------------------------------------------------------
# PACK records (since 1.3): several small tensors in one record, spec section 2.6

#: Member dtype byte: bits 0-5 the dtype code, bit 6 STRUCTURAL, bit 7 binary statistics follow.
PACK_DTYPE_MASK = 0x3F
PACK_STRUCTURAL = 0x40
PACK_HAS_STATS = 0x80
_STATS = struct.Struct("<fH")


@dataclass
class PackMember:
    """One tensor of a PACK record: its header fields and where its elements sit in its group."""

    name: str
    dtype_code: int
    shape: tuple[int, ...]
    flags: int
    group: int
    #: (relative L2 error, fraction of zero levels) written by a lossy encoder; informational.
    stats: tuple[float, float] | None = None
    start: int = 0  # first element within the group's elements (set by parse_pack)

    @property
    def numel(self) -> int:
        """Number of elements (1 for a 0-d tensor)."""
        return math.prod(self.shape)


@dataclass
class PackGroup:
    """The coded data of one group of a PACK record: the concatenated elements of its members."""

    codec_id: str
    codec_config: dict
    data: bytes | memoryview
    dtype_code: int = 0  # the members' dtype (set by parse_pack)
    numel: int = 0  # elements of all its members (set by parse_pack)
    offset: int = 0  # absolute offset of the group's data in the file (set by parse_pack)
    members: list = field(default_factory=list)  # member positions (set by parse_pack)


def _shared_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b), 127)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def zpack_payload(members: list[PackMember], groups: list[PackGroup]) -> bytes:
    """Serialise a ZPACK record payload (spec 2.6, since 1.5): the PACK directory (the PACK payload without
    the group data bytes) deflated with the preset dictionary, then every group's data in order."""
    directory = pack_payload(members, groups, directory_only=True)
    packed = deflate_dict(directory)
    return b"".join([leb128(len(directory)), leb128(len(packed)), packed] + [bytes(g.data) for g in groups])


def pack_payload(members: list[PackMember], groups: list[PackGroup], *, directory_only: bool = False) -> bytes:
    """Serialise a PACK record payload (spec 2.6). Members come in file order; each names its group,
    and the groups are numbered in order of first use. ``directory_only``: leave out the group data bytes
    (their lengths stay), as in a ZPACK directory."""
    parts = [leb128(len(members))]
    prev = b""
    for m in members:
        raw = m.name.encode("utf-8")
        shared = _shared_prefix(prev, raw)
        prev = raw
        flags = m.dtype_code | (PACK_STRUCTURAL if m.flags & TENSOR_STRUCTURAL else 0)
        if m.stats is not None:
            flags |= PACK_HAS_STATS
        parts += [leb128(shared), leb128(len(raw) - shared), raw[shared:], bytes([flags, len(m.shape)]),
                  b"".join(leb128(d) for d in m.shape), leb128(m.group)]
        if m.stats is not None:
            err, sparsity = m.stats
            err = err if err == err and abs(err) < 3.4e38 else 3.4e38
            parts.append(_STATS.pack(err, int(round(min(max(sparsity, 0.0), 1.0) * 65535))))
    parts.append(leb128(len(groups)))
    prev_codec = None
    for g in groups:
        codec = g.codec_id.encode("ascii")
        config = _config_json(g.codec_config, "pack").encode("utf-8")
        data = b"" if directory_only else bytes(g.data)
        if (codec, config) == prev_codec:  # codec length 0: the previous group's codec and configuration
            parts += [b"\x00", leb128(len(g.data)), data]
            continue
        prev_codec = (codec, config)
        parts += [bytes([len(codec)]), codec, leb128(len(config)), config, leb128(len(g.data)), data]
    return b"".join(parts)


def parse_pack_record(rtype: int, payload: bytes, base: int) -> tuple[list[PackMember], list[PackGroup]]:
    """Parse a PACK or ZPACK record payload (``rtype``, one of :data:`PACK_TYPES`)."""
    return parse_pack(payload, base, compressed=rtype == REC_ZPACK)


def parse_pack(payload: bytes, base: int, *, compressed: bool = False) -> tuple[list[PackMember], list[PackGroup]]:
    """Parse a PACK record payload -> (members in order, groups); every field is checked (spec 2.6).

    ``compressed``: a ZPACK payload (since 1.5): varint directory size (at most 4 MiB), varint length of the
    deflated directory, the directory deflated with the preset dictionary, then the groups' data, in order,
    filling the rest of the payload exactly. The directory is a PACK payload without the data bytes."""
    region = None  # ZPACK: (the payload, where the next group's data starts)
    if compressed:
        z = PayloadReader(payload, base, "compressed pack")
        size = z.varint("pack directory size", MAX_PACK_BYTES)
        zlen = z.varint("deflated directory length", len(payload))
        end = z.pos + zlen
        if end > len(payload):
            raise z.fail(f"deflated directory of {zlen} bytes runs past the record")
        directory = inflate_dict(z, size, end)
        region = end
        r = PayloadReader(directory, base, "compressed pack")
    else:
        r = PayloadReader(payload, base, "pack")
    count = r.varint("pack member count", len(r.data))
    if count == 0:
        raise r.fail("pack record holds no tensor")
    members: list[PackMember] = []
    first_member: list[str] = []  # per group, the name of its first member (named in the group's errors)
    prev = b""
    seen: set[str] = set()
    used = 0  # groups are numbered in order of first use
    varint, u8 = r.varint, r.u8  # bound once: a small model's directory is hundreds of fields
    for _ in range(count):
        r.tensor = None
        shared = varint("shared name prefix length", MAX_NAME_BYTES)
        if shared > len(prev):
            raise r.fail(f"name shares {shared} bytes with the previous name of {len(prev)} bytes")
        suffix = r.take(varint("name suffix length", MAX_NAME_BYTES), "tensor name")
        raw = prev[:shared] + suffix
        if not raw or len(raw) > MAX_NAME_BYTES:
            raise r.fail(f"tensor name of {len(raw)} bytes (1..{MAX_NAME_BYTES} allowed)")
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise r.fail("tensor name is not valid UTF-8") from None
        prev = raw
        r.tensor = name
        if name in seen:
            raise r.fail(f"duplicate name {name!r} in the pack record")
        seen.add(name)
        flags = u8("member dtype")
        rank = u8("rank")
        if rank > MAX_RANK:
            raise r.fail(f"rank {rank} is over the limit of {MAX_RANK}", LimitExceededError)
        shape = tuple([varint("dimension", MAX_DIM) for _ in range(rank)])
        group = varint("group number", count)
        if group > used:
            raise r.fail(f"group {group} used before group {used}")
        if group == used:
            first_member.append(name)
            used += 1
        stats = None
        if flags & PACK_HAS_STATS:
            err, sparsity = _STATS.unpack(r.take(_STATS.size, "statistics"))
            stats = (float(err), sparsity / 65535)
        members.append(PackMember(name, flags & PACK_DTYPE_MASK, shape,
                                  TENSOR_STRUCTURAL if flags & PACK_STRUCTURAL else 0, group, stats))
    r.tensor = None
    gcount = varint("pack group count", count)
    if gcount != used:
        raise r.fail(f"pack record declares {gcount} groups, its members use {used}")
    groups: list[PackGroup] = []
    config_raw = b""
    for gi in range(gcount):
        r.tensor = first_member[gi]
        codec_id = r.text("codec id", MAX_CODEC_ID_BYTES, width=1, allow_empty=bool(groups))
        if not codec_id:  # the previous group's codec and configuration (parsed again: codecs may not share state)
            codec_id, config = groups[-1].codec_id, json.loads(bytes(config_raw).decode("utf-8"))
        else:
            config_start = r.pos
            config_raw = r.take(varint("codec config length", MAX_PACK_BYTES), "codec config")
            config = parse_json_object(config_raw, "codec configuration", base + config_start, r.tensor)
        size = varint("group data length", MAX_PACK_BYTES)
        if region is not None:
            at = region
            if size > len(payload) - at:
                raise CorruptDataError(f"pack group {gi} data of {size} bytes runs past the record",
                                       offset=base + at, record="compressed pack", tensor=r.tensor)
            region += size
        else:
            at = r.pos
            r.take(size, "group data")
        groups.append(PackGroup(codec_id, config, memoryview(payload)[at : at + size], offset=base + at))
    r.finish()
    if region is not None and region != len(payload):
        raise CorruptDataError(f"{len(payload) - region} bytes after the last group's data",
                               offset=base + region, record="compressed pack")
    for i, m in enumerate(members):
        g = groups[m.group]
        if g.members and m.dtype_code != g.dtype_code:
            raise CorruptDataError(f"pack group {m.group} mixes dtype codes {g.dtype_code} and {m.dtype_code}",
                                   offset=base, record="pack", tensor=m.name)
        g.dtype_code = m.dtype_code
        m.start = g.numel
        g.numel += m.numel
        g.members.append(i)
    for gi, g in enumerate(groups):
        if g.numel == 0 and len(g.data):
            raise CorruptDataError(f"pack group {gi} has no elements but {len(g.data)} bytes of data",
                                   offset=g.offset, record="pack", tensor=members[g.members[0]].name)
    return members, groups
