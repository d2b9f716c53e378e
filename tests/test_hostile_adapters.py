"""Hostile inputs, round 2 (issue 15): what a file says is untrusted, and multi-file outputs are atomic.

Every test crafts its input with rdformat's own writer (``rdformat.Writer`` with crafted metadata) or
the record helpers of ``tools/gen_vectors.py``, so the damage reaches the adapters behind the reader.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import rdformat
from rdformat import adapters, convert, npz
from rdformat.errors import (CorruptDataError, FormatError, InvalidInputError, LimitExceededError, RdcError,
                             UnsafeInputError)
from rdformat.format import atomic
from rdformat.format import records as C

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tools import gen_vectors as G  # noqa: E402

W = {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "a.bias": np.arange(3, dtype=np.float32)}


def crafted(path: Path, info: dict, tensors: dict = W, graph: bytes | None = None) -> Path:
    """An .rdc file whose reserved ``"rdformat"`` metadata entry is ``info`` (written as is)."""
    with rdformat.Writer(path, metadata={"rdformat": info}, graph=graph) as w:
        for name, array in tensors.items():
            w.add(name, array)
    return path


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def cli(*args) -> tuple[int, str]:
    """Run ``rdc`` in-process; returns (exit code, stderr)."""
    from contextlib import redirect_stderr, redirect_stdout

    from rdformat.cli import main

    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main([str(a) for a in args])
    return code, err.getvalue()


# ----------------------------------------------------------------------------------------------------
# 1. metadata drives the adapters: every field checked


SHARD = {"source_format": "safetensors-sharded", "adapter_version": 1}


@pytest.mark.parametrize("name", ["../evil.safetensors", "/tmp/evil.safetensors", "sub/evil.safetensors",
                                  "sub\\evil.safetensors", ".hidden.safetensors", "evil.txt", "..",
                                  "model.safetensors.index.json", "c:evil.safetensors", ".safetensors",
                                  "a\x00b.safetensors"])
def test_shard_names_must_be_plain_names_in_the_output_folder(tmp_path, name):
    src = crafted(tmp_path / "x.rdc", {**SHARD, "shards": [{"file": name, "tensors": list(W)}]})
    out = tmp_path / "out"
    out.mkdir()
    before = listing(tmp_path)
    with pytest.raises(RdcError, match="shard|plain"):
        convert.decompress_file(src, out / "model.safetensors.index.json")
    assert listing(out) == {} and listing(tmp_path) == before
    assert not (tmp_path / "evil.safetensors").exists() and not Path("/tmp/evil.safetensors").exists()


@pytest.mark.parametrize("shards", [[1], "x", [{"file": 3, "tensors": ["a.weight"]}], [{"file": "a.safetensors"}],
                                    [{"file": "a.safetensors", "tensors": ["a.weight", 7]}],
                                    [{"file": "a.safetensors", "tensors": ["a.weight"]}],  # a tensor left out
                                    [{"file": "a.safetensors", "tensors": list(W)},
                                     {"file": "A.safetensors", "tensors": []}],  # the same file twice
                                    [{"file": "a.safetensors", "tensors": ["a.weight", "a.bias", "a.bias"]}],
                                    [{"file": "a.safetensors", "tensors": list(W), "metadata": {"k": 1}}]])
def test_malformed_shard_layout_is_an_rdc_error(tmp_path, shards):
    src = crafted(tmp_path / "x.rdc", {**SHARD, "shards": shards})
    with pytest.raises(RdcError):
        convert.decompress_file(src, tmp_path / "m.safetensors.index.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.rdc"]
    code, err = cli("decompress", src, tmp_path / "m.safetensors.index.json")
    assert code == 1 and "internal error" not in err and len(err.strip().splitlines()) == 1


def test_shard_names_never_overwrite_an_existing_file(tmp_path):
    src = crafted(tmp_path / "x.rdc", {**SHARD, "shards": [{"file": "keep.safetensors", "tensors": list(W)}]})
    (tmp_path / "keep.safetensors").write_bytes(b"unrelated")
    convert.decompress_file(src, tmp_path / "m.safetensors.index.json")
    assert (tmp_path / "keep.safetensors").read_bytes() == b"unrelated"
    doc = json.loads((tmp_path / "m.safetensors.index.json").read_text())
    (shard,) = set(doc["weight_map"].values())
    assert shard.startswith("keep.rdc-") and shard.endswith(".safetensors")
    from rdformat.safetensors import read_safetensors

    back, _ = read_safetensors(tmp_path / shard)
    assert all(np.array_equal(back[k], W[k]) for k in W)


def test_index_metadata_must_be_an_object(tmp_path):
    src = crafted(tmp_path / "x.rdc", {**SHARD, "index_metadata": [1, 2],
                                       "shards": [{"file": "a.safetensors", "tensors": list(W)}]})
    with pytest.raises(CorruptDataError, match="index_metadata"):
        convert.decompress_file(src, tmp_path / "m.safetensors.index.json")


PT = {"source_format": "pytorch", "adapter_version": 1}


def test_strides_must_be_dense_for_the_shape(tmp_path):
    """A 286-byte file used to write a 6.4 GB .pt: the strides field sized the storage."""
    src = crafted(tmp_path / "x.rdc", {**PT, "strides": {"a.weight": [1 << 40, 1]}})
    assert src.stat().st_size < 2000
    with pytest.raises(CorruptDataError, match="dense"):
        convert.decompress_file(src, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    code, err = cli("decompress", src, tmp_path / "x.pt")
    assert code == 1 and "dense" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("field", [{"strides": "x"}, {"strides": {"a.weight": [4, True]}},
                                   {"strides": {"a.weight": [4]}}, {"strides": {"a.weight": [-4, 1]}},
                                   {"strides": {"a.weight": [1, 1]}},  # overlapping
                                   {"strides": {"nope": [1]}}, {"extra_entries": [1]},
                                   {"extra_entries": {"a.bias": 1}}, {"key_order": [1, 2]},
                                   {"key_order": ["a.weight"]}, {"key_order": "ab"},
                                   {"state_dict_metadata": [[1]]}, {"state_dict_metadata": [["", 3]]},
                                   {"state_dict_metadata": 5},
                                   # compact fields (adapter fields of spec A.2 since format 1.5)
                                   {"layouts": [1, 0, 1]}, {"layouts": [True]}, {"layouts": [2]}, {"layouts": "F"},
                                   {"layouts": [1], "strides": {"a.weight": [1, 3]}},
                                   {"modules": []}, {"modules": [{"version": 1}, 0]}, {"modules": [3]},
                                   {"modules": [{}, 9, "x"]}, {"modules": [{}, -1, "x"]}, {"modules": [{}, 0, ""]},
                                   {"modules": [{}, True, "x"]}, {"modules": [{}, 0, 5]},
                                   {"modules": [{}], "state_dict_metadata": [["", {}]]}])
def test_malformed_pytorch_fields_are_rdc_errors(tmp_path, field):
    pytest.importorskip("torch")
    src = crafted(tmp_path / "x.rdc", {**PT, **field})
    with pytest.raises(CorruptDataError):
        convert.decompress_file(src, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_compact_layout_and_modules_restored(tmp_path):
    """``layouts`` 1 is the reversed-dimension layout; ``modules`` inserts names into the implied list."""
    torch = pytest.importorskip("torch")
    src = crafted(tmp_path / "x.rdc", {**PT, "layouts": [1], "modules": [{"version": 2}, 1, "act", 3, "z"]})
    convert.decompress_file(src, tmp_path / "x.pt")
    sd = torch.load(tmp_path / "x.pt", weights_only=True)
    assert sd["a.weight"].stride() == (1, 3) and np.array_equal(sd["a.weight"].numpy(), W["a.weight"])
    assert sd["a.bias"].stride() == (1,)
    assert list(sd._metadata) == ["", "act", "a", "z"] and sd._metadata["a"] == {"version": 2}


def test_dense_permuted_strides_still_restored(tmp_path):
    torch = pytest.importorskip("torch")
    src = crafted(tmp_path / "x.rdc", {**PT, "strides": {"a.weight": [1, 3]}})
    convert.decompress_file(src, tmp_path / "x.pt")
    sd = torch.load(tmp_path / "x.pt", weights_only=True)
    assert sd["a.weight"].stride() == (1, 3) and np.array_equal(sd["a.weight"].numpy(), W["a.weight"])


def _onnx_model(weight: np.ndarray):
    onnx = pytest.importorskip("onnx")
    import rdformat.onnx  # noqa: F401  (the adapter module)
    from onnx import TensorProto, helper, numpy_helper

    init = numpy_helper.from_array(weight, "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[1]])],
                              initializer=[init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx, model


def rewrite(data: bytes, path: Path, *, info: dict | None = None, graph_fn=None) -> Path:
    """``data`` rewritten to ``path`` by rdformat's writer, with crafted adapter metadata / graph."""
    from onnx import ModelProto

    with rdformat.open(io.BytesIO(data)) as f:
        meta = dict(f.metadata)
        tensors = {n: f.get_tensor(n) for n in f.keys()}
        graph = f.graph
    if info:
        meta["rdformat"] = {**meta["rdformat"], **info}
    if graph_fn is not None:
        m = ModelProto()
        m.ParseFromString(graph)
        graph_fn(m)
        graph = m.SerializeToString()
    with rdformat.Writer(path, metadata=meta, graph=graph) as w:
        for n, a in tensors.items():
            w.add(n, a)
    return path


