"""ONNX adapter: graph blob + weights, Constant nodes, external data, structural tensors, lossless restore."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import rdformat  # noqa: E402
from rdformat import onnx as ro  # noqa: E402
from rdformat.adapters import UnsafeInputError  # noqa: E402
from rdformat.errors import InvalidInputError  # noqa: E402

OPSET = 17
C = 16  # conv channels: conv.weight is over 1 KiB, so it goes to external data
IR_VERSION = 8


def build_model(seed: int = 0) -> onnx.ModelProto:
    """conv + batchnorm + relu + reshape(shape initializer) + gemm(weight in a Constant node) + fp16 bias."""
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [
        numpy_helper.from_array(f32(C, 3, 3, 3), "conv.weight"),
        numpy_helper.from_array(f32(C), "conv.bias"),
        # typed-field storage (float_data, not raw_data) must round-trip too
        helper.make_tensor("bn.scale", TensorProto.FLOAT, [C], (1 + 0.1 * f32(C)).tolist(), raw=False),
        numpy_helper.from_array(f32(C), "bn.bias"),
        numpy_helper.from_array(f32(C) * 0.1, "bn.mean"),
        numpy_helper.from_array(np.abs(f32(C)) + 0.5, "bn.var"),
        numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "flat.shape"),
        numpy_helper.from_array(f32(5), "fc.bias"),
        numpy_helper.from_array(f32(1, 5).astype(np.float16), "out.offset16"),
    ]
    fc_weight = numpy_helper.from_array(f32(5, C * 6 * 6), "fc.weight.value")
    nodes = [
        helper.make_node("Constant", [], ["fc.weight"], value=fc_weight),
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], pads=[0, 0, 0, 0]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"],
                         epsilon=1e-5),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Reshape", ["r", "flat.shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["g"], transB=1),
        helper.make_node("Cast", ["out.offset16"], ["off"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["g", "off"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "rdc_test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rdc-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def run(path_or_model, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    src = os.fspath(path_or_model) if isinstance(path_or_model, (str, os.PathLike)) else \
        path_or_model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def assert_same_weights(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    wa, wb = weights(a), weights(b)
    assert list(wa) == list(wb)
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and wa[k].shape == wb[k].shape, k
        assert wa[k].tobytes() == wb[k].tobytes(), k


X = np.random.default_rng(42).standard_normal((1, 3, 8, 8)).astype(np.float32)


def test_onnx_roundtrip_lossless(tmp_path):
    model = build_model()
    src, rdc, out = tmp_path / "m.onnx", tmp_path / "m.rdc", tmp_path / "back.onnx"
    onnx.save_model(model, src)
    ro.compress_file(src, rdc)
    with rdformat.open(rdc) as f:
        assert f.graph_format == "onnx" and f.graph is not None
        names = set(f.keys())
        assert {"conv.weight", "bn.scale", "flat.shape", "fc.weight", "out.offset16"} <= names
        assert f.info("flat.shape").structural
        assert not f.info("conv.weight").structural
        assert f.info("out.offset16").dtype == np.float16
        info = f.metadata["rdformat"]
        assert info["source_format"] == "onnx" and info["opset_import"] == {"ai.onnx": OPSET}
        # the graph blob carries no weights
        assert len(f.graph) < 2000
        blob = onnx.ModelProto()
        blob.ParseFromString(f.graph)
        assert all(not t.raw_data and not t.float_data for t in blob.graph.initializer)
    ro.decompress_file(rdc, out)
    back = onnx.load(out)
    onnx.checker.check_model(back)
    assert_same_weights(model, back)
    assert back.opset_import == model.opset_import and back.ir_version == model.ir_version
    y0, y1 = run(src, X), run(out, X)
    assert y0.dtype == y1.dtype and y0.tobytes() == y1.tobytes()  # bit-identical outputs


def test_onnx_external_data_in_and_out(tmp_path):
    model = build_model(seed=1)
    src = tmp_path / "ext" / "m.onnx"
    src.parent.mkdir()
    onnx.save_model(model, src, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=1024)
    ext = onnx.load(src, load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in ext.graph.initializer)
    assert (src.parent / "m.onnx.data").exists()
    rdc = tmp_path / "m.rdc"
    ro.compress_file(src, rdc)
    with rdformat.open(rdc) as f:
        assert f.metadata["rdformat"]["external_data"] is True
    # default: external again, like the source
    out = tmp_path / "out" / "back.onnx"
    out.parent.mkdir()
    ro.decompress_file(rdc, out)
    assert (out.parent / "back.onnx.data").exists()
    onnx.checker.check_model(os.fspath(out))
    assert run(src, X).tobytes() == run(out, X).tobytes()
    assert_same_weights(ro.read_model(src), ro.read_model(out))
    # forced inline
    inline = tmp_path / "inline.onnx"
    ro.decompress_file(rdc, inline, external_data=False)
    assert not (tmp_path / "inline.onnx.data").exists()
    assert run(inline, X).tobytes() == run(src, X).tobytes()


def test_onnx_big_model_path_streams_external(tmp_path, monkeypatch):
    """The >2 GB path: weights go tensor by tensor to an external file (threshold lowered here)."""
    model = build_model(seed=2)
    data = ro.save(model)
    monkeypatch.setattr(ro, "EXTERNAL_DATA_THRESHOLD", 1000)
    out = tmp_path / "big.onnx"
    ro.decompress_file(data, out)
    assert (tmp_path / "big.onnx.data").stat().st_size > 1000
    loaded = onnx.load(out, load_external_data=False)
    ext = [t.name for t in loaded.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert ext == ["conv.weight"]  # small and structural tensors (flat.shape) stay inline
    onnx.checker.check_model(os.fspath(out))
    assert run(out, X).tobytes() == run(model, X).tobytes()


def test_onnx_bytes_verbs_do_not_touch_input():
    model = build_model(seed=3)
    before = model.SerializeToString()
    data = ro.save(model, metadata={"task": "test"})
    assert model.SerializeToString() == before
    back = ro.load(data)
    assert_same_weights(model, back)
    assert run(back, X).tobytes() == run(model, X).tobytes()
    with rdformat.open(io.BytesIO(data)) as f:
        assert f.metadata["task"] == "test"


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin", "link.bin"])
def test_onnx_external_path_escape_refused(tmp_path, location):
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link.bin").symlink_to(tmp_path / "outside.bin")
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", location
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[t])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UnsafeInputError, match="outside|leaves"):
        ro.compress_file(path, tmp_path / "m.rdc")
    assert not (tmp_path / "m.rdc").exists()
    with pytest.raises(UnsafeInputError):
        ro.read_model(path)


def test_onnx_bad_external_ranges(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 8)
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "w.bin"), ("offset", "4")):
        e = t.external_data.add()
        e.key, e.value = k, v
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[t])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(InvalidInputError, match="outside"):
        ro.compress_file(path, tmp_path / "m.rdc")


def test_structural_marking():
    """Resize scales built by Concat of float constants, Slice starts, TopK k, Range: all structural."""
    f = lambda name, arr: numpy_helper.from_array(np.asarray(arr), name)  # noqa: E731
    inits = [
        f("s_a", np.array([1.0, 1.0], dtype=np.float32)),
        f("s_b", np.array([2.0, 2.0], dtype=np.float32)),
        f("w", np.ones((1, 1, 2, 2), dtype=np.float32)),
        f("starts", np.array([0], dtype=np.int64)),
        f("ends", np.array([2], dtype=np.int64)),
        f("k", np.array([1], dtype=np.int64)),
        f("r0", np.array(0.0, dtype=np.float32)),
        f("r1", np.array(3.0, dtype=np.float32)),
        f("r2", np.array(1.0, dtype=np.float32)),
    ]
    nodes = [
        helper.make_node("Concat", ["s_a", "s_b"], ["scales"], axis=0),
        helper.make_node("Mul", ["x", "w"], ["xw"]),
        helper.make_node("Resize", ["xw", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Slice", ["up", "starts", "ends"], ["sl"]),
        helper.make_node("TopK", ["sl", "k"], ["tv", "ti"]),
        helper.make_node("Range", ["r0", "r1", "r2"], ["rng"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("tv", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("rng", TensorProto.FLOAT, None)],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    with rdformat.open(io.BytesIO(ro.save(model))) as fh:
        flags = {n: fh.info(n).structural for n in fh.keys()}
    assert flags == {"s_a": True, "s_b": True, "w": False, "starts": True, "ends": True, "k": True,
                     "r0": True, "r1": True, "r2": True}


def test_subgraph_and_unsupported_dtypes_roundtrip():
    """Initializers inside an If branch are extracted; string tensors stay inline in the graph."""
    then_w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "then_w")
    else_w = numpy_helper.from_array(np.arange(4, dtype=np.float32) * -1, "else_w")
    then_g = helper.make_graph([helper.make_node("Identity", ["then_w"], ["o1"])], "then", [],
                               [helper.make_tensor_value_info("o1", TensorProto.FLOAT, [4])], initializer=[then_w])
    else_g = helper.make_graph([helper.make_node("Identity", ["else_w"], ["o2"])], "else", [],
                               [helper.make_tensor_value_info("o2", TensorProto.FLOAT, [4])], initializer=[else_w])
    strings = helper.make_tensor("labels", TensorProto.STRING, [2], [b"cat", b"dog"])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
         helper.make_node("Identity", ["labels"], ["lab"])],
        "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
                  helper.make_tensor_value_info("lab", TensorProto.STRING, [2])],
        initializer=[numpy_helper.from_array(np.array(True), "cond"), strings])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    data = ro.save(model)
    with rdformat.open(io.BytesIO(data)) as fh:
        assert set(fh.keys()) == {"cond", "then_w", "else_w"}
        assert fh.info("cond").structural
    back = ro.load(data)
    onnx.checker.check_model(back)
    assert back.SerializeToString() == model.SerializeToString()
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(back.SerializeToString(), providers=["CPUExecutionProvider"])
    y, lab = sess.run(None, {})
    assert y.tolist() == [0, 1, 2, 3] and list(lab) == ["cat", "dog"]


def test_no_graph_cannot_become_onnx(tmp_path):
    path = tmp_path / "plain.rdc"
    rdformat.save({"w": np.ones(3, dtype=np.float32)}, path)
    with pytest.raises(InvalidInputError, match="no graph"):
        ro.decompress_file(path, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\xfe garbage that is not protobuf" * 3)
    with pytest.raises(InvalidInputError):
        ro.compress_file(path, tmp_path / "x.rdc")


def test_rdc_graph_is_self_describing(tmp_path):
    """Each emptied tensor in the graph blob names its container tensor."""
    data = ro.save(build_model())
    with rdformat.open(io.BytesIO(data)) as f:
        blob = onnx.ModelProto()
        blob.ParseFromString(f.graph)
        refs = {e.value for t in blob.graph.initializer for e in t.external_data if e.key == ro.RDC_KEY}
        assert refs == {t.name for t in build_model().graph.initializer}
        assert Path(f.keys()[0]).name  # names are plain strings


def test_onnx_one_external_file_per_tensor(tmp_path, monkeypatch):
    """Many external files: read with a bounded number of open handles."""
    model = build_model(seed=4)
    src = tmp_path / "many" / "m.onnx"
    src.parent.mkdir()
    ext = onnx.ModelProto()
    ext.CopyFrom(model)
    for i, t in enumerate(ext.graph.initializer):
        if t.data_type == TensorProto.INT64:
            continue  # shape tensors stay inline
        raw = numpy_helper.to_array(t).tobytes()
        (src.parent / f"w{i}.bin").write_bytes(b"pad!" + raw)
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.ClearField("int32_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", f"w{i}.bin"), ("offset", "4"), ("length", str(len(raw)))):
            e = t.external_data.add()
            e.key, e.value = k, v
    src.write_bytes(ext.SerializeToString())
    assert len(list(src.parent.iterdir())) > 4
    onnx.checker.check_model(os.fspath(src))
    monkeypatch.setattr(ro._ExternalFiles, "MAX_OPEN", 2)
    data = ro.save(ro.read_model(src))
    rdc = tmp_path / "m.rdc"
    ro.compress_file(src, rdc)
    back = ro.load_file(rdc)
    assert_same_weights(model, back)
    assert_same_weights(model, ro.load(data))
    assert run(back, X).tobytes() == run(model, X).tobytes()


def test_surp_on_onnx_with_shared_weight_and_external_data(tmp_path):
    """``rdc compress --method surp`` on an ONNX model: a weight used by two nodes, external data, structural
    tensors kept exact; the restored model passes the checker and runs in onnxruntime."""
    rng = np.random.default_rng(5)
    w = (rng.laplace(size=(16, 16)) * 0.2).astype(np.float32)
    inits = [numpy_helper.from_array(w, "shared.weight"),
             numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "flat.shape")]
    nodes = [helper.make_node("MatMul", ["x", "shared.weight"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "shared.weight"], ["g"]),  # the same initializer again
             helper.make_node("Reshape", ["g", "flat.shape"], ["y"])]
    graph = helper.make_graph(nodes, "surp_shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    src = tmp_path / "shared.onnx"
    onnx.save_model(model, src, save_as_external_data=True, all_tensors_to_one_file=True, location="shared.data",
                    size_threshold=0)
    rdc_path, out = tmp_path / "shared.rdc", tmp_path / "restored.onnx"
    from rdformat.cli import main

    assert main(["compress", "--quiet", "--method", "surp", "--sparsity", "0.5", str(src), str(rdc_path)]) == 0
    with rdformat.open(rdc_path) as f:
        assert f.info("shared.weight").codec == "surp"
        assert f.info("flat.shape").structural and f.info("flat.shape").codec != "surp"
    assert main(["decompress", "--quiet", str(rdc_path), str(out)]) == 0
    restored = onnx.load(out)
    onnx.checker.check_model(restored)
    got = weights(restored)
    assert np.array_equal(got["flat.shape"], np.array([1, -1]))
    assert abs(np.mean(got["shared.weight"] == 0) - 0.5) < 0.02
    x = rng.standard_normal((2, 16)).astype(np.float32)
    ort = pytest.importorskip("onnxruntime")
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    w_hat = got["shared.weight"]
    np.testing.assert_allclose(y, (np.maximum(x @ w_hat, 0) @ w_hat).reshape(1, 32), rtol=1e-4, atol=1e-5)


def _typed_field_model():
    """Weights in typed fields, as paddle2onnx writes them, next to one in raw_data (float16 as bit patterns
    in int32_data, double, int64, an empty tensor)."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    w_typed = helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist())
    h = rng.standard_normal(6).astype(np.float16)
    h_typed = helper.make_tensor("h", TensorProto.FLOAT16, [6], h.view(np.uint16).astype(np.int32).tolist())
    nodes = [helper.make_node("Constant", [], ["w"], value=w_typed),
             helper.make_node("Constant", [], ["h"], value=h_typed),
             helper.make_node("Constant", [], ["d"], value=helper.make_tensor("d", TensorProto.DOUBLE, [2], [0.25, -7.0])),
             helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.INT64, [2], [3, -1])),
             helper.make_node("Constant", [], ["e"], value=helper.make_tensor("e", TensorProto.FLOAT, [0], [])),
             helper.make_node("MatMul", ["x", "w"], ["y0"]),
             helper.make_node("Add", ["y0", "b"], ["y"])]
    b = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")  # raw_data
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_lossless_round_trip_keeps_typed_fields_and_file_bytes(tmp_path):
    """Exporters that store weights in float_data/int64_data/int32_data (paddle2onnx) get the same file
    back from a lossless round trip: each tensor returns to the field it came from."""
    src = tmp_path / "m.onnx"
    onnx.save(_typed_field_model(), str(src))
    ro.compress_file(src, tmp_path / "m.rdc")
    ro.decompress_file(tmp_path / "m.rdc", tmp_path / "back.onnx")
    assert (tmp_path / "back.onnx").read_bytes() == src.read_bytes()
    assert ro.load_file(tmp_path / "m.rdc").SerializeToString() == src.read_bytes()


