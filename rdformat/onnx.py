"""ONNX adapter: ``.onnx`` models <-> ``.rdc`` containers (graph blob + weight tensors).

Verbs (same as the other adapters; the framework object is an ``onnx.ModelProto``)::

    data = rdformat.onnx.save(model)                  # -> .rdc bytes
    rdformat.onnx.save_file(model, "model.rdc")
    model = rdformat.onnx.load(data)                  # -> onnx.ModelProto with inline weights
    model = rdformat.onnx.load_file("model.rdc")

Files::

    model = rdformat.onnx.read_model("model.onnx")    # external data checked and inlined
    rdformat.onnx.compress_file("model.onnx", "model.rdc")
    rdformat.onnx.decompress_file("model.rdc", "model.onnx")              # auto external data
    rdformat.onnx.decompress_file("model.rdc", "big.onnx", external_data=True)  # + big.onnx.data

How it is stored: every initializer (also in subgraphs) and the ``value`` tensor of every ``Constant``
node whose dtype .rdc supports becomes a tensor of the container, named after the ONNX value it
defines. The model itself, with those tensors' data removed, is the container's graph blob
(``graph_format="onnx"``): each emptied ``TensorProto`` keeps its name, dims and data type and carries
an external-data reference ``{"location": "*rdc*", "rdc_tensor": <name>}``, plus ``"rdc_field"`` naming the
typed field (``float_data``, ``int64_data``...) when the model stored it there rather than in ``raw_data``.
Tensors of other dtypes (strings, 4-bit, complex...) stay inline in the graph blob. Restoring writes every
tensor back, bit for bit, where it was (``raw_data`` or its typed field), or into an external data file, so
a lossless round trip of a model without external data gives the same bytes.

External data of input models is read one tensor at a time straight from its file, so models over
2 GB work; a location that is absolute, contains ``..``, or resolves (through symlinks) outside the
model's folder is refused with :class:`~rdformat.adapters.UnsafeInputError`.

Structural tensors (never lossy): every integer/bool tensor, and float tensors that steer shapes or
control flow (see :data:`STRUCTURAL_INPUTS`), also when they reach such an input through simple
pass-through ops (Cast, Concat, Unsqueeze...).

One module on purpose (over 500 lines): reading a model (initializers, ``Constant`` nodes,
subgraphs, external data) and restoring it are the two halves of one mapping between ONNX's
tensor slots and the container's tensor names; split apart, each half would re-derive the other's
slot walk.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto

from .adapters import (FormatError, Progress, adapter_info, atomic_output, check_shape, make_metadata, no_progress,
                       open_rdc, open_regular, path_inside, rdc_bytes, refuse_input_as_output, same_file, write_rdc)
from .api import Limits
from .errors import CorruptDataError, InvalidInputError, LimitExceededError
from .format.atomic import AtomicFile, fresh_name
from .format.dtypes import numpy_dtype


#: Marker location of emptied tensors in the graph blob.
RDC_LOCATION = "*rdc*"
RDC_KEY = "rdc_tensor"
#: external-data key of an emptied tensor whose model stored it in a typed field (``float_data``...) rather
#: than ``raw_data``: restoring puts the values back there, so a lossless round trip gives the same bytes.
RDC_FIELD_KEY = "rdc_field"
#: Above this many bytes of weights, restored models use an external data file by default.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
#: Tensors smaller than this stay inline even when an external data file is written.
EXTERNAL_MIN_BYTES = 1024
_PROTOBUF_LIMIT = (1 << 31) - 1

# ONNX data type -> numpy dtype name (only the types .rdc can hold; others stay inline in the graph)
_ONNX_TO_NP = {
    TensorProto.FLOAT: "float32",
    TensorProto.UINT8: "uint8",
    TensorProto.INT8: "int8",
    TensorProto.UINT16: "uint16",
    TensorProto.INT16: "int16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.BOOL: "bool",
    TensorProto.FLOAT16: "float16",
    TensorProto.DOUBLE: "float64",
    TensorProto.UINT32: "uint32",
    TensorProto.UINT64: "uint64",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.FLOAT8E4M3FN: "float8_e4m3fn",
    TensorProto.FLOAT8E5M2: "float8_e5m2",
}
_NP_TO_ONNX = {v: k for k, v in _ONNX_TO_NP.items()}
# dtypes whose typed-field storage is int32_data holding bit patterns
_BITS_IN_INT32 = {"float16": np.uint16, "bfloat16": np.uint16, "float8_e4m3fn": np.uint8, "float8_e5m2": np.uint8}

_FROM1 = "from1"
_ALL = "all"
#: op type -> input positions whose values steer shapes or control flow (``"from1"``: inputs 1+).
STRUCTURAL_INPUTS: dict[str, Any] = {
    "Reshape": {1},
    "Resize": _FROM1,
    "Upsample": _FROM1,
    "Slice": _FROM1,
    "Pad": _FROM1,
    "Expand": {1},
    "Tile": {1},
    "ConstantOfShape": _ALL,
    "TopK": {1},
    "Range": _ALL,
    "Squeeze": {1},
    "Unsqueeze": {1},
    "Split": {1},
    "SplitToSequence": {1},
    "OneHot": {1},
    "Loop": {0, 1},
    "If": {0},
    "Where": {0},
    "Compress": {1},
    "NonMaxSuppression": {2, 3, 4},
    "CenterCropPad": {1},
    "Col2Im": {1, 2},
    "DFT": {1, 2},
    "STFT": {1, 3},
    "Trilu": {1},
    "CumSum": {1},
    "Gather": {1},
    "GatherElements": {1},
    "GatherND": {1},
    "Scatter": {1},
    "ScatterElements": {1},
    "ScatterND": {1},
    "ReverseSequence": {1},
    "MaxUnpool": {2},
    "RoiAlign": {2},
    "AffineGrid": {1},
    "BlackmanWindow": _ALL,
    "HannWindow": _ALL,
    "HammingWindow": _ALL,
    "MelWeightMatrix": _ALL,
    "SequenceAt": {1},
    "SequenceInsert": {2},
    "SequenceErase": {1},
    # quantisation parameters: not shapes, but a lossy scale/zero point breaks the whole tensor
    "QuantizeLinear": {1, 2},
    "DequantizeLinear": {1, 2},
    "QLinearConv": {1, 2, 4, 5, 6, 7},
    "QLinearMatMul": {1, 2, 4, 5, 6, 7},
    **{op: {1} for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                          "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
}
#: ops through which a structural output makes the listed inputs structural too (shape arithmetic).
PASS_THROUGH: dict[str, Any] = {
    "Identity": _ALL, "Cast": _ALL, "CastLike": {0}, "Concat": _ALL, "Unsqueeze": {0}, "Squeeze": {0},
    "Reshape": {0}, "Flatten": {0}, "Gather": {0}, "Slice": {0}, "Expand": {0}, "Tile": {0},
    "Transpose": {0}, "Mul": _ALL, "Add": _ALL, "Sub": _ALL, "Div": _ALL, "Floor": _ALL, "Ceil": _ALL,
    "Round": _ALL, "Neg": _ALL, "Abs": _ALL, "Max": _ALL, "Min": _ALL, "Sum": _ALL, "Mod": _ALL,
    "Sqrt": _ALL, "Pow": _ALL, "Sign": _ALL,
}


def _positions(spec: Any, n: int) -> range | set:
    if spec == _ALL:
        return range(n)
    if spec == _FROM1:
        return range(1, n)
    return spec


# ----------------------------------------------------------------------------------------------------
# Walking the model


def _subgraphs(node: onnx.NodeProto) -> Iterator[GraphProto]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _all_nodes(model: ModelProto) -> Iterator[onnx.NodeProto]:
    stack: list = [model.graph.node]
    stack.extend(f.node for f in model.functions)
    while stack:
        for node in stack.pop():
            yield node
            stack.extend(g.node for g in _subgraphs(node))


def _tensor_slots(model: ModelProto) -> Iterator[tuple[TensorProto, str, bool]]:
    """Yield ``(tensor, value name, is_main_initializer)`` for every initializer and Constant value."""

    def graph_slots(g: GraphProto, main: bool) -> Iterator[tuple[TensorProto, str, bool]]:
        for t in g.initializer:
            yield t, t.name, main
        yield from node_slots(g.node)

    def node_slots(nodes) -> Iterator[tuple[TensorProto, str, bool]]:
        for node in nodes:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                        yield attr.t, (node.output[0] if node.output else node.name), False
            for g in _subgraphs(node):
                yield from graph_slots(g, False)

    yield from graph_slots(model.graph, True)
    for func in model.functions:
        yield from node_slots(func.node)


def structural_values(model: ModelProto) -> set[str]:
    """Names of values that steer shapes/control flow (directly or through pass-through ops)."""
    marked: set[str] = set()
    producers: dict[str, onnx.NodeProto] = {}
    for node in _all_nodes(model):
        for out in node.output:
            if out:
                producers[out] = node
        spec = STRUCTURAL_INPUTS.get(node.op_type)
        if spec is not None and node.domain in ("", "ai.onnx"):
            for i in _positions(spec, len(node.input)):
                if i < len(node.input) and node.input[i]:
                    marked.add(node.input[i])
    todo = list(marked)
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.domain not in ("", "ai.onnx"):
            continue
        spec = PASS_THROUGH.get(node.op_type)
        if spec is None:
            continue
        for i in _positions(spec, len(node.input)):
            if i < len(node.input) and node.input[i] and node.input[i] not in marked:
                marked.add(node.input[i])
                todo.append(node.input[i])
    return marked


# ----------------------------------------------------------------------------------------------------
# TensorProto <-> numpy


def _np_dtype(name: str) -> np.dtype:
    if name in _BITS_IN_INT32 and name != "float16":
        return numpy_dtype(name)
    return np.dtype(name)


def _nbytes(t: TensorProto, dtype: np.dtype) -> int:
    n = dtype.itemsize
    for d in t.dims:
        n *= d
    return n


# sizes of the types kept inline (needed to read them from external data): bytes, or bits when packed
_OTHER_BYTES = {14: 8, 15: 16, 18: 1, 20: 1, 24: 1}
_OTHER_BITS = {21: 4, 22: 4, 23: 4, 25: 2, 26: 2, 27: 6, 28: 6}


def _raw_size(t: TensorProto) -> int | None:
    """Bytes of a tensor's raw data, or None when unknown (strings, future types)."""
    np_name = _ONNX_TO_NP.get(t.data_type)
    numel = 1
    for d in t.dims:
        numel *= d
    if np_name is not None:
        return numel * _np_dtype(np_name).itemsize
    if t.data_type in _OTHER_BYTES:
        return numel * _OTHER_BYTES[t.data_type]
    if t.data_type in _OTHER_BITS:
        return -(-numel * _OTHER_BITS[t.data_type] // 8)
    return None


def _check_dims(t: TensorProto, name: str) -> tuple[int, ...]:
    if any(d < 0 for d in t.dims):
        raise FormatError(f"tensor {name!r} has negative dims {list(t.dims)}")
    return check_shape(t.dims, what=f"tensor {name!r}")  # numpy must be able to hold the shape


def _typed_to_numpy(t: TensorProto, np_name: str, name: str) -> np.ndarray:
    dtype = _np_dtype(np_name)
    shape = _check_dims(t, name)
    if np_name == "float32":
        arr = np.array(t.float_data, dtype=np.float32)
    elif np_name == "float64":
        arr = np.array(t.double_data, dtype=np.float64)
    elif np_name == "int64":
        arr = np.array(t.int64_data, dtype=np.int64)
    elif np_name in ("uint32", "uint64"):
        arr = np.array(t.uint64_data, dtype=np.uint64).astype(np_name)
    elif np_name in _BITS_IN_INT32:
        arr = np.array(t.int32_data, dtype=np.int32).astype(_BITS_IN_INT32[np_name]).view(dtype)
    else:  # int32 and narrower ints, bool: values in int32_data
        arr = np.array(t.int32_data, dtype=np.int32).astype(np_name)
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise FormatError(f"tensor {name!r}: {arr.size} values for dims {list(shape)}")
    return arr.reshape(shape)


def _typed_field(np_name: str) -> str:
    """The ``TensorProto`` field that holds a tensor of ``np_name`` when it does not use ``raw_data``."""
    if np_name == "float32":
        return "float_data"
    if np_name == "float64":
        return "double_data"
    if np_name == "int64":
        return "int64_data"
    if np_name in ("uint32", "uint64"):
        return "uint64_data"
    return "int32_data"  # narrower ints, bool, and the bit patterns of 16- and 8-bit floats


def _set_typed(t: TensorProto, arr: np.ndarray, np_name: str, name: str) -> bool:
    """Store ``arr`` in ``t``'s typed field (the inverse of :func:`_typed_to_numpy`); False (nothing stored)
    when the values would not read back bit for bit (e.g. a signalling NaN through a Python float)."""
    flat = arr.reshape(-1)
    if np_name in _BITS_IN_INT32:
        values = flat.view(_BITS_IN_INT32[np_name]).astype(np.int64)
    elif np_name in ("float32", "float64"):
        values = flat
    else:
        values = flat.astype(np.uint64 if np_name in ("uint32", "uint64") else np.int64)
    getattr(t, _typed_field(np_name)).extend(values.tolist())
    if _typed_to_numpy(t, np_name, name).tobytes() == arr.tobytes():
        return True
    t.ClearField(_typed_field(np_name))
    return False


def _restore_data(t: TensorProto, arr: np.ndarray, name: str) -> None:
    """Put ``arr`` back into the emptied tensor ``t``: in the typed field its model used (recorded under
    :data:`RDC_FIELD_KEY`, checked against the dtype: the graph is untrusted), else as ``raw_data``."""
    field = _external_entries(t).get(RDC_FIELD_KEY)
    np_name = _ONNX_TO_NP.get(t.data_type)
    _clear_data(t)
    if field is not None:
        if np_name is None or field != _typed_field(np_name):
            raise CorruptDataError(f"graph: tensor {name!r} of type {TensorProto.DataType.Name(t.data_type)} "
                                   f"names {field!r} as its storage field", record="graph", tensor=name)
        if _set_typed(t, arr, np_name, name):
            return
    t.raw_data = arr.tobytes()


def _external_entries(t: TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


class _ExternalFiles:
    """Reads external-data ranges of an input model, refusing paths that leave its folder."""

    MAX_OPEN = 16

    def __init__(self, base_dir: str | os.PathLike | None) -> None:
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self._files: dict[str, BinaryIO] = {}

    def resolve(self, t: TensorProto, name: str) -> Path:
        """The checked path of a tensor's external data file."""
        location = _external_entries(t).get("location")
        if location is None:
            raise FormatError(f"tensor {name!r} is marked external but has no location")
        if self.base_dir is None:
            raise InvalidInputError(
                f"tensor {name!r} has external data {location!r}; give base_dir (the model's folder)"
            )
        return path_inside(self.base_dir, location, what=f"tensor {name!r}: external data")

    def read(self, t: TensorProto, name: str, expected: int | None) -> bytes:
        entries = _external_entries(t)
        location = entries.get("location")
        path = self.resolve(t, name)
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries["length"]) if "length" in entries else None
        except ValueError as exc:
            raise FormatError(f"tensor {name!r}: bad external data offset/length: {exc}") from exc
        key = os.fspath(path)
        fh = self._files.pop(key, None)
        if fh is None:
            while len(self._files) >= self.MAX_OPEN:  # models with one file per tensor: bounded handles
                self._files.pop(next(iter(self._files))).close()
            # a FIFO or a device named as external data would block or never end: regular files only
            fh = open_regular(path, what=f"tensor {name!r}: external data {location!r}")
        self._files[key] = fh  # most recently used last
        size = os.fstat(fh.fileno()).st_size
        if length is None:
            length = expected if expected is not None else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise FormatError(
                f"tensor {name!r}: external data range {offset}+{length} is outside {location!r} ({size} bytes)"
            )
        if expected is not None and length != expected:
            raise FormatError(f"tensor {name!r}: external data holds {length} bytes, dims need {expected}")
        fh.seek(offset)
        data = fh.read(length)
        if len(data) != length:
            raise FormatError(f"tensor {name!r}: external data {location!r} is truncated")
        return data

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


def _clear_data(t: TensorProto) -> None:
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "external_data"):
        t.ClearField(field)
    t.ClearField("raw_data")
    t.ClearField("data_location")


