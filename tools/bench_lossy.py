"""Lossy benchmark: rdformat `sq` and `dq` vs NNCodec 2.1.3 vs int8/int4 per-channel + zstd, in one run.

Parts (all measured in this run, single-threaded):
  1. i.i.d. Laplacian(b=1) 1000x1000: bits/weight, mean absolute error D, gap to R(D) = log2(b/D), MSE.
  2. real MTCNN checkpoints (../shared/models): bits/weight vs relative L2 error.
  3. an MLP (64-300-100-10) trained on scikit-learn's digits: test accuracy vs bits/weight.
  4. speed: encode and decode M weights/s; encode time of a 22.7 M-weight synthetic model.
Writes tools/results/bench_lossy.md (tables) and tools/results/bench_lossy.png (rate-distortion plots).

    python tools/bench_lossy.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import rdformat  # noqa: E402
from rdformat.producers.quantize import quantize_rdo  # noqa: E402
from rdformat.producers.trellis import quantize_trellis  # noqa: E402

RESULTS = ROOT / "tools" / "results"
MODELS = ROOT.parent / "shared" / "models"
#: 6-layer BERT-small-like shapes: 7000x512 token + 512x512 position embeddings, then per layer
#: Q, K, V, O (512x512) and the MLP (2048x512, 512x2048). Total 22,708,224 weights.
BERT_SMALL = [("emb.tok", (7000, 512)), ("emb.pos", (512, 512))] + [
    (f"l{i}.{n}", s) for i in range(6) for n, s in
    (("q", (512, 512)), ("k", (512, 512)), ("v", (512, 512)), ("o", (512, 512)), ("fc1", (2048, 512)), ("fc2", (512, 2048)))
]


# ------------------------------------------------------------------------------------------ codecs
def rdc_encode(tensors: dict, **target) -> tuple[bytes, float]:
    buf = io.BytesIO()
    t = time.perf_counter()
    rdformat.save(tensors, buf, **target)
    return buf.getvalue(), time.perf_counter() - t


def rdc_decode(data: bytes) -> tuple[dict, float]:
    t = time.perf_counter()
    out = rdformat.load(data)
    return out, time.perf_counter() - t


def rdc_fixed_step(x: np.ndarray, step: float, distortion: str = "mse", method: str = "sq") -> tuple[bytes, float]:
    t = time.perf_counter()
    q = (quantize_trellis if method == "dq" else quantize_rdo)(x, step, distortion=distortion)
    buf = io.BytesIO()
    with rdformat.Writer(buf) as w:
        w.add("x", q.prepared())
    return buf.getvalue(), time.perf_counter() - t


def intk_zstd(tensors: dict, bits: int) -> tuple[int, dict]:
    """Per-output-channel symmetric k-bit quantization, bytes compressed with zstd -3 (+ fp32 scales)."""
    import zstandard

    qmax = 2 ** (bits - 1) - 1
    total = 0
    out = {}
    for name, w in tensors.items():
        if w.ndim < 2:
            total += w.nbytes
            out[name] = w
            continue
        flat = w.reshape(w.shape[0], -1).astype(np.float64)
        scale = np.abs(flat).max(axis=1, keepdims=True) / qmax
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(flat / scale), -qmax, qmax).astype(np.int8)
        total += len(zstandard.ZstdCompressor(level=3).compress(q.tobytes())) + 4 * scale.size
        out[name] = (q * scale).astype(w.dtype).reshape(w.shape)
    return total, out


def nncodec(tensors: dict, qps: list[int]):
    try:
        import nncodec_peer
    except ImportError:
        return None, "tools/nncodec_peer.py missing"
    if not nncodec_peer.available():
        return None, "NNCodec venv missing: run tools/setup_nncodec.sh"
    return nncodec_peer.run(tensors, qps), None


# ------------------------------------------------------------------------------------------ helpers
def rel_l2(a: dict, b: dict) -> float:
    num = sum(float(np.sum((b[k].astype(np.float64) - v.astype(np.float64)) ** 2)) for k, v in a.items())
    den = sum(float(np.sum(v.astype(np.float64) ** 2)) for v in a.values())
    return math.sqrt(num / den)


def interp_bits_at(curve: list[tuple[float, float]], dist: float) -> float | None:
    """Bits of a (bits, distortion) curve at distortion ``dist`` (log-distortion interpolation)."""
    pts = sorted(curve, key=lambda p: p[1])
    for (b0, d0), (b1, d1) in zip(pts, pts[1:]):
        if d0 <= dist <= d1 and d0 > 0:
            t = (math.log(dist) - math.log(d0)) / (math.log(d1) - math.log(d0)) if d1 > d0 else 0.0
            return b0 + t * (b1 - b0)
    return None


def table(rows: list[tuple], headers: tuple) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def load_mtcnn() -> dict[str, dict]:
    import torch

    out = {}
    for name in ("pnet", "rnet", "onet"):
        path = MODELS / f"{name}.pt"
        if path.exists():
            out[name] = {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
    return out


def digits_mlp():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(300, 100), max_iter=300, random_state=0).fit(Xtr, ytr)
    tensors = {}
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        tensors[f"fc{i}.weight"] = np.ascontiguousarray(w.T).astype(np.float32)  # (out, in), like torch
        tensors[f"fc{i}.bias"] = b.astype(np.float32)

    def accuracy(t: dict) -> float:
        clf.coefs_ = [t[f"fc{i}.weight"].T.astype(np.float64) for i in range(3)]
        clf.intercepts_ = [t[f"fc{i}.bias"].astype(np.float64) for i in range(3)]
        return float((clf.predict(Xte) == yte).mean())

    return tensors, accuracy


# ------------------------------------------------------------------------------------------ parts
def part_laplacian(quick: bool, report: list, plots: dict) -> None:
    rng = np.random.default_rng(0)
    x = rng.laplace(0, 1.0, (1000, 1000)).astype(np.float32)
    b = float(np.mean(np.abs(x)))
    rows, curves, peer = [], {"sq": [], "dq": []}, []
    sweeps = {"sq": [4.0, 2.0, 1.0, 0.5, 0.25, 0.1] if not quick else [2.0, 0.5],
              "dq": [2.0, 1.0, 0.5, 0.25, 0.125, 0.06] if not quick else [1.0, 0.25]}
    labels = {"sq": "rdformat sq (RDO, MAE)", "dq": "rdformat dq (trellis, MAE)"}
    for method, steps in sweeps.items():
        for step in steps:
            data, t_enc = rdc_fixed_step(x, step, distortion="mae", method=method)
            back, t_dec = rdc_decode(data)
            y = back["x"]
            bits = 8 * len(data) / x.size
            D = float(np.mean(np.abs(y - x)))
            curves[method].append((bits, D))
            rows.append((labels[method], f"step {step}", f"{bits:.3f}", f"{D:.4f}", f"{math.log2(b / D):.3f}",
                         f"{bits - math.log2(b / D):.3f}", f"{np.mean((y - x) ** 2):.5f}",
                         f"{x.size / t_enc / 1e6:.1f}", f"{x.size / t_dec / 1e6:.1f}"))
    res, why = nncodec({"x": x}, [8, 4, 0, -4, -8, -12] if not quick else [4, -8])
    if res is None:
        rows.append(("NNCodec 2.1.3", why, "", "", "", "", "", "", ""))
    else:
        for r in res:
            y = r["decoded"]["x"]
            bits = r["bits_per_weight"]
            D = float(np.mean(np.abs(y - x)))
            peer.append((bits, D))
            rows.append(("NNCodec 2.1.3 (DQ)", f"qp {r['qp']}", f"{bits:.3f}", f"{D:.4f}", f"{math.log2(b / D):.3f}",
                         f"{bits - math.log2(b / D):.3f}", f"{np.mean((y - x) ** 2):.5f}",
                         f"{x.size / r['encode_s'] / 1e6:.1f}", f"{x.size / r['decode_s'] / 1e6:.1f}"))
    report.append("### Laplacian(b=1), 1000x1000, absolute-error distortion\n\n" + table(
        rows, ("codec", "setting", "bits/weight", "D (MAE)", "R(D)=log2(b/D)", "gap", "MSE", "enc M/s", "dec M/s")))
    report.append(savings("Laplacian", curves, peer))
    plots["Laplacian(b=1): bits vs MAE"] = {"rdformat sq": curves["sq"], "rdformat dq": curves["dq"], "NNCodec": peer,
                                             "R(D)": [(math.log2(b / d), d) for d in np.geomspace(0.02, 0.9, 30)]}


def savings(label: str, curves: dict[str, list], peer: list) -> str:
    """Bits of each of our curves (and of the better one: what method="auto" picks) at NNCodec's points."""
    if not peer:
        return f"{label}: no NNCodec points to compare."
    lines = []
    for bits_p, d in peer:
        at = {name: interp_bits_at(pts, d) for name, pts in curves.items() if pts}
        known = {k: v for k, v in at.items() if v is not None}
        if not known:
            lines.append(f"- at distortion {d:.4g}: NNCodec {bits_p:.3f} bits, ours outside the measured range")
            continue
        best = min(known.values())
        each = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in at.items())
        lines.append(f"- at distortion {d:.4g}: NNCodec {bits_p:.3f} bits, rdformat best {best:.3f} bits "
                     f"({100 * (1 - best / bits_p):+.1f}% fewer; {each})")
    return f"{label}, bits at NNCodec's distortions (interpolated on our curves):\n" + "\n".join(lines)


