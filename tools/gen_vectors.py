"""Generate the .rdc conformance vectors in spec/vectors/ (deterministic: same bytes on every run).

    python tools/gen_vectors.py            # check: exit 1 if the files on disk differ from a fresh build
    python tools/gen_vectors.py --write    # (re)write spec/vectors/ (only when the change is intended)

Valid vectors are written with rdformat's own Writer (so a change in what the writer emits shows up as
drift) plus a few hand-assembled records; invalid vectors are valid files damaged in one precise way,
with every CRC recomputed unless the CRC itself is the damage. Element values come from a fixed integer
generator, never from numpy's random distributions (whose streams may change between numpy versions).

Outputs (see spec/vectors/README.md): ``valid/*.rdc`` with their expected content in ``valid/*.npz``
(plain ``.npy`` members, no pickle), ``invalid/*.rdc``, and ``manifest.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import rdformat  # noqa: E402
from rdformat.format import records as C  # noqa: E402
from rdformat.codecs.base import Prepared  # noqa: E402
from rdformat.codecs.bytesplit import PLANE_ANS, PLANE_ANS_PAIRS, ByteSplitCodec  # noqa: E402
from rdformat.codecs.dq import DQCodec  # noqa: E402
from rdformat.codecs.sq import SQCodec  # noqa: E402
from rdformat.codecs.axis_scales import AxisScales  # noqa: E402
from rdformat.format.dtypes import DTYPES  # noqa: E402
from rdformat.entropy import FrequencyTable, ans  # noqa: E402

VECTORS = ROOT / "spec" / "vectors"
MANIFEST_VERSION = 1

# dtypes whose npz member stores the raw bit pattern (numpy's .npy format has no code for them)
BITS_BF16 = next(i.numpy for i in DTYPES.values() if i.name == "bfloat16")
BITS_DTYPES = {"bfloat16": "<u2", "float8_e4m3fn": "u1", "float8_e5m2": "u1"}


# ------------------------------------------------------------------------------------------------
# deterministic data


def lcg_bytes(seed: int, n: int) -> bytes:
    """``n`` pseudo-random bytes from a 64-bit LCG (Knuth MMIX constants), high byte of each state."""
    out = bytearray(n)
    s = (seed * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF
    for i in range(n):
        s = (s * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out[i] = s >> 56
    return bytes(out)


def lcg_ints(seed: int, n: int, lo: int, hi: int) -> list[int]:
    """``n`` integers in ``lo..hi`` (inclusive)."""
    raw = lcg_bytes(seed, 4 * n)
    span = hi - lo + 1
    return [lo + int.from_bytes(raw[4 * i : 4 * i + 4], "little") % span for i in range(n)]


def skewed_bytes(seed: int, n: int) -> np.ndarray:
    """Bytes mostly 0 with a few small values: an ANS-friendly plane."""
    vals = lcg_ints(seed, n, 0, 99)
    return np.array([0 if v < 80 else (1 if v < 92 else (2 + v % 5)) for v in vals], dtype=np.uint8)


def dtype_sample(name: str, n: int, seed: int) -> np.ndarray:
    """``n`` elements of dtype ``name``: typical values plus the special bit patterns of the dtype."""
    info = next(i for i in DTYPES.values() if i.name == name)
    dt = info.numpy.newbyteorder("<")
    if name == "bool":
        return np.array([v & 1 for v in lcg_bytes(seed, n)], dtype=np.bool_)
    if info.kind in ("int", "uint"):
        ii = np.iinfo(dt)
        small = lcg_ints(seed, n, -50 if info.kind == "int" else 0, 200)
        arr = np.array(small, dtype=np.int64)
        arr = np.clip(arr, ii.min, ii.max).astype(dt)
        arr[0], arr[1] = ii.min, ii.max
        return arr
    # floats: a smooth body in [-2, 2] plus NaN, +-inf (where the format has them), -0.0, denormals
    body = np.array([(v - 500) / 250.0 for v in lcg_ints(seed, n, 0, 1000)], dtype=np.float64)
    arr = body.astype(dt)
    bits = arr.view(BITS_DTYPES.get(name, f"<u{info.itemsize}")).copy()
    w = 8 * info.itemsize
    specials = {
        "float16": [0x7E00, 0xFC00, 0x7C00, 0x8000, 0x0001, 0x7D01],
        "bfloat16": [0x7FC0, 0xFF80, 0x7F80, 0x8000, 0x0001, 0x7F81],
        "float32": [0x7FC00000, 0xFF800000, 0x7F800000, 0x80000000, 0x00000001, 0x7F800123],
        "float64": [0x7FF8000000000000, 0xFFF0000000000000, 0x7FF0000000000000, 1 << 63, 1,
                    0x7FF0000000000ABC],
        "float8_e4m3fn": [0x7F, 0xFF, 0x7E, 0x80, 0x01, 0xFE],
        "float8_e5m2": [0x7E, 0xFC, 0x7C, 0x80, 0x01, 0x7D],
    }[name]
    assert all(s < (1 << w) for s in specials)
    bits[: len(specials)] = specials
    return bits.view(dt)


# ------------------------------------------------------------------------------------------------
# writing helpers


def write(tensors, *, chunk_bytes: int = 1 << 20, metadata=None, graph=None, graph_format="onnx",
          codec="lossless", per_tensor_codec=None, aliases=(), structural=(), small_records=False,
          layered=False, layer_bytes=None, pack_records=False, compact=False, tail=False) -> bytes:
    """A file written by rdformat.Writer (tensors: list of (name, array)).

    Most vectors use TENSOR + CHUNK records only (``small_records=False``), so that they exercise those
    records; the ``small_*`` vectors cover SMALL records, the ``pack_*`` ones PACK records and the
    ``compact_*`` ones the records and plane mode of format 1.5 (``compact=True``), the ``tail_*`` ones the
    TAIL record of format 1.6 (``tail=True``)."""
    buf = io.BytesIO()
    with rdformat.Writer(buf, metadata=metadata, graph=graph, graph_format=graph_format, codec=codec,
                         chunk_bytes=chunk_bytes, small_records=small_records, layered=layered,
                         layer_bytes=layer_bytes, pack_records=pack_records, compact=compact,
                         max_minor=None if tail else 5) as w:
        for name, arr in tensors:
            w.add(name, arr, structural=name in structural,
                  codec=(per_tensor_codec or {}).get(name))
            for alias, target in aliases:
                if target == name:
                    w.add_alias(alias, target)
    return buf.getvalue()


def crc(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFFFFFF


def records(data: bytes) -> list[list]:
    """Split a well-formed file into ``[type, flags, payload]`` records (file header excluded)."""
    out, pos = [], C.FILE_HEADER_SIZE
    while pos < len(data):
        rtype, flags, length = struct.unpack_from("<HHQ", data, pos)
        out.append([rtype, flags, data[pos + 16 : pos + 16 + length]])
        pos += 20 + length
    assert pos == len(data)
    return out


def assemble(recs: list[list], *, header: bytes | None = None, index: bool = True, tail: bool = False) -> bytes:
    """Frame ``recs`` (INDEX/END are dropped and rebuilt with correct offsets unless ``index=False``).

    Chunk padding is recomputed: chunk data of ``raw`` tensors starts at a multiple of 64 bytes (the
    writer does that only for chunks of 4096 bytes or more; readers accept any pad below 64), other codecs
    use no padding. With ``index=False`` records are framed exactly as given. With ``tail`` the rebuilt index
    is a TAIL record (format 1.6) instead of INDEX + END; TAIL records in ``recs`` are dropped like them.
    """
    out = bytearray(header if header is not None else C.file_header())
    entries: list[tuple[int, str, int, int]] = []
    layers: list[int] = []  # [start, end] of the LAYER records
    current = None  # [name, start] of the tensor whose chunks follow
    codec = None
    for rtype, flags, payload in recs:
        if rtype in (C.REC_INDEX, C.REC_END, C.REC_TAIL) and index:
            continue
        if rtype == C.REC_CHUNK and index:
            idx, pad = struct.unpack_from("<QB", payload)
            data = payload[9 + pad :]
            payload = C.chunk_payload_prefix(idx, len(out) + 16, align=codec == "raw") + data
        elif current is not None:
            entries.append((C.ENTRY_TENSOR, current[0], current[1], len(out) - current[1]))
            current = None
        start = len(out)
        out += C.frame(rtype, payload, flags)
        if rtype == C.REC_TENSOR:
            current = [payload[2 : 2 + struct.unpack_from("<H", payload)[0]].decode(), start]
            codec = codec_of(payload)
        elif rtype == C.REC_SMALL:
            name = payload[2 : 2 + struct.unpack_from("<H", payload)[0]].decode()
            entries.append((C.ENTRY_TENSOR, name, start, len(out) - start))
        elif rtype in C.PACK_TYPES:
            entries.append((C.ENTRY_PACK, "", start, len(out) - start))
        elif rtype == C.REC_ALIAS:
            entries.append((C.ENTRY_ALIAS, C.parse_alias(payload, 0)[0], start, len(out) - start))
        elif rtype in C.LEADING_KINDS:  # META / GRAPH, plain or compressed
            entries.append((C.LEADING_KINDS[rtype], "", start, len(out) - start))
        elif rtype == C.REC_LAYER:
            layers[:] = [layers[0] if layers else start, len(out)]
    if current is not None:
        entries.append((C.ENTRY_TENSOR, current[0], current[1], len(out) - current[1]))
    if layers:
        entries.append((C.ENTRY_LAYERS, "", layers[0], layers[1] - layers[0]))
    if index and tail:
        out += C.tail_record(entries, len(out))
    elif index:
        index_offset = len(out)
        out += C.frame(C.REC_INDEX, C.index_payload(entries))
        out += C.frame(C.REC_END, C.end_payload(index_offset, len(out) + C.END_RECORD_SIZE))
    return bytes(out)


def codec_of(tensor_payload: bytes) -> str:
    """The codec id of a TENSOR payload (no validation)."""
    n = struct.unpack_from("<H", tensor_payload)[0]
    rank = tensor_payload[2 + n + 2]
    pos = 2 + n + 4 + 8 * rank + 16
    m = struct.unpack_from("<H", tensor_payload, pos)[0]
    return tensor_payload[pos + 2 : pos + 2 + m].decode("utf-8", "replace")


def tensor_payload(name: str, dtype_code: int, dims, chunk_elements: int, chunk_count: int, codec: str,
                   config: str, flags: int = 0) -> bytes:
    """A TENSOR payload with every field given explicitly (config as raw JSON text)."""
    raw_cfg = config.encode()
    return (C.pack_str(name) + struct.pack("<HBB", dtype_code, len(dims), flags)
            + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<QQ", chunk_elements, chunk_count)
            + C.pack_str(codec) + struct.pack("<I", len(raw_cfg)) + raw_cfg)


def chunk(index: int, data: bytes) -> list:
    """A CHUNK record (padding is fixed by :func:`assemble`)."""
    return [C.REC_CHUNK, 0, struct.pack("<QB", index, 0) + data]


def set_tensor_field(payload: bytes, **changes) -> bytes:
    """Re-serialise a TENSOR payload with some fields replaced (raw, no validation)."""
    r = C.PayloadReader(payload, 0, "tensor")
    name = r.take(r.u16("n"), "n").decode()
    dtype, rank, flags = r.u16("d"), r.u8("r"), r.u8("f")
    dims = [r.u64("d") for _ in range(rank)]
    ce, cc = r.u64("ce"), r.u64("cc")
    codec = r.take(r.u16("c"), "c").decode()
    cfg = r.take(r.u32("g"), "g").decode()
    f = dict(name=name, dtype_code=dtype, dims=dims, chunk_elements=ce, chunk_count=cc, codec=codec,
             config=cfg, flags=flags)
    f.update(changes)
    return tensor_payload(**f)


class LanesCodec(ByteSplitCodec):
    """bytesplit that codes every plane with ANS in a fixed number of lanes (valid, unusual files).

    ``lossless = False`` only stops the writer from replacing a single chunk by raw bytes when raw
    would be smaller; the data is stored losslessly.
    """

    lossless = False

    def __init__(self, lanes: int, transform: str = "none") -> None:
        super().__init__(transform)
        self.lanes = lanes

    def for_tensor(self, array, dtype):
        return self

    def _encode_plane(self, plane: np.ndarray, counts: np.ndarray | None = None) -> bytes:
        counts = np.bincount(plane, minlength=256)
        present = np.flatnonzero(counts)
        table = FrequencyTable.from_counts(present, counts[present], precision=12)
        block = ans.encode(plane, table, lanes=min(self.lanes, plane.size))
        return b"".join([bytes([PLANE_ANS]), table.to_bytes(), len(block).to_bytes(8, "little"), block])


class PairsCodec(LanesCodec):
    """bytesplit whose planes are ANS-coded byte pairs (mode 3), in a fixed number of lanes."""

    def _encode_plane(self, plane: np.ndarray, counts: np.ndarray | None = None) -> bytes:
        padded = np.concatenate([plane, np.zeros(plane.size % 2, np.uint8)])
        pairs = padded.view("<u2").astype(np.uint32)
        counts = np.bincount(pairs)
        present = np.flatnonzero(counts)
        table = FrequencyTable.from_counts(present, counts[present], precision=12)
        block = ans.encode(pairs, table, lanes=min(self.lanes, pairs.size))
        return b"".join([bytes([PLANE_ANS_PAIRS]), table.to_bytes(), len(block).to_bytes(8, "little"), block])


# ------------------------------------------------------------------------------------------------
# expected content: deterministic .npz (fixed zip timestamps) and manifest entries


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A .npz archive (stored, fixed timestamps) of ``arrays``: byte-identical on every run."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.array(arrays[key], order="C"), version=(1, 0),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def npz_key(i: int) -> str:
    return f"t{i}"


class Builder:
    """Collects the generated files and the manifest."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.manifest: dict[str, dict] = {}

    def valid(self, name: str, data: bytes, description: str) -> None:
        """Register a valid vector; its expected content is read back with rdformat and cross-checked."""
        rel = f"valid/{name}.rdc"
        self.files[rel] = data
        with rdformat.open(io.BytesIO(data)) as f:
            names = f.keys()
            aliases = f.aliases
            meta, graph, graph_format = f.metadata, f.graph, f.graph_format
            infos = {n: f.info(n) for n in names}
            arrays = {n: f.get_tensor(n) for n in names if n not in aliases}
        streamed = rdformat.load(data)
        assert list(streamed) == names, (name, list(streamed), names)
        tensors, npz = {}, {}
        for i, n in enumerate(x for x in names if x not in aliases):
            arr = arrays[n]
            assert streamed[n].tobytes() == arr.tobytes()
            dname = str(arr.dtype)
            stored = arr.view(BITS_DTYPES[dname]) if dname in BITS_DTYPES else arr
            npz[npz_key(i)] = stored
            info = infos[n]
            tensors[n] = {
                "npz": npz_key(i),
                "dtype": dname,
                "shape": list(arr.shape),
                "codec": info.codec,
                "structural": info.structural,
            }
            if dname in BITS_DTYPES:
                tensors[n]["npz_holds_bits_as"] = np.dtype(BITS_DTYPES[dname]).name
        entry = {
            "valid": True,
            "description": description,
            "expected": f"valid/{name}.npz",
            "names": names,
            "tensors": tensors,
            "aliases": aliases,
            "metadata": meta,
        }
        if graph is not None:
            entry["graph_format"] = graph_format
            entry["graph_hex"] = graph.hex()
        self.files[f"valid/{name}.npz"] = npz_bytes(npz)
        self.manifest[rel] = entry

    def invalid(self, name: str, data: bytes, error: str, description: str, **per_mode: str | None) -> None:
        """Register an invalid vector; ``per_mode`` overrides the error for ``stream`` / ``by_name``."""
        rel = f"invalid/{name}.rdc"
        self.files[rel] = data
        entry = {"valid": False, "description": description, "error": error}
        if per_mode:
            entry["error_by_mode"] = per_mode
        self.manifest[rel] = entry


