"""Decode speed of .rdc files on one core: the pure-numpy ANS path beside the constriction path (and NNCodec).

Models: the MTCNN checkpoints in ../shared/models (pnet, rnet, onet; float32 state dicts) and a synthetic
22.7 M-weight model with the tensor shapes of a 6-layer BERT-small (MiniLM-L6-H384: vocabulary 30522,
hidden 384, 12 heads, FFN 1536, 512 positions; see ``synthetic_bert()``) filled with Laplacian values.
Each model is stored twice: lossless (the default ``bytesplit`` codec) and lossy at ~4 bits per weight
(``rdformat.save(bits=4)``: one model-wide step, levels from ``rdformat.producers.quantize.quantize_rdo``, ``sq``
codec; 1-D tensors stay lossless). Every file is then loaded with ``rdformat.load`` with the ANS backend
forced to numpy, then to constriction (when installed); the decoded tensors must be bit-identical.

Speeds are decoded weights (all tensor elements) per second and decoded bytes (float32) per second,
from the process CPU time of the load, the minimum over ``--repeat`` runs, with every thread pool
limited to one thread: CPU time stays close to the single-core time when other work shares the machine.
"ANS share" is the part of that time spent inside ``rdformat.entropy.ans.decode``/``decode_many``.

NNCodec 2.1.3 (``tools/nncodec_peer.py``, when it exists and reports ``available()``) decodes its own
bitstream of the same weights at the QP whose size is closest to the lossy file's; its decoder is
C++ (CABAC) behind Python. It is run on MTCNN only unless ``--nncodec-synthetic`` is given (its encoder
takes minutes on 22.7 M weights).

    python tools/bench_decode.py [--repeat 3] [--quick] [--no-nncodec] [--nncodec-synthetic] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import rdformat  # noqa: E402
from rdformat.entropy import ans  # noqa: E402

MODELS = ROOT.parent / "shared" / "models"
BITS = 4.0

#: MiniLM-L6-H384 (a 6-layer BERT-small): 22,713,216 weights.
BERT = {"vocab": 30522, "hidden": 384, "ffn": 1536, "layers": 6, "positions": 512, "types": 2}


def synthetic_bert(seed: int = 0, layers: int | None = None) -> dict[str, np.ndarray]:
    """Laplacian tensors with the shapes of a 6-layer BERT-small (``layers`` overrides the depth)."""
    rng = np.random.default_rng(seed)
    h, f = BERT["hidden"], BERT["ffn"]

    def lap(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return rng.laplace(0.0, scale, size=shape).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": lap((BERT["vocab"], h), 0.03),
        "embeddings.position_embeddings.weight": lap((BERT["positions"], h), 0.02),
        "embeddings.token_type_embeddings.weight": lap((BERT["types"], h), 0.02),
        "embeddings.LayerNorm.weight": 1.0 + lap((h,), 0.05),
        "embeddings.LayerNorm.bias": lap((h,), 0.02),
    }
    for i in range(BERT["layers"] if layers is None else layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            t[p + name + ".weight"] = lap((h, h), 0.04)
            t[p + name + ".bias"] = lap((h,), 0.02)
        t[p + "attention.output.LayerNorm.weight"] = 1.0 + lap((h,), 0.05)
        t[p + "attention.output.LayerNorm.bias"] = lap((h,), 0.02)
        t[p + "intermediate.dense.weight"] = lap((f, h), 0.04)
        t[p + "intermediate.dense.bias"] = lap((f,), 0.02)
        t[p + "output.dense.weight"] = lap((h, f), 0.03)
        t[p + "output.dense.bias"] = lap((h,), 0.02)
        t[p + "output.LayerNorm.weight"] = 1.0 + lap((h,), 0.05)
        t[p + "output.LayerNorm.bias"] = lap((h,), 0.02)
    t["pooler.dense.weight"] = lap((h, h), 0.04)
    t["pooler.dense.bias"] = lap((h,), 0.02)
    return t


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in sd.items()}


def models(quick: bool) -> list[tuple[str, dict[str, np.ndarray]]]:
    out = []
    for name in ("pnet", "rnet", "onet"):
        p = MODELS / f"{name}.pt"
        if p.exists():
            out.append((f"MTCNN {name}", load_checkpoint(p)))
        else:
            print(f"skipping {p}: not found", file=sys.stderr)
    if quick:
        out.append(("BERT-small-like, 1 layer", synthetic_bert(layers=1)))
    else:
        out.append(("BERT-small-like (22.7 M)", synthetic_bert()))
    return out


class AnsTimer:
    """Accumulates the CPU time spent in ans.decode / ans.decode_many (wrapped in place)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._orig = {}

    def __enter__(self) -> "AnsTimer":
        for fn in ("decode", "decode_many"):
            orig = getattr(ans, fn, None)
            if orig is None:
                continue
            self._orig[fn] = orig

            def wrapped(*a, _orig=orig, **k):
                t0 = time.process_time()
                try:
                    return _orig(*a, **k)
                finally:
                    self.seconds += time.process_time() - t0

            setattr(ans, fn, wrapped)
        return self

    def __exit__(self, *exc: object) -> None:
        for fn, orig in self._orig.items():
            setattr(ans, fn, orig)


