"""Hostile inputs: regression tests for what fuzzing and review found in the decoder, and the limits
that keep a stranger's file from costing more than its size (decompression bombs, forged lengths,
super-linear work).

Every test builds its file from records with valid CRCs, so the damage reaches the code behind them.
"""

from __future__ import annotations

import builtins
import io
import os
import tempfile
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import rdformat
from rdformat.format import records as C
from rdformat.file import reader as R
from rdformat.entropy import FrequencyTable, ans
from rdformat.errors import (
    ChecksumError,
    CorruptDataError,
    InvalidInputError,
    LimitExceededError,
    TruncatedError,
    UnsupportedFeatureError,
)

from helpers import NonSeekable

ROOT = Path(__file__).resolve().parents[1]


def _gen_vectors():
    from tools import gen_vectors

    return gen_vectors


G = _gen_vectors()
W = np.arange(6, dtype="<f4")


def tensor(name: str, dtype_code: int, dims, chunk_elements: int, chunk_count: int, codec: str = "raw",
           config: str = "{}") -> list:
    return [C.REC_TENSOR, 0, G.tensor_payload(name, dtype_code, list(dims), chunk_elements, chunk_count, codec, config)]


def raw_chunk(index: int, data: bytes) -> list:
    return G.chunk(index, data)


def alias(name: str, target: str) -> list:
    return [C.REC_ALIAS, 0, C.pack_str(name) + C.pack_str(target)]


META = [C.REC_META, 0, b'{"m":1}']
W_RECS = [tensor("w", 12, [6], 6, 1), raw_chunk(0, W.tobytes())]


def modes(data: bytes):
    """The three reading paths, each a thunk returning {name: array}."""

    def by_name():
        with rdformat.open(io.BytesIO(data)) as f:
            return {n: f.get_tensor(n) for n in f.keys()}

    def by_path():  # a path is read through a memory mapping (POSIX)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "hostile.rdc")
            with builtins.open(path, "wb") as f:
                f.write(data)
            return rdformat.load(path)

    return {"bytes": lambda: rdformat.load(data), "stream": lambda: rdformat.load(NonSeekable(data)),
            "by_name": by_name, "path": by_path}


def assert_all_raise(data: bytes, cls: type, only=("bytes", "stream", "by_name", "path")) -> None:
    for mode, fn in modes(data).items():
        if mode in only:
            with pytest.raises(cls):
                fn()


