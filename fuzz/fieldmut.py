"""Field-level mutation of what sits *inside* records: metadata JSON, SMALL records, codec
configurations and the lossy codecs' chunk payloads (``sq``/``dq`` level payloads with their tables
and CLASSES, ``surp`` segments). Used by ``harnesses.py`` and ``tests/test_fuzz_smoke.py``.

Like ``rdcfuzz.py`` it keeps its own parsers (LEB128, JSON re-encoding with raw tokens, level and
segment layouts from ``spec/rdc-v1.md``): it does not trust rdformat to tell it what a file says.
Every mutation re-serialises the structure with its lengths recomputed (config length varints, CLASSES
part lengths, segment and block lengths, zlib size fields) and the file with its CRCs recomputed, so
the mutation reaches the decoders. Only ``rdformat.entropy`` is used, through ``rdcfuzz``, to produce
*valid* ANS blocks for mutated tables.

Every function takes a ``numpy.random.Generator``: the same seed gives the same mutations.

One module on purpose (over 500 lines): its parsers and mutators for metadata, SMALL records, configs
and codec payloads share one re-serialisation step (lengths and CRCs recomputed).
"""

from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np

import rdcfuzz as F
from rdcfuzz import (REC_CHUNK, REC_GRAPH, REC_META, REC_SMALL, REC_TENSOR, REC_ZGRAPH, REC_ZMETA, Record,
                     RdcFile, Table, mutate_bytes, pick, rand_u64)

MAX_INPUT = F.MAX_INPUT

# ------------------------------------------------------------------------------------------------
# LEB128 (lenient: up to 10 bytes, non-canonical forms accepted so they can be mutated further)


def read_leb(b: bytes, pos: int, end: int | None = None, max_bytes: int = 10) -> tuple[int, int]:
    end = len(b) if end is None else end
    v = 0
    for k in range(max_bytes):
        if pos + k >= end:
            raise ValueError("eof")
        v |= (b[pos + k] & 0x7F) << (7 * k)
        if b[pos + k] < 0x80:
            return v, pos + k + 1
    raise ValueError("long")


def leb(v: int, pad: int = 0) -> bytes:
    """LEB128 of ``v`` (mod 2**70), with ``pad`` redundant continuation bytes (non-canonical)."""
    v %= 1 << 70
    out = bytearray(F.varint(v))
    if pad:
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


def rand_leb_value(rng: np.random.Generator, around: int | None = None) -> int:
    r = rng.random()
    if r < 0.1:
        return pick(rng, [(1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, (1 << 70) - 1])
    return rand_u64(rng, around)


# ------------------------------------------------------------------------------------------------
# JSON with raw tokens and duplicate keys


class Raw(str):
    """A JSON text written as is (may be invalid JSON on purpose: 1e999, NaN, 0x10, deep nesting...)."""


class Pairs(list):
    """A JSON object as a list of [key, value] pairs: order kept, keys may repeat."""


_ESC_ASCII = json.encoder.encode_basestring_ascii
_ESC_UTF8 = json.encoder.encode_basestring


def jtext(v, ascii_only: bool = True) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, str):
        return _ESC_ASCII(v) if ascii_only else _ESC_UTF8(v)
    if isinstance(v, Pairs):
        return "{" + ",".join(jtext(k, ascii_only) + ":" + jtext(x, ascii_only) for k, x in v) + "}"
    if isinstance(v, dict):
        return "{" + ",".join(jtext(k, ascii_only) + ":" + jtext(x, ascii_only) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(jtext(x, ascii_only) for x in v) + "]"
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, int):  # grown past Python's 4300-digit str limit by stacked mutations: a 4301-digit token
        return int.__repr__(v) if v.bit_length() < 14000 else ("-" if v < 0 else "") + "9" * 4301
    if isinstance(v, float):
        if v != v:
            return "NaN"
        if v in (math.inf, -math.inf):
            return "Infinity" if v > 0 else "-Infinity"
        return float.__repr__(v)
    return _ESC_ASCII(str(v))


def jbytes(v, rng: np.random.Generator | None = None) -> bytes:
    ascii_only = rng is None or rng.random() < 0.7
    try:
        text = jtext(v, ascii_only)
    except RecursionError:  # grown too deep by stacked wraps: keep it deep, as a raw text
        text = "[" * 2000 + "]" * 2000
    if rng is not None and rng.random() < 0.05:
        text = pick(rng, [" ", "\t", "\r\n", "\ufeff", "\x00", "x"]) + text if rng.random() < 0.5 else \
            text + pick(rng, [" ", "\n", "{}", "x", "\x00", ","])
    return text.encode("utf-8", "surrogatepass")


def parse_json(b: bytes):
    """The JSON value of ``b`` with objects as :class:`Pairs` (None when ``b`` is not JSON, or is
    over 16 KB: large texts are replaced rather than edited, to keep mutation fast)."""
    if len(b) > 16384:
        return None
    try:
        value = json.loads(bytes(b).decode("utf-8"), object_pairs_hook=lambda kv: Pairs([list(p) for p in kv]))
        jtext(value)  # deep texts stay opaque: they come back only as Raw nesting
        return value
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


NUM_TOKENS = ["0", "-0", "-0.0", "1", "-1", "0.5", "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1e-400",
              "5e-324", "2.2250738585072014e-308", "1.7976931348623157e308", "1.7976931348623159e308",
              str(1 << 31), str(1 << 32), str((1 << 63) - 1), str(1 << 63), str((1 << 64) - 1), str(1 << 64),
              str(-(1 << 63)), "1" + "0" * 400, "9" * 4300, "9" * 4301, "-" + "9" * 4300, "3.0", "3e0", "0.1e1",
              "1E2", "01", "1.", ".5", "+1", "0x10", "1_000", "0.99999999999999999", "0.9999999999999999",
              "1e308", "1e-320"]
STRINGS = ["", "a", "\u00fc\u00df", "\u202e", "\ud800", "\udfff", "\x00", "a\x00b", "\ufeff", "\U0001F600",
           "\u2028", "x" * 1025, "\u00e9" * 600, "pt", "none", "rotl1", "rotl2", "../x", "/etc/passwd",
           "C:\\x", "con", "\\\\server\\share"]
FILE_NAMES = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "a.safetensors",
              "../x.safetensors", "/tmp/x.safetensors", "a/b.safetensors", "a\\b.safetensors", "C:x.safetensors",
              ".hidden.safetensors", "model.safetensors.index.json", "x.safetensors\x00y", ".safetensors", "",
              "x" * 300 + ".safetensors", "x.SAFETENSORS", "input.rdc", "..", ".", "con.safetensors",
              "x:y.safetensors", "\u00fc.safetensors", "x\n.safetensors", "x.safetensors ", "x.npz", 7, None,
              ["a.safetensors"]]


