"""The fuzz harnesses: one-input functions, their structure-aware mutators and seed corpora.

Each harness's ``one_input(data)`` returns normally when rdformat accepts the input or rejects it
with an :class:`rdformat.RdcError`; anything else escaping (IndexError, ValueError, MemoryError...)
is a finding, and so is an oracle violation (raised as :class:`Finding`): a file that one reading
path accepts but another rejects or decodes differently, an ANS block the decoder accepts but the
encoder would not produce, a table that does not re-serialise to its own bytes, two ANS backends
that disagree.

Run them with atheris through ``fuzz/fuzz_rdc.py`` (see README.md) or without atheris through
``tests/test_fuzz_smoke.py``.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import rdformat
from rdformat.format import records as C
from rdformat.codecs import codec_from_config
from rdformat.format.dtypes import by_code
from rdformat.entropy import FrequencyTable, ans
from rdformat.errors import RdcError

import fieldmut as M
import packmut as P
import rdcfuzz as F

#: Reader caps used while fuzzing: small enough that every input decodes in well under a second
#: (a valid 60-byte chunk may legitimately declare a 256 MiB constant plane).
LIMITS = rdformat.Limits(max_tensor_bytes=1 << 22, max_meta_bytes=1 << 20, max_graph_bytes=1 << 20)
MAX_CHUNK_BYTES = 1 << 22  # codec harness: largest decoded chunk tried
MAX_ANS_COUNT = 1 << 20  # ANS harness: most symbols tried (auto backend)
MAX_ANS_COUNT_NUMPY = 1 << 14  # ... with the numpy backend (pure-Python speed)


class Finding(AssertionError):
    """An oracle violation (not an exception of the library itself)."""


def same_arrays(a: dict, b: dict) -> bool:
    if list(a) != list(b):
        return False
    return all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
               for k in a)


# ------------------------------------------------------------------------------------------------
# reader harnesses


def _by_name(data: bytes) -> dict:
    out = {}
    with rdformat.open(io.BytesIO(data), limits=LIMITS) as f:
        for name in f.keys():
            out[name] = f.get_tensor(name)
    return out


def load_bytes(data: bytes) -> None:
    """rdformat.load on bytes; a file it accepts must read the same as a stream and by name."""
    try:
        got = rdformat.load(data, limits=LIMITS)
    except RdcError:
        return
    try:
        streamed = rdformat.load(F.NonSeekable(data), limits=LIMITS)
        named = _by_name(data)
    except RdcError as exc:
        raise Finding(f"load(bytes) accepts the file but another reading path fails: {exc!r}") from exc
    if not same_arrays(got, streamed):
        raise Finding("load(bytes) and load(stream) return different tensors")
    if not same_arrays(got, named):
        raise Finding("load(bytes) and get_tensor() return different tensors")


def meta(data: bytes) -> None:
    """Metadata and graph by name and as a stream (must agree), then ``load_bytes``'s oracle."""
    try:
        with rdformat.open(io.BytesIO(data), limits=LIMITS) as f:
            got = (f.metadata, f.graph_format, f.graph)
    except RdcError:
        got = None
    if got is not None:
        try:
            with rdformat.open(F.NonSeekable(data), limits=LIMITS) as f:
                streamed = (f.metadata, f.graph_format, f.graph)
        except RdcError:
            streamed = None  # the stream reader may meet a later error first; load_bytes decides below
        if streamed is not None and repr(streamed) != repr(got):
            raise Finding("metadata or graph differ between the seekable and the streaming reader")
    load_bytes(data)


def load_stream(data: bytes) -> None:
    """rdformat.load on a non-seekable stream with short reads."""
    try:
        rdformat.load(F.NonSeekable(data, max_read=1 + len(data) % 4099), limits=LIMITS)
    except RdcError:
        pass


def by_name(data: bytes) -> None:
    """open() + every by-name accessor, continuing after errors (the reader must stay consistent)."""
    try:
        f = rdformat.open(io.BytesIO(data), limits=LIMITS)
    except RdcError:
        return
    with f:
        _ = f.graph, f.graph_format
        try:  # the metadata's JSON is parsed on first use, so it may fail here (and again, the same way)
            _ = f.metadata
        except RdcError:
            pass
        for attempt in range(2):  # a failed index load must fail the same way again, not crash
            try:
                names = f.keys()
                break
            except RdcError:
                names = None
        if names is None:
            for probe in ("w", "a"):
                try:
                    f.get_tensor(probe)
                except RdcError:
                    pass
            return
        for name in names + ["missing"]:
            for call in (f.info, f.get_tensor, f.__contains__):
                try:
                    call(name)
                except RdcError:
                    pass
        try:
            _ = f.aliases
            for _item in f:
                pass
        except RdcError:
            pass


