"""The safetensors file format itself: reading and writing ``.safetensors`` files and shard indexes.

rdformat reads and writes them with this module, one tensor at a time, so bfloat16, float16 and
float8 pass bit-exact and huge files never sit in memory whole; every header field is checked
against the file before use (the format's safety rules: JSON header within limits, no duplicate
keys, offsets inside the data, dense and disjoint). :mod:`rdformat.safetensors` converts between
these files and ``.rdc`` containers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .adapters import FormatError, Progress, atomic_output, check_shape, no_progress, open_regular, path_inside
from .errors import InvalidInputError, UnsupportedFeatureError
from .format.dtypes import numpy_dtype

#: Largest JSON header accepted (the reference implementation's limit).
MAX_HEADER_BYTES = 100_000_000
#: Largest sharded-checkpoint index read (real ones are a few hundred KB).
MAX_INDEX_BYTES = 64 << 20

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


def _np_dtype(st: str, name: str, where: str = "<stream>") -> np.dtype:
    np_name = _ST_TO_NP.get(st)
    if np_name is None:
        raise UnsupportedFeatureError(f"{where}: safetensors dtype {st!r} is not supported by .rdc", tensor=name)
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
    except RecursionError as exc:  # hostile nesting depth
        raise FormatError(f"{name}: safetensors header nests too deeply") from exc
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
        dtype = _np_dtype(spec.get("dtype"), tname, name) if isinstance(spec.get("dtype"), str) else None
        shape, offsets = spec.get("shape"), spec.get("data_offsets")
        if dtype is None or not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
            raise FormatError(f"{name}: header entry {tname!r} lacks dtype/shape/data_offsets")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise FormatError(f"{name}: tensor {tname!r} has an invalid shape {shape}")
        check_shape(shape, what=f"{name}: tensor {tname!r}")  # numpy must be able to hold it
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
    with open_regular(path, what="safetensors") as fh:
        entries, meta, _ = read_header(fh, os.fstat(fh.fileno()).st_size, name=os.fspath(path))
    return entries, meta


def iter_safetensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, array)`` of a safetensors file in file order, one tensor in memory at a time."""
    with open_regular(path, what="safetensors") as fh:
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
        with open_regular(path, what="safetensors index") as fh:
            doc = json.loads(fh.read(MAX_INDEX_BYTES + 1).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{path}: not a valid JSON index: {exc}") from exc
    except RecursionError as exc:  # hostile nesting depth
        raise FormatError(f"{path}: JSON index nests too deeply") from exc
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
