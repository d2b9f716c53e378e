"""Error-compensating quantization (issue 12): levels chosen to keep a layer's outputs, not its weights.

The producer is numpy only; the covariances come from a live PyTorch module or from an ONNX model run
in onnxruntime, and both collectors must agree on the same layers. Files stay ordinary ``sq`` files.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

import rdformat
from rdformat.codecs.axis_scales import AxisScales, factor
from rdformat.entropy import entropy_bits
from rdformat.codecs.sq import zigzag
from rdformat.errors import InvalidInputError
from rdformat.producers.compensate import InputCovariance, quantize_compensated
from rdformat.producers.quantize import quantize_rdo


def _layer(seed: int = 0, d: int = 48, rows: int = 24, n: int = 4000):
    """A weight matrix (out, in) and correlated inputs, like neighbouring pixels or features."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * 0.3
    x = rng.standard_normal((n, d)) @ mix + rng.standard_normal((n, 1))
    w = (rng.standard_normal((rows, d)) * 0.1).astype(np.float32)
    return w, x


def _bits(levels: np.ndarray) -> float:
    return entropy_bits(zigzag(levels.reshape(-1)))[0] / levels.size


def _out_err(w, q, x) -> float:
    dw = q.astype(np.float64) - w
    return float(np.sqrt(np.mean((x @ dw.T) ** 2) / np.mean((x @ w.T.astype(np.float64)) ** 2)))


@pytest.mark.parametrize("step", [0.02, 0.05])
def test_compensation_lowers_the_output_error_at_equal_rate(step):
    w, x = _layer()
    cov = InputCovariance(x.T @ x / len(x))
    plain = quantize_rdo(w, step)
    comp = quantize_compensated(w, step, cov)
    assert abs(_bits(comp.levels) - _bits(plain.levels)) < 0.05 * _bits(plain.levels)
    assert _out_err(w, comp.dequantize(), x) < 0.8 * _out_err(w, plain.dequantize(), x)
    # the weights themselves move further: the saving is in what the layer computes
    assert np.linalg.norm(comp.dequantize() - w) > np.linalg.norm(plain.dequantize() - w)
    assert comp.levels.dtype == np.int32 and comp.levels.shape == w.shape


def test_white_inputs_give_plain_rounding_back():
    w, _ = _layer(1)
    comp = quantize_compensated(w, 0.03, InputCovariance(np.eye(w.shape[1])))
    plain = quantize_rdo(w, 0.03)
    # no correlation to exploit: the same decisions up to the rate table's last refinement
    assert np.mean(comp.levels != plain.levels) < 0.02


def test_layouts_and_groups_agree():
    w, x = _layer(2, d=32, rows=16)
    cov = InputCovariance(x.T @ x / len(x))
    a = quantize_compensated(w, 0.04, cov)
    b = quantize_compensated(np.ascontiguousarray(w.T), 0.04, InputCovariance(cov.matrix, "in_out"))
    np.testing.assert_array_equal(a.levels, b.levels.T)
    # two groups (a grouped convolution): each group is its own layer
    w2, x2 = _layer(3, d=32, rows=16)
    both = np.concatenate([w, w2])
    stacked = InputCovariance(np.stack([cov.matrix[0], x2.T @ x2 / len(x2)]))
    g = quantize_compensated(both, 0.04, stacked).dequantize()
    plain = quantize_rdo(both, 0.04).dequantize()
    for rows, (wi, xi) in ((slice(0, 16), (w, x)), (slice(16, 32), (w2, x2))):  # each group, its own inputs
        assert _out_err(wi, g[rows], xi) < 0.8 * _out_err(wi, plain[rows], xi)


def test_axis_scales_are_compensated_in_the_scaled_domain():
    w, x = _layer(4)
    cov = InputCovariance(x.T @ x / len(x))
    scales = AxisScales(np.arange(w.shape[0]) % 5 - 2, np.arange(w.shape[1]) % 3 - 1)
    f = factor(scales.exponents(w.shape))
    comp = quantize_compensated(w, 0.04, cov, scales=f)
    plain = quantize_rdo(w / f, 0.04)
    assert _out_err(w, comp.dequantize() * f, x) < 0.8 * _out_err(w, plain.dequantize() * f, x)