def test_onnx_graph_cannot_point_outside_the_container(tmp_path):
    onnx, model = _onnx_model(np.ones((4, 4), np.float32))

    def evil(m):
        for e in m.graph.initializer[0].external_data:
            if e.key == "location":
                e.value = "/etc/passwd"

    bad = rewrite(rdformat.onnx.save(model), tmp_path / "bad.rdc", graph_fn=evil)
    with pytest.raises(CorruptDataError, match="external data"):
        convert.decompress_file(bad, tmp_path / "out.onnx")
    with pytest.raises(CorruptDataError):
        rdformat.onnx.load_file(bad)
    assert not (tmp_path / "out.onnx").exists()


def test_onnx_external_data_flag_must_be_a_boolean(tmp_path):
    onnx, model = _onnx_model(np.ones((4, 4), np.float32))
    path = rewrite(rdformat.onnx.save(model), tmp_path / "m.rdc", info={"external_data": "no"})
    with pytest.raises(CorruptDataError, match="external_data"):
        convert.decompress_file(path, tmp_path / "m.onnx")


# ----------------------------------------------------------------------------------------------------
# 2. multi-file outputs are atomic as a set


class Crash(Exception):
    pass


def crash_on_replace(monkeypatch, n: int) -> None:
    """Make the ``n``-th ``os.replace`` (1-based) fail, as if the process died right there."""
    real = os.replace
    calls = [0]

    def replace(a, b, *args, **kw):
        calls[0] += 1
        if calls[0] == n:
            raise Crash(f"killed before rename {n}")
        return real(a, b, *args, **kw)

    monkeypatch.setattr(os, "replace", replace)


