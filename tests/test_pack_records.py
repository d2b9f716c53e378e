"""PACK records (format 1.3, spec section 2.6): round trips every way, versions, sharing, info, damage."""

from __future__ import annotations

import io
import struct

import ml_dtypes
import numpy as np
import pytest

import rdformat
from rdformat.errors import RdcError, UnsupportedFeatureError
from rdformat.file.breakdown import breakdown
from rdformat.format import records as C

from helpers import NonSeekable


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(16)
    return {
        "conv1.weight": rng.laplace(0, 0.1, (10, 3, 3, 3)).astype(np.float32),
        "conv1.bias": rng.normal(0, 0.01, 10).astype(np.float32),
        "conv1.scale": np.float32(0.5).reshape(()),
        "conv1.empty": np.zeros((0, 4), np.float32),
        "conv1.shape": np.array([1, -1, 8], np.int64),
        "conv2.weight": rng.laplace(0, 0.05, (16, 10, 3, 3)).astype(np.float32),
        "norm.gain": rng.normal(1, 0.1, 16).astype(ml_dtypes.bfloat16),
        "big.weight": rng.laplace(0, 0.02, (128, 160)).astype(np.float32),  # 80 KiB: a TENSOR record
        "head.weight": rng.laplace(0, 0.1, (4, 32)).astype(np.float32),
        "head.bias": np.zeros(4, np.float32),
    }


def _records(data: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], C.FILE_HEADER_SIZE
    while pos < len(data):
        rtype, flags, length = struct.unpack_from("<HHQ", data, pos)
        out.append((rtype, flags, data[pos + 16 : pos + 16 + length]))
        pos += C.RECORD_OVERHEAD + length
    return out


def _save(tensors, **kwargs) -> bytes:
    buf = io.BytesIO()
    rdformat.save(tensors, buf, **kwargs)
    return buf.getvalue()


def _write(tensors, *, aliases=(), target=None, **options) -> bytes:
    buf = target if target is not None else io.BytesIO()
    options.setdefault("compact", False)  # the 1.3 records; format 1.5's are in test_compact_records.py
    with rdformat.Writer(buf, **options) as w:
        for name, arr in tensors.items():
            w.add(name, arr, structural=name == "conv1.shape")
            for alias, to in aliases:
                if to == name:
                    w.add_alias(alias, to)
    return buf.getvalue() if target is None else b""


def _all_ways(data: bytes) -> list[dict[str, np.ndarray]]:
    out = [rdformat.load(data), dict(iter(rdformat.open(NonSeekable(data))))]
    with rdformat.open(io.BytesIO(data)) as f:
        out.append({n: f.get_tensor(n) for n in f.keys()})
    return out


def test_round_trip_every_way_with_aliases_and_a_tensor_between_packs():
    tensors = _model()
    data = _write(tensors, aliases=[("head.weight_tied", "head.weight"), ("conv1.scale_tied", "conv1.scale")])
    types = [r[0] for r in _records(data)]
    assert types.count(C.REC_PACK) == 4 and C.REC_TENSOR in types  # the aliases and big.weight cut the run
    assert all(flags == C.FLAG_REQUIRED for rtype, flags, _p in _records(data) if rtype == C.REC_PACK)
    assert struct.unpack_from("<HH", data, 8) == (1, 3)
    for way, got in enumerate(_all_ways(data)):
        assert list(got) == ["conv1.weight", "conv1.bias", "conv1.scale", "conv1.scale_tied", "conv1.empty",
                             "conv1.shape", "conv2.weight", "norm.gain", "big.weight", "head.weight",
                             "head.weight_tied", "head.bias"]
        for name, arr in tensors.items():
            assert got[name].dtype == arr.dtype and got[name].shape == arr.shape
            assert got[name].tobytes() == arr.tobytes(), name
        if way < 2:  # streaming returns one array for a tensor and its aliases
            assert got["head.weight_tied"] is got["head.weight"]
    with rdformat.open(io.BytesIO(data)) as f:
        assert f.aliases == {"head.weight_tied": "head.weight", "conv1.scale_tied": "conv1.scale"}
        info = f.info("conv1.shape")
        assert info.structural and info.dtype == np.int64 and info.shape == (3,)
        assert f.info("conv1.weight").codec == "bytesplit" and not f.info("conv1.weight").structural


def test_packs_are_smaller_and_1_2_files_unchanged_without_them():
    tensors = _model()
    packed = _write(tensors)
    plain = _write(tensors, pack_records=False)
    assert len(packed) < len(plain) - 200
    assert C.REC_PACK not in [r[0] for r in _records(plain)]
    assert struct.unpack_from("<HH", plain, 8) == (1, 1)
    # small tensors of one dtype share one coded chunk: fewer groups than float32 members
    members, groups = C.parse_pack(_records(packed)[0][2], 0)
    f32 = [m for m in members if m.dtype_code == 12]
    assert len({m.group for m in f32}) < len(f32)