def deep_nesting(rng: np.random.Generator) -> Raw:
    n = pick(rng, [32, 63, 64, 65, 200, 800, 1000, 3000, 20000])
    kind = int(rng.integers(4))
    if kind == 0:
        return Raw("[" * n + "]" * n)
    if kind == 1:
        return Raw('{"a":' * n + "1" + "}" * n)
    if kind == 2:
        return Raw('[{"a":' * (n // 2) + "[]" + "}]" * (n // 2))
    return Raw("[" * n)  # unterminated


def rand_scalar(rng: np.random.Generator):
    r = int(rng.integers(8))
    if r == 0:
        return Raw(pick(rng, NUM_TOKENS))
    if r == 1:
        return pick(rng, STRINGS)
    if r == 2:
        return pick(rng, [True, False, None])
    if r == 3:
        return pick(rng, [0, 1, -1, 2, 7, 1 << 31, (1 << 63) - 1, 1 << 64, -(1 << 70)])
    if r == 4:
        return pick(rng, [0.0, -0.0, 0.5, 1.0, 1e-300, 1e300, math.inf, -math.inf, math.nan, 5e-324])
    if r == 5:
        return pick(rng, FILE_NAMES)
    if r == 6:
        return float(rng.normal())
    return int(rng.integers(-5, 100))


def rand_value(rng: np.random.Generator, depth: int = 0):
    r = rng.random()
    if depth > 3 or r < 0.55:
        return rand_scalar(rng)
    if r < 0.7:
        return [rand_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    if r < 0.85:
        return Pairs([[pick(rng, ["a", "", "rdformat", "\u00fc", "x" * 70, "stats", "step"]), rand_value(rng, depth + 1)]
                      for _ in range(int(rng.integers(0, 4)))])
    if r < 0.95:
        return deep_nesting(rng)
    return [rand_scalar(rng)] * int(pick(rng, [100, 1000, 3000]))  # wide


def _nodes(v, out: list, depth: int = 0) -> list:
    """(container, key) of every value below ``v`` (key: list index, or pair index for Pairs), down to
    a depth of 40 and at most 5000 of them."""
    if depth > 40 or len(out) > 5000:
        return out
    if isinstance(v, Pairs):
        for i, (_k, x) in enumerate(v):
            out.append((v, i))
            _nodes(x, out, depth + 1)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out.append((v, i))
            _nodes(x, out, depth + 1)
    return out


def _get(c, i):
    return c[i][1] if isinstance(c, Pairs) else c[i]


def _set(c, i, x) -> None:
    if isinstance(c, Pairs):
        c[i][1] = x
    else:
        c[i] = x


def mutate_value(rng: np.random.Generator, root):
    """One value-level mutation somewhere in ``root`` (returns the new root)."""
    nodes = _nodes(root, [])
    if not nodes or rng.random() < 0.05:
        return rand_value(rng) if rng.random() < 0.5 else Pairs([["a", rand_value(rng)]])
    c, i = nodes[int(rng.integers(len(nodes)))]
    old = _get(c, i)
    op = int(rng.integers(10))
    if op == 0:
        _set(c, i, rand_scalar(rng))
    elif op == 1:  # same type, boundary value
        if isinstance(old, bool) or old is None:
            _set(c, i, pick(rng, [0, 1, "true", not old if isinstance(old, bool) else None]))
        elif isinstance(old, int):
            _set(c, i, pick(rng, [old + 1, old - 1, -old, 0, 1 << 63, (1 << 64) + old, old * (1 << 40)]))
        elif isinstance(old, float):
            _set(c, i, pick(rng, [old * 2, -old, old + 1e-12, math.nextafter(old, math.inf), 0.0, math.inf,
                                  math.nan, old * 1e300]))
            if rng.random() < 0.3:
                _set(c, i, Raw(repr(old) + "e999"))
        elif isinstance(old, str):
            _set(c, i, pick(rng, [old + "\u00fc", old + "\x00", old * 2, old[:-1], old.upper(), "../" + old,
                                  old + "/x", "\ud800" + old, ""]))
        else:
            _set(c, i, rand_value(rng))
    elif op == 2:  # delete
        del c[i]
    elif op == 3 and isinstance(c, Pairs):  # duplicate key with another value (last one counts)
        c.insert(i + int(rng.integers(2)), [c[i][0], rand_value(rng)])
    elif op == 4 and isinstance(c, Pairs):  # rename key
        c[i][0] = pick(rng, [c[i][0] + "x", "", c[i][0].upper(), "\u00fc", "rdformat", c[i][0] + "\x00"])
    elif op == 5:
        _set(c, i, deep_nesting(rng))
    elif op == 6:  # wrap or unwrap
        _set(c, i, [old] if rng.random() < 0.5 else Pairs([["v", old]]))
    elif op == 7:  # copy another node's value here (lists of names, partitions...)
        _c2, _i2 = nodes[int(rng.integers(len(nodes)))]
        try:
            _set(c, i, _get(_c2, _i2))
        except (IndexError, TypeError):
            pass
    elif op == 8 and isinstance(old, list) and old:  # list edits: drop, duplicate, reverse an item
        j = int(rng.integers(len(old)))
        new = list(old)
        if rng.random() < 0.4:
            del new[j]
        elif rng.random() < 0.6:
            new.insert(j, new[j])
        else:
            new.reverse()
        _set(c, i, new)
    else:
        _set(c, i, rand_value(rng))
    return root


# ------------------------------------------------------------------------------------------------
# the reserved "rdformat" metadata key (spec appendix A) with adapter fields


def _dense_strides(shape: list[int], rng: np.random.Generator) -> list[int]:
    order = list(range(len(shape)))
    rng.shuffle(order)
    strides = [0] * len(shape)
    acc = 1
    for d in reversed(order):
        strides[d] = acc
        acc *= max(shape[d], 1)
    return strides


def adapter_meta(rng: np.random.Generator, tensors: list[tuple[str, list[int]]], valid: bool = False) -> Pairs:
    """A metadata object with an ``"rdformat"`` entry for a file holding ``tensors`` (name, dims);
    with ``valid`` it follows appendix A, else fields are perturbed."""
    names = [n for n, _ in tensors] or ["w"]
    fmt = pick(rng, ["pytorch", "safetensors", "safetensors-sharded", "onnx", "npz"])
    if not valid and rng.random() < 0.1:
        fmt = pick(rng, ["other", "", 1, None, ["pytorch"], "PYTORCH"])
    info = Pairs([["source_format", fmt], ["adapter_version", 1 if valid or rng.random() < 0.8 else
                                          pick(rng, [0, 2, "1", True, 1 << 64, 1.0])]])
    if rng.random() < 0.5:
        info.append(["source_name", pick(rng, ["model.pt", "x.safetensors", "../../etc/passwd", "", "\x00"])])
    if fmt == "pytorch":
        shaped = [(n, s) for n, s in tensors if len(s) >= 2]
        if shaped and rng.random() < 0.8:
            chosen = [shaped[int(rng.integers(len(shaped)))]]
            info.append(["strides", Pairs([[n, _dense_strides(s, rng)] for n, s in chosen])])
        if rng.random() < 0.5:
            info.append(["extra_entries", Pairs([["_extra_state", pick(rng, [1, "x", [1, 2], Pairs([["a", 1]])])]])])
        if rng.random() < 0.6:
            keys = list(names) + [k for k, _ in (info[-1][1] if info[-1][0] == "extra_entries" else [])]
            rng.shuffle(keys)
            info.append(["key_order", keys])
        if rng.random() < 0.5:
            info.append(["state_dict_metadata", [["", Pairs([["version", 1]])], ["fc", Pairs([["version", 2]])]]])
        if rng.random() < 0.3:
            info.append(["folded_pruning", names[:1]])
        if rng.random() < 0.3:
            info.append(["checkpoint_key", "state_dict"])
    elif fmt in ("safetensors", "safetensors-sharded"):
        if rng.random() < 0.6:
            info.append(["safetensors_metadata", Pairs([["format", "pt"]])])
        if fmt == "safetensors-sharded" or rng.random() < 0.2:
            k = int(rng.integers(1, min(3, len(names)) + 1))
            parts = [[] for _ in range(k)]
            for j, n in enumerate(names):
                parts[j % k].append(n)
            info.append(["index_metadata", Pairs([["total_size", 0], ["x", "y"]])])
            info.append(["shards", [Pairs([["file", f"model-{j + 1:05d}-of-{k:05d}.safetensors"],
                                           ["metadata", Pairs([["format", "pt"]]) if j == 0 else None],
                                           ["tensors", parts[j]]]) for j in range(k)]])
    elif fmt == "onnx":
        info.append(["ir_version", 8])
        info.append(["opset_import", Pairs([["ai.onnx", 17]])])
        info.append(["external_data", pick(rng, [True, False])])
        info.append(["tensor_count", len(names)])
    if rng.random() < 0.3:  # recorded rate-control sensitivity (read by `rdc info`)
        info.append(["sensitivity", Pairs([["index", list(range(len(names)))],
                                           ["relative", [1.0] * len(names)]])])
    meta = Pairs([["rdformat", info]])
    if rng.random() < 0.3:
        meta.insert(0, ["user", pick(rng, ["x", 1, [1, 2], Pairs([["a", "b"]])])])
    if not valid:
        for _ in range(int(rng.integers(0, 3))):
            meta = mutate_adapter_field(rng, meta, names)
    return meta


def mutate_adapter_field(rng: np.random.Generator, meta: Pairs, names: list[str]) -> Pairs:
    """Perturb one adapter field of ``meta["rdformat"]`` in the ways appendix A says readers must survive."""
    info = None
    for kv in meta:
        if kv[0] == "rdformat" and isinstance(kv[1], Pairs):
            info = kv[1]
    if info is None:
        return mutate_value(rng, meta)
    name = pick(rng, names) if names else "w"
    op = int(rng.integers(10))
    if op == 0:  # shard names: paths, duplicates, the index's own name, the input...
        shards = [kv[1] for kv in info if kv[0] == "shards" and isinstance(kv[1], list)]
        if shards and shards[0] and isinstance(shards[0][0], Pairs):
            s = pick(rng, shards[0])
            if isinstance(s, Pairs):
                s.append(["file", pick(rng, FILE_NAMES)])
        else:
            info.append(["shards", [Pairs([["file", pick(rng, FILE_NAMES)], ["tensors", names]])]])
    elif op == 1:  # strides: not dense, negative, bools, huge, wrong rank, wrong names
        info.append(["strides", Pairs([[pick(rng, [name, "missing", ""]), pick(rng, [
            [1], [0, 0], [-1, 1], [True, 1], [1 << 63, 1], [1, 1 << 62], [2, 1], [1, 2, 3], "x", None,
            [1.0, 1], [1 << 64, 1], list(range(70))])]])])
    elif op == 2:
        info.append(["key_order", pick(rng, [names[::-1], names + names[:1], names[1:], [1, 2], "x",
                                             names + ["extra"], [None] * len(names)])])
    elif op == 3:
        info.append(["extra_entries", pick(rng, [Pairs([[name, 1]]), [1], "x", Pairs([["e", deep_nesting(rng)]]),
                                                 Pairs([["e", [0] * 1000]])])])
    elif op == 4:
        info.append(["state_dict_metadata", pick(rng, [Pairs([["", Pairs([["version", 1]])]]), [["a"]], [1, 2],
                                                       "x", [[1, 2]], [["a", deep_nesting(rng)]]])])
    elif op == 5:
        info.append(["safetensors_metadata", pick(rng, [Pairs([["format", 1]]), "pt", [1], Pairs([["a", "\x00"]]),
                                                        Pairs([["\ud800", "x"]]), None])])
    elif op == 6:
        info.append(["index_metadata", pick(rng, [[1], "x", Pairs([["total_size", "big"]]),
                                                  Pairs([["deep", deep_nesting(rng)]]), None, 1 << 64])])
    elif op == 7:
        info.append(["external_data", pick(rng, [True, 1, "true", None, [True]])])
        info.append(["source_format", pick(rng, ["onnx", "safetensors-sharded", "pytorch"])])
    elif op == 8:
        info.append(["sensitivity", pick(rng, [
            Pairs([["index", [0, 1 << 40, -1]], ["relative", [1.0, 2.0, 3.0]]]),
            Pairs([["index", [0]], ["relative", []]]), Pairs([["index", "x"], ["relative", [1]]]),
            Pairs([["index", [0, 0, 0]], ["relative", [Raw("NaN"), Raw("-1e999"), True]]]), [1, 2], "x",
            Pairs([["index", list(range(5000))], ["relative", [1e308] * 5000]])])])
    else:
        info.append(["source_format", pick(rng, ["pytorch", "safetensors", "safetensors-sharded", "onnx", "npz",
                                                 "x", None, 1])])
    return meta


# ------------------------------------------------------------------------------------------------
# metadata records (META, compressed META) and compressed GRAPH


def zpayload(rng: np.random.Generator, text: bytes, prefix: bytes = b"") -> bytes:
    """``prefix`` + u64 size + zlib stream of ``text``, sometimes inconsistent on purpose."""
    size = len(text)
    stream = zlib.compress(text, int(rng.integers(0, 10)))
    r = rng.random()
    if r < 0.04:
        size = pick(rng, [size + 1, max(size - 1, 0), 0, 64 << 20, (64 << 20) + 1, 1 << 31, (1 << 64) - 1])
    elif r < 0.07:
        stream = stream[: int(rng.integers(len(stream) + 1))]
    elif r < 0.09:
        stream += pick(rng, [b"\x00", b"junk", stream])
    elif r < 0.11 and len(stream) > 2:
        b = bytearray(stream)
        b[int(rng.integers(2, len(b)))] ^= 1 << int(rng.integers(8))
        stream = bytes(b)
    elif r < 0.12:
        stream = bytes([stream[0], stream[1] | 0x20]) + stream[2:]  # FDICT
    elif r < 0.13:  # raw DEFLATE without the zlib wrapper
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        stream = c.compress(text) + c.flush()
    return prefix + struct.pack("<Q", size % (1 << 64)) + stream


def _inflate(b: bytes, cap: int = 1 << 20) -> bytes | None:
    try:
        d = zlib.decompressobj()
        return d.decompress(b, cap)
    except zlib.error:
        return None


def meta_text(f: RdcFile) -> bytes | None:
    """The file's metadata text: a META record's, or inflated from a compressed META or a DMETA record."""
    for r in f.records:
        if r.rtype == REC_META:
            return r.payload
        if r.rtype == REC_ZMETA:
            return _inflate(r.payload[8:])
        if r.rtype == F.REC_DMETA:  # varint size, raw deflate with the preset dictionary
            try:
                _size, pos = read_leb(r.payload, 0)
            except ValueError:
                return None
            from rdformat.format.records import PRESET_DICT  # noqa: PLC0415 - normative bytes (spec 1.5)

            try:
                return zlib.decompressobj(-15, zdict=PRESET_DICT).decompress(r.payload[pos:], 1 << 20)
            except zlib.error:
                return None
    return None


def file_tensors(f: RdcFile) -> list[tuple[str, list[int]]]:
    out = []
    for r in f.records:
        t = F.parse_tensor(r.payload) if r.rtype == REC_TENSOR else parse_small(r.payload) if r.rtype == REC_SMALL \
            else None
        if t is not None:
            out.append((t["name"].decode("utf-8", "replace"), list(t["dims"])))
    return out


def set_meta(rng: np.random.Generator, f: RdcFile, text: bytes) -> None:
    """Replace the file's metadata record by ``text`` (plain or compressed), usually where it belongs."""
    at = 0
    for i, r in enumerate(f.records):
        if r.rtype in (REC_META, REC_ZMETA, F.REC_DMETA):
            at = i
            break
    if rng.random() < 0.92:
        f.records = [r for r in f.records if r.rtype not in (REC_META, REC_ZMETA, F.REC_DMETA)]
    else:  # two metadata records, or metadata out of place
        at = int(rng.integers(len(f.records) + 1))
    r = rng.random()
    if r < 0.3:  # DMETA (1.5): what rdformat writes for small metadata; its deflate layer is packmut's
        import packmut  # noqa: PLC0415 - packmut imports this module

        rec = Record(F.REC_DMETA, 1, packmut.dmeta_payload(rng, text))
    elif r < 0.6:
        rec = Record(REC_ZMETA, 1 if rng.random() < 0.95 else 0, zpayload(rng, text))
    else:
        rec = Record(REC_META, 0 if rng.random() < 0.95 else 1, text)
    f.records.insert(min(at, len(f.records)), rec)


def m_meta_json(rng: np.random.Generator, f: RdcFile) -> bool:
    """Value-level mutation of the metadata JSON (adapter fields included), re-encoded as a plain or
    compressed META record."""
    tensors = file_tensors(f)
    old = meta_text(f)
    value = parse_json(old) if old is not None else None
    r = rng.random()
    if value is None or r < 0.25:
        value = adapter_meta(rng, tensors, valid=rng.random() < 0.3)
    elif r < 0.5:
        value = mutate_adapter_field(rng, value if isinstance(value, Pairs) else Pairs([["rdformat", Pairs()]]),
                                     [n for n, _ in tensors])
    else:
        for _ in range(int(rng.integers(1, 4))):
            value = mutate_value(rng, value)
    text = jbytes(value, rng)
    if len(text) > MAX_INPUT and rng.random() < 0.7:
        text = text[:MAX_INPUT]
    set_meta(rng, f, text)
    return True


def m_zrecord(rng: np.random.Generator, f: RdcFile) -> bool:
    """Compressed META/GRAPH records: convert plain <-> compressed, bombs, damaged streams, sizes."""
    idx = F._records_of(f, REC_META, REC_GRAPH, REC_ZMETA, REC_ZGRAPH)
    if not idx:
        if rng.random() < 0.5:
            return False
        big = pick(rng, [b"[" * 100000, b'{"a":"' + b"x" * 300000 + b'"}', b"[" + b"1," * 100000 + b"1]",
                         b'{"a":' + b"[1]," * 1 + b"0}", b" " * ((1 << 20) + 1)])
        f.records.insert(0, Record(REC_ZMETA, 1, zpayload(rng, big)))
        return True
    i = pick(rng, idx)
    rec = f.records[i]
    if rec.rtype in (REC_META, REC_ZMETA):
        text = rec.payload if rec.rtype == REC_META else (_inflate(rec.payload[8:]) or b"{}")
        if rng.random() < 0.2:
            text = pick(rng, [b"[" * 200000, b" " * (1 << 20) + b"{}", b'{"a":"' + b"\\u00fc" * 50000 + b'"}'])
        rec.rtype, rec.flags = (REC_ZMETA, 1) if rng.random() < 0.7 else (REC_META, 0)
        rec.payload = zpayload(rng, text) if rec.rtype == REC_ZMETA else text
    else:
        if rec.rtype == REC_GRAPH:
            n = struct.unpack_from("<H", rec.payload)[0] if len(rec.payload) >= 2 else 0
            fmt, blob = rec.payload[: 2 + n], rec.payload[2 + n :]
        else:
            n = struct.unpack_from("<H", rec.payload)[0] if len(rec.payload) >= 2 else 0
            fmt, blob = rec.payload[: 2 + n], _inflate(rec.payload[2 + n + 8 :]) or b""
        if rng.random() < 0.3:
            fmt = F.str16(pick(rng, [b"onnx", b"", b"\xff", b"x" * 65, b"ONNX"]))
        if rng.random() < 0.2:
            blob = pick(rng, [b"\x00" * 2000000, mutate_bytes(rng, blob), b""])
        if rng.random() < 0.7:
            rec.rtype, rec.flags, rec.payload = REC_ZGRAPH, 1, zpayload(rng, blob, fmt)
        else:
            rec.rtype, rec.flags, rec.payload = REC_GRAPH, 0, fmt + blob
    return True


# ------------------------------------------------------------------------------------------------
# codec configurations

VALID_CONFIGS = {
    "raw": [Pairs()],
    "bytesplit": [Pairs([["transform", "rotl1"]]), Pairs([["transform", "none"]]), Pairs()],
    "sq": [Pairs([["step", 0.01]]), Pairs([["offset1", 0.3], ["offset2", 0.1], ["stats", Pairs([["err", 0.01],
                                                                                                ["sparsity", 0.5]])],
                                           ["step", 0.02]])],
    "dq": [Pairs([["chain", 256], ["step", 0.01]]), Pairs([["chain", 1], ["stats", Pairs()], ["step", 1.5]])],
    "surp": [Pairs([["decay", 0.5], ["norm", 2.0], ["offset", 0.5], ["seed", 0], ["t0", 0.25], ["umax", 0.45]]),
             Pairs([["decay", 0.9], ["norm", 1.0], ["offset", 0.0], ["seed", 3], ["t0", 0.05], ["umax", 1.0]])],
}
#: Boundary values per key (numbers around each range end, wrong types, tokens).
KEY_VALUES = {
    "step": [0, -0.0, 5e-324, 1e-300, 1e300, 1.7976931348623157e308, -1.0, 1, Raw("1e999"), Raw("NaN"), Raw("1e-400")],
    "offset1": [0, 0.999999999999, 1, 1.0, -0.0, -1e-300, 0.5, Raw("1e-400"), Raw("NaN")],
    "offset2": [0, 0.9999999999999999, 1, 1.0000000000000002, -5e-324, 0.5],
    "chain": [0, 1, 2, 3, 1024, 1025, -1, 1.0, Raw("1e2"), Raw("2.0"), 1 << 63, 1 << 64, Raw("9" * 4300),
              Raw("9" * 5000), True],
    "norm": [0, -0.0, 1e308, 1.7976931348623157e308, -1e-300, 5e-324, Raw("1e999")],
    "t0": [0, 5e-324, 1e-310, 1e308, -1.0, 1, Raw("NaN")],
    "decay": [0, 5e-324, 1e-300, 0.5, 0.9999999999999999, 1, 1.0, 1e-160],
    "umax": [0, 5e-324, 1e308, -1.0, 1e-300],
    "offset": [0, 1, 1.0, 1.0000000000000002, -0.0, 0.5],
    "seed": [0, 1, (1 << 64) - 1, 1 << 64, -1, 1.0, Raw("1e3"), Raw("18446744073709551615"), True],
    "transform": ["rotl1", "none", "rotl2", "", None, 1, "ROTL1", "rotl1\x00"],
    "stats": [Pairs(), 1, "x", None, [1, 2], Raw("NaN"), Raw("1e999"), Raw("9" * 5000)],
}


def rand_config(rng: np.random.Generator, codec: str) -> Pairs:
    base = VALID_CONFIGS.get(codec) or [Pairs()]
    return Pairs([list(kv) for kv in pick(rng, base)])


def mutate_config_value(rng: np.random.Generator, cfg, codec: str):
    if not isinstance(cfg, Pairs) or rng.random() < 0.1:
        cfg = rand_config(rng, codec if rng.random() < 0.9 else pick(rng, list(VALID_CONFIGS)))
    keys = [k for k, _ in cfg]
    op = int(rng.integers(8))
    if op <= 2 and keys:  # boundary value of a known key
        i = int(rng.integers(len(cfg)))
        cfg[i][1] = pick(rng, KEY_VALUES.get(cfg[i][0], [rand_scalar(rng)]))
    elif op == 3 and keys:
        del cfg[int(rng.integers(len(cfg)))]
    elif op == 4:  # unknown or informational key
        cfg.append([pick(rng, ["stats", "x", "", "Step", "step ", "\u00fc", "offset3"]), rand_value(rng)])
    elif op == 5 and keys:  # duplicate key: first one valid, last one not (or the reverse)
        i = int(rng.integers(len(cfg)))
        cfg.insert(i + int(rng.integers(2)), [cfg[i][0], pick(rng, KEY_VALUES.get(cfg[i][0], [1]))])
    elif op == 6:
        cfg = mutate_value(rng, cfg)
    else:  # a value of any type
        if keys:
            cfg[int(rng.integers(len(cfg)))][1] = rand_value(rng)
    return cfg


def mutate_config(rng: np.random.Generator, cfg: bytes, codec: str) -> bytes:
    """Codec-aware mutation of a configuration JSON text (re-encoded)."""
    if rng.random() < 0.05:
        return pick(rng, F.CONFIGS)
    return jbytes(mutate_config_value(rng, parse_json(cfg), codec), rng)


# ------------------------------------------------------------------------------------------------
# sq / dq level payloads (spec 5.3, 5.4)


def parametric_freqs(radix: int, q: int, p0: int, theta: int) -> list[int] | None:
    """The spec 5.3 parametric table (own implementation), or None if the parameters are invalid."""
    if not (2 <= radix <= 1024 and 8 <= q <= 16 and 1 <= p0 <= 65535 and 1 <= theta <= 65535) or radix > 1 << q:
        return None
    total = 1 << q
    f0 = max(1, min(total - (radix - 1), (p0 * total) >> 16))
    rest = total - f0 - (radix - 1)
    w = [0, 1 << 24]
    for _ in range(2, (radix >> 1) + 2):
        w.append((w[-1] * theta) >> 16)
    mags = [(z + 1) >> 1 for z in range(1, radix)]
    wsum = sum(w[m] for m in mags)
    f = [1] * radix
    for z, m in zip(range(1, radix), mags):
        f[z] = 1 + ((rest * w[m]) // wsum if wsum else 0)
    f[0] = total - sum(f[1:])
    return f


def parse_levels(b: bytes) -> dict | None:
    try:
        mode = b[0]
        if mode == 0:
            return {"mode": 0, "rest": b[1:]}
        if mode in (1, 2):
            k, radix = b[1], struct.unpack_from("<I", b, 2)[0]
            if mode == 1:
                table, pos = Table.parse(b, 6)
                return {"mode": 1, "k": k, "radix": radix, "table": table, "block": b[pos:]}
            q, p0, theta = struct.unpack_from("<BHH", b, 6)
            return {"mode": 2, "k": k, "radix": radix, "q": q, "p0": p0, "theta": theta, "block": b[11:]}
        if mode == 3:
            g, nk = struct.unpack_from("<IB", b, 1)
            parts, pos = [], 6
            while pos + 4 <= len(b) and len(parts) < 16:
                n = struct.unpack_from("<I", b, pos)[0]
                if pos + 4 + n > len(b):
                    break
                parts.append(b[pos + 4 : pos + 4 + n])
                pos += 4 + n
            return {"mode": 3, "g": g, "k": nk, "parts": parts, "rest": b[pos:]}
    except (IndexError, ValueError, struct.error):
        return None
    return None


def build_levels(d: dict) -> bytes:
    m = d["mode"]
    if m == 0:
        return b"\x00" + d.get("rest", b"")
    if m == 1:
        return bytes([1, d["k"] & 0xFF]) + struct.pack("<I", d["radix"] % (1 << 32)) + d["table"].to_bytes() + d["block"]
    if m == 2:
        return (bytes([2, d["k"] & 0xFF]) + struct.pack("<I", d["radix"] % (1 << 32))
                + struct.pack("<BHH", d["q"] & 0xFF, d["p0"] & 0xFFFF, d["theta"] & 0xFFFF) + d["block"])
    if m == 3:
        return (bytes([3]) + struct.pack("<IB", d["g"] % (1 << 32), d["k"] & 0xFF)
                + b"".join(struct.pack("<I", len(p)) + p for p in d["parts"]) + d.get("rest", b""))
    return bytes([m & 0xFF]) + d.get("rest", b"")


def _encode(values: np.ndarray, ft, lanes: int | None) -> bytes | None:
    """ANS block of ``values`` (lane count clamped to the symbols), None if the encoder refuses."""
    from rdformat.entropy import ans

    if lanes is not None:
        lanes = min(lanes, values.size) or None
    try:
        return ans.encode(values, ft, lanes=lanes)
    except Exception:  # noqa: BLE001 - a mutator never fails; the decoder is what is tested
        return None


def _level_block(rng: np.random.Generator, freqs_or_table, syms, q: int, n: int, k: int, radix: int) -> bytes | None:
    """A valid ANS block of ``n`` group symbols; when possible the last group's padding digits are zero."""
    from rdformat.entropy import FrequencyTable

    if n > 1 << 16:
        return None
    try:
        ft = FrequencyTable(q, syms, freqs_or_table)
    except Exception:  # noqa: BLE001 - an invalid table has no valid block
        return None
    p = ft.freqs / ft.freqs.sum()
    values = rng.choice(ft.symbols, size=n, p=p) if n else np.zeros(0, np.uint32)
    return _encode(values, ft, pick(rng, [None, None, 1, 2, 3]))


def fresh_levels(rng: np.random.Generator, count: int) -> dict:
    """A new, usually valid, level payload for ``count`` levels."""
    mode = int(rng.integers(3))
    if mode == 0 or count == 0:
        return {"mode": 0}
    if mode == 1:
        k = pick(rng, [1, 1, 2, 4])
        radix = pick(rng, [2, 3, 5, 16])
        if radix ** k > 65536:
            k = 1
        nsym = radix ** k
        syms = sorted({0, *[int(x) for x in rng.integers(0, nsym, 3)]})
        t = Table(12, syms, [1] * len(syms))
        t.fix_sum()
        n = -(-count // k)
        blk = _level_block(rng, t.freqs, t.syms, t.q, n, k, radix) or b""
        return {"mode": 1, "k": k, "radix": radix, "table": t, "block": blk}
    radix, q = pick(rng, [2, 3, 9, 64, 1024]), pick(rng, [8, 12, 16])
    p0, theta = int(rng.integers(1, 65536)), int(rng.integers(1, 65536))
    f = parametric_freqs(radix, q, p0, theta)
    blk = _level_block(rng, f, list(range(radix)), q, count, 1, radix) if f else b""
    return {"mode": 2, "k": 1, "radix": radix, "q": q, "p0": p0, "theta": theta, "block": blk or b""}


def mutate_levels(rng: np.random.Generator, data: bytes, count: int, classes: bool, depth: int = 0) -> bytes:
    """Field-level mutation of an ``sq`` level payload (or ``dq`` CLASSES when ``classes``)."""
    d = parse_levels(data)
    if d is None or rng.random() < 0.06:
        if rng.random() < 0.5:
            return mutate_bytes(rng, data)
        d = fresh_levels(rng, count)
        return build_levels(d)
    m = d["mode"]
    op = int(rng.integers(8))
    if op == 0:  # another mode, fresh content
        if classes and rng.random() < 0.3 and depth == 0:
            g = pick(rng, [1, 2, 7, max(1, count // 3), count, count + 1])
            nseg = -(-count // max(g, 1)) if count else 0
            kk = pick(rng, [2, 3, 8])
            cls = [int(x) for x in rng.integers(0, kk, nseg)]
            mp = {"mode": 1, "k": 1, "radix": kk, "table": Table(8, list(range(kk)), [1] * kk), "block": b""}
            mp["table"].fix_sum()
            mp["block"] = _level_block(rng, mp["table"].freqs, mp["table"].syms, 8, nseg, 1, kk) or b""
            parts = []
            for c in range(kk):
                nc = sum(min(g, count - s * g) for s in range(nseg) if cls[s] == c)
                parts.append(build_levels(fresh_levels(rng, nc)))
            return build_levels({"mode": 3, "g": g, "k": kk, "parts": [build_levels(mp)] + parts})
        if rng.random() < 0.2:
            return bytes([pick(rng, [3, 4, 0x80, 0xFF])]) + data[1:]
        return build_levels(fresh_levels(rng, count))
    if m == 0:
        d["rest"] = pick(rng, [b"", b"\x00", b"\x01"])
    elif m in (1, 2):
        if op == 1:
            d["k"] = pick(rng, [0, 1, 2, 3, 8, 9, 255])
        elif op == 2:
            k = max(1, d["k"])
            edge = int(round(65536 ** (1 / k))) if k <= 16 else 2
            d["radix"] = pick(rng, [0, 1, 2, 3, 255, 256, 1024, 1025, 65535, 65536, (1 << 32) - 1, edge, edge + 1,
                                    d["radix"] + 1, max(d["radix"] - 1, 0)])
        elif op == 3 and m == 1:
            d["table"].mutate(rng)
            if rng.random() < 0.6:
                t = d["table"]
                blk = _level_block(rng, t.freqs, t.syms, t.q, -(-count // max(d["k"], 1)), d["k"], d["radix"])
                if blk is not None:
                    d["block"] = blk
        elif op == 3:
            key = pick(rng, ["q", "p0", "theta"])
            d[key] = pick(rng, {"q": [0, 7, 8, 9, 15, 16, 17, 255], "p0": [0, 1, 2, 32768, 65535],
                                "theta": [0, 1, 2, 32768, 65534, 65535]}[key])
            if rng.random() < 0.6:
                f = parametric_freqs(d["radix"], d["q"], d["p0"], d["theta"])
                if f is not None:
                    d["block"] = _level_block(rng, f, list(range(d["radix"])), d["q"], count, 1, d["radix"]) or b""
        elif op in (4, 5):
            d["block"] = F.mutate_block(rng, d["block"], -(-count // max(d["k"], 1)))
        else:  # a fresh valid block for the current model
            if m == 1:
                t = d["table"]
                blk = _level_block(rng, t.freqs, t.syms, t.q, -(-count // max(d["k"], 1)), d["k"], d["radix"])
            else:
                f = parametric_freqs(d["radix"], d["q"], d["p0"], d["theta"])
                blk = _level_block(rng, f, list(range(d["radix"])), d["q"], count, 1, d["radix"]) if f else None
            if blk is not None:
                d["block"] = blk
    elif m == 3:
        if op == 1:
            d["g"] = pick(rng, [0, 1, 2, count, count + 1, max(count - 1, 1), 1 << 20, (1 << 20) + 1, (1 << 32) - 1])
        elif op == 2:
            d["k"] = pick(rng, [0, 1, 2, 3, 8, 9, 255])
        elif op in (3, 4, 5) and d["parts"]:
            i = int(rng.integers(len(d["parts"])))
            nseg = -(-count // d["g"]) if d["g"] else count
            d["parts"][i] = mutate_levels(rng, d["parts"][i], nseg if i == 0 else max(1, count // max(d["k"], 1)),
                                          False, depth + 1)
        elif op == 6 and d["parts"]:
            i = int(rng.integers(len(d["parts"])))
            if rng.random() < 0.5:
                del d["parts"][i]
            else:
                d["parts"].insert(i, d["parts"][i])
        else:
            d["rest"] = pick(rng, [b"", b"\x00", struct.pack("<I", 1 << 31), struct.pack("<I", 5) + b"\x00"])
    out = build_levels(d)
    if rng.random() < 0.03:
        out = out[: int(rng.integers(len(out) + 1))]
    return out


# ------------------------------------------------------------------------------------------------
# surp chunk data (spec 5.5.4): segments of pieces, table, ANS block, raw bits

SURP_NSYM, SURP_ESC = 51, 20


def geometric_freqs(j: int) -> list[int]:
    """G(j) of spec 5.5.4 (own implementation)."""
    f = [1] * SURP_NSYM
    a = 4096 * (256 - j)
    for q in range(SURP_ESC):
        f[q] = max(1, a >> 8)
        a = (a * j) >> 8
    f[0] -= sum(f) - 4096
    return f


def parse_surp(b: bytes) -> tuple[list[dict], bytes]:
    """Segments (dict: pieces [[delta, flags, count]], tmode, targ, block, raw) and unparsed tail."""
    segs, pos = [], 0
    while pos < len(b) and len(segs) < 64:
        try:
            body_len, p = read_leb(b, pos, max_bytes=9)
            end = p + body_len
            if end > len(b):
                break
            n, p = read_leb(b, p, end)
            if n > 4096:
                break
            pieces = []
            for _ in range(n):
                delta, p = read_leb(b, p, end)
                flags = b[p]
                cnt, p = read_leb(b, p + 1, end)
                pieces.append([delta, flags, cnt])
            tmode = b[p]
            p += 1
            targ = None
            if tmode == 0:
                targ, p = Table.parse(b[:end], p)
            elif tmode == 2:
                targ = b[p]
                p += 1
            elif tmode != 1:
                break
            blen, p = read_leb(b, p, end)
            if p + blen > end:
                break
            segs.append({"pieces": pieces, "tmode": tmode, "targ": targ, "block": b[p : p + blen],
                         "raw": b[p + blen : end]})
            pos = end
        except (IndexError, ValueError, struct.error):
            break
    return segs, b[pos:]


def build_segment(s: dict) -> bytes:
    body = bytearray(leb(len(s["pieces"]) if s.get("npieces") is None else s["npieces"]))
    for delta, flags, cnt in s["pieces"]:
        body += leb(delta) + bytes([flags & 0xFF]) + leb(cnt)
    body.append(s["tmode"] & 0xFF)
    if s["tmode"] == 0 and isinstance(s["targ"], Table):
        body += s["targ"].to_bytes()
    elif s["tmode"] == 2 and s["targ"] is not None:
        body.append(int(s["targ"]) & 0xFF)
    body += leb(len(s["block"]) + s.get("blen_delta", 0)) + s["block"] + s["raw"]
    return leb(len(body) + s.get("len_delta", 0)) + bytes(body)


def _segment_table(segs: list[dict], i: int) -> tuple[int, list[int], list[int]] | None:
    for j in range(i, -1, -1):
        s = segs[j]
        if s["tmode"] == 0 and isinstance(s["targ"], Table):
            return s["targ"].q, s["targ"].syms, s["targ"].freqs
        if s["tmode"] == 2 and s["targ"] is not None:
            jj = int(s["targ"])
            return (12, list(range(SURP_NSYM)), geometric_freqs(jj)) if 1 <= jj <= 255 else None
        if s["tmode"] != 1:
            return None
    return None


def surp_refill(rng: np.random.Generator, segs: list[dict], i: int) -> None:
    """Give segment ``i`` a valid ANS block for its pieces' counts and raw bits of the right length
    (zero padding), so that the replay code is reached."""
    from rdformat.entropy import FrequencyTable

    s = segs[i]
    m = sum(c for _, _, c in s["pieces"])
    tab = _segment_table(segs, i)
    if tab is None or m > 1 << 14:
        return
    try:
        ft = FrequencyTable(*tab)
    except Exception:  # noqa: BLE001
        return
    syms = ft.symbols[ft.symbols < SURP_NSYM]
    if syms.size == 0:
        return
    p = ft.freqs[: syms.size] / ft.freqs[: syms.size].sum()
    values = rng.choice(syms, size=m, p=p) if m else np.zeros(0, np.uint32)
    blk = _encode(values, ft, pick(rng, [None, 1, 2]))
    if blk is None:
        return
    s["block"] = blk
    bits, v = 0, 0
    for _delta, flags, cnt in s["pieces"]:
        k = flags >> 2
        for _ in range(cnt):
            sym = int(values[v])
            v += 1
            bits += k + (sym - SURP_ESC if sym >= SURP_ESC else 0)
    signs = sum(cnt for _, flags, cnt in s["pieces"] if flags & 1)
    total = bits + signs
    raw = bytearray(rng.integers(0, 256, (total + 7) // 8, dtype=np.uint8).tobytes())
    if rng.random() < 0.5:  # small raw fields keep ranks inside the domain
        raw = bytearray(len(raw))
    if total % 8 and raw:
        raw[-1] &= (1 << (total % 8)) - 1
    s["raw"] = bytes(raw)


def fresh_segment(rng: np.random.Generator, count: int, first_pass: int) -> dict:
    pieces = []
    for _ in range(int(rng.integers(1, 4))):
        pieces.append([int(rng.integers(0, 2)) if pieces or first_pass else int(rng.integers(0, 3)),
                       (int(rng.integers(0, 4)) << 2) | int(rng.integers(0, 4)),
                       int(rng.integers(1, max(2, min(count, 8))))])
    tmode = pick(rng, [2, 2, 0, 1])
    targ = int(rng.integers(1, 256)) if tmode == 2 else Table(12, list(range(6)), [3000, 600, 300, 100, 60, 36]) \
        if tmode == 0 else None
    return {"pieces": pieces, "tmode": tmode, "targ": targ, "block": b"", "raw": b""}


def mutate_surp(rng: np.random.Generator, data: bytes, count: int) -> bytes:
    """Field-level mutation of a ``surp`` chunk's segments, lengths recomputed."""
    segs, tail = parse_surp(data)
    if (not segs and rng.random() < 0.5) or rng.random() < 0.05:
        return mutate_bytes(rng, data)
    if not segs or rng.random() < 0.08:
        segs.append(fresh_segment(rng, count, len(segs)))
        surp_refill(rng, segs, len(segs) - 1)
        return b"".join(build_segment(s) for s in segs) + tail
    i = int(rng.integers(len(segs)))
    s = segs[i]
    op = int(rng.integers(12))
    refill = rng.random() < 0.6
    if op == 0 and s["pieces"]:
        pc = pick(rng, s["pieces"])
        pc[0] = pick(rng, [0, 1, 2, 4095, 4096, pc[0] + 1, (1 << 63) - 1, 1 << 63])
    elif op == 1 and s["pieces"]:
        pc = pick(rng, s["pieces"])
        sub = int(rng.integers(4))
        if sub == 0:
            pc[1] ^= 1  # class NEW <-> REFINE
        elif sub == 1:
            pc[1] ^= 2  # END
        else:
            pc[1] = (pc[1] & 3) | (pick(rng, [0, 1, 2, 20, 30, 31, 63]) << 2)
    elif op == 2 and s["pieces"]:
        pc = pick(rng, s["pieces"])
        pc[2] = pick(rng, [0, 1, 2, pc[2] + 1, max(pc[2] - 1, 0), count, count + 1, 4096, 4097, 1 << 40])
    elif op == 3:  # add or remove a piece
        if s["pieces"] and rng.random() < 0.4:
            del s["pieces"][int(rng.integers(len(s["pieces"])))]
        else:
            s["pieces"].insert(int(rng.integers(len(s["pieces"]) + 1)),
                               [int(rng.integers(0, 3)), int(rng.integers(0, 256)), int(rng.integers(1, 5))])
    elif op == 4:  # table mode
        s["tmode"] = pick(rng, [0, 1, 2, 3, 255])
        s["targ"] = pick(rng, [0, 1, 64, 200, 255]) if s["tmode"] == 2 else \
            Table(12, list(range(SURP_NSYM)), [1] * SURP_NSYM) if s["tmode"] == 0 else None
        if isinstance(s["targ"], Table):
            s["targ"].fix_sum()
    elif op == 5 and s["tmode"] == 0 and isinstance(s["targ"], Table):
        s["targ"].mutate(rng)
        if rng.random() < 0.3:
            s["targ"].syms = [min(x, pick(rng, [50, 51, 52, 255])) for x in s["targ"].syms]
    elif op == 6:
        s["block"] = F.mutate_block(rng, s["block"], sum(c for _, _, c in s["pieces"]))
        refill = False
    elif op == 7:  # raw bits: short, long, nonzero padding, flipped
        r = bytearray(s["raw"])
        k = int(rng.integers(4))
        if k == 0 and r:
            del r[-1]
        elif k == 1:
            r.append(pick(rng, [0, 1, 0x80]))
        elif r:
            r[int(rng.integers(len(r)))] ^= 1 << int(rng.integers(8))
        s["raw"] = bytes(r)
        refill = False
    elif op == 8:  # segment order: drop, duplicate, swap
        if len(segs) > 1 and rng.random() < 0.4:
            del segs[i]
        elif rng.random() < 0.5:
            segs.insert(i, {**s, "pieces": [list(p) for p in s["pieces"]]})
        elif len(segs) > 1:
            j = int(rng.integers(len(segs)))
            segs[i], segs[j] = segs[j], segs[i]
        refill = False
    elif op == 9:  # inconsistent lengths (rare on purpose)
        key = pick(rng, ["len_delta", "blen_delta", "npieces"])
        s[key] = pick(rng, [-1, 1, 2, 1 << 20]) if key != "npieces" else pick(rng, [0, len(s["pieces"]) + 1, 1 << 40])
        refill = False
    elif op == 10:
        tail = pick(rng, [b"", b"\x00", b"\x05", b"\xff" * 10, mutate_bytes(rng, tail)])
    else:
        segs.append(fresh_segment(rng, count, len(segs)))
        i = len(segs) - 1
        refill = True
    if refill and i < len(segs):
        surp_refill(rng, segs, i)
    out = b"".join(build_segment(x) for x in segs) + tail
    return out[:MAX_INPUT]


# ------------------------------------------------------------------------------------------------
# chunk data of any codec


def mutate_codec_data(rng: np.random.Generator, codec: bytes | str, data: bytes, count: int, dtype_code: int) -> bytes:
    codec = codec.decode("ascii", "replace") if isinstance(codec, bytes) else codec
    count = min(count, 1 << 16)  # what generated content is sized for (a bomb's count is not)
    if codec == "bytesplit" and dtype_code in F.ITEMSIZE:
        return F.mutate_planes(rng, data, count, F.ITEMSIZE[dtype_code])
    if codec in ("sq", "dq"):
        return mutate_levels(rng, data, count, codec == "dq")
    if codec == "surp":
        return mutate_surp(rng, data, count)
    return mutate_bytes(rng, data)


# ------------------------------------------------------------------------------------------------
# SMALL records (spec 2.5)


def parse_small(p: bytes) -> dict | None:
    try:
        n = struct.unpack_from("<H", p)[0]
        name = p[2 : 2 + n]
        if len(name) != n:
            return None
        pos = 2 + n
        dtype, rank, flags = struct.unpack_from("<HBB", p, pos)
        pos += 4
        dims = []
        for _ in range(rank):
            v, pos = read_leb(p, pos)
            dims.append(v)
        cn = p[pos]
        codec = p[pos + 1 : pos + 1 + cn]
        if len(codec) != cn:
            return None
        pos += 1 + cn
        cl, pos = read_leb(p, pos)
        cfg = p[pos : pos + cl]
        if len(cfg) != cl:
            return None
        return dict(name=name, dtype=dtype, rank=None, flags=flags, dims=dims, pads=[0] * rank, codec=codec, cfg=cfg,
                    cfg_delta=0, data=p[pos + cl :])
    except (IndexError, ValueError, struct.error):
        return None


def build_small(t: dict) -> bytes:
    rank = len(t["dims"]) if t.get("rank") is None else t["rank"]
    pads = t.get("pads") or [0] * len(t["dims"])
    return (struct.pack("<H", len(t["name"]) & 0xFFFF) + t["name"]
            + struct.pack("<HBB", t["dtype"] & 0xFFFF, rank & 0xFF, t["flags"] & 0xFF)
            + b"".join(leb(d, pad) for d, pad in zip(t["dims"], pads + [0] * len(t["dims"])))
            + bytes([len(t["codec"]) & 0xFF]) + t["codec"]
            + leb(max(0, len(t["cfg"]) + t.get("cfg_delta", 0))) + t["cfg"] + t["data"])


def _to_small(f: RdcFile) -> bool:
    """Turn a single-chunk TENSOR + CHUNK pair into a SMALL record (codec data carried over)."""
    for i, r in enumerate(f.records[:-1]):
        if r.rtype != REC_TENSOR:
            continue
        t = F.parse_tensor(r.payload)
        nxt = f.records[i + 1]
        if t is None or t["cc"] != 1 or nxt.rtype != REC_CHUNK or len(nxt.payload) < 9:
            continue
        pad = nxt.payload[8]
        s = dict(name=t["name"], dtype=t["dtype"], rank=None, flags=t["flags"], dims=t["dims"],
                 pads=[0] * len(t["dims"]), codec=t["codec"], cfg=t["cfg"], cfg_delta=0, data=nxt.payload[9 + pad :])
        f.records[i : i + 2] = [Record(REC_SMALL, 1, build_small(s))]
        return True
    return False


def _from_small(f: RdcFile, i: int, s: dict) -> None:
    """Turn SMALL record ``i`` into TENSOR + one CHUNK (the tensor's one chunk)."""
    n = F.numel(s["dims"])
    t = dict(name=s["name"], dtype=s["dtype"], flags=s["flags"], dims=s["dims"], ce=max(n, 1), cc=1 if n else 0,
             codec=s["codec"], cfg=s["cfg"], extra=b"", rank=None)
    recs = [Record(REC_TENSOR, 0, F.build_tensor(t))]
    if n:
        recs.append(Record(REC_CHUNK, 0, struct.pack("<QB", 0, 0) + s["data"]))
    f.records[i : i + 1] = recs


def m_small(rng: np.random.Generator, f: RdcFile) -> bool:
    """SMALL record fields: name, dtype, rank, flags, dims (varints, non-canonical, huge), codec id,
    codec config, data (codec-aware), REQUIRED flag; and conversions from/to TENSOR + CHUNK."""
    idx = F._records_of(f, REC_SMALL)
    if not idx or rng.random() < 0.08:
        if _to_small(f):
            return True
        if not idx:
            return False
    i = pick(rng, idx)
    rec = f.records[i]
    t = parse_small(rec.payload)
    if t is None:
        rec.payload = mutate_bytes(rng, rec.payload)
        return True
    op = int(rng.integers(14))
    n = F.numel(t["dims"])
    if op == 0:
        t["name"] = pick(rng, [b"", b"x" * 1025, b"\xff\xfe", pick(rng, F._tensor_names(f)), t["name"] + b"2", b"a\x00b",
                               b"../x", b"\xed\xa0\x80"])
    elif op == 1:
        t["dtype"] = pick(rng, list(range(0, 17)) + [0xFFFF, 255])
    elif op == 2 and t["dims"]:
        j = int(rng.integers(len(t["dims"])))
        t["dims"][j] = rand_leb_value(rng, around=t["dims"][j])
    elif op == 3:
        if rng.random() < 0.3:
            t["rank"] = pick(rng, [0, 1, 64, 65, 255, len(t["dims"]) + 1, max(len(t["dims"]) - 1, 0)])
        elif t["dims"] and rng.random() < 0.5:
            del t["dims"][int(rng.integers(len(t["dims"])))]
            t["pads"] = [0] * len(t["dims"])
        else:
            t["dims"].insert(int(rng.integers(len(t["dims"]) + 1)), pick(rng, [0, 1, 1, 2, 1 << 40]))
            t["pads"] = [0] * len(t["dims"])
    elif op == 4 and t["dims"]:  # a non-canonical varint dimension
        t["pads"][int(rng.integers(len(t["dims"])))] = pick(rng, [1, 2, 9])
    elif op == 5:
        t["flags"] = pick(rng, [0, 1, 2, 0xFF])
    elif op == 6:
        t["codec"] = pick(rng, F.CODEC_IDS + [b"surp", b"x" * 64, b"x" * 255])
    elif op in (7, 8):
        t["cfg"] = mutate_config(rng, t["cfg"], t["codec"].decode("ascii", "replace"))
    elif op == 9:
        t["cfg_delta"] = pick(rng, [-1, 1, 5, 1 << 20, (1 << 20) + 1, 1 << 62])
    elif op in (10, 11):
        t["data"] = mutate_codec_data(rng, t["codec"], t["data"], n, t["dtype"])
    elif op == 12:  # a consistent "bomb": huge dims, tiny data
        big = pick(rng, [1 << 20, 1 << 26, 1 << 28, 1 << 31, 1 << 40, (1 << 63) - 1])
        t["dims"] = [big] if rng.random() < 0.5 else [big, pick(rng, [0, 1, 3])]
        t["pads"] = [0] * len(t["dims"])
    else:
        if rng.random() < 0.5:
            rec.flags ^= 1  # REQUIRED cleared (a 1.0 reader would skip it) or set back
        else:
            _from_small(f, i, t)
            return True
    rec.payload = build_small(t)
    return True


# ------------------------------------------------------------------------------------------------
# TENSOR configs and codec-aware CHUNK data


def m_tensor_codec(rng: np.random.Generator, f: RdcFile) -> bool:
    """Codec-aware mutation of a TENSOR record's configuration (and sometimes its codec id)."""
    idx = F._records_of(f, REC_TENSOR)
    if not idx:
        return m_small(rng, f)
    rec = f.records[pick(rng, idx)]
    t = F.parse_tensor(rec.payload)
    if t is None:
        return False
    if rng.random() < 0.15:
        t["codec"] = pick(rng, [b"sq", b"dq", b"surp", b"bytesplit", b"raw"])
        if rng.random() < 0.7:
            t["cfg"] = jbytes(rand_config(rng, t["codec"].decode()))
    else:
        t["cfg"] = mutate_config(rng, t["cfg"], t["codec"].decode("ascii", "replace"))
    rec.payload = F.build_tensor(t)
    return True


def m_chunk_codec(rng: np.random.Generator, f: RdcFile) -> bool:
    """Codec-aware mutation of a CHUNK's data (sq/dq levels, surp segments, bytesplit planes)."""
    idx = F._records_of(f, REC_CHUNK)
    if not idx:
        return m_small(rng, f)
    i = pick(rng, idx)
    rec = f.records[i]
    t = f.tensor_of(i)
    p = rec.payload
    if t is None or len(p) < 9 or p[8] >= 64:
        return False
    index, pad = struct.unpack_from("<QB", p)
    n = F.numel(t["dims"])
    count = max(0, min(t["ce"], n - index * t["ce"])) if t["ce"] else 0
    data = mutate_codec_data(rng, t["codec"], p[9 + pad :], count, t["dtype"])
    rec.payload = p[: 9 + pad] + data
    return True


#: Mutators of the record contents this module adds (weights), used next to rdcfuzz.FILE_MUTATORS.
DEEP_MUTATORS = [(0.2, m_meta_json), (0.06, m_zrecord), (0.22, m_small), (0.14, m_tensor_codec),
                 (0.2, m_chunk_codec)]
#: Mutator sets of the file harnesses: everything, or a focus (metadata / SMALL and codec payloads).
FILE_MUTATORS_ALL = F.FILE_MUTATORS + [(w * 0.8, fn) for w, fn in DEEP_MUTATORS]
FILE_MUTATORS_META = [(0.6, m_meta_json), (0.15, m_zrecord), (0.1, F.m_record), (0.05, F.m_meta),
                      (0.05, F.m_tensor), (0.05, F.m_index)]
#: The adapters harness: files must stay loadable for the metadata to matter, so mostly metadata edits.
FILE_MUTATORS_ADAPTERS = [(0.85, m_meta_json), (0.08, m_zrecord), (0.04, F.m_alias), (0.03, F.m_tensor)]
FILE_MUTATORS_SMALL = [(0.45, m_small), (0.15, m_tensor_codec), (0.2, m_chunk_codec), (0.08, F.m_record),
                       (0.06, F.m_tensor), (0.06, F.m_chunk)]


def mutate_file(rng: np.random.Generator, data: bytes, pool: list[RdcFile] | None = None,
                mutators: list | None = None) -> bytes:
    return F.mutate_file(rng, data, pool, mutators=FILE_MUTATORS_ALL if mutators is None else mutators)


# ------------------------------------------------------------------------------------------------
# codec harness inputs


def mutate_codec_input(rng: np.random.Generator, b: bytes, codec_id: str) -> bytes:
    """Like rdcfuzz.mutate_codec_input, with codec-aware config and chunk-data mutation."""
    parsed = F.unpack_codec_input(b)
    if parsed is None or rng.random() < 0.15:
        return F.mutate_codec_input(rng, b, codec_id)
    dtype_code, count, cfg, data = parsed
    op = int(rng.integers(10))
    if op == 0:
        dtype_code = pick(rng, [10, 11, 12, 13, 14, 15, 10, 11, 12, 13, 14, 15, 1, 7, 0, 16, 255])
    elif op == 1:
        count = pick(rng, [1, 2, 3, count - 1, count + 1, 2 * count, count // 2, 4095, 4096, 4097, 1 << 16, 1 << 20])
    elif op in (2, 3):
        cfg = mutate_config(rng, cfg, codec_id)
    else:
        data = mutate_codec_data(rng, codec_id, data, count, dtype_code)
    return F.pack_codec_input(dtype_code, count % (1 << 32), cfg, data)[:MAX_INPUT]


# ------------------------------------------------------------------------------------------------
# seeds

GOLDEN = ["sq4.rdc", "dq4.rdc", "surp80.rdc"]


def golden_files() -> list[bytes]:
    out = []
    for name in GOLDEN:
        p = F.VECTORS / "golden" / name
        if p.exists() and p.stat().st_size <= MAX_INPUT:
            out.append(p.read_bytes())
    return out


def seed_files() -> list[bytes]:
    """The committed format-1.6 seeds of ``fuzz/seeds/`` (written by ``fuzz/make_seeds.py``)."""
    return [p.read_bytes() for p in sorted((F.ROOT / "fuzz" / "seeds").glob("*.rdc"))]


def chunk_seeds(codec_id: str) -> list[bytes]:
    """Codec harness inputs from the CHUNK and SMALL records and the PACK/ZPACK groups of the valid vectors,
    the golden files and the 1.6 seeds."""
    import packmut  # noqa: PLC0415 - packmut imports this module

    files = F.valid_vector_files() + golden_files() + seed_files()
    out = packmut.group_seeds(files, codec_id)
    for data in files:
        f = RdcFile.parse(data)
        for i, rec in enumerate(f.records):
            if rec.rtype == REC_CHUNK:
                t = f.tensor_of(i)
                if t is None or t["codec"].decode() != codec_id:
                    continue
                index, pad = struct.unpack_from("<QB", rec.payload)
                count = min(t["ce"], F.numel(t["dims"]) - index * t["ce"])
                out.append(F.pack_codec_input(t["dtype"], count, t["cfg"], rec.payload[9 + pad :]))
            elif rec.rtype == REC_SMALL:
                t = parse_small(rec.payload)
                if t is None or t["codec"].decode() != codec_id or not F.numel(t["dims"]):
                    continue
                out.append(F.pack_codec_input(t["dtype"], F.numel(t["dims"]), t["cfg"], t["data"]))
    return [s for s in out if len(s) <= MAX_INPUT]


def file_seeds() -> list[bytes]:
    """The vectors, the small golden files, and valid vectors given adapter metadata (plain and compressed)."""
    out = F.vector_files() + golden_files() + seed_files()
    rng = np.random.default_rng(15)
    for data in F.valid_vector_files() + golden_files():
        f = RdcFile.parse(data)
        tensors = file_tensors(f)
        if not tensors:
            continue
        for _ in range(2):
            g = f.copy()
            text = jbytes(adapter_meta(rng, tensors, valid=True))
            g.records = [r for r in g.records if r.rtype not in (REC_META, REC_ZMETA, F.REC_DMETA)]
            rec = Record(REC_ZMETA, 1, struct.pack("<Q", len(text)) + zlib.compress(text, 9)) if rng.random() < 0.5 \
                else Record(REC_META, 0, text)
            g.records.insert(0, rec)
            out.append(g.to_bytes())
    return [s for s in out if len(s) <= MAX_INPUT]


def meta_seeds() -> list[bytes]:
    """Seeds of the metadata harness: the files with metadata (or that can take some)."""
    return [s for s in file_seeds() if len(s) <= 8192]


def small_seeds() -> list[bytes]:
    """Seeds of the SMALL harness: files whose single-chunk tensors are turned into SMALL records."""
    out = []
    for data in file_seeds():
        f = RdcFile.parse(data)
        if any(r.rtype == REC_SMALL for r in f.records):
            out.append(data)
            continue
        changed = False
        while _to_small(f):
            changed = True
        if changed:
            out.append(f.to_bytes())
    return [s for s in out if len(s) <= MAX_INPUT]