def _unique(name: str, used: set[str]) -> str:
    base = name or "tensor"
    out, k = base, 1
    while out in used:
        k += 1
        out = f"{base}#{k}"
    used.add(out)
    return out


def _extract(model: ModelProto, base_dir: str | os.PathLike | None):
    """Empty ``model``'s weights in place; return (tensor plan, structural rdc names, had_external).

    The plan is a list of ``(rdc name, loader)`` where ``loader()`` returns the array (external data is
    read only when the loader runs, so tensors stream from disk one at a time).
    """
    files = _ExternalFiles(base_dir)
    steer = structural_values(model)
    used: set[str] = set()
    plan: list[tuple[str, Callable[[], np.ndarray]]] = []
    structural: list[str] = []
    had_external = False
    for t, value_name, _main in _tensor_slots(model):
        np_name = _ONNX_TO_NP.get(t.data_type)
        external = t.data_location == TensorProto.EXTERNAL
        if external and RDC_KEY in _external_entries(t):
            raise FormatError(f"tensor {value_name!r} is an emptied .rdc reference, not a model weight")
        if np_name is None:
            if external:  # keep it, but inline (the model's data files do not travel with the .rdc)
                had_external = True
                raw = files.read(t, value_name, _raw_size(t))
                _clear_data(t)
                t.raw_data = raw
            continue
        if t.segment.ByteSize():
            raise FormatError(f"tensor {value_name!r} is segmented; segmented tensors are not supported")
        dtype = _np_dtype(np_name).newbyteorder("<")
        shape = _check_dims(t, value_name)
        expected = _nbytes(t, dtype)
        if external:
            had_external = True
            snapshot = TensorProto()
            snapshot.CopyFrom(t)

            def loader(snapshot=snapshot, shape=shape, dtype=dtype, expected=expected, vn=value_name):
                data = files.read(snapshot, vn, expected)
                return np.frombuffer(bytearray(data), dtype=dtype).reshape(shape)

            files.resolve(t, value_name)  # refuse bad paths now, before anything is written
        elif t.HasField("raw_data"):
            raw = t.raw_data
            if len(raw) != expected:
                raise FormatError(f"tensor {value_name!r}: raw_data holds {len(raw)} bytes, dims need {expected}")
            arr = np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
            loader = (lambda a=arr: a)
        else:
            arr = _typed_to_numpy(t, np_name, value_name)
            loader = (lambda a=arr: a)
        typed = not external and not t.HasField("raw_data")
        rdc_name = _unique(value_name, used)
        _clear_data(t)
        t.data_location = TensorProto.EXTERNAL
        entries = [("location", RDC_LOCATION), (RDC_KEY, rdc_name)]
        if typed:
            entries.append((RDC_FIELD_KEY, _typed_field(np_name)))
        for key, value in entries:
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        plan.append((rdc_name, loader))
        if value_name in steer or dtype.kind in "biu":
            structural.append(rdc_name)
    return plan, structural, had_external, files


