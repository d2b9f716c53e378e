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