# ------------------------------------------------------------------------------------------------
# adapters: what the file's metadata makes rdc decompress / rdc info do

_ADAPTER_BASE: Path | None = None
#: Files that exist in the output folder before every export: decompress must never change them.
CANARIES = {"model-00001-of-00002.safetensors": b"canary 1", "a.safetensors": b"canary 2",
            "x.npz": b"canary 3", "model.safetensors.index.json.bak": b"canary 4"}
MAX_ADAPTER_BYTES = 1 << 24  # decoded bytes of a file given to the adapters (they use default limits)


def _adapter_base() -> Path:
    global _ADAPTER_BASE
    if _ADAPTER_BASE is None or not _ADAPTER_BASE.is_dir():
        root = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        _ADAPTER_BASE = Path(tempfile.mkdtemp(prefix="rdc-fuzz-adapters-", dir=root))
        atexit.register(shutil.rmtree, _ADAPTER_BASE, True)
        (_ADAPTER_BASE / "outside.txt").write_bytes(b"outside")
    return _ADAPTER_BASE


def _tree(base: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(base))
            if p.is_symlink():
                out[rel] = "symlink"
            elif p.is_file():
                out[rel] = p.read_bytes() if p.stat().st_size <= 4096 else "file"
            else:
                out[rel] = "dir"
    return out


def adapters(data: bytes) -> None:
    """The adapters' export paths on a file ``rdformat.load`` accepts: ``.npz``, ``.safetensors``
    (single and sharded, whose shard names come from the metadata), ``.pt`` (strides, key order, extra
    entries), ``.onnx`` when there is a graph, and ``rdc info``'s summary (recorded sensitivity).
    Only RdcError may escape; nothing may be written outside the output folder, no existing file in it
    may change, and the input must stay intact."""
    try:
        ref = rdformat.load(data, limits=LIMITS)
    except RdcError:
        return
    if sum(a.nbytes for a in ref.values()) > MAX_ADAPTER_BYTES:
        return
    base = _adapter_base()
    out = base / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    src = out / "input.rdc"
    src.write_bytes(data)
    for name, content in CANARIES.items():
        (out / name).write_bytes(content)
    before = _tree(base)
    from rdformat import npz, safetensors  # noqa: PLC0415
    from rdformat.cli import summary  # noqa: PLC0415

    sel = zlib.crc32(data)
    calls = [(npz.decompress_file, "model.npz"), (safetensors.decompress_file, "model.safetensors"),
             (safetensors.decompress_file, "model.safetensors.index.json"),
             (safetensors.decompress_file, "sub.json")]
    if sel % 4 == 0:
        from rdformat import torch as rtorch  # noqa: PLC0415
        calls.append((rtorch.decompress_file, "model.pt"))
    if b"onnx" in data:
        from rdformat import onnx as ronnx  # noqa: PLC0415
        calls.append((ronnx.decompress_file, "model.onnx"))
    done = []
    for fn, dst in calls:
        try:
            fn(src, out / dst)
            done.append(dst)
        except RdcError:
            pass
    try:
        summary.tensor_summary(src)
    except RdcError:
        pass
    after = _tree(base)
    for rel, content in before.items():
        if after.get(rel) != content:
            raise Finding(f"an export changed or removed {rel!r}, which existed before (not its output)")
    for rel, kind in after.items():
        if rel in before:
            continue
        if not rel.startswith("out" + os.sep) or os.sep in rel[4:] or kind in ("dir", "symlink"):
            raise Finding(f"an export created {rel!r}: outside its output folder, a folder or a link")
    if "model.npz" in done:
        with np.load(out / "model.npz") as z:
            if sorted(z.files) != sorted(ref):
                raise Finding(f"npz export holds {sorted(z.files)[:5]}, expected the file's tensors {list(ref)[:5]}")


# ------------------------------------------------------------------------------------------------
# codec and entropy harnesses


