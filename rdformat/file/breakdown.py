"""Where the bytes of an .rdc file go: weight payload versus container overhead.

``breakdown(path_or_bytes)`` walks the records of a (valid) file by the spec's framing and sorts every
byte into one category:

* ``payload``: the coded weights themselves: ANS words, raw planes and raw elements;
* ``tables``: what codecs store around the payload: plane and mode bytes, frequency tables, parametric
  model parameters, block lengths and ANS lane headers, CLASSES maps headers;
* ``names``, ``headers`` (dtype, shape, codec id and configuration, chunk fields), ``stats`` (the
  informational statistics, JSON or binary; a ZPACK record's deflated directory is shared among these
  three in proportion to their plain bytes), ``metadata``, ``graph``, ``framing`` (record headers and
  CRCs, the file header), ``index`` (INDEX without names; a TAIL's entries without names) and ``end`` (the END
  record; a TAIL's file length and trailer).

Everything but ``payload`` is overhead. ``payload_bits`` splits the payload of lossy (quantized) tensors
from lossless ones, so that ``8 * lossy_payload / lossy_weights`` is the bits per weight of the quantized
weights (what ``--bits`` asks for). The walk trusts the file's structure only as far as the reader
would: a file that does not read is reported by :func:`rdformat.open`, not here (errors surface as
``RdcError``). ``surp`` streams count as payload whole (their segment headers are not split out).
"""

from __future__ import annotations

import json
import os
import struct
from collections import Counter
from typing import BinaryIO

from ..format import records as C
from ..format.dtypes import by_code
from ..entropy import FrequencyTable
from ..codecs.bytesplit import PLANE_ANS_JOINT, PLANE_ANS_SHIFTED, _read_joint, _read_segments, _read_varint

CATEGORIES = ("payload", "tables", "names", "headers", "stats", "metadata", "graph", "framing", "index", "end")


def _ans_block(data: bytes, pos: int, end: int, acc: Counter) -> None:
    """An ANS block: u32 L, L x u32 lengths (tables), words (payload)."""
    lanes = int.from_bytes(data[pos : pos + 4], "little")
    head = min(4 + 4 * lanes, end - pos)
    acc["tables"] += head
    acc["payload"] += end - pos - head


def _levels(data: bytes, pos: int, end: int, acc: Counter) -> None:
    """An sq level payload (modes ZERO, TABLE, PARAMETRIC) in ``data[pos:end]``."""
    mode = data[pos]
    if mode == 0:
        acc["tables"] += end - pos
        return
    if mode == 2:
        acc["tables"] += 11
        _ans_block(data, pos + 11, end, acc)
        return
    _table, after = FrequencyTable.from_bytes(data, pos + 6)
    acc["tables"] += after - pos
    _ans_block(data, after, end, acc)


def _codec_data(codec: str, data: bytes, count: int, itemsize: int, acc: Counter) -> None:
    """Split one chunk's codec data into payload and tables."""
    if codec == "raw" or codec == "surp" or not data:
        acc["payload"] += len(data)
        return
    if codec == "bytesplit":
        pos = 0
        for _k in range(itemsize):
            if pos >= len(data):  # the planes a joint plane stood for
                break
            mode = data[pos]
            acc["tables"] += 1
            pos += 1
            if mode == PLANE_ANS_JOINT:  # bit count, segments, table, varint length: tables; packed bits: payload
                start = pos
                joint, _table, n, pos = _read_joint(data, pos, count, _k)
                acc["tables"] += pos - start
                _ans_block(data, pos, pos + n, acc)
                acc["payload"] += len(data) - pos - n
                pos = len(data)
            elif mode == 0:
                acc["payload"] += count
                pos += count
            elif mode == 1:
                acc["payload"] += 1
                pos += 1
            elif mode == PLANE_ANS_SHIFTED:  # segments, table, varint length: tables
                start = pos
                segs, pos = _read_segments(data, pos, count, _k)
                _table, pos = FrequencyTable.from_bytes(data, pos)
                n, pos = _read_varint(data, pos, "block length")
                acc["tables"] += pos - start
                _ans_block(data, pos, pos + n, acc)
                pos += n
            else:
                _table, after = FrequencyTable.from_bytes(data, pos)
                n = int.from_bytes(data[after : after + 8], "little")
                acc["tables"] += after - pos + 8
                _ans_block(data, after + 8, after + 8 + n, acc)
                pos = after + 8 + n
        return
    if codec in ("sq", "dq"):
        if data[0] == 3:  # dq CLASSES: u8 mode, u32 G, u8 K, then K+1 u32-length-prefixed level payloads
            k = data[5]
            acc["tables"] += 6
            pos = 6
            for _ in range(k + 1):
                n = int.from_bytes(data[pos : pos + 4], "little")
                acc["tables"] += 4
                _levels(data, pos + 4, pos + 4 + n, acc)
                pos += 4 + n
            return
        _levels(data, 0, len(data), acc)
        return
    acc["payload"] += len(data)  # an unknown codec: counted whole


