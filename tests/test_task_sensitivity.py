"""Task-aware compression: output sensitivity by noise injection (issue 12)."""

from __future__ import annotations

import io

import numpy as np
import pytest

import rdformat
import rdformat.onnx
from rdformat.producers.sensitivity import (
    estimate_output_sensitivity,
    forward_passes,
    predicted_output_error,
    quantization_sensitivity,
    refine_sensitivity,
    relative_output_error,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import rdformat.onnx_calibration as calibration  # noqa: E402
from rdformat.onnx_calibration import (  # noqa: E402
    CalibrationUnavailable,
    OnnxProbe,
    load_calibration,
    onnx_output_error,
    onnx_output_sensitivity,
    synthetic_inputs,
)


def _model(nodes, inputs, outputs, inits, *, check=True, opsets=(("", 17),)):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    if check:
        onnx.checker.check_model(model)
    return model


def _fragile_mlp():
    """x -> W1 -> relu -> Wf -> W3: Wf is 100x smaller than its peers and W3 100x larger to compensate,
    so the same absolute weight error in Wf hurts the outputs 100x more (in amplitude)."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 128)) / np.sqrt(8)).astype(np.float32)
    wf = (rng.standard_normal((128, 128)) / np.sqrt(128) * 0.01).astype(np.float32)
    w3 = (rng.standard_normal((128, 16)) / np.sqrt(128) * 100).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "wf"], ["f"]), helper.make_node("MatMul", ["f", "w3"], ["y"])]
    inits = [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("wf", wf), ("w3", w3))]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], inits)


def test_core_estimator_is_seeded_and_predicts_the_output_error():
    rng = np.random.default_rng(1)
    weights = {"a": rng.standard_normal((16, 8)), "b": rng.standard_normal((4, 16)), "c": rng.standard_normal((16, 8))}
    x = rng.standard_normal((8, 32))

    def run(overrides):
        w = {**weights, **overrides}
        return [w["b"] @ np.tanh(0.3 * w["a"] @ x + 0.01 * w["c"] @ x)]

    calls = []
    counted = lambda ov: (calls.append(1), run(ov))[1]  # noqa: E731
    s1 = estimate_output_sensitivity(weights, counted, seed=3)
    assert len(calls) == forward_passes(3)
    assert s1 == estimate_output_sensitivity(weights, run, seed=3)
    assert s1["c"] < s1["a"] / 100  # c enters 30x weaker: ~900x less sensitive
    modified = {k: v + 0.01 * v.std() * rng.standard_normal(v.shape) for k, v in weights.items()}
    predicted = predicted_output_error(s1, weights, modified)
    measured = relative_output_error(run({}), run(modified))
    assert predicted == pytest.approx(measured, rel=0.5)


def test_onnx_estimator_ranks_the_fragile_tensor_first():
    sens = onnx_output_sensitivity(_fragile_mlp())
    assert set(sens) == {"w1", "wf", "w3"}
    assert max(sens, key=sens.get) == "wf"
    assert sens["wf"] > 100 * max(sens["w1"], sens["w3"])


def _as_constant_nodes(model):
    """The model with every initializer turned into a Constant node, as paddle2onnx exports weights."""
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    graph = helper.make_graph(consts + list(model.graph.node), "g", list(model.graph.input),
                              list(model.graph.output))
    out = helper.make_model(graph, opset_imports=list(model.opset_import))
    out.ir_version = model.ir_version
    onnx.checker.check_model(out)
    return out


def test_constant_node_weights_are_probed_under_the_names_the_adapter_stores(tmp_path):
    """Exporters such as paddle2onnx store every weight as a Constant node (no initializer): the estimator
    must still find them, under the names ``rdformat.onnx`` gives them, and rank the fragile one first;
    the output error of replaced Constant weights is measured too."""
    model = _as_constant_nodes(_fragile_mlp())
    assert not model.graph.initializer
    sens = onnx_output_sensitivity(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    rdformat.onnx.compress_file(path, tmp_path / "m.rdc")
    with rdformat.open(tmp_path / "m.rdc") as f:
        stored = set(f.keys())
    assert set(sens) == {"w1", "wf", "w3"} <= stored
    assert max(sens, key=sens.get) == "wf" and sens["wf"] > 100 * max(sens["w1"], sens["w3"])
    weights = rdformat.load(tmp_path / "m.rdc")
    assert onnx_output_error(model, weights) == 0.0
    noisy = {**weights, "wf": weights["wf"] * 1.5}
    assert onnx_output_error(model, noisy) > 0.1
    assert len(model.graph.node) == 7  # the caller's model is not changed


def _classifier(softmax, scale: float = 12.0):
    """x -> W1 -> relu -> W2 -> (Softmax). ``scale`` 12: logits about +-40, so the softmax is saturated on
    every input; 0.05: an unsure classifier.

    ``softmax``: True (a Softmax node), "spelled" (exp(z) / sum exp(z) of z = logits - max, as jax2tf
    writes it), "centered" (outputs the logits less their mean), False (outputs the logits)."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((8, 64)) / np.sqrt(8)).astype(np.float32)
    w2 = (rng.standard_normal((64, 10)) * scale).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"])]
    out = "logits"
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    if softmax is True:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
        out = "probs"
    elif softmax == "centered":
        nodes += [helper.make_node("ReduceMean", ["logits"], ["mean"], axes=[-1], keepdims=1),
                  helper.make_node("Sub", ["logits", "mean"], ["centered"])]
        out = "centered"
    elif softmax == "spelled":
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
        nodes += [helper.make_node("ReduceMax", ["logits"], ["top"], axes=[-1], keepdims=1),
                  helper.make_node("Sub", ["logits", "top"], ["z"]), helper.make_node("Exp", ["z"], ["e"]),
                  helper.make_node("ReduceSum", ["e", "axes"], ["total"]),
                  helper.make_node("Div", ["e", "total"], ["probs"])]
        out = "probs"
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 10])], inits)


