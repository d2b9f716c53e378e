"""PyTorch adapter: checkpoints, state_dicts, tied weights, pruning, dtypes and refused pickles."""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import rdformat  # noqa: E402
from rdformat import torch as rt  # noqa: E402
from rdformat.errors import InvalidInputError  # noqa: E402

MODELS = Path(__file__).parents[2] / "shared" / "models"
MTCNN = ["pnet", "rnet", "onet"]


def _bits(t: torch.Tensor) -> np.ndarray:
    return rt.to_numpy(t).reshape(-1).view(np.uint8)


def assert_state_dicts_identical(a, b, *, strides: bool = True) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert np.array_equal(_bits(a[k]), _bits(b[k])), k
        if strides:
            assert a[k].stride() == b[k].stride(), k


# ----------------------------------------------------------------------------------------------------
# real checkpoints


@pytest.mark.parametrize("versions", ["same", "differ", "unordered", "missing"])
def test_module_map_compact_or_explicit(versions):
    """The module-version map takes the compact ``modules`` field when it describes the map exactly, else
    the explicit list; both restore the same map, in order."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(2, 2)))
    sd = net.state_dict()
    meta = sd._metadata
    if versions == "differ":
        meta["0"] = {"version": 7}
    elif versions == "unordered":
        meta.move_to_end("0")
    elif versions == "missing":
        del meta["2"]
    back = rt.load(rt.save(sd))
    assert list(back._metadata.items()) == list(meta.items())
    with rdformat.open(rt.save(sd)) as f:
        info = f.metadata["rdformat"]
    assert ("modules" in info) == (versions == "same") and ("state_dict_metadata" in info) != (versions == "same")


def test_transposed_and_permuted_layouts_restored():
    """A reversed-dimension layout is one 0/1 entry in ``layouts``; other dense layouts keep ``strides``."""
    sd = {"t": torch.arange(12.0).reshape(3, 4).t(), "c": torch.zeros(2),
          "p": torch.arange(24.0).reshape(2, 3, 4).permute(0, 2, 1)}
    data = rt.save(sd)
    with rdformat.open(data) as f:
        info = f.metadata["rdformat"]
    assert info["layouts"] == [1] and set(info["strides"]) == {"p"}
    back = rt.load(data)
    assert_state_dicts_identical(sd, back)


@pytest.mark.parametrize("name", MTCNN)
def test_mtcnn_pt_roundtrip(tmp_path, name):
    src = MODELS / f"{name}.pt"
    if not src.exists():
        pytest.skip(f"{src} not available")
    rdc, back = tmp_path / f"{name}.rdc", tmp_path / f"{name}.pt"
    rt.compress_file(src, rdc)
    rt.decompress_file(rdc, back)
    a = torch.load(src, weights_only=True)
    b = torch.load(back, weights_only=True)
    assert_state_dicts_identical(a, b)
    assert list(a._metadata.items()) == list(b._metadata.items())  # module versions, in order
    assert rt.tensors_equal(a, b)
    with rdformat.open(rdc) as f:
        assert f.metadata["rdformat"]["source_format"] == "pytorch"
        assert all(f.info(k).codec for k in f.keys())


@pytest.mark.parametrize("name", MTCNN)
def test_mtcnn_pt_to_safetensors(tmp_path, name):
    st = pytest.importorskip("safetensors.torch")
    src = MODELS / f"{name}.pt"
    if not src.exists():
        pytest.skip(f"{src} not available")
    rdc, out = tmp_path / f"{name}.rdc", tmp_path / f"{name}.safetensors"
    rt.compress_file(src, rdc)
    from rdformat import safetensors as rs

    rs.decompress_file(rdc, out)
    a = torch.load(src, weights_only=True)
    b = st.load_file(out)  # the reference implementation reads what we wrote
    assert_state_dicts_identical(a, OrderedDict((k, b[k]) for k in a), strides=False)
    assert set(a) == set(b)


def test_mtcnn_load_into_module(tmp_path):
    src = MODELS / "pnet.pt"
    if not src.exists():
        pytest.skip(f"{src} not available")

    from tools.mtcnn import PNet  # facenet_pytorch's PNet layout, shared with the task benchmark

    ref = PNet()
    ref.load_state_dict(torch.load(src, weights_only=True))
    rdc = tmp_path / "pnet.rdc"
    rt.compress_file(src, rdc)
    model = PNet()
    rt.load_into(model, rdc)
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for y0, y1 in zip(ref(x), model(x)):
            assert torch.equal(y0, y1)


# ----------------------------------------------------------------------------------------------------
# state_dicts built here


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("bf16", torch.randn(4).to(torch.bfloat16))
        self.register_buffer("mask", torch.tensor([True, False, True]))


def test_tied_weights_stored_once_and_restored_tied(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    model.bn.num_batches_tracked += 7
    sd = model.state_dict()
    path = tmp_path / "tied.rdc"
    rt.save_file(sd, path)
    with rdformat.open(path) as f:
        assert f.aliases == {"head.weight": "embed.weight"}
        assert f.info("head.weight").alias_of == "embed.weight"
        assert f.info("bn.num_batches_tracked").structural
    back = rt.load_file(path)
    assert list(back) == list(sd)
    assert back["head.weight"] is back["embed.weight"]
    assert_state_dicts_identical(sd, back)
    assert back["bn.num_batches_tracked"].dtype == torch.int64
    assert int(back["bn.num_batches_tracked"]) == 7
    # written back as .pt, the two names are still one storage
    pt = tmp_path / "tied.pt"
    rt.decompress_file(path, pt)
    loaded = torch.load(pt, weights_only=True)
    assert loaded["head.weight"].untyped_storage().data_ptr() == loaded["embed.weight"].untyped_storage().data_ptr()
    # and straight into a module
    fresh = Tied()
    rt.load_into(fresh, path)
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)
    assert int(fresh.bn.num_batches_tracked) == 7
    assert torch.equal(fresh.bf16.view(torch.int16), model.bf16.view(torch.int16))
    assert torch.equal(fresh.mask, model.mask)


def test_tied_stored_once_is_smaller():
    w = torch.randn(256, 64)
    one = rt.save({"a": w})
    two = rt.save({"a": w, "b": w})
    assert len(two) < len(one) + 1024


def _all_dtypes() -> dict:
    g = torch.Generator().manual_seed(1)
    raw16 = torch.randint(-(2**15), 2**15, (33,), dtype=torch.int16, generator=g)
    raw8 = torch.randint(0, 256, (17,), dtype=torch.uint8, generator=g)
    sd = {
        "f32": torch.randn(3, 5, generator=g),
        "f64": torch.randn(4, dtype=torch.float64, generator=g),
        "f16": torch.randn(2, 3, generator=g).half(),
        "bf16_bits": raw16.clone().view(torch.bfloat16),  # every bit pattern, NaN payloads included
        "f16_bits": raw16.clone().view(torch.float16),
        "e4m3": raw8.clone().view(torch.float8_e4m3fn),
        "e5m2": raw8.clone().view(torch.float8_e5m2),
        "bool": torch.tensor([[True, False], [False, True]]),
        "u8": torch.arange(7, dtype=torch.uint8),
        "i8": torch.arange(-3, 4, dtype=torch.int8),
        "i16": torch.arange(-5, 5, dtype=torch.int16),
        "i32": torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32),
        "i64": torch.tensor([-(2**63), 2**63 - 1]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "nbt": torch.tensor(12345),
    }
    for name in ("uint16", "uint32", "uint64"):
        if hasattr(torch, name):
            sd[name] = torch.from_numpy(np.array([0, 7, 2**16 - 1], dtype=name))
    return sd


def test_every_dtype_bit_exact(tmp_path):
    sd = _all_dtypes()
    back = rt.load(rt.save(sd))
    assert_state_dicts_identical(sd, back)
    pt = tmp_path / "all.pt"
    rt.write_checkpoint(sd, pt)
    rdc = tmp_path / "all.rdc"
    rt.compress_file(pt, rdc)
    rt.decompress_file(rdc, tmp_path / "back.pt")
    assert_state_dicts_identical(sd, torch.load(tmp_path / "back.pt", weights_only=True))
    with rdformat.open(rdc) as f:
        assert f.info("i64").structural and f.info("bool").structural
        assert not f.info("f32").structural
        assert f.info("bf16_bits").dtype.name == "bfloat16"


def test_non_contiguous_layouts_keep_strides():
    sd = {
        "t": torch.randn(6, 4).t(),
        "cl": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "view": torch.randn(10)[2:6],  # not dense over its storage: stored contiguous
    }
    back = rt.load(rt.save(sd))
    assert back["t"].stride() == sd["t"].stride()
    assert back["cl"].is_contiguous(memory_format=torch.channels_last)
    assert_state_dicts_identical(sd, back, strides=False)


def test_pruned_model_is_folded(tmp_path):
    prune = pytest.importorskip("torch.nn.utils.prune")
    torch.manual_seed(0)

    def make():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))

    model = make()
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    prune.random_unstructured(model[3], "weight", amount=0.3)
    sd = model.state_dict()
    assert "0.weight_orig" in sd and "0.weight_mask" in sd
    pt = tmp_path / "pruned.pt"
    torch.save(sd, pt)
    rdc = tmp_path / "pruned.rdc"
    rt.compress_file(pt, rdc)
    back = rt.load_file(rdc)
    assert not any(k.endswith(("_orig", "_mask")) for k in back)
    assert sorted(back) == ["0.bias", "0.weight", "3.bias", "3.weight"]
    for idx in ("0", "3"):
        w, mask = back[f"{idx}.weight"], sd[f"{idx}.weight_mask"]
        pruned = w[mask == 0]
        assert pruned.numel() > 0
        assert torch.all(pruned == 0) and not torch.signbit(pruned).any()  # exact +0, never -0
        assert torch.equal(w[mask != 0], sd[f"{idx}.weight_orig"][mask != 0])
    with rdformat.open(rdc) as f:
        assert sorted(f.metadata["rdformat"]["folded_pruning"]) == ["0.weight", "3.weight"]
    plain = make()
    rt.load_into(plain, rdc)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))


def test_nested_checkpoint_keys(tmp_path):
    sd = nn.Linear(3, 2).state_dict()
    for key in ("state_dict", "model", "model_state_dict"):
        path = tmp_path / f"{key}.pth"
        torch.save({"epoch": 3, key: sd, "optimizer": {"lr": 0.1}}, path)
        got, found = rt.read_checkpoint(path, return_key=True)
        assert found == key
        assert_state_dicts_identical(sd, got)
        rt.compress_file(path, tmp_path / "x.rdc")
        with rdformat.open(tmp_path / "x.rdc") as f:
            assert f.metadata["rdformat"]["checkpoint_key"] == key


def test_checkpoint_without_state_dict_is_refused(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"epoch": 3, "notes": "hello"}, path)
    with pytest.raises(InvalidInputError, match="no state_dict"):
        rt.read_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(InvalidInputError):
        rt.read_checkpoint(tmp_path / "junk.pt")


class _Evil:
    """Unpickling this would run code that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_refused_and_code_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    zip_ckpt = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Evil(marker)}, zip_ckpt)
    legacy = tmp_path / "evil_legacy.pth"  # old non-zip format: a bare pickle stream
    legacy.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    for path in (zip_ckpt, legacy):
        with pytest.raises(rt.UnsafeCheckpointError, match="refused") as err:
            rt.read_checkpoint(path)
        assert isinstance(err.value, InvalidInputError)
        assert "weights_only" in str(err.value) or "arbitrary" in str(err.value)
        with pytest.raises(rt.UnsafeCheckpointError):
            rt.compress_file(path, tmp_path / "out.rdc")
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "out.rdc").exists()


