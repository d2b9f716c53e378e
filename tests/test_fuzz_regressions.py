"""Regression tests for what the fuzz harnesses found (fuzz/README.md, "Record of runs").

Each test rebuilds the minimized input with rdformat's own writer and checks that the library now
fails with an :class:`rdformat.RdcError` (or succeeds) instead of leaking another exception.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rdformat
from rdformat.errors import CorruptDataError

W = {"w": np.arange(4, dtype=np.float32).reshape(2, 2)}


def nested(depth: int):
    """A JSON value of ``depth`` nested lists (built without recursion)."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def crafted(path: Path, info: dict) -> Path:
    with rdformat.Writer(path, metadata={"rdformat": {"source_format": "pytorch", "adapter_version": 1, **info}}) as w:
        for name, array in W.items():
            w.add(name, array)
    return path


@pytest.mark.parametrize("info", [
    {"extra_entries": {"e": nested(500)}},
    {"state_dict_metadata": [["fc", {"v": nested(500)}]]},
], ids=["extra_entries", "state_dict_metadata"])
def test_deeply_nested_restored_entry_is_refused(tmp_path, info):
    """Found by the `adapters` harness: a value nested ~500 levels deep in `extra_entries` or
    `state_dict_metadata` reached torch.save, whose pickler raised RecursionError."""
    torch_adapter = pytest.importorskip("rdformat.torch")
    src = crafted(tmp_path / "in.rdc", info)
    with pytest.raises(CorruptDataError, match="nests deeper"):
        torch_adapter.decompress_file(src, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_moderately_nested_restored_entry_still_works(tmp_path):
    torch_adapter = pytest.importorskip("rdformat.torch")
    src = crafted(tmp_path / "in.rdc", {"extra_entries": {"e": nested(64)}})
    torch_adapter.decompress_file(src, tmp_path / "out.pt")
    sd = torch_adapter.torch.load(tmp_path / "out.pt", weights_only=True)
    assert sd["e"] == nested(64)


@pytest.mark.parametrize("relative", [[10 ** 400], [-(10 ** 400)], [0], [-1.0], ["1"], [True]])
def test_recorded_sensitivity_out_of_float_range_is_ignored(tmp_path, relative):
    """Found by review for the `adapters` harness (which runs `rdc info`'s summary): a recorded
    sensitivity value beyond float range (a 400-digit JSON integer) made `rdc info` fail with an
    internal OverflowError; an implausible value now means "no sensitivity shown"."""
    from rdformat.cli import summary

    path = tmp_path / "s.rdc"
    with rdformat.Writer(path, metadata={"rdformat": {"source_format": "npz", "adapter_version": 1,
                                                      "sensitivity": {"index": [0], "relative": relative}}}) as w:
        w.add("w", np.zeros(3, np.float32))
    rows = summary.tensor_summary(path)["tensors"]
    assert rows[0]["sensitivity"] is None


def test_recorded_sensitivity_plausible_value_is_shown(tmp_path):
    from rdformat.cli import summary

    path = tmp_path / "s.rdc"
    with rdformat.Writer(path, metadata={"rdformat": {"source_format": "npz", "adapter_version": 1,
                                                      "sensitivity": {"index": [0], "relative": [2]}}}) as w:
        w.add("w", np.zeros(3, np.float32))
    assert summary.tensor_summary(path)["tensors"][0]["sensitivity"] == 2.0
