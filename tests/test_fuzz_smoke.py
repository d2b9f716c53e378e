"""Bounded fuzz smoke (no atheris): every fuzz harness's one-input function over its seed corpus
(the conformance vectors) plus a few thousand deterministic structure-aware mutations.

Only :class:`rdformat.RdcError` may escape the library; an oracle violation (a file that one reading
path accepts and another rejects or decodes differently, a non-canonical ANS block accepted...) is a
failure too. Long runs use atheris: see fuzz/README.md.
"""

from __future__ import annotations

import sys
import time
import traceback
import zlib
from pathlib import Path

import numpy as np
import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
sys.path.insert(0, str(FUZZ))

import harnesses as H  # noqa: E402
import rdcfuzz as F  # noqa: E402

# Mutated inputs per harness (the seeds run in addition). ~30 s in total on one core.
RUNS = {
    "load_bytes": 1200,
    "load_stream": 1000,
    "by_name": 1000,
    "meta": 500,  # metadata JSON mutated at the value level, plain and zlib-compressed (fuzz/fieldmut.py)
    "small": 800,  # SMALL record fields and codec payloads
    "adapters": 60,  # npz / safetensors / .pt / onnx export and `rdc info` of a fuzzed file (writes files)
    "codec_raw": 3000,
    "codec_bytesplit": 2500,
    "codec_sq": 2000,
    "codec_dq": 1500,
    "codec_surp": 1000,
    "ans_decode": 1500,
    "table_from_bytes": 2000,
}
#: Wall-clock bound per input. The fuzzing timeout is 1 s; this leaves room for a loaded CI machine.
HANG_SECONDS = 5.0


def test_every_harness_is_smoked():
    assert set(RUNS) == set(H.HARNESSES)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_harness_smoke(name, tmp_path):
    harness = H.HARNESSES[name]
    seeds = harness.seeds()
    assert seeds, f"no seeds for {name}: are spec/vectors/ generated?"
    pool = [F.RdcFile.parse(s) for s in seeds] if harness.fix_crcs else None
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    failures = []
    slowest = (0.0, b"")
    for i in range(len(seeds) + RUNS[name]):
        if i < len(seeds):
            data = seeds[i]
        else:
            data = seeds[int(rng.integers(len(seeds)))]
            for _ in range(int(rng.integers(1, 4))):  # stacked mutations reach deeper states
                data = harness.mutate(rng, data, pool)
        t0 = time.perf_counter()
        try:
            harness.one_input(data)
        except Exception as exc:  # noqa: BLE001 - anything but RdcError is a finding
            path = tmp_path / f"{name}-{i}.bin"
            path.write_bytes(data)
            where = traceback.extract_tb(exc.__traceback__)[-1]
            failures.append(f"input {i} ({path}): {type(exc).__name__}: {exc} "
                            f"[{Path(where.filename).name}:{where.lineno}]")
        elapsed = time.perf_counter() - t0
        if elapsed > slowest[0]:
            slowest = (elapsed, data)
    assert not failures, f"{len(failures)} findings in {name}:\n" + "\n".join(failures[:20])
    if slowest[0] >= HANG_SECONDS:
        # Time it again: a one-off cost (numba compiling a kernel variant on an empty cache) happens once,
        # a real hang or super-linear work happens every time.
        t0 = time.perf_counter()
        try:
            harness.one_input(slowest[1])
        except Exception:  # noqa: BLE001 - findings were checked above
            pass
        slowest = (time.perf_counter() - t0, slowest[1])
    assert slowest[0] < HANG_SECONDS, f"{name}: an input of {len(slowest[1])} bytes took {slowest[0]:.1f} s"


def test_mutations_are_deterministic():
    harness = H.HARNESSES["load_bytes"]
    seeds = harness.seeds()
    pool = [F.RdcFile.parse(s) for s in seeds]

    def run():
        rng = np.random.default_rng(123)
        return [harness.mutate(rng, seeds[i % len(seeds)], pool) for i in range(200)]

    assert run() == run()


def test_fixup_keeps_valid_files_valid():
    """Parsing and re-serialising with fix-ups reproduces every valid vector byte for byte."""
    for data in F.valid_vector_files():
        assert F.RdcFile.parse(data).to_bytes(fix=True) == data
        assert F.RdcFile.parse(data).to_bytes(fix=False) == data


def test_fixup_keeps_seed_files_valid():
    """The 1.6 seeds (fuzz/seeds) survive parsing and re-serialising with fix-ups byte for byte, and so do
    their PACK/ZPACK records through the directory parser (re-deflated with the preset dictionary)."""
    import fieldmut as M
    import packmut as P

    seeds = M.seed_files()
    assert seeds, "no seeds in fuzz/seeds: run python fuzz/make_seeds.py"
    for data in seeds:
        f = F.RdcFile.parse(data)
        assert f.to_bytes(fix=True) == data
        for rec in f.records:
            if rec.rtype in (F.REC_PACK, F.REC_ZPACK):
                d = P.parse_pack(rec.payload, rec.rtype == F.REC_ZPACK)
                assert P.parse_pack(P.build_pack(d), d["compressed"])["members"] == d["members"]
                if rec.rtype == F.REC_PACK:
                    assert P.build_pack(d) == rec.payload


def test_seeds_hold_format_16_features():
    """What the mutators of formats 1.5 and 1.6 need to start from is in the file seeds: unindexed and indexed
    TAIL records, ZPACK, DMETA, and bytesplit planes of modes 4 (shifted) and 5 (joint); the codec seeds
    hold both plane modes too."""
    import fieldmut as M
    import packmut as P

    seen = set()
    for data in M.seed_files():
        f = F.RdcFile.parse(data)
        for rec in f.records:
            seen.add(rec.rtype)
            if rec.rtype == F.REC_TAIL:
                seen.add("indexed" if F.parse_tail_lenient(rec.payload[:-4])[1] else "unindexed")
        for codec, dtype, count, chunk in P.coded_chunks(f):
            if codec == b"bytesplit":
                seen.update(p[0] for p in F.parse_planes(chunk, count, F.ITEMSIZE[dtype]) or [])
            seen.add(codec)
    for want in (F.REC_TAIL, F.REC_ZPACK, F.REC_DMETA, "indexed", "unindexed", "shifted", "joint", b"sq", b"dq"):
        assert want in seen, want
    planes = set()
    for s in H.HARNESSES["codec_bytesplit"].seeds():
        dtype, count, _cfg, chunk = F.unpack_codec_input(s)
        planes.update(p[0] for p in F.parse_planes(chunk, count, F.ITEMSIZE.get(dtype, 1)) or [])
    assert {"shifted", "joint"} <= planes
