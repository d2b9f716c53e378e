"""Shared helpers of the framework adapters (PyTorch, safetensors, ONNX, NumPy ``.npz``).

The adapters turn files that users already have into ``.rdc`` containers and back. This module holds
what they share: the adapter error classes, the layout of the ``"rdformat"`` entry in a container's
metadata, atomic output files, path and shape checks, and format detection.

It imports no ML framework: the framework modules (:mod:`rdformat.torch`, :mod:`rdformat.safetensors`,
:mod:`rdformat.onnx`, :mod:`rdformat.npz`) sit above it, and :mod:`rdformat.convert` above them picks
one by a file's format.

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
import stat
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import api
from .format.atomic import atomic_output
from .format.records import MAX_DIM, MAX_RANK
from .errors import (  # noqa: F401  (re-exported: adapters' errors used to live here)
    CorruptDataError,
    FormatError,
    InvalidInputError,
    LimitExceededError,
    MissingDependencyError,
    UnsafeInputError,
    UnsupportedFeatureError,
)

ADAPTER_VERSION = 1
META_KEY = api.META_KEY  # the package's reserved metadata entry (api records sensitivity there too)

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


def open_rdc(source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO, *, budget: int | None = None,
             limits: api.Limits | None = None) -> api.RdcReader:
    """Open an .rdc container from a path, bytes, or a binary stream (``budget``, ``limits``: see
    ``rdformat.open``; the reader's default limits when None)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, os.PathLike):
        source = os.fspath(source)
    return api.open(source, budget=budget, limits=limits)


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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name the same file (through links, case-insensitive folders...).

    Paths that do not exist (yet) compare by their resolved absolute path.
    """
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_input_as_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], *, what: str) -> None:
    """Raise :class:`InvalidInputError` when ``output`` is one of ``inputs`` (a model file or a sidecar of it).

    Writing there would destroy the input (replaced while, or before, it is read): refused before
    anything is written.
    """
    for source in inputs:
        if same_file(output, source):
            raise InvalidInputError(f"{what}: output {os.fspath(output)!r} is the input file "
                                    f"{os.fspath(source)!r} (or a file of its set); refused, nothing written")


def open_regular(path: str | os.PathLike, *, what: str) -> BinaryIO:
    """Open a file for reading, refusing anything but a regular file (a FIFO would block the read
    forever, a device would never end) with :class:`UnsafeInputError`."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise FormatError(f"{what}: cannot open {os.fspath(path)!r}: {exc.strerror or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeInputError(f"{what}: {os.fspath(path)!r} is not a regular file; refused")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def plain_file_name(name: Any, *, suffix: str, what: str) -> str:
    """Check a file name taken from a file's metadata: a plain name (no folder, no ``..``, not hidden,
    no control characters) ending with ``suffix``; else :class:`UnsafeInputError`.

    Such a name can only designate a file of that kind in the output's own folder.
    """
    if not isinstance(name, str):
        raise CorruptDataError(f"{what}: file name {name!r} is not a string")
    bad = (not name or len(name.encode("utf-8", "surrogatepass")) > 255 or "/" in name or "\\" in name
           or name.startswith(".") or any(ord(c) < 32 or ord(c) == 127 for c in name) or ":" in name
           or not name.lower().endswith(suffix) or len(name) == len(suffix))
    if bad:
        raise UnsafeInputError(f"{what}: {name!r} is not a plain {suffix} file name; refused")
    return name


def check_shape(shape: Iterable[Any], *, what: str) -> tuple[int, ...]:
    """Validate the dims a file claims for a tensor: integers in ``0..MAX_DIM``, at most ``MAX_RANK``
    of them, and an element count numpy can address (even for empty tensors, numpy refuses shapes
    whose non-zero dims multiply past 2**63). :class:`FormatError` / :class:`LimitExceededError`."""
    dims = list(shape)
    if len(dims) > MAX_RANK:
        raise LimitExceededError(f"{what}: rank {len(dims)} is over the limit of {MAX_RANK}")
    out = []
    product = 1
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= int(d) <= MAX_DIM:
            raise FormatError(f"{what}: invalid dimension {d!r} in shape {dims}")
        out.append(int(d))
        product *= max(int(d), 1)
        if product >= 1 << 62:
            raise LimitExceededError(f"{what}: shape {dims} has more elements than can be addressed")
    return tuple(out)


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
        except (ValueError, OSError, RecursionError):  # RecursionError: hostile nesting depth
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
    "same_file",
    "refuse_input_as_output",
    "open_regular",
    "plain_file_name",
    "check_shape",
    "atomic_output",
    "path_inside",
]