def codec_one_input(codec_id: str) -> Callable[[bytes], None]:
    """Harness for one codec's chunk decoder, called as the reader calls it."""

    def one_input(data: bytes) -> None:
        parsed = F.unpack_codec_input(data)
        if parsed is None:
            return
        dtype_code, count, cfg, chunk = parsed
        try:
            info = by_code(dtype_code)
            config = C.parse_json_object(cfg, "codec configuration", 0)
            codec = codec_from_config(codec_id, config)
        except RdcError:
            return
        # the reader's preconditions: 1 <= count and count * itemsize within the chunk limit
        if not 1 <= count or count * info.itemsize > MAX_CHUNK_BYTES:
            return
        try:
            out = codec.decode_chunk(memoryview(chunk), count, info)
        except RdcError:
            return
        if not isinstance(out, np.ndarray) or out.shape != (count,) or out.dtype != info.numpy:
            raise Finding(f"{codec_id} decoded to {type(out).__name__} {getattr(out, 'shape', None)} "
                          f"{getattr(out, 'dtype', None)}, expected ({count},) {info.numpy}")
        if codec_id == "raw" and out.tobytes() != bytes(chunk):
            raise Finding("raw decode does not return the chunk bytes")

    one_input.__name__ = f"codec_{codec_id}"
    return one_input


def ans_decode(data: bytes) -> None:
    """FrequencyTable.from_bytes then ans.decode; accepted blocks must be canonical, backends agree."""
    if len(data) < F.ANS_HEAD.size:
        return
    options, count = F.ANS_HEAD.unpack_from(data)
    backend = "numpy" if options & 4 else "auto"
    if count > (MAX_ANS_COUNT_NUMPY if backend == "numpy" else MAX_ANS_COUNT):
        return
    out_dtype = F.ANS_OUT[options & 3]
    try:
        table, end = FrequencyTable.from_bytes(data, F.ANS_HEAD.size)
    except RdcError:
        return
    if table.to_bytes() != data[F.ANS_HEAD.size : end]:
        raise Finding("a frequency table was accepted but does not re-serialise to its own bytes")
    block = data[end:]
    backends = ["numpy", "auto"] if count <= MAX_ANS_COUNT_NUMPY else [backend]
    if backend == "auto" and len(backends) == 2:
        backends.reverse()
    results = []
    for be in backends:
        try:
            results.append(ans.decode(block, count, table, backend=be, out_dtype=out_dtype))
        except RdcError as exc:
            results.append(type(exc))
    first = results[0]
    for other in results[1:]:
        if isinstance(first, np.ndarray) != isinstance(other, np.ndarray) or (
                isinstance(first, np.ndarray) and not np.array_equal(first, other)) or (
                not isinstance(first, np.ndarray) and first is not other):
            raise Finding(f"ANS backends disagree: {first if not isinstance(first, np.ndarray) else 'array'} "
                          f"vs {other if not isinstance(other, np.ndarray) else 'array'}")
    if not isinstance(first, np.ndarray):
        return
    out = first
    if out.shape != (count,) or out.dtype != np.dtype(out_dtype):
        raise Finding(f"ANS decode returned {out.shape} {out.dtype}")
    if count and not np.isin(out, table.symbols).all():
        raise Finding("ANS decode returned a symbol that is not in the table")
    lanes = int.from_bytes(block[:4], "little")
    again = ans.encode(out, table, lanes=lanes if lanes else None)
    if again != bytes(block):
        raise Finding("the decoder accepted an ANS block that the encoder does not produce (non-canonical)")


def table_from_bytes(data: bytes) -> None:
    """FrequencyTable.from_bytes at an offset; an accepted table re-serialises to its bytes."""
    if not data:
        return
    offset = data[0] % 4
    buf = data[1:]
    if offset > len(buf):
        return
    try:
        table, end = FrequencyTable.from_bytes(buf, offset)
    except RdcError:
        return
    if table.to_bytes() != buf[offset:end]:
        raise Finding("a frequency table was accepted but does not re-serialise to its own bytes")


# ------------------------------------------------------------------------------------------------
# registry


@dataclass
class Harness:
    name: str
    one_input: Callable[[bytes], None]
    mutate: Callable[[np.random.Generator, bytes, list], bytes]  # (rng, data, parsed pool) -> data
    seeds: Callable[[], list[bytes]]
    fix_crcs: bool  # after a generic byte mutation, re-frame as .rdc (CRCs recomputed)
    warmup: bool = False  # run the seeds once before fuzzing (first-call imports would count as hangs)