def _model_info(model: ModelProto, had_external: bool, source_name: str | None, count: int) -> dict:
    return {
        "ir_version": int(model.ir_version),
        "opset_import": {op.domain or "ai.onnx": int(op.version) for op in model.opset_import},
        "producer_name": model.producer_name or None,
        "producer_version": model.producer_version or None,
        "external_data": had_external,
        "source_name": source_name,
        "tensor_count": count,
    }


def _encode(model: ModelProto, target, *, base_dir, metadata, codec, lossy=None, progress: Progress | None,
            source_name: str | None = None, copy: bool = True) -> bytes | None:
    if not isinstance(model, ModelProto):
        raise InvalidInputError(f"expected an onnx.ModelProto, got {type(model).__name__}")
    if copy:
        stripped = ModelProto()
        stripped.CopyFrom(model)
    else:
        stripped = model
    plan, structural, had_external, files = _extract(stripped, base_dir)
    try:
        graph = stripped.SerializeToString()
        meta = make_metadata("onnx", metadata, **_model_info(stripped, had_external, source_name, len(plan)))
        wrap = progress or no_progress
        items = ((name, load()) for name, load in wrap(plan, total=len(plan), desc="compress"))
        kwargs = dict(metadata=meta, graph=graph, graph_format="onnx", structural=structural, codec=codec, lossy=lossy)
        if target is None:
            return rdc_bytes(items, **kwargs)
        write_rdc(target, items, **kwargs)
        return None
    finally:
        files.close()


