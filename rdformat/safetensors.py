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
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .adapters import (FormatError, Progress, adapter_info, atomic_output, is_structural_dtype,
                       make_metadata, no_progress, open_rdc, open_regular, plain_file_name,
                       rdc_bytes, refuse_input_as_output, same_file, write_rdc)
from .api import Limits
from .errors import CorruptDataError, InvalidInputError, UnsafeInputError
from .format.atomic import AtomicFile, fresh_name


from .safetensors_io import (  # noqa: F401  (the file format's readers and writers, re-exported)
    MAX_HEADER_BYTES,
    MAX_INDEX_BYTES,
    Entry,
    TensorSpec,
    _read_entry,
    _write_stream,
    inspect,
    iter_safetensors,
    read_header,
    read_index,
    read_safetensors,
    write_safetensors,
)


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


def load(data: bytes | bytearray | memoryview | BinaryIO, *, limits: Limits | None = None) -> dict[str, np.ndarray]:
    """Decode .rdc bytes into numpy arrays (aliases as extra keys; ``limits``: reader limits)."""
    with open_rdc(data, limits=limits) as f:
        return {n: f.get_tensor(n) for n in f.keys()}


def load_file(path: str | os.PathLike, *, limits: Limits | None = None) -> dict[str, np.ndarray]:
    """Read an .rdc file into numpy arrays (aliases as extra keys; ``limits``: reader limits)."""
    with open_rdc(path, limits=limits) as f:
        return {n: f.get_tensor(n) for n in f.keys()}


def load_metadata(path: str | os.PathLike | bytes) -> dict[str, str] | None:
    """The safetensors ``__metadata__`` map recorded in an .rdc file (None if there is none)."""
    with open_rdc(path) as f:
        return _st_metadata(adapter_info(f.metadata))


def _text_map(meta: Any) -> bool:
    """True when ``meta`` maps strings to strings that UTF-8 can encode (a file's metadata may hold
    unpaired surrogates, ``"\\ud800"``, which no safetensors header can)."""
    def text(s: Any) -> bool:
        if not isinstance(s, str):
            return False
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True

    return isinstance(meta, Mapping) and all(text(k) and text(v) for k, v in meta.items())


def _st_metadata(info: Mapping[str, Any]) -> dict[str, str] | None:
    meta = info.get("safetensors_metadata")
    if _text_map(meta):
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
        if isinstance(dst, (str, os.PathLike)):  # the index and every shard are inputs
            refuse_input_as_output(dst, [src] + [spath for _, spath, _ in shards], what="compress")
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
                with open_regular(spath, what="safetensors shard") as fh:
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


def _shard_layout(info: Mapping[str, Any], names: list[str], index_name: str) -> list[tuple[str, list[str], Any]]:
    """The recorded shard layout, checked: every field is hostile until proven otherwise.

    ``shards`` must list plain ``.safetensors`` file names (no folder, distinct, not the index's
    name) that together hold every tensor of the file exactly once; anything else is an RdcError.
    """
    shards = info.get("shards")
    if not isinstance(shards, list) or not shards:
        raise CorruptDataError("metadata: 'shards' is not a non-empty list")
    layout = []
    files: set[str] = set()
    seen: set[str] = set()
    known = set(names)
    for i, s in enumerate(shards):
        if not isinstance(s, Mapping) or not isinstance(s.get("tensors"), list):
            raise CorruptDataError(f"metadata: shards[{i}] is not an object with a 'tensors' list")
        fname = plain_file_name(s.get("file"), suffix=".safetensors", what=f"metadata: shards[{i}]")
        if fname.lower() in files or fname.lower() == index_name.lower():
            raise UnsafeInputError(f"metadata: shard file {fname!r} is named twice; refused")
        files.add(fname.lower())
        tensors = s["tensors"]
        for n in tensors:
            if not isinstance(n, str) or n not in known:
                raise CorruptDataError(f"metadata: shards[{i}] lists {n!r}, which is not a tensor of the file")
            if n in seen:
                raise CorruptDataError(f"metadata: tensor {n!r} is in more than one shard")
            seen.add(n)
        smeta = s.get("metadata")
        if smeta is not None and not _text_map(smeta):
            raise CorruptDataError(f"metadata: shards[{i}].metadata must map strings to strings")
        layout.append((fname, list(tensors), smeta))
    if seen != known:
        raise CorruptDataError(f"metadata: the shards leave out tensors of the file: {sorted(known - seen)[:5]}")
    return layout


def _old_shards(index: Path) -> list[str]:
    """Plain ``.safetensors`` names listed by the index currently at ``index`` (best-effort, [] if none)."""
    try:
        with open_regular(index, what="old index") as fh:
            doc = json.loads(fh.read(MAX_INDEX_BYTES + 1).decode("utf-8"))
        values = doc["weight_map"].values()
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError, FormatError):
        return []
    out = []
    for v in set(values):
        try:
            out.append(plain_file_name(v, suffix=".safetensors", what="old index"))
        except (CorruptDataError, InvalidInputError):
            continue  # not a name we could have written: never removed
    return out


