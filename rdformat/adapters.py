"""Shared helpers of the framework adapters (PyTorch, safetensors, ONNX, NumPy ``.npz``).

The adapters turn files that users already have into ``.rdc`` containers and back. This module holds
what they share: the adapter error classes, the layout of the ``"rdformat"`` entry in a container's
metadata, atomic output files, format detection, the ``.npz`` adapter (NumPy only) and the generic
:func:`compress_file` / :func:`decompress_file` entry points the ``rdc`` command uses.

It imports no ML framework: the framework modules (:mod:`rdformat.torch`, :mod:`rdformat.safetensors`,
:mod:`rdformat.onnx`) are imported lazily, only when a file of that format is met.

Metadata layout written by the adapters (the container's metadata record is one JSON object)::

    {"rdformat": {"source_format": "pytorch" | "safetensors" | "safetensors-sharded" | "onnx" | "npz",
                  "adapter_version": 1,
                  ...format-specific keys documented in each adapter...},
     ...user metadata (any other top-level key)...}
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import api
from .format.atomic import atomic_output
from .errors import (  # noqa: F401  (re-exported: adapters' errors used to live here)
    FormatError,
    InvalidInputError,
    MissingDependencyError,
    UnsafeInputError,
    UnsupportedFeatureError,
)

ADAPTER_VERSION = 1
META_KEY = "rdformat"

# ----------------------------------------------------------------------------------------------------
# Optional dependencies


def require(module: str, extra: str | None = None):
    """Import an optional dependency or raise :class:`MissingDependencyError` with an install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pip = extra or module
        raise MissingDependencyError(f"this needs the {module!r} package: pip install {pip}") from exc


# ----------------------------------------------------------------------------------------------------
# Progress: adapters take an optional ``progress`` callable that wraps an iterable (tqdm-compatible)

Progress = Callable[..., Iterable]


def no_progress(iterable: Iterable, total: int | None = None, desc: str | None = None) -> Iterable:
    """The default progress wrapper: no output."""
    return iterable


def _progress(progress: Progress | None) -> Progress:
    return progress if progress is not None else no_progress


# ----------------------------------------------------------------------------------------------------
# Metadata


def make_metadata(source_format: str, user: Mapping[str, Any] | None = None, **fields: Any) -> dict:
    """Build a container metadata dict: user entries plus the reserved ``"rdformat"`` entry."""
    meta: dict[str, Any] = {}
    if user:
        if META_KEY in user:
            raise InvalidInputError(f"metadata key {META_KEY!r} is reserved for rdformat itself")
        meta.update(user)
    info = {"source_format": source_format, "adapter_version": ADAPTER_VERSION}
    info.update({k: v for k, v in fields.items() if v is not None})
    meta[META_KEY] = info
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata is not JSON-serialisable: {exc}") from exc
    return meta


def adapter_info(metadata: Mapping[str, Any] | None) -> dict:
    """The ``"rdformat"`` entry of a container's metadata (empty dict when absent or malformed)."""
    if not isinstance(metadata, Mapping):
        return {}
    info = metadata.get(META_KEY)
    return dict(info) if isinstance(info, Mapping) else {}


def user_metadata(metadata: Mapping[str, Any] | None) -> dict:
    """The container metadata without the reserved ``"rdformat"`` entry."""
    if not isinstance(metadata, Mapping):
        return {}
    return {k: v for k, v in metadata.items() if k != META_KEY}


def is_structural_dtype(dtype: np.dtype) -> bool:
    """Integer and boolean tensors are always structural (indices, shapes, counters): never lossy."""
    return np.dtype(dtype).kind in "biu"


def write_rdc(
    target: str | os.PathLike | BinaryIO,
    items: Iterable[tuple[str, np.ndarray]],
    *,
    metadata: dict | None = None,
    graph: bytes | None = None,
    graph_format: str = "onnx",
    aliases: Mapping[str, str] | None = None,
    structural: Iterable[str] = (),
    codec: Any = "lossless",
    lossy: Any = None,
) -> Any:
    """Write tensors (an iterable, consumed one at a time) to an .rdc path or binary stream.

    ``lossy`` is a :class:`rdformat.Lossy` (or a mapping of its fields, e.g. ``{"bits": 4}``); a
    lossy target needs the whole model in memory (producers read every tensor before writing).
    ``codec`` names the lossless codec; a mapping there is the deprecated spelling of ``lossy``.
    Returns the :class:`rdformat.SaveSummary`.
    """
    if isinstance(codec, Mapping):
        warnings.warn("codec={...} is deprecated for lossy targets; use lossy={...} or lossy=rdformat.Lossy(...)",
                      DeprecationWarning, stacklevel=3)
        lossy, codec = codec, "lossless"
    spec = api.Lossy.coerce(lossy)
    kwargs: dict[str, Any] = {"metadata": metadata, "codec": codec, "aliases": dict(aliases or {}),
                              "structural": set(structural)}
    if graph is not None:
        kwargs["graph"] = graph
        kwargs["graph_format"] = graph_format
    if spec is not None:
        items = dict(items)
        kwargs["lossy"] = spec
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    return api.save(items, target, **kwargs)