def _read_onnx(path: str | os.PathLike) -> ModelProto:
    with open_regular(path, what="onnx model") as fh:
        raw = fh.read()
        try:
            return onnx.load_model_from_string(raw)  # external data is read by _ExternalFiles, checked
        except OSError:
            raise
        except Exception as exc:  # DecodeError, ValueError... whatever protobuf/onnx raise on bad bytes
            raise FormatError(f"{path}: not a readable ONNX model: {exc}") from exc


def _external_paths(model: ModelProto, folder: Path) -> list[Path]:
    """The checked paths of every external data file a model names (for the same-file checks)."""
    files = _ExternalFiles(folder)
    paths = {}
    for t, name, _main in _tensor_slots(model):
        if t.data_location == TensorProto.EXTERNAL and RDC_KEY not in _external_entries(t):
            path = files.resolve(t, name)
            paths[os.fspath(path)] = path
    return list(paths.values())


# ----------------------------------------------------------------------------------------------------
# Restoring


def _parse_graph(f) -> ModelProto:
    if f.graph is None:
        raise InvalidInputError("this .rdc file has no graph; it cannot become an .onnx model "
                                "(restore it as .safetensors, .pt or .npz instead)")
    if f.graph_format not in (None, "onnx"):
        raise InvalidInputError(f"the graph in this .rdc file is {f.graph_format!r}, not ONNX")
    model = ModelProto()
    try:
        model.ParseFromString(f.graph)
    except DecodeError as exc:
        raise CorruptDataError(f"the ONNX graph record does not parse: {exc}", record="graph") from exc
    return model


