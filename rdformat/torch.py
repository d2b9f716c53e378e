"""PyTorch adapter: state_dicts and ``.pt``/``.pth`` checkpoints <-> ``.rdc`` containers.

Verbs (same as the other adapters)::

    data = rdformat.torch.save(model.state_dict())           # -> .rdc bytes
    rdformat.torch.save_file(model.state_dict(), "model.rdc")
    sd = rdformat.torch.load(data)                            # -> OrderedDict[str, torch.Tensor]
    sd = rdformat.torch.load_file("model.rdc")
    rdformat.torch.load_into(model, "model.rdc")              # straight into an nn.Module

Checkpoint files::

    sd = rdformat.torch.read_checkpoint("model.pt")          # torch.load(weights_only=True) ONLY
    rdformat.torch.write_checkpoint(sd, "model.pt")
    rdformat.torch.compress_file("model.pt", "model.rdc")
    rdformat.torch.decompress_file("model.rdc", "model.pt")

Guarantees: dtypes, shapes, buffers and non-float tensors are kept bit-exact (bfloat16 and float8
travel as bit patterns, never through a float conversion). Tensors that are one storage under two
names (tied weights) are stored once as an alias and restored as one tensor. ``torch.nn.utils.prune``
reparametrisations (``X_orig`` + ``X_mask``) are folded into a plain ``X`` whose pruned entries are
exact zeros. Dense non-contiguous layouts (e.g. transposed or channels-last weights) are restored with
their original strides. The module-version map of a state_dict (``state_dict._metadata``) is kept.

Metadata written under ``metadata["rdformat"]``: ``source_format="pytorch"``, ``checkpoint_key`` (the
key the state_dict was found under, if any), ``state_dict_metadata``, ``strides``, ``folded_pruning``,
``extra_entries`` (non-tensor state_dict entries such as ``_extra_state`` that JSON gives back exactly;
others are refused). Of a training checkpoint only the state_dict is stored (``compress_file`` warns,
naming the entries left out).

One module on purpose (over 500 lines): a state_dict's layout conventions (aliases, strides,
pruning reparametrisations, extra entries) are applied on the way in and undone on the way out,
and both directions read the same metadata fields.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .adapters import (FormatError, Progress, adapter_info, atomic_output, make_metadata, no_progress,
                       open_rdc, rdc_bytes, refuse_input_as_output, writable, write_rdc)
from .api import Limits
from .errors import CorruptDataError, InvalidInputError, LimitExceededError, UnsafeCheckpointError
from .format.dtypes import numpy_dtype
from .torch_sensitivity import input_covariances, output_error, output_sensitivity  # noqa: F401  (rdformat.torch.*)



#: Keys under which training scripts commonly nest the state_dict, in order of preference.
STATE_DICT_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "model_state",
    "weights",
    "params",
    "ema",
    "model_ema",
    "state",
)

# torch dtype -> (numpy dtype, torch dtype of the same width used to move bits through numpy or None)
_BITCAST = {
    torch.bfloat16: ("bfloat16", torch.int16),
    torch.float8_e4m3fn: ("float8_e4m3fn", torch.uint8),
    torch.float8_e5m2: ("float8_e5m2", torch.uint8),
}
_DIRECT = {
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.float32,
    torch.float64,
}
for _name in ("uint16", "uint32", "uint64"):
    if hasattr(torch, _name):
        _DIRECT.add(getattr(torch, _name))
_NP_BITS = {"bfloat16": (np.int16, torch.bfloat16), "float8_e4m3fn": (np.uint8, torch.float8_e4m3fn),
            "float8_e5m2": (np.uint8, torch.float8_e5m2)}


# ----------------------------------------------------------------------------------------------------
# Tensor <-> array


def to_numpy(tensor: torch.Tensor, name: str | None = None) -> np.ndarray:
    """A C-contiguous numpy array with the same bits, dtype and shape as ``tensor`` (CPU)."""
    where = f"tensor {name!r}: " if name else ""
    if not isinstance(tensor, torch.Tensor):
        raise InvalidInputError(f"{where}expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout != torch.strided:
        raise InvalidInputError(f"{where}{tensor.layout} tensors are not supported; convert with .to_dense()")
    if tensor.is_quantized:
        raise InvalidInputError(f"{where}quantized tensors are not supported; dequantize() first")
    if tensor.device.type == "meta":
        raise InvalidInputError(f"{where}is on the 'meta' device and holds no data")
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg().contiguous()
    if t.dtype in _BITCAST:
        np_name, carrier = _BITCAST[t.dtype]
        return t.view(carrier).numpy().view(numpy_dtype(np_name))
    if t.dtype not in _DIRECT:
        raise InvalidInputError(f"{where}dtype {t.dtype} cannot be stored in .rdc")
    return t.numpy()


def from_numpy(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor with the same bits, dtype and shape as ``array`` (a copy if it is read-only)."""
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    array = np.asarray(array, order="C")
    bits = _NP_BITS.get(array.dtype.name)
    if bits is not None:
        carrier, dtype = bits
        return torch.from_numpy(writable(array.view(carrier))).view(dtype)
    return torch.from_numpy(writable(array))