def rdc_bytes(items: Iterable[tuple[str, np.ndarray]], **kwargs: Any) -> bytes:
    """Like :func:`write_rdc` but returns the container as bytes."""
    buf = io.BytesIO()
    write_rdc(buf, items, **kwargs)
    return buf.getvalue()


def open_rdc(source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO, *, budget: int | None = None):
    """Open an .rdc container from a path, bytes, or a binary stream (``budget``: see ``rdformat.open``)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, os.PathLike):
        source = os.fspath(source)
    return api.open(source, budget=budget)


def writable(array: np.ndarray) -> np.ndarray:
    """``array`` itself when writeable, else a copy (frameworks want writeable buffers)."""
    return array if array.flags.writeable else np.array(array, copy=True)


# ----------------------------------------------------------------------------------------------------
# Output files


def path_inside(base_dir: str | os.PathLike, relative: str, *, what: str) -> Path:
    """Resolve ``relative`` under ``base_dir``, refusing anything that would leave that folder.

    Absolute paths, ``..`` components, drive letters and symlinks pointing outside are refused with
    :class:`UnsafeInputError`.
    """
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise UnsafeInputError(f"{what}: invalid path {relative!r}")
    norm = relative.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in norm.split("/"):
        raise UnsafeInputError(f"{what}: path {relative!r} leaves the model's folder; refused")
    base = Path(os.path.realpath(base_dir))
    full = Path(os.path.realpath(base / norm))
    if full != base and base not in full.parents:
        raise UnsafeInputError(f"{what}: path {relative!r} resolves outside the model's folder; refused")
    return full


# ----------------------------------------------------------------------------------------------------
# Format detection

FORMATS = ("pytorch", "safetensors", "safetensors-index", "onnx", "npz", "rdc")
RDC_MAGIC = b"\x89RDC\r\n\x1a\n"
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_SUFFIXES = {
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".bin": "pytorch",
    ".ckpt": "pytorch",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
    ".npz": "npz",
    ".rdc": "rdc",
}


def format_from_suffix(path: str | os.PathLike) -> str | None:
    """The format named by a file name (``.safetensors.index.json`` included), or None."""
    name = Path(path).name.lower()
    if name.endswith(".safetensors.index.json") or name.endswith(".index.json"):
        return "safetensors-index"
    return _SUFFIXES.get(Path(name).suffix)


def detect_format(path: str | os.PathLike) -> str:
    """Detect the format of an existing input file from its content, using the suffix as a tie-break.

    Returns one of :data:`FORMATS`; raises :class:`FormatError` when the content is not recognised.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(64)
        size = os.fstat(fh.fileno()).st_size
    by_suffix = format_from_suffix(path)
    if head.startswith(RDC_MAGIC):
        return "rdc"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise FormatError(f"{path}: damaged zip archive: {exc}") from exc
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "pytorch"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        if by_suffix in ("pytorch", "npz"):
            return by_suffix
        raise FormatError(f"{path}: zip archive that is neither a PyTorch checkpoint nor an .npz")
    if head.startswith(_TORCH_LEGACY_MAGIC) or (head[:1] == b"\x80" and by_suffix == "pytorch"):
        return "pytorch"
    if len(head) >= 9:
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    stripped = head.lstrip()
    if stripped.startswith(b"{"):
        if by_suffix == "safetensors-index":
            return by_suffix
        try:
            with open(path, "rb") as fh:
                doc = json.loads(fh.read(64 << 20))
        except (ValueError, OSError):
            doc = None
        if isinstance(doc, dict) and "weight_map" in doc:
            return "safetensors-index"
    if by_suffix == "onnx":
        return "onnx"
    if by_suffix is None and head[:1] == b"\x08":  # ModelProto starts with field 1 (ir_version), varint
        return "onnx"
    if by_suffix is not None and by_suffix != "rdc":
        return by_suffix
    raise FormatError(
        f"{path}: unrecognised input format; expected a PyTorch checkpoint (.pt/.pth), .safetensors, "
        ".safetensors.index.json, .onnx or .npz"
    )


# ----------------------------------------------------------------------------------------------------
# NumPy .npz (no framework needed)


