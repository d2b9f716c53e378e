"""Layered SuRP files (format 1.3, issue 14): any prefix of the file refines the whole model.

A budgeted read reads only the first N bytes (plus the index), a truncated file (a partial download)
decodes to the model its complete LAYER records describe, and every path agrees.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import os
from pathlib import Path

import numpy as np
import pytest

import rdformat
from rdformat.format import records as C
from rdformat.format.layers import parse_layer

from helpers import CountingFile, NonSeekable

REPO = Path(__file__).resolve().parents[1]


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(14)
    return {
        "enc.weight": rng.laplace(0, 0.02, (128, 96)).astype(np.float32),
        "enc.bias": rng.normal(0, 0.1, 128).astype(np.float32),
        "mid.weight": rng.laplace(0, 0.08, (64, 128)).astype(np.float32),
        "head.weight": rng.laplace(0, 0.05, (10, 64)).astype(np.float32),
        "steps": np.arange(7, dtype=np.int64),
    }


@pytest.fixture(scope="module")
def surp_file(tmp_path_factory) -> tuple[Path, bytes, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("layered") / "m.rdc"
    rdformat.save(_model(), path, sparsity=0.85, aliases={"tied.weight": "mid.weight"})
    data = path.read_bytes()
    return path, data, rdformat.load(path)


def _records(data: bytes) -> list[tuple[int, int, int]]:
    """(type, offset, end) of every record."""
    out, pos = [], C.FILE_HEADER_SIZE
    while pos < len(data):
        rtype, _flags, length = struct.unpack_from("<HHQ", data, pos)
        out.append((rtype, pos, pos + C.RECORD_OVERHEAD + length))
        pos += C.RECORD_OVERHEAD + length
    return out


def _layers(data: bytes) -> list[tuple[int, int]]:
    return [(start, end) for rtype, start, end in _records(data) if rtype == C.REC_LAYER]


def test_surp_files_are_layered_and_decode_like_the_unlayered_layout(surp_file, tmp_path):
    path, data, full = surp_file
    # 1.5: DMETA; 1.6: the TAIL record
    assert struct.unpack_from("<H", data, 10)[0] in (C.VERSION_MINOR_LAYERS, C.VERSION_MINOR_DICT, C.VERSION_MINOR_TAIL)
    layers = _layers(data)
    assert len(layers) >= 3
    # the first layer already refines several tensors: segments are interleaved across the model
    start, end = layers[0]
    pieces = parse_layer(data[start + C.RECORD_HEADER_SIZE : end - C.RECORD_TRAILER_SIZE], 0)
    assert len({p.tensor for p in pieces}) >= 2
    flat = tmp_path / "flat.rdc"
    rdformat.save(_model(), flat, sparsity=0.85, aliases={"tied.weight": "mid.weight"}, layered=False)
    old = flat.read_bytes()
    assert not _layers(old)  # (its small tensors may still be in PACK records, also 1.3)
    other = rdformat.load(flat)
    assert list(other) == list(full)  # load() keeps file order, layered or not
    for name in full:
        assert full[name].tobytes() == other[name].tobytes(), name
    assert full["tied.weight"] is full["mid.weight"]
    with rdformat.open(path) as f:  # by name: the pieces are found through the index's layers entry
        for name in f.keys():
            assert f.get_tensor(name).tobytes() == full[name].tobytes(), name
        # a layered tensor's stored bytes count its pieces too (rdc info's bits/weight)
        stored = sum(f.info(n).stored_bytes for n in f.keys() if n not in f.aliases)
        assert 0.8 * len(data) < stored < len(data)


def _check_coarser(prefix: dict, full: dict, model: dict) -> dict[str, np.ndarray]:
    """A prefix decodes to the same tensors, lossless ones exact, SuRP ones sparser with the same signs."""
    assert list(prefix) == list(full)
    support = {}
    for name, arr in prefix.items():
        if name in ("enc.bias", "steps"):  # not SuRP (a fine-step vector, an integer tensor): in full
            assert arr.tobytes() == full[name].tobytes()
            continue
        assert arr.shape == full[name].shape and np.isfinite(arr).all()
        kept = arr != 0
        assert not (kept & (full[name] == 0)).any(), name  # elements only join as the prefix grows
        assert (np.sign(arr[kept]) == np.sign(full[name][kept])).all(), name  # and never change sign
        support[name] = kept
    return support


def test_every_prefix_decodes_to_a_sparser_model_or_fails_clearly(surp_file):
    _path, data, full = surp_file
    model = _model()
    layers = _layers(data)
    base = layers[0][0]
    cuts = sorted(set(list(range(0, len(data), max(1, len(data) // 40)))
                      + [e for _s, e in layers] + [e - 1 for _s, e in layers] + [base, base + 15, base + 16]))
    previous = None
    decoded_prefixes = 0
    kept_counts = []
    for cut in cuts:
        cut = min(cut, len(data) - 1)
        with pytest.raises(rdformat.TruncatedError if cut else rdformat.NotRdcError):
            rdformat.load(data[:cut])  # without partial=True a cut file is an error
        try:
            prefix = rdformat.load(data[:cut], partial=True)
        except rdformat.RdcError as exc:
            assert cut < base + C.RECORD_HEADER_SIZE, (cut, exc)  # only before the first layer's header
            assert isinstance(exc, rdformat.TruncatedError if cut else rdformat.NotRdcError)
            continue
        decoded_prefixes += 1
        support = _check_coarser(prefix, full, model)
        if previous is not None:  # a longer prefix never loses a weight
            for name, kept in support.items():
                assert not (previous[name] & ~kept).any(), (cut, name)
        previous = support
        kept_counts.append(sum(int(k.sum()) for k in support.values()))
    assert decoded_prefixes >= 20
    # from all-zero progressive tensors to the whole model, in many steps
    assert kept_counts[0] == 0 and kept_counts[-1] == sum(int((full[n] != 0).sum()) for n in previous)
    assert len(set(kept_counts)) >= 4


def test_partial_read_reports_what_was_cut(surp_file):
    _path, data, full = surp_file
    layers = _layers(data)
    cut = layers[2][1] + 5
    with rdformat.open(io.BytesIO(data[:cut]), partial=True) as f:
        got = dict(iter(f))
        cutinfo = f.truncation
    assert cutinfo is not None and cutinfo.offset == layers[2][1] and cutinfo.layers == 3
    assert cutinfo.layer_bytes == layers[2][1] - layers[0][0]
    assert "truncated at byte" in str(cutinfo)
    # the same on a pipe (unknown size: the cut is met inside the record)
    with rdformat.open(NonSeekable(data[:cut], max_read=61), partial=True) as f:
        piped = dict(iter(f))
        assert f.truncation == cutinfo
    for name in got:
        assert piped[name].tobytes() == got[name].tobytes()
    # a whole file read partially is not truncated
    with rdformat.open(io.BytesIO(data), partial=True) as f:
        dict(iter(f))
        assert f.truncation is None


def test_budget_reads_at_most_n_bytes_plus_the_index(surp_file):
    path, data, full = surp_file
    records = _records(data)
    tail = sum(end - start for rtype, start, end in records if rtype in (C.REC_INDEX, C.REC_END, C.REC_TAIL))
    tail = max(tail, C.END_RECORD_SIZE)  # finding the index reads the last 36 bytes, whatever record ends the file
    # records that loading the index reads too: aliases (resolved) and PACK records (their members' names)
    aliases = sum(end - start for rtype, start, end in records if rtype in (C.REC_ALIAS, *C.PACK_TYPES))
    base = _layers(data)[0][0]
    for n in (0, base, base + 700, len(data) // 2, len(data) - tail - 3, len(data)):
        stream = CountingFile(path)
        with rdformat.open(stream, budget=n) as f:
            got = dict(iter(f))
            by_name = {name: f.get_tensor(name) for name in f.keys()}
        stream.close()
        # the streaming pass reads at most max(n, base) bytes plus the index and end records
        stream = CountingFile(path)
        with rdformat.open(stream, budget=n) as f:
            dict(iter(f))
        # (what is read twice: the alias and PACK records, which loading the index reads, and the header
        # of the first LAYER record beyond the budget, which says where the budget stops)
        assert stream.bytes_read <= max(n, base) + tail + aliases + C.RECORD_HEADER_SIZE, (n, stream.bytes_read)
        stream.close()
        # a budget of n bytes gives the model of the file's first n bytes
        # (a file cut before the header of its first layer is not readable even partially)
        if n >= len(data):
            same = full
        else:
            same = rdformat.load(data[: max(n, base + C.RECORD_HEADER_SIZE)], partial=True)
        for name in full:
            assert got[name].tobytes() == same[name].tobytes(), (n, name)
            assert by_name[name].tobytes() == got[name].tobytes(), (n, name)


def test_salvage_gives_a_complete_file(surp_file):
    _path, data, full = surp_file
    layers = _layers(data)
    cut = layers[1][1] + 100
    fixed, report = rdformat.salvage(data[:cut])
    assert report is not None and report.layers == 2
    assert fixed[: layers[1][1]] == data[: layers[1][1]]
    expect = rdformat.load(data[:cut], partial=True)
    with rdformat.open(fixed) as f:  # a complete file: by name and streaming, no partial needed
        for name in f.keys():
            assert f.get_tensor(name).tobytes() == expect[name].tobytes()
    again, none = rdformat.salvage(fixed)
    assert again == fixed and none is None
    with pytest.raises(rdformat.TruncatedError):  # cut before the layers: nothing to salvage
        rdformat.salvage(data[: layers[0][0] - 3])


def _rdc(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-m", "rdformat", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_cli_decompresses_a_partial_download(surp_file, tmp_path):
    _path, data, full = surp_file
    layers = _layers(data)
    cut_file = tmp_path / "download.rdc"
    cut_file.write_bytes(data[: layers[1][1] + 50])
    refused = _rdc("decompress", cut_file, tmp_path / "a.npz")
    assert refused.returncode != 0 and "truncated" in refused.stderr.lower()
    assert "--partial" in _rdc("decompress", "--help").stdout
    done = _rdc("decompress", "--partial", cut_file, tmp_path / "b.npz")
    assert done.returncode == 0, done.stderr
    assert "truncated at byte" in done.stdout
    expect = rdformat.load(cut_file.read_bytes(), partial=True)
    with np.load(tmp_path / "b.npz") as npz:
        assert npz["mid.weight"].tobytes() == expect["mid.weight"].tobytes()
        assert npz["steps"].tobytes() == full["steps"].tobytes()