def decompress_file(src: str | os.PathLike | bytes, dst: str | os.PathLike, *,
                    progress: Progress | None = None, metadata: Mapping[str, str] | None = None,
                    budget: int | None = None, limits: Limits | None = None) -> None:
    """Restore an .rdc container as ``.safetensors`` (or as shards + index when ``dst`` ends with ``.json``).

    Aliases (tied weights) are written as separate copies: safetensors has no shared tensors.
    ``metadata`` overrides the ``__metadata__`` map (default: the one recorded at compression).

    Sharded output is atomic as a set: every shard is written to a temporary file first, then
    published under a name no existing file has (the recorded name when free, else
    ``<name>.rdc-<8 hex>.safetensors``), and the index, which points at the shards, is replaced last.
    A reader following the index sees the old set or the new one, never a mix; once the new index is
    in place, the shards of the old index (and leftovers of killed runs) that the new one does not
    list are removed. Shard names come from the file's metadata and are checked: plain names in
    ``dst``'s folder, never an existing file, never the input.
    """
    dst = Path(dst)
    wrap = progress or no_progress
    if isinstance(src, (str, os.PathLike)):
        refuse_input_as_output(dst, [src], what="decompress")
    with open_rdc(src, budget=budget, limits=limits) as f:
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
        if info.get("source_format") == "safetensors-sharded" and "shards" in info:
            layout = _shard_layout(info, list(names), dst.name)
        else:
            stem = dst.name[: -len(".safetensors.index.json")] if dst.name.endswith(".safetensors.index.json") \
                else dst.stem
            layout = [(f"{stem or 'model'}-00001-of-00001.safetensors", list(names), st_meta)]
        index_meta = info.get("index_metadata")
        if index_meta is not None and not isinstance(index_meta, Mapping):
            raise CorruptDataError("metadata: 'index_metadata' is not an object")
        index_meta = dict(index_meta or {})
        folder = dst.parent if str(dst.parent) else Path(".")
        if not folder.is_dir():
            raise InvalidInputError(f"output folder {folder} does not exist")
        if isinstance(src, (str, os.PathLike)):
            for fname, _, _ in layout:  # e.g. a shard name that is the input file itself
                refuse_input_as_output(folder / fname, [src], what="decompress: shard")
        old = _old_shards(dst) if os.path.lexists(dst) else []
        weight_map: dict[str, str] = {}
        total = 0
        pending: list[AtomicFile] = []
        published: list[Path] = []
        taken: set[str] = set()
        try:
            for fname, tnames, smeta in layout:
                final = fresh_name(folder, fname, ".safetensors", taken)
                taken.add(final)
                shard_specs = [by_name[n] for n in tnames]
                member = AtomicFile(folder / final)
                pending.append(member)
                _write_stream(member.stream, shard_specs, f.get_tensor, smeta, wrap)
                member.finish()
                for n, dt, shape in shard_specs:
                    weight_map[n] = final
                    nb = np.dtype(dt).itemsize
                    for d in shape:
                        nb *= d
                    total += nb
            index_meta["total_size"] = total
            doc = {"metadata": index_meta, "weight_map": dict(sorted(weight_map.items()))}
            index = AtomicFile(dst)
            pending.append(index)
            index.stream.write(json.dumps(doc, indent=2).encode("utf-8") + b"\n")
            index.finish()
            for member in pending:  # shards first (fresh names: the old set is untouched), index last
                member.publish()
                published.append(member.path)
        except BaseException:
            for member in pending:
                member.abort()  # unpublished temporaries
            for path in published:  # published shards nothing references (fresh names: never an old file)
                _unlink_file(path)
            raise
    # The new set is visible: remove the old index's shards it no longer lists, and the shards that
    # killed runs published under fresh names of the same shards (never the input, never a symlink).
    keep = set(weight_map.values())
    bases = {n[: -len(".safetensors")] for n in [fname for fname, _, _ in layout] + old}
    variant = re.compile("|".join(re.escape(b) for b in bases) + r"\.rdc-[0-9a-f]{8}\.safetensors") if bases else None
    try:
        leftovers = [n for n in os.listdir(folder) if variant is not None and variant.fullmatch(n)]
    except OSError:
        leftovers = []
    for name in set(old) | set(leftovers):
        path = folder / name
        if name in keep or (isinstance(src, (str, os.PathLike)) and same_file(path, src)):
            continue
        _unlink_file(path)


def _unlink_file(path: Path) -> None:
    """Remove a regular file (not a symlink), ignoring errors: cleaning up is best-effort."""
    try:
        if path.is_file() and not path.is_symlink():
            path.unlink()
    except OSError:
        pass


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