def two_models(tmp_path: Path, shards: bool) -> tuple[Path, Path, dict, dict]:
    rng = np.random.default_rng(0)
    old = {f"t{i}": rng.standard_normal(300).astype(np.float32) for i in range(4)}
    new = {k: v + 1 for k, v in old.items()}
    paths = []
    for name, t in (("old", old), ("new", new)):
        info = {**SHARD, "shards": [{"file": "model-00001-of-00002.safetensors", "tensors": ["t0", "t1"]},
                                    {"file": "model-00002-of-00002.safetensors", "tensors": ["t2", "t3"]}]}
        paths.append(crafted(tmp_path / f"{name}.rdc", info if shards else {}, t))
    return paths[0], paths[1], old, new


def read_sharded(index: Path) -> dict:
    from rdformat.safetensors import read_index, read_safetensors

    _, shards = read_index(index)
    out = {}
    for _, path, _ in shards:
        out.update(read_safetensors(path)[0])
    return out


def same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_sharded_output_is_the_old_or_the_new_set(tmp_path, monkeypatch, n):
    old_rdc, new_rdc, old, new = two_models(tmp_path, shards=True)
    out = tmp_path / "out"
    out.mkdir()
    index = out / "model.safetensors.index.json"
    convert.decompress_file(old_rdc, index)
    crash_on_replace(monkeypatch, n)  # renames: shard 1, shard 2, index
    with pytest.raises(Crash):
        convert.decompress_file(new_rdc, index)
    monkeypatch.undo()
    assert same(read_sharded(index), old)  # the index was not replaced: the old set, whole
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    convert.decompress_file(new_rdc, index)  # a later run completes and removes what is unused
    assert same(read_sharded(index), new)
    listed = set(json.loads(index.read_text())["weight_map"].values())
    assert {p.name for p in out.iterdir()} == listed | {index.name}