def test_minor_version_is_3_only_with_a_pack():
    big = {"w": np.random.default_rng(0).standard_normal((200, 200)).astype(np.float32)}  # 160 KB: no pack
    assert struct.unpack_from("<HH", _write(big), 8) == (1, 1)
    assert struct.unpack_from("<HH", _write({"s": np.float32(1).reshape(())}), 8) == (1, 3)
    # a target that cannot seek back announces the newest minor up front
    sink = io.BytesIO()

    class Pipe:
        def write(self, b):
            return sink.write(b)

        def flush(self):
            pass

        def seekable(self):
            return False

    _write(big, target=Pipe())
    assert struct.unpack_from("<HH", sink.getvalue(), 8) == (1, C.VERSION_MINOR)
    assert rdformat.load(sink.getvalue())["w"].tobytes() == big["w"].tobytes()


def test_a_stream_target_at_an_offset_gets_its_header_patched_in_place():
    buf = io.BytesIO(b"prefix")
    buf.seek(6)
    _write({"s": np.arange(3, dtype=np.int16)}, target=buf)
    data = buf.getvalue()
    assert data[:6] == b"prefix" and struct.unpack_from("<HH", data, 14) == (1, 3)
    assert rdformat.load(data[6:])["s"].tolist() == [0, 1, 2]


def test_an_older_reader_refuses_a_pack_cleanly():
    data = _write({"s": np.arange(3, dtype=np.int16)})
    src = C.Source(io.BytesIO(data))
    C.read_file_header(src)
    head = C.read_record_head(src)
    assert head.rtype == C.REC_PACK and head.rtype not in range(1, 11) and head.flags & C.FLAG_REQUIRED
    with pytest.raises(UnsupportedFeatureError, match="required; upgrade"):
        C.skip_record(src, head)  # what a 1.2 reader does with an unknown type


def test_lossy_members_binary_stats_and_shared_dq_groups():
    tensors = {k: v for k, v in _model().items() if v.dtype == np.float32}
    data = _save(tensors, bits=4, method="dq")
    back = rdformat.load(data)
    with rdformat.open(io.BytesIO(data)) as f:
        info = f.info("conv2.weight")
        assert info.codec == "dq"
        stats = info.codec_config["stats"]
        assert 0 < stats["err"] < 0.2 and 0 <= stats["sparsity"] <= 1
        for n in tensors:
            assert f.get_tensor(n).tobytes() == back[n].tobytes()
    err = np.sqrt(sum(np.sum((back[n].astype(np.float64) - a) ** 2) for n, a in tensors.items())
                  / sum(np.sum(a.astype(np.float64) ** 2) for a in tensors.values()))
    assert err < 0.08
    # dq members filling whole chains (256 elements) may share a group; conv1.weight (270) may not lead one
    for rtype, _f, payload in _records(data):
        if rtype in C.PACK_TYPES:
            members, groups = C.parse_pack_record(rtype, payload, 0)
            for g in groups:
                if g.codec_id == "dq" and len(g.members) > 1:
                    assert all(members[i].numel % 256 == 0 for i in g.members[:-1])


def test_breakdown_accounts_for_every_byte():
    tensors = _model()
    for data in (_write(tensors), _write(tensors, pack_records=False), _save(tensors, bits=4),
                 _save(tensors, bits=3, method="sq")):
        b = breakdown(data)
        assert sum(b["categories"].values()) == len(data) == b["file_bytes"]
        assert 0 < b["payload_bytes"] < len(data)
    b = breakdown(_save(tensors, bits=4))
    assert b["lossy_weights"] == sum(a.size for n, a in tensors.items() if a.ndim >= 2 and a.size >= 16)
    assert 2.5 < b["lossy_bits_per_weight"] < 6


@pytest.mark.parametrize("seed", range(3))
def test_damaged_pack_files_raise_rdc_errors(seed):
    """Every truncation and a sample of byte flips of a packed file: an RdcError or the same tensors."""
    tensors = {"a.w": np.arange(12, dtype=np.float32).reshape(3, 4) / 7, "a.b": np.arange(3, dtype=np.int16),
               "b.w": np.float32(2).reshape(())}
    data = _write(tensors)
    rng = np.random.default_rng(seed)
    cases = [data[:n] for n in range(0, len(data), 3)]
    for pos in rng.integers(0, len(data), 40):
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        cases.append(bytes(bad))
    for bad in cases:
        for read in (rdformat.load, lambda d: {n: rdformat.open(io.BytesIO(d)).get_tensor(n) for n in tensors}):
            try:
                got = read(bad)
            except RdcError:
                continue
            for n, a in tensors.items():  # accepted: only when the damage missed the data (e.g. a CRC flip
                assert got[n].tobytes() == a.tobytes()  # cannot be accepted: CRCs cover every byte)


def test_a_queued_tensor_is_copied_when_added():
    """Packing defers coding: an array the caller reuses after add() must not change the file."""
    buf = io.BytesIO()
    reused = np.arange(6, dtype=np.float32)
    with rdformat.Writer(buf) as w:
        w.add("first", reused)
        reused[:] = -1
        w.add("second", reused)
    back = rdformat.load(buf.getvalue())
    assert back["first"].tolist() == [0, 1, 2, 3, 4, 5] and back["second"].tolist() == [-1] * 6


def test_a_file_opened_for_appending_gets_the_newest_minor_up_front(tmp_path):
    path = tmp_path / "a.rdc"
    with open(path, "ab") as fh:
        _write({"s": np.arange(3, dtype=np.int16)}, target=fh)
    data = path.read_bytes()
    assert struct.unpack_from("<HH", data, 8) == (1, C.VERSION_MINOR)
    assert rdformat.load(data)["s"].tolist() == [0, 1, 2]