def part_mtcnn(quick: bool, report: list, plots: dict) -> None:
    models = load_mtcnn()
    for name, sd in models.items():
        n = sum(v.size for v in sd.values())
        rows, curves, peer = [], {"sq": [], "auto": []}, []
        for method in ("sq", "auto"):
            for target in ([0.005, 0.01, 0.02, 0.05, 0.1, 0.2] if not quick else [0.01, 0.1]):
                data, t_enc = rdc_encode(sd, rel_error=target, method=method)
                back, t_dec = rdc_decode(data)
                err = rel_l2(sd, back)
                bits = 8 * len(data) / n
                curves[method].append((bits, err))
                with rdformat.open(data) as f:
                    used = sorted({f.info(k).codec for k in f.keys()} - {"raw", "bytesplit"})
                rows.append((f"rdformat {method} ({'+'.join(used)})", f"rel-error {target}", f"{bits:.3f}",
                             f"{err:.4f}", f"{n / t_enc / 1e6:.2f}", f"{n / t_dec / 1e6:.1f}"))
        for k in (8, 4):
            size, back = intk_zstd(sd, k)
            rows.append((f"int{k} per-channel + zstd-3", "", f"{8 * size / n:.3f}", f"{rel_l2(sd, back):.4f}", "", ""))
        res, why = nncodec(sd, [-16, -22, -28, -34, -40] if not quick else [-28])
        if res is None:
            rows.append(("NNCodec 2.1.3", why, "", "", "", ""))
        else:
            for r in res:
                err = rel_l2(sd, r["decoded"])
                peer.append((r["bits_per_weight"], err))
                rows.append(("NNCodec 2.1.3 (DQ)", f"qp {r['qp']}", f"{r['bits_per_weight']:.3f}", f"{err:.4f}",
                             f"{n / r['encode_s'] / 1e6:.1f}", f"{n / r['decode_s'] / 1e6:.1f}"))
        report.append(f"### MTCNN {name} ({n:,} weights): bits/weight (whole file) vs relative L2 error\n\n"
                      + table(rows, ("codec", "setting", "bits/weight", "rel. L2 error", "enc M/s", "dec M/s")))
        report.append(savings(f"MTCNN {name}", curves, peer))
        plots[f"MTCNN {name}: bits vs rel. L2 error"] = {"rdformat sq": curves["sq"], "rdformat auto": curves["auto"],
                                                          "NNCodec": peer}