def test_sharded_output_replaced_completely(tmp_path):
    old_rdc, new_rdc, old, new = two_models(tmp_path, shards=True)
    index = tmp_path / "model.safetensors.index.json"
    convert.decompress_file(old_rdc, index)
    convert.decompress_file(new_rdc, index)
    assert same(read_sharded(index), new)
    names = set(json.loads(index.read_text())["weight_map"].values())
    assert {p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors"} == names  # old shards removed


def onnx_weights(path: Path) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(path))  # follows the external data reference
    return numpy_helper.to_array(model.graph.initializer[0])


@pytest.mark.parametrize("n", [1, 2])
def test_onnx_with_external_data_is_the_old_or_the_new_pair(tmp_path, monkeypatch, n):
    onnx, model_a = _onnx_model(np.full((32, 32), 1.0, np.float32))
    _, model_b = _onnx_model(np.full((32, 32), 2.0, np.float32))
    a, b = tmp_path / "a.rdc", tmp_path / "b.rdc"
    a.write_bytes(rdformat.onnx.save(model_a))
    b.write_bytes(rdformat.onnx.save(model_b))
    out = tmp_path / "m.onnx"
    rdformat.onnx.decompress_file(a, out, external_data=True)
    assert (tmp_path / "m.onnx.data").exists()
    crash_on_replace(monkeypatch, n)  # renames: data file, model
    with pytest.raises(Crash):
        rdformat.onnx.decompress_file(b, out, external_data=True)
    monkeypatch.undo()
    assert np.all(onnx_weights(out) == 1.0)  # the old pair, whole
    rdformat.onnx.decompress_file(b, out, external_data=True)
    assert np.all(onnx_weights(out) == 2.0)
    datas = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".data"))
    assert len(datas) == 1  # the replaced model's data file and the crashed run's are gone
    rdformat.onnx.decompress_file(a, out, external_data=False)  # inline: no data file left behind
    assert np.all(onnx_weights(out) == 1.0)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".data") or p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------------
# 3. overwriting keeps permissions, follows symlinks; stale temporaries are cleaned up


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions and symlinks")
def test_overwrite_keeps_permissions_and_symlinks(tmp_path):
    target = tmp_path / "m.rdc"
    rdformat.save(W, target)
    os.chmod(target, 0o600)
    rdformat.save({"x": np.ones(3, np.float32)}, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and set(rdformat.load(target)) == {"x"}
    real = tmp_path / "real.npz"
    npz.write_npz(real, W.items())
    os.chmod(real, 0o640)
    link = tmp_path / "link.npz"
    link.symlink_to(real.name)
    npz.write_npz(link, {"y": np.zeros(2)}.items())
    assert link.is_symlink() and os.readlink(link) == real.name
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert set(dict(npz.iter_npz(real))) == {"y"}


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    target = tmp_path / "m.rdc"
    stale = tmp_path / ".m.rdc.abcd1234.tmp"
    stale.write_bytes(b"partial write of a killed process")
    young = tmp_path / ".m.rdc.young123.tmp"
    young.write_bytes(b"a writer that has just started")
    other = tmp_path / ".other.rdc.abcd1234.tmp"
    other.write_bytes(b"another target's")
    old = time.time() - 3 * atomic.STALE_TEMP_GRACE
    for p in (stale, other):
        os.utime(p, (old, old))
    live = atomic.AtomicFile(tmp_path / "m.rdc")  # a live writer of the same target, locked
    os.utime(live._tmp, (old, old))
    try:
        rdformat.save(W, target)
        assert not stale.exists()
        assert young.exists() and other.exists()
        if atomic.fcntl is not None:
            assert os.path.exists(live._tmp)  # its lock says it is in use
    finally:
        live.abort()


# ----------------------------------------------------------------------------------------------------
# 4. sidecar files are covered by the same-file check


def test_compressing_an_index_into_its_own_shard_is_refused(tmp_path):
    from rdformat.safetensors import write_safetensors

    write_safetensors({"a": np.ones(3, np.float32)}, tmp_path / "s1.safetensors")
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"a": "s1.safetensors"}}))
    before = listing(tmp_path)
    with pytest.raises(InvalidInputError, match="input"):
        convert.compress_file(index, tmp_path / "s1.safetensors")
    code, err = cli("compress", index, tmp_path / "s1.safetensors")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert listing(tmp_path) == before