@contextlib.contextmanager
def force_backend(name: str):
    """Context manager: ANS decoding through ``name`` only."""
    if hasattr(ans, "use_backend"):
        with ans.use_backend(name):
            yield
        return
    # rdformat before ans.use_backend existed (for before/after comparisons): hide constriction for numpy
    saved = ans._check_result
    if name == "numpy":
        ans._check_result = (None, "hidden by bench_decode")
    try:
        yield
    finally:
        ans._check_result = saved


def time_load(data: bytes, backend: str, repeat: int) -> tuple[float, float, float, dict[str, np.ndarray]]:
    """(min CPU seconds, min wall seconds, ANS CPU seconds of the fastest run, decoded tensors)."""
    best = (float("inf"), float("inf"), 0.0)
    out = None
    for _ in range(repeat):
        with force_backend(backend), AnsTimer() as timer:
            w0, c0 = time.perf_counter(), time.process_time()
            out = rdformat.load(data)
            c1, w1 = time.process_time(), time.perf_counter()
        if c1 - c0 < best[0]:
            best = (c1 - c0, w1 - w0, timer.seconds)
    return best[0], best[1], best[2], out


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a)


def nncodec_row(tensors: dict[str, np.ndarray], target_bytes: int, repeat: int) -> dict | None:
    try:
        import nncodec_peer
    except ImportError:
        return None
    try:
        if not nncodec_peer.available():
            return None
        n = sum(a.size for a in tensors.values())
        runs = nncodec_peer.run(tensors, qps=[-40, -36, -32, -28, -24, -20, -16], repeats=repeat)
    except Exception as exc:  # noqa: BLE001 - the peer is optional; report and go on
        print(f"NNCodec failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    r = min(runs, key=lambda r: abs(r["bytes"] - target_bytes))
    return {"bytes": r["bytes"], "cpu": r["decode_cpu_s"], "wall": r["decode_s"], "n": n, "qp": r["qp"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a 1-layer synthetic model instead of 6 layers")
    ap.add_argument("--no-nncodec", action="store_true")
    ap.add_argument("--nncodec-synthetic", action="store_true", help="also run NNCodec on the synthetic model")
    ap.add_argument("--only", help="run only the models whose name contains this text (e.g. MTCNN)")
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = ap.parse_args()

    backends = ["numpy"] + (["constriction"] if "constriction" in ans.available_backends() else [])
    if len(backends) == 1:
        print(f"constriction not usable here ({ans._constriction()[1]}): numpy path only", file=sys.stderr)
    rows = []
    for model_name, tensors in models(args.quick):
        if args.only and args.only not in model_name:
            continue
        n = sum(a.size for a in tensors.values())
        for mode in ("lossless", f"sq ~{BITS:g} bpw"):
            buf = io.BytesIO()
            t0 = time.perf_counter()
            if mode == "lossless":
                rdformat.save(tensors, buf)
            else:
                rdformat.save(tensors, buf, bits=BITS)
            enc_s = time.perf_counter() - t0
            data = buf.getvalue()
            bpw = 8 * len(data) / n
            decoded = {}
            for be in backends:
                cpu, wall, ans_s, decoded[be] = time_load(data, be, args.repeat)
                rows.append((model_name, n, mode, bpw, len(data), f"rdformat, {be}", cpu, wall, ans_s / cpu))
                print(f"{model_name:28s} {mode:12s} {be:12s} {n / cpu / 1e6:8.2f} M weights/s "
                      f"(wall {n / wall / 1e6:7.2f}), ANS {100 * ans_s / cpu:4.1f}%, {bpw:.3f} bits/weight, "
                      f"encode {enc_s:.1f}s", file=sys.stderr)
            if len(decoded) > 1 and not same(decoded["numpy"], decoded["constriction"]):
                raise SystemExit(f"{model_name} {mode}: the backends decode differently")
            if mode != "lossless" and not args.no_nncodec and (args.nncodec_synthetic or "MTCNN" in model_name):
                r = nncodec_row(tensors, len(data), args.repeat)
                if r is not None:
                    rows.append((model_name, n, f"NNCodec QP {r['qp']}", 8 * r["bytes"] / n, r["bytes"],
                                 "NNCodec 2.1.3", r["cpu"], r["wall"], float("nan")))
        del tensors
    lines = [
        "| model | weights | coding | bits/weight | decoder | M weights/s | MB/s (float32 out) | ANS share |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for model_name, n, mode, bpw, nbytes, dec, cpu, wall, share in rows:
        share_s = "" if share != share else f"{100 * share:.0f}%"
        lines.append(f"| {model_name} | {n:,} | {mode} | {bpw:.3f} | {dec} | {n / cpu / 1e6:.1f} | "
                     f"{4 * n / cpu / 1e6:.0f} | {share_s} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
