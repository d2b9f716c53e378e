"""Task-aware compression through ``rdc compress`` (issue 12): sensitivity sources, fallbacks, one-line
errors, ``--max-output-error`` on a CNN trained on scikit-learn's digits, and what ``rdc info`` shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import rdformat  # noqa: E402
from rdformat import calibrate  # noqa: E402
from rdformat.cli import main  # noqa: E402
from rdformat.errors import InvalidInputError  # noqa: E402


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def mlp(path: Path, *, custom_op: bool = False) -> Path:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (32, 64)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (64, 10)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]) if not custom_op
             else helper.make_node("Mystery", ["h"], ["r"], domain="com.example"),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.example", 1)] if custom_op else [])
    model = helper.make_model(graph, opset_imports=opsets)
    if custom_op:
        model.ir_version = 8
        onnx.save(model, path)  # the checker does not know the custom op
        return path
    return _save(model, path)


def test_onnx_compress_is_task_aware_by_default_and_info_shows_it(tmp_path, capsys):
    src = mlp(tmp_path / "m.onnx")
    assert main(["compress", "--bits", "3", str(src), str(tmp_path / "m.rdc")]) == 0
    out = capsys.readouterr().out
    assert "task-aware: output sensitivity of 2 tensors" in out
    assert main(["info", str(tmp_path / "m.rdc")]) == 0
    info = capsys.readouterr().out
    assert "sens." in info and "x " in info.split("sens.")[1]
    assert main(["compress", "--bits", "3", "--write-sensitivity", str(tmp_path / "s.json"), str(src),
                 str(tmp_path / "m2.rdc")]) == 0
    capsys.readouterr()
    assert set(calibrate.read_sensitivity_file(tmp_path / "s.json")) == {"w1", "w2"}
    assert main(["compress", "--bits", "3", "--no-calibrate", str(src), str(tmp_path / "plain.rdc")]) == 0
    assert "task-aware" not in capsys.readouterr().out
    assert main(["info", str(tmp_path / "plain.rdc")]) == 0
    assert "sens." not in capsys.readouterr().out


def test_model_that_cannot_run_falls_back_with_one_notice(tmp_path, capsys):
    src = mlp(tmp_path / "custom.onnx", custom_op=True)
    assert main(["compress", "--bits", "3", str(src), str(tmp_path / "c.rdc")]) == 0
    out = capsys.readouterr().out
    notices = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notices) == 1 and "weight error" in notices[0]
    assert set(rdformat.load(tmp_path / "c.rdc")) == {"w1", "w2"}


@pytest.mark.parametrize("feeds, words", [({"wrong": np.zeros((2, 32), np.float32)}, "wrong"),
                                          ({"x": np.zeros((2, 31), np.float32)}, "x")])
def test_bad_calibration_inputs_are_one_line_errors(tmp_path, capsys, feeds, words):
    src = mlp(tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", **feeds)
    code = main(["compress", "--bits", "3", "--calibration", str(tmp_path / "cal.npz"), str(src),
                 str(tmp_path / "m.rdc")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and words in err
    assert not (tmp_path / "m.rdc").exists()


def test_options_that_need_a_runnable_model(tmp_path, capsys):
    np.savez(tmp_path / "w.npz", w=np.ones((8, 8), np.float32))
    for extra in (["--max-output-error", "0.01"], ["--bits", "3", "--calibration", "x.npz"]):
        assert main(["compress", *extra, str(tmp_path / "w.npz"), str(tmp_path / "w.rdc")]) == 1
        assert "ONNX" in capsys.readouterr().err
    # a weights-only file says why its bits are allocated by weight error, and takes a sensitivity file
    calibrate.write_sensitivity_file({"w": 2.0}, tmp_path / "s.json")
    assert main(["compress", "--bits", "3", str(tmp_path / "w.npz"), str(tmp_path / "w.rdc")]) == 0
    assert "cannot be run" in capsys.readouterr().out
    assert main(["compress", "--bits", "3", "--sensitivity", str(tmp_path / "s.json"), str(tmp_path / "w.npz"),
                 str(tmp_path / "w2.rdc")]) == 0
    assert "sensitivity of 1 tensors from" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text(json.dumps({"w": -1}))
    with pytest.raises(InvalidInputError, match="positive"):
        calibrate.read_sensitivity_file(tmp_path / "bad.json")
    with pytest.raises(InvalidInputError, match="NAME="):
        calibrate.parse_input_shapes(["x=1xabc"])
    assert calibrate.parse_input_shapes(["x=1x3x8x8"]) == {"x": (1, 3, 8, 8)}


def digits_cnn(path: Path) -> tuple[Path, np.ndarray]:
    """A small CNN trained (a few seconds) on scikit-learn's digits, written as ONNX; and test images."""
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(512, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
    for _ in range(8):
        for i in range(0, 1400, 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    nodes = [helper.make_node("Conv", ["x", "0.weight", "0.bias"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "3.weight", "3.bias"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["rh"]),
             helper.make_node("Gemm", ["rh", "5.weight", "5.bias"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "digits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(v, k) for k, v in sd.items()])
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path), x[1400:]


def test_max_output_error_meets_its_target_on_the_digits_cnn(tmp_path, capsys):
    src, test_images = digits_cnn(tmp_path / "digits.onnx")
    np.savez(tmp_path / "cal.npz", x=test_images[:64])
    target = 0.02
    assert main(["compress", "--max-output-error", str(target), "--calibration", str(tmp_path / "cal.npz"),
                 str(src), str(tmp_path / "d.rdc")]) == 0
    assert "within the target" in capsys.readouterr().out
    # measured independently: the restored model's logits on the calibration images
    assert main(["decompress", "--quiet", str(tmp_path / "d.rdc"), str(tmp_path / "back.onnx")]) == 0
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"x": test_images[:64]})[0]
    ref, got = run(src), run(tmp_path / "back.onnx")
    err = float(np.sqrt(np.sum((got - ref) ** 2) / np.sum(ref ** 2)))
    assert 0 < err <= target * 1.0001
    assert (tmp_path / "d.rdc").stat().st_size < src.stat().st_size / 3  # and it did compress
