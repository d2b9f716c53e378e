"""safetensors adapter: single files, sharded checkpoints, every dtype, __metadata__, bad headers."""

from __future__ import annotations

import io
import json
import struct

import ml_dtypes
import numpy as np
import pytest

import rdformat
from rdformat import safetensors as rs
from rdformat.adapters import FormatError, UnsafeInputError
from rdformat.errors import InvalidInputError


def bits(a: np.ndarray) -> bytes:
    return np.asarray(a, order="C").tobytes()


def assert_identical(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert bits(a[k]) == bits(b[k]), k


def sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    raw16 = rng.integers(0, 2**16, 64, dtype=np.uint16)
    raw8 = rng.integers(0, 2**8, 32, dtype=np.uint8)
    return {
        "f32": rng.standard_normal((8, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "f16": raw16.view(np.float16).reshape(8, 8),  # every bit pattern, NaN payloads too
        "bf16": raw16.view(ml_dtypes.bfloat16).reshape(4, 16),
        "e4m3": raw8.view(ml_dtypes.float8_e4m3fn),
        "e5m2": raw8.view(ml_dtypes.float8_e5m2),
        "i8": np.arange(-4, 4, dtype=np.int8),
        "u8": np.arange(6, dtype=np.uint8),
        "i16": np.arange(3, dtype=np.int16),
        "u16": np.arange(3, dtype=np.uint16),
        "i32": np.arange(3, dtype=np.int32),
        "u32": np.arange(3, dtype=np.uint32),
        "i64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
        "u64": np.array([2**64 - 1], dtype=np.uint64),
        "bool": np.array([True, False, True]),
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def test_write_read_all_dtypes(tmp_path):
    t = sample()
    path = tmp_path / "a.safetensors"
    rs.write_safetensors(t, path, metadata={"format": "pt", "note": "hi"})
    back, meta = rs.read_safetensors(path)
    assert meta == {"format": "pt", "note": "hi"}
    assert_identical(t, back)
    # header is 8-byte aligned like the reference writer's
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert n % 8 == 0


def test_reference_library_reads_our_files_and_we_read_its(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    g = torch.Generator().manual_seed(0)
    ref = {
        "w": torch.randn(16, 8, generator=g).to(torch.bfloat16),
        "h": torch.randn(3, 3, generator=g).half(),
        "f": torch.randn(5, generator=g),
        "i": torch.arange(4),
        "b": torch.tensor([True, False]),
    }
    theirs = tmp_path / "theirs.safetensors"
    st.save_file(ref, theirs, metadata={"format": "pt"})
    rdc = tmp_path / "x.rdc"
    rs.compress_file(theirs, rdc)
    assert rs.load_metadata(rdc) == {"format": "pt"}
    ours = tmp_path / "ours.safetensors"
    rs.decompress_file(rdc, ours)
    back = st.load_file(ours)
    assert set(back) == set(ref)
    for k in ref:
        assert back[k].dtype == ref[k].dtype and torch.equal(back[k].view(torch.uint8), ref[k].view(torch.uint8)) \
            if ref[k].dtype != torch.bool else torch.equal(back[k], ref[k])
    from safetensors import safe_open

    with safe_open(ours, framework="pt") as fh:
        assert fh.metadata() == {"format": "pt"}


def test_safetensors_rdc_roundtrip_file(tmp_path):
    t = sample()
    src, rdc, out = tmp_path / "s.safetensors", tmp_path / "s.rdc", tmp_path / "o.safetensors"
    rs.write_safetensors(t, src, metadata={"format": "np"})
    rs.compress_file(src, rdc)
    with rdformat.open(rdc) as f:
        assert f.metadata["rdformat"]["source_format"] == "safetensors"
        assert f.metadata["rdformat"]["safetensors_metadata"] == {"format": "np"}
        assert f.info("i64").structural and f.info("bool").structural and not f.info("bf16").structural
        assert f.info("bf16").dtype == np.dtype(ml_dtypes.bfloat16)
    rs.decompress_file(rdc, out)
    assert out.read_bytes() == src.read_bytes()  # same writer, same order: byte-identical file
    back, meta = rs.read_safetensors(out)
    assert meta == {"format": "np"}
    assert_identical(t, back)


def test_bytes_verbs():
    t = sample()
    data = rs.save(t, metadata={"k": "v"})
    assert_identical(t, rs.load(data))
    with rdformat.open(io.BytesIO(data)) as f:
        assert f.metadata["rdformat"]["safetensors_metadata"] == {"k": "v"}


def test_aliases_become_copies(tmp_path):
    rdc = tmp_path / "a.rdc"
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    rdformat.save({"a": w}, rdc, aliases={"b": "a"})
    out = tmp_path / "a.safetensors"
    rs.decompress_file(rdc, out)
    back, _ = rs.read_safetensors(out)
    assert sorted(back) == ["a", "b"] and bits(back["a"]) == bits(back["b"]) == bits(w)


def _make_shards(tmp_path, tensors, n_shards=3):
    names = list(tensors)
    weight_map = {}
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for i in range(n_shards):
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: tensors[k] for k in names[i::n_shards]}
        rs.write_safetensors(part, folder / fname, metadata={"format": "pt", "shard": str(i)})
        weight_map.update({k: fname for k in part})
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
                                 "weight_map": weight_map}))
    return index


def test_sharded_checkpoint(tmp_path):
    t = sample()
    index = _make_shards(tmp_path, t)
    rdc = tmp_path / "sharded.rdc"
    rs.compress_file(index, rdc)
    with rdformat.open(rdc) as f:
        info = f.metadata["rdformat"]
        assert info["source_format"] == "safetensors-sharded"
        assert [s["file"] for s in info["shards"]] == sorted({json.loads(index.read_text())["weight_map"][k] for k in t})
        assert set(f.keys()) == set(t)
    # merged into one file
    merged = tmp_path / "merged.safetensors"
    rs.decompress_file(rdc, merged)
    back, _ = rs.read_safetensors(merged)
    assert_identical({k: t[k] for k in back}, back)
    assert set(back) == set(t)
    # shards reproduced: same file names, same tensors, same per-shard metadata, byte-identical
    out = tmp_path / "out" / "model.safetensors.index.json"
    out.parent.mkdir()
    rs.decompress_file(rdc, out)
    doc = json.loads(out.read_text())
    assert doc["weight_map"] == json.loads(index.read_text())["weight_map"]
    assert doc["metadata"]["total_size"] == sum(a.nbytes for a in t.values())
    for fname in set(doc["weight_map"].values()):
        assert (out.parent / fname).read_bytes() == (index.parent / fname).read_bytes()


def test_sharded_reads_one_shard_at_a_time(tmp_path, monkeypatch):
    index = _make_shards(tmp_path, sample())
    open_files = []
    real_open = rs.open_regular  # shards are opened through it (regular files only)

    def tracking_open(path, **k):
        fh = real_open(path, **k)
        if str(path).endswith(".safetensors"):
            open_files.append(fh)
            assert sum(not f.closed for f in open_files) <= 1, "two shards open at once"
        return fh

    monkeypatch.setattr(rs, "open_regular", tracking_open)
    rs.compress_file(index, tmp_path / "x.rdc")
    monkeypatch.undo()
    assert len(open_files) >= 3


def test_sharded_errors(tmp_path):
    index = _make_shards(tmp_path, sample())
    doc = json.loads(index.read_text())
    doc["weight_map"]["ghost"] = "model-00001-of-00003.safetensors"
    index.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match="missing"):
        rs.compress_file(index, tmp_path / "x.rdc")
    doc["weight_map"] = {"w": "../escape.safetensors"}
    index.write_text(json.dumps(doc))
    with pytest.raises(UnsafeInputError):
        rs.compress_file(index, tmp_path / "x.rdc")
    assert not (tmp_path / "x.rdc").exists()