def _dense_strides(t: torch.Tensor) -> list[int] | None:
    """The strides of a dense (gap-free, non-overlapping) but non-contiguous tensor, else None."""
    if t.is_contiguous() or t.numel() <= 1:
        return None
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return None
        expected *= size
    return list(t.stride())


def _checked_strides(stride: Any, shape: tuple[int, ...], name: str) -> list[int]:
    """A ``strides`` entry from a file's metadata, accepted only when it is a dense layout of ``shape``
    (a permutation of the dims, no gap, no overlap), so the restored storage holds exactly the
    tensor's elements: a hostile stride cannot make ``torch.save`` write more than the tensor."""
    if not isinstance(stride, list) or len(stride) != len(shape) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 62 for s in stride):
        raise CorruptDataError(f"metadata: strides of {name!r} must be {len(shape)} non-negative integers, "
                               f"got {stride!r}", tensor=name)
    expected = 1
    for s, n in sorted((s, n) for s, n in zip(stride, shape) if n != 1):
        if s != expected:
            raise CorruptDataError(f"metadata: strides {stride} are not a dense layout of shape {list(shape)}",
                                   tensor=name)
        expected *= n
    return stride


def _with_strides(t: torch.Tensor, stride: list[int]) -> torch.Tensor:
    """``t`` copied into the (checked, dense) layout ``stride``."""
    if len(stride) != t.dim() or t.numel() <= 1:
        return t
    out = torch.empty_strided(tuple(t.shape), tuple(stride), dtype=t.dtype)
    out.copy_(t)
    return out


# ----------------------------------------------------------------------------------------------------
# State dict <-> container records


def _storage_key(t: torch.Tensor):
    if t.numel() == 0 or t.device.type == "meta" or t.layout != torch.strided:
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    return (t.device.type, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def fold_pruning(state_dict: Mapping[str, Any]) -> tuple["OrderedDict[str, Any]", list[str]]:
    """Fold ``torch.nn.utils.prune`` pairs ``X_orig`` + ``X_mask`` into ``X``.

    Pruned entries (mask == 0) become exact ``+0`` (``torch.where``, not a multiplication, so no ``-0``
    or NaN leaks through). Returns the new state_dict (same order) and the names of folded tensors.
    """
    out: OrderedDict[str, Any] = OrderedDict()
    folded: list[str] = []
    for name, value in state_dict.items():
        if name.endswith("_mask") and (name[: -len("_mask")] + "_orig") in state_dict:
            base = name[: -len("_mask")]
            if base not in state_dict:
                continue  # consumed together with its _orig
        if name.endswith("_orig"):
            base = name[: -len("_orig")]
            mask = state_dict.get(base + "_mask")
            if base not in state_dict and isinstance(value, torch.Tensor) and isinstance(mask, torch.Tensor):
                if tuple(mask.shape) != tuple(value.shape):
                    raise InvalidInputError(
                        f"pruning mask {base + '_mask'!r} has shape {tuple(mask.shape)}, "
                        f"weight {name!r} has {tuple(value.shape)}"
                    )
                zero = torch.zeros((), dtype=value.dtype, device=value.device)
                out[base] = torch.where(mask.detach() != 0, value.detach(), zero)
                folded.append(base)
                continue
        out[name] = value
    if hasattr(state_dict, "_metadata"):
        out._metadata = state_dict._metadata  # type: ignore[attr-defined]
    return out, folded


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError, RecursionError):
        return False