def part_digits(quick: bool, report: list, plots: dict) -> None:
    tensors, accuracy = digits_mlp()
    n = sum(v.size for v in tensors.values())
    base = accuracy(tensors)
    rows = [("float32", "", "32.000", f"{base:.4f}")]
    ours, peer = [], []
    for bits in ([1, 1.5, 2, 3, 4] if not quick else [2, 4]):
        data, _ = rdc_encode(tensors, bits=bits)
        acc = accuracy(rdformat.load(data))
        ours.append((8 * len(data) / n, acc))
        with rdformat.open(data) as f:
            used = "+".join(sorted({f.info(k).codec for k in f.keys()} - {"raw", "bytesplit"}))
        rows.append((f"rdformat auto ({used})", f"bits {bits}", f"{8 * len(data) / n:.3f}", f"{acc:.4f}"))
    for k in (8, 4, 3):
        size, back = intk_zstd(tensors, k)
        rows.append((f"int{k} per-channel + zstd-3", "", f"{8 * size / n:.3f}", f"{accuracy(back):.4f}"))
    res, why = nncodec(tensors, [-18, -24, -30, -36] if not quick else [-24])
    if res is None:
        rows.append(("NNCodec 2.1.3", why, "", ""))
    else:
        for r in res:
            acc = accuracy(r["decoded"])
            peer.append((r["bits_per_weight"], acc))
            rows.append(("NNCodec 2.1.3 (DQ)", f"qp {r['qp']}", f"{r['bits_per_weight']:.3f}", f"{acc:.4f}"))
    report.append(f"### Digits MLP 64-300-100-10 ({n:,} weights): test accuracy vs bits/weight (whole file)\n\n"
                  + table(rows, ("codec", "setting", "bits/weight", "test accuracy")))
    plots["Digits MLP: accuracy vs bits"] = {"rdformat auto": ours, "NNCodec": peer}