def test_onnx_sidecars_are_inputs_too(tmp_path):
    onnx, model = _onnx_model(np.ones((32, 32), np.float32))
    src = tmp_path / "x.onnx"
    onnx.save_model(model, src, save_as_external_data=True, location="x.onnx.data", size_threshold=0)
    before = listing(tmp_path)
    with pytest.raises(InvalidInputError, match="input"):  # compress into its own external data file
        convert.compress_file(src, tmp_path / "x.onnx.data")
    assert listing(tmp_path) == before
    # decompress onto the input through the sidecar name: out y.onnx whose y.onnx.data is the input
    rdc = tmp_path / "y.onnx.data"
    rdc.write_bytes(rdformat.onnx.save(onnx.load(src)))
    before = listing(tmp_path)
    with pytest.raises(InvalidInputError, match="input"):
        convert.decompress_file(rdc, tmp_path / "y.onnx")
    code, err = cli("decompress", rdc, tmp_path / "y.onnx")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert listing(tmp_path) == before


def test_decompressing_a_shard_onto_the_input_is_refused(tmp_path):
    src = crafted(tmp_path / "in.safetensors", {**SHARD, "shards": [{"file": "in.safetensors",
                                                                       "tensors": list(W)}]})
    before = listing(tmp_path)
    with pytest.raises(InvalidInputError, match="input"):
        convert.decompress_file(src, tmp_path / "m.safetensors.index.json")
    assert listing(tmp_path) == before


# ----------------------------------------------------------------------------------------------------
# 5. the right exception types


def _tensor_config(payload: bytes) -> dict:
    r = C.PayloadReader(payload, 0, "tensor")
    r.take(r.u16("n"), "n")
    r.u16("d")
    rank = r.u8("r")
    r.u8("f")
    for _ in range(rank):
        r.u64("d")
    r.u64("ce")
    r.u64("cc")
    r.take(r.u16("c"), "c")
    return json.loads(r.take(r.u32("g"), "g"))


def test_bad_stats_are_shown_as_unknown(tmp_path):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    # in chunks (a TENSOR record with JSON stats; a single-chunk tensor would go into a PACK record)
    rdformat.save({"w": rng.standard_normal((256, 256)).astype(np.float32)}, buf, bits=4, chunk_bytes=1 << 16)
    recs = G.records(buf.getvalue())
    assert any(rec[0] == C.REC_TENSOR for rec in recs)
    for rec in recs:
        if rec[0] == C.REC_TENSOR:
            cfg = _tensor_config(rec[2])
            cfg["stats"] = {"sparsity": "lots", "err": [1e308]}
            rec[2] = G.set_tensor_field(rec[2], config=json.dumps(cfg))
    path = tmp_path / "s.rdc"
    path.write_bytes(G.assemble(recs))
    from rdformat.cli.summary import tensor_summary

    row = tensor_summary(path)["tensors"][0]
    assert row["sparsity"] is None and row["rel_error"] is None
    code, err = cli("info", path)
    assert code == 0 and err == ""


def test_deep_json_in_safetensors_is_a_format_error(tmp_path):
    from rdformat.safetensors import inspect, read_index

    deep = b"[" * 200_000 + b"]" * 200_000
    head = b'{"a":' + deep + b"}"
    (tmp_path / "d.safetensors").write_bytes(len(head).to_bytes(8, "little") + head)
    with pytest.raises(FormatError, match="nests"):
        inspect(tmp_path / "d.safetensors")
    (tmp_path / "d.safetensors.index.json").write_bytes(b'{"weight_map":' + deep + b"}")
    with pytest.raises(FormatError, match="nests"):
        read_index(tmp_path / "d.safetensors.index.json")
    code, err = cli("compress", tmp_path / "d.safetensors.index.json", tmp_path / "o.rdc")
    assert code == 1 and "internal error" not in err


