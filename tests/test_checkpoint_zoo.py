"""Regressions found by the checkpoint sweep (``tools/sweep_checkpoints.py``): checkpoints as users find
them, through the PyTorch / safetensors / npz adapters and ``rdc``."""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict

import numpy as np
import pytest

import rdformat
from rdformat import npz as rnpz
from rdformat import safetensors as rst
from rdformat.cli import main as rdc_main
from rdformat.errors import InvalidInputError, UnsupportedFeatureError

torch = pytest.importorskip("torch")
from rdformat import torch as rt  # noqa: E402


# ----------------------------------------------------------------------------------------------------
# An unsupported dtype names the tensor


@pytest.mark.parametrize("lossy", [None, {"bits": 4}])
@pytest.mark.parametrize("dtype", [np.complex64, np.dtype("<U2")])
def test_unsupported_dtype_error_names_the_tensor(tmp_path, dtype, lossy):
    """A checkpoint with one complex (or string) array among many: the error must say which one."""
    arrays = {"w": np.ones((8, 8), np.float32), "odd_one": np.zeros((4, 4), dtype)}
    with pytest.raises(InvalidInputError, match="'odd_one'") as info:
        rdformat.save(arrays, tmp_path / "a.rdc", lossy=lossy)
    assert info.value.tensor == "odd_one"
    assert not (tmp_path / "a.rdc").exists()


def test_complex_npz_refused_naming_the_array(tmp_path, capsys):
    src = tmp_path / "m.npz"
    np.savez(src, w=np.ones((4, 4), np.float32), spectrum=np.ones(3, np.complex64))
    with pytest.raises(InvalidInputError, match="'spectrum'"):
        rnpz.compress_file(src, tmp_path / "m.rdc")
    assert rdc_main(["compress", str(src), str(tmp_path / "m.rdc")]) == 1
    err = capsys.readouterr().err
    assert "'spectrum'" in err and "internal error" not in err


def test_unsupported_safetensors_dtype_names_file_and_tensor_once(tmp_path):
    header = json.dumps({"c": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}).encode()
    path = tmp_path / "complex.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    with pytest.raises(UnsupportedFeatureError) as info:
        rst.compress_file(path, tmp_path / "c.rdc")
    message = str(info.value)
    assert "complex.safetensors" in message and message.count("'c'") == 1 and info.value.tensor == "c"


# ----------------------------------------------------------------------------------------------------
# Non-tensor entries: back exactly as they were, or refused


@pytest.mark.parametrize("value", [(1, 2), {1: "a"}, {"shape": (3, 4)}], ids=["tuple", "int-keys", "nested-tuple"])
def test_entries_json_would_change_are_refused(tmp_path, value):
    """JSON turns a tuple into a list and an int key into a string: lossless must not alter an entry
    (refused, naming it), while entries JSON keeps exactly still come back with their types."""
    sd = OrderedDict([("w", torch.ones(2)), ("block._extra_state", value)])
    with pytest.raises(InvalidInputError, match="'block._extra_state'"):
        rt.save(sd)
    path = tmp_path / "extra.pt"
    torch.save(sd, path)
    with pytest.raises(InvalidInputError, match="'block._extra_state'"):
        rt.compress_file(path, tmp_path / "extra.rdc")
    assert not (tmp_path / "extra.rdc").exists()

    extra = {"scale": [1.5, 2, -0.0], "on": True, "n": None, "name": "fp8", "big": 2**70, "nested": {"a": [[]]}}
    sd = OrderedDict([("w", torch.ones(2)), ("block._extra_state", extra), ("epoch", 3), ("lr", 0.1)])
    back = rt.load(rt.save(sd))
    assert list(back) == list(sd)
    for key in ("block._extra_state", "epoch", "lr"):
        assert back[key] == sd[key] and type(back[key]) is type(sd[key])


# ----------------------------------------------------------------------------------------------------
# Training checkpoints: what is not stored is named


def _training_checkpoint() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "config": {"arch": "mlp"}}


def test_training_checkpoint_says_what_is_not_stored(tmp_path, capsys):
    """Only the state_dict of a training checkpoint is stored: the entries left out are named (a plain
    state_dict compresses without a word)."""
    ckpt = _training_checkpoint()
    src = tmp_path / "ckpt.pt"
    torch.save(ckpt, src)
    with pytest.warns(UserWarning, match="under 'model'.*'optimizer', 'epoch', 'config'"):
        rt.compress_file(src, tmp_path / "a.rdc")
    assert rdc_main(["compress", str(src), str(tmp_path / "b.rdc")]) == 0
    assert "warning: ckpt.pt: only the state_dict under 'model' is stored" in capsys.readouterr().err
    back = rt.load_file(tmp_path / "b.rdc")  # what is stored comes back bit for bit
    assert rt.tensors_equal(ckpt["model"], back)

    plain = tmp_path / "sd.pt"
    torch.save(ckpt["model"], plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rt.compress_file(plain, tmp_path / "sd.rdc")


# ----------------------------------------------------------------------------------------------------
# Hostile checkpoints: a deflate bomb is refused before torch.load


def test_zip_checkpoint_that_inflates_far_beyond_its_size_is_refused(tmp_path, monkeypatch):
    """torch.load inflates deflated members in memory (torch never writes them): a ~70 KB file whose
    data.pkl claims 72 MB is refused from the zip directory, before torch.load runs."""
    import zipfile

    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as fh:
            chunk = bytes(1 << 20)
            for _ in range(72):
                fh.write(chunk)
    assert path.stat().st_size < 200_000

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load ran on a deflate bomb")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(rdformat.LimitExceededError, match="unpack to 75,497,472 bytes"):
        rt.compress_file(path, tmp_path / "bomb.rdc")
    with open(path, "rb") as stream, pytest.raises(rdformat.LimitExceededError):
        rt.read_checkpoint(stream)
    assert not (tmp_path / "bomb.rdc").exists()
