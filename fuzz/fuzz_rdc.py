"""Run one rdformat fuzz harness under atheris (libFuzzer), with the structure-aware mutator.

    python fuzz/fuzz_rdc.py HARNESS [libFuzzer flags...] [CORPUS_DIR...]
    python fuzz/fuzz_rdc.py --list

HARNESS is one of load_bytes, load_stream, by_name, meta, small, adapters, codec_raw,
codec_bytesplit, codec_sq, codec_dq, codec_surp, ans_decode, table_from_bytes, or codec_<id> for any
other registered codec. Without a corpus directory the
harness uses a fresh one under $RDC_FUZZ_WORK (default /tmp/rdc-fuzz/HARNESS), seeded from the
conformance vectors in spec/vectors/. Typical flags: -max_total_time=600 -timeout=1 -max_len=65536
-rss_limit_mb=2048 -print_final_stats=1. See fuzz/README.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _compile_decode_signatures() -> None:
    """Decode one small block per signature of the compiled ANS kernel (slot ranks of 8 or 16 bits, values
    of 8, 16 or 32 bits) before fuzzing: a signature the seeds do not reach would otherwise compile inside a
    timed input (about 10 s), be reported as a timeout, and, the process being killed, never reach numba's
    cache, so every restart timed out again (session 15: 38 "timeouts" in 240 s of `ans_decode`)."""
    import numpy as np  # noqa: PLC0415

    from rdformat.entropy import FrequencyTable, ans  # noqa: PLC0415

    for count, first in ((200, 0), (200, 300), (200, 70000), (300, 0), (300, 70000)):
        symbols = np.arange(first, first + count)
        table = FrequencyTable.from_counts(symbols, np.ones(count), precision=12)
        values = np.repeat(symbols, 3)
        try:
            with ans.use_backend("numba"):
                block = ans.encode(values, table, lanes=2)
                ans.decode(block, values.size, table)
                for out_dtype in (np.uint8, np.uint16, np.uint32, np.int64):  # the ans_decode harness's choices
                    if np.iinfo(out_dtype).max >= values.max():
                        ans.decode(block, values.size, table, out_dtype=out_dtype)
        except Exception as exc:  # noqa: BLE001 - numba missing: nothing to compile
            print(f"warm-up: compiled decoder not usable ({exc!r})", file=sys.stderr)
            return


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    import atheris  # noqa: PLC0415 - only the runner needs atheris

    with atheris.instrument_imports(include=["rdformat"]):
        import rdformat  # noqa: F401
    import numpy as np  # noqa: PLC0415

    import harnesses as H  # noqa: PLC0415
    import rdcfuzz as F  # noqa: PLC0415

    if sys.argv[1] == "--list":
        print("\n".join(H.HARNESSES))
        return
    harness = H.get(sys.argv[1])
    args = [sys.argv[0]] + sys.argv[2:]
    seeds = harness.seeds()
    if not any(not a.startswith("-") for a in args[1:]):
        work = Path(os.environ.get("RDC_FUZZ_WORK", "/tmp/rdc-fuzz")) / harness.name
        work.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(seeds):
            (work / f"seed-{i:04d}").write_bytes(s)
        args.append(str(work))
    if not any(a.startswith("-max_len") for a in args):
        args.insert(1, f"-max_len={F.MAX_INPUT}")
    pool = [F.RdcFile.parse(s) for s in seeds] if harness.fix_crcs else None
    # Imports (torch, onnx) and compilations happen here, not in a timed input. With the numba kernels forced
    # on small inputs (RDFORMAT_NUMBA_MIN_SYMBOLS=0) every harness loads numba and its kernel signatures on
    # first use (over a second from a cold process), which would otherwise be reported as a hang.
    if harness.warmup or os.environ.get("RDFORMAT_NUMBA_MIN_SYMBOLS", "").strip() == "0":
        _compile_decode_signatures()
        for s in seeds:
            try:
                harness.one_input(s)
            except Exception as exc:  # noqa: BLE001 - a finding in a seed is found again by the fuzzer
                print(f"warm-up: seed input raised {exc!r}", file=sys.stderr)

    # One generator for the whole run: building one per call from libFuzzer's seed costs more than many
    # mutations (SeedSequence); libFuzzer saves every interesting input, so nothing needs the seed.
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        if not data:
            data = seeds[int(rng.integers(len(seeds)))]
        if rng.random() < 0.2:  # libFuzzer's own byte-level mutation ...
            out = atheris.Mutate(data, max_size)
            if harness.fix_crcs and rng.random() < 0.8:  # ... then the CRCs are made valid again
                out = F.RdcFile.parse(out).to_bytes(fix=rng.random() < 0.5)
        else:
            out = harness.mutate(rng, data, pool)
        return out[:max_size]

    def custom_crossover(data1: bytes, data2: bytes, max_size: int, seed: int) -> bytes:
        if harness.fix_crcs:  # splice records of one file into the other
            a, b = F.RdcFile.parse(data1), F.RdcFile.parse(data2)
            if b.records and a.records:
                i = int(rng.integers(len(a.records) + 1))
                j = int(rng.integers(len(b.records)))
                a.records[i:i] = [r.copy() for r in b.records[j : j + int(rng.integers(1, 4))]]
            return a.to_bytes()[:max_size]
        cut1, cut2 = int(rng.integers(len(data1) + 1)), int(rng.integers(len(data2) + 1))
        return (data1[:cut1] + data2[cut2:])[:max_size]

    atheris.Setup(args, harness.one_input, custom_mutator=custom_mutator, custom_crossover=custom_crossover)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
