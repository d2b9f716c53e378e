"""Real-world ONNX features found by ``tools/sweep_onnx_models.py``, each rebuilt small with ``onnx.helper``:
outputs that are NaN on synthetic inputs, masks of ``-inf`` or ``finfo.min`` stored as constants, models
without float outputs, weights in subgraphs that calibration cannot probe; plus a few of the models onnx
ships for its backend tests, round-tripped through ``rdc``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import rdformat  # noqa: E402
from rdformat.cli import main  # noqa: E402
from rdformat.producers import ratecontrol  # noqa: E402
from rdformat.producers.sensitivity import estimate_output_sensitivity, relative_output_error  # noqa: E402

L = 32  # sequence length of the attention models
D = 16  # their width


def _save(nodes: list, inits: list, inputs: list, outputs: list, path: Path) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _f32(rng: np.random.Generator, *shape: int, scale: float = 0.1) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _value(name: str, shape: list, dtype: int = TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def attention(path: Path, mask_value: float) -> Path:
    """``softmax(x Wq x^T + mask) x Wv`` with a causal mask of 0 and ``mask_value`` stored as an initializer
    (what exporters fold a causal mask into)."""
    rng = np.random.default_rng(0)
    mask = np.triu(np.full((L, L), mask_value, np.float32), 1)
    inits = [numpy_helper.from_array(_f32(rng, D, D), "wq"), numpy_helper.from_array(_f32(rng, D, D), "wv"),
             numpy_helper.from_array(mask, "mask")]
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]),
             helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "xt"], ["s"]),
             helper.make_node("Add", ["s", "mask"], ["sm"]),
             helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
             helper.make_node("MatMul", ["x", "wv"], ["v"]),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    return _save(nodes, inits, [_value("x", [1, L, D])], [_value("y", [1, L, D])], path)


def _run(path: Path, feed: dict) -> list:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _compress_lossy(src: Path, tmp_path: Path, capsys, *extra: str) -> tuple[Path, list[str]]:
    """``rdc compress SRC --bits 4`` then ``rdc decompress``: the restored model and the notice lines."""
    rdc, back = tmp_path / "m.rdc", tmp_path / "back.onnx"
    code = main(["compress", "--bits", "4", *extra, str(src), str(rdc)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert main(["decompress", "-q", str(rdc), str(back)]) == 0
    onnx.checker.check_model(str(back))
    return back, [line for line in out.splitlines() if line.startswith(("note:", "task-aware:"))]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L2 error of ``b`` against ``a`` (0 when both are zero)."""
    diff, norm = np.linalg.norm(a.astype(np.float64) - b), np.linalg.norm(a.astype(np.float64))
    return float(diff / norm) if norm else float(diff)


# ----------------------------------------------------------------------------------------------------
# Task-aware calibration on models whose outputs or weights are not all finite


def test_outputs_nan_on_synthetic_inputs_are_measured_where_finite(tmp_path, capsys):
    # Log of the input (a log-mel front end): standard-normal synthetic inputs make half the outputs NaN,
    # which made every sensitivity NaN and the whole compress fail.
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(_f32(rng, 64, 64), "w1"), numpy_helper.from_array(_f32(rng, 64, 64), "w2")]
    nodes = [helper.make_node("Log", ["x"], ["lx"]), helper.make_node("MatMul", ["lx", "w1"], ["h"]),
             helper.make_node("MatMul", ["x", "w2"], ["y2"])]
    src = _save(nodes, inits, [_value("x", [1, 64])], [_value("h", [1, 64]), _value("y2", [1, 64])],
                tmp_path / "log.onnx")
    back, notices = _compress_lossy(src, tmp_path, capsys)
    assert len(notices) == 1 and notices[0].startswith("task-aware: output sensitivity of 2 tensors")
    x = np.abs(rng.standard_normal((1, 64))).astype(np.float32) + 0.1
    for a, b in zip(_run(src, {"x": x}), _run(back, {"x": x})):
        assert a.shape == b.shape and a.dtype == b.dtype and _rel(a, b) < 0.3


def test_minus_inf_mask_is_not_probed_and_stays_exact(tmp_path, capsys):
    src = attention(tmp_path / "attn.onnx", -np.inf)
    back, notices = _compress_lossy(src, tmp_path, capsys)
    assert len(notices) == 1 and notices[0].startswith("task-aware: output sensitivity of 2 tensors")
    assert np.array_equal(_initializers(back)["mask"], _initializers(src)["mask"])
    x = np.random.default_rng(2).standard_normal((1, L, D)).astype(np.float32)
    (a,), (b,) = _run(src, {"x": x}), _run(back, {"x": x})
    assert np.isfinite(b).all() and _rel(a, b) < 0.3


