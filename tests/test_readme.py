"""The README's Python examples run as written (in order, in a scratch folder)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _tiny_onnx(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_readme_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    blocks = _python_blocks()
    assert len(blocks) >= 5, "README lost its examples"
    monkeypatch.chdir(tmp_path)
    _tiny_onnx(tmp_path / "model.onnx")
    namespace: dict = {}
    with warnings.catch_warnings():
        # The README shows today's API: a deprecated name in an example fails here.
        warnings.filterwarnings("error", category=DeprecationWarning, module=r"rdformat(\.|$)")
        warnings.filterwarnings("error", category=DeprecationWarning, message=r".*rdformat")
        for i, block in enumerate(blocks):
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    for name in ("model.rdc", "model-4bit.rdc", "restored.pt", "restored.safetensors", "restored.onnx"):
        assert (tmp_path / name).exists(), name