def test_a_saturated_softmax_is_probed_on_its_logits():
    """A saturated softmax hides how much its weights matter (the probing noise moves no probability), which
    starved PP-OCR's recogniser head of bits; the probe measures the logits less their mean instead, while
    its reference and output error stay the model's real outputs."""
    with_softmax = OnnxProbe(_classifier(True))
    sens = with_softmax.output_sensitivity()
    assert sens.keys() == {"w1", "w2"}
    want = OnnxProbe(_classifier("centered")).output_sensitivity()
    assert all(sens[k] == pytest.approx(want[k], rel=1e-5) for k in sens)
    (probs,) = with_softmax.reference
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert with_softmax.output_error({"w2": with_softmax.weights["w2"] * 1.001}) < 1e-3
    # magika's head is exp(z) / ReduceSum(exp(z)) (jax2tf), not a Softmax node: probed the same way
    spelled = OnnxProbe(_classifier("spelled")).output_sensitivity()
    assert all(spelled[k] == pytest.approx(want[k], rel=1e-5) for k in sens)


def test_an_unsure_softmax_is_probed_on_its_probabilities(monkeypatch):
    """Synthetic inputs usually leave a classifier unsure: its probabilities move and are measured as they are
    (on PP-OCR they allocated better than the logits, which overstated the 6625-class head)."""
    unsure = OnnxProbe(_classifier(True, scale=0.05)).output_sensitivity()
    (probs,) = OnnxProbe(_classifier(True, scale=0.05)).reference
    assert probs.max(axis=1).mean() < calibration.SATURATED
    monkeypatch.setattr(calibration, "_softmax_logits", lambda graph, opset=13: {})
    plain = OnnxProbe(_classifier(True, scale=0.05)).output_sensitivity()
    assert unsure == plain