def _json_exact(value: Any) -> bool:
    """True when JSON gives ``value`` back as it is. Non-tensor state_dict entries travel as JSON, which
    would turn a tuple into a list and an int key into a string, and cannot hold NaN: such a value is
    refused rather than restored changed (lossless means the same entries back)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError, RecursionError):
        return False


def _reversed_strides(shape: tuple[int, ...]) -> list[int]:
    """The strides of the layout whose dimensions are stored in reverse order (first dimension fastest,
    as a transposed matrix or a column-major array): ``[1, d0, d0*d1, ...]``."""
    out, step = [], 1
    for d in shape:
        out.append(step)
        step *= d
    return out


def _derived_modules(keys: list[str]) -> list[str]:
    """The module names a state_dict's keys imply, in order of first appearance: ``""`` and every dotted
    prefix of every key (``"a.b.w"`` -> ``"a"``, ``"a.b"``)."""
    out, seen = [""], {""}
    for key in keys:
        parts = key.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if prefix not in seen:
                seen.add(prefix)
                out.append(prefix)
    return out


#: Most insertions a ``modules`` field may list (a hostile file cannot make the reader loop for long).
MAX_MODULE_INSERTS = 1 << 16


def _expand_modules(compact: Any, keys: list[str]) -> list[list]:
    """The module-version pairs a ``modules`` field describes (spec A.2): the modules the keys imply, with
    the listed names inserted at the listed positions, each mapped to the one value. Raises
    CorruptDataError on any malformed part."""
    bad = CorruptDataError("metadata: 'modules' is not [value, position, name, position, name, ...]")
    if not isinstance(compact, list) or not compact or len(compact) % 2 != 1 \
            or not isinstance(compact[0], Mapping) or len(compact) > 2 * MAX_MODULE_INSERTS + 1:
        raise bad
    names = _derived_modules(keys)
    seen = set(names)
    for at, name in zip(compact[1::2], compact[2::2]):
        if not isinstance(at, int) or isinstance(at, bool) or not isinstance(name, str) \
                or not 0 <= at <= len(names) or name in seen:
            raise bad
        seen.add(name)
        names.insert(at, name)
    return [[n, dict(compact[0])] for n in names]


def _compact_modules(pairs: list[list], keys: list[str]) -> list | None:
    """The ``modules`` field for a module-version map, or None when it has no compact form (the values
    differ, or the map lacks a module the keys imply, or its order differs from theirs)."""
    if not pairs or any(p[1] != pairs[0][1] or not isinstance(p[1], Mapping) for p in pairs):
        return None
    derived = _derived_modules(keys)
    out: list = [pairs[0][1]]
    j = 0
    for i, (name, _value) in enumerate(pairs):
        if j < len(derived) and name == derived[j]:
            j += 1
        else:
            out += [i, name]
    if j != len(derived) or len(out) > 2 * MAX_MODULE_INSERTS + 1:
        return None
    try:
        return out if _expand_modules(out, keys) == [[k, dict(v)] for k, v in pairs] else None
    except CorruptDataError:
        return None


def _prepare(
    state_dict: Mapping[str, Any], *, fold: bool = True
) -> tuple[list[str], dict[str, torch.Tensor], dict[str, str], dict[str, Any]]:
    """Split a state_dict into stored tensors, aliases and metadata fields."""
    if isinstance(state_dict, torch.nn.Module):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        raise InvalidInputError(f"expected a state_dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    folded: list[str] = []
    if fold:
        state_dict, folded = fold_pruning(state_dict)
    order: list[str] = []
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    extras: dict[str, Any] = {}
    strides: dict[str, list[int]] = {}
    seen: dict[Any, str] = {}
    for name, value in state_dict.items():
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"state_dict key {name!r} is not a non-empty string")
        if not isinstance(value, torch.Tensor):
            if _json_exact(value):
                extras[name] = value
                continue
            raise InvalidInputError(
                f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor, and cannot be stored: "
                "non-tensor entries are kept as JSON, which would not give this value back as it is "
                "(tuples, non-string keys, NaN/Infinity, bytes and objects); convert or drop it"
            )
        key = _storage_key(value)
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        order.append(name)
        tensors[name] = value
        st = _dense_strides(value)
        if st is not None:
            strides[name] = st
    fields: dict[str, Any] = {}
    keys = [n for n in state_dict if isinstance(n, str)]
    sd_meta = getattr(state_dict, "_metadata", None)
    if isinstance(sd_meta, Mapping) and _json_able(dict(sd_meta)):
        pairs = [[str(k), v] for k, v in sd_meta.items()]
        compact = _compact_modules(pairs, keys)
        if compact is not None:
            fields["modules"] = compact
        else:  # a list of pairs: the container's JSON metadata does not keep key order
            fields["state_dict_metadata"] = pairs
    layouts = [1 if strides.get(n) == _reversed_strides(tuple(tensors[n].shape)) else 0 for n in order]
    while layouts and not layouts[-1]:
        layouts.pop()
    strides = {n: st for n, st in strides.items() if st != _reversed_strides(tuple(tensors[n].shape))}
    if layouts:
        fields["layouts"] = layouts
    if strides:
        fields["strides"] = strides
    if folded:
        fields["folded_pruning"] = folded
    if extras:
        fields["extra_entries"] = extras
    if aliases or extras:  # the container puts aliases right after their target: keep the original order
        fields["key_order"] = keys
    return order, tensors, aliases, fields


def _write(target, state_dict, *, metadata=None, codec="lossless", lossy: Any = None, progress: Progress | None = None,
           extra_fields: Mapping[str, Any] | None = None) -> bytes | None:
    order, tensors, aliases, fields = _prepare(state_dict)
    if extra_fields:
        fields.update({k: v for k, v in extra_fields.items() if v is not None})
    meta = make_metadata("pytorch", metadata, **fields)
    structural = [n for n in order if not tensors[n].is_floating_point()]
    wrap = progress or no_progress
    items = ((n, to_numpy(tensors[n], n)) for n in wrap(order, total=len(order), desc="compress"))
    kwargs = dict(metadata=meta, aliases=aliases, structural=structural, codec=codec, lossy=lossy)
    if target is None:
        return rdc_bytes(items, **kwargs)
    write_rdc(target, items, **kwargs)
    return None


def save(state_dict: Mapping[str, Any], *, metadata: Mapping[str, Any] | None = None,
         codec: str = "lossless", lossy: Any = None) -> bytes:
    """Encode a state_dict (or an ``nn.Module``'s, or any mapping of names to tensors) as .rdc bytes."""
    return _write(None, state_dict, metadata=metadata, codec=codec, lossy=lossy)  # type: ignore[return-value]


def save_file(state_dict: Mapping[str, Any], path: str | os.PathLike | BinaryIO, *,
              metadata: Mapping[str, Any] | None = None, codec: str = "lossless", lossy: Any = None,
              progress: Progress | None = None) -> None:
    """Write a state_dict to an .rdc file (atomically) or binary stream."""
    _write(path, state_dict, metadata=metadata, codec=codec, lossy=lossy, progress=progress)


#: Deepest nesting of lists/objects accepted in the non-tensor values a file's metadata restores
#: (``extra_entries``, ``state_dict_metadata``): pickling a deeper value (``torch.save``) recurses past
#: Python's limit. JSON readers must accept 64 levels (spec 1.3), so real files stay far below this.
MAX_ENTRY_DEPTH = 128


def _too_deep(value: Any) -> bool:
    """True when ``value`` nests lists/objects more than MAX_ENTRY_DEPTH levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        children = v.values() if isinstance(v, Mapping) else v if isinstance(v, list) else None
        if children is None:
            continue
        if depth > MAX_ENTRY_DEPTH:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def _restore(f, progress: Progress | None = None) -> "OrderedDict[str, Any]":
    """The state_dict of an open container; every metadata field it uses is checked first (the file
    is hostile: a malformed field is a :class:`CorruptDataError`, never a crash or a silent loss)."""
    info = adapter_info(f.metadata)
    aliases = dict(f.aliases)
    names = list(f.keys())
    stored = [n for n in names if n not in aliases]
    strides = info.get("strides", {})
    if not isinstance(strides, Mapping):
        raise CorruptDataError("metadata: 'strides' is not an object")
    unknown = sorted(set(strides) - set(stored))
    if unknown:
        raise CorruptDataError(f"metadata: 'strides' names tensors the file does not store: {unknown[:5]}")
    strides = {n: _checked_strides(st, tuple(f.info(n).shape), n) for n, st in strides.items()}
    layouts = info.get("layouts", [])
    if not isinstance(layouts, list) or len(layouts) > len(stored) or not all(
            type(v) is int and v in (0, 1) for v in layouts):
        raise CorruptDataError("metadata: 'layouts' is not a list of 0/1, one per stored tensor at most")
    for name, code in zip(stored, layouts):
        if code:
            if name in strides:
                raise CorruptDataError(f"metadata: {name!r} has both 'strides' and 'layouts' entries", tensor=name)
            strides[name] = _reversed_strides(tuple(f.info(name).shape))
    extras = info.get("extra_entries", {})
    if not isinstance(extras, Mapping):
        raise CorruptDataError("metadata: 'extra_entries' is not an object")
    clash = sorted(set(extras) & set(names))
    if clash:
        raise CorruptDataError(f"metadata: 'extra_entries' repeats tensor names: {clash[:5]}")
    for key in ("extra_entries", "state_dict_metadata"):
        if _too_deep(info.get(key)):
            raise CorruptDataError(f"metadata: '{key}' nests deeper than {MAX_ENTRY_DEPTH} levels")
    out: OrderedDict[str, Any] = OrderedDict()
    wrap = progress or no_progress
    tensors: dict[str, torch.Tensor] = {}
    for name in wrap(stored, total=len(stored), desc="decompress"):
        t = from_numpy(f.get_tensor(name))
        if name in strides:
            t = _with_strides(t, strides[name])
        tensors[name] = t
    for name in names:
        target = name
        hops = 0
        while target in aliases:
            target = aliases[target]
            hops += 1
            if hops > len(aliases):
                raise CorruptDataError(f"alias cycle at {name!r}", tensor=name)
        if target not in tensors:
            raise CorruptDataError(f"alias {name!r} points to missing tensor {target!r}", tensor=name)
        out[name] = tensors[target]
    for name, value in extras.items():
        out[name] = value
    key_order = info.get("key_order")
    if key_order is not None:
        if not isinstance(key_order, list) or not all(isinstance(k, str) for k in key_order) \
                or len(set(key_order)) != len(key_order) or set(key_order) != set(out):
            raise CorruptDataError("metadata: 'key_order' is not the list of the state_dict's keys")
        out = OrderedDict((k, out[k]) for k in key_order)
    sd_meta = info.get("state_dict_metadata")
    if isinstance(sd_meta, Mapping):  # older files: an object (key order not kept)
        sd_meta = [[k, v] for k, v in sd_meta.items()]
    if "modules" in info:
        if sd_meta is not None:
            raise CorruptDataError("metadata: both 'modules' and 'state_dict_metadata' are present")
        if _too_deep(info["modules"]):
            raise CorruptDataError(f"metadata: 'modules' nests deeper than {MAX_ENTRY_DEPTH} levels")
        sd_meta = _expand_modules(info["modules"], list(out))
    if sd_meta is not None:
        if not isinstance(sd_meta, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], Mapping)
                for p in sd_meta):
            raise CorruptDataError("metadata: 'state_dict_metadata' is not a list of [module, {...}] pairs")
        out._metadata = OrderedDict((k, dict(v)) for k, v in sd_meta)  # type: ignore[attr-defined]
    return out


def load(data: bytes | bytearray | memoryview | BinaryIO, *,
         limits: Limits | None = None) -> "OrderedDict[str, torch.Tensor]":
    """Decode .rdc bytes (or a binary stream) into a state_dict of CPU tensors (``limits``: reader limits)."""
    with open_rdc(data, limits=limits) as f:
        return _restore(f)


def load_file(path: str | os.PathLike, *, progress: Progress | None = None,
              limits: Limits | None = None) -> "OrderedDict[str, torch.Tensor]":
    """Read an .rdc file into a state_dict of CPU tensors (tied names share one tensor; ``limits``: reader
    limits)."""
    with open_rdc(path, limits=limits) as f:
        return _restore(f, progress)


def load_into(module: "torch.nn.Module", path: str | os.PathLike | bytes, *, strict: bool = True,
              check_dtypes: bool = True):
    """Load an .rdc file (path or bytes) straight into ``module``; returns ``load_state_dict``'s result.

    With ``check_dtypes`` (default) a tensor whose dtype differs from the module's is an error instead
    of a silent cast, so what the file holds is exactly what the module gets.
    """
    state_dict = load(path) if isinstance(path, (bytes, bytearray, memoryview)) else load_file(path)
    if check_dtypes:
        own = module.state_dict()
        for name, value in state_dict.items():
            mine = own.get(name)
            if isinstance(mine, torch.Tensor) and isinstance(value, torch.Tensor) and mine.dtype != value.dtype:
                raise InvalidInputError(
                    f"tensor {name!r} is {value.dtype} in the file but {mine.dtype} in the module; "
                    "convert the module (e.g. module.to(dtype)) or pass check_dtypes=False"
                )
    try:
        return module.load_state_dict(state_dict, strict=strict)
    except RuntimeError as exc:
        raise InvalidInputError(f"state_dict does not fit the module: {exc}") from exc


# ----------------------------------------------------------------------------------------------------
# Checkpoint files


def _unsafe_reason(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        line = line.strip()
        if "GLOBAL" in line or line.lower().startswith("unsupported"):
            return line
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _is_state_dict(obj: Any) -> bool:
    """Names -> tensors; plain scalars/strings (and ``*_extra_state`` entries) may sit in between."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
        and all(
            isinstance(v, (torch.Tensor, str, int, float, bool, type(None))) or k.endswith("_extra_state")
            for k, v in obj.items()
        )
    )


