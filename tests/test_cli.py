"""The ``rdc`` command, run as a real subprocess (``python -m rdformat ...``)."""

from __future__ import annotations

import json
import re
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = Path(__file__).parents[2] / "shared" / "models"


def rdc(*args, cwd: Path | None = None, check: bool | None = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-m", "rdformat", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    if check is True:
        assert proc.returncode == 0, proc.stderr
    return proc


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "error" in lines[0]
    return lines[0]


def test_help_everywhere():
    out = rdc("--help").stdout
    for cmd in ("compress", "decompress", "info", "verify", "demo"):
        assert cmd in out
    for cmd in ("compress", "decompress", "info", "verify", "demo"):
        sub = rdc(cmd, "--help").stdout
        assert "usage: rdc " + cmd in sub
    assert "--bits" in rdc("compress", "--help").stdout  # the lossy hook is visible


def test_pt_compress_info_verify_decompress(tmp_path):
    src = MODELS / "onet.pt"
    if not src.exists():
        pytest.skip(f"{src} not available")
    out = tmp_path / "onet.rdc"
    proc = rdc("compress", src, out)
    assert "ratio" in proc.stdout and "21 tensors" in proc.stdout
    assert proc.stderr == ""  # no progress bars when stderr is not a terminal
    info = json.loads(rdc("info", "--json", out).stdout)
    assert info["source_format"] == "pytorch" and info["tensor_count"] == 21
    assert info["raw_bytes"] == 389_040 * 4
    row = next(r for r in info["tensors"] if r["name"] == "dense5.weight")
    assert row["dtype"] == "float32" and row["shape"] == [256, 1152] and row["codec"]
    assert row["stored_bytes"] > 0 and row["ratio"] > 0
    text = rdc("info", out).stdout
    assert "dense5.weight" in text and "256x1152" in text and "ratio" in text
    assert "OK" in rdc("verify", out).stdout
    assert rdc("verify", "--quiet", out).stdout == ""
    back_pt, back_st = tmp_path / "back.pt", tmp_path / "back.safetensors"
    rdc("decompress", out, back_pt)
    rdc("decompress", "-q", out, back_st)
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    a = torch.load(src, weights_only=True)
    b = torch.load(back_pt, weights_only=True)
    c = st.load_file(back_st)
    assert list(a) == list(b) and set(a) == set(c)
    for k in a:
        assert torch.equal(a[k], b[k]) and a[k].stride() == b[k].stride()
        assert torch.equal(a[k], c[k]) and a[k].dtype == c[k].dtype


def test_verify_detects_corruption(tmp_path):
    path = tmp_path / "w.rdc"
    arrays = {"w": np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)}
    np.savez(tmp_path / "w.npz", **arrays)
    rdc("compress", tmp_path / "w.npz", path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.rdc"
    bad.write_bytes(bytes(data))
    proc = rdc("verify", bad, check=False)
    assert proc.returncode == 1
    one_error_line(proc)
    proc = rdc("verify", tmp_path / "w.npz", check=False)
    assert proc.returncode == 1
    one_error_line(proc)


def test_npz_roundtrip_and_quiet(tmp_path):
    arrays = {"a": np.arange(10, dtype=np.int64), "b": np.linspace(0, 1, 33, dtype=np.float32).reshape(3, 11),
              "c": np.array(2.5)}
    np.savez(tmp_path / "x.npz", **arrays)
    proc = rdc("compress", "--quiet", tmp_path / "x.npz", tmp_path / "x.rdc")
    assert proc.stdout == "" and proc.stderr == ""
    rdc("decompress", tmp_path / "x.rdc", tmp_path / "y.npz")
    with np.load(tmp_path / "y.npz") as back:
        assert sorted(back.files) == sorted(arrays)
        for k, v in arrays.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == v.tobytes()
    info = json.loads(rdc("info", "--json", tmp_path / "x.rdc").stdout)
    assert {r["name"]: r["structural"] for r in info["tensors"]}["a"] is True


def test_safetensors_and_sharded_roundtrip(tmp_path):
    import ml_dtypes

    from rdformat.safetensors import read_safetensors, write_safetensors

    t = {"w": np.arange(64, dtype=np.uint16).view(ml_dtypes.bfloat16).reshape(8, 8),
         "h": np.arange(6, dtype=np.float16), "i": np.arange(3, dtype=np.int32)}
    write_safetensors(t, tmp_path / "m.safetensors", metadata={"format": "pt"})
    rdc("compress", tmp_path / "m.safetensors", tmp_path / "m.rdc")
    rdc("decompress", tmp_path / "m.rdc", tmp_path / "o.safetensors")
    assert (tmp_path / "o.safetensors").read_bytes() == (tmp_path / "m.safetensors").read_bytes()
    # sharded
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    write_safetensors({"w": t["w"]}, shard_dir / "model-00001-of-00002.safetensors")
    write_safetensors({"h": t["h"], "i": t["i"]}, shard_dir / "model-00002-of-00002.safetensors")
    wm = {"w": "model-00001-of-00002.safetensors", "h": "model-00002-of-00002.safetensors",
          "i": "model-00002-of-00002.safetensors"}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    rdc("compress", shard_dir / "model.safetensors.index.json", tmp_path / "sh.rdc")
    rdc("decompress", tmp_path / "sh.rdc", tmp_path / "merged.safetensors")
    merged, _ = read_safetensors(tmp_path / "merged.safetensors")
    assert sorted(merged) == sorted(t)
    assert all(merged[k].tobytes() == t[k].tobytes() and merged[k].dtype == t[k].dtype for k in t)


def _tiny_onnx(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "fc.w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fc.b"),
             numpy_helper.from_array(np.array([1, 6], dtype=np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, path)


def test_onnx_cli_roundtrip(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    src = tmp_path / "tiny.onnx"
    _tiny_onnx(src)
    rdc("compress", src, tmp_path / "tiny.rdc")
    info = json.loads(rdc("info", "--json", tmp_path / "tiny.rdc").stdout)
    assert info["graph"]["format"] == "onnx"
    assert {r["name"]: r["structural"] for r in info["tensors"]} == {"fc.w": False, "fc.b": False, "shape": True}
    rdc("decompress", tmp_path / "tiny.rdc", tmp_path / "back.onnx")
    rdc("decompress", "--external-data", "yes", tmp_path / "tiny.rdc", tmp_path / "ext.onnx")
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    outs = []
    for p in (src, tmp_path / "back.onnx", tmp_path / "ext.onnx"):
        onnx.checker.check_model(str(p))
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {"x": x})[0].tobytes())
    assert outs[0] == outs[1] == outs[2]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_checkpoint_refused(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    proc = rdc("compress", evil, tmp_path / "evil.rdc", check=False)
    line = one_error_line(proc)
    assert "refused" in line
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "evil.rdc").exists()


def test_errors_are_one_line(tmp_path):
    cases = [
        ("info", tmp_path / "missing.rdc"),
        ("compress", tmp_path / "missing.pt", tmp_path / "o.rdc"),
        ("decompress", tmp_path / "missing.rdc", tmp_path / "o.pt"),
        ("nonsense",),
        ("compress",),
    ]
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01 not a model")
    cases.append(("compress", tmp_path / "junk.bin", tmp_path / "o.rdc"))
    np.savez(tmp_path / "a.npz", a=np.ones(3))
    cases.append(("compress", "--bits", "4", "--rel-error", "0.01", tmp_path / "a.npz", tmp_path / "o.rdc"))
    cases.append(("compress", "--bits", "-1", tmp_path / "a.npz", tmp_path / "o.rdc"))
    cases.append(("compress", "--size", "10", tmp_path / "a.npz", tmp_path / "o.rdc"))
    cases.append(("compress", "--method", "magic", "--bits", "3", tmp_path / "a.npz", tmp_path / "o.rdc"))
    rdc("compress", tmp_path / "a.npz", tmp_path / "a.rdc")
    cases.append(("decompress", tmp_path / "a.rdc", tmp_path / "o.unknown"))
    cases.append(("decompress", tmp_path / "a.rdc", tmp_path / "o.onnx"))
    cases.append(("compress", tmp_path / "a.rdc", tmp_path / "b.rdc"))
    for args in cases:
        proc = rdc(*args, check=False)
        one_error_line(proc)
        assert proc.returncode in (1, 2), args
    assert not (tmp_path / "o.rdc").exists() and not (tmp_path / "o.onnx").exists()


def test_demo():
    proc = rdc("demo")
    assert "bit-exact: yes" in proc.stdout
    assert "ratio" in proc.stdout and "bytes" in proc.stdout
    # the lossy line shows what a user would accept: a few percent of error at --bits 4
    error = float(re.search(r"relative L2 error ([0-9.]+)%", proc.stdout).group(1))
    assert 0 < error < 5.0, proc.stdout


def test_lossy_compress_through_the_cli(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "m.npz", w=rng.laplace(0, 0.05, (64, 64)).astype(np.float32), b=np.ones(64, np.float32))
    out = rdc("compress", "--bits", "3", tmp_path / "m.npz", tmp_path / "m.rdc")
    assert "lossy" in out.stdout
    info = json.loads(rdc("info", "--json", tmp_path / "m.rdc").stdout)
    rows = {r["name"]: r for r in info["tensors"]}
    assert rows["w"]["codec"] in ("sq", "dq") and 2.5 < rows["w"]["bits_per_weight"] < 4.5
    assert 0 < rows["w"]["rel_error"] < 0.3
    assert rows["b"]["codec"] == "sq" and rows["b"]["rel_error"] < 0.005  # 1-D, 64 values: fine step
    rdc("decompress", tmp_path / "m.rdc", tmp_path / "back.npz")
    back = np.load(tmp_path / "back.npz")
    assert np.array_equal(back["b"], np.ones(64, np.float32))
    rdc("compress", "--bits", "3", "--method", "sq", "--lossless-vectors", tmp_path / "m.npz", tmp_path / "k.rdc")
    rows = {r["name"]: r for r in json.loads(rdc("info", "--json", tmp_path / "k.rdc").stdout)["tensors"]}
    assert rows["w"]["codec"] == "sq" and rows["b"]["codec"] in ("raw", "bytesplit")


def test_surp_compress_and_budgeted_decompress(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.laplace(0, 0.05, (128, 128)).astype(np.float32)
    np.savez(tmp_path / "m.npz", w=w, b=np.ones(128, np.float32))
    out = rdc("compress", "--method", "surp", "--sparsity", "0.9", tmp_path / "m.npz", tmp_path / "m.rdc")
    assert "lossy surp" in out.stdout
    rdc("decompress", tmp_path / "m.rdc", tmp_path / "full.npz")
    size = (tmp_path / "m.rdc").stat().st_size
    rdc("decompress", "--max-bytes", str(size // 3), tmp_path / "m.rdc", tmp_path / "part.npz")
    full, part = np.load(tmp_path / "full.npz"), np.load(tmp_path / "part.npz")
    assert abs(np.mean(full["w"] == 0) - 0.9) < 0.001
    assert np.mean(part["w"] == 0) > np.mean(full["w"] == 0)  # a prefix is a sparser model
    assert np.array_equal(part["b"], np.ones(128, np.float32))  # non-progressive tensors are exact
    import rdformat

    with rdformat.open(tmp_path / "m.rdc", budget=size // 3) as f:
        assert np.array_equal(dict(iter(f))["w"], part["w"])


def test_key_picks_the_state_dict_of_a_checkpoint_holding_several(tmp_path):
    torch = pytest.importorskip("torch")
    gen = {"net.weight": torch.randn(8, 4), "net.bias": torch.randn(8)}
    disc = {"head.weight": torch.randn(1, 8)}
    src = tmp_path / "gan.pt"
    torch.save({"G": gen, "D": disc, "epoch": 3}, src)
    out = tmp_path / "g.rdc"
    assert "--key" in one_error_line(rdc("compress", src, out, check=False))  # ambiguous: the error names the fix
    proc = rdc("compress", src, out, "--key", "G")
    assert "'D'" in proc.stderr and "'epoch'" in proc.stderr  # what is left out is named
    back = tmp_path / "back.pt"
    rdc("decompress", out, back)
    got = torch.load(back, weights_only=True)
    assert list(got) == list(gen) and all(torch.equal(got[k], gen[k]) for k in gen)
    rdc("compress", src, out, "--key", "D")
    rdc("decompress", out, back)
    assert list(torch.load(back, weights_only=True)) == ["head.weight"]
    npz = tmp_path / "w.npz"
    np.savez(npz, w=np.zeros(3, np.float32))
    assert "PyTorch" in one_error_line(rdc("compress", npz, tmp_path / "w.rdc", "--key", "G", check=False))