def _config_bytes(config: dict, acc: Counter, json_len: int) -> None:
    """A JSON codec configuration: its ``stats`` entry counts as stats, the rest as headers."""
    stats = config.get("stats")
    if stats is not None:
        n = len(json.dumps({"stats": stats}, sort_keys=True, separators=(",", ":"))) - 1  # ',"stats":{..}'
        acc["stats"] += n
        acc["headers"] += json_len - n
    else:
        acc["headers"] += json_len


def _names_and_stats(members: list, acc: Counter) -> int:
    """Count the member names (prefix-shared, as a PACK directory stores them) and binary statistics of a
    PACK record into ``acc``; returns their bytes."""
    prev = b""
    named = 0
    for m in members:
        raw = m.name.encode("utf-8")
        shared = C._shared_prefix(prev, raw)
        prev = raw
        n = len(C.leb128(shared)) + len(C.leb128(len(raw) - shared)) + len(raw) - shared
        acc["names"] += n
        named += n
        if m.stats is not None:
            acc["stats"] += C._STATS.size
            named += C._STATS.size
    return named


def _pack_directory(members: list, groups: list, acc: Counter) -> None:
    """Bytes of a PACK directory (the PACK payload without group data) by category."""
    total = len(C.pack_payload(members, groups, directory_only=True))
    acc["headers"] += total - _names_and_stats(members, acc)


def _pack_groups_data(groups: list, acc: Counter, lossy: Counter) -> None:
    """The coded data of a PACK record's groups (payload and tables)."""
    for g in groups:
        before = acc["payload"]
        _codec_data(g.codec_id, bytes(g.data), g.numel, by_code(g.dtype_code).itemsize, acc)
        if _lossy(g.codec_id):
            lossy["payload"] += acc["payload"] - before
            lossy["weights"] += g.numel


def _split(total: int, shares: Counter, acc: Counter) -> None:
    """Add ``total`` bytes to ``acc`` in proportion to ``shares`` (integers; the largest share takes the rest)."""
    whole = sum(shares.values())
    if not whole:
        acc["headers"] += total
        return
    given = 0
    for k, v in shares.items():
        part = total * v // whole
        acc[k] += part
        given += part
    acc[max(shares, key=shares.get)] += total - given


def _lossy(codec: str) -> bool:
    return codec in ("sq", "dq", "surp")