def find_state_dict(obj: Any, *, key: str | None = None) -> tuple[Mapping[str, Any], str | None]:
    """Pick the state_dict out of a loaded checkpoint: the object itself, or a common nesting key."""
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise FormatError(f"checkpoint has no key {key!r}")
        if not _is_state_dict(obj[key]):
            raise FormatError(f"checkpoint entry {key!r} is not a state_dict")
        return obj[key], key
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, Mapping):
        for k in STATE_DICT_KEYS:
            if k in obj and _is_state_dict(obj[k]):
                return obj[k], k
        candidates = [k for k, v in obj.items() if _is_state_dict(v)]
        if len(candidates) == 1:
            return obj[candidates[0]], candidates[0]
        keys = ", ".join(repr(k) for k in list(obj)[:12])
        raise FormatError(
            "no state_dict found in the checkpoint (expected a mapping of names to tensors, or one under "
            f"a key such as 'state_dict' or 'model'); top-level keys: {keys}"
            + ("; several candidates: " + ", ".join(map(repr, candidates))
               + " (pick one with rdc compress --key KEY, or key= in Python)" if candidates else "")
        )
    if isinstance(obj, torch.Tensor):
        raise FormatError("the checkpoint is a single tensor, not a state_dict")
    raise FormatError(f"the checkpoint holds a {type(obj).__name__}, not a state_dict")