def test_typed_field_that_would_not_read_back_exactly_goes_to_raw_data():
    """A signalling NaN does not survive a trip through a Python float: such values are restored as
    raw_data, bit for bit, rather than into float_data."""
    snan = np.array([1.5, 0.0, -2.0], np.float32)
    snan.view(np.uint32)[1] = 0x7F800001
    t = TensorProto(name="s", data_type=TensorProto.FLOAT, dims=[3])
    for key, value in (("location", ro.RDC_LOCATION), (ro.RDC_KEY, "s"), (ro.RDC_FIELD_KEY, "float_data")):
        e = t.external_data.add()
        e.key, e.value = key, value
    t.data_location = TensorProto.EXTERNAL
    ro._restore_data(t, snan, "s")
    assert t.HasField("raw_data") and not t.float_data
    assert numpy_helper.to_array(t).view(np.uint32).tolist() == snan.view(np.uint32).tolist()


def test_graph_naming_a_storage_field_of_another_type_is_corrupt():
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2])
    for key, value in (("location", ro.RDC_LOCATION), (ro.RDC_KEY, "w"), (ro.RDC_FIELD_KEY, "int64_data")):
        e = t.external_data.add()
        e.key, e.value = key, value
    t.data_location = TensorProto.EXTERNAL
    from rdformat.errors import CorruptDataError

    with pytest.raises(CorruptDataError, match="int64_data"):
        ro._restore_data(t, np.zeros(2, np.float32), "w")
