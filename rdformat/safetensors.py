"""safetensors adapter: ``.safetensors`` files and sharded checkpoints <-> ``.rdc`` containers.

Verbs (same as the other adapters; tensors are numpy arrays, bfloat16/float8 as ``ml_dtypes``)::

    data = rdformat.safetensors.save({"w": array}, metadata={"format": "pt"})   # -> .rdc bytes
    rdformat.safetensors.save_file(tensors, "model.rdc", metadata=None)
    tensors = rdformat.safetensors.load(data)                                  # -> dict[str, ndarray]
    tensors = rdformat.safetensors.load_file("model.rdc")

safetensors files (read and written by this module itself, one tensor at a time, so bfloat16,
float16 and float8 pass bit-exact and huge files never sit in memory whole)::

    tensors, meta = rdformat.safetensors.read_safetensors("model.safetensors")
    rdformat.safetensors.write_safetensors(tensors, "model.safetensors", metadata={"format": "pt"})
    rdformat.safetensors.compress_file("model.safetensors", "model.rdc")
    rdformat.safetensors.compress_file("model.safetensors.index.json", "model.rdc")    # sharded
    rdformat.safetensors.decompress_file("model.rdc", "model.safetensors")
    rdformat.safetensors.decompress_file("model.rdc", "out/model.safetensors.index.json")  # shards

Metadata written under ``metadata["rdformat"]``: ``source_format`` (``"safetensors"`` or
``"safetensors-sharded"``), ``safetensors_metadata`` (the ``__metadata__`` string map), and for sharded
checkpoints ``index_metadata`` (the index's ``metadata`` object) and ``shards``
(``[{"file", "metadata", "tensors"}]``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .adapters import (FormatError, Progress, adapter_info, atomic_output, is_structural_dtype, make_metadata,
                       no_progress, open_rdc, path_inside, rdc_bytes, write_rdc)
from .errors import InvalidInputError, UnsupportedFeatureError
from .format.dtypes import numpy_dtype


#: Largest JSON header accepted (the reference implementation's limit).
MAX_HEADER_BYTES = 100_000_000

_ST_TO_NP = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "U32": "uint32",
    "I32": "int32",
    "U64": "uint64",
    "I64": "int64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
_NP_TO_ST = {v: k for k, v in _ST_TO_NP.items()}


def _np_dtype(st: str, name: str) -> np.dtype:
    np_name = _ST_TO_NP.get(st)
    if np_name is None:
        raise UnsupportedFeatureError(f"tensor {name!r}: safetensors dtype {st!r} is not supported by .rdc",
                                      tensor=name)
    return numpy_dtype(np_name).newbyteorder("<")


def _st_dtype(dtype: np.dtype, name: str) -> str:
    st = _NP_TO_ST.get(np.dtype(dtype).name)
    if st is None:
        raise InvalidInputError(f"tensor {name!r}: dtype {dtype} cannot be written to safetensors", tensor=name)
    return st


# ----------------------------------------------------------------------------------------------------
# Reading .safetensors


class Entry:
    """One tensor of a safetensors header."""

    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, dtype: np.dtype, shape: tuple[int, ...], begin: int, end: int) -> None:
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise FormatError(f"duplicate key {k!r} in safetensors header")
        out[k] = v
    return out


def read_header(fh: BinaryIO, size: int, *, name: str = "<stream>") -> tuple[list[Entry], dict[str, str] | None, int]:
    """Parse and validate a safetensors header; returns (entries in file order, __metadata__, data start)."""
    head = fh.read(8)
    if len(head) < 8:
        raise FormatError(f"{name}: too short to be a safetensors file")
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER_BYTES:
        raise FormatError(f"{name}: safetensors header of {n} bytes is over the {MAX_HEADER_BYTES} byte limit")
    if 8 + n > size:
        raise FormatError(f"{name}: safetensors header length {n} runs past the end of the file ({size} bytes)")
    raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{name}: safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise FormatError(f"{name}: safetensors header is not a JSON object")
    data_start = 8 + n
    data_len = size - data_start
    meta = header.pop("__metadata__", None)
    if meta is not None:
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise FormatError(f"{name}: __metadata__ must map strings to strings")
    entries: list[Entry] = []
    for tname, spec in header.items():
        if not isinstance(spec, dict):
            raise FormatError(f"{name}: header entry {tname!r} is not an object")
        dtype = _np_dtype(spec.get("dtype"), tname) if isinstance(spec.get("dtype"), str) else None
        shape, offsets = spec.get("shape"), spec.get("data_offsets")
        if dtype is None or not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
            raise FormatError(f"{name}: header entry {tname!r} lacks dtype/shape/data_offsets")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise FormatError(f"{name}: tensor {tname!r} has an invalid shape {shape}")
        begin, end = offsets
        if not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets) or not 0 <= begin <= end <= data_len:
            raise FormatError(f"{name}: tensor {tname!r} has data_offsets {offsets} outside the data ({data_len} bytes)")
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        if end - begin != nbytes:
            raise FormatError(
                f"{name}: tensor {tname!r} spans {end - begin} bytes but {spec['dtype']}{shape} needs {nbytes}"
            )
        entries.append(Entry(tname, dtype, tuple(shape), begin, end))
    entries.sort(key=lambda e: (e.begin, e.end))
    last = 0
    for e in entries:
        if e.begin < last:
            raise FormatError(f"{name}: tensor {e.name!r} overlaps the tensor before it")
        last = e.end
    return entries, meta, data_start


def _read_entry(fh: BinaryIO, entry: Entry, data_start: int, name: str) -> np.ndarray:
    fh.seek(data_start + entry.begin)
    nbytes = entry.end - entry.begin
    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    while got < nbytes:
        n = fh.readinto(view[got:])
        if not n:
            raise FormatError(f"{name}: file ends inside tensor {entry.name!r}")
        got += n
    return np.frombuffer(buf, dtype=entry.dtype).reshape(entry.shape)


def inspect(path: str | os.PathLike) -> tuple[list[Entry], dict[str, str] | None]:
    """The validated header of a safetensors file: (entries in file order, __metadata__)."""
    with open(path, "rb") as fh:
        entries, meta, _ = read_header(fh, os.fstat(fh.fileno()).st_size, name=os.fspath(path))
    return entries, meta


def iter_safetensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, array)`` of a safetensors file in file order, one tensor in memory at a time."""
    with open(path, "rb") as fh:
        entries, _, start = read_header(fh, os.fstat(fh.fileno()).st_size, name=os.fspath(path))
        for e in entries:
            yield e.name, _read_entry(fh, e, start, os.fspath(path))


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str] | None]:
    """Read a whole safetensors file: ``(tensors, __metadata__ or None)``."""
    _, meta = inspect(path)
    return dict(iter_safetensors(path)), meta