#: Most bytes the members of a zip checkpoint may unpack to, per byte of the file (above
#: ``Limits.ratio_floor_bytes``). torch writes members uncompressed (1x); weights deflate by 1.1-1.5x, so
#: 16 leaves room for a repacked file while a deflate bomb (up to ~1000x) is refused before torch.load.
MAX_CHECKPOINT_INFLATION = 16


def _check_inflation(path: str | os.PathLike | BinaryIO, name: str) -> None:
    """Refuse a zip checkpoint whose members unpack to more than :data:`MAX_CHECKPOINT_INFLATION` times
    its size (and more than ``Limits.ratio_floor_bytes``).

    ``torch.load`` inflates every member it reads (``data.pkl``, each storage) into memory, and reads
    deflated members although it never writes them: a 98 KB file whose ``data.pkl`` inflates to 100 MB
    made it hold 380 MB. The sizes the zip directory declares bound what it allocates, so they are
    checked first. Anything that is not a readable zip is left to torch.
    """
    try:
        if isinstance(path, (str, os.PathLike)):
            size = os.path.getsize(path)
            with zipfile.ZipFile(path) as zf:
                declared = sum(i.file_size for i in zf.infolist())
        elif path.seekable():
            start = path.tell()
            try:
                size = path.seek(0, os.SEEK_END) - start
                path.seek(start)
                with zipfile.ZipFile(path) as zf:
                    declared = sum(i.file_size for i in zf.infolist())
            finally:
                path.seek(start)
        else:
            return
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, AttributeError):
        return  # a legacy (non-zip) checkpoint, or a damaged one: torch.load says what is wrong
    floor = Limits().ratio_floor_bytes
    if declared > max(MAX_CHECKPOINT_INFLATION * size, floor):
        raise LimitExceededError(
            f"{name}: its zip members unpack to {declared:,} bytes, {declared / max(size, 1):,.0f} times the "
            f"file's {size:,} bytes (limit: {MAX_CHECKPOINT_INFLATION}x, or {floor:,} bytes); refused: "
            "torch.load would hold them in memory (torch.save writes members uncompressed: re-save it)")