@pytest.mark.parametrize("calibrate", [True, False])
def test_finfo_min_mask_leaves_the_other_weights_their_bits(tmp_path, capsys, calibrate):
    # A 0 / finfo.min mask set the finest step rate control searched (its range / 16000): every other
    # weight of the model rounded to zero (output error 1.0); with calibration, its noise overflowed
    # float32 and the estimate failed. Now the mask is measured as unmeasurable (the most sensitive)
    # and the search goes below that step when the bits target needs it.
    src = attention(tmp_path / "attn.onnx", float(np.finfo(np.float32).min))
    back, notices = _compress_lossy(src, tmp_path, capsys, *(() if calibrate else ("--no-calibrate",)))
    assert len(notices) == (1 if calibrate else 0)
    before, after = _initializers(src), _initializers(back)
    for name in ("wq", "wv"):
        assert _rel(before[name], after[name]) < 0.2, name
    x = np.random.default_rng(3).standard_normal((1, L, D)).astype(np.float32)
    (a,), (b,) = _run(src, {"x": x}), _run(back, {"x": x})
    assert _rel(a, b) < 0.2


def test_model_without_float_outputs_falls_back_with_one_notice(tmp_path, capsys):
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("ArgMax", ["h"], ["y"], axis=1)]
    src = _save(nodes, [numpy_helper.from_array(_f32(rng, 64, 10), "w")], [_value("x", [1, 64])],
                [_value("y", [1, 1], TensorProto.INT64)], tmp_path / "argmax.onnx")
    back, notices = _compress_lossy(src, tmp_path, capsys)
    assert len(notices) == 1 and notices[0].startswith("note:") and "weight error" in notices[0]
    x = rng.standard_normal((1, 64)).astype(np.float32)
    assert _run(back, {"x": x})[0].dtype == np.int64


