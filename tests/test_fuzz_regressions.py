"""Regression tests for what the fuzz harnesses found (fuzz/README.md, "Record of runs").

Each test rebuilds the minimized input with rdformat's own writer and checks that the library now
fails with an :class:`rdformat.RdcError` (or succeeds) instead of leaking another exception.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import rdformat
from rdformat.errors import CorruptDataError

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
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


def _with_metadata_text(path: Path, text: str) -> Path:
    """An .rdc file whose META record holds ``text`` as is (ASCII JSON, so escapes such as an unpaired
    surrogate ``\\ud800`` reach the reader); INDEX and END are rebuilt by the fuzz helper's serialiser."""
    sys.path.insert(0, str(FUZZ))
    import rdcfuzz as F

    with rdformat.Writer(path) as w:
        for name, array in W.items():
            w.add(name, array)
    f = F.RdcFile.parse(path.read_bytes())
    f.records.insert(0, F.Record(F.REC_META, 0, text.encode("ascii")))
    path.write_bytes(f.to_bytes())
    return path


@pytest.mark.parametrize("info", [
    '{"source_format":"safetensors","adapter_version":1,"safetensors_metadata":{"format":"\\ud800"}}',
    '{"source_format":"safetensors","adapter_version":1,"safetensors_metadata":{"\\udfff":"pt"}}',
], ids=["value", "key"])
def test_safetensors_metadata_with_unpaired_surrogate(tmp_path, info):
    """Found by the `adapters` harness (campaign of 2026-12-01): a `safetensors_metadata` string holding an
    unpaired surrogate (valid JSON, accepted in metadata) raised UnicodeEncodeError while writing the
    safetensors header. Such a map is now ignored like any map that is not strings to strings."""
    from rdformat import safetensors

    src = _with_metadata_text(tmp_path / "in.rdc", '{"rdformat":%s}' % info)
    safetensors.decompress_file(src, tmp_path / "out.safetensors")
    entries, header_meta = safetensors.inspect(tmp_path / "out.safetensors")
    assert [e.name for e in entries] == list(W) and header_meta is None


def test_shard_metadata_with_unpaired_surrogate_is_refused(tmp_path):
    from rdformat import safetensors

    info = ('{"source_format":"safetensors-sharded","adapter_version":1,"shards":[{"file":"a.safetensors",'
            '"metadata":{"format":"\\ud800"},"tensors":["w"]}]}')
    src = _with_metadata_text(tmp_path / "in.rdc", '{"rdformat":%s}' % info)
    with pytest.raises(CorruptDataError, match="strings to strings"):
        safetensors.decompress_file(src, tmp_path / "model.safetensors.index.json")