def _load_checkpoint(path: str | os.PathLike | BinaryIO) -> Any:
    """The object a checkpoint file holds, through ``torch.load(weights_only=True)`` only; every failure
    is an rdformat error (:class:`UnsafeCheckpointError` for pickles that need more than tensors)."""
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else "<stream>"
    _check_inflation(path, name)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{name}: refused: this checkpoint needs arbitrary unpickling, which could run code "
            f"({_unsafe_reason(exc)}); only weights-only checkpoints (state_dicts of tensors) are read. "
            "Re-save it from trusted code with torch.save(model.state_dict(), path)"
        ) from exc
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError, AttributeError,
            KeyError, TypeError, IndexError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "TorchScript" in str(exc) or "torch.jit" in str(exc):
            raise UnsafeCheckpointError(f"{name}: refused: TorchScript archives are programs, not weights") from exc
        raise FormatError(f"{name}: not a readable PyTorch checkpoint: {msg}") from exc


def read_checkpoint(path: str | os.PathLike | BinaryIO, *, key: str | None = None, fold: bool = True,
                    return_key: bool = False):
    """Read a ``.pt``/``.pth`` checkpoint with ``torch.load(weights_only=True)`` and return its state_dict.

    Only the safe unpickler is ever used: a checkpoint whose pickle references anything beyond
    tensors and plain containers (a whole pickled ``nn.Module``, custom classes, code) is refused with
    :class:`UnsafeCheckpointError`, and none of its code runs. ``key`` forces the nesting key; with
    ``fold`` pruning reparametrisations are folded (see :func:`fold_pruning`).
    """
    state_dict, found = find_state_dict(_load_checkpoint(path), key=key)
    if fold:
        state_dict, _ = fold_pruning(state_dict)
    return (state_dict, found) if return_key else state_dict