def test_pickled_module_refused(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(nn.Linear(2, 2), path)  # a whole module needs arbitrary unpickling
    with pytest.raises(rt.UnsafeCheckpointError):
        rt.read_checkpoint(path)


def test_load_into_checks_dtypes_and_fit(tmp_path):
    sd = nn.Linear(3, 2).state_dict()
    path = tmp_path / "lin.rdc"
    rt.save_file(sd, path)
    with pytest.raises(InvalidInputError, match="float64"):
        rt.load_into(nn.Linear(3, 2).double(), path)
    with pytest.raises(InvalidInputError, match="does not fit"):
        rt.load_into(nn.Linear(4, 2), path, check_dtypes=False)
    result = rt.load_into(nn.Sequential(nn.Linear(3, 2)), path, strict=False)
    assert "0.weight" in result.missing_keys


def test_bytes_verbs_and_user_metadata():
    sd = OrderedDict(w=torch.randn(4, 4), b=torch.zeros(4, dtype=torch.int32))
    data = rt.save(sd, metadata={"arch": "tiny"})
    assert data[:4] == b"\x89RDC"
    back = rt.load(data)
    assert_state_dicts_identical(sd, back)
    with rdformat.open(io.BytesIO(data)) as f:
        assert f.metadata["arch"] == "tiny"
    with pytest.raises(InvalidInputError):
        rt.save(sd, metadata={"rdformat": 1})
    with pytest.raises(InvalidInputError):
        rt.save({"x": object()})


def test_extra_state_and_unsupported_tensors():
    sd = OrderedDict(w=torch.ones(2), cfg_extra_state={"scale": 2.0})
    back = rt.load(rt.save(sd))
    assert list(back) == ["w", "cfg_extra_state"]
    assert back["cfg_extra_state"] == {"scale": 2.0}
    with pytest.raises(InvalidInputError):
        rt.save({"c": torch.ones(2, dtype=torch.complex64)})
    with pytest.raises(InvalidInputError):
        rt.save({"s": torch.ones(2, 2).to_sparse()})


def test_flat_checkpoint_with_scalars(tmp_path):
    path = tmp_path / "flat.pt"
    torch.save({"w": torch.ones(2), "epoch": 3, "arch": "mlp"}, path)
    back = rt.load(rt.save(rt.read_checkpoint(path)))
    assert list(back) == ["w", "epoch", "arch"] and back["epoch"] == 3 and back["arch"] == "mlp"


def test_surp_with_tied_weights(tmp_path):
    """SuRP goes through the adapter like the other lossy methods: tied weights stay one tensor."""
    torch.manual_seed(1)
    model = Tied()
    sd = model.state_dict()
    path = tmp_path / "tied-surp.rdc"
    rt.save_file(sd, path, lossy=rdformat.Lossy(method="surp", sparsity=0.7))
    with rdformat.open(path) as f:
        assert f.metadata["surp"]["target"]  # the SuRP plan's target is recorded
        assert f.aliases == {"head.weight": "embed.weight"}
        assert f.info("embed.weight").codec == "surp"
        assert f.info("bn.num_batches_tracked").codec != "surp"  # integers are never pruned
    back = rt.load_file(path)
    assert back["head.weight"] is back["embed.weight"]
    pruned = [back[k] for k in ("embed.weight", "conv.weight")]
    sparsity = sum(int((t == 0).sum()) for t in pruned) / sum(t.numel() for t in pruned)
    assert abs(sparsity - 0.7) < 0.02
    assert torch.equal(back["bn.running_var"], sd["bn.running_var"])  # 1-D tensors stay exact
