"""Peak memory of streaming a ~200 MB .rdc file through a real pipe.

    python tools/bench_memory.py [--mb 200] [--codec raw lossless] [--keep DIR]

For each codec a file of about ``--mb`` MB is written (one large tensor of about half the size, the
rest in 16 smaller ones), then ``cat FILE | python -c ...`` streams it with
``for name, array in rdformat.open(sys.stdin.buffer)``, dropping each array after a checksum. The
child reports ``ru_maxrss`` after its imports (the baseline) and at the end; the figure is the
difference. Target: below 2 x the largest tensor + 32 MB. A second child loads the whole file with
``rdformat.load(path)`` for comparison (its target is the sum of the tensors + 32 MB).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rdformat  # noqa: E402

MB = 1 << 20

CHILD = r"""
import json, resource, sys, zlib
sys.path.insert(0, {root!r})
import numpy as np
import rdformat
from rdformat.entropy import FrequencyTable, ans
t = FrequencyTable(8, [0, 1], [200, 56])
ans.decode(ans.encode(np.array([0, 1, 1]), t), 3, t)  # backend self-check happens before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
mode = sys.argv[1]
crc, count = 0, 0
if mode == "stream":
    with rdformat.open(sys.stdin.buffer) as f:
        for name, arr in f:
            crc = zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B"), crc)
            count += 1
            del arr
else:
    tensors = rdformat.load(sys.argv[2])
    for arr in tensors.values():
        crc = zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B"), crc)
        count += 1
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"baseline_kb": base, "peak_kb": peak, "tensors": count, "crc": crc}}))
"""


def make_file(path: Path, total_mb: int, codec: str) -> tuple[int, int, int]:
    """Write the test file; returns (largest tensor bytes, sum of tensor bytes, crc of all tensors)."""
    import zlib

    rng = np.random.default_rng(0)
    big = total_mb * MB // 2 // 4
    small = (total_mb * MB - big * 4) // 16 // 4
    sizes = [big] + [small] * 16
    crc = 0

    def gen():
        nonlocal crc
        for i, n in enumerate(sizes):
            # trained-weight-like values: the exponent plane compresses, mantissas stay raw
            arr = (rng.standard_normal(n, dtype=np.float32) * 0.02).reshape(-1, 256)
            crc = zlib.crc32(arr.tobytes(), crc)
            yield f"layer{i}.weight", arr

    rdformat.save(gen(), path, codec=codec)
    return big * 4, sum(sizes) * 4, crc


def measure(path: Path, mode: str) -> dict:
    """Run the child through ``sh -c`` so that it is forked from a small process: Linux carries
    ``ru_maxrss`` over ``exec`` from the process that forks (and with vfork from the parent itself)."""
    code = CHILD.format(root=str(ROOT))
    py = shlex.quote(sys.executable)
    if mode == "stream":
        cmd = f"cat {shlex.quote(str(path))} | {py} -c {shlex.quote(code)} stream"
    else:
        cmd = f"{py} -c {shlex.quote(code)} load {shlex.quote(str(path))}"
    child = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(child.stderr)
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="approximate file size in MB (default 200)")
    parser.add_argument("--codec", nargs="+", default=["raw", "lossless"])
    parser.add_argument("--keep", type=Path, help="write the files here (default: a temporary folder)")
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{'codec':9} {'file MB':>8} {'largest MB':>10} {'mode':7} {'baseline MB':>11} {'peak-base MB':>12} "
              f"{'target MB':>9} {'ok':>3} {'time s':>6}")
        for codec in args.codec:
            path = folder / f"bench_memory_{codec}.rdc"
            largest, total, crc = make_file(path, args.mb, codec)
            size = path.stat().st_size
            for mode in ("stream", "load"):
                t0 = time.perf_counter()
                res = measure(path, mode)
                elapsed = time.perf_counter() - t0
                assert res["crc"] == crc and res["tensors"] == 17, res
                used = (res["peak_kb"] - res["baseline_kb"]) * 1024
                target = (2 * largest if mode == "stream" else total) + 32 * MB
                good = used < target
                ok &= good or mode == "load"
                print(f"{codec:9} {size / MB:8.1f} {largest / MB:10.1f} {mode:7} {res['baseline_kb'] / 1024:11.1f} "
                      f"{used / MB:12.1f} {target / MB:9.1f} {'yes' if good else 'NO':>3} {elapsed:6.1f}")
    print("streaming target (peak - baseline < 2 x largest tensor + 32 MB):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