def test_subgraph_weight_calibration_cannot_probe_gets_the_mean_sensitivity(tmp_path, capsys):
    # The If branch's weight is not probed (calibration sees the main graph only); it counted as
    # sensitivity 1.0 against measured figures of arbitrary scale, so one of the two got far coarser
    # steps than the other (8x the relative error here).
    rng = np.random.default_rng(5)
    branch = lambda name, body: helper.make_graph(  # noqa: E731
        body, name, [], [_value("o", [1, 64])],
        initializer=[numpy_helper.from_array(_f32(rng, 64, 64), "inner")] if name == "then" else [])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["x2"]),
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"],
                              then_branch=branch("then", [helper.make_node("MatMul", ["x", "inner"], ["o"])]),
                              else_branch=branch("else", [helper.make_node("Identity", ["x"], ["o"])]))]
    inits = [numpy_helper.from_array(_f32(rng, 64, 64), "w"), numpy_helper.from_array(np.array(0, np.float32), "zero")]
    src = _save(nodes, inits, [_value("x", [1, 64])], [_value("y", [1, 64]), _value("x2", [1, 64])],
                tmp_path / "if.onnx")
    rdc = tmp_path / "m.rdc"
    assert main(["compress", "-q", "--bits", "4", str(src), str(rdc)]) == 0
    assert main(["info", "--json", str(rdc)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["tensors"]}
    assert rows["w"]["sensitivity"] is not None  # measured, so the mix of measured and unmeasured is real
    assert rows["inner"]["sensitivity"] == rows["w"]["sensitivity"]  # what rdc info shows rate control used
    errors = rows["w"]["rel_error"], rows["inner"]["rel_error"]
    assert max(errors) / min(errors) < 2


def test_plan_counts_a_tensor_the_sensitivity_lacks_as_the_mean():
    rng = np.random.default_rng(6)
    tensors = {"a": _f32(rng, 64, 64, scale=1.0), "b": _f32(rng, 64, 64, scale=1.0)}
    partial = ratecontrol.plan(tensors, bits=4, sensitivity={"a": 1e-3}, method="sq")
    assert partial.steps["a"] == pytest.approx(partial.steps["b"])
    both = ratecontrol.plan(tensors, bits=4, sensitivity={"a": 1e-3, "b": 4e-3}, method="sq")
    assert both.steps["a"] == pytest.approx(2 * both.steps["b"], rel=1e-6)  # given values keep their ratio


@pytest.mark.parametrize("node", [
    helper.make_node("Constant", [], [], value=numpy_helper.from_array(np.array([3], np.int64), "c")),  # no output
    helper.make_node("OneHot", ["ids", "depth", "onoff"], ["oh"], axis=-1),  # its depth is an empty constant
], ids=["constant-without-output", "onehot-empty-depth"])
def test_malformed_graph_near_an_integer_input_falls_back_not_crashes(tmp_path, capsys, node):
    # Synthetic integer inputs look for their range (embedding size, one-hot depth) in the graph, which
    # nothing has checked yet: a node short of outputs or an empty depth raised a bare IndexError
    # ("rdc compress: internal error").
    rng = np.random.default_rng(9)
    inits = [numpy_helper.from_array(_f32(rng, 16, 8), "emb"), numpy_helper.from_array(np.zeros(0, np.int64), "depth"),
             numpy_helper.from_array(np.array([0, 1], np.float32), "onoff")]
    graph = helper.make_graph([node, helper.make_node("Gather", ["emb", "ids"], ["y"])], "bad",
                              [_value("ids", [1, 4], TensorProto.INT64)], [_value("y", [1, 4, 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = tmp_path / "bad.onnx"
    onnx.save(model, src)  # not checked: the checker rejects it, as onnxruntime will
    code = main(["compress", "--bits", "4", str(src), str(tmp_path / "bad.rdc")])
    out, err = capsys.readouterr()
    assert "internal error" not in err
    assert code == 0, err
    notices = [line for line in out.splitlines() if line.startswith(("note:", "task-aware:"))]
    assert len(notices) == 1 and notices[0].startswith("note:")


# ----------------------------------------------------------------------------------------------------
# The estimator and the error measure on non-finite outputs


def test_estimate_compares_outputs_where_the_reference_is_finite():
    rng = np.random.default_rng(7)
    weights = {"a": _f32(rng, 8, 8, scale=1.0), "b": _f32(rng, 8, 8, scale=1.0)}

    def run(overrides):
        w = {**weights, **overrides}
        out = np.concatenate([w["a"].sum(0), 3 * w["b"].sum(0)])
        out[:4] = np.nan  # e.g. log of a negative synthetic input
        return [out]

    sens = estimate_output_sensitivity(weights, run, ["a", "b"], rounds=4, group=1)
    assert all(np.isfinite(v) and v > 0 for v in sens.values())
    assert sens["b"] > sens["a"]


def test_estimate_gives_a_tensor_whose_noise_overflows_the_largest_figure():
    rng = np.random.default_rng(8)
    big = np.triu(np.full((8, 8), np.finfo(np.float32).min, np.float32), 1)
    weights = {"a": _f32(rng, 8, 8, scale=1.0), "b": _f32(rng, 8, 8, scale=1.0), "mask": big}

    def run(overrides):
        w = {**weights, **overrides}
        with np.errstate(over="ignore", invalid="ignore"):
            return [np.concatenate([w["a"].sum(0), 2 * w["b"].sum(0), np.exp(w["mask"]).sum(0)])]

    sens = estimate_output_sensitivity(weights, run, ["a", "b", "mask"], rounds=2, group=3)
    assert all(np.isfinite(v) for v in sens.values())
    assert sens["mask"] == max(sens.values()) and sens["b"] > sens["a"]


def test_relative_output_error_on_non_finite_outputs():
    ref = [np.array([1.0, np.nan, 2.0, np.inf])]
    assert relative_output_error(ref, [np.array([1.0, 5.0, 2.0, 0.0])]) == 0.0  # only finite positions count
    assert relative_output_error(ref, [np.array([1.0, np.nan, 2.5, np.inf])]) > 0
    assert relative_output_error(ref, [np.array([np.nan, np.nan, 2.0, np.inf])]) == np.inf  # a broken output


# ----------------------------------------------------------------------------------------------------
# Models onnx ships for its backend tests

_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
SHIPPED = ["pytorch-converted/test_Conv2d", "pytorch-converted/test_ConvTranspose2d",
           "pytorch-operator/test_operator_conv", "pytorch-converted/test_Embedding", "simple/test_sequence_model1"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_onnx_test_models_round_trip(tmp_path, capsys, name):
    folder = _DATA / name
    if not (folder / "model.onnx").exists():
        pytest.skip(f"{name} is not shipped with this onnx")
    src = folder / "model.onnx"
    model = onnx.load(str(src))
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    feed = {}
    for n, f in zip(names, sorted((folder / "test_data_set_0").glob("input_*.pb"))):
        t = onnx.TensorProto()
        t.ParseFromString(f.read_bytes())
        feed[n] = numpy_helper.to_array(t)
    rdc, back = tmp_path / "l.rdc", tmp_path / "back.onnx"
    assert main(["compress", "-q", str(src), str(rdc)]) == 0
    assert main(["decompress", "-q", str(rdc), str(back)]) == 0
    assert back.read_bytes() == src.read_bytes()
    assert main(["info", str(rdc)]) == 0
    lossy, _notices = _compress_lossy(src, tmp_path, capsys)
    if len(feed) == len(names):
        for a, b in zip(_run(src, feed), _run(lossy, feed)):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.shape == b.shape
            if a.dtype.kind == "f":
                assert _rel(a, b) < 0.3
    assert set(rdformat.load(str(tmp_path / "m.rdc"))) == set(rdformat.load(str(rdc)))