def _refs(model: ModelProto) -> list[tuple[TensorProto, str, bool]]:
    """The emptied tensors of a graph blob and the container tensors they name.

    The graph comes from the file, so it is hostile: a tensor marked external must be an .rdc
    reference. Any other external location (a path the restored model would read, anywhere) is
    refused with :class:`CorruptDataError`.
    """
    out = []
    for t, value, main in _tensor_slots(model):
        if t.data_location == TensorProto.EXTERNAL:
            entries = _external_entries(t)
            if entries.get("location") != RDC_LOCATION or not isinstance(entries.get(RDC_KEY), str):
                raise CorruptDataError(
                    f"graph: tensor {value!r} points to external data {entries.get('location')!r}, not to a "
                    "tensor of the container; refused", record="graph")
            out.append((t, entries[RDC_KEY], main))
        elif t.external_data:
            raise CorruptDataError(f"graph: tensor {value!r} has external-data entries but is not external",
                                   record="graph")
    return out


def _array_for(f, t: TensorProto, name: str) -> np.ndarray:
    arr = np.asarray(f.get_tensor(name))
    np_name = _ONNX_TO_NP.get(t.data_type)
    if np_name is None or arr.dtype != _np_dtype(np_name) or tuple(arr.shape) != tuple(t.dims):
        raise CorruptDataError(
            f"tensor {name!r} is {arr.dtype}{list(arr.shape)} in the container but the graph expects "
            f"{TensorProto.DataType.Name(t.data_type)}{list(t.dims)}", tensor=name)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.asarray(arr, order="C")