def test_sensitivity_lowers_the_output_error_of_a_lossy_file():
    model = _fragile_mlp()
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    sens = onnx_output_sensitivity(model)
    probe = OnnxProbe(model)
    errors, sizes = {}, {}
    for label, s in (("plain", None), ("task", sens)):
        buf = io.BytesIO()
        rdformat.save(weights, buf, bits=2, sensitivity=s)
        sizes[label] = len(buf.getvalue())
        errors[label] = probe.output_error(rdformat.load(buf.getvalue()))
    # Measured on the real model run: at no more bytes, clearly less output error.
    assert sizes["task"] <= sizes["plain"] * 1.1
    assert errors["task"] < errors["plain"] * 0.8
    # the module-level function agrees with the reusable probe
    buf = io.BytesIO()
    rdformat.save(weights, buf, bits=2, sensitivity=sens)
    assert onnx_output_error(model, rdformat.load(buf.getvalue())) == pytest.approx(errors["task"])


def _token_model():
    emb = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    proj = np.random.default_rng(1).standard_normal((16, 3)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]),
             helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mf", "axes"], ["mu"]),
             helper.make_node("Mul", ["e", "mu"], ["em"]),
             helper.make_node("MatMul", ["em", "proj"], ["y"])]
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(proj, "proj"),
             numpy_helper.from_array(np.array([2], np.int64), "axes")]
    return _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
                          helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 3])], inits)


def test_synthetic_inputs_for_dynamic_dims_and_token_ids():
    model = _token_model()
    (feed,) = synthetic_inputs(model)
    assert feed["ids"].dtype == np.int64 and feed["ids"].shape == feed["mask"].shape
    assert feed["ids"].shape[0] == 4 and feed["ids"].shape[1] > 1
    assert 0 <= feed["ids"].min() and feed["ids"].max() < 100 and len(np.unique(feed["ids"])) > 20
    assert np.all(feed["mask"] == 1)
    (feed,) = synthetic_inputs(model, input_shapes={"ids": (2, 7)})
    assert feed["ids"].shape == (2, 7) and feed["mask"].shape == (2, 7)  # shared symbolic dims follow
    sens = onnx_output_sensitivity(model)
    assert set(sens) == {"emb", "proj"} and all(v > 0 for v in sens.values())
    with pytest.raises(rdformat.InvalidInputError, match="'nope'"):
        synthetic_inputs(model, input_shapes={"nope": (1, 2)})


def test_custom_op_and_unknown_shape_raise_the_fallback_error():
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    custom = _model([helper.make_node("FancyOp", ["x", "w"], ["y"], domain="com.example")],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w],
                    check=False, opsets=(("", 17), ("com.example", 1)))
    with pytest.raises(CalibrationUnavailable) as info:
        onnx_output_sensitivity(custom)
    assert isinstance(info.value, rdformat.UnsupportedFeatureError)
    assert "\n" not in str(info.value)
    shapeless = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w], check=False)
    with pytest.raises(CalibrationUnavailable):
        onnx_output_sensitivity(shapeless)


def test_calibration_inputs_are_checked_with_one_line_errors(tmp_path):
    model = _fragile_mlp()
    good = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=good)
    (tmp_path / "cal").mkdir()
    np.save(tmp_path / "cal" / "x.npy", good)
    for source in (tmp_path / "cal.npz", tmp_path / "cal"):
        inputs = load_calibration(source)
        assert np.array_equal(inputs["x"], good)
        assert max(onnx_output_sensitivity(model, inputs), key=lambda k: onnx_output_sensitivity(model, inputs)[k]) == "wf"
    cases = [({"z": good}, "'z'"), ({"x": good[:, :5]}, "'x'"), ({"x": good[0]}, "'x'"), ({}, "'x'"),
             ({"x": good.astype(np.int64)}, "'x'")]
    for inputs, named in cases:
        with pytest.raises(rdformat.InvalidInputError, match=named) as info:
            onnx_output_sensitivity(model, inputs)
        assert "\n" not in str(info.value)
    with pytest.raises(rdformat.InvalidInputError):
        load_calibration(tmp_path / "missing.npz")