def part_speed(quick: bool, report: list) -> None:
    rng = np.random.default_rng(1)
    shapes = BERT_SMALL if not quick else BERT_SMALL[:4]
    model = {name: rng.laplace(0, 0.02, shape).astype(np.float32) for name, shape in shapes}
    n = sum(v.size for v in model.values())
    rows = []
    for method in ("sq", "auto"):
        data, t_enc = rdc_encode(model, bits=4, method=method)
        back, t_dec = rdc_decode(data)
        err = rel_l2(model, back)
        with rdformat.open(data) as f:
            used = "+".join(sorted({f.info(k).codec for k in f.keys()}))
        rows.append((f"rdformat {method} ({used})", f"{8 * len(data) / n:.3f}", f"{err:.4f}", f"{t_enc:.1f}",
                     f"{n / t_enc / 1e6:.2f}", f"{t_dec:.2f}", f"{n / t_dec / 1e6:.1f}"))
    report.append(f"### Speed: synthetic BERT-small-like model, {n:,} weights, --bits 4\n\n" + table(
        rows, ("codec", "bits/weight", "rel. L2 error", "encode s", "encode M/s", "decode s", "decode M/s")))


def plot(plots: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(plots)
    fig, axes = plt.subplots(1, k, figsize=(5 * k, 4))
    for ax, (title, curves) in zip(np.atleast_1d(axes), plots.items()):
        for label, pts in curves.items():
            if not pts:
                continue
            pts = sorted(pts)
            style = "k--" if label == "R(D)" else "o-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, ms=4)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("bits / weight")
        if "accuracy" not in title:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer points (smoke run)")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: list[str] = [f"ANS decode backends available: {', '.join(rdformat.entropy.available_backends())}"]
    plots: dict = {}
    t0 = time.time()
    part_laplacian(args.quick, report, plots)
    part_mtcnn(args.quick, report, plots)
    part_digits(args.quick, report, plots)
    part_speed(args.quick, report)
    report.append(f"Total benchmark time: {time.time() - t0:.0f} s")
    text = "\n\n".join(report) + "\n"
    print(text)
    if not args.quick:
        (RESULTS / "bench_lossy.md").write_text(text)
        plot(plots, RESULTS / "bench_lossy.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