def test_bad_covariances_are_refused():
    with pytest.raises(InvalidInputError, match="groups, d, d"):
        InputCovariance(np.zeros((3, 4)))
    with pytest.raises(InvalidInputError, match="NaN"):
        InputCovariance(np.full((2, 2), np.nan))
    with pytest.raises(InvalidInputError, match="layout"):
        InputCovariance(np.eye(2), "sideways")
    with pytest.raises(InvalidInputError, match="does not fit"):
        quantize_compensated(np.zeros((4, 5), np.float32), 0.1, InputCovariance(np.eye(4)))
    w = {"w": np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)}
    with pytest.raises(InvalidInputError, match="does not fit"):
        rdformat.save(w, io.BytesIO(), lossy=rdformat.Lossy(bits=3, covariance={"w": InputCovariance(np.eye(8))}))
    with pytest.raises(InvalidInputError, match="sq levels"):
        rdformat.Lossy(bits=3, method="dq", covariance={"w": InputCovariance(np.eye(16))})
    with pytest.raises(InvalidInputError, match="InputCovariance"):
        rdformat.Lossy(bits=3, covariance={"w": np.eye(16)})


def test_a_compensated_file_meets_its_bits_and_decodes_with_numpy(tmp_path):
    w, x = _layer(5, d=64, rows=64, n=8000)
    tensors = {"layer.weight": w, "layer.bias": np.zeros(64, np.float32)}
    cov = {"layer.weight": InputCovariance(x.T @ x / len(x))}
    for bits in (2.0, 4.0):
        plain = io.BytesIO()
        rdformat.save(tensors, plain, lossy=rdformat.Lossy(bits=bits, method="sq"))
        comp = io.BytesIO()
        summary = rdformat.save(tensors, comp, lossy=rdformat.Lossy(bits=bits, covariance=cov))
        assert summary.method == "sq"
        # rate control accounts for what compensation costs: the file keeps its size
        assert abs(len(comp.getvalue()) - len(plain.getvalue())) < 0.1 * len(plain.getvalue())
        got = rdformat.load(comp.getvalue())["layer.weight"]
        ref = rdformat.load(plain.getvalue())["layer.weight"]
        assert _out_err(w, got, x) < 0.85 * _out_err(w, ref, x)
    assert w.flags.writeable and np.array_equal(w, _layer(5, d=64, rows=64, n=8000)[0])  # caller's array intact


