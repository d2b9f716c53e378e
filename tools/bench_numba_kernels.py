"""Speed of the compiled (numba) kernels beside the numpy and constriction ANS paths, on the blocks the
reader decodes.

The 22.7 M-weight synthetic BERT-small of ``bench_decode.py`` (Laplacian float32) is saved three ways:
lossless (``bytesplit``), ``sq`` and ``dq`` at 4 bits/weight. Loading each file once with
``ans.decode_many`` wrapped collects every ANS block the reader decodes; those blocks are then decoded by

* ``numpy`` / ``constriction``: ``ans.decode_many(blocks, backend=...)`` (one call, all blocks);
* ``numba``: ``ans_numba.decode_blocks`` (one call per output dtype, all blocks concatenated), tables built
  beforehand (their build time is shown apart);
* ``numba, 2 threads``: the same blocks split in two halves of equal symbol count, decoded in two threads
  (the kernels release the GIL).

Figures are M symbols/s and MB/s of decoded float32 weights (91 MB for the model), from wall time, best of
``--repeat`` runs. The codec kernels (bytesplit interleaving, sq gather, dq reconstruction) are timed on the
full model size. The first-call cost is measured in fresh processes: with an empty numba cache (compile)
and with the cache filled (load).

    python tools/bench_numba_kernels.py [--repeat 5] [--layers N] [--markdown tools/results/bench_numba_kernels.md]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from bench_decode import synthetic_bert  # noqa: E402  (puts the repository root on sys.path)

import rdformat  # noqa: E402
from rdformat.codecs import kernels_numba as kn  # noqa: E402
from rdformat.entropy import ans  # noqa: E402
from rdformat.entropy import ans_numba as an  # noqa: E402

FIRST_CALL = """
import time, numpy as np
t0 = time.perf_counter()
from rdformat.entropy import ans_numba as an
from rdformat.entropy import FrequencyTable
table = FrequencyTable(2, [5, 9], [3, 1])
tables = an.decode_tables_for(table)
out = np.empty(3, np.uint8)
assert an.decode_block(np.frombuffer(bytes.fromhex("01000000010000000000c000"), np.uint8), 3, tables, out)[0] == 0
print(time.perf_counter() - t0)
"""


def best_of(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def collect_blocks(data: bytes) -> list[tuple]:
    """Every (buf, count, table, out_dtype) that ``rdformat.load`` hands to ``ans.decode_many``."""
    seen: list[tuple] = []
    original = ans.decode_many

    def capture(blocks, **kwargs):
        blocks = list(blocks)
        seen.extend((bytes(b[0]), int(b[1]), b[2], np.dtype(b[3] if len(b) == 4 else kwargs.get("out_dtype", np.uint32)))
                    for b in blocks)
        return original(blocks, **kwargs)

    ans.decode_many = capture
    try:
        rdformat.load(data)
    finally:
        ans.decode_many = original
    return seen


class Batch:
    """The blocks of one output dtype, laid out for ``ans_numba.decode_blocks``."""

    def __init__(self, blocks: list[tuple]) -> None:
        self.dtype = blocks[0][3]
        self.data = np.frombuffer(b"".join(b[0] for b in blocks), np.uint8)
        self.size = np.array([len(b[0]) for b in blocks], dtype=np.int64)
        self.start = np.concatenate([[0], np.cumsum(self.size)[:-1]]).astype(np.int64)
        self.count = np.array([b[1] for b in blocks], dtype=np.int64)
        self.out_start = np.concatenate([[0], np.cumsum(self.count)[:-1]]).astype(np.int64)
        an.build_decode_tables([1], [np.ones(2, np.int64)], [np.arange(2)])  # compiled before timing
        t0 = time.perf_counter()
        self.tables = an.build_decode_tables([b[2].precision for b in blocks], [b[2].freqs for b in blocks],
                                             [b[2].symbols for b in blocks])
        self.table_seconds = time.perf_counter() - t0
        self.which = np.arange(len(blocks), dtype=np.int64)
        self.out = np.empty(int(self.count.sum()), dtype=self.dtype)

    def decode(self, lo: int = 0, hi: int | None = None) -> None:
        sel = slice(lo, hi)
        status = an.decode_blocks(self.data, self.start[sel], self.size[sel], self.count[sel], self.which[sel],
                                  self.tables, self.out, self.out_start[sel])
        assert status[0] == an.OK, status

    def halves(self) -> int:
        """Block index splitting the symbols in two nearly equal halves."""
        return int(np.searchsorted(np.cumsum(self.count), self.count.sum() / 2)) + 1


def bench_blocks(label: str, blocks: list[tuple], weights: int, repeat: int) -> list[dict]:
    symbols = sum(b[1] for b in blocks)
    rows = []

    def row(path: str, seconds: float, extra: str = "") -> None:
        rows.append({"case": label, "path": path, "symbols": symbols, "ms": 1e3 * seconds,
                     "msym": symbols / seconds / 1e6, "mbs": 4 * weights / seconds / 1e6, "note": extra})

    for backend in ("numpy", "constriction"):
        if backend in ans.available_backends():
            row(backend, best_of(max(1, repeat // 2), lambda backend=backend: ans.decode_many(blocks, backend=backend)))
    batches = [Batch([b for b in blocks if b[3] == dt]) for dt in dict.fromkeys(b[3] for b in blocks)]
    for b in batches:
        b.decode()
    row("numba", best_of(repeat, lambda: [b.decode() for b in batches]),
        f"tables built in {1e3 * sum(b.table_seconds for b in batches):.1f} ms")

    def two_threads() -> None:
        jobs = []
        for b in batches:
            cut = b.halves()
            jobs += [threading.Thread(target=b.decode, args=(0, cut)), threading.Thread(target=b.decode, args=(cut,))]
        for j in jobs:
            j.start()
        for j in jobs:
            j.join()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    two_threads()
    overlap = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    row("numba, 2 threads", best_of(repeat, two_threads), f"CPU time / wall time {overlap:.2f} (GIL released)")
    reference = ans.decode_many(blocks, backend="numpy")
    for b in batches:
        mine = [b.out[s:s + c] for s, c in zip(b.out_start.tolist(), b.count.tolist())]
        want = [r for r, blk in zip(reference, blocks) if blk[3] == b.dtype]
        assert all(np.array_equal(x, y) for x, y in zip(mine, want)), "numba decode differs from numpy"
    return rows


def bench_codec_kernels(weights: int, repeat: int) -> list[tuple[str, float, float]]:
    """(kernel, numba ms, numpy ms) on ``weights`` elements."""
    from rdformat.codecs import dq

    rng = np.random.default_rng(0)
    x = rng.laplace(0, 0.03, weights).astype(np.float32)
    rotated = (x.view(np.uint32) << np.uint32(1)) | (x.view(np.uint32) >> np.uint32(31))
    planes = np.ascontiguousarray(rotated.view(np.uint8).reshape(-1, 4).T)

    def numpy_interleave() -> None:
        p = np.empty((weights, 4), np.uint8)
        for k in range(4):
            p[:, k] = planes[k]
        w = p.view(np.uint32).reshape(weights)
        _ = (w >> np.uint32(1)) | (w << np.uint32(31))

    out = []
    kn.interleave_planes(planes, weights, True)
    out.append(("bytesplit interleave + unrotate (float32)", best_of(repeat, lambda: kn.interleave_planes(planes, weights, True)),
                best_of(max(1, repeat // 2), numpy_interleave)))
    values = rng.standard_normal((1000, 1)).astype(np.float32)
    index = rng.integers(0, 1000, weights).astype(np.uint32)
    kn.gather_groups(index, values, weights)
    out.append(("sq gather (k = 1)", best_of(repeat, lambda: kn.gather_groups(index, values, weights)),
                best_of(max(1, repeat // 2), lambda: values[index].reshape(-1))))
    levels = np.clip(np.round(rng.laplace(0, 3, weights)), -32767, 32767).astype(np.int32)
    kn.dq_reconstruct(levels, 0.01, 256)
    out.append(("dq reconstruct (chain 256)", best_of(repeat, lambda: kn.dq_reconstruct(levels, 0.01, 256)),
                best_of(max(1, repeat // 2), lambda: dq.dq_reconstruct(levels, 0.01, 256, np.dtype(np.float32)))))
    return [(name, 1e3 * a, 1e3 * b) for name, a, b in out]


def first_call_seconds() -> tuple[float, float]:
    """(empty cache: compile, filled cache: load) of the first decode in a fresh process."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        run = [sys.executable, "-c", FIRST_CALL]
        cold = float(subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout)
        warm = float(subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout)
    return cold, warm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--layers", type=int, default=None, help="BERT depth (default 6: 22.7 M weights)")
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    model = synthetic_bert(layers=args.layers)
    weights = sum(v.size for v in model.values())
    load = os.getloadavg()[0]
    lines = [f"Model: synthetic BERT-small, {weights:,} float32 weights ({4 * weights / 1e6:.0f} MB); "
             f"{os.cpu_count()} CPUs (load average {load:.1f} at the start: other work shares them); "
             f"numba {an.numba.__version__}.", ""]
    lines += ["| case | path | symbols | ms | M symbols/s | MB/s (float32 out) | note |",
              "|---|---|---:|---:|---:|---:|---|"]
    for label, kwargs in (("lossless (bytesplit ANS planes)", {}), ("sq 4 bits/weight", {"bits": 4, "method": "sq"}),
                          ("dq 4 bits/weight", {"bits": 4, "method": "dq"})):
        buf = io.BytesIO()
        rdformat.save(model, buf, **kwargs)
        for r in bench_blocks(label, collect_blocks(buf.getvalue()), weights, args.repeat):
            lines.append(f"| {r['case']} | {r['path']} | {r['symbols']:,} | {r['ms']:.1f} | {r['msym']:.0f} | "
                         f"{r['mbs']:.0f} | {r['note']} |")
            print(lines[-1], flush=True)
    lines += ["", "| codec kernel | numba ms | numpy ms | M weights/s (numba) |", "|---|---:|---:|---:|"]
    for name, fast, slow in bench_codec_kernels(weights, args.repeat):
        lines.append(f"| {name} | {fast:.1f} | {slow:.1f} | {weights / fast / 1e3:.0f} |")
        print(lines[-1], flush=True)
    cold, warm = first_call_seconds()
    lines += ["", f"First call in a fresh process (import + tables + one decode): {cold:.2f} s with an empty "
              f"numba cache (compilation), {warm:.2f} s with the cache filled."]
    print(lines[-1])
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