@pytest.mark.parametrize("shape", [[0, 1 << 62, 1 << 62], [0, 1 << 63], [0] + [1] * 70, [0, 2 ** 64]])
def test_enormous_safetensors_dims_are_rdc_errors(tmp_path, shape):
    from rdformat.safetensors import inspect

    head = json.dumps({"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).encode()
    (tmp_path / "h.safetensors").write_bytes(len(head).to_bytes(8, "little") + head)
    with pytest.raises((FormatError, LimitExceededError)):
        inspect(tmp_path / "h.safetensors")


def test_enormous_onnx_dims_are_rdc_errors(tmp_path):
    onnx, model = _onnx_model(np.ones((4, 4), np.float32))
    t = model.graph.initializer.add()
    t.name, t.data_type = "huge", onnx.TensorProto.FLOAT
    t.dims.extend([0, 1 << 62, 1 << 62])
    t.raw_data = b""
    with pytest.raises((FormatError, LimitExceededError)):
        rdformat.onnx.save(model)


def _npz_with(tmp_path: Path, header: bytes, data: bytes) -> Path:
    import zipfile

    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    path = tmp_path / "h.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data)
    return path


def test_malformed_npy_header_is_a_format_error(tmp_path):
    path = _npz_with(tmp_path, b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), '''", b"\0" * 12)
    with pytest.raises(FormatError, match="header"):
        list(npz.iter_npz(path))
    code, err = cli("compress", path, tmp_path / "o.rdc")
    assert code == 1 and "internal error" not in err and len(err.strip().splitlines()) == 1


def test_npz_claiming_2_40_elements_allocates_nothing(tmp_path):
    import tracemalloc

    path = _npz_with(tmp_path, b"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }", b"\0" * 16)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="claims"):
            list(npz.iter_npz(path))
        with pytest.raises(FormatError):
            convert.compress_file(path, tmp_path / "o.rdc")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 22 and not (tmp_path / "o.rdc").exists()


def test_warnings_do_not_break_the_one_line_error(tmp_path, monkeypatch):
    import warnings

    def noisy(*a, **k):
        warnings.warn("a library warning\nover two lines", UserWarning)
        raise FormatError("the real problem")

    monkeypatch.setattr(convert, "compress_file", noisy)
    (tmp_path / "a.npz").write_bytes(b"x")
    code, err = cli("compress", tmp_path / "a.npz", tmp_path / "o.rdc")
    assert code == 1 and err.strip().splitlines() == ["rdc compress: error: the real problem"]


def test_huge_integer_in_surp_config_is_corrupt_data():
    from rdformat.codecs.surp_stream import SurpConfig

    good = {"norm": 1.0, "t0": 1.0, "decay": 0.5, "umax": 1.0, "offset": 0.5, "seed": 0}
    for key in ("norm", "t0", "decay", "umax", "offset"):
        with pytest.raises(CorruptDataError, match=key):
            SurpConfig.from_json({**good, key: 10 ** 400})
    with pytest.raises(CorruptDataError, match="seed"):
        SurpConfig.from_json({**good, "seed": 10 ** 400})


# ----------------------------------------------------------------------------------------------------
# 6. SuRP replay work is bounded by the stream's size


def test_surp_stream_with_many_passes_over_many_kept_weights_is_refused_fast():
    from rdformat.codecs import surp_decode, surp_stream as S

    count = 1 << 18
    runs = [S.Run(0, S.CLASS_NEW, np.arange(count // 2), np.zeros(count // 2, bool))]
    # then a pass of one new weight each: every pass used to cost work proportional to all kept weights
    runs += [S.Run(p, S.CLASS_NEW, np.array([0]), np.zeros(1, bool)) for p in range(1, 4000)]
    data = S.encode_runs(runs, count)
    cfg = {"norm": 1.0, "t0": 1.0, "decay": 0.99, "umax": 1.0, "offset": 0.5, "seed": 0}
    t = time.perf_counter()
    with pytest.raises(LimitExceededError, match="surp"):
        surp_decode.decode_stream(data, count, cfg)
    assert time.perf_counter() - t < 5.0, "refused only after the quadratic work"
    assert len(data) < 100_000


# ----------------------------------------------------------------------------------------------------
# 7. non-regular files, .npz names and dtypes


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_as_onnx_external_data_is_refused(tmp_path):
    onnx, model = _onnx_model(np.ones((32, 32), np.float32))
    src = tmp_path / "f.onnx"
    onnx.save_model(model, src, save_as_external_data=True, location="f.bin", size_threshold=0)
    (tmp_path / "f.bin").unlink()
    os.mkfifo(tmp_path / "f.bin")
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_catch(convert.compress_file, src, tmp_path / "o.rdc")),
                              daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # unblock the reader so the test process can end, then fail
        with open(tmp_path / "f.bin", "wb"):
            pass
        pytest.fail("compress blocked on a FIFO")
    assert isinstance(result[0], UnsafeInputError) and "regular" in str(result[0])


def _catch(fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


def test_npz_names_that_a_zip_cannot_hold_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="NUL"):
        npz.write_npz(tmp_path / "n.npz", [("a\x00b", np.ones(2)), ("a\x00c", np.zeros(2))])
    with pytest.raises(InvalidInputError, match="twice"):
        npz.write_npz(tmp_path / "n.npz", [("a", np.ones(2)), ("a", np.zeros(2))])
    assert not (tmp_path / "n.npz").exists()


def test_bfloat16_and_float8_npz_round_trip(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    t = {"bf": np.arange(12, dtype=np.uint16).view(ml_dtypes.bfloat16).reshape(3, 4),
         "e4": np.arange(8, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn),
         "e5": np.arange(8, dtype=np.uint8).view(ml_dtypes.float8_e5m2), "f": np.ones(3, np.float32)}
    rdformat.save(t, tmp_path / "a.rdc")
    assert cli("decompress", tmp_path / "a.rdc", tmp_path / "a.npz")[0] == 0
    with np.load(tmp_path / "a.npz") as plain:  # any numpy reads the bit patterns
        assert plain["bf"].dtype == np.uint16 and plain["e4"].dtype == np.uint8
    assert cli("compress", tmp_path / "a.npz", tmp_path / "b.rdc")[0] == 0
    back = rdformat.load(tmp_path / "b.rdc")
    for k in t:
        assert back[k].dtype == t[k].dtype and back[k].tobytes() == t[k].tobytes()


# ----------------------------------------------------------------------------------------------------
# 8. every read path agrees: rdc verify exit 0 <=> rdformat.load succeeds <=> rdc decompress succeeds

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _seed_files() -> list[bytes]:
    rng = np.random.default_rng(1)
    out = []
    buf = io.BytesIO()
    with rdformat.Writer(buf, metadata={"m": 1}) as w:
        w.add("w", rng.standard_normal((8, 8)).astype(np.float32))
        w.add("i", np.arange(5, dtype=np.int64))
        w.add_alias("tied", "w")
    out.append(buf.getvalue())
    buf = io.BytesIO()
    rdformat.save({"q": rng.laplace(0, 0.05, (32, 32)).astype(np.float32), "b": np.ones(70, np.float32)}, buf, bits=3)
    out.append(buf.getvalue())
    buf = io.BytesIO()
    rdformat.save({"s": rng.laplace(0, 0.05, (24, 24)).astype(np.float32)}, buf, sparsity=0.8)
    out.append(buf.getvalue())
    return out


SEEDS = _seed_files()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.integers(0, len(SEEDS) - 1))])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        if not data:
            data = bytearray(b"\0")
    return bytes(data)


def _outcome(fn):
    try:
        return True, fn()
    except RdcError:
        return False, None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_verify_load_and_decompress_agree(data):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.rdc"
        path.write_bytes(data)
        code, _ = cli("verify", path)
        assert code in (0, 1)
        loaded_ok, loaded = _outcome(lambda: rdformat.load(path))
        out = Path(tmp) / "m.npz"
        unpacked_ok, unpacked = _outcome(lambda: (convert.decompress_file(path, out), dict(npz.iter_npz(out)))[1])
        assert (code == 0) == loaded_ok == unpacked_ok, f"verify exit {code}, load ok {loaded_ok}, " \
                                                        f"decompress ok {unpacked_ok}; input {data.hex()}"
        if loaded_ok:
            assert set(loaded) == set(unpacked)
            for k in loaded:
                assert loaded[k].dtype == unpacked[k].dtype and loaded[k].tobytes() == unpacked[k].tobytes()