def _raw_file(header: dict, data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize("blob, message", [
    (b"\x01\x02", "too short"),
    (struct.pack("<Q", 10**12) + b"{}", "limit"),
    (struct.pack("<Q", 50) + b"{}", "past the end"),
    (struct.pack("<Q", 4) + b"[1] ", "not a JSON object"),
    (struct.pack("<Q", 5) + b"{\"a\":", "not valid JSON"),
    (_raw_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8), "needs 8"),
    (_raw_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 8), "overlaps"),
    (_raw_file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "outside"),
    (_raw_file({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}), "invalid shape"),
    (_raw_file({"__metadata__": {"k": 1}}), "strings"),
    (struct.pack("<Q", 14) + b'{"a":1,"a":2} ', "duplicate"),
])
def test_bad_safetensors_refused(tmp_path, blob, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(FormatError, match=message):
        rs.compress_file(path, tmp_path / "x.rdc")
    assert not (tmp_path / "x.rdc").exists()


def test_unsupported_dtype(tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(_raw_file({"c": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8))
    with pytest.raises(rdformat.errors.UnsupportedFeatureError, match="C64"):
        rs.read_safetensors(path)
    with pytest.raises(InvalidInputError):
        rs.write_safetensors({"c": np.zeros(2, dtype=np.complex64)}, tmp_path / "o.safetensors")