def breakdown(source: str | os.PathLike | bytes | BinaryIO) -> dict:
    """Byte categories of a file (see the module docstring), with the payload of lossy tensors and their
    weights: ``{"file_bytes", "categories": {...}, "overhead_bytes", "payload_bytes", "lossy_payload_bytes",
    "lossy_weights", "lossless_payload_bytes"}``."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            data = fh.read()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = source.read()
    acc: Counter = Counter()
    lossy = Counter()
    acc["framing"] += C.FILE_HEADER_SIZE
    pos = C.FILE_HEADER_SIZE
    current = None  # (codec, itemsize, chunk_elements, numel) of the tensor whose chunks follow
    while pos < len(data):
        rtype, _flags, length = struct.unpack_from("<HHQ", data, pos)
        payload = data[pos + C.RECORD_HEADER_SIZE : pos + C.RECORD_HEADER_SIZE + length]
        base = pos + C.RECORD_HEADER_SIZE
        acc["framing"] += C.RECORD_OVERHEAD
        if rtype in (C.REC_META, C.REC_ZMETA, C.REC_DMETA):
            acc["metadata"] += length
        elif rtype in (C.REC_GRAPH, C.REC_ZGRAPH, C.REC_XGRAPH):
            acc["graph"] += length
        elif rtype == C.REC_TENSOR:
            h = C.parse_tensor_header(payload, base)
            name = len(h.name.encode("utf-8"))
            acc["names"] += 2 + name
            config_len = len(C._config_json(h.codec_config, h.name))
            acc["headers"] += length - 2 - name - config_len
            _config_bytes(h.codec_config, acc, config_len)
            current = (h.codec_id, by_code(h.dtype_code).itemsize, h.chunk_elements, h.numel, 0)
        elif rtype == C.REC_CHUNK:
            codec, itemsize, per, numel, index = current
            pad = payload[8]
            acc["headers"] += 9 + pad
            count = min(per, numel - index * per)
            before = acc["payload"]
            _codec_data(codec, payload[9 + pad :], count, itemsize, acc)
            if _lossy(codec):
                lossy["payload"] += acc["payload"] - before
                lossy["weights"] += count
            current = (codec, itemsize, per, numel, index + 1)
        elif rtype == C.REC_SMALL:
            h, inline = C.parse_small(payload, base)
            name = len(h.name.encode("utf-8"))
            acc["names"] += 2 + name
            config_len = len(C._config_json(h.codec_config, h.name))
            acc["headers"] += length - len(inline) - 2 - name - config_len
            _config_bytes(h.codec_config, acc, config_len)
            before = acc["payload"]
            _codec_data(h.codec_id, bytes(inline), h.numel, by_code(h.dtype_code).itemsize, acc)
            if _lossy(h.codec_id):
                lossy["payload"] += acc["payload"] - before
                lossy["weights"] += h.numel
        elif rtype in C.PACK_TYPES:
            members, groups = C.parse_pack_record(rtype, payload, base)
            used = sum(len(g.data) for g in groups)
            _pack_groups_data(groups, acc, lossy)
            if rtype == C.REC_ZPACK:  # the deflated directory is split by the shares of its plain bytes
                plain = Counter()
                _pack_directory(members, groups, plain)
                _split(length - used, plain, acc)
            else:  # member fields, group codec ids, configs, lengths
                acc["headers"] += length - used - _names_and_stats(members, acc)
        elif rtype == C.REC_ALIAS:
            acc["names"] += length
        elif rtype == C.REC_INDEX:
            entries = C.parse_index(payload, base, None)
            names = sum(2 + len(e.name.encode("utf-8")) for e in entries)
            acc["names"] += names
            acc["index"] += length - names
        elif rtype == C.REC_TAIL:  # since 1.6: the compact index, then the file length and trailer (end)
            entries, file_length = C.parse_tail(payload, base, None)
            names = sum(len(C.leb128(len(e.name.encode("utf-8")))) + len(e.name.encode("utf-8")) for e in entries)
            end = len(C.leb128(file_length)) + C.TAIL_TRAILER_SIZE
            acc["names"] += names
            acc["end"] += end
            acc["index"] += length - names - end
        elif rtype == C.REC_END:
            acc["end"] += length + C.RECORD_OVERHEAD
            acc["framing"] -= C.RECORD_OVERHEAD
        else:
            acc["headers"] += length
        pos += C.RECORD_OVERHEAD + length
    cats = {k: int(acc.get(k, 0)) for k in CATEGORIES}
    total = sum(cats.values())
    assert total == len(data), (total, len(data), cats)
    payload_bytes = cats["payload"]
    return {
        "file_bytes": len(data),
        "categories": cats,
        "payload_bytes": payload_bytes,
        "overhead_bytes": len(data) - payload_bytes,
        "overhead_fraction": (len(data) - payload_bytes) / len(data) if data else 0.0,
        "lossy_payload_bytes": int(lossy["payload"]),
        "lossy_weights": int(lossy["weights"]),
        "lossless_payload_bytes": payload_bytes - int(lossy["payload"]),
        "lossy_bits_per_weight": 8 * int(lossy["payload"]) / int(lossy["weights"]) if lossy["weights"] else None,
    }


__all__ = ["breakdown", "CATEGORIES"]