def iter_npz(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yield the arrays of an ``.npz`` archive one at a time (object arrays refused)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise FormatError(f"{path}: not a readable .npz archive: {exc}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise FormatError(f"{path}: not an .npz archive (a single .npy array?)")
    with npz:
        for name in npz.files:
            try:
                array = npz[name]
            except ValueError as exc:
                if "pickle" in str(exc).lower():
                    raise UnsafeInputError(
                        f"{path}: array {name!r} is a pickled object array; refused (only numeric arrays)"
                    ) from exc
                raise FormatError(f"{path}: array {name!r}: {exc}") from exc
            except (OSError, zipfile.BadZipFile, EOFError) as exc:
                raise FormatError(f"{path}: array {name!r}: {exc}") from exc
            yield name, array


def write_npz(path: str | os.PathLike, items: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write arrays to an ``.npz`` archive, one array at a time (atomic; zip64 for big arrays)."""
    with atomic_output(path) as fh:
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, array in items:
                array = np.asarray(array)
                if array.dtype.kind not in "biuf" and array.dtype.names is None and array.dtype.kind != "V":
                    raise InvalidInputError(f"tensor {name!r}: dtype {array.dtype} cannot go into .npz")
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array, order="C"), allow_pickle=False)


# ----------------------------------------------------------------------------------------------------
# Generic conversion entry points (used by the ``rdc`` command)

DECOMPRESS_SUFFIXES = (".safetensors", ".safetensors.index.json", ".pt", ".pth", ".onnx", ".npz")


_ADAPTERS = {"pytorch": ("torch", "torch"), "safetensors": ("safetensors", None),
             "safetensors-index": ("safetensors", None), "onnx": ("onnx", "onnx")}


def _adapter(fmt: str):
    """Import the adapter module of a format, turning a missing framework into a clear error."""
    import importlib

    module, needs = _ADAPTERS[fmt]
    if needs is not None:
        require(needs)
    return importlib.import_module(f"{__package__}.{module}")


def compress_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    fmt: str | None = None,
    codec: Any = "lossless",
    lossy: Any = None,
    progress: Progress | None = None,
) -> str:
    """Convert a framework file into an .rdc container; returns the detected source format.

    ``lossy``: a :class:`rdformat.Lossy` or a mapping of its fields (lossless when None).
    """
    fmt = fmt or detect_format(src)
    if fmt in ("pytorch", "safetensors", "safetensors-index", "onnx"):
        adapter = _adapter(fmt)
    elif fmt == "npz":
        _compress_npz(src, dst, codec=codec, lossy=lossy, progress=progress)
        return fmt
    elif fmt == "rdc":
        raise InvalidInputError(f"{src} is already an .rdc container")
    else:
        raise InvalidInputError(f"unknown input format {fmt!r}; known: {', '.join(FORMATS[:-1])}")
    adapter.compress_file(src, dst, codec=codec, lossy=lossy, progress=progress)
    return fmt


def _compress_npz(src, dst, *, codec: Any, lossy: Any, progress: Progress | None) -> None:
    try:
        with zipfile.ZipFile(src) as zf:
            members = [m for m in zf.namelist() if m.endswith(".npy")]
            dtypes = {m[:-4]: _npy_member_dtype(zf, m) for m in members}
    except (zipfile.BadZipFile, OSError) as exc:
        raise FormatError(f"{src}: not a readable .npz archive: {exc}") from exc
    structural = [n for n, dt in dtypes.items() if dt is not None and is_structural_dtype(dt)]
    items = _progress(progress)(iter_npz(src), total=len(dtypes), desc="compress")
    write_rdc(dst, items, metadata=make_metadata("npz"), structural=structural, codec=codec, lossy=lossy)


def _npy_member_dtype(zf: zipfile.ZipFile, member: str) -> np.dtype | None:
    """Read only the .npy header of one archive member (no data) to get its dtype."""
    try:
        with zf.open(member) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                _, _, dtype = np.lib.format.read_array_header_2_0(fh)
            return dtype
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None


def output_format(dst: str | os.PathLike) -> str:
    """The output format named by ``dst``'s suffix (for :func:`decompress_file`)."""
    fmt = format_from_suffix(dst)
    if fmt in (None, "rdc"):
        raise InvalidInputError(
            f"cannot tell the output format from {Path(dst).name!r}; use one of: "
            + ", ".join(DECOMPRESS_SUFFIXES)
        )
    return fmt


def decompress_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    fmt: str | None = None,
    progress: Progress | None = None,
    budget: int | None = None,
    **options: Any,
) -> str:
    """Restore an .rdc container into a framework file chosen by ``dst``'s suffix; returns the format.

    ``budget``: read at most about that many bytes, progressive tensors decoded from a prefix of their
    streams (a coarser model; see ``rdformat.open``).
    """
    fmt = fmt or output_format(dst)
    if fmt in ("pytorch", "safetensors", "safetensors-index", "onnx"):
        adapter = _adapter(fmt)
    elif fmt == "npz":
        with open_rdc(src, budget=budget) as f:
            names = f.keys()
            items = _progress(progress)(((n, f.get_tensor(n)) for n in names), total=len(names),
                                        desc="decompress")
            write_npz(dst, items)
        return fmt
    else:
        raise InvalidInputError(f"unknown output format {fmt!r}")
    adapter.decompress_file(src, dst, progress=progress, budget=budget, **options)
    return fmt


__all__ = [
    "ADAPTER_VERSION",
    "FormatError",
    "UnsafeInputError",
    "MissingDependencyError",
    "make_metadata",
    "adapter_info",
    "user_metadata",
    "detect_format",
    "format_from_suffix",
    "output_format",
    "compress_file",
    "decompress_file",
    "iter_npz",
    "write_npz",
    "atomic_output",
    "path_inside",
]