torch = pytest.importorskip("torch")


class _Fragile(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(8, 128)
        self.fragile = torch.nn.Linear(128, 128)
        self.out = torch.nn.Linear(128, 16)
        with torch.no_grad():  # same trick as the ONNX model: tiny weights, amplified afterwards
            self.fragile.weight.mul_(0.01)
            self.fragile.bias.mul_(0.01)
            self.out.weight.mul_(100)
        self.calls = 0
        self.fail_at = None

    def forward(self, x):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("boom")
        return self.out(self.fragile(torch.relu(self.a(x))))


def test_torch_estimator_ranks_fragile_first_and_restores_the_module():
    from rdformat.torch_sensitivity import output_error, output_sensitivity

    net = _Fragile().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    sens = output_sensitivity(net, x)
    assert set(sens) == {"a.weight", "fragile.weight", "out.weight"}
    assert max(sens, key=sens.get) == "fragile.weight"
    assert net.training
    for k, v in net.state_dict().items():
        assert v.numpy().tobytes() == before[k].numpy().tobytes(), k
    net.calls, net.fail_at = 0, 5  # fails mid-estimate, while parameters are perturbed
    with pytest.raises(RuntimeError, match="boom"):
        output_sensitivity(net, [x, x])
    for k, v in net.state_dict().items():
        assert v.numpy().tobytes() == before[k].numpy().tobytes(), k
    net.fail_at = None
    weights = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    errors, sizes = {}, {}
    for label, s in (("plain", None), ("task", sens)):
        buf = io.BytesIO()
        rdformat.save(weights, buf, bits=2, sensitivity=s)
        sizes[label] = len(buf.getvalue())
        errors[label] = output_error(net, rdformat.load(buf.getvalue()), x)
    assert sizes["task"] <= sizes["plain"] * 1.1
    assert errors["task"] < errors["plain"] * 0.8
    for k, v in net.state_dict().items():
        assert v.numpy().tobytes() == before[k].numpy().tobytes(), k


def test_calibration_samples_are_capped_for_the_estimate():
    model = _fragile_mlp()
    many = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    probe = OnnxProbe(model, {"x": many}, max_samples=16)
    assert sum(f["x"].shape[0] for f in probe.feeds) == 16
    probe = OnnxProbe(model, [{"x": many[:10]}, {"x": many[10:20]}], max_samples=16)
    assert [f["x"].shape[0] for f in probe.feeds] == [10, 6]


def test_a_slow_per_tensor_estimate_runs_on_the_first_samples_its_time_budget_affords():
    model = _fragile_mlp()
    x = np.random.default_rng(3).standard_normal((12, 8)).astype(np.float32)
    feeds = [{"x": x[:4]}, {"x": x[4:8]}, {"x": x[8:]}]
    probe = OnnxProbe(model, feeds, max_samples=None)
    unlimited = probe.output_sensitivity(channels=False, seconds=None)
    passes = forward_passes(len(unlimited))
    # a pass "costs" 1 s: a 1/3 share of the passes affords the first 4 of the 12 samples
    probe.pass_seconds = 1.0
    budgeted = probe.output_sensitivity(channels=False, seconds=passes / 3 * 1.01)
    first = OnnxProbe(model, {"x": x[:4]}, max_samples=None).output_sensitivity(channels=False, seconds=None)
    assert budgeted == first and budgeted != unlimited
    # below one sample, noise rounds go too (never below one sample and one round)
    probe.pass_seconds = 1000.0
    starved = probe.output_sensitivity(channels=False, seconds=0.0)
    one = OnnxProbe(model, {"x": x[:1]}, max_samples=None).output_sensitivity(channels=False, rounds=1, seconds=None)
    assert starved == one
    assert max(starved, key=starved.get) == "wf"
    # a budget the passes fit in changes nothing
    assert probe.output_sensitivity(channels=False, seconds=1e9) == unlimited


def _masked_pair():
    """Two linear branches: ``a`` sees one input feature 100x louder than the others, but its weights
    there are tiny (far below any step, so quantization zeroes them with a tiny error); ``b`` sees every
    feature at sqrt(20). White noise on ``a`` hits the loud feature (Gaussian estimate: ``a`` first);
    real quantization error does not (``b`` is the one that matters at the operating point)."""
    rng = np.random.default_rng(0)
    x, x2 = rng.standard_normal((128, 64)), rng.standard_normal((128, 64))
    gain = np.ones(128)
    gain[0] = 100.0
    a = (rng.standard_normal((16, 128)) * 0.1).astype(np.float32)
    a[:, 0] = 1e-4
    b = (rng.standard_normal((16, 128)) * 0.1).astype(np.float32)
    weights = {"a": a, "b": b}

    def run(overrides):
        w = {**weights, **overrides}
        return [w["a"].astype(np.float64) @ (gain[:, None] * x) + np.sqrt(20) * w["b"].astype(np.float64) @ x2]

    return weights, run


def test_quantization_sensitivity_is_the_measured_error_per_squared_weight_error():
    weights, run = _masked_pair()
    ref = run({})
    calls = []

    def squared_error(overrides):
        calls.append(sorted(overrides))
        return relative_output_error(ref, run(overrides)) ** 2

    quantized = {"a": np.round(weights["a"] * 8) / 8, "b": weights["b"].copy()}  # b unchanged
    got = quantization_sensitivity(weights, quantized, squared_error)
    assert calls == [["a"]]  # one pass per changed tensor, one tensor at a time
    assert set(got) == {"a"}
    d = quantized["a"].astype(np.float64) - weights["a"]
    want = relative_output_error(ref, run({"a": quantized["a"]})) ** 2 / float(np.sum(d * d))
    assert got["a"] == pytest.approx(want, rel=1e-12)


def test_refined_sensitivity_corrects_a_gaussian_misranking_and_lowers_the_real_error():
    weights, run = _masked_pair()
    ref = run({})
    gaussian = estimate_output_sensitivity(weights, run, seed=0)
    assert gaussian["a"] > gaussian["b"]  # white noise sees the loud feature
    refined = refine_sensitivity(weights, gaussian, lambda o: relative_output_error(ref, run(o)) ** 2,
                                 lossy=["a", "b"], bits=3)
    assert refined == refine_sensitivity(weights, gaussian, lambda o: relative_output_error(ref, run(o)) ** 2,
                                         lossy=["a", "b"], bits=3)  # deterministic
    assert refined["b"] > 3 * refined["a"]
    errors, sizes = {}, {}
    for label, s in (("gaussian", gaussian), ("refined", refined)):
        buf = io.BytesIO()
        rdformat.save(weights, buf, bits=3, sensitivity=s)
        sizes[label] = len(buf.getvalue())
        errors[label] = relative_output_error(ref, run(rdformat.load(buf.getvalue())))
    assert sizes["refined"] <= sizes["gaussian"] * 1.05
    assert errors["refined"] < errors["gaussian"] * 0.7
    with pytest.raises(rdformat.InvalidInputError, match="starting sensitivity"):
        refine_sensitivity(weights, {"a": 1.0}, lambda o: 0.0, lossy=["a", "b"], bits=3)


def test_onnx_probe_refines_with_the_real_quantization_error():
    probe = OnnxProbe(_fragile_mlp())
    sens = probe.output_sensitivity()
    refined = probe.refine_sensitivity(sens, bits=2, iterations=1)
    assert set(refined) == {"w1", "wf", "w3"}
    assert max(refined, key=refined.get) == "wf"  # still the fragile one, now measured at 2 bits/weight
    assert refined == probe.refine_sensitivity(sens, bits=2, iterations=1)
    assert refined != {n: float(sens[n]) for n in refined}  # the measurement moved the values