def write_checkpoint(state_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a state_dict as a ``.pt`` file (atomically); tied tensors stay one storage."""
    if not isinstance(state_dict, OrderedDict):
        meta = getattr(state_dict, "_metadata", None)
        state_dict = OrderedDict(state_dict)
        if meta is not None:
            state_dict._metadata = meta  # type: ignore[attr-defined]
    with atomic_output(path) as fh:
        torch.save(state_dict, fh)


def compress_file(src: str | os.PathLike, dst: str | os.PathLike | BinaryIO, *, key: str | None = None,
                  metadata: Mapping[str, Any] | None = None, codec: str = "lossless", lossy: Any = None,
                  progress: Progress | None = None) -> None:
    """Convert a ``.pt``/``.pth`` checkpoint into an .rdc container (lossless by default)."""
    obj = _load_checkpoint(src)
    state_dict, found = find_state_dict(obj, key=key)
    if found is not None and len(obj) > 1:
        # A training checkpoint: the .rdc file holds its state_dict only. Say so, or a round trip would
        # drop the optimizer state, epoch, ... without a word (and the size ratio would flatter).
        others = [repr(k) for k in obj if k != found]
        listed = ", ".join(others[:8]) + (f" and {len(others) - 8} more" if len(others) > 8 else "")
        warnings.warn(f"{Path(os.fspath(src)).name}: only the state_dict under {found!r} is stored; the "
                      f"checkpoint's other entries are not: {listed}", stacklevel=2)
    _write(dst, state_dict, metadata=metadata, codec=codec, lossy=lossy, progress=progress,
           extra_fields={"checkpoint_key": found, "source_name": Path(os.fspath(src)).name})


def decompress_file(src: str | os.PathLike | bytes, dst: str | os.PathLike, *,
                    progress: Progress | None = None, budget: int | None = None, limits: Limits | None = None) -> None:
    """Restore an .rdc container (from any source format) as a ``.pt`` state_dict checkpoint
    (``budget``, ``limits``: see ``rdformat.open``)."""
    source = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else src
    if isinstance(src, (str, os.PathLike)):
        refuse_input_as_output(dst, [src], what="decompress")
    with open_rdc(source, budget=budget, limits=limits) as f:
        state_dict = _restore(f, progress)
    write_checkpoint(state_dict, dst)


def tensors_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Bit-exact equality of two state_dicts: same names, dtypes, shapes and bytes."""
    if list(a) != list(b):
        return False
    for name in a:
        x, y = a[name], b[name]
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if not isinstance(x, torch.Tensor):
            if x != y:
                return False
            continue
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if not np.array_equal(to_numpy(x).reshape(-1).view(np.uint8), to_numpy(y).reshape(-1).view(np.uint8)):
            return False
    return True


def estimate_sensitivity(
    module: "torch.nn.Module",
    batches: Iterable[Any],
    loss_fn: Callable[["torch.nn.Module", Any], "torch.Tensor"],
) -> dict[str, float]:
    """Per-tensor sensitivity for lossy rate control, from a calibration set.

    Returns the mean squared gradient of the loss (the diagonal empirical Fisher information,
    averaged over each parameter tensor and over the batches). To second order, a weight error
    ``e`` raises the loss by about ``0.5 * sum(F * e**2)``, so passing the result as
    ``rdformat.save(..., sensitivity=...)`` gives each tensor the step that equalises its marginal
    loss per bit: tensors whose errors hurt the task get finer steps.

    Args:
        module: the model (its parameters' ``requires_grad`` state is restored afterwards).
        batches: calibration batches, passed one at a time to ``loss_fn``.
        loss_fn: ``loss_fn(module, batch) -> scalar loss tensor``.
    """
    params = {name: p for name, p in module.named_parameters()}
    sums = {name: 0.0 for name in params}
    count = 0
    was_training = module.training
    module.eval()
    try:
        for batch in batches:
            module.zero_grad(set_to_none=True)
            loss = loss_fn(module, batch)
            loss.backward()
            for name, p in params.items():
                if p.grad is not None:
                    sums[name] += float(p.grad.detach().double().pow(2).mean())
            count += 1
    finally:
        module.zero_grad(set_to_none=True)
        module.train(was_training)
    if count == 0:
        raise InvalidInputError("estimate_sensitivity needs at least one calibration batch")
    # A floor keeps tensors with (near) zero gradient from getting an unbounded step.
    values = {name: total / count for name, total in sums.items()}
    positive = [v for v in values.values() if v > 0]
    floor = (min(positive) if positive else 1.0) * 1e-3
    return {name: max(v, floor) for name, v in values.items()}


__all__ = [
    "estimate_sensitivity",
    "output_sensitivity",
    "input_covariances",
    "output_error",
    "UnsafeCheckpointError",
    "save",
    "save_file",
    "load",
    "load_file",
    "load_into",
    "read_checkpoint",
    "write_checkpoint",
    "compress_file",
    "decompress_file",
    "fold_pruning",
    "find_state_dict",
    "to_numpy",
    "from_numpy",
    "tensors_equal",
]