# ----------------------------------------------------------------------------------------------------
# Writing .safetensors

TensorSpec = tuple[str, np.dtype, tuple[int, ...]]


def _write_stream(fh: BinaryIO, specs: list[TensorSpec], get: Callable[[str], np.ndarray],
                  metadata: Mapping[str, str] | None, progress: Progress) -> None:
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise InvalidInputError("safetensors __metadata__ must map strings to strings")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in specs:
        nbytes = np.dtype(dtype).itemsize
        for d in shape:
            nbytes *= int(d)
        header[name] = {"dtype": _st_dtype(dtype, name), "shape": [int(d) for d in shape],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    fh.write(len(raw).to_bytes(8, "little"))
    fh.write(raw)
    for name, dtype, shape in progress(specs, total=len(specs), desc="write"):
        array = np.asarray(get(name))
        if array.dtype != np.dtype(dtype) or tuple(array.shape) != tuple(shape):
            raise InvalidInputError(f"tensor {name!r} changed dtype/shape while writing", tensor=name)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        fh.write(memoryview(np.asarray(array, order="C").reshape(-1).view(np.uint8)))


def write_safetensors(tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
                      path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None) -> None:
    """Write numpy arrays to a ``.safetensors`` file (atomic), in the given order."""
    items = list(tensors.items() if isinstance(tensors, Mapping) else tensors)
    arrays = {}
    for name, a in items:
        if name in arrays:
            raise InvalidInputError(f"duplicate tensor name {name!r}")
        arrays[name] = np.asarray(a)
    specs = [(n, a.dtype, tuple(a.shape)) for n, a in arrays.items()]
    with atomic_output(path) as fh:
        _write_stream(fh, specs, arrays.__getitem__, metadata, no_progress)


# ----------------------------------------------------------------------------------------------------
# Sharded checkpoints


def read_index(path: str | os.PathLike) -> tuple[dict, list[tuple[str, Path, list[str]]]]:
    """Parse a ``*.safetensors.index.json``: (index metadata, [(file name, resolved path, tensor names)])."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read().decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{path}: not a valid JSON index: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise FormatError(f"{path}: index has no 'weight_map' object")
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict):
        raise FormatError(f"{path}: index 'metadata' is not an object")
    shards: dict[str, list[str]] = {}
    for tname, fname in doc["weight_map"].items():
        if not isinstance(fname, str):
            raise FormatError(f"{path}: weight_map[{tname!r}] is not a file name")
        shards.setdefault(fname, []).append(tname)
    out = []
    for fname in sorted(shards):
        out.append((fname, path_inside(path.parent, fname, what=f"{path.name}: shard"), shards[fname]))
    return meta, out


# ----------------------------------------------------------------------------------------------------
# Verbs: .rdc <-> numpy arrays


def _items_and_structural(tensors) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    items = [(n, np.asarray(a)) for n, a in (tensors.items() if isinstance(tensors, Mapping) else tensors)]
    return items, [n for n, a in items if is_structural_dtype(a.dtype)]


def save(tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]], *,
         metadata: Mapping[str, str] | None = None, codec: str = "lossless", lossy: Any = None) -> bytes:
    """Encode numpy arrays (+ an optional safetensors-style string map) as .rdc bytes."""
    items, structural = _items_and_structural(tensors)
    meta = make_metadata("safetensors", None, safetensors_metadata=dict(metadata) if metadata else None)
    return rdc_bytes(items, metadata=meta, structural=structural, codec=codec, lossy=lossy)


def save_file(tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
              path: str | os.PathLike | BinaryIO, *, metadata: Mapping[str, str] | None = None,
              codec: str = "lossless", lossy: Any = None) -> None:
    """Write numpy arrays to an .rdc file (atomically) or binary stream."""
    items, structural = _items_and_structural(tensors)
    meta = make_metadata("safetensors", None, safetensors_metadata=dict(metadata) if metadata else None)
    write_rdc(path, items, metadata=meta, structural=structural, codec=codec, lossy=lossy)


def load(data: bytes | bytearray | memoryview | BinaryIO) -> dict[str, np.ndarray]:
    """Decode .rdc bytes into numpy arrays (aliases as extra keys)."""
    with open_rdc(data) as f:
        return {n: f.get_tensor(n) for n in f.keys()}


def load_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an .rdc file into numpy arrays (aliases as extra keys)."""
    with open_rdc(path) as f:
        return {n: f.get_tensor(n) for n in f.keys()}


def load_metadata(path: str | os.PathLike | bytes) -> dict[str, str] | None:
    """The safetensors ``__metadata__`` map recorded in an .rdc file (None if there is none)."""
    with open_rdc(path) as f:
        return _st_metadata(adapter_info(f.metadata))


def _st_metadata(info: Mapping[str, Any]) -> dict[str, str] | None:
    meta = info.get("safetensors_metadata")
    if isinstance(meta, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        return dict(meta)
    if info.get("source_format") == "pytorch":
        return {"format": "pt"}
    return None


# ----------------------------------------------------------------------------------------------------
# File conversion


def compress_file(src: str | os.PathLike, dst: str | os.PathLike | BinaryIO, *,
                  metadata: Mapping[str, Any] | None = None, codec: str = "lossless", lossy: Any = None,
                  progress: Progress | None = None) -> None:
    """Convert a ``.safetensors`` file or a sharded ``*.safetensors.index.json`` into .rdc.

    Shards are read one at a time, and within a shard one tensor at a time.
    """
    src = Path(src)
    wrap = progress or no_progress
    if src.name.lower().endswith(".json"):
        index_meta, shards = read_index(src)
        plan: list[tuple[Path, list[Entry]]] = []
        shard_meta = []
        seen: set[str] = set()
        for fname, spath, wanted in shards:
            entries, smeta = inspect(spath)
            names = [e.name for e in entries]
            missing = sorted(set(wanted) - set(names))
            if missing:
                raise FormatError(f"{spath.name}: tensors listed in the index are missing: {missing[:5]}")
            dup = seen.intersection(names)
            if dup:
                raise FormatError(f"{spath.name}: tensors appear in more than one shard: {sorted(dup)[:5]}")
            seen.update(names)
            plan.append((spath, entries))
            shard_meta.append({"file": fname, "metadata": smeta, "tensors": names})
        meta = make_metadata("safetensors-sharded", metadata, index_metadata=index_meta, shards=shard_meta,
                             safetensors_metadata=shard_meta[0]["metadata"] if shard_meta else None,
                             source_name=src.name)
        total = sum(len(e) for _, e in plan)

        def items() -> Iterator[tuple[str, np.ndarray]]:
            for spath, entries in plan:
                with open(spath, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    _, _, start = read_header(fh, size, name=spath.name)
                    for e in entries:
                        yield e.name, _read_entry(fh, e, start, spath.name)

        structural = [e.name for _, entries in plan for e in entries if is_structural_dtype(e.dtype)]
        write_rdc(dst, wrap(items(), total=total, desc="compress"), metadata=meta, structural=structural,
                  codec=codec, lossy=lossy)
        return
    entries, smeta = inspect(src)
    meta = make_metadata("safetensors", metadata, safetensors_metadata=smeta, source_name=src.name)
    structural = [e.name for e in entries if is_structural_dtype(e.dtype)]
    write_rdc(dst, wrap(iter_safetensors(src), total=len(entries), desc="compress"), metadata=meta,
              structural=structural, codec=codec, lossy=lossy)


def decompress_file(src: str | os.PathLike | bytes, dst: str | os.PathLike, *,
                    progress: Progress | None = None, metadata: Mapping[str, str] | None = None,
                    budget: int | None = None) -> None:
    """Restore an .rdc container as ``.safetensors`` (or as shards + index when ``dst`` ends with ``.json``).

    Aliases (tied weights) are written as separate copies: safetensors has no shared tensors.
    ``metadata`` overrides the ``__metadata__`` map (default: the one recorded at compression).
    """
    dst = Path(dst)
    wrap = progress or no_progress
    with open_rdc(src, budget=budget) as f:
        info = adapter_info(f.metadata)
        names = f.keys()
        specs = []
        for n in names:
            ti = f.info(n)
            specs.append((n, ti.dtype, tuple(ti.shape)))
        st_meta = dict(metadata) if metadata is not None else _st_metadata(info)
        if not dst.name.lower().endswith(".json"):
            with atomic_output(dst) as fh:
                _write_stream(fh, specs, f.get_tensor, st_meta, wrap)
            return
        # sharded output: reuse the recorded shard layout, else a single shard
        by_name = {s[0]: s for s in specs}
        layout: list[tuple[str, list[str], dict | None]] = []
        shards = info.get("shards") if info.get("source_format") == "safetensors-sharded" else None
        if isinstance(shards, list) and sorted(n for s in shards for n in s.get("tensors", [])) == sorted(names):
            for s in shards:
                layout.append((str(s["file"]), list(s["tensors"]), s.get("metadata")))
        else:
            stem = dst.name[: -len(".safetensors.index.json")] if dst.name.endswith(".safetensors.index.json") \
                else dst.stem
            layout.append((f"{stem or 'model'}-00001-of-00001.safetensors", list(names), st_meta))
        index_meta = dict(info.get("index_metadata") or {}) if isinstance(info.get("index_metadata"), Mapping) else {}
        weight_map: dict[str, str] = {}
        total = 0
        for fname, tnames, smeta in layout:
            target = path_inside(dst.parent, fname, what="shard")
            target.parent.mkdir(parents=True, exist_ok=True)
            shard_specs = [by_name[n] for n in tnames]
            with atomic_output(target) as fh:
                _write_stream(fh, shard_specs, f.get_tensor, smeta if isinstance(smeta, Mapping) else None, wrap)
            for n, dt, shape in shard_specs:
                weight_map[n] = fname
                nb = np.dtype(dt).itemsize
                for d in shape:
                    nb *= d
                total += nb
        index_meta["total_size"] = total
        doc = {"metadata": index_meta, "weight_map": dict(sorted(weight_map.items()))}
        with atomic_output(dst) as fh:
            fh.write(json.dumps(doc, indent=2).encode("utf-8") + b"\n")


__all__ = [
    "save",
    "save_file",
    "load",
    "load_file",
    "load_metadata",
    "read_safetensors",
    "iter_safetensors",
    "write_safetensors",
    "inspect",
    "read_index",
    "compress_file",
    "decompress_file",
]