def _fill_inline(f, model: ModelProto, progress: Progress | None = None) -> ModelProto:
    refs = _refs(model)
    wrap = progress or no_progress
    for t, name, _main in wrap(refs, total=len(refs), desc="decompress"):
        _restore_data(t, _array_for(f, t, name), name)
    return model


def load(data: bytes | bytearray | memoryview | BinaryIO, *, limits: Limits | None = None) -> ModelProto:
    """Decode .rdc bytes into an ``onnx.ModelProto`` with inline weights (models under 2 GB; ``limits``:
    reader limits)."""
    with open_rdc(data, limits=limits) as f:
        return _fill_inline(f, _parse_graph(f))


def load_file(path: str | os.PathLike, *, limits: Limits | None = None) -> ModelProto:
    """Read an .rdc file into an ``onnx.ModelProto`` with inline weights (models under 2 GB; ``limits``:
    reader limits)."""
    with open_rdc(path, limits=limits) as f:
        return _fill_inline(f, _parse_graph(f))


def save(model: ModelProto, *, base_dir: str | os.PathLike | None = None,
         metadata: Mapping[str, Any] | None = None, codec: str = "lossless", lossy: Any = None) -> bytes:
    """Encode an ONNX model as .rdc bytes (``base_dir``: folder of its external data files, if any)."""
    return _encode(model, None, base_dir=base_dir, metadata=metadata, codec=codec, lossy=lossy, progress=None)