# ------------------------------------------------------------------------------------------------
# the vectors


def build() -> dict[str, bytes]:
    b = Builder()
    dtype_names = [DTYPES[c].name for c in sorted(DTYPES)]

    # -- one file per dtype: a raw and a bytesplit tensor, two chunks each --------------------------
    for code in sorted(DTYPES):
        info = DTYPES[code]
        arr = dtype_sample(info.name, 24, seed=code).reshape(4, 6)
        data = write([("raw", arr), ("bytesplit", arr[::-1].copy())], chunk_bytes=16 * info.itemsize,
                     per_tensor_codec={"raw": "raw", "bytesplit": "bytesplit"})
        b.valid(f"dtype_{code:02d}_{info.name}", data,
                f"dtype code {code} ({info.name}): a 4x6 tensor stored with codec raw and one with bytesplit "
                "(16 elements per chunk, so two chunks each); special values (NaN payloads, inf, -0.0, "
                "denormals, integer min/max) included")

    # -- bytesplit plane modes -------------------------------------------------------------------------
    n = 300
    low = np.frombuffer(lcg_bytes(101, n), np.uint8).astype(np.uint32)
    mid = skewed_bytes(102, n).astype(np.uint32)
    i32 = (low | (mid << 8)).astype("<i4")  # planes: RAW, ANS, CONSTANT 0, CONSTANT 0
    k = np.arange(256, dtype=np.float64)
    bf = ((k % 17 - 8) / 16.0 * (1 + (k % 5))).astype(np.dtype("bfloat16"))  # few exponents: ANS plane
    data = write([("int32_raw_ans_const", i32), ("bfloat16_rotl1", bf)], codec="bytesplit")
    b.valid("bytesplit_plane_modes", data,
            "bytesplit with every plane mode: int32 whose planes are RAW, ANS, CONSTANT, CONSTANT "
            "(transform none), and bfloat16 with transform rotl1 whose exponent plane is ANS")

    skew = skewed_bytes(103, 100)
    lanes3 = write([("u8_ans_3_lanes", skew), ("u16_ans_7_lanes", (skewed_bytes(104, 50).astype("<u2") << 4))],
                   codec=LanesCodec(3), per_tensor_codec={"u16_ans_7_lanes": LanesCodec(7)})
    b.valid("bytesplit_ans_lanes", lanes3,
            "bytesplit ANS planes with 3 and 7 lanes (lane lengths differ by one symbol), precision 12")

    pairs = write([("u8_pairs_odd", skewed_bytes(106, 101)), ("i16_pairs", (skewed_bytes(107, 40).astype("<i2") - 2))],
                  codec=PairsCodec(2))
    b.valid("bytesplit_ans_pairs", pairs,
            "bytesplit planes in mode 3 (ANS over byte pairs b[2i] + 256*b[2i+1], 16-bit symbols, an odd plane "
            "padded with a zero byte), 2 lanes; see the note in spec/vectors/README.md")

    f32 = np.array([((i * 37) % 101 - 50) / 64.0 for i in range(60)], dtype="<f4").reshape(3, 4, 5)
    data = write([("w", f32)], codec="bytesplit", chunk_bytes=7 * 4)
    b.valid("bytesplit_multichunk", data,
            "float32 3x4x5 in 9 bytesplit chunks of 7 elements (the last holds 4)")

    # -- record types ---------------------------------------------------------------------------------
    w = np.arange(12, dtype="<f4").reshape(3, 4) / 8
    data = write([("w", w), ("b", np.array([1, -2, 3], "<i8"))], codec="raw",
                 metadata={"producer": "gen_vectors", "nested": {"list": [1, 2.5, None, True]}, "ü": "ß"},
                 graph=b"\x00\x01graph bytes\xff", graph_format="onnx")
    b.valid("records_meta_graph", data, "META (unicode JSON) and GRAPH (format onnx, binary blob) records")

    data = write([("emb", w), ("other", np.array([7], "<u2"))], codec="raw",
                 aliases=[("lm_head", "emb"), ("emb_tied", "emb")])
    b.valid("records_alias", data, "two ALIAS records naming tensor emb (tied weights)")

    data = write([("shape", np.array([1, -1, 64], "<i8")), ("w", w)], codec="raw", structural=["shape"])
    b.valid("records_structural", data, "the STRUCTURAL tensor flag (an ONNX Reshape shape)")

    data = write([("empty_1d", np.zeros(0, "<f4")), ("empty_3d", np.zeros((3, 0, 2), "<i2")),
                  ("empty_bf16", np.zeros((0, 5), np.dtype("bfloat16")))],
                 per_tensor_codec={"empty_1d": "raw", "empty_3d": "bytesplit"})
    b.valid("records_empty_tensors", data, "empty tensors (a 0 dimension, chunk_count 0, no CHUNK records)")

    data = write([("scalar_f64", np.array(-1.5, "<f8")), ("scalar_bool", np.array(True)),
                  ("scalar_i8", np.array(-128, "i1"))], per_tensor_codec={"scalar_f64": "raw"})
    b.valid("records_scalar", data, "0-d tensors (rank 0, numel 1)")

    data = write([("scalar_u16", np.array(0x1234, "<u2")), ("zeros_u8", np.zeros(5, "u1"))], codec=LanesCodec(3))
    b.valid("bytesplit_ans_single_symbol", data,
            "bytesplit ANS planes whose table has a single symbol (L = 0, a 4-byte block): a 0-d uint16 and "
            "five zero bytes")

    data = write([("w", w)], codec="raw", chunk_bytes=20)
    b.valid("records_multichunk_raw", data, "float32 3x4 in 3 raw chunks of 5, 5 and 2 elements")

    padded = assemble(records(write([("w", w), ("b", np.arange(5, dtype="<u2"))], codec="raw", chunk_bytes=24)))
    assert any(r[0] == C.REC_CHUNK and r[2][8] for r in records(padded))
    b.valid("records_padded_chunks", padded,
            "raw chunks whose data is padded to a 64-byte file offset (pad 1..63 zero bytes), as writers do for "
            "raw chunks of 4096 bytes or more; readers accept any pad below 64")

    data = write([], metadata={"empty": True})
    b.valid("records_no_tensors", data, "a file with metadata and no tensors")

    base = write([("w", w)], codec="raw", metadata={"m": 1})
    recs = records(base)
    with_unknown = assemble(recs[:1] + [[99, 0, b"a future optional record"]] + recs[1:]
                            + [[100, 0x0FFE, b""]])
    b.valid("records_unknown_optional", with_unknown,
            "unknown record types 99 and 100 without the REQUIRED flag (other flag bits set): skipped")

    head = struct.pack("<8sHH", C.MAGIC, 1, 9)
    minor = assemble(records(base), header=head + struct.pack("<I", crc(head)))
    b.valid("version_minor_9", minor, "file header minor version 9 (a newer minor version is read)")

    # -- compressed META and GRAPH (since 1.2) ------------------------------------------------------------
    zmeta = {"producer": "gen_vectors", "layers": [{"name": f"conv{i}", "kernel": [3, 3], "stride": 1}
                                                   for i in range(12)]}
    zgraph = b"".join(b"\x08\x01node:Conv(" + bytes([65 + i % 26]) + b")\x00" * 3 for i in range(200))
    zfile = write([("w", w)], codec="raw", metadata=zmeta, graph=zgraph, graph_format="onnx")
    zrecs = records(zfile)
    assert [r[0] for r in zrecs[:2]] == [C.REC_ZMETA, C.REC_ZGRAPH] and zfile[8:12] == b"\x01\x00\x02\x00"
    b.valid("records_compressed", zfile,
            "format 1.2: compressed META and compressed GRAPH records (types 9 and 10, REQUIRED; a u64 "
            "decompressed size, then a zlib stream) in a file with minor version 2")

    def zmeta_rec(size: int, stream: bytes) -> list:
        return [C.REC_ZMETA, C.FLAG_REQUIRED, struct.pack("<Q", size) + stream]

    ztext = json.dumps({"m": "compressible " * 20}).encode()
    zstream = zlib.compress(ztext, 9)
    zbody = zrecs[2:4]  # TENSOR w, CHUNK
    bad_adler = zstream[:-1] + bytes([zstream[-1] ^ 1])
    b.invalid("zlib_corrupt", assemble([zmeta_rec(len(ztext), bad_adler)] + zbody), "CorruptDataError",
              "compressed META whose zlib stream has a damaged Adler-32 check (CRCs recomputed)")
    b.invalid("zlib_truncated_stream", assemble([zmeta_rec(len(ztext), zstream[:-6])] + zbody), "CorruptDataError",
              "compressed META whose zlib stream misses its last 6 bytes (the record is otherwise well formed)")
    b.invalid("zlib_trailing_garbage", assemble([zmeta_rec(len(ztext), zstream + b"\x00junk")] + zbody),
              "CorruptDataError", "5 bytes after the end of the zlib stream in a compressed META record")
    b.invalid("zlib_size_mismatch", assemble([zmeta_rec(len(ztext) + 1, zstream)] + zbody), "CorruptDataError",
              "compressed META declaring one byte more than its zlib stream decompresses to")
    bomb = zlib.compress(b" " * (1 << 20), 9)  # 1 MiB of spaces in about 1 KiB
    b.invalid("zlib_bomb_over_declared", assemble([zmeta_rec(len(ztext), bomb)] + zbody), "LimitExceededError",
              f"compressed META declaring {len(ztext)} bytes whose {len(bomb)}-byte zlib stream inflates to 1 MiB: "
              "refused once the output passes the declared size")
    b.invalid("zlib_bomb_over_limit", assemble([zmeta_rec(C.MAX_META_BYTES + 1, bomb)] + zbody),
              "LimitExceededError",
              "compressed META declaring 64 MiB + 1 decompressed bytes (over the META limit): refused before "
              "decompressing")
    zg = zrecs[1]
    fmt_len = 2 + struct.unpack_from("<H", zg[2])[0]
    bad_graph = [zg[0], zg[1], zg[2][: fmt_len + 8 + 2] + bytes([zg[2][fmt_len + 10] ^ 0xFF]) + zg[2][fmt_len + 11:]]
    b.invalid("zlib_graph_corrupt", assemble([zrecs[0], bad_graph] + zbody), "CorruptDataError",
              "compressed GRAPH whose zlib stream has its first deflate byte damaged (CRCs recomputed)")

    # -- LZMA2-compressed GRAPH (since 1.7) ---------------------------------------------------------------
    # Streams built by hand, so the vectors do not depend on an encoder's version: an LZMA2 "uncompressed,
    # dictionary reset" chunk (control byte 1, u16 big-endian size - 1, the bytes), then the end marker 0.
    xblob = b"".join(b"\x08\x01node:Relu(" + bytes([65 + i % 26]) + b")" for i in range(40))
    xstream = b"\x01" + struct.pack(">H", len(xblob) - 1) + xblob + b"\x00"

    def xgraph_rec(size: int, dict_size: int, stream: bytes) -> list:
        return [C.REC_XGRAPH, C.FLAG_REQUIRED, C.pack_str("onnx") + struct.pack("<QI", size, dict_size) + stream]

    xhead = struct.pack("<8sHH", C.MAGIC, 1, C.VERSION_MINOR_LZMA)
    xheader = xhead + struct.pack("<I", crc(xhead))
    b.valid("records_xgraph", assemble([xgraph_rec(len(xblob), 4096, xstream)] + zbody, header=xheader),
            "format 1.7: an XGRAPH record (type 16, REQUIRED): graph format, u64 size, u32 dictionary size "
            "4096, then a raw LZMA2 stream (one uncompressed chunk and the end marker)")
    b.invalid("xgraph_bomb_over_declared", assemble([xgraph_rec(len(xblob) // 2, 4096, xstream)] + zbody,
                                                    header=xheader), "LimitExceededError",
              "XGRAPH declaring half the bytes its LZMA2 stream decodes to: refused once the output passes "
              "the declared size")
    b.invalid("xgraph_dict_size_out_of_range", assemble([xgraph_rec(len(xblob), 1 << 30, xstream)] + zbody,
                                                        header=xheader), "CorruptDataError",
              "XGRAPH with a 1 GiB dictionary for a graph of a few hundred bytes (what a decoder would allocate)")
    b.invalid("xgraph_truncated_stream", assemble([xgraph_rec(len(xblob), 4096, xstream[:-1])] + zbody,
                                                  header=xheader), "CorruptDataError",
              "XGRAPH whose LZMA2 stream lacks its end marker")
    b.invalid("xgraph_trailing_garbage", assemble([xgraph_rec(len(xblob), 4096, xstream + b"junk")] + zbody,
                                                  header=xheader), "CorruptDataError",
              "4 bytes after the end of the LZMA2 stream in an XGRAPH record")
    b.invalid("xgraph_bad_control", assemble([xgraph_rec(len(xblob), 4096, b"\x03" + xstream[1:])] + zbody,
                                             header=xheader), "CorruptDataError",
              "XGRAPH whose LZMA2 stream starts with an invalid chunk control byte (3)")

    # -- invalid files (all CRCs valid unless the CRC is the damage) ----------------------------------
    small = write([("w", w[:1]), ("b", np.array([1, 2, 3], "<u1"))], codec="raw", metadata={"m": 1})
    srecs = records(small)  # META, TENSOR w, CHUNK, TENSOR b, CHUNK, INDEX, END

    b.invalid("empty_file", b"", "NotRdcError", "zero bytes")
    b.invalid("not_rdc", b"PK\x03\x04" + bytes(60), "NotRdcError", "a zip header")
    b.invalid("bad_magic", b"\x89RDX" + small[4:], "NotRdcError", "magic byte 3 changed")
    b.invalid("text_mode_crlf_to_lf", small.replace(b"\r\n", b"\n", 1), "NotRdcError",
              "the magic's CR LF became LF (text-mode transfer)")
    b.invalid("text_mode_lf_to_crlf", small[:5] + small[5:8].replace(b"\n", b"\r\n") + small[8:], "NotRdcError",
              "every LF of the magic became CR LF (text-mode transfer)")
    b.invalid("truncated_header", small[:10], "TruncatedError", "the first 10 bytes of a valid file")
    head = struct.pack("<8sHH", C.MAGIC, 2, 0)
    b.invalid("newer_major", head + struct.pack("<I", crc(head)) + small[16:], "UnsupportedVersionError",
              "major version 2")
    b.invalid("bad_file_header_crc", small[:12] + bytes([small[12] ^ 1]) + small[13:], "ChecksumError",
              "file header CRC off by one bit")
    meta_at = 16
    b.invalid("bad_record_header_crc", small[: meta_at + 12] + bytes([small[meta_at + 12] ^ 0x80])
              + small[meta_at + 13 :], "ChecksumError", "META record header CRC damaged")
    # a byte inside the first tensor's chunk data
    tw_chunk_at = small.index(struct.pack("<f", 0.125))
    b.invalid("bad_payload_crc", small[:tw_chunk_at] + bytes([small[tw_chunk_at] ^ 0x10]) + small[tw_chunk_at + 1 :],
              "ChecksumError", "a bit of chunk data flipped (payload CRC mismatch)")
    b.invalid("truncated_last_byte", small[:-1], "TruncatedError", "a valid file without its last byte")
    b.invalid("truncated_no_end", small[: -C.END_RECORD_SIZE], "TruncatedError",
              "a valid file without its END record")
    b.invalid("truncated_in_chunk", small[: tw_chunk_at + 2], "TruncatedError",
              "a valid file cut in the middle of a chunk's data")
    b.invalid("trailing_garbage", small + b"\x00garbage", "CorruptDataError",
              "8 bytes after the END record",
              stream=None, by_name="TruncatedError")

    meta, tw, cw, tb, cb = srecs[:5]
    b.invalid("unknown_required_record", assemble([[77, C.FLAG_REQUIRED, b"needs a newer reader"]] + srecs[:5]),
              "UnsupportedFeatureError", "record type 77 with the REQUIRED flag right after the file header")
    b.invalid("unknown_codec", assemble([meta, [3, 0, set_tensor_field(tw[2], codec="zstd-magic")], cw, tb, cb]),
              "UnsupportedFeatureError", "tensor w names codec 'zstd-magic'")
    b.invalid("unknown_dtype", assemble([meta, [3, 0, set_tensor_field(tw[2], dtype_code=99)], cw, tb, cb]),
              "UnsupportedFeatureError", "tensor w has dtype code 99")
    b.invalid("bad_codec_config", assemble([meta, [3, 0, set_tensor_field(tw[2], config='{"level":3}')], cw, tb,
                                            cb]), "CorruptDataError", "raw codec with a parameter")
    b.invalid("codec_config_not_json", assemble([meta, [3, 0, set_tensor_field(tw[2], config='{"a":')], cw, tb,
                                                 cb]), "CorruptDataError", "codec configuration is not JSON")
    b.invalid("metadata_not_object", assemble([[1, 0, b"[1, 2]"]] + srecs[1:5]), "CorruptDataError",
              "META payload is a JSON array")
    b.invalid("chunk_count_mismatch", assemble([meta, [3, 0, set_tensor_field(tw[2], chunk_count=2)], cw, tb, cb]),
              "CorruptDataError", "tensor w declares 2 chunks where 4 elements in chunks of 262144 need 1")
    b.invalid("missing_chunk", assemble([meta, tw, tb, cb]), "CorruptDataError",
              "tensor w's only CHUNK record is missing (the next record is a TENSOR)")
    b.invalid("extra_chunk", assemble([meta, tw, cw, cw, tb, cb]), "CorruptDataError",
              "tensor w's CHUNK record appears twice")
    wrong_idx = [4, 0, struct.pack("<QB", 1, 0) + cw[2][9 + cw[2][8]:]]
    b.invalid("chunk_index_wrong", assemble([meta, tw, wrong_idx, tb, cb]), "CorruptDataError",
              "the first chunk says index 1")
    short = [4, 0, cw[2][:-1]]
    b.invalid("chunk_data_short", assemble([meta, tw, short, tb, cb]), "CorruptDataError",
              "a raw chunk one byte shorter than its elements")
    bad_bool = assemble([meta, [3, 0, set_tensor_field(tb[2], dtype_code=1)], [4, 0, cb[2][:-1] + b"\x02"]])
    b.invalid("bool_not_0_or_1", bad_bool, "CorruptDataError", "a bool tensor holding the byte 2")
    b.invalid("bomb_over_limit", assemble([meta, [3, 0, tensor_payload("bomb", 12, [1 << 40], 1 << 26, 1 << 14,
                                                                        "raw", "{}")], cw]),
              "LimitExceededError", "a tensor declaring 2**40 float32 elements (4 TiB), over the default 64 GiB cap")
    b.invalid("bomb_truncated",
              C.file_header() + C.frame(C.REC_TENSOR, tensor_payload("bomb", 2, [1 << 31], 1 << 20, 1 << 11,
                                                                     "raw", "{}")),
              "TruncatedError",
              "an 81-byte file whose tensor declares 2 GiB in 2048 chunks: refused before allocating the output")
    b.invalid("chunk_too_large", assemble([meta, [3, 0, tensor_payload("big", 12, [1 << 27], 1 << 27, 1, "raw",
                                                                        "{}")], cw]),
              "LimitExceededError", "chunks of 2**27 float32 elements (512 MiB), over the 256 MiB chunk limit")
    b.invalid("rank_over_limit", assemble([meta, [3, 0, tensor_payload("r", 2, [1] * 65, 1, 1, "raw", "{}")],
                                           [4, 0, struct.pack("<QB", 0, 0) + b"\x01"]]),
              "LimitExceededError", "rank 65")
    b.invalid("alias_missing_target", assemble([meta, tw, cw, [5, 0, C.pack_str("a") + C.pack_str("nope")]]),
              "CorruptDataError", "ALIAS a names tensor 'nope', which does not exist")
    b.invalid("alias_before_target", assemble([meta, [5, 0, C.pack_str("a") + C.pack_str("w")], tw, cw]),
              "CorruptDataError", "ALIAS a names tensor w, which is written after it")
    b.invalid("duplicate_name", assemble([meta, tw, cw, tw, cw]), "CorruptDataError", "two tensors named w")
    b.invalid("meta_after_tensor", assemble([tw, cw, meta]), "CorruptDataError", "META record after a TENSOR")
    b.invalid("two_meta", assemble([meta, meta, tw, cw]), "CorruptDataError", "two META records")
    idx_off = struct.unpack_from("<Q", small, len(small) - 20)[0]
    end_payload = struct.pack("<QQ", idx_off, len(small) + 1)
    b.invalid("end_length_wrong", small[:-20] + end_payload + struct.pack("<I", crc(end_payload)),
              "CorruptDataError", "END states a file length one byte too long")
    end_payload = struct.pack("<QQ", idx_off - 1, len(small))
    b.invalid("end_index_offset_wrong", small[:-20] + end_payload + struct.pack("<I", crc(end_payload)),
              "CorruptDataError", "END points one byte before the INDEX record", by_name="ChecksumError")
    ihead = C.RecordHead(*struct.unpack_from("<HHQ", small, idx_off), idx_off)
    entries = C.parse_index(small[idx_off + 16 : idx_off + 16 + ihead.length], 0, None)
    moved = [(e.kind, e.name, e.offset + (20 if e.name == "b" else 0), e.length) for e in entries]
    new_index = C.frame(C.REC_INDEX, C.index_payload(moved))
    b.invalid("index_entry_offset_wrong", small[:idx_off] + new_index + small[idx_off + len(new_index):],
              "CorruptDataError", "the INDEX entry of tensor b points 20 bytes past its TENSOR record")
    padded = assemble([meta, tw, cw, tb, cb])
    prec = records(padded)
    assert prec[2][0] == C.REC_CHUNK and prec[2][2][8] > 0
    prec[2][2] = prec[2][2][:9] + b"\x01" + prec[2][2][10:]
    b.invalid("pad_not_zero", assemble(prec, index=False), "CorruptDataError", "a chunk padding byte is 1")
    # bytesplit: an ANS plane whose lane does not end in state 0; and an unknown plane mode
    bs = write([("x", skewed_bytes(105, 400))], codec="bytesplit")
    brecs = records(bs)
    t_x, c_x = brecs[0], brecs[1]
    pad = c_x[2][8]
    cdata = bytearray(c_x[2][9 + pad :])
    assert cdata[0] == PLANE_ANS
    bad_ans = bytes(cdata[:-4]) + bytes([cdata[-4] ^ 1]) + bytes(cdata[-3:])
    b.invalid("bytesplit_ans_corrupt", assemble([t_x, chunk(0, bad_ans)]), "CorruptDataError",
              "bytesplit ANS plane with one bit of the last word flipped (CRCs recomputed)")
    b.invalid("bytesplit_bad_mode", assemble([t_x, chunk(0, b"\x04" + bytes(cdata[1:]))]), "CorruptDataError",
              "bytesplit plane mode 4")
    b.invalid("bytesplit_trailing_bytes", assemble([t_x, chunk(0, bytes(cdata) + b"\x00")]), "CorruptDataError",
              "a byte after the last bytesplit plane")
    table_end = 1 + len(FrequencyTable.from_bytes(bytes(cdata), 1)[0].to_bytes())
    bad_sum = bytes(cdata[:table_end - 1]) + bytes([cdata[table_end - 1] ^ 1]) + bytes(cdata[table_end:])
    b.invalid("bytesplit_table_sum", assemble([t_x, chunk(0, bad_sum)]), "CorruptDataError",
              "a frequency table whose frequencies do not sum to 2**Q")
    b.invalid("bytesplit_bad_transform", assemble([[3, 0, set_tensor_field(t_x[2], config='{"transform":"rotl2"}')],
                                                   c_x]), "CorruptDataError", "bytesplit transform rotl2")

    # -- lossy codecs: sq and dq levels (chosen here, not by a quantizer, so they cover every case) ----
    def levels(seed: int, shape, lo: int, hi: int, zero_every: int = 3) -> np.ndarray:
        n = int(np.prod(shape))
        q = np.array(lcg_ints(seed, n, lo, hi), dtype=np.int32)
        q[::zero_every] = 0
        return q.reshape(shape)

    def prepared(codec, q, dtype) -> Prepared:
        return Prepared(codec, q.reshape(-1), np.dtype(dtype), q.shape)

    sq_file = write([
        ("table_f32", prepared(SQCodec(0.05, 0.1, 0.25), levels(201, (30, 40), -6, 6), "<f4")),
        ("parametric_bf16", prepared(SQCodec(0.125), levels(202, (4, 5), -2, 2), "bfloat16")),
        ("zero_f16", prepared(SQCodec(1.5), np.zeros((3, 3), np.int32), "<f2")),
    ], chunk_bytes=2400)
    b.valid("sq_levels", sq_file,
            "codec sq: a float32 tensor in two TABLE chunks with reconstruction offsets, a small bfloat16 "
            "tensor (PARAMETRIC model), an all-zero float16 tensor (mode ZERO)")
    dq_file = write([
        ("chain5_f32", prepared(DQCodec(0.03125, 5), levels(203, (7, 13), -4, 4, zero_every=4), "<f4")),
        ("chain256_bf16", prepared(DQCodec(0.1, 256), levels(204, (300,), -3, 3), "bfloat16")),
        ("chain1_f64", prepared(DQCodec(0.7, 1), levels(205, (2, 3, 4), -9, 9), "<f8")),
    ], chunk_bytes=160)
    b.valid("dq_levels", dq_file,
            "codec dq: chains of 5 (float32, chunks of 40 elements), of 256 (bfloat16, one chain per "
            "20-element chunk, which the chunk shortens) and of 1 (float64: every element in state 0)")
    rows = np.array(lcg_ints(207, 40 * 64, -3, 3), dtype=np.int32).reshape(40, 64)
    rows *= np.array([1 + 9 * (i % 3 == 0) for i in range(40)], dtype=np.int32)[:, None]  # scale per row
    classed = DQCodec(0.01, 16, segment_hint=64)
    from rdformat.format.dtypes import by_numpy  # noqa: E402

    assert classed.encode_chunk(rows.reshape(-1), by_numpy(np.dtype("<f4")))[0] == 3
    b.valid("dq_classes", write([("rows_f32", Prepared(classed, rows.reshape(-1), np.dtype("<f4"), rows.shape))]),
            "codec dq with a CLASSES chunk: rows of 64 levels, every third row ten times larger, sorted "
            "into classes with one table each (chains of 16)")
    cpay = records(write([("rows_f32", Prepared(classed, rows.reshape(-1), np.dtype("<f4"), rows.shape))]))
    t_cl, c_cl = cpay[0], cpay[1]
    cbytes = bytes(c_cl[2][9:])
    k_count = cbytes[5]
    b.invalid("dq_classes_trailing_byte", assemble([t_cl, chunk(0, cbytes + b"\x00")]), "CorruptDataError",
              "dq CLASSES payload with a byte after the last class part")
    b.invalid("dq_classes_one_class", assemble([t_cl, chunk(0, cbytes[:5] + b"\x01" + cbytes[6:])]),
              "CorruptDataError", "dq CLASSES payload declaring 1 class (2..8 allowed)")
    b.invalid("dq_classes_truncated", assemble([t_cl, chunk(0, cbytes[:-3])]), "CorruptDataError",
              f"dq CLASSES payload ({k_count} classes) missing the last 3 bytes of its last part")
    # -- SMALL records (format 1.1): header and one chunk in one record ------------------------------
    small = write([
        ("raw_f32", np.array([1.5, -2.0, 0.0, 3.25], "<f4")),
        ("bytesplit_i16", (np.arange(600, dtype="<i2") % 7) - 3),
        ("scalar_f64", np.array(2.5, "<f8")),
        ("empty_u8", np.zeros((0, 3), np.uint8)),
        ("sq_f32", prepared(SQCodec(0.1, 0.2, 0.3), levels(208, (6, 7), -3, 3), "<f4")),
        ("dq_f32", prepared(DQCodec(0.05, 4), levels(209, (5, 9), -4, 4), "<f4")),
    ], per_tensor_codec={"raw_f32": "raw", "bytesplit_i16": "bytesplit"}, small_records=True)
    srecs = records(small)
    assert sum(r[0] == C.REC_SMALL for r in srecs) == 6 and not any(r[0] == C.REC_CHUNK for r in srecs)
    b.valid("small_records", small,
            "SMALL records (type 8, REQUIRED flag): a raw float32, a bytesplit int16, a 0-d float64, an empty "
            "uint8 (no data), an sq and a dq tensor, each header and its one chunk in one record with LEB128 "
            "dimensions")
    s_raw = srecs[0]
    head_len = 2 + len("raw_f32") + 4  # name, dtype, rank, flags

    def small_with(payload: bytes) -> bytes:
        return assemble([[C.REC_SMALL, C.FLAG_REQUIRED, payload]])

    p = s_raw[2]
    b.invalid("small_dim_not_shortest", small_with(p[:head_len] + b"\x84\x00" + p[head_len + 1:]),
              "CorruptDataError", "SMALL record whose dimension 4 is written as the 2-byte varint 84 00")
    b.invalid("small_dim_varint_too_long", small_with(p[:head_len] + b"\xff" * 11 + p[head_len + 1:]),
              "CorruptDataError", "SMALL record with an 11-byte dimension varint")
    b.invalid("small_dim_over_limit", small_with(p[:head_len] + b"\xff" * 8 + b"\x80\x01" + p[head_len + 1:]),
              "LimitExceededError", "SMALL record with a dimension of 2**63")
    b.invalid("small_empty_codec_id", small_with(p[:head_len + 1] + b"\x00" + p[head_len + 5:]),
              "CorruptDataError", "SMALL record with an empty codec id")
    b.invalid("small_truncated_config", small_with(p[:head_len + 5] + b"\x7f{}"), "CorruptDataError",
              "SMALL record whose codec config length runs past the record")
    b.invalid("small_raw_data_short", small_with(p[:-1]), "CorruptDataError",
              "SMALL raw float32 record missing the last data byte")
    s_empty = srecs[3]
    b.invalid("small_empty_with_data", small_with(s_empty[2] + b"\x00"), "CorruptDataError",
              "SMALL record of an empty tensor that carries a data byte")
    dq_recs = records(write([("t", prepared(DQCodec(0.25, 8), levels(206, (4, 8), -5, 5), "<f4"))]))
    t_dq, c_dq = dq_recs[0], dq_recs[1]
    for name, cfg, what in (("dq_chain_zero", '{"step":0.25,"chain":0}', "chain 0"),
                            ("dq_chain_too_long", '{"step":0.25,"chain":1025}', "chain 1025 (limit 1024)"),
                            ("dq_chain_missing", '{"step":0.25}', "no chain in the configuration"),
                            ("dq_step_negative", '{"step":-0.25,"chain":8}', "a negative step")):
        b.invalid(name, assemble([[3, 0, set_tensor_field(t_dq[2], config=cfg)], c_dq]), "CorruptDataError",
                  f"dq configuration with {what}")
    b.invalid("dq_integer_dtype", assemble([[3, 0, set_tensor_field(t_dq[2], dtype_code=7)], c_dq]),
              "CorruptDataError", "dq declared on an int32 tensor (lossy codecs produce floats only)")
    dq_data = bytes(c_dq[2][9:])
    b.invalid("dq_bad_mode", assemble([t_dq, chunk(0, b"\x07" + dq_data[1:])]), "CorruptDataError",
              "dq chunk with level-payload mode 7")

    # -- axis scales of sq and dq (since 1.4, spec 5.6) ----------------------------------------------------
    e0 = np.array([(v % 9) - 4 for v in lcg_ints(501, 6, 0, 1000)], dtype=np.int8)
    e1 = np.array([(v % 13) - 6 for v in lcg_ints(502, 5, 0, 1000)], dtype=np.int8)
    e1[0] = -64  # the extremes of the range
    e0[1] = 64
    scaled_file = write([
        ("sq_rows_cols_f32", prepared(SQCodec(0.05, 0.1, 0.25, scales=AxisScales(e0, e1)),
                                      levels(503, (6, 5, 3), -6, 6), "<f4")),
        ("dq_cols_bf16", prepared(DQCodec(0.1, 4, scales=AxisScales(None, e1[::-1].copy())),
                                  levels(504, (4, 5), -4, 4), "bfloat16")),
        ("sq_rows_f16", prepared(SQCodec(0.25, scales=AxisScales(e0[:4].copy())), levels(505, (4, 7), -3, 3),
                                 "<f2")),
    ], chunk_bytes=128, small_records=True, pack_records=True)
    assert scaled_file[8:12] == b"\x01\x00\x04\x00"
    b.valid("axis_scales", scaled_file,
            "format 1.4 axis scales (spec 5.6): an sq float32 tensor of shape 6x5x3 in chunks with exponents "
            "on axes 0 and 1 (64 and -64 included), a dq bfloat16 tensor with axis-1 exponents only, an sq "
            "float16 tensor with axis-0 exponents only (each value rounded to its dtype twice, as 5.6 states)")
    srecs = records(write([("t", prepared(SQCodec(0.5, scales=AxisScales(e0[:4].copy())), levels(506, (4, 3), -3, 3),
                                          "<f4"))]))
    t_s, c_s = srecs[0], srecs[1]
    scale0 = AxisScales(e0[:4].copy()).config()["scale0"]
    for name, cfg, what in (
            ("axis_scales_bad_base64", '{"step":0.5,"scale0":"@@@@"}', "a scale0 that is not base64"),
            ("axis_scales_wrong_length", '{"step":0.5,"scale0":"' + AxisScales(e0[:3].copy()).config()["scale0"] + '"}',
             "3 axis-0 exponents for an axis of length 4"),
            ("axis_scales_exponent_range", '{"step":0.5,"scale1":"QUFB"}', "an axis-1 exponent of 65"),
            ("axis_scales_empty", '{"step":0.5,"scale0":""}', "an empty scale0"),
            ("axis_scales_not_string", '{"step":0.5,"scale0":[1,2,3,4]}', "a scale0 that is a JSON array")):
        b.invalid(name, assemble([[3, 0, set_tensor_field(t_s[2], config=cfg)], c_s]), "CorruptDataError",
                  f"sq configuration with {what}")
    b.invalid("axis_scales_rank1", assemble([[3, 0, set_tensor_field(t_s[2], dims=[12],
                                                                      config='{"step":0.5,"scale0":"' + scale0 + '"}')],
                                             c_s]), "CorruptDataError", "axis scales on a rank-1 tensor")

    # -- PACK records (since 1.3) -------------------------------------------------------------------------
    levels = np.array([(v % 7) - 3 for v in lcg_ints(401, 48, 0, 1000)], dtype=np.int32)
    sq_member = Prepared(SQCodec(0.125, stats={"err": 0.25, "sparsity": 0.125}), levels, np.dtype("<f4"), (6, 8))
    body = np.array([(v - 500) / 256.0 for v in lcg_ints(402, 64, 0, 1000)], dtype="<f4")
    pack_file = write([
        ("layer1.weight", body[:40].reshape(5, 8)),
        ("layer1.bias", body[40:45]),
        ("layer1.scale", np.array(0.5, "<f4")),
        ("layer1.shape", np.array([1, -1, 8], "<i2")),
        ("layer1.empty", np.zeros((0, 3), "<f4")),
        ("layer2.weight", sq_member),
        ("big", np.arange(100, dtype="<f4") / 7),
        ("layer3.weight", body[45:].reshape(1, 19)),
    ], chunk_bytes=256, small_records=True, pack_records=True, structural=["layer1.shape"],
        aliases=[("layer2.weight_tied", "layer2.weight")])
    precs = records(pack_file)
    assert [r[0] for r in precs] == [C.REC_PACK, C.REC_ALIAS, C.REC_TENSOR, C.REC_CHUNK, C.REC_CHUNK, C.REC_PACK,
                                     C.REC_INDEX, C.REC_END], [r[0] for r in precs]
    assert pack_file[8:12] == b"\x01\x00\x03\x00"
    b.valid("pack_records", pack_file,
            "format 1.3: two PACK records (type 11, REQUIRED, index entry kind 5): float32 tensors sharing one "
            "bytesplit group (a 5x8, a 5, a 0-d and an empty 0x3 tensor), an int16 STRUCTURAL tensor in its own "
            "group, an sq tensor with binary statistics, names sharing prefixes; an alias to a packed tensor "
            "(which ends the first pack), a two-chunk TENSOR record, then a pack of one float32 tensor")

    def pack_file_of(members, groups, tail: bytes = b"") -> bytes:
        return assemble([[C.REC_PACK, C.FLAG_REQUIRED, C.pack_payload(members, groups) + tail]],
                        header=C.file_header(3))

    f32, i16 = 12, 5
    two = np.arange(4, dtype="<f4").tobytes()
    good = [C.PackMember("a.w", f32, (2,), 0, 0), C.PackMember("a.b", f32, (2,), 0, 0)]
    raw_group = C.PackGroup("raw", {}, two)
    assert rdformat.load(pack_file_of(good, [raw_group]))["a.b"].tolist() == [2.0, 3.0]
    payload = C.pack_payload(good, [raw_group])
    assert payload[10] == 2  # the second member shares "a." with the first
    b.invalid("pack_shared_too_long", assemble([[C.REC_PACK, C.FLAG_REQUIRED, payload[:10] + b"\x04" + payload[11:]]],
                                               header=C.file_header(3)),
              "CorruptDataError", "pack member name sharing 4 bytes with a previous name of 3 bytes")
    b.invalid("pack_group_dtype_mix", pack_file_of([good[0], C.PackMember("a.b", i16, (4,), 0, 0)], [raw_group]),
              "CorruptDataError", "pack group holding a float32 and an int16 member")
    b.invalid("pack_group_order", pack_file_of([C.PackMember("a.w", f32, (2,), 0, 1), C.PackMember("a.b", f32, (2,), 0, 0)],
                                               [C.PackGroup("raw", {}, two[:8]), C.PackGroup("raw", {}, two[8:])]),
              "CorruptDataError", "pack member using group 1 before any member used group 0")
    b.invalid("pack_trailing", pack_file_of(good, [raw_group], b"\x00"), "CorruptDataError",
              "pack record with one byte after its last group")
    b.invalid("pack_group_count", pack_file_of(good, [raw_group, C.PackGroup("raw", {}, b"")]), "CorruptDataError",
              "pack record declaring 2 groups whose members use only 1")
    b.invalid("pack_duplicate_name", pack_file_of([good[0], C.PackMember("a.w", f32, (2,), 0, 0)], [raw_group]),
              "CorruptDataError", "pack record naming two members a.w")
    b.invalid("pack_group_short", pack_file_of(good, [C.PackGroup("raw", {}, two[:12])]), "CorruptDataError",
              "raw pack group one float32 element short of its members' 4")
    b.invalid("pack_progressive", pack_file_of(good, [C.PackGroup("surp", {"norm": 1.0, "t0": 0.5, "decay": 0.5,
                                                                          "umax": 1.0, "offset": 0.0, "seed": 0},
                                                                  b"")]),
              "CorruptDataError", "pack group coded with the progressive codec surp")
    b.invalid("pack_axis_scales", pack_file_of([C.PackMember("a.m", f32, (2, 2), 0, 0)],
                                               [C.PackGroup("sq", {"step": 0.5, **AxisScales(np.array([1, -1])).config()},
                                                            b"\x00")]),
              "CorruptDataError", "pack group whose sq configuration carries axis scales (spec 5.6)")
    b.invalid("pack_lossy_int", pack_file_of([C.PackMember("a.i", i16, (4,), 0, 0)],
                                             [C.PackGroup("sq", {"step": 0.5}, b"\x00")]),
              "CorruptDataError", "pack group coded with sq whose member is int16")
    repeat = pack_file_of([C.PackMember("x.w", f32, (2,), 0, 0), C.PackMember("x.i", i16, (3,), 0, 1),
                           C.PackMember("y.w", f32, (1,), 0, 2)],
                          [C.PackGroup("raw", {}, two[:8]), C.PackGroup("raw", {}, np.arange(3, dtype="<i2").tobytes()),
                           C.PackGroup("raw", {}, two[8:12])])
    assert repeat.count(b"\x03raw") == 1
    b.valid("pack_repeat_codec", repeat,
            "format 1.3: a PACK record of three raw groups (float32, int16, float32) of which the last two "
            "have codec length 0: the previous group's codec and configuration")
    rpayload = C.pack_payload([C.PackMember("x.w", f32, (2,), 0, 0)], [C.PackGroup("raw", {}, two[:8])])
    at = rpayload.index(b"\x03raw")
    b.invalid("pack_repeat_first", assemble([[C.REC_PACK, C.FLAG_REQUIRED, rpayload[:at] + b"\x00" + rpayload[at + 7:]]],
                                            header=C.file_header(3)),
              "CorruptDataError", "pack group 0 with codec length 0 (no previous group to repeat)")
    b.invalid("pack_bomb", pack_file_of([C.PackMember("huge", f32, (1 << 40,), 0, 0)],
                                        [C.PackGroup("bytesplit", {"transform": "none"}, bytes([1, 0] * 4) + b"\x00\x00")]),
              "LimitExceededError", "pack member of 2^40 float32 elements from 10 bytes of group data")

    # -- format 1.5: DMETA, ZPACK and bytesplit's shifted plane ------------------------------------------
    scales = (1.0, 1 / 64, 8.0)
    parts = [np.array([(v - 500) / 250.0 * sc for v in lcg_ints(900 + i, 60 + 30 * i, 0, 1000)], dtype="<f4")
             for i, sc in enumerate(scales)]
    compact_file = write([("encoder.layer1.weight", parts[0].reshape(6, 10)), ("encoder.layer1.bias", parts[1]),
                          ("encoder.layer2.weight", parts[2].reshape(12, 10)), ("encoder.scale", np.array(0.5, "<f4")),
                          ("steps", np.arange(5, dtype="<i2"))],
                         metadata={"rdformat": {"source_format": "pytorch", "adapter_version": 1,
                                                "modules": [{"version": 1}, 2, "act"]}, "note": "compact"},
                         small_records=True, pack_records=True, compact=True, structural=["steps"])
    crecs = records(compact_file)
    assert [r[0] for r in crecs] == [C.REC_DMETA, C.REC_ZPACK, C.REC_INDEX, C.REC_END], [r[0] for r in crecs]
    assert compact_file[8:12] == b"\x01\x00\x05\x00"
    zmembers, zgroups = C.parse_pack_record(C.REC_ZPACK, crecs[1][2], 0)
    from rdformat.codecs import bytesplit as BS  # noqa: E402
    assert any(g.codec_id == "bytesplit" and BS.uses_shifted(g.data, g.numel, 4) for g in zgroups)
    b.valid("compact_records", compact_file,
            "format 1.5: metadata in a DMETA record (type 13: deflated with the preset dictionary) and a ZPACK "
            "record (type 14: deflated directory, then the group data) whose float32 group codes its exponent "
            "plane with bytesplit mode 4 (segments of one member each, shifted, one table), an int16 structural "
            "member in a raw group")

    def compact_of(recs) -> bytes:
        return assemble(recs, header=C.file_header(5))

    dmeta, zpack = crecs[0], crecs[1]
    meta_text = b'{"a":1}'
    b.invalid("dmeta_size_mismatch", compact_of([[C.REC_DMETA, C.FLAG_REQUIRED, C.leb128(8) + C.deflate_dict(meta_text)],
                                                zpack]),
              "CorruptDataError", "DMETA record declaring 8 decompressed bytes for a 7-byte text")
    b.invalid("dmeta_bomb", compact_of([[C.REC_DMETA, C.FLAG_REQUIRED, C.leb128(1 << 40) + C.deflate_dict(meta_text)],
                                       zpack]),
              "LimitExceededError", "DMETA record declaring 2^40 decompressed bytes")
    b.invalid("dmeta_trailing", compact_of([[C.REC_DMETA, C.FLAG_REQUIRED, dmeta[2] + b"\x00"], zpack]),
              "CorruptDataError", "DMETA record with a byte after its deflate stream")
    b.invalid("zpack_trailing", compact_of([dmeta, [C.REC_ZPACK, C.FLAG_REQUIRED, zpack[2] + b"\x00"]]),
              "CorruptDataError", "ZPACK record with a byte after its last group's data")
    b.invalid("zpack_short", compact_of([dmeta, [C.REC_ZPACK, C.FLAG_REQUIRED, zpack[2][:-1]]]),
              "CorruptDataError", "ZPACK record whose last group's data is one byte short")
    zdir = C.pack_payload(zmembers, zgroups, directory_only=True)
    zdata = b"".join(bytes(g.data) for g in zgroups)
    bad_dir = C.deflate_dict(zdir)
    b.invalid("zpack_dir_overrun", compact_of([dmeta, [C.REC_ZPACK, C.FLAG_REQUIRED,
                                                      C.leb128(len(zdir)) + C.leb128(len(bad_dir) + len(zdata) + 1)
                                                      + bad_dir + zdata]]),
              "CorruptDataError", "ZPACK record whose deflated directory length runs past the record")
    # the shifted plane: its segments and shifts checked
    g0 = next(g for g in zgroups if g.codec_id == "bytesplit")
    gdata = bytes(g0.data)
    top = gdata.index(bytes([BS.PLANE_ANS_SHIFTED]), 3 * 1)  # the exponent plane is the last plane
    while True:
        try:
            segs, after = BS._read_segments(gdata, top + 1, g0.numel, 3)
            break
        except Exception:
            top = gdata.index(bytes([BS.PLANE_ANS_SHIFTED]), top + 1)

    def with_group0(data: bytes) -> bytes:
        groups = [C.PackGroup(g.codec_id, g.codec_config, data if g is g0 else g.data) for g in zgroups]
        return compact_of([dmeta, [C.REC_ZPACK, C.FLAG_REQUIRED, C.zpack_payload(zmembers, groups)]])

    nseg = len(segs)
    seg_bytes = b"".join(C.leb128(n) + bytes([sh]) for n, sh in segs)
    assert gdata[top + 1 : after] == C.leb128(nseg) + seg_bytes
    short = segs[:-1] + ((segs[-1][0] - 1, segs[-1][1]),)
    b.invalid("bytesplit_shifted_cover", with_group0(gdata[: top + 1] + C.leb128(nseg) + b"".join(
        C.leb128(n) + bytes([sh]) for n, sh in short) + gdata[after:]),
              "CorruptDataError", "bytesplit shifted plane whose segments cover one element less than the chunk")
    bad_shift = segs[:-1] + ((segs[-1][0], 255),)
    b.invalid("bytesplit_shifted_shift", with_group0(gdata[: top + 1] + C.leb128(nseg) + b"".join(
        C.leb128(n) + bytes([sh]) for n, sh in bad_shift) + gdata[after:]),
              "CorruptDataError", "bytesplit shifted plane with a segment shift of 255 (at most 254)")
    b.invalid("bytesplit_shifted_zero_segments", with_group0(gdata[: top + 1] + b"\x00" + gdata[after:]),
              "CorruptDataError", "bytesplit shifted plane declaring 0 segments")

    # -- format 1.6: the TAIL record (compact index and end of file in one record) ---------------------
    tail_file = write([("encoder.layer1.weight", parts[0].reshape(6, 10)), ("encoder.layer1.bias", parts[1]),
                       ("big", np.array([(v - 500) / 250.0 for v in lcg_ints(950, 300, 0, 1000)], "<f4"))],
                      metadata={"note": "tail"}, small_records=True, pack_records=True, compact=True, tail=True,
                      aliases=[("tied", "big")], chunk_bytes=512)
    b.valid("tail_unindexed", tail_file,
            "format 1.6: a file of a few records ending with a TAIL without entries (count 0): a reader by name "
            "walks the records to list them")
    u_recs = records(tail_file)
    assert C.parse_tail(u_recs[-1][2], 0, None)[0] == []
    b.invalid("tail_unindexed_stray_chunk", assemble(u_recs[:-1] + [u_recs[3]], index=False, header=C.file_header(6))
              + C.tail_record([], len(tail_file) - len(C.frame(C.REC_TAIL, u_recs[-1][2])) + 20 + len(u_recs[3][2])),
              "CorruptDataError", "a TAIL without entries after a CHUNK record that follows an ALIAS record")
    tail_file = assemble(u_recs, header=C.file_header(6), tail=True)  # the same records, indexed
    trecs = records(tail_file)
    assert [r[0] for r in trecs] == [C.REC_META, C.REC_ZPACK, C.REC_TENSOR, C.REC_CHUNK, C.REC_CHUNK, C.REC_CHUNK,
                                     C.REC_ALIAS, C.REC_TAIL], \
        [r[0] for r in trecs]
    assert tail_file[8:12] == b"\x01\x00\x06\x00"
    b.valid("tail_record", tail_file,
            "format 1.6: the file ends with a TAIL record (type 15): file length, index entries (kind, name, gap "
            "from the previous entry's end, length, all varints) and a u32 stating the payload bytes before it")
    # an unknown optional record between two indexed records: the next entry's gap is its size
    gap_recs = trecs[:2] + [[99, 0, b"skipped by every reader"]] + trecs[2:]
    gap_file = assemble(gap_recs, header=C.file_header(6), tail=True)
    b.valid("tail_gap", gap_file,
            "format 1.6: a TAIL whose third entry has a nonzero gap (an unknown optional record lies before it)")
    t_at = len(tail_file) - C.RECORD_OVERHEAD - C.TAIL_TRAILER_SIZE - struct.unpack_from("<I", tail_file, len(tail_file) - 8)[0]
    t_entries, t_len = C.parse_tail(trecs[-1][2], 0, None)
    t_list = [(e.kind, e.name, e.offset, e.length) for e in t_entries]
    body = tail_file[:t_at]

    def tail_with(payload: bytes) -> bytes:
        return body + C.frame(C.REC_TAIL, payload, C.FLAG_REQUIRED)

    def tail_fields(entries_bytes: bytes, count: int, file_length: int | None = None, trailer: int | None = None,
                    extra: bytes = b"") -> bytes:
        # the file length counts the record itself: settle its varint for the bytes given
        fl = file_length
        if fl is None:
            fl = t_at + 20 + 2 + len(C.leb128(count)) + len(entries_bytes) + len(extra) + 4
            assert fl >> 7 and not fl >> 14  # a 2-byte varint
        head = C.leb128(fl) + C.leb128(count) + entries_bytes + extra
        return tail_with(head + struct.pack("<I", len(head) if trailer is None else trailer))

    def entry_bytes(entries) -> bytes:
        out, prev = b"", C.FILE_HEADER_SIZE
        for kind, name, off, ln in entries:
            raw = name.encode()
            out += bytes([kind]) + C.leb128(len(raw)) + raw + C.leb128(off - prev) + C.leb128(ln)
            prev = off + ln
        return out

    good_entries = entry_bytes(t_list)
    assert tail_fields(good_entries, len(t_list)) == tail_file
    b.invalid("tail_trailer", tail_fields(good_entries, len(t_list), trailer=len(good_entries)),
              "CorruptDataError", "TAIL whose u32 trailer states fewer bytes than precede it (by name the record "
              "cannot be found from the end: TruncatedError)", by_name="TruncatedError")
    b.invalid("tail_file_length", tail_fields(good_entries, len(t_list), file_length=len(tail_file) + 1),
              "CorruptDataError", "TAIL stating a file length one byte longer than the file")
    b.invalid("tail_count_over", tail_fields(good_entries, 1 << 20),
              "CorruptDataError", "TAIL declaring 2^20 entries in a few bytes")
    b.invalid("tail_count_short", tail_fields(good_entries, len(t_list) - 1),
              "CorruptDataError", "TAIL declaring one entry fewer than it holds (bytes left before the trailer)")
    b.invalid("tail_trailing_byte", tail_fields(good_entries, len(t_list), extra=b"\x00"),
              "CorruptDataError", "TAIL with a byte between its last entry and its trailer")
    wrong_kind = [(7 if i == 1 else k, n, o, ln) for i, (k, n, o, ln) in enumerate(t_list)]
    b.invalid("tail_kind", tail_fields(entry_bytes(wrong_kind), len(t_list)),
              "CorruptDataError", "TAIL entry of unknown kind 7")
    named_pack = [(k, "p" if k == C.ENTRY_PACK else n, o, ln) for k, n, o, ln in t_list]
    b.invalid("tail_named_pack", tail_fields(entry_bytes(named_pack), len(t_list)),
              "CorruptDataError", "TAIL pack entry (kind 5) with a name")
    past = t_list[:-1] + [(t_list[-1][0], t_list[-1][1], t_list[-1][2], len(tail_file))]
    b.invalid("tail_entry_past_end", tail_fields(entry_bytes(past), len(t_list)),
              "CorruptDataError", "TAIL entry whose length runs past the end of the file")
    shifted = t_list[:2] + [(t_list[2][0], t_list[2][1], t_list[2][2] + 1, t_list[2][3] - 1)] + t_list[3:]
    b.invalid("tail_entry_gap", tail_fields(entry_bytes(shifted), len(t_list)),
              "CorruptDataError", "TAIL entry whose gap points one byte into the record it should list")
    b.invalid("tail_then_bytes", tail_file + b"\x00",
              "CorruptDataError", "a byte after the TAIL record (by name: no end record at the end, TruncatedError; "
              "a stream reader stops at the TAIL, as at an END record)", by_name="TruncatedError", stream=None)

    # -- format 1.6: bytesplit plane mode 5 (the exponent byte joined with the top mantissa bits) ----------
    def rowed(seed: int, rows: int, cols: int, dtype: str) -> np.ndarray:
        # magnitudes u / (1 - u) (density 1 / (1 + y)^2; only IEEE division, so the same bytes everywhere) with
        # signs of their own: the density falls within each octave, so the top mantissa bit depends on the
        # exponent, as in trained weights
        u = np.array([(v + 0.5) / 1001 for v in lcg_ints(seed, rows * cols, 0, 1000)])
        sign = np.array([1.0 if v else -1.0 for v in lcg_ints(seed + 7, rows * cols, 0, 1)])
        body = u / (1.0 - u) * sign
        scale = np.array([2.0 ** (v - 6) for v in lcg_ints(seed + 1, rows, 0, 8)])
        return (body.reshape(rows, cols) * scale[:, None]).astype(dtype)

    joint_tensors = [("w32", rowed(960, 12, 100, "<f4")), ("wbf", rowed(970, 24, 100, "<f4").astype(BITS_BF16))]
    joint_file = write(joint_tensors, codec="lossless", compact=True, tail=True)
    jrecs = records(joint_file)
    jchunks = [i for i, r in enumerate(jrecs) if r[0] == C.REC_CHUNK]
    assert len(jchunks) == 2 and joint_file[8:12] == b"\x01\x00\x06\x00"
    from rdformat.codecs import bytesplit as BS  # noqa: E402
    for i, (_n, arr) in zip(jchunks, joint_tensors):
        assert BS.PLANE_ANS_JOINT in BS.plane_modes(jrecs[i][2][9:], arr.size, arr.dtype.itemsize), _n
    b.valid("joint_planes", joint_file,
            "format 1.6: bytesplit plane mode 5 in a float32 and a bfloat16 tensor: the exponent byte (segments "
            "and shifts as in mode 4) joined with the top mantissa bits of the byte below it into one ANS symbol "
            "(joint table: top-symbol table, then per top symbol the frequencies of its joint symbols), the low "
            "bits of that byte packed")
    jdata = jrecs[jchunks[0]][2][9:]
    count = joint_tensors[0][1].size
    jat = 2 * (1 + count)  # planes 0 and 1 are raw
    assert jdata[0] == jdata[1 + count] == BS.PLANE_RAW and jdata[jat] == BS.PLANE_ANS_JOINT

    def joint_with(data: bytes) -> bytes:
        recs = [list(r) for r in jrecs]
        recs[jchunks[0]][2] = jrecs[jchunks[0]][2][:9] + data
        return assemble(recs, header=C.file_header(6), tail=True)

    b.invalid("joint_bits_zero", joint_with(jdata[: jat + 1] + b"\x00" + jdata[jat + 2 :]),
              "CorruptDataError", "bytesplit joint plane with 0 joined bits (1..7 allowed)")
    b.invalid("joint_bits_eight", joint_with(jdata[: jat + 1] + b"\x08" + jdata[jat + 2 :]),
              "CorruptDataError", "bytesplit joint plane with 8 joined bits (1..7 allowed)")
    b.invalid("joint_wrong_plane", joint_with(jdata[: 1 + count] + jdata[jat:]),
              "CorruptDataError", "bytesplit joint plane (mode 5) at plane 1 of a float32 chunk (only plane 2)")
    b.invalid("joint_padding", joint_with(jdata[:-1] + bytes([jdata[-1] | 0x80]) if (count * 7) % 8 else
                                          jdata + b"\x01"),
              "CorruptDataError", "bytesplit joint plane whose packed low bits end in a nonzero unused bit")
    jsegs, jpos = BS._read_segments(jdata, jat + 2, count, 2)
    jtops, jafter = FrequencyTable.from_bytes(jdata, jpos)
    _g, jend = BS._read_varint(jdata, jafter, "g")
    b.invalid("joint_frequency_over", joint_with(jdata[:jafter] + C.leb128(int(jtops.freqs[0]) + 1) + jdata[jend:]),
              "CorruptDataError", "bytesplit joint table whose first joint frequency exceeds its top symbol's")
    b.invalid("joint_low_bits_short", joint_with(jdata[:-1]),
              "CorruptDataError", "bytesplit joint plane whose packed low bits are one byte short")

    # -- surp: progressive index streams, built from explicit runs (spec section 5.5) ----------------
    from rdformat.codecs import surp as SC  # noqa: E402

    def surp_prepared(runs_by_chunk, count: int, chunk_elements: int, cfg: dict, dtype: str, shape) -> Prepared:
        chunks = tuple(SC.encode_runs(runs, min(chunk_elements, count - i * chunk_elements), segment_bytes=24)
                       for i, runs in enumerate(runs_by_chunk))
        return Prepared(SC.SurpCodec(cfg), None, np.dtype(dtype), tuple(shape), chunks=chunks,
                        chunk_elements=chunk_elements)

    def runs(seed: int, n: int, passes: int) -> list:
        out, kept = [], np.zeros(0, dtype=np.int64)
        for p in range(passes):
            fresh = np.setdiff1d(np.arange(n), kept)
            new = np.sort(fresh[np.array(lcg_ints(seed + p, fresh.size, 0, 3)) == 0])
            if new.size:
                ranks = np.searchsorted(fresh, new)
                out.append(SC.Run(p, SC.CLASS_NEW, ranks, np.array(lcg_ints(seed + 50 + p, new.size, 0, 1)) == 1))
            if kept.size:
                ref = np.flatnonzero(np.array(lcg_ints(seed + 90 + p, kept.size, 0, 2)) == 0)
                if ref.size:
                    out.append(SC.Run(p, SC.CLASS_REFINE, ref))
            kept = np.union1d(kept, new)
        return out

    cfg = {"norm": 2.0, "t0": 0.25, "decay": 0.5, "umax": 0.45, "offset": 0.5, "seed": 3}
    surp_file = write([
        ("w_f32", surp_prepared([runs(301, 40, 5), runs(302, 20, 4)], 60, 40, cfg, "<f4", (6, 10))),
        ("w_bf16", surp_prepared([runs(303, 12, 3)], 12, 12, {**cfg, "seed": 0, "offset": 0.0}, "bfloat16",
                                 (3, 4))),
        ("bias", np.arange(5, dtype="<f4")),
    ])
    b.valid("surp_streams", surp_file,
            "codec surp: a float32 tensor in two chunks (several segments each, NEW and REFINE runs over "
            "five passes, decoder offset 0.5) and a bfloat16 tensor (offset 0), next to a lossless bias")
    surp_recs = records(write([("w", surp_prepared([runs(304, 30, 4)], 30, 30, cfg, "<f4", (5, 6)))]))
    t_s, c_s = surp_recs[0], surp_recs[1]
    for name, config, what in (("surp_config_missing_decay", '{"norm":2.0,"t0":0.25,"umax":0.45,"offset":0.5,"seed":3}',
                                "no decay"),
                               ("surp_config_decay_one", '{"norm":2.0,"t0":0.25,"decay":1.0,"umax":0.45,'
                                '"offset":0.5,"seed":3}', "decay 1 (the schedule must shrink)"),
                               ("surp_config_unknown_key", '{"norm":2.0,"t0":0.25,"decay":0.5,"umax":0.45,'
                                '"offset":0.5,"seed":3,"x":1}', "an unknown key")):
        b.invalid(name, assemble([[3, 0, set_tensor_field(t_s[2], config=config)], c_s]), "CorruptDataError",
                  f"surp configuration with {what}")
    b.invalid("surp_integer_dtype", assemble([[3, 0, set_tensor_field(t_s[2], dtype_code=7)], c_s]),
              "CorruptDataError", "surp declared on an int32 tensor")
    s_data = bytes(c_s[2][9:])
    b.invalid("surp_segment_truncated", assemble([t_s, chunk(0, s_data[:-2])]), "TruncatedError",
              "surp chunk whose last segment misses its last 2 bytes")

    # -- layered tensors (1.3): surp streams whose segments follow every tensor in LAYER records -------
    from rdformat.format.layers import layer_payload  # noqa: E402

    layered_file = write([
        ("w_f32", surp_prepared([runs(311, 40, 6), runs(312, 20, 5)], 60, 40, cfg, "<f4", (6, 10))),
        ("bias", np.arange(5, dtype="<f4")),
        ("w_bf16", surp_prepared([runs(313, 12, 4)], 12, 12, {**cfg, "seed": 0, "offset": 0.0}, "bfloat16",
                                 (3, 4))),
    ], aliases=[("w_tied", "w_f32")], layered=True, layer_bytes=40)
    b.valid("surp_layered", layered_file,
            "format 1.3: two layered surp tensors (float32 in two chunks, bfloat16) with empty chunk records, "
            "their segments in LAYER records after every tensor (pieces of several chunks and tensors per "
            "record, ordered by pass threshold), a lossless tensor between them and an alias of a layered tensor")
    l_recs = records(layered_file)
    layer_at = [i for i, r in enumerate(l_recs) if r[0] == C.REC_LAYER]
    first_layer = l_recs[layer_at[0]]
    base_recs = l_recs[: layer_at[0]]
    rest = l_recs[layer_at[0] + 1 : -2]

    def with_first_layer(pieces) -> bytes:
        return assemble(base_recs + [[C.REC_LAYER, C.FLAG_REQUIRED, layer_payload(pieces)]] + rest,
                        header=layered_file[:C.FILE_HEADER_SIZE])

    from rdformat.format.layers import parse_layer  # noqa: E402
    pieces = [(p.tensor, p.chunk, first_layer[2][p.offset : p.offset + p.length])
              for p in parse_layer(first_layer[2], 0)]
    t0, c0, d0 = pieces[0]
    b.invalid("layer_unknown_tensor", with_first_layer([(9, c0, d0)] + pieces[1:]), "CorruptDataError",
              "a LAYER piece for tensor ordinal 9 (the file has 3 tensors)")
    b.invalid("layer_not_layered_tensor", with_first_layer([(1, 0, d0)] + pieces[1:]), "CorruptDataError",
              "a LAYER piece for the lossless tensor (ordinal 1), which is not layered")
    b.invalid("layer_chunk_out_of_range", with_first_layer([(t0, 2, d0)] + pieces[1:]), "CorruptDataError",
              "a LAYER piece for chunk 2 of a tensor with 2 chunks")
    overrun = bytearray(layer_payload(pieces))
    overrun[3] += 1  # the first piece's length (single-byte varints): one byte more than the payload holds
    b.invalid("layer_piece_overrun", assemble(base_recs + [[C.REC_LAYER, C.FLAG_REQUIRED, bytes(overrun)]] + rest,
                                              header=layered_file[:C.FILE_HEADER_SIZE]),
              "CorruptDataError", "a LAYER piece whose length runs past its record's payload")
    b.invalid("layer_empty", with_first_layer([]), "CorruptDataError", "a LAYER record with no piece")
    bias_at = [i for i, r in enumerate(l_recs) if r[0] == C.REC_TENSOR and b"bias" in r[2][:8]][0]
    flagged = list(l_recs)
    flagged[bias_at] = [C.REC_TENSOR, 0, set_tensor_field(l_recs[bias_at][2], flags=C.TENSOR_LAYERED)]
    b.invalid("layer_flag_lossless", assemble(flagged, header=layered_file[:C.FILE_HEADER_SIZE]), "CorruptDataError",
              "the LAYERED flag on a bytesplit (not progressive) tensor")
    moved = base_recs[:bias_at] + base_recs[bias_at + 2 :] + [first_layer] + base_recs[bias_at : bias_at + 2] + rest
    b.invalid("layer_before_tensor", assemble(moved, header=layered_file[:C.FILE_HEADER_SIZE]), "CorruptDataError",
              "a TENSOR record after a LAYER record (layers follow every tensor)")
    no_entry = bytearray(layered_file[: -C.END_RECORD_SIZE])
    idx = C.parse_index(l_recs[-2][2], 0, None)
    kept = [(e.kind, e.name, e.offset, e.length) for e in idx if e.kind != C.ENTRY_LAYERS]
    index_at = len(layered_file) - C.END_RECORD_SIZE - C.RECORD_OVERHEAD - len(l_recs[-2][2])
    no_entry = bytearray(layered_file[:index_at]) + C.frame(C.REC_INDEX, C.index_payload(kept))
    no_entry += C.frame(C.REC_END, C.end_payload(index_at, len(no_entry) + C.END_RECORD_SIZE))
    b.invalid("layer_index_no_entry", bytes(no_entry), "CorruptDataError",
              "an INDEX without the layers entry (kind 6) of a file with LAYER records")
    b.invalid("layer_truncated", layered_file[: C.FILE_HEADER_SIZE + sum(20 + len(r[2]) for r in l_recs[: layer_at[1]]) - 3],
              "TruncatedError", "a layered file cut inside its second LAYER record (without partial reading)")

    manifest = {
        "format": "rdc-v1 conformance vectors",
        "manifest_version": MANIFEST_VERSION,
        "generator": "tools/gen_vectors.py",
        "dtypes": dtype_names,
        "vectors": dict(sorted(b.manifest.items())),
    }
    b.files["manifest.json"] = (json.dumps(manifest, indent=1, sort_keys=False, ensure_ascii=False) + "\n").encode()
    return b.files


def managed_files(folder: Path) -> dict[str, Path]:
    """The files this generator owns in ``folder``: manifest.json, valid/* and invalid/* (README.md and
    any other folder, e.g. golden/, belong to someone else and are never touched)."""
    out = {}
    if (folder / "manifest.json").exists():
        out["manifest.json"] = folder / "manifest.json"
    for sub in ("valid", "invalid"):
        if (folder / sub).is_dir():
            out.update({p.relative_to(folder).as_posix(): p for p in (folder / sub).rglob("*") if p.is_file()})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the vectors (default: only compare)")
    parser.add_argument("--out", type=Path, default=VECTORS, help="output folder (default spec/vectors)")
    args = parser.parse_args(argv)
    files = build()
    on_disk = managed_files(args.out)
    drift = sorted(rel for rel, data in files.items() if rel not in on_disk or on_disk[rel].read_bytes() != data)
    stale = sorted(rel for rel in on_disk if rel not in files)
    if not args.write:
        for rel in drift:
            print(f"differs: {rel}")
        for rel in stale:
            print(f"not generated: {rel}")
        print(f"{len(files)} files generated, {len(drift)} differ, {len(stale)} extra")
        return 1 if drift or stale else 0
    for rel in stale:
        on_disk[rel].unlink()
    for rel, data in files.items():
        path = args.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    print(f"wrote {len(files)} files to {args.out} ({len(drift)} changed, {len(stale)} removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