torch = pytest.importorskip("torch")


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.grouped = torch.nn.Conv2d(6, 6, (3, 2), padding=(1, 0), groups=2)
        self.fc = torch.nn.Linear(6 * 4 * 3, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = torch.tanh(self.grouped(h))
        return self.fc(h.flatten(1))


def _onnx_of(net: _Net):
    """The same network as an ONNX graph (Conv with pads/strides/groups, Gemm transB=1)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    nodes = [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "grouped.weight", "grouped.bias"], ["g"], pads=[1, 0, 1, 0], group=2),
             helper.make_node("Tanh", ["g"], ["t"]), helper.make_node("Flatten", ["t"], ["f"]),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(v, k) for k, v in sd.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_torch_and_onnx_collectors_agree():
    pytest.importorskip("onnxruntime")
    from rdformat.onnx_calibration import onnx_input_covariances
    from rdformat.torch_sensitivity import input_covariances

    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(10, 4, 8, 8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    from_torch = input_covariances(net, x)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # module untouched
    from_onnx = onnx_input_covariances(_onnx_of(net), {"x": x.numpy()})
    assert set(from_torch) == set(from_onnx) == {"conv.weight", "grouped.weight", "fc.weight"}
    assert from_torch["grouped.weight"].matrix.shape == (2, 3 * 3 * 2, 3 * 3 * 2)
    for name, cov in from_torch.items():
        assert cov.layout == from_onnx[name].layout == "out_in"
        assert cov.samples == from_onnx[name].samples
        np.testing.assert_allclose(cov.matrix, from_onnx[name].matrix, rtol=1e-4, atol=1e-6)


def test_compensation_keeps_a_real_network_closer(tmp_path):
    """On a CNN trained on scikit-learn's digits (ONNX, onnxruntime), compensated levels keep the
    logits on held-out images closer than plain ones at the same bits per weight."""
    pytest.importorskip("onnxruntime")
    from test_calibrate import digits_cnn

    from rdformat.onnx_calibration import OnnxProbe, load_calibration, onnx_input_covariances

    src, images = digits_cnn(tmp_path / "digits.onnx")
    cal, held_out = images[:64], images[64:]
    cov = onnx_input_covariances(src, {"x": cal})
    assert set(cov) == {"0.weight", "3.weight", "5.weight"}
    probe = OnnxProbe(src, {"x": held_out})
    errs = {}
    for label, c in (("plain", None), ("compensated", cov)):
        buf = io.BytesIO()
        rdformat.save(probe.weights, buf, lossy=rdformat.Lossy(bits=1.0, method="sq", covariance=c))
        errs[label] = probe.output_error(rdformat.load(buf.getvalue()))
    assert errs["compensated"] < 0.7 * errs["plain"]
    np.savez(tmp_path / "c.npz", x=cal)
    assert load_calibration(tmp_path / "c.npz")["x"].shape == cal.shape


def test_torch_path_on_the_real_onet(tmp_path):
    """MTCNN's O-Net (real checkpoint) on crops of scikit-learn's photos: compensated levels written
    through ``rdformat.torch.save_file`` keep the outputs on held-out crops closer at equal size."""
    from pathlib import Path

    from sklearn.datasets import load_sample_images

    import rdformat.torch as rt
    from tools.mtcnn import ONet

    models = Path(__file__).parents[2] / "shared" / "models"
    if not (models / "onet.pt").exists():
        pytest.skip("MTCNN checkpoints not present")
    net = ONet()
    net.load_state_dict(torch.load(models / "onet.pt", map_location="cpu", weights_only=True))
    net.eval()
    photo = np.asarray(load_sample_images().images[0], np.float32)
    rng = np.random.default_rng(0)
    crops = np.stack([photo[y:y + 48, x:x + 48] for y, x in zip(rng.integers(0, 380, 96), rng.integers(0, 580, 96))])
    crops = torch.from_numpy(((crops - 127.5) / 128.0).transpose(0, 3, 1, 2).copy())
    cal, held_out = crops[:48], crops[48:]
    cov = rt.input_covariances(net, cal)
    assert {"conv1.weight", "dense5.weight", "dense6_1.weight"} <= set(cov)
    sd = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    errs, sizes = {}, {}
    for label, c in (("plain", None), ("compensated", cov)):
        path = tmp_path / f"{label}.rdc"
        rt.save_file(net.state_dict(), path, lossy=rdformat.Lossy(bits=3.0, method="sq", covariance=c))
        sizes[label] = path.stat().st_size
        errs[label] = rdformat.torch_sensitivity.output_error(net, rt.load_file(path), held_out)
    assert all(np.array_equal(v.detach().numpy(), sd[k]) for k, v in net.state_dict().items())  # module untouched
    assert abs(sizes["compensated"] - sizes["plain"]) < 0.08 * sizes["plain"]
    assert errs["compensated"] < 0.8 * errs["plain"]


def test_cli_compensates_with_real_calibration_inputs(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    from test_calibrate import digits_cnn

    from rdformat.cli import main

    src, images = digits_cnn(tmp_path / "digits.onnx")
    np.savez(tmp_path / "cal.npz", x=images[:64])
    assert main(["compress", "--bits", "2", "--calibration", str(tmp_path / "cal.npz"), str(src),
                 str(tmp_path / "c.rdc")]) == 0
    assert "error compensation for 3 layers" in capsys.readouterr().out
    assert main(["compress", "--bits", "2", "--calibration", str(tmp_path / "cal.npz"), "--no-compensate",
                 str(src), str(tmp_path / "p.rdc")]) == 0
    assert "compensation" not in capsys.readouterr().out
    # synthetic inputs say nothing about real activations: no compensation without --calibration
    assert main(["compress", "--bits", "2", str(src), str(tmp_path / "s.rdc")]) == 0
    assert "compensation" not in capsys.readouterr().out
    run = lambda p, x: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    errs = {}
    for label in ("c", "p"):
        assert main(["decompress", "--quiet", str(tmp_path / f"{label}.rdc"), str(tmp_path / f"{label}.onnx")]) == 0
        ref, got = run(src, images[64:]), run(tmp_path / f"{label}.onnx", images[64:])
        errs[label] = float(np.sqrt(np.sum((got - ref) ** 2) / np.sum(ref ** 2)))
    assert errs["c"] < errs["p"]


def test_layers_the_collector_cannot_read_are_left_out():
    """Conv attributes the patch reader cannot follow (zero strides, negative pads) are an rdformat
    error there, which the collector turns into "this layer is not compensated", never a crash."""
    pytest.importorskip("onnxruntime")
    from rdformat.onnx_calibration import _conv_rows

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    with pytest.raises(InvalidInputError, match="not usable"):
        _conv_rows(x, (4, 3, 3, 3), {"strides": [0, 1]}, 100, rng)
    with pytest.raises(InvalidInputError, match="not usable"):
        _conv_rows(x, (4, 3, 3, 3), {"pads": [1, 1, -1, 1]}, 100, rng)
    rows = _conv_rows(x, (4, 3, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, 1000, rng)
    assert rows.shape == (1, 2 * 4 * 4, 27)