def save_file(model: ModelProto, path: str | os.PathLike | BinaryIO, *,
              base_dir: str | os.PathLike | None = None, metadata: Mapping[str, Any] | None = None,
              codec: str = "lossless", lossy: Any = None, progress: Progress | None = None) -> None:
    """Write an ONNX model to an .rdc file (atomically) or binary stream."""
    _encode(model, path, base_dir=base_dir, metadata=metadata, codec=codec, lossy=lossy, progress=progress)


def read_model(path: str | os.PathLike) -> ModelProto:
    """Read an ``.onnx`` file with its external data (paths checked), all weights inline."""
    path = Path(path)
    model = _read_onnx(path)
    files = _ExternalFiles(path.parent)
    try:
        for t, name, _main in _tensor_slots(model):
            if t.data_location == TensorProto.EXTERNAL:
                raw = files.read(t, name, _raw_size(t))
                _clear_data(t)
                t.raw_data = raw
    finally:
        files.close()
    return model


def compress_file(src: str | os.PathLike, dst: str | os.PathLike | BinaryIO, *,
                  metadata: Mapping[str, Any] | None = None, codec: str = "lossless", lossy: Any = None,
                  progress: Progress | None = None) -> None:
    """Convert an ``.onnx`` model (with external data files, if any) into an .rdc container."""
    src = Path(src)
    model = _read_onnx(src)
    if isinstance(dst, (str, os.PathLike)):  # the model and its external data files are all inputs
        refuse_input_as_output(dst, [src, *_external_paths(model, src.parent)], what="compress")
    _encode(model, dst, base_dir=src.parent, metadata=metadata, codec=codec, lossy=lossy, progress=progress,
            source_name=src.name, copy=False)


def _sidecar_pattern(dst: Path) -> re.Pattern:
    """Names of the data files this module writes for the model ``dst``: ``<name>.data`` and the
    fresh variants ``<name>.rdc-<8 hex>.data``."""
    return re.compile(rf"{re.escape(dst.name)}(\.rdc-[0-9a-f]{{8}})?\.data")


def _remove_old_sidecars(dst: Path, keep: str | None, src: Any) -> None:
    """After the new model is in place: remove the data files of the model it replaced (and of killed
    runs) that follow this module's naming; never the input, never a symlink."""
    folder = dst.parent if str(dst.parent) else Path(".")
    pattern = _sidecar_pattern(dst)
    try:
        names = [n for n in os.listdir(folder) if n != keep and pattern.fullmatch(n)]
    except OSError:
        return
    for name in names:
        path = folder / name
        if isinstance(src, (str, os.PathLike)) and same_file(path, src):
            continue
        try:
            if path.is_file() and not path.is_symlink():
                path.unlink()
        except OSError:
            pass