#: The file harnesses' mutators: rdcfuzz's and fieldmut's, and packmut's PACK/ZPACK/DMETA ones (formats 1.3-1.5).
FILE_MUTATORS = M.FILE_MUTATORS_ALL + P.MUTATORS


def _file_mutate(rng, data, pool):
    return M.mutate_file(rng, data, pool, mutators=FILE_MUTATORS)


def _meta_mutate(rng, data, pool):
    return M.mutate_file(rng, data, pool, mutators=M.FILE_MUTATORS_META + [(0.08, P.m_dmeta)])


def _adapter_seeds() -> list[bytes]:
    """The metadata seeds that load (invalid files never reach the adapters)."""
    out = []
    for s in M.meta_seeds():
        try:
            rdformat.load(s, limits=LIMITS)
        except RdcError:
            continue
        out.append(s)
    return out


def _adapters_mutate(rng, data, pool):
    return M.mutate_file(rng, data, pool, mutators=M.FILE_MUTATORS_ADAPTERS)


def _small_mutate(rng, data, pool):
    return M.mutate_file(rng, data, pool, mutators=M.FILE_MUTATORS_SMALL + [(0.08, P.m_pack)])


def _codec_mutate(codec_id):
    return lambda rng, data, pool: M.mutate_codec_input(rng, data, codec_id)


def _table_seeds() -> list[bytes]:
    out = []
    for s in F.ans_seeds():
        _opts, _count = F.ANS_HEAD.unpack_from(s)
        out.append(b"\x00" + s[F.ANS_HEAD.size:])
    out.append(b"\x00" + bytes.fromhex("0E 03 03 00 A7 02 FF 7C FF 01 7F".replace(" ", "")))
    return out


def _table_mutate(rng, data, pool):
    if len(data) < 2 or rng.random() < 0.3:
        return F.mutate_bytes(rng, data)
    try:
        t, end = F.Table.parse(data, 1)
    except (IndexError, ValueError):
        return F.mutate_bytes(rng, data)
    t.mutate(rng)
    return data[:1] + t.to_bytes() + (data[end:] if rng.random() < 0.7 else F.mutate_bytes(rng, data[end:]))


HARNESSES: dict[str, Harness] = {
    h.name: h
    for h in [
        Harness("load_bytes", load_bytes, _file_mutate, M.file_seeds, True),
        Harness("load_stream", load_stream, _file_mutate, M.file_seeds, True),
        Harness("by_name", by_name, _file_mutate, M.file_seeds, True),
        Harness("meta", meta, _meta_mutate, M.meta_seeds, True),
        Harness("small", load_bytes, _small_mutate, M.small_seeds, True),
        Harness("adapters", adapters, _adapters_mutate, _adapter_seeds, True, warmup=True),
        Harness("codec_raw", codec_one_input("raw"), _codec_mutate("raw"), lambda: M.chunk_seeds("raw"), False),
        Harness("codec_bytesplit", codec_one_input("bytesplit"), _codec_mutate("bytesplit"),
                lambda: M.chunk_seeds("bytesplit"), False),
        Harness("codec_sq", codec_one_input("sq"), _codec_mutate("sq"), lambda: M.chunk_seeds("sq"), False),
        Harness("codec_dq", codec_one_input("dq"), _codec_mutate("dq"), lambda: M.chunk_seeds("dq"), False),
        Harness("codec_surp", codec_one_input("surp"), _codec_mutate("surp"), lambda: M.chunk_seeds("surp"),
                False),
        Harness("ans_decode", ans_decode, lambda rng, data, pool: F.mutate_ans_input(rng, data), F.ans_seeds, False),
        Harness("table_from_bytes", table_from_bytes, _table_mutate, _table_seeds, False),
    ]
}


def extra_codec_harness(codec_id: str) -> Harness:
    """A harness for any registered codec (e.g. ``sq``), seeded with the raw and bytesplit chunks."""
    return Harness(f"codec_{codec_id}", codec_one_input(codec_id), _codec_mutate(codec_id),
                   lambda: F.chunk_seeds("raw") + F.chunk_seeds("bytesplit"), False)


def get(name: str) -> Harness:
    if name in HARNESSES:
        return HARNESSES[name]
    if name.startswith("codec_"):
        return extra_codec_harness(name[len("codec_"):])
    raise KeyError(f"unknown harness {name!r}; known: {', '.join(HARNESSES)}, codec_<id>")