def peak_traced(fn) -> tuple[int, BaseException | None]:
    """Peak bytes allocated (Python and numpy) while running ``fn``, and the exception it raised."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    err = None
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - returned to the caller
        err = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, err


# ------------------------------------------------------------------------------------------------
# findings (each failed before the fix named in its docstring)


def test_empty_tensor_with_huge_dimension_is_an_rdc_error():
    """numpy cannot represent shape (0, 2**62): reshape raised ValueError out of load()."""
    data = G.assemble([tensor("e", 2, [0, 1 << 62], 1, 0), tensor("f", 12, [1 << 40, 1 << 40, 0], 1, 0)])
    assert_all_raise(data, LimitExceededError)


def test_refused_allocation_is_an_rdc_error(monkeypatch):
    """An output allocation the machine refuses (MemoryError) escaped load(); now LimitExceededError."""

    class NoMemory:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def empty(*args, **kwargs):
            raise MemoryError("Unable to allocate 60.0 GiB")

    data = G.assemble([META] + W_RECS)
    monkeypatch.setattr(R, "np", NoMemory())
    assert_all_raise(data, LimitExceededError)


def test_failed_index_load_leaves_reader_consistent():
    """After keys() failed on a bad alias, get_tensor() hit a half-built index (TypeError)."""
    data = G.assemble(W_RECS + [alias("a", "missing")])
    with rdformat.open(io.BytesIO(data)) as f:
        for _ in range(2):
            with pytest.raises(CorruptDataError):
                f.keys()
            with pytest.raises(CorruptDataError):
                f.get_tensor("a")
            with pytest.raises(CorruptDataError):
                f.get_tensor("w")


def test_duplicate_names_refused_when_streaming():
    """load() silently kept the second of two tensors named alike (the index check caught it only by name)."""
    w2 = [tensor("w", 12, [6], 6, 1), raw_chunk(0, (W + 1).tobytes())]
    assert_all_raise(G.assemble(W_RECS + w2), CorruptDataError)
    assert_all_raise(G.assemble(W_RECS + [alias("w", "w")]), CorruptDataError)


def test_alias_must_follow_an_existing_tensor():
    """A stream gave a generic RdcError for a missing target; bytes/by-name accepted an alias before its target."""
    assert_all_raise(G.assemble(W_RECS + [alias("a", "nope")]), CorruptDataError)
    assert_all_raise(G.assemble([alias("a", "w")] + W_RECS), CorruptDataError)
    assert_all_raise(G.assemble(W_RECS + [alias("a", "w"), alias("b", "a")]), CorruptDataError)


def test_streaming_checks_the_index_against_the_records():
    """load() never parsed the index: a file whose index disagrees with its records loaded fine."""
    good = G.assemble([META] + W_RECS + [tensor("x", 2, [3], 3, 1), raw_chunk(0, b"abc")])
    recs = G.records(good)
    idx = recs[-2]
    entries = C.parse_index(idx[2], 0, None)
    for change in ("drop", "rename", "offset", "length", "kind"):
        e = [(x.kind, x.name, x.offset, x.length) for x in entries]
        if change == "drop":
            e = e[:-1]
        elif change == "rename":
            e[-1] = (e[-1][0], "y", e[-1][2], e[-1][3])
        elif change == "offset":
            e[-1] = (e[-1][0], e[-1][1], e[-1][2] + 1, e[-1][3])
        elif change == "length":
            e[-1] = (e[-1][0], e[-1][1], e[-1][2], e[-1][3] + 1)
        else:
            e[-1] = (C.ENTRY_ALIAS, e[-1][1], e[-1][2], e[-1][3])
        payload = C.index_payload(e)
        bad = bytearray(good[: len(good) - C.END_RECORD_SIZE - len(idx[2]) - C.RECORD_OVERHEAD])
        index_at = len(bad)
        bad += C.frame(C.REC_INDEX, payload)
        bad += C.frame(C.REC_END, C.end_payload(index_at, len(bad) + C.END_RECORD_SIZE))
        for mode in ("bytes", "stream"):
            with pytest.raises(CorruptDataError):
                modes(bytes(bad))[mode]()


def test_layout_rules_enforced_on_every_path():
    """Two META records, META after GRAPH or after a tensor, END without INDEX, records after INDEX."""
    graph = [C.REC_GRAPH, 0, C.pack_str("onnx") + b"g"]
    assert_all_raise(G.assemble([META, META] + W_RECS), CorruptDataError)
    assert_all_raise(G.assemble([graph, META] + W_RECS), CorruptDataError)
    assert_all_raise(G.assemble([graph, graph] + W_RECS), CorruptDataError)
    assert_all_raise(G.assemble(W_RECS + [META]), CorruptDataError)
    no_index = G.assemble(W_RECS, index=False) + C.frame(C.REC_END, C.end_payload(16, 0))
    assert_all_raise(no_index, CorruptDataError, only=("bytes", "stream"))
    good = G.assemble(W_RECS)
    end = good[-C.END_RECORD_SIZE:]
    late = good[: -C.END_RECORD_SIZE] + C.frame(99, b"x")
    late += C.frame(C.REC_END, C.end_payload(C.parse_end(end[16:32], 0)[0], len(late) + C.END_RECORD_SIZE))
    assert_all_raise(late, CorruptDataError, only=("bytes", "stream"))


def test_trailing_bytes_after_end_refused_on_files():
    """load(bytes) accepted junk after the END record (a stream legitimately stops at END)."""
    data = G.assemble(W_RECS) + b"junk"
    with pytest.raises(CorruptDataError):
        rdformat.load(data)
    with pytest.raises(TruncatedError):  # by name: the last 36 bytes are not an END record
        rdformat.open(io.BytesIO(data)).keys()
    assert list(rdformat.load(NonSeekable(data))) == ["w"]


def test_by_name_checks_stored_length_and_leading_records():
    """get_tensor() ignored an extra CHUNK record; an index listing a META that is not at the start passed."""
    data = G.assemble(W_RECS + [raw_chunk(1, W.tobytes())])
    with pytest.raises(CorruptDataError):
        rdformat.open(io.BytesIO(data)).get_tensor("w")
    data = G.assemble(W_RECS + [META])
    with pytest.raises(CorruptDataError):
        rdformat.open(io.BytesIO(data)).keys()


def test_index_entries_in_order_without_overlap():
    good = G.assemble(W_RECS + [tensor("x", 2, [3], 3, 1), raw_chunk(0, b"abc")])
    recs = G.records(good)
    entries = [(e.kind, e.name, e.offset, e.length) for e in C.parse_index(recs[-2][2], 0, None)]
    for bad_entries in (entries[::-1], [entries[0], (entries[1][0], "x", entries[0][2] + 4, entries[1][3])],
                        [(entries[0][0], "w", entries[0][2], 4)] + entries[1:]):
        recs2 = [list(r) for r in recs]
        recs2[-2][2] = C.index_payload(bad_entries)
        data = G.assemble(recs2, index=False)
        with pytest.raises(CorruptDataError):
            rdformat.open(io.BytesIO(data)).keys()


def test_truncated_file_by_name_is_truncated_not_checksum():
    """By name, a cut file reported a CRC mismatch (it read a record header inside the data)."""
    data = G.assemble([META] + W_RECS)
    for cut in (len(data) - 1, len(data) - 20, len(data) // 2):
        with pytest.raises(TruncatedError):
            rdformat.open(io.BytesIO(data[:cut])).keys()
    damaged = bytearray(data)
    damaged[len(data) - C.END_RECORD_SIZE + 12] ^= 1  # the END header's own CRC
    with pytest.raises(ChecksumError):
        rdformat.open(io.BytesIO(bytes(damaged))).keys()


def test_short_stream_header_is_truncated_like_a_short_file():
    """A 10-byte stream said "not an .rdc file" where the same bytes as a file said "truncated"."""
    head = C.file_header()[:10]
    assert_all_raise(head, TruncatedError)


# ------------------------------------------------------------------------------------------------
# limits: declared sizes are checked before anything is allocated


def test_bomb_in_a_tiny_seekable_file_allocates_nothing():
    """A tensor declaring 4 GiB in 16 chunks in a 1 KB file: refused from the file size before the
    output is allocated. For raw chunks the check counts the element bytes too (it used to count only
    29 bytes per chunk, so this file allocated 4 GiB before failing); bytesplit planes need >= 2 bytes."""
    for codec, cfg, pad in (("raw", "{}", 700), ("bytesplit", '{"transform":"none"}', 0)):
        recs = [tensor("bomb", 2, [1 << 32], 1 << 28, 16, codec, cfg), raw_chunk(0, b"\x01\x00" + bytes(pad))]
        data = G.assemble(recs)
        for load in (rdformat.load, lambda d: rdformat.open(io.BytesIO(d)).get_tensor("bomb")):
            peak, err = peak_traced(lambda: load(data))
            assert isinstance(err, TruncatedError), err
            assert peak < 8 << 20, peak


def test_bomb_on_a_stream_allocates_only_what_arrives():
    """On a stream the size is unknown: the output grows with the chunks that actually arrive."""
    recs = [tensor("bomb", 2, [1 << 31], 1 << 20, 1 << 11), raw_chunk(0, bytes(1 << 20)), raw_chunk(1, bytes(1 << 20))]
    data = G.assemble(recs, index=False)
    peak, err = peak_traced(lambda: rdformat.load(NonSeekable(data, max_read=1 << 16)))
    assert isinstance(err, TruncatedError), err
    assert peak < 48 << 20, peak  # a few MiB of chunks, not 2 GiB


def test_tensor_over_the_reader_cap_refused_first():
    data = G.assemble([tensor("big", 13, [1 << 20], 1 << 15, 32), raw_chunk(0, bytes(8 << 15))])
    with pytest.raises(LimitExceededError):
        rdformat.load(data, limits=rdformat.Limits(max_tensor_bytes=1 << 20))
    with pytest.raises(LimitExceededError):  # also the format's 256 MiB decoded-chunk limit
        rdformat.load(G.assemble([tensor("c", 13, [1 << 26], 1 << 26, 1)]))


def test_forged_record_length_allocates_nothing():
    """A META record declaring 60 MB: refused from the file size; a stream reads it in 1 MiB pieces."""
    head = C.file_header() + C.record_head(C.REC_META, 60 << 20) + b"{}" * 100
    peak, err = peak_traced(lambda: rdformat.load(head))
    assert isinstance(err, TruncatedError) and peak < 2 << 20, (err, peak)
    peak, err = peak_traced(lambda: rdformat.load(NonSeekable(head)))
    assert isinstance(err, TruncatedError) and peak < 4 << 20, (err, peak)
    with pytest.raises(LimitExceededError):
        rdformat.load(G.assemble([[C.REC_META, 0, b'{"a":"' + b"x" * 200 + b'"}']] + W_RECS),
                      limits=rdformat.Limits(max_meta_bytes=100))
    with pytest.raises(LimitExceededError):  # over the format's hard limit for the record type
        rdformat.load(NonSeekable(C.file_header() + C.record_head(C.REC_TENSOR, 2 << 20)))


def test_forged_lane_and_table_counts_allocate_nothing():
    """An ANS block declaring 2**31 lanes, a table declaring 65536 symbols: checked against the bytes."""
    table = FrequencyTable(12, [0, 1], [4000, 96])
    ans.decode(ans.encode(np.array([0, 1, 0]), table), 3, table)  # warm up (backend self-check)
    block = struct.pack("<I", (1 << 31)) + bytes(16)
    peak, err = peak_traced(lambda: ans.decode(block, 1 << 31, table, out_dtype=np.uint8))
    assert isinstance(err, TruncatedError) and peak < 1 << 20, (err, peak)
    raw = bytes([16]) + bytes([0x80, 0x80, 0x04]) + bytes(40)  # Q=16, m=65536
    peak, err = peak_traced(lambda: FrequencyTable.from_bytes(raw))
    assert isinstance(err, TruncatedError) and peak < 1 << 20, (err, peak)


def test_index_count_checked_against_its_bytes():
    data = G.assemble(W_RECS)
    recs = G.records(data)
    recs[-2][2] = struct.pack("<Q", 1 << 60) + recs[-2][2][8:]
    bad = G.assemble(recs, index=False)
    peak, err = peak_traced(lambda: rdformat.open(io.BytesIO(bad)).keys())
    assert isinstance(err, CorruptDataError) and peak < 1 << 20, (err, peak)


# ------------------------------------------------------------------------------------------------
# decoding time is linear in the file and output sizes


def _best_time(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _many_records(n: int) -> bytes:
    recs = []
    for i in range(n):
        recs += [tensor(f"t{i}", 2, [2], 1, 2), raw_chunk(0, b"a"), raw_chunk(1, b"b")]
        recs.append(alias(f"a{i}", f"t{i}"))
    return G.assemble(recs)


@pytest.mark.parametrize("path", ["bytes", "stream", "by_name"])
def test_time_is_linear_in_records(path):
    small, big = _many_records(300), _many_records(2400)  # 8x the records
    t_small = _best_time(modes(small)[path])
    t_big = _best_time(modes(big)[path])
    assert t_big < 24 * t_small + 0.05, (t_small, t_big)  # linear: ~8x; quadratic would be ~64x


def test_time_is_linear_in_chunks():
    def one_tensor(chunks: int) -> bytes:
        return G.assemble([tensor("t", 4, [chunks], 1, chunks, "bytesplit", '{"transform":"none"}')]
                          + [raw_chunk(i, b"\x01\x07\x01\x00") for i in range(chunks)])

    small, big = one_tensor(500), one_tensor(4000)
    t_small = _best_time(lambda: rdformat.load(small))
    t_big = _best_time(lambda: rdformat.load(big))
    assert t_big < 24 * t_small + 0.05, (t_small, t_big)


# ------------------------------------------------------------------------------------------------
# decompression bombs: total-output and compression-ratio limits (issue 15, item 5)


def zeros_file(tensors: int, numel: int, chunk_elements: int) -> bytes:
    """float32 tensors of zeros in bytesplit chunks of 8 bytes each, whatever their element count
    (four single-symbol byte planes): the shape of a decompression bomb, valid at any size."""
    recs = []
    count = -(-numel // chunk_elements)
    for t in range(tensors):
        recs.append(tensor(f"z{t}", 12, [numel], chunk_elements, count, "bytesplit", '{"transform":"none"}'))
        recs += [raw_chunk(i, b"\x01\x00" * 4) for i in range(count)]
    return G.assemble(recs)


def limited_modes(data: bytes, limits: rdformat.Limits):
    """:func:`modes` with reader limits."""

    def by_name():
        with rdformat.open(io.BytesIO(data), limits=limits) as f:
            return {n: f.get_tensor(n) for n in f.keys()}

    return {"bytes": lambda: rdformat.load(data, limits=limits),
            "stream": lambda: rdformat.load(NonSeekable(data), limits=limits), "by_name": by_name}


def test_bomb_shaped_file_is_valid_when_small():
    out = rdformat.load(zeros_file(2, 1000, 300))
    assert list(out) == ["z0", "z1"] and out["z1"].shape == (1000,) and out["z1"].dtype == np.float32
    assert not out["z0"].any() and not out["z1"].any()


def test_few_hundred_bytes_declaring_a_gib_fail_before_allocating():
    """336 bytes declaring 1 GiB decoded (the issue's 341-byte bomb): every path refuses it from the
    headers, naming the tensor, the limit and how to raise it; nothing large is allocated."""
    data = zeros_file(1, 1 << 28, 1 << 26)
    assert len(data) < 400
    for mode, fn in modes(data).items():
        peak, err = peak_traced(fn)
        assert isinstance(err, LimitExceededError), (mode, err)
        assert err.tensor == "z0" and err.offset is not None, (mode, err)
        assert "1024x" in str(err) and "Limits.max_ratio" in str(err) and "--max-ratio" in str(err), str(err)
        assert peak < 1 << 20, (mode, peak)


def test_output_limit_counts_the_whole_read():
    data = zeros_file(6, 1 << 18, 1 << 16)  # six tensors of 1 MiB each, about 1.6 KB of file
    for mode, fn in limited_modes(data, rdformat.Limits(max_output_bytes=5 << 20)).items():
        with pytest.raises(LimitExceededError, match="--max-output") as exc:
            fn()
        assert exc.value.tensor == "z5", mode
    for mode, fn in limited_modes(data, rdformat.Limits(max_output_bytes=6 << 20)).items():
        assert len(fn()) == 6, mode
    with rdformat.open(data, limits=rdformat.Limits(max_output_bytes=1 << 20)) as f:
        for _ in range(10):  # by name, reading one tensor again costs nothing more
            assert f.get_tensor("z1").nbytes == 1 << 20
        with pytest.raises(LimitExceededError):
            f.get_tensor("z2")


def test_ratio_limit_has_a_floor_and_counts_the_whole_read():
    data = zeros_file(6, 1 << 18, 1 << 16)
    assert 1024 * len(data) < 2 << 20
    for mode, fn in limited_modes(data, rdformat.Limits(ratio_floor_bytes=2 << 20)).items():
        with pytest.raises(LimitExceededError, match="ratio") as exc:
            fn()
        assert exc.value.tensor == "z2", mode  # z0 and z1 fill the 2 MiB floor exactly
    for mode, fn in limited_modes(data, rdformat.Limits(ratio_floor_bytes=6 << 20)).items():
        assert len(fn()) == 6, mode
    for mode, fn in limited_modes(data, rdformat.Limits(max_ratio=None, max_output_bytes=None,
                                                         ratio_floor_bytes=0)).items():
        assert len(fn()) == 6, mode


def test_default_floor_lets_small_legitimate_files_load():
    """An all-zero tensor compresses far beyond 1024x (the floor admits it); a 99%-sparse SuRP tensor
    about 256x (under the ratio)."""
    rng = np.random.default_rng(0)
    for tensors, kwargs, ratio in (({"zeros": np.zeros((1024, 1024), np.float32)}, {}, 1024),
                                   ({"s": rng.laplace(0, 1, (512, 512)).astype(np.float32)}, {"sparsity": 0.99}, 100)):
        buf = io.BytesIO()
        rdformat.save(tensors, buf, **kwargs)
        data = buf.getvalue()
        name, array = next(iter(tensors.items()))
        assert array.nbytes > ratio * len(data)
        for mode, fn in modes(data).items():
            out = fn()[name]
            assert out.shape == array.shape and np.mean(out == 0) > 0.98, mode


def test_stream_memory_follows_the_bytes_read():
    """On a stream the output of a tensor grows with the chunks that arrive and are charged: a 256 MiB
    tensor of tiny chunks fails after a few of them, with the memory of those few."""
    data = zeros_file(1, 1 << 26, 1 << 16)  # 1024 chunks of 256 KiB decoded, 37 bytes stored each
    limits = rdformat.Limits(ratio_floor_bytes=1 << 20)
    peak, err = peak_traced(lambda: rdformat.load(NonSeekable(data), limits=limits))
    assert isinstance(err, LimitExceededError) and err.record == "chunk", err
    assert peak < 4 << 20, peak
    # a legitimate stream whose output the bytes read so far justify only gradually still loads
    w = np.arange(1 << 21, dtype=np.float32)  # 8 MiB, raw: 1 stored byte per decoded byte
    raw = G.assemble([tensor("w", 12, [w.size], 1 << 18, 8)]
                     + [raw_chunk(i, w[i << 18:(i + 1) << 18].tobytes()) for i in range(8)])
    got = rdformat.load(NonSeekable(raw, max_read=1 << 16), limits=rdformat.Limits(max_ratio=2, ratio_floor_bytes=1 << 20))
    assert got["w"].tobytes() == w.tobytes()


def test_limits_are_validated():
    for bad in ({"max_output_bytes": -1}, {"max_ratio": 0}, {"max_ratio": float("inf")}, {"ratio_floor_bytes": None},
                {"max_tensor_bytes": 1.5}):
        with pytest.raises(InvalidInputError):
            rdformat.Limits(**bad)


def _cli(*args) -> tuple[int, str]:
    """Run ``rdc`` in-process; (exit code, stderr)."""
    from contextlib import redirect_stderr, redirect_stdout

    from rdformat.cli import main

    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main([str(a) for a in args])
    return code, err.getvalue()


def test_rdc_verify_and_decompress_refuse_a_3kb_file_claiming_10gib(tmp_path):
    """`rdc verify` used to decode 10 GiB from 3 KB; now it fails from the headers, in little memory."""
    data = zeros_file(20, 1 << 27, 1 << 26)  # 20 tensors of 512 MiB
    assert len(data) < 4096
    path = tmp_path / "bomb.rdc"
    path.write_bytes(data)
    for args in (("verify", path), ("decompress", path, tmp_path / "out.npz")):
        peak, res = 0, None
        tracemalloc.start()
        try:
            res = _cli(*args)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        code, err = res
        assert code == 1 and len(err.strip().splitlines()) == 1 and "--max-ratio" in err, err
        assert "'z0'" in err and peak < 4 << 20, (err, peak)
    assert not (tmp_path / "out.npz").exists()


def test_rdc_limit_flags(tmp_path):
    path = tmp_path / "z.rdc"
    path.write_bytes(zeros_file(6, 1 << 18, 1 << 16))  # 6 MiB decoded
    code, err = _cli("verify", path, "--max-output", "5MiB")
    assert code == 1 and "--max-output" in err and "'z5'" in err, err
    assert _cli("verify", path, "--max-output", "6MiB") == (0, "")
    code, err = _cli("decompress", path, tmp_path / "o.npz", "--max-output", "5M")
    assert code == 1 and "--max-output" in err and not (tmp_path / "o.npz").exists()
    assert _cli("decompress", path, tmp_path / "o.npz", "--max-output", "none", "--max-ratio", "2")[0] == 0
    from rdformat.cli.commands import _limits_from_args, build_parser

    args = build_parser().parse_args(["verify", "f", "--max-output", "8G", "--max-ratio", "0"])
    assert _limits_from_args(args) == rdformat.Limits(max_output_bytes=8 * 10 ** 9, max_ratio=None)
    args = build_parser().parse_args(["decompress", "f", "o.npz", "--max-output", "off", "--max-ratio", "16"])
    assert _limits_from_args(args) == rdformat.Limits(max_output_bytes=None, max_ratio=16.0)
    assert _limits_from_args(build_parser().parse_args(["verify", "f"])) is None
    with pytest.raises(SystemExit) as exc:  # a usage error
        _cli("verify", path, "--max-ratio", "-1")
    assert exc.value.code == 2


# ------------------------------------------------------------------------------------------------
# every read path applies the same rules (issue 15, item 8)


def _with_index(good: bytes, edit) -> bytes:
    """``good`` with its INDEX entries replaced by ``edit(entries)`` (END rebuilt to match)."""
    recs = G.records(good)
    entries = [(e.kind, e.name, e.offset, e.length) for e in C.parse_index(recs[-2][2], 0, None)]
    body = good[: len(good) - C.END_RECORD_SIZE - len(recs[-2][2]) - C.RECORD_OVERHEAD]
    out = bytearray(body)
    out += C.frame(C.REC_INDEX, C.index_payload(edit(entries)))
    out += C.frame(C.REC_END, C.end_payload(len(body), len(out) + C.END_RECORD_SIZE))
    return bytes(out)


X_RECS = [tensor("x", 2, [3], 3, 1), raw_chunk(0, b"abc")]


def _every_path_raises(tmp_path: Path, data: bytes, cls: type) -> None:
    """load (bytes, stream), open().get_tensor by name, rdc verify and rdc decompress all refuse ``data``."""
    assert_all_raise(data, cls)
    path = tmp_path / "f.rdc"
    path.write_bytes(data)
    code, err = _cli("verify", path)
    assert code == 1 and err.count("\n") == 1, err
    code, err = _cli("decompress", path, tmp_path / "o.npz")
    assert code == 1 and err.count("\n") == 1 and not (tmp_path / "o.npz").exists(), err


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_index_omitting_a_tensor_is_refused_on_every_path(tmp_path, where):
    """By name, a tensor the index left out was invisible: decompress dropped it while verify refused."""
    y_recs = [tensor("y", 2, [2], 2, 1), raw_chunk(0, b"yz")]
    good = G.assemble([META] + W_RECS + X_RECS + y_recs)
    drop = {"first": "w", "middle": "x", "last": "y"}[where]
    bad = _with_index(good, lambda es: [e for e in es if e[1] != drop])
    _every_path_raises(tmp_path, bad, CorruptDataError)


def test_unknown_required_record_in_the_body_is_refused_on_every_path(tmp_path):
    """An unknown REQUIRED record between tensors (not in the index) was skipped by name."""
    data = G.assemble(W_RECS + [[99, C.FLAG_REQUIRED, b"future"]] + X_RECS)
    _every_path_raises(tmp_path, data, UnsupportedFeatureError)
    # an unknown optional record there is skipped by every path alike
    data = G.assemble(W_RECS + [[99, 0, b"future"]] + X_RECS)
    for mode, fn in modes(data).items():
        assert list(fn()) == ["w", "x"], mode
    path = tmp_path / "ok.rdc"
    path.write_bytes(data)
    assert _cli("verify", path)[0] == 0


def test_unlisted_record_overlapping_a_listed_one_is_refused():
    """The gap before a listed record must hold whole records: one running into it is corrupt."""
    good = G.assemble(W_RECS + [[99, 0, b"future"]] + X_RECS)
    recs = G.records(good)
    # grow the unknown record by 3 bytes, eating into x's TENSOR record
    at = len(C.file_header()) + sum(len(r[2]) + C.RECORD_OVERHEAD for r in recs[:2])
    forged = bytearray(good)
    forged[at:at + 16] = C.record_head(99, len(b"future") + 3)  # an unknown record's payload CRC is not read
    with pytest.raises(CorruptDataError, match="overlaps"):
        rdformat.open(io.BytesIO(bytes(forged))).keys()


# ------------------------------------------------------------------------------------------------
# metadata is parsed lazily (issue 15, item 9)


def test_large_metadata_is_parsed_only_when_used(monkeypatch):
    """A large META made get_tensor on a 4-byte tensor parse all of it (seconds, GBs); now reading a tensor
    by name never parses it, and .metadata parses it once."""
    meta = {f"k{i}": [i, {"x": i}] for i in range(40_000)}  # ~0.9 MB of JSON, ~10x that as objects
    buf = io.BytesIO()
    with rdformat.Writer(buf, metadata=meta, compress_records=False) as w:
        w.add("t", np.ones(1, np.float32))
    data = buf.getvalue()
    parses = []
    real = C.parse_json_object

    def counting(text, what, *a, **k):
        if what.startswith("metadata"):
            parses.append(len(text))
        return real(text, what, *a, **k)

    monkeypatch.setattr(C, "parse_json_object", counting)
    with rdformat.open(io.BytesIO(data)) as f:
        peak, err = peak_traced(lambda: f.get_tensor("t"))
        assert err is None and peak < 1 << 20 and parses == []
        assert f.metadata == meta and f.metadata == meta and len(parses) == 1
    peak, err = peak_traced(lambda: rdformat.open(io.BytesIO(data)).get_tensor("t"))
    assert err is None and peak < 2 * len(data) + (1 << 20) and len(parses) == 1  # the text's bytes, no objects
    rdformat.load(data)  # a whole read checks the metadata too
    assert len(parses) == 2
    with pytest.raises(LimitExceededError):  # and the cap still applies to the stored text
        rdformat.open(data, limits=rdformat.Limits(max_meta_bytes=len(data) // 2))


def test_invalid_metadata_is_refused_by_whole_reads_and_by_metadata_access(tmp_path):
    for text in (b'{"a": ', b"[1]", b"[" * 100_000 + b"]" * 100_000):
        data = G.assemble([[C.REC_META, 0, text]] + W_RECS)
        with rdformat.open(io.BytesIO(data)) as f:
            assert f.get_tensor("w").tobytes() == W.tobytes()  # by name: the metadata is not needed
            with pytest.raises(CorruptDataError):
                f.metadata
        for load in (lambda: rdformat.load(data), lambda: rdformat.load(NonSeekable(data))):
            with pytest.raises(CorruptDataError):
                load()
        path = tmp_path / "m.rdc"
        path.write_bytes(data)
        assert _cli("verify", path)[0] == 1
        assert _cli("decompress", path, tmp_path / "o.npz")[0] == 1


# ------------------------------------------------------------------------------------------------
# numpy ANS decoder: memory linear in the file and output sizes (issue 15, item 6)


def _tiny_chunks_file(chunks: int, count: int = 16) -> tuple[bytes, np.ndarray]:
    """A uint8 tensor of ``chunks`` bytesplit chunks of ``count`` elements, each an ANS plane with its own
    16-bit-precision table (as a file of tiny tensors or chunks has)."""
    table = FrequencyTable(16, [0, 1], [40000, 25536])
    values = (np.arange(count) % 3 == 0).astype(np.uint8)
    block = ans.encode(values, table, lanes=1)
    data = bytes([2]) + table.to_bytes() + len(block).to_bytes(8, "little") + block  # PLANE_ANS
    recs = [tensor("t", 2, [chunks * count], count, chunks, "bytesplit", '{"transform":"none"}')]
    recs += [raw_chunk(i, data) for i in range(chunks)]
    return G.assemble(recs), np.tile(values, chunks)


def test_many_tiny_tables_cost_memory_linear_in_the_file():
    """Every table was expanded to 2**16 slots: 64 KiB per tiny chunk (a 1.1 MB file took 2.7 GB)."""
    data, want = _tiny_chunks_file(100)
    assert len(data) < 8 << 10
    with ans.use_backend("numpy"):
        for mode in ("bytes", "by_name"):
            peak, err = peak_traced(modes(data)[mode])
            assert err is None, err
            assert peak < 64 * len(data) + (1 << 20), (mode, peak)  # was 13.5 MB (100 x 2 x 64 KiB)
        assert rdformat.load(data)["t"].tobytes() == want.tobytes()


# ------------------------------------------------------------------------------------------------
# JSON nesting: one fixed bound for every path (issue 15, item 8)


def test_json_nesting_bound_is_the_same_on_every_path(tmp_path):
    """Python's parser fails at the recursion limit counted from the caller's stack depth, so a deep text
    could parse by one path (rdc verify) and not by another (rdc decompress): now 512 levels, fixed."""
    for depth, ok in ((C.MAX_JSON_DEPTH, True), (C.MAX_JSON_DEPTH + 1, False)):
        text = b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
        data = G.assemble([[C.REC_META, 0, text]] + W_RECS)
        path = tmp_path / "d.rdc"
        path.write_bytes(data)
        if ok:
            inner, levels = rdformat.open(data).metadata["a"], 1
            while inner:
                inner, levels = inner[0], levels + 1
            assert inner == [] and levels == depth - 1
            assert _cli("verify", path)[0] == 0 and _cli("decompress", path, tmp_path / "o.npz")[0] == 0
        else:
            with pytest.raises(CorruptDataError, match="nests deeper than 512"):
                rdformat.open(data).metadata
            assert_all_raise(data, CorruptDataError, only=("bytes", "stream"))  # by name: metadata unused
            assert _cli("verify", path)[0] == 1 and _cli("decompress", path, tmp_path / "o2.npz")[0] == 1


def test_json_depth_scan_ignores_brackets_in_strings():
    import json

    rng = np.random.default_rng(8)
    pieces = ["[", "]", "{", "}", '"', "\\", "a"]

    def value(level: int):
        r = rng.random()
        if level > 9 or r < 0.3:
            return "".join(rng.choice(pieces, int(rng.integers(0, 6))))
        if r < 0.65:
            return [value(level + 1) for _ in range(int(rng.integers(0, 4)))]
        return {"".join(rng.choice(pieces, 3)) + str(i): value(level + 1) for i in range(int(rng.integers(0, 4)))}

    def depth(v) -> int:
        inner = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        return 0 if inner is None else 1 + max(map(depth, inner), default=0)

    for trial in range(300):
        v = {"r": value(1)}
        text, d = json.dumps(v).encode(), depth(v)
        assert not C.json_depth_exceeds(text, d) and (d == 0 or C.json_depth_exceeds(text, d - 1)), text
    slow = b"[" * 600 + b'"' + b'\\"' * 200_000  # escaped quotes only: linear, whatever the text holds
    assert C.json_depth_exceeds(slow, 512)