def decompress_file(src: str | os.PathLike | bytes, dst: str | os.PathLike, *,
                    external_data: bool | None = None, progress: Progress | None = None,
                    external_min_bytes: int = EXTERNAL_MIN_BYTES, budget: int | None = None,
                    limits: Limits | None = None) -> None:
    """Restore an .rdc container as an ``.onnx`` model (``budget``, ``limits``: see ``rdformat.open``).

    ``external_data``: True writes main-graph weights of ``external_min_bytes`` or more into
    ``<dst>.data`` (tensor by tensor, for models over 2 GB); False keeps everything inline; None (default)
    chooses external when the source model had external data or the weights exceed
    :data:`EXTERNAL_DATA_THRESHOLD`.

    The model and its data file are atomic as a set: both are written to temporary files; the data
    file is published first under a name no existing file has (``<dst>.data`` when free, else
    ``<dst>.rdc-<8 hex>.data``), the model, which names it, last. A reader opening the model sees the
    old pair or the new one. Then the data files of the replaced model (named as above) are removed.
    """
    dst = Path(dst)
    wrap = progress or no_progress
    if isinstance(src, (str, os.PathLike)):
        refuse_input_as_output(dst, [src], what="decompress")
        refuse_input_as_output(dst.with_name(dst.name + ".data"), [src], what="decompress: external data file")
    with open_rdc(src, budget=budget, limits=limits) as f:
        model = _parse_graph(f)
        refs = _refs(model)
        total = 0
        for _t, name, _main in refs:
            total += f.info(name).nbytes
        if external_data is None:
            recorded = adapter_info(f.metadata).get("external_data", False)
            if not isinstance(recorded, bool):
                raise CorruptDataError(f"metadata: 'external_data' must be true or false, got {recorded!r}")
            external_data = recorded or total > EXTERNAL_DATA_THRESHOLD
        if not external_data:
            if total + model.ByteSize() > _PROTOBUF_LIMIT:
                raise LimitExceededError(
                    f"the model's weights ({total} bytes) exceed protobuf's 2 GB limit; "
                    "restore with external data (external_data=True / --external-data yes)")
            _fill_inline(f, model, wrap)
            with atomic_output(dst) as fh:
                fh.write(model.SerializeToString())
            _remove_old_sidecars(dst, None, src)
            return
        # Only main-graph initializers of some size go to the data file. Structural tensors stay inline:
        # shape inference (onnxruntime's included) must read them without the data file.
        outside = {id(t) for t, name, main in refs
                   if main and f.info(name).nbytes >= external_min_bytes and not f.info(name).structural}
        data_name = None
        data = None
        try:
            if not outside:
                _fill_inline(f, model, wrap)
            else:
                folder = dst.parent if str(dst.parent) else Path(".")
                data_name = fresh_name(folder, dst.name + ".data", ".data")
                data = AtomicFile(folder / data_name)
                offset = 0
                for t, name, _main in wrap(refs, total=len(refs), desc="decompress"):
                    arr = _array_for(f, t, name)
                    if id(t) not in outside:
                        _restore_data(t, arr, name)
                        continue
                    _clear_data(t)
                    align = 4096 if arr.nbytes >= 65536 else 64
                    pad = -offset % align
                    if pad:
                        data.stream.write(b"\0" * pad)
                        offset += pad
                    data.stream.write(memoryview(arr.reshape(-1).view(np.uint8)))
                    t.data_location = TensorProto.EXTERNAL
                    for key, value in (("location", data_name), ("offset", str(offset)),
                                       ("length", str(arr.nbytes))):
                        entry = t.external_data.add()
                        entry.key, entry.value = key, value
                    offset += arr.nbytes
                data.finish()
            if model.ByteSize() > _PROTOBUF_LIMIT:
                raise LimitExceededError("the model without its large weights still exceeds protobuf's 2 GB limit")
            with AtomicFile(dst) as out:
                out.stream.write(model.SerializeToString())
                out.finish()
                if data is not None:
                    data.publish()  # fresh name: the old model still reads its own data file
                out.publish()  # the pointer last
        except BaseException:
            if data is not None:
                data.abort()
            raise
    _remove_old_sidecars(dst, data_name, src)


__all__ = [
    "save",
    "save_file",
    "load",
    "load_file",
    "read_model",
    "compress_file",
    "decompress_file",
    "structural_values",
    "STRUCTURAL_INPUTS",
    "EXTERNAL_DATA_THRESHOLD",
]
