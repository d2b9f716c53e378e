"""Run an ONNX model with onnxruntime to measure what its outputs feel: task-aware compression.

Encoder-side only (decoding never needs any of this). onnx and onnxruntime are imported inside the
functions, so importing this module costs nothing and works without them.

One :class:`OnnxProbe` holds ONE ``onnxruntime.InferenceSession`` in which the float initializers to
be probed are graph *inputs*: every perturbation of a weight is just a different feed, with no
re-serialisation or session rebuild per perturbation. It serves

* :func:`onnx_output_sensitivity`: per-initializer output sensitivity by noise injection
  (:func:`rdformat.producers.sensitivity.estimate_output_sensitivity`), to pass as
  ``rdformat.save(..., sensitivity=...)`` / ``codec={"bits": B, "sensitivity": ...}``;
* :func:`onnx_output_error`: the relative RMS change of the outputs when the initializers are
  replaced (e.g. by a compressed file's tensors), for a ``--max-output-error`` target.

Calibration inputs come, in order of preference, from the user (:func:`load_calibration`: an ``.npz``
keyed by input name or a folder of ``<input>.npy``), else are synthesised from the model's declared
input shapes and dtypes (:func:`synthetic_inputs`). Whatever stops the model from running (custom
ops, unknown shapes, a session that will not build) raises :class:`CalibrationUnavailable`, so a
caller can fall back to weight-error allocation with a one-line notice.

Tensor names are the initializer names, which is what ``rdformat.onnx`` calls the tensors it stores.

One module on purpose (over 500 lines): inputs (user or synthetic), the session with weights as
inputs, and the two measurements built on it share the model's declared shapes and the probe.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from .errors import CalibrationUnavailable, InvalidInputError
from .producers.channels import ChannelSensitivity
from .producers.ratecontrol import select_tensors
from .producers.sensitivity import (
    DEFAULT_GROUP,
    DEFAULT_NOISE,
    DEFAULT_REFINE_ITERATIONS,
    DEFAULT_ROUNDS,
    DEFAULT_CHANNEL_GROUP,
    DEFAULT_MAX_SLICES,
    default_probe_names,
    estimate_channel_profiles,
    budgeted_samples,
    estimate_output_sensitivity,
    refine_sensitivity,
    relative_output_error,
)

#: Calibration data: one feed ``{input name: array}`` or several (their outputs are concatenated).
Feeds = Union[Mapping[str, np.ndarray], Sequence[Mapping[str, np.ndarray]]]

#: Samples in a synthetic batch (a dynamic batch axis gets this size; a fixed batch of 1 gets this
#: many feeds). Four is what the measurements in issue 12 used: enough to average over inputs, cheap.
DEFAULT_SAMPLES = 4
#: Calibration samples the sensitivity estimate uses at most: every forward pass of the estimate
#: runs all of them, and a few inputs already average the model's response well (issue 12 used 4).
DEFAULT_MAX_SAMPLES = 16
#: Wall time the channel profiles of :meth:`OnnxProbe.output_sensitivity` may take (their slice count
#: follows from the time of one forward pass); the per-tensor estimate comes on top.
DEFAULT_CHANNEL_SECONDS = 20.0
#: Wall time the per-tensor estimate of :meth:`OnnxProbe.output_sensitivity` aims at: when its forward
#: passes over all calibration samples would take longer, it uses the first samples only (at least one,
#: then fewer noise rounds). PP-OCR's detector on 4 text images took 113 s; issue 12 allows 60 s for
#: the whole estimate (this, the channel profiles and the input covariances).
DEFAULT_TENSOR_SECONDS = 20.0
#: A softmax output whose rows' top probability averages this or more is probed on its logits.
SATURATED = 0.9
#: Size given to a dynamic non-batch axis (sequence length, image side) when nothing else is known.
DEFAULT_DYNAMIC_DIM = 64
#: Integer inputs of unknown range get values in [0, this).
DEFAULT_INT_RANGE = 2


# ONNX TensorProto data types -> numpy (the ones a session can be fed). Kept local: the values are
# part of the ONNX standard, and this keeps the module free of onnx at import time.
_ONNX_NP = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}
_FLOAT_TYPES = {1, 10, 11}  # float32, float16, float64: what onnxruntime accepts as fed weights


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise CalibrationUnavailable(f"{module} is not installed, so the model cannot be run for calibration") from exc


def _load_model(model_or_path: Any):
    """An ``onnx.ModelProto`` (with external data loaded) from a path or a ModelProto (copied), its main
    graph's float ``Constant`` weights turned into initializers (:func:`_constants_as_initializers`)."""
    onnx = _require("onnx")
    if isinstance(model_or_path, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(model_or_path)
        return _constants_as_initializers(model)
    try:
        model = onnx.load(os.fspath(model_or_path))
    except OSError:
        raise
    except Exception as exc:
        raise InvalidInputError(f"{model_or_path}: not a readable ONNX model: {exc}") from exc
    return _constants_as_initializers(model)


def _constants_as_initializers(model):
    """``model`` with every main-graph ``Constant`` node that holds a float tensor (``value``) replaced by
    an initializer named after the node's output, in place; returns it.

    Exporters such as paddle2onnx store every weight as a ``Constant`` node and none as an initializer;
    ``rdformat.onnx`` stores those tensors under the node's output name, so the probe must see them as
    weights under the same name, or such a model would get no sensitivity at all. The computation is
    unchanged (an initializer and a Constant define the same value)."""
    graph = model.graph
    keep, moved = [], []
    for node in graph.node:
        value = None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1 \
                and node.output[0] and len(node.attribute) == 1:
            attr = node.attribute[0]
            if attr.name == "value" and attr.type == attr.TENSOR and attr.t.data_type in _FLOAT_TYPES:
                value = attr.t
        if value is None:
            keep.append(node)
            continue
        tensor = type(value)()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        moved.append(tensor)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(moved)
    return model


# ----------------------------------------------------------------------------------------------------
# Calibration inputs


def load_calibration(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read calibration inputs: an ``.npz`` keyed by input name, or a folder of ``<input>.npy`` files.

    Arrays are stacked along the first axis when the model's batch is fixed (see :class:`OnnxProbe`);
    names and shapes are checked against the model when they are used.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise InvalidInputError(f"calibration folder {path} holds no .npy files (expected <input>.npy)")
        return {f.stem: np.load(f, allow_pickle=False) for f in files}
    if not path.exists():
        raise InvalidInputError(f"calibration file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"calibration file {path} is not a readable .npz: {_first_line(exc)}") from exc
    if isinstance(data, np.ndarray):
        raise InvalidInputError(f"calibration file {path} is a single array; use an .npz keyed by input name")
    with data:
        return {k: data[k] for k in data.files}


def _declared_inputs(model) -> list[tuple[str, int, list[int | str | None]]]:
    """(name, elem_type, dims) of the real graph inputs (not initializers listed as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise CalibrationUnavailable(f"input {vi.name!r} is not a tensor; only tensor inputs can be synthesised")
        if tt.HasField("shape"):
            dims: list[int | str | None] = []
            for d in tt.shape.dim:
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param") and d.dim_param:
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
        else:
            raise CalibrationUnavailable(f"input {vi.name!r} has no declared shape; give calibration inputs")
        out.append((vi.name, int(tt.elem_type), dims))
    return out


# Ops that pass integer indices through unchanged in value (so a vocabulary found behind them holds).
_PASS_THROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Transpose"}


def _index_range(model, input_name: str) -> int | None:
    """Exclusive upper bound of the values an integer input may take, if the graph says so.

    Follows the input through value-preserving ops to the first Gather on an initializer (an
    embedding table: its size along the gathered axis), OneHot (its depth) or Equal against an
    integer constant (a one-hot built by comparison: the constant's maximum + 1).

    A heuristic: whatever in the graph does not fit it (nodes short of inputs or outputs, constants
    that do not read as arrays; the model has not been checked yet) gives no range, never an error.
    """
    from onnx import numpy_helper

    def array(t) -> np.ndarray | None:
        try:
            return np.asarray(numpy_helper.to_array(t))
        except Exception:  # noqa: BLE001 - types or sizes numpy_helper cannot read: no range from it
            return None

    inits = {t.name: t for t in model.graph.initializer}
    consts = {}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0]:
            for a in node.attribute:
                if a.name == "value" and a.type == a.TENSOR:
                    consts[node.output[0]] = a.t
    consts.update(inits)
    frontier, seen = [input_name], set()
    for _depth in range(6):
        nxt = []
        for value in frontier:
            if value in seen:
                continue
            seen.add(value)
            for node in model.graph.node:
                if value not in node.input:
                    continue
                if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == value and node.input[0] in inits:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    dims = list(inits[node.input[0]].dims)
                    if dims:
                        return int(dims[axis % len(dims)])
                if node.op_type == "OneHot" and len(node.input) > 1 and node.input[0] == value \
                        and node.input[1] in consts:
                    depth = array(consts[node.input[1]])
                    if depth is not None and depth.size and depth.dtype.kind in "iuf" and np.isfinite(depth).all():
                        return int(depth.reshape(-1)[0])
                if node.op_type == "Equal" and len(node.input) == 2:
                    other = node.input[1] if node.input[0] == value else node.input[0]
                    if other in consts:
                        arr = array(consts[other])
                        if arr is not None and arr.size and arr.dtype.kind in "iu":
                            return int(arr.max()) + 1
                if node.op_type in _PASS_THROUGH and node.input[0] == value:
                    nxt.extend(node.output)
        frontier = nxt
    return None


def synthetic_inputs(
    model_or_path: Any,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Inputs built from the model's declared input shapes and dtypes (no data needed).

    Dynamic axes: the first (batch) axis gets ``samples`` (a fixed batch gives ``samples`` feeds
    instead), others :data:`DEFAULT_DYNAMIC_DIM`; axes sharing a symbolic name get one value;
    ``input_shapes={"name": (1, 3, 224, 224)}`` sets an input's whole shape. Floats are standard
    normal; integer inputs get values within the embedding's range (see :func:`_index_range`), masks
    ones, token-type ids zeros.

    Raises:
        InvalidInputError: ``input_shapes`` names something that is not an input, or has the wrong rank.
        CalibrationUnavailable: an input whose type cannot be synthesised (strings, sequences...).
    """
    model = _load_model(model_or_path)
    declared = _declared_inputs(model)
    shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    known = {name for name, _t, _d in declared}
    for name, shape in shapes.items():
        if name not in known:
            raise InvalidInputError(f"input shape given for {name!r}, which is not an input of the model "
                                    f"(inputs: {', '.join(sorted(known))})")
    rng = np.random.default_rng(seed)
    symbols: dict[str, int] = {}
    fixed_batch = False
    plans = []
    for name, elem, dims in declared:
        if elem not in _ONNX_NP:
            raise CalibrationUnavailable(f"input {name!r} has ONNX type {elem}, which cannot be synthesised; "
                                         "give calibration inputs")
        if name in shapes:
            shape = shapes[name]
            if len(shape) != len(dims):
                raise InvalidInputError(f"input shape for {name!r} has {len(shape)} axes, the model declares {len(dims)}")
            for i, d in enumerate(dims):
                if isinstance(d, str):
                    symbols.setdefault(d, shape[i])
        plans.append((name, elem, dims))
    # Resolve symbolic axes: user-given shapes first (above), then batch axes, then the rest.
    for name, _elem, dims in plans:
        if name in shapes:
            continue
        for i, d in enumerate(dims):
            if isinstance(d, str) and d not in symbols:
                symbols[d] = samples if i == 0 else DEFAULT_DYNAMIC_DIM
    feeds_one: dict[str, np.ndarray] = {}
    for name, elem, dims in plans:
        if name in shapes:
            shape = shapes[name]
        else:
            shape = []
            for i, d in enumerate(dims):
                if isinstance(d, int):
                    shape.append(d)
                elif isinstance(d, str):
                    shape.append(symbols[d])
                else:
                    shape.append(samples if i == 0 else DEFAULT_DYNAMIC_DIM)
            shape = tuple(shape)
            if dims and isinstance(dims[0], int):
                fixed_batch = True
        feeds_one[name] = _synthesise(model, name, elem, shape, rng)
    if not fixed_batch:
        return [feeds_one]
    # A fixed batch axis (often 1): several feeds, so the estimate still averages over inputs.
    feeds = [feeds_one]
    for _ in range(samples - 1):
        feeds.append({name: _synthesise(model, name, elem, feeds_one[name].shape, rng) for name, elem, _d in plans})
    return feeds


def _synthesise(model, name: str, elem: int, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(_ONNX_NP[elem])
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return np.ones(shape, dtype)
    lowered = name.lower()
    if "mask" in lowered:
        return np.ones(shape, dtype)
    if "token_type" in lowered or "segment" in lowered:
        return np.zeros(shape, dtype)
    if "position" in lowered and len(shape) >= 1:
        return np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
    high = min(_index_range(model, name) or DEFAULT_INT_RANGE, int(np.iinfo(dtype).max) + 1)
    return rng.integers(0, max(high, 1), size=shape).astype(dtype)


def _check_feeds(model, inputs: Feeds) -> list[dict[str, np.ndarray]]:
    """User calibration inputs as a list of feeds, checked against the declared inputs.

    A fixed batch axis of 1 with an array of N samples is split into N feeds. Every problem is one
    :class:`InvalidInputError` line that names the input.
    """
    declared = {name: (elem, dims) for name, elem, dims in _declared_inputs(model)}
    feeds_in = [inputs] if isinstance(inputs, Mapping) else list(inputs)
    if not feeds_in:
        raise InvalidInputError("no calibration inputs given")
    out: list[dict[str, np.ndarray]] = []
    for feed in feeds_in:
        for name in feed:
            if name not in declared:
                raise InvalidInputError(f"calibration input {name!r} is not an input of the model "
                                        f"(inputs: {', '.join(sorted(declared))})")
        missing = [n for n in declared if n not in feed]
        if missing:
            raise InvalidInputError(f"calibration inputs lack model input {missing[0]!r} "
                                    f"(given: {', '.join(sorted(feed))})")
        checked: dict[str, np.ndarray] = {}
        split = None
        for name, (elem, dims) in declared.items():
            arr = np.asarray(feed[name])
            want = np.dtype(_ONNX_NP.get(elem, np.float32))
            if arr.dtype != want:
                if (arr.dtype.kind == "f") != (want.kind == "f"):
                    raise InvalidInputError(f"calibration input {name!r} is {arr.dtype}, the model expects {want}")
                arr = arr.astype(want)
            if arr.ndim != len(dims):
                raise InvalidInputError(f"calibration input {name!r} has shape {tuple(arr.shape)}, the model expects "
                                        f"{len(dims)} axes {_shape_text(dims)}")
            for i, d in enumerate(dims):
                if isinstance(d, int) and arr.shape[i] != d:
                    if i == 0 and d == 1 and arr.shape[0] > 1:
                        split = arr.shape[0] if split is None else split
                        if split != arr.shape[0]:
                            raise InvalidInputError(f"calibration input {name!r} has {arr.shape[0]} samples, "
                                                    f"others {split}")
                        continue
                    raise InvalidInputError(f"calibration input {name!r} has shape {tuple(arr.shape)}, the model "
                                            f"expects {_shape_text(dims)}")
            checked[name] = arr
        if split:
            for i in range(split):
                out.append({n: (a[i:i + 1] if declared[n][1] and declared[n][1][0] == 1 else a)
                            for n, a in checked.items()})
        else:
            out.append(checked)
    return out


def _feed_samples(feed: Mapping[str, np.ndarray]) -> int:
    """Samples in one feed, as :func:`_limit_samples` counts them."""
    firsts = {a.shape[0] if a.ndim else 1 for a in feed.values()}
    return firsts.pop() if len(firsts) == 1 else 1


def _limit_samples(feeds: list[dict[str, np.ndarray]], max_samples: int) -> list[dict[str, np.ndarray]]:
    """The first ``max_samples`` samples of ``feeds`` (counted along the first axis of each feed,
    which the inputs of one feed share; feeds whose inputs disagree there count as one sample)."""
    out, left = [], max(int(max_samples), 1)
    for feed in feeds:
        if left <= 0:
            break
        n = _feed_samples(feed)
        if n > left:
            feed = {k: a[:left] for k, a in feed.items()}
            n = left
        out.append(feed)
        left -= n
    return out


def _shape_text(dims: Sequence[int | str | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


# ----------------------------------------------------------------------------------------------------
# The probe: one session, weights as inputs


class OnnxProbe:
    """One onnxruntime session of a model whose probed float initializers are graph inputs.

    ``run(overrides)`` runs the model on every calibration feed with the named initializers replaced
    and returns the outputs concatenated over feeds (one array per output). Build it once and reuse
    it for sensitivity estimation and for any number of output-error checks.

    Attributes:
        weights: the probed initializers by name (numpy arrays, the model's own values).
        feeds: the calibration feeds in use (user-given or synthetic).
        synthetic: True if the feeds were synthesised from declared shapes.
        reference: the original model's outputs on the feeds.
    """

    def __init__(
        self,
        model_or_path: Any,
        inputs: Feeds | None = None,
        *,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        names: Sequence[str] | None = None,
        samples: int = DEFAULT_SAMPLES,
        seed: int = 0,
        threads: int | None = None,
        max_samples: int | None = None,
    ) -> None:
        onnx = _require("onnx")
        from onnx import numpy_helper

        model = _load_model(model_or_path)
        if inputs is not None:
            self.feeds = _check_feeds(model, inputs)
            if max_samples is not None:
                self.feeds = _limit_samples(self.feeds, max_samples)
            self.synthetic = False
        else:
            self.feeds = synthetic_inputs(model, input_shapes=input_shapes, samples=samples, seed=seed)
            self.synthetic = True
        graph = model.graph
        candidates = {t.name: t for t in graph.initializer if t.data_type in _FLOAT_TYPES}
        if names is None:
            probe = [n for n in candidates]
        else:
            probe = list(names)
            for n in probe:
                if n not in candidates:
                    raise InvalidInputError(f"{n!r} is not a float initializer of the model's main graph")
        self.weights: dict[str, np.ndarray] = {n: numpy_helper.to_array(candidates[n]) for n in probe}
        # Move the probed initializers into the graph's inputs (IR < 4 already lists them there).
        listed = {vi.name for vi in graph.input}
        keep = [t for t in graph.initializer if t.name not in self.weights]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        for n, arr in self.weights.items():
            if n not in listed:
                graph.input.append(onnx.helper.make_tensor_value_info(n, candidates[n].data_type, list(arr.shape)))
        # The logits of softmax outputs are session outputs too: a saturated softmax is probed on them
        # (see _probed). The outputs themselves stay what ``reference``/``output_error`` report.
        real = [o.name for o in graph.output]
        opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        softmax_input = _softmax_logits(graph, opset)
        names = list(real)  # session outputs: the real ones, then the logits they lack
        self._probed_outputs = list(range(len(real)))  # per real output: the session output probed
        self._class_axes: dict[int, int] = {}  # per probed logits output: its class axis
        for i, declared in enumerate(list(graph.output)):
            found = softmax_input.get(declared.name)
            if not found:
                continue
            src, self._class_axes[i] = found
            if src not in names:
                names.append(src)
                info = onnx.ValueInfoProto()
                info.CopyFrom(declared)  # a softmax keeps its input's type and shape
                info.name = src
                graph.output.append(info)
            self._probed_outputs[i] = names.index(src)
        self._session = self._make_session(model, threads)
        self._output_names = names
        self._real_outputs = len(real)
        start = time.perf_counter()
        outputs = self._run_all({})
        #: wall time of one forward pass over all feeds (what the estimators' budgets are planned with)
        self.pass_seconds = max(time.perf_counter() - start, 1e-6)
        self.reference = outputs[:self._real_outputs]
        self._all_reference = outputs

    @staticmethod
    def _make_session(model, threads: int | None):
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        # The probed weights are inputs now, so nothing can fold them; basic optimisations stay on
        # for speed. Errors are kept quiet: a failure becomes one CalibrationUnavailable line.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # custom op domains, invalid graphs, unsupported opsets...
            raise CalibrationUnavailable(f"onnxruntime cannot run the model: {_first_line(exc)}") from exc

    def run(self, overrides: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs on all feeds (concatenated along axis 0 when there are several) with ``overrides``."""
        return self._run_all(overrides)[:self._real_outputs]

    def _run_all(self, overrides: Mapping[str, np.ndarray],
                 feeds: Sequence[Mapping[str, np.ndarray]] | None = None) -> list[np.ndarray]:
        per_feed = []
        for feed in self.feeds if feeds is None else feeds:
            full = dict(feed)
            full.update(self.weights)
            full.update(overrides)
            try:
                per_feed.append(self._session.run(self._output_names, full))
            except Exception as exc:  # shape errors from synthetic inputs, ops failing at run time
                raise CalibrationUnavailable(f"onnxruntime fails to run the model on the calibration inputs: "
                                             f"{_first_line(exc)}") from exc
        if len(per_feed) == 1:
            return [np.asarray(o) for o in per_feed[0]]
        outs = []
        for i in range(len(per_feed[0])):
            parts = [np.asarray(p[i]) for p in per_feed]
            outs.append(np.concatenate([p.reshape(1, *p.shape) if p.ndim == 0 else p for p in parts], axis=0))
        return outs

    def output_sensitivity(self, names: Sequence[str] | None = None, *, noise: float = DEFAULT_NOISE, seed: int = 0,
                           rounds: int = DEFAULT_ROUNDS, group: int = DEFAULT_GROUP, channels: bool | None = None,
                           max_slices: int = DEFAULT_MAX_SLICES,
                           channel_seconds: float = DEFAULT_CHANNEL_SECONDS,
                           seconds: float | None = DEFAULT_TENSOR_SECONDS) -> dict[str, Any]:
        """Per-initializer output sensitivity; see :func:`onnx_output_sensitivity`."""
        if names is None:
            names = default_probe_names(self.weights)
        feeds, rounds = self._budgeted_feeds(len(names), rounds, group, seconds)
        raw = self._all_reference if feeds is self.feeds else self._run_all({}, feeds)
        decide = self._probed(raw)
        reference = decide(raw)

        def run(overrides: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            return decide(self._run_all(overrides, feeds))

        result: dict[str, Any] = estimate_output_sensitivity(self.weights, run, names, noise=noise,
                                                             seed=seed, rounds=rounds, group=group,
                                                             reference=reference)
        if channels is None:
            # Which channels matter depends on what the inputs look like (which ones are active at all):
            # profiles measured on synthetic noise inputs misled rate control on MTCNN (+15% bytes at
            # equal output error), per-tensor figures did not. Real calibration inputs turn them on.
            channels = not self.synthetic
        if channels:
            # About one forward pass per slice: a slow model gets fewer (coarser) slices, so the profile
            # costs at most ``channel_seconds`` (a model too slow for a few dozen passes gets none).
            start = time.perf_counter()
            run({})
            per_pass = max(time.perf_counter() - start, 1e-4)
            affordable = int(channel_seconds / per_pass * DEFAULT_CHANNEL_GROUP / 16)
            slices = min(max_slices, affordable)
            profiles = {} if slices < 16 else estimate_channel_profiles(
                self.weights, run, list(result), noise=noise, seed=seed, max_slices=slices,
                reference=reference, seconds=channel_seconds)
            for n, (axis0, axis1) in profiles.items():
                result[n] = ChannelSensitivity(result[n], axis0, axis1)
        return result

    def _probed(self, reference: list[np.ndarray]):
        """``session outputs -> what sensitivity is measured on``, planned on the ``reference`` outputs.

        Each real output as it is, except a softmax that the reference shows saturated (its rows' top
        probability averages ``SATURATED`` or more): a confident softmax barely moves under the small
        probing noise (its Jacobian vanishes), so its weights looked free, while the much larger error
        of a coarse quantizer does flip its decisions; PP-OCR's 6625-class recogniser head got 1.2
        bits/weight and garbage text with real calibration crops (agreement 0.05 at 4 bits). Such an
        output is measured on its logits instead, all of them, less their mean per row (a shift common
        to all changes no decision). Only the reference's top few logits would not do: the head's rows
        of every other class then look free, and their coarse errors lift some class above the right
        one (PP-OCR: agreement 0.0 at 3 bits/weight on the top 5, 0.93 on all). An unsaturated softmax
        (synthetic inputs usually leave a classifier unsure) is measured as it is: there its
        probabilities are informative, and its logits overstated the head (PP-OCR on synthetic inputs:
        0.65 agreement at 3.5 bits/weight on the logits, 0.93 on the probabilities).
        """
        chosen: dict[int, tuple[int, int]] = {}  # real output -> (session output of its logits, class axis)
        for i, axis in self._class_axes.items():
            probs, logits = np.asarray(reference[i]), np.asarray(reference[self._probed_outputs[i]])
            if probs.ndim == 0 or probs.dtype.kind != "f" or logits.shape != probs.shape:
                continue
            ax = axis % probs.ndim if -probs.ndim <= axis < probs.ndim else probs.ndim - 1
            if not probs.size or float(np.mean(np.max(probs, axis=ax))) < SATURATED:
                continue
            chosen[i] = (self._probed_outputs[i], ax)

        def select(outputs: list[np.ndarray]) -> list[np.ndarray]:
            out = list(outputs[:self._real_outputs])
            for i, (source, ax) in chosen.items():
                z = np.asarray(outputs[source], dtype=np.float64)
                out[i] = z - z.mean(axis=ax, keepdims=True)
            return out

        return select

    def _budgeted_feeds(self, tensors: int, rounds: int, group: int,
                        seconds: float | None) -> tuple[list[dict[str, np.ndarray]], int]:
        """The feeds (first samples) and noise rounds whose per-tensor estimate fits in ``seconds``,
        planned from the timed reference pass (:func:`budgeted_samples`)."""
        total = sum(_feed_samples(f) for f in self.feeds)
        keep, rounds = budgeted_samples(tensors, total, self.pass_seconds, seconds, rounds=rounds, group=group)
        return (self.feeds if keep >= total else _limit_samples(self.feeds, keep)), rounds

    def refine_sensitivity(self, sensitivity: Mapping[str, float], *, iterations: int = DEFAULT_REFINE_ITERATIONS,
                           method: str = "auto", **target: float) -> dict[str, float]:
        """``sensitivity`` re-measured with the real quantization error of ``target`` (``bits=``,
        ``rel_error=`` or ``size=``) on this probe's inputs; see
        :func:`rdformat.producers.sensitivity.refine_sensitivity`. One forward pass per quantized tensor
        and iteration, plus one quantization of the model per iteration.
        """
        lossy, _fine = select_tensors(self.weights)
        return refine_sensitivity(self.weights, sensitivity, lambda o: self.output_error(o) ** 2, lossy=lossy,
                                  iterations=iterations, method=method, **target)

    def output_error(self, tensors: Mapping[str, np.ndarray]) -> float:
        """Relative RMS output change with the probed initializers replaced by ``tensors`` (by name).

        Names in ``tensors`` that are not probed initializers are ignored (e.g. integer tensors a
        decoded file also holds); shapes must match.
        """
        overrides = {}
        for name, arr in tensors.items():
            if name in self.weights:
                want = self.weights[name]
                arr = np.asarray(arr)
                if arr.shape != want.shape:
                    raise InvalidInputError(f"tensor {name!r} has shape {arr.shape}, the model's is {want.shape}")
                overrides[name] = arr.astype(want.dtype, copy=False)
        return relative_output_error(self.reference, self.run(overrides))


def _softmax_logits(graph, opset: int = 13) -> dict[str, tuple[str, int]]:
    """``{softmax output: (its logits, class axis)}`` for the graph's Softmax nodes and spelled-out
    softmaxes.

    Exporters such as jax2tf write a softmax as ``Div(Exp(z), <ReduceSum of that Exp>)`` (magika's
    classifier head); ``z`` (the logits less their maximum) then stands for the logits, classes on the
    last axis.
    """
    std = ("", "ai.onnx")
    found = {}
    for n in graph.node:
        if n.op_type == "Softmax" and n.domain in std and n.input and n.output and n.input[0]:
            axis = next((int(a.i) for a in n.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
            found[n.output[0]] = (n.input[0], axis)
    producer = {o: n for n in graph.node for o in n.output if o}
    summed = {i for n in graph.node if n.op_type == "ReduceSum" and n.domain in std for i in n.input[:1]}
    for n in graph.node:
        if n.op_type != "Div" or n.domain not in std or len(n.input) != 2 or not n.output:
            continue
        exp = producer.get(n.input[0])
        if exp is not None and exp.op_type == "Exp" and exp.domain in std and exp.input and exp.input[0] \
                and n.input[0] in summed:
            found.setdefault(n.output[0], (exp.input[0], -1))
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else text
    return line if len(line) <= 300 else line[:297] + "..."


# ----------------------------------------------------------------------------------------------------
# Functions


def onnx_output_sensitivity(
    model_or_path: Any,
    inputs: Feeds | None = None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    noise: float = DEFAULT_NOISE,
    rounds: int = DEFAULT_ROUNDS,
    group: int = DEFAULT_GROUP,
    samples: int = DEFAULT_SAMPLES,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    channels: bool | None = None,
    max_slices: int = DEFAULT_MAX_SLICES,
    channel_seconds: float = DEFAULT_CHANNEL_SECONDS,
    seconds: float | None = DEFAULT_TENSOR_SECONDS,
) -> dict[str, Any]:
    """Per-initializer output sensitivity of an ONNX model, keyed by initializer name.

    Args:
        model_or_path: an ``.onnx`` path or an ``onnx.ModelProto`` (not modified).
        inputs: calibration feeds (:func:`load_calibration`'s result, or a list of feeds); None
            synthesises them from the declared shapes (``input_shapes`` overrides those).
        names: initializers to probe; default: the float ones with two or more dimensions and 16 or
            more elements (those rate control quantises).
        seed, noise, rounds, group: see :func:`rdformat.producers.sensitivity.estimate_output_sensitivity`.
        samples: synthetic batch size (or feed count for a fixed batch).
        max_samples: calibration samples used at most (the first ones; None: all). Every forward
            pass of the estimate runs all of them, so this bounds its cost.
        channels: also measure each probed initializer's profile along axes 0 and 1 (default: when
            the inputs are real calibration inputs, not synthetic ones)
            (:func:`rdformat.producers.sensitivity.estimate_channel_profiles`, about one forward pass
            per slice, at most ``max_slices`` and as many as ``channel_seconds`` of forward passes
            allow); such initializers map to a ``ChannelSensitivity``, which gives their channels
            their own steps.
        seconds: wall time the per-tensor estimate aims at (None: no limit); when its forward passes
            over all samples would take longer, only the first samples are used (planned from one
            timed pass; then fewer ``rounds``). The channel profiles run on the same samples.

    Returns:
        ``{initializer name: sensitivity}``, ready for ``rdformat.save(..., sensitivity=...)``.

    Raises:
        CalibrationUnavailable: the model cannot be run here; fall back to weight-error allocation.
        InvalidInputError: calibration inputs or shapes that do not fit the model (one line).
    """
    probe = OnnxProbe(model_or_path, inputs, input_shapes=input_shapes, names=None if names is None else names,
                      samples=samples, seed=seed, max_samples=max_samples)
    return probe.output_sensitivity(names, noise=noise, seed=seed, rounds=rounds, group=group, channels=channels,
                                    max_slices=max_slices, channel_seconds=channel_seconds, seconds=seconds)


def onnx_output_error(
    model_or_path: Any,
    tensors: Mapping[str, np.ndarray],
    inputs: Feeds | None = None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    samples: int = DEFAULT_SAMPLES,
) -> float:
    """Relative RMS change of the model's outputs when its initializers are replaced by ``tensors``.

    ``sqrt(mean_o ||y'_o - y_o||^2 / ||y_o||^2)`` over the float outputs, on the calibration inputs
    (synthetic ones when ``inputs`` is None, as for :func:`onnx_output_sensitivity`). ``tensors`` is
    keyed by initializer name, e.g. ``rdformat.load("model.rdc")``.
    """
    model = _load_model(model_or_path)
    wanted = {t.name for t in model.graph.initializer if t.data_type in _FLOAT_TYPES and t.name in tensors}
    probe = OnnxProbe(model, inputs, input_shapes=input_shapes, names=sorted(wanted), samples=samples, seed=seed)
    return probe.output_error(tensors)


# ----------------------------------------------------------------------------------------------------
# Input covariances (error compensation)

#: Input rows (patches, tokens) per layer and feed kept for a covariance, sampled (bounds time and memory).
DEFAULT_COVARIANCE_ROWS = 1 << 14


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _compensable(graph, floats: Mapping[str, Any]) -> list[tuple[str, str, str, dict]]:
    """``(weight, activation, op, attributes)`` of the MatMul / Gemm / Conv nodes whose weight is a
    float initializer and whose activation is not (the layers error compensation understands), and
    whose input width is at most ``MAX_DIM``."""
    from .producers.compensate import MAX_DIM

    found = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        act, w = node.input[0], node.input[1]
        if w not in floats or act in floats or not act:
            continue
        shape = list(floats[w].dims)
        attrs = _attrs(node)
        if node.op_type in ("MatMul", "Gemm") and len(shape) == 2:
            width = shape[1] if node.op_type == "Gemm" and attrs.get("transB", 0) else shape[0]
        elif node.op_type == "Conv" and len(shape) in (3, 4) and _auto_pad(attrs) in AUTO_PADS:
            width = int(np.prod(shape[1:]))
        else:
            continue
        if width <= MAX_DIM:  # a wider layer's covariance would take width**2 * 8 bytes
            found.append((w, act, node.op_type, attrs))
    return found


#: Conv ``auto_pad`` values :func:`_conv_rows` follows.
AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


def _auto_pad(attrs: Mapping[str, Any]) -> str:
    auto = attrs.get("auto_pad", b"NOTSET")
    return auto.decode() if isinstance(auto, bytes) else str(auto)


def _conv_row_count(wshape: Sequence[int], max_rows: int) -> int:
    """Patches sampled per feed for a Conv weight: ``max_rows``, or fewer for small per-group inputs.

    A depthwise layer's 5x5 patches need far fewer rows than ``max_rows`` for a good 25x25
    covariance, while the gathered (groups, rows, 25) block of a 480-channel layer at 16384 rows is
    1.5 GB and most of PP-OCR's covariance time; 128 rows per input dimension (at least 4096) keep
    the estimate well conditioned.
    """
    d = int(np.prod([int(v) for v in wshape[1:]]))
    return int(min(max_rows, max(4096, 128 * d)))


def _conv_rows(x: np.ndarray, wshape: tuple[int, ...], attrs: Mapping[str, Any], rows: int,
               rng: np.random.Generator) -> np.ndarray:
    """Input patches of an ONNX Conv, ``(groups, sampled positions, C/groups * kernel size)``, ordered
    like the weight's trailing axes."""
    if x.ndim != len(wshape) or x.ndim not in (3, 4):
        raise InvalidInputError(f"Conv input of rank {x.ndim} for a weight of rank {len(wshape)}")
    one_d = x.ndim == 3
    if one_d:
        x = x[..., None]
    k = list(wshape[2:]) + ([1] if one_d else [])
    strides = list(attrs.get("strides", [1] * (len(k) - one_d))) + ([1] if one_d else [])
    dil = list(attrs.get("dilations", [1] * (len(k) - one_d))) + ([1] if one_d else [])
    if len(strides) != 2 or len(dil) != 2 or min(strides + dil + k) < 1:
        raise InvalidInputError(f"Conv attributes strides={strides} dilations={dil} kernel={k} are not usable here")
    ext = [(k[i] - 1) * dil[i] + 1 for i in range(2)]
    auto = _auto_pad(attrs)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            size = x.shape[2 + i]
            total = max((-(-size // strides[i]) - 1) * strides[i] + ext[i] - size, 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[2 + i] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    else:
        p = list(attrs.get("pads", [0] * (2 * (len(k) - one_d))))
        pads = [p[0], 0, p[1], 0] if one_d else p
    if len(pads) != 4 or min(pads) < 0:
        raise InvalidInputError(f"Conv pads {pads} are not usable here")
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = np.lib.stride_tricks.sliding_window_view(xp, ext, axis=(2, 3))[:, :, ::strides[0], ::strides[1], ::dil[0], ::dil[1]]
    n, c, oh, ow = win.shape[:4]
    total = n * oh * ow
    pick = np.sort(rng.choice(total, rows, replace=False)) if total > rows else np.arange(total)
    i_n, rest = np.divmod(pick, oh * ow)
    i_h, i_w = np.divmod(rest, ow)
    patches = win[i_n, :, i_h, i_w]  # (rows, C, kh, kw)
    g = int(attrs.get("group", 1))
    # padded and gathered in the activation's own dtype: only the sampled patches are widened
    return patches.reshape(len(pick), g, -1).transpose(1, 0, 2).astype(np.float64)


def onnx_input_covariances(
    model_or_path: Any,
    inputs: Feeds,
    *,
    max_rows: int = DEFAULT_COVARIANCE_ROWS,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Second moments of the inputs of every MatMul, Gemm and Conv (1-D/2-D) weight of an ONNX model on
    real calibration ``inputs``, keyed by initializer name: what error-compensating quantization
    (:mod:`rdformat.producers.compensate`, ``rdformat.Lossy(covariance=...)``) needs.

    One forward pass per feed, with the layers' inputs exposed as extra outputs. Weights used by
    several layers of different shapes, and layers whose input is not floating point, are left out.

    Raises:
        CalibrationUnavailable: the model cannot be run here.
        InvalidInputError: calibration inputs that do not fit the model (one line).
    """
    onnx = _require("onnx")
    from .producers.compensate import CovarianceSums

    model = _load_model(model_or_path)
    feeds = _check_feeds(model, inputs)
    graph = model.graph
    floats = {t.name: t for t in graph.initializer if t.data_type in _FLOAT_TYPES}
    layers = _compensable(graph, floats)
    if not layers:
        return {}
    outputs = {o.name for o in graph.output}
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
        types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.value_info) + list(inferred.input)}
    except Exception:  # shape inference is a convenience: unknown types are assumed float
        types = {}
    acts = []
    for _w, act, _op, _a in layers:
        if act not in outputs and act not in acts and types.get(act, 1) in _FLOAT_TYPES:
            acts.append(act)
            graph.output.append(onnx.helper.make_tensor_value_info(act, types.get(act, 1), None))
    session = OnnxProbe._make_session(model, threads)
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    sums = CovarianceSums(max_rows, rng)
    for feed in feeds:
        try:
            values = dict(zip(names, session.run(names, feed)))
        except Exception as exc:
            raise CalibrationUnavailable(f"onnxruntime fails to run the model on the calibration inputs: "
                                         f"{_first_line(exc)}") from exc
        for w, act, op, attrs in layers:
            x = values.get(act)
            if x is None or np.asarray(x).dtype.kind != "f":
                continue
            x = np.asarray(x)
            if op == "Conv":
                try:  # positions sampled before the patches are materialised
                    rows = _conv_rows(x, tuple(floats[w].dims), attrs, _conv_row_count(floats[w].dims, max_rows), rng)
                except (ValueError, IndexError, TypeError, InvalidInputError):
                    # attributes this reading of Conv does not follow: that layer is simply not compensated
                    sums.dropped.add(w)
                    continue
                sums.add(w, rows, "out_in")
            else:
                x = x.astype(np.float64)
                if op == "Gemm" and int(attrs.get("transA", 0)):
                    x = x.T
                rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
                sums.add(w, rows[None], "out_in" if op == "Gemm" and int(attrs.get("transB", 0)) else "in_out")
    out = {}
    for w, cov in sums.covariances().items():
        try:
            cov.rows(tuple(floats[w].dims))
        except InvalidInputError:
            continue
        out[w] = cov
    return out


__all__ = [
    "onnx_input_covariances",
    "CalibrationUnavailable",
    "OnnxProbe",
    "load_calibration",
    "synthetic_inputs",
    "onnx_output_sensitivity",
    "onnx_output_error",
]
