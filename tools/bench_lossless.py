"""Lossless benchmark: rdformat on every ANS path (numba, constriction, numpy) vs ZipNN vs zstd-3, in one run.

Cases: the 22.7 M-weight BERT-small-like model of ``bench_decode.py``, the real MTCNN checkpoints in
../shared/models (float32), and the same weights plus a synthetic Laplacian tensor in float32, float16 and
bfloat16. For each codec: size ratio (original bytes / compressed bytes), encode and decode throughput in
MB/s of uncompressed data and in M weights/s (wall time, best of ``--repeat``). rdformat's numba path
decodes on two threads; ZipNN runs with 1 and 2 threads; zstd single-threaded.

    python tools/bench_lossless.py [--repeat 3] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import rdformat  # noqa: E402
from rdformat.entropy import ans  # noqa: E402

MODELS = ROOT.parent / "shared" / "models"


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in sd.items()}


def cases() -> list[tuple[str, dict[str, np.ndarray]]]:
    from bench_decode import synthetic_bert

    out = [("BERT-small-like 22.7M f32", synthetic_bert())]
    onet = None
    for name in ("pnet", "rnet", "onet"):
        path = MODELS / f"{name}.pt"
        if path.exists():
            sd = load_checkpoint(path)
            out.append((f"MTCNN {name} f32", sd))
            if name == "onet":
                onet = sd
    rng = np.random.default_rng(0)
    lap = {"w": rng.laplace(0, 0.02, size=(2048, 2048)).astype(np.float32)}
    out.append(("Laplacian 4M f32", lap))
    if onet is not None:
        out.append(("MTCNN onet f16", {k: v.astype(np.float16) for k, v in onet.items()}))
        out.append(("MTCNN onet bf16", {k: v.astype(ml_dtypes.bfloat16) for k, v in onet.items()}))
    out.append(("Laplacian 4M f16", {"w": lap["w"].astype(np.float16)}))
    out.append(("Laplacian 4M bf16", {"w": lap["w"].astype(ml_dtypes.bfloat16)}))
    return out


#: CPU seconds (all threads, ``time.process_time``) of the fastest decode of the last ``timed`` call: on a
#: shared machine wall time depends on the other jobs, CPU time much less.
LAST_CPU = [float("nan")]


def timed(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if wall < best:
            best, LAST_CPU[0] = wall, cpu
    return best, result


def bench_rdformat(tensors, repeat, path):
    """rdformat lossless with every ANS call on ``path`` (numba, constriction or numpy)."""

    def enc():
        buf = io.BytesIO()
        rdformat.save(tensors, buf)
        return buf.getvalue()

    with ans.use_backend(path):
        t_enc, data = timed(enc, repeat)
        t_dec, back = timed(lambda: rdformat.load(data), repeat)
    for k, v in tensors.items():
        assert back[k].tobytes() == v.tobytes(), k
    return len(data), t_enc, t_dec


def _blob(tensors) -> bytes:
    return b"".join(v.tobytes() for v in tensors.values())


def bench_zstd(tensors, repeat):
    import zstandard

    raw = _blob(tensors)
    cctx, dctx = zstandard.ZstdCompressor(level=3, threads=0), zstandard.ZstdDecompressor()
    t_enc, comp = timed(lambda: cctx.compress(raw), repeat)
    t_dec, back = timed(lambda: dctx.decompress(comp), repeat)
    assert back == raw
    return len(comp), t_enc, t_dec


def bench_zipnn(tensors, repeat, threads=1):
    from zipnn import ZipNN

    dtype = str(next(iter(tensors.values())).dtype)
    zdtype = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}[dtype]
    z = ZipNN(input_format="byte", bytearray_dtype=zdtype, threads=threads)
    raw = _blob(tensors)
    # ZipNN 0.5.4 rewrites the buffer it is given: hand it a fresh copy every time.
    t_enc, comp = timed(lambda: z.compress(bytearray(raw)), repeat)
    t_dec, back = timed(lambda: z.decompress(comp), repeat)
    assert bytes(back) == raw
    return len(comp), t_enc, t_dec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = ap.parse_args(argv)
    rows = []
    backends = ans.available_backends()
    print(f"ANS backends available: {backends}", file=sys.stderr)
    for label, tensors in cases():
        nbytes = sum(v.nbytes for v in tensors.values())
        mb = nbytes / 1e6
        n = sum(v.size for v in tensors.values())
        runners = [(f"rdformat, {path}", lambda t, path=path: bench_rdformat(t, args.repeat, path)) for path in backends]
        runners += [(f"ZipNN 0.5.4, {k} thread{'s' if k > 1 else ''}", lambda t, k=k: bench_zipnn(t, args.repeat, k))
                    for k in (1, 2)]
        runners += [("zstd -3", lambda t: bench_zstd(t, args.repeat))]
        for codec, run in runners:
            try:
                size, t_enc, t_dec = run(tensors)
                cpu_dec = LAST_CPU[0]  # the decode is each runner's last timed call
            except Exception as exc:  # a peer failing is reported, not hidden
                rows.append((label, codec, f"failed: {type(exc).__name__}: {exc}", "", "", "", "", ""))
                continue
            rows.append((label, codec, f"{nbytes / size:.3f}x", f"{mb / t_enc:.0f}", f"{n / t_enc / 1e6:.1f}",
                         f"{mb / t_dec:.0f}", f"{n / t_dec / 1e6:.1f}", f"{mb / cpu_dec:.0f}"))
            print(" | ".join(rows[-1]), file=sys.stderr)
    header = ("| case | codec | ratio | encode MB/s | encode M weights/s | decode MB/s | decode M weights/s "
              "| decode MB per CPU-s |\n|---|---|---|---:|---:|---:|---:|---:|\n")
    table = header + "\n".join("| " + " | ".join(r) + " |" for r in rows)
    table += "\n\nLoad average (1, 5, 15 min) at the end of the run: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
