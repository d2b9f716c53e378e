"""Field-level mutation of PACK and ZPACK records (formats 1.3 and 1.5) and DMETA records (1.5), for the
file harnesses, next to the mutators of ``rdcfuzz.py`` and ``fieldmut.py``.

A ZPACK record keeps its directory (member names, dtypes, dims, group numbers, codec ids and
configurations, group data lengths) deflated with the preset dictionary; byte-level mutations of the
record only ever reach the inflater and its checks. So the directory is inflated, parsed leniently into
fields, mutated, serialised and deflated again *with the preset dictionary*
(``rdformat.format.records.PRESET_DICT``): the mutation reaches the PACK parser and the group decoders
behind the deflate layer. A few mutations damage the deflate layer itself (declared sizes, a stream
without the dictionary, truncated, trailing bytes) or convert PACK <-> ZPACK. The group data is mutated
codec-aware (``fieldmut.mutate_codec_data``: bytesplit planes incl. modes 4 and 5, sq/dq levels) or
re-encoded *validly* for the members' current dims with the library's own lossless encoders, so that
consistent files with changed members reach the decoders.

Like the other mutator modules it keeps its own lenient parser of the layout (spec sections 1.5 and 2.6);
only encoders are taken from rdformat (to produce valid group data and the preset dictionary).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

import fieldmut as M
import rdcfuzz as F
from rdcfuzz import (REC_CHUNK, REC_DMETA, REC_META, REC_PACK, REC_SMALL, REC_ZMETA, REC_ZPACK, RdcFile, Record,
                     mutate_bytes, pick)

MAX_DIRECTORY = 1 << 22  # a ZPACK directory is at most 4 MiB (spec 1.5); inflating more is not needed


def _preset() -> bytes:
    from rdformat.format.records import PRESET_DICT  # noqa: PLC0415 - normative bytes, spec 1.5

    return PRESET_DICT


def deflate(data: bytes, level: int = 9, dictionary: bool = True) -> bytes:
    """A raw deflate stream (no zlib header) of ``data``, primed with the preset dictionary by default."""
    args = (level, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY) + ((_preset(),) if dictionary else ())
    co = zlib.compressobj(*args)
    return co.compress(data) + co.flush()


def inflate(stream: bytes, cap: int = MAX_DIRECTORY) -> bytes | None:
    """The raw deflate ``stream`` inflated with the preset dictionary (at most ``cap`` bytes), None if corrupt."""
    try:
        return zlib.decompressobj(-15, zdict=_preset()).decompress(stream, cap)
    except zlib.error:
        return None


# ------------------------------------------------------------------------------------------------
# PACK directory as fields (spec 2.6)


def parse_pack(payload: bytes, compressed: bool) -> dict | None:
    """A PACK or ZPACK payload as editable fields, or None where even the member count does not parse.

    ``members``: ``[shared, suffix, dtype byte, rank or None (= len(dims)), dims, group, stats bytes]``;
    ``groups``: ``[codec id (b"" = repeat the previous group's), config, data, length delta]``; ``extra``:
    bytes after the last group (in a ZPACK: after the directory). Fields the parser could not reach are
    left out, so a damaged payload is re-serialised shorter (still worth mutating)."""
    region = b""
    if compressed:
        try:
            size, pos = M.read_leb(payload, 0)
            zlen, pos = M.read_leb(payload, pos)
        except ValueError:
            return None
        directory = inflate(payload[pos : pos + zlen])
        if directory is None:
            return None
        region = payload[pos + zlen :]
    else:
        directory = payload
    d = dict(members=[], groups=[], n=None, g=None, extra=b"", compressed=compressed, zsize_delta=0)
    b = directory
    try:
        n, pos = M.read_leb(b, 0)
        for _ in range(min(n, 4096)):
            shared, pos = M.read_leb(b, pos)
            ln, pos = M.read_leb(b, pos)
            suffix = b[pos : pos + ln]
            pos += ln
            flags, rank = b[pos], b[pos + 1]
            pos += 2
            dims = []
            for _r in range(rank):
                v, pos = M.read_leb(b, pos)
                dims.append(v)
            group, pos = M.read_leb(b, pos)
            stats = b""
            if flags & 0x80:
                stats = b[pos : pos + 6]
                pos += 6
            d["members"].append([shared, suffix, flags, None, dims, group, stats])
        g, pos = M.read_leb(b, pos)
        for _ in range(min(g, 4096)):
            cn = b[pos]
            codec = b[pos + 1 : pos + 1 + cn]
            pos += 1 + cn
            cfg = b""
            if cn:
                cl, pos = M.read_leb(b, pos)
                cfg = b[pos : pos + cl]
                pos += cl
            size, pos = M.read_leb(b, pos)
            if compressed:
                data, region = region[:size], region[size:]
            else:
                data = b[pos : pos + size]
                pos += size
            d["groups"].append([codec, cfg, data, 0])
        d["extra"] = b[pos:]
    except (IndexError, ValueError):
        pass
    if not d["members"]:
        return None
    d["region_extra"] = region  # ZPACK: data bytes after the last group's
    return d


def directory_bytes(d: dict, with_data: bool) -> bytes:
    """The PACK directory of ``d`` (with the group data bytes inline for a PACK record)."""
    out = [M.leb(len(d["members"]) if d["n"] is None else d["n"])]
    for shared, suffix, flags, rank, dims, group, stats in d["members"]:
        out += [M.leb(shared), M.leb(len(suffix)), suffix,
                bytes([flags & 0xFF, (len(dims) if rank is None else rank) & 0xFF]),
                b"".join(M.leb(v) for v in dims), M.leb(group), stats]
    out.append(M.leb(len(d["groups"]) if d["g"] is None else d["g"]))
    for codec, cfg, data, delta in d["groups"]:
        out.append(bytes([len(codec) & 0xFF]) + codec)
        if codec:
            out.append(M.leb(len(cfg)) + cfg)
        out.append(M.leb(max(0, len(data) + delta)) + (data if with_data else b""))
    out.append(d["extra"])
    return b"".join(out)


def build_pack(d: dict, zlayer: dict | None = None) -> bytes:
    """A PACK payload, or for ``d["compressed"]`` a ZPACK payload (directory deflated with the preset
    dictionary, then the group data); ``zlayer`` damages the deflate layer on purpose (see ``m_zlayer``)."""
    if not d["compressed"]:
        return directory_bytes(d, True)
    z = zlayer or {}
    directory = directory_bytes(d, False)
    stream = deflate(directory, z.get("level", 9), z.get("dictionary", True))
    if z.get("zlib"):  # a zlib-wrapped stream where raw deflate belongs
        stream = zlib.compress(directory)
    if "cut" in z:
        stream = stream[: z["cut"] % (len(stream) + 1)]
    if "flip" in z and stream:
        b = bytearray(stream)
        b[z["flip"] % len(b)] ^= 1 << (z["flip"] % 8)
        stream = bytes(b)
    stream += z.get("after", b"")
    size = len(directory) + d["zsize_delta"] + z.get("size_delta", 0)
    zlen = len(stream) + z.get("zlen_delta", 0)
    return (M.leb(max(0, size), z.get("pad", 0)) + M.leb(max(0, zlen)) + stream
            + b"".join(g[2] for g in d["groups"]) + d.get("region_extra", b""))


def member_name(d: dict, i: int) -> bytes:
    prev = b""
    for shared, suffix, *_ in d["members"][: i + 1]:
        prev = prev[:shared] + suffix
    return prev


def group_shape(d: dict, gi: int) -> tuple[int | None, list[int]]:
    """(dtype code of the group's first member, numel of each member of group ``gi``)."""
    dtype, sizes = None, []
    for m in d["members"]:
        if m[5] == gi:
            dtype = m[2] & 0x3F if dtype is None else dtype
            sizes.append(F.numel(m[4]))
    return dtype, sizes


def group_codec(d: dict, gi: int) -> tuple[bytes, bytes]:
    """The codec id and configuration group ``gi`` has (a group with codec length 0 repeats the previous)."""
    for codec, cfg, _data, _delta in reversed(d["groups"][: gi + 1]):
        if codec:
            return codec, cfg
    return b"", b""


def fresh_group_data(rng: np.random.Generator, codec: bytes, cfg: bytes, dtype: int, sizes: list[int]) -> bytes | None:
    """Valid data for a group of members of ``sizes`` elements, by the library's lossless encoders (bytesplit
    with one segment per member: shifted exponent planes, joint planes; raw). None for other codecs."""
    from rdformat.codecs import codec_from_config  # noqa: PLC0415
    from rdformat.format.dtypes import by_code  # noqa: PLC0415
    from rdformat.errors import RdcError  # noqa: PLC0415

    count = sum(sizes)
    if codec not in (b"bytesplit", b"raw") or not 0 < count <= 1 << 15:
        return None
    try:
        info = by_code(dtype)
        config = M.parse_json(cfg)
        codec_obj = codec_from_config(codec.decode(), dict(config) if isinstance(config, list) else {})
    except (RdcError, ValueError, TypeError):
        return None
    if info.numpy is None:
        return None
    parts = []
    for n in sizes:  # members of different scales: what the shifted planes are for
        scale = float(pick(rng, [1e-3, 0.02, 0.3, 1.0, 40.0]))
        if np.dtype(info.numpy).kind in "fV" or info.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
            parts.append((rng.standard_normal(n) * scale).astype(np.float32).astype(info.numpy))
        elif np.dtype(info.numpy).kind == "b":
            parts.append(rng.integers(0, 2, n).astype(info.numpy))
        else:
            parts.append(rng.integers(0, 100, n).astype(info.numpy))
    elements = np.concatenate(parts) if parts else np.zeros(0, info.numpy)
    try:
        if codec == b"bytesplit" and len(sizes) > 1:
            return bytes(codec_obj.encode_chunk(elements, info, segments=[n for n in sizes if n]))
        return bytes(codec_obj.encode_chunk(elements, info))
    except Exception:  # noqa: BLE001 - the encoder refusing a mutated configuration is not a finding here
        return None


NAME_SUFFIXES = [b"", b"\xff", b"\xed\xa0\x80", b"x" * 1025, b"weight", b"a\x00b", b"../w"]


def mutate_member(rng: np.random.Generator, d: dict) -> None:
    ms = d["members"]
    i = int(rng.integers(len(ms)))
    m = ms[i]
    op = int(rng.integers(9))
    if op == 0:  # the shared prefix: over the previous name, 0, huge
        prev = len(member_name(d, i - 1)) if i else 0
        m[0] = pick(rng, [prev + 1, prev, 0, 1, 1024, 1 << 20, 1 << 63])
    elif op == 1:
        m[1] = pick(rng, NAME_SUFFIXES + [member_name(d, int(rng.integers(len(ms))))[m[0]:]])
    elif op == 2:  # dtype code, STRUCTURAL, STATS (with or without the statistics bytes)
        k = int(rng.integers(4))
        if k == 0:
            m[2] = (m[2] & 0xC0) | pick(rng, list(range(0, 17)) + [0x3F])
        elif k == 1:
            m[2] ^= 0x40
        else:
            m[2] ^= 0x80
            if rng.random() < 0.7:
                m[6] = struct.pack("<fH", pick(rng, [0.0, float("nan"), float("inf"), -1.0, 3e38]),
                                   int(rng.integers(65536))) if m[2] & 0x80 else b""
    elif op == 3:
        m[3] = pick(rng, [0, 1, 64, 65, 255, len(m[4]) + 1, max(len(m[4]) - 1, 0)])
    elif op == 4 and m[4]:
        j = int(rng.integers(len(m[4])))
        m[4][j] = M.rand_leb_value(rng, around=m[4][j])
    elif op == 5:  # a consistent bomb: huge dims, small data
        m[4] = [pick(rng, [1 << 20, 1 << 26, 1 << 28, 1 << 31, 1 << 40, (1 << 63) - 1])] + \
            ([pick(rng, [0, 1, 3])] if rng.random() < 0.5 else [])
    elif op == 6:  # small dims changes (the group data then often re-encoded, below)
        m[4] = [int(rng.integers(0, 9)) for _ in range(int(rng.integers(0, 3)))]
    elif op == 7:
        m[5] = pick(rng, [0, 1, m[5] + 1, max(m[5] - 1, 0), len(d["groups"]), len(ms), 1 << 40])
    else:  # member list edits: drop, duplicate, swap, move to a new group
        r = rng.random()
        if r < 0.3 and len(ms) > 1:
            del ms[i]
        elif r < 0.6:
            ms.insert(i, list(m[:4]) + [list(m[4]), m[5], m[6]])
        elif r < 0.8 and len(ms) > 1:
            j = int(rng.integers(len(ms)))
            ms[i], ms[j] = ms[j], ms[i]
        else:
            m[5] = len(d["groups"])
            d["groups"].append([b"raw", b"{}", b"", 0])


def mutate_group(rng: np.random.Generator, d: dict) -> None:
    gs = d["groups"]
    if not gs:
        gs.append([b"raw", b"{}", b"", 0])
    gi = int(rng.integers(len(gs)))
    g = gs[gi]
    dtype, sizes = group_shape(d, gi)
    codec, cfg = group_codec(d, gi)
    op = int(rng.integers(8))
    if op == 0:  # codec id: repeat (length 0, also in group 0), progressive, unknown, another
        g[0] = pick(rng, [b"", b"surp", b"raw", b"bytesplit", b"sq", b"dq", b"x" * 64, b"x" * 65, b"RAW"])
        if g[0] and not g[1]:
            g[1] = b"{}"
    elif op == 1:
        if g[0]:
            g[1] = M.mutate_config(rng, g[1], g[0].decode("ascii", "replace"))
        else:  # a repeating group given its own codec again
            g[0], g[1] = codec or b"raw", cfg or b"{}"
    elif op in (2, 3, 4):  # the data, codec-aware (planes of modes 0-5, sq/dq levels)
        g[2] = M.mutate_codec_data(rng, codec, g[2], sum(sizes), dtype if dtype is not None else 0)
    elif op == 5:  # declared length off by one / far off (PACK: shifts the rest; ZPACK: the data region)
        g[3] = pick(rng, [-1, 1, -len(g[2]), 1 << 20, (1 << 22) + 1])
    elif op == 6:  # drop or duplicate a group
        if rng.random() < 0.5 and len(gs) > 1:
            del gs[gi]
        else:
            gs.insert(gi, list(g))
    else:
        data = fresh_group_data(rng, codec, cfg, dtype if dtype is not None else 0, sizes)
        if data is not None:
            g[2] = data


def m_pack(rng: np.random.Generator, f: RdcFile) -> bool:
    """PACK / ZPACK record fields: members (names, dtype byte, STRUCTURAL and STATS bits, rank, dims, group),
    groups (codec, configuration, data codec-aware or valid re-encoded, lengths), counts, trailing bytes; a
    ZPACK is re-deflated with the preset dictionary so that the edit reaches the PACK parser."""
    idx = F._records_of(f, REC_PACK, REC_ZPACK)
    if not idx:
        return False
    rec = f.records[pick(rng, idx)]
    d = parse_pack(rec.payload, rec.rtype == REC_ZPACK)
    if d is None:
        rec.payload = mutate_bytes(rng, rec.payload)
        return True
    r = rng.random()
    if r < 0.35:
        mutate_member(rng, d)
        if rng.random() < 0.5:  # keep the changed member's group decodable: fresh valid data for it
            gi = int(rng.integers(len(d["groups"]))) if d["groups"] else 0
            if d["groups"]:
                dtype, sizes = group_shape(d, gi)
                codec, cfg = group_codec(d, gi)
                data = fresh_group_data(rng, codec, cfg, dtype if dtype is not None else 0, sizes)
                if data is not None:
                    d["groups"][gi][2] = data
    elif r < 0.8:
        mutate_group(rng, d)
    elif r < 0.88:
        k = int(rng.integers(3))
        if k == 0:
            d["n"] = pick(rng, [0, 1, len(d["members"]) + 1, max(len(d["members"]) - 1, 0), 1 << 40])
        elif k == 1:
            d["g"] = pick(rng, [0, 1, len(d["groups"]) + 1, max(len(d["groups"]) - 1, 0), len(d["members"]) + 1])
        else:
            d["extra"] = pick(rng, [b"\x00", b"junk", b"\x01\x00"])
    elif r < 0.94:  # PACK <-> ZPACK (flags kept: REQUIRED), or a ZPACK's data region with extra bytes
        if rng.random() < 0.7:
            d["compressed"] = not d["compressed"]
            rec.rtype = REC_ZPACK if d["compressed"] else REC_PACK
        else:
            d["region_extra"] = pick(rng, [b"\x00", b"junk"])
    else:
        return m_zlayer(rng, f, rec, d)
    rec.payload = build_pack(d)
    return True


def m_zlayer(rng: np.random.Generator, f: RdcFile, rec: Record | None = None, d: dict | None = None) -> bool:
    """The deflate layer of a ZPACK record: declared directory size / deflated length off, a non-canonical
    size varint, a stream without the preset dictionary or with a zlib wrapper, truncated, a flipped bit,
    bytes after the stream, another compression level."""
    if rec is None:
        idx = F._records_of(f, REC_ZPACK)
        if not idx:
            return False
        rec = f.records[pick(rng, idx)]
        d = parse_pack(rec.payload, True)
        if d is None:
            rec.payload = mutate_bytes(rng, rec.payload)
            return True
    d["compressed"] = True
    rec.rtype = REC_ZPACK
    z: dict = {}
    k = int(rng.integers(8))
    if k == 0:
        z["size_delta"] = pick(rng, [-1, 1, 1 << 22, (1 << 22) + 1, 1 << 40])
    elif k == 1:
        z["zlen_delta"] = pick(rng, [-1, 1, 2, 1 << 20])
    elif k == 2:
        z["dictionary"] = False
    elif k == 3:
        z["zlib"] = True
    elif k == 4:
        z["cut"] = int(rng.integers(1 << 16))
    elif k == 5:
        z["flip"] = int(rng.integers(1 << 16))
    elif k == 6:
        z["after"] = pick(rng, [b"\x00", b"\x03\x00", b"junk"])
    else:
        z["pad"] = pick(rng, [1, 2, 9])
        z["level"] = int(rng.integers(0, 10))
    rec.payload = build_pack(d, z)
    return True


# ------------------------------------------------------------------------------------------------
# DMETA (spec 1.5): varint size, raw deflate of the META text with the preset dictionary


def dmeta_payload(rng: np.random.Generator, text: bytes) -> bytes:
    """A DMETA payload of ``text``, sometimes inconsistent on purpose (size, stream, dictionary)."""
    size, pad = len(text), 0
    stream = deflate(text, int(rng.integers(0, 10)))
    r = rng.random()
    if r < 0.05:
        size = pick(rng, [size + 1, max(size - 1, 0), 0, 64 << 20, (64 << 20) + 1, 1 << 63, (1 << 64) - 1])
    elif r < 0.08:
        stream = stream[: int(rng.integers(len(stream) + 1))]
    elif r < 0.10:
        stream += pick(rng, [b"\x00", b"junk", stream])
    elif r < 0.12:
        stream = deflate(text, 9, dictionary=False)
    elif r < 0.13:
        stream = zlib.compress(text)
    elif r < 0.15:
        pad = pick(rng, [1, 2, 9])
    elif r < 0.17 and stream:
        b = bytearray(stream)
        b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
        stream = bytes(b)
    return M.leb(size, pad) + stream


def m_dmeta(rng: np.random.Generator, f: RdcFile) -> bool:
    """DMETA records: the text (JSON value-level edits through ``fieldmut``, or texts that are not
    objects), its deflate layer, bombs (1 MiB+ from a few hundred bytes), conversion from/to META and
    compressed META, a second metadata record."""
    idx = F._records_of(f, REC_META, REC_ZMETA, REC_DMETA)
    if not idx:
        if rng.random() < 0.5:
            return False
        f.records.insert(0, Record(REC_DMETA, 1, dmeta_payload(rng, b'{"model":"x"}')))
        return True
    rec = f.records[pick(rng, idx)]
    text = M.meta_text(f) or b"{}"
    r = rng.random()
    if r < 0.5:
        value = M.parse_json(text)
        for _ in range(int(rng.integers(1, 3))):
            value = M.mutate_value(rng, value)
        text = M.jbytes(value, rng)
    elif r < 0.6:
        text = pick(rng, F.META_TEXTS + [b"[" * 100000, b" " * ((1 << 20) + 1) + b"{}",
                                          b'{"a":"' + b"x" * 300000 + b'"}'])
    if rng.random() < 0.9:
        rec.rtype, rec.flags, rec.payload = REC_DMETA, 1 if rng.random() < 0.95 else 0, dmeta_payload(rng, text)
    else:
        rec.rtype, rec.flags, rec.payload = REC_META, 0, text
    if rng.random() < 0.03:  # two metadata records
        f.records.insert(int(rng.integers(len(f.records) + 1)), rec.copy())
    return True


# ------------------------------------------------------------------------------------------------
# chunks of a file (for the codec harnesses' seeds and the seed checks)


def coded_chunks(f: RdcFile):
    """(codec id, dtype code, element count, data) of every CHUNK, SMALL record and PACK/ZPACK group."""
    for i, rec in enumerate(f.records):
        if rec.rtype == REC_CHUNK and len(rec.payload) >= 9:
            t = f.tensor_of(i)
            if t is None or not t["ce"]:
                continue
            index, pad = struct.unpack_from("<QB", rec.payload)
            count = min(t["ce"], F.numel(t["dims"]) - index * t["ce"])
            yield t["codec"], t["dtype"], count, rec.payload[9 + pad :]
        elif rec.rtype == REC_SMALL:
            t = M.parse_small(rec.payload)
            if t is not None and F.numel(t["dims"]):
                yield t["codec"], t["dtype"], F.numel(t["dims"]), t["data"]
        elif rec.rtype in (REC_PACK, REC_ZPACK):
            d = parse_pack(rec.payload, rec.rtype == REC_ZPACK)
            for gi, g in enumerate(d["groups"] if d else []):
                dtype, sizes = group_shape(d, gi)
                codec, _cfg = group_codec(d, gi)
                if sum(sizes) and dtype is not None:
                    yield codec, dtype, sum(sizes), g[2]


def group_seeds(files: list[bytes], codec_id: str) -> list[bytes]:
    """Codec harness inputs made from the PACK/ZPACK groups of ``files`` that use ``codec_id``."""
    out = []
    for data in files:
        f = RdcFile.parse(data)
        for rec in f.records:
            if rec.rtype not in (REC_PACK, REC_ZPACK):
                continue
            d = parse_pack(rec.payload, rec.rtype == REC_ZPACK)
            for gi, g in enumerate(d["groups"] if d else []):
                dtype, sizes = group_shape(d, gi)
                codec, cfg = group_codec(d, gi)
                if codec.decode("ascii", "replace") == codec_id and sum(sizes) and dtype is not None:
                    out.append(F.pack_codec_input(dtype, sum(sizes), cfg, g[2]))
    return out


#: Mutators of this module (weights), added to the file harnesses' mutator sets.
MUTATORS = [(0.14, m_pack), (0.03, m_zlayer), (0.05, m_dmeta)]
