"""SuRP vs magnitude pruning on scikit-learn's 8x8 digits (LeNet-300-100-style MLP 64-300-100-10).

Runs in about a minute on 2 cores; deterministic (fixed seeds). Writes
``tools/results/surp_digits.md`` (tables) and ``tools/results/surp_digits.png`` (plots) and prints
the tables.

1. Accuracy vs sparsity (50%..99%): one-shot SuRP and one-shot global magnitude pruning of the
   trained model (no retraining); iterative SuRP with retraining (the paper's per-layer L2
   normalisation, and without it), and global / layer-wise magnitude pruning with the same
   schedule (the paper's 20%, 36%, 48.8%, ... with the reported points merged in) and the same
   retraining budget (steps per stage, optimizer, batches).
2. Accuracy vs file size of the retrained models: SuRP ``.rdc`` (progressive codec, whole model:
   biases lossless; accuracy of the *decoded* file; 3 or 6 refinement passes after the sparsity
   target), magnitude pruning stored as CSR (int32 row pointers and column indices + float32
   values, biases float32) and as zstd-compressed safetensors (dense, level 19). Plus budgeted
   reads of one SuRP file (embedded stream).

Usage: python tools/exp_digits.py [--seeds 3] [--steps 40] [--quick]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import rdformat  # noqa: E402
import rdformat.surp as S  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPORT = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
SCHEDULE = tuple(sorted(set(S.PAPER_SCHEDULE) | set(REPORT)))
WEIGHTS = ("0.weight", "2.weight", "4.weight")


# ------------------------------------------------------------------------------------------------
# data, model, training
# ------------------------------------------------------------------------------------------------


def data(seed: int = 0):
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x.astype(np.float32) / 16.0, y, test_size=0.25, random_state=seed,
                                          stratify=y)
    return (torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte), torch.from_numpy(yte).long())


def mlp():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.ReLU(), torch.nn.Linear(300, 100), torch.nn.ReLU(),
                               torch.nn.Linear(100, 10))


class Trainer:
    """One optimisation step per call on the next mini-batch (seeded order)."""

    def __init__(self, model, xtr, ytr, seed: int, lr: float = 1e-3, batch: int = 64) -> None:
        import torch

        self.torch = torch
        self.x, self.y = xtr, ytr
        self.batch = batch
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(xtr), generator=self.gen)
        self.at = 0
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)

    def __call__(self, model) -> None:
        torch = self.torch
        if self.at + self.batch > len(self.order):
            self.order = torch.randperm(len(self.x), generator=self.gen)
            self.at = 0
        idx = self.order[self.at:self.at + self.batch]
        self.at += self.batch
        model.train()
        self.opt.zero_grad()
        torch.nn.functional.cross_entropy(model(self.x[idx]), self.y[idx]).backward()
        self.opt.step()


def accuracy(model, x, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def weights_of(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().astype(np.float32).copy() for k, v in model.state_dict().items()}


def load_weights(model, tensors: dict[str, np.ndarray]) -> None:
    import torch

    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()})


def train_dense(seed: int, xtr, ytr, epochs: int = 40):
    import torch

    torch.manual_seed(seed)
    model = mlp()
    step = Trainer(model, xtr, ytr, seed)
    for _ in range(epochs * math.ceil(len(xtr) / 64)):
        step(model)
    return model


# ------------------------------------------------------------------------------------------------
# pruning baselines
# ------------------------------------------------------------------------------------------------


def magnitude_masks(tensors: dict[str, np.ndarray], sparsity: float, layerwise: bool) -> dict[str, np.ndarray]:
    """Keep the largest |w| (globally, or per layer), the same count SuRP keeps."""
    if layerwise:
        out = {}
        for k in WEIGHTS:
            a = np.abs(tensors[k]).reshape(-1)
            keep = int(round((1 - sparsity) * a.size))
            m = np.zeros(a.size, dtype=bool)
            m[np.argsort(-a, kind="stable")[:keep]] = True
            out[k] = m.reshape(tensors[k].shape)
        return out
    a = np.concatenate([np.abs(tensors[k]).reshape(-1) for k in WEIGHTS])
    keep = int(round((1 - sparsity) * a.size))
    m = np.zeros(a.size, dtype=bool)
    m[np.argsort(-a, kind="stable")[:keep]] = True
    out, at = {}, 0
    for k in WEIGHTS:
        n = tensors[k].size
        out[k] = m[at:at + n].reshape(tensors[k].shape)
        at += n
    return out


def iterative_magnitude(model, step, steps: int, layerwise: bool, on_stage, schedule=SCHEDULE) -> None:
    """Same schedule and retraining budget as iterative SuRP; pruned weights held at zero."""
    import torch

    masks: dict[str, torch.Tensor] = {}
    params = dict(model.named_parameters())
    hooks = [params[k].register_hook(lambda g, k=k: g * masks[k] if k in masks else g) for k in WEIGHTS]
    try:
        for stage, s in enumerate(schedule):
            w = weights_of(model)
            mk = magnitude_masks(w, s, layerwise)
            with torch.no_grad():
                for k in WEIGHTS:
                    masks[k] = torch.from_numpy(mk[k].astype(np.float32))
                    params[k].mul_(masks[k])
            for _ in range(steps):
                step(model)
                with torch.no_grad():
                    for k in WEIGHTS:
                        params[k].mul_(masks[k])
            on_stage(stage, s, model)
    finally:
        for h in hooks:
            h.remove()


# ------------------------------------------------------------------------------------------------
# file sizes
# ------------------------------------------------------------------------------------------------


def csr_bytes(tensors: dict[str, np.ndarray]) -> int:
    """2-D weights as CSR (int32 row pointers + int32 column indices + float32 values); rest float32."""
    total = 0
    for k, v in tensors.items():
        if v.ndim == 2:
            nnz = int(np.count_nonzero(v))
            total += 4 * (v.shape[0] + 1) + 8 * nnz
        else:
            total += 4 * v.size
    return total


def zstd_safetensors_bytes(tensors: dict[str, np.ndarray], level: int = 19) -> int:
    import zstandard
    from safetensors.numpy import save

    raw = save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    return len(zstandard.ZstdCompressor(level=level).compress(raw))


def surp_file(tensors: dict[str, np.ndarray], sparsity: float, path: str,
              params: S.SurpParams | None = None) -> tuple[int, dict[str, np.ndarray]]:
    S.save(tensors, path, sparsity=sparsity, params=params)
    return os.path.getsize(path), rdformat.load(path)


#: Extra "accuracy vs file size" methods (name -> function(magnitude-pruned tensors, sparsity) ->
#: (file bytes, decoded tensors)). The lead adds NNCodec and "magnitude + our lossy quantizer" here.
EXTRA_SIZE_METHODS: dict = {}


def _magnitude_sq(mag: dict, sparsity: float) -> tuple[int, dict]:
    """The magnitude-pruned model through our lossy codec (zeros stay zero under RDO), 2% error."""
    buf = io.BytesIO()
    rdformat.save(mag, buf, rel_error=0.02)
    return len(buf.getvalue()), rdformat.load(buf.getvalue())


def _nncodec(mag: dict, sparsity: float) -> tuple[int, dict]:
    """NNCodec 2.1.3 (dependent quantization) on the same magnitude-pruned model, qp -32 (step 1/256)."""
    (res,) = nncodec_peer.run(mag, [-32])
    return res["bytes"], res["decoded"]


EXTRA_SIZE_METHODS["magnitude + sq (2% error)"] = _magnitude_sq
try:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import nncodec_peer

    if nncodec_peer.available():
        EXTRA_SIZE_METHODS["magnitude + NNCodec qp -32"] = _nncodec
except ImportError:  # the peer harness is optional
    pass


# ------------------------------------------------------------------------------------------------
# the experiment
# ------------------------------------------------------------------------------------------------


def run(seeds: int, steps: int, quick: bool) -> dict:
    import torch

    # One thread: this MLP is tiny, and on a shared 2-core machine two threads are 10x slower.
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = data(0)
    res: dict = {"dense": [], "oneshot_surp": {}, "oneshot_mag": {}, "iter_surp": {}, "iter_surp_none": {},
                 "iter_surp_fisher": {}, "iter_gmag": {}, "iter_lmag": {}, "size": {}, "budget": []}
    tmp = tempfile.mkdtemp(prefix="surp_digits_")
    report = REPORT if not quick else (0.5, 0.9, 0.99)
    for seed in range(seeds):
        t0 = time.time()
        dense = train_dense(seed, xtr, ytr)
        w0 = weights_of(dense)
        res["dense"].append(accuracy(dense, xte, yte))
        probe = mlp()
        for s in report:  # one-shot, no retraining
            sr = S.compress(w0, sparsity=s)
            dec = dict(w0)
            dec.update(sr.decode())
            load_weights(probe, dec)
            res["oneshot_surp"].setdefault(s, []).append(accuracy(probe, xte, yte))
            mk = magnitude_masks(w0, s, layerwise=False)
            load_weights(probe, {k: (v * mk[k] if k in mk else v) for k, v in w0.items()})
            res["oneshot_mag"].setdefault(s, []).append(accuracy(probe, xte, yte))
        snaps: dict[str, dict[float, dict]] = {"iter_surp": {}, "iter_surp_none": {}, "iter_surp_fisher": {},
                                               "iter_gmag": {}, "iter_lmag": {}}

        def recorder(key):
            def on_stage(stage, s, model):
                if s in report:
                    res[key].setdefault(s, []).append(accuracy(model, xte, yte))
                    snaps[key][s] = weights_of(model)
            return on_stage

        for key, kind in (("iter_surp", "l2"), ("iter_surp_none", "none"), ("iter_surp_fisher", "fisher"),
                          ("iter_gmag", False), ("iter_lmag", True)):
            torch.manual_seed(seed)
            model = mlp()
            load_weights(model, w0)
            step = Trainer(model, xtr, ytr, seed + 1000, lr=5e-4)
            sched = SCHEDULE if not quick else tuple(s for s in SCHEDULE if s <= 0.5) + (0.9, 0.99)
            if kind in ("l2", "none", "fisher"):
                S.iterative_surp(model, step, schedule=sched, steps_per_stage=steps,
                                 params=S.SurpParams(refine_passes=8, normalize="none" if kind != "l2" else "l2"),
                                 select=lambda n, p: n in WEIGHTS, on_stage=recorder(key),
                                 emphasis="fisher" if kind == "fisher" else None)
            else:
                iterative_magnitude(model, step, steps, kind, recorder(key), sched)
        # file sizes of the retrained models
        for s in report:
            path = os.path.join(tmp, f"s{seed}_{s}.rdc")
            size, dec = surp_file(snaps["iter_surp"][s], s, path)
            load_weights(probe, dec)
            entry = res["size"].setdefault(s, {})
            entry.setdefault("surp_bytes", []).append(size)
            entry.setdefault("surp_acc", []).append(accuracy(probe, xte, yte))
            size, dec = surp_file(snaps["iter_surp"][s], s, path, S.SurpParams(refine_passes=6))
            load_weights(probe, dec)
            entry.setdefault("surp6_bytes", []).append(size)
            entry.setdefault("surp6_acc", []).append(accuracy(probe, xte, yte))
            mag = snaps["iter_gmag"][s]
            entry.setdefault("csr_bytes", []).append(csr_bytes(mag))
            entry.setdefault("zstd_bytes", []).append(zstd_safetensors_bytes(mag))
            entry.setdefault("mag_acc", []).append(res["iter_gmag"][s][-1])
            for name, fn in EXTRA_SIZE_METHODS.items():
                b, d = fn(mag, s)
                load_weights(probe, d)
                entry.setdefault(f"{name}_bytes", []).append(b)
                entry.setdefault(f"{name}_acc", []).append(accuracy(probe, xte, yte))
            if seed == 0 and s == 0.9:  # budgeted reads of one progressive file (more refinement)
                big = os.path.join(tmp, "progressive.rdc")
                S.save(snaps["iter_surp"][s], big, sparsity=s, params=S.SurpParams(refine_passes=6))
                full = os.path.getsize(big)
                for frac in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
                    got = S.load_budget(big, int(frac * full))
                    load_weights(probe, got)
                    res["budget"].append((int(frac * full), accuracy(probe, xte, yte),
                                          1 - sum(np.count_nonzero(got[k]) for k in WEIGHTS)
                                          / sum(got[k].size for k in WEIGHTS)))
        print(f"seed {seed}: {time.time() - t0:.1f}s", flush=True)
    return res


#: two-sided 95% Student t quantiles by degrees of freedom (confidence intervals over a few seeds)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _ci(v: np.ndarray) -> float:
    """Half-width of the 95% confidence interval of the mean."""
    return _T95.get(v.size - 1, 1.96) * v.std(ddof=1) / np.sqrt(v.size)


def _m(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    if v.size > 1:
        return f"{100 * v.mean():.1f} ± {100 * _ci(v):.1f}"
    return f"{100 * v.mean():.1f}"


def _diff(a, b) -> str:
    """Paired difference a - b over seeds (same seed, same dense model), mean ± 95% CI, in points."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size > 1:
        return f"{100 * d.mean():+.1f} ± {100 * _ci(d):.1f}"
    return f"{100 * d.mean():+.1f}"


def tables(res: dict, seeds: int, steps: int) -> str:
    dense_bytes = 4 * (64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)
    lines = [
        "# SuRP on 8x8 digits (MLP 64-300-100-10)",
        "",
        f"Test accuracy in % (mean ± half-width of the 95% confidence interval over {seeds} seed(s), "
        f"Student t); dense model: {_m(res['dense'])} "
        f"({dense_bytes} bytes as float32). Iterative methods share the schedule "
        f"{', '.join(f'{s:g}' for s in SCHEDULE)} with {steps} Adam steps (batch 64) of retraining per stage.",
        "",
        "## Accuracy vs sparsity",
        "",
        "| sparsity | one-shot SuRP | one-shot global magnitude | iterative SuRP + retrain | "
        "iterative SuRP, no layer normalisation, + retrain | iterative SuRP, Fisher emphasis, + retrain | "
        "global magnitude + retrain | layer-wise magnitude + retrain | Fisher SuRP - global magnitude "
        "(paired) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sorted(res["oneshot_surp"]):
        lines.append(f"| {100 * s:g}% | {_m(res['oneshot_surp'][s])} | {_m(res['oneshot_mag'][s])} | "
                     f"{_m(res['iter_surp'][s])} | {_m(res['iter_surp_none'][s])} | "
                     f"{_m(res['iter_surp_fisher'][s])} | {_m(res['iter_gmag'][s])} | "
                     f"{_m(res['iter_lmag'][s])} | {_diff(res['iter_surp_fisher'][s], res['iter_gmag'][s])} |")
    extra = sorted({k[:-6] for e in res["size"].values() for k in e if k.endswith("_bytes")}
                   - {"surp", "surp6", "csr", "zstd"})
    head = ("| sparsity | SuRP .rdc bytes | SuRP acc (decoded) | SuRP +6 refine bytes | SuRP +6 refine acc | "
            "magnitude CSR bytes | magnitude zstd-safetensors bytes | magnitude acc |")
    sep = "|---|---|---|---|---|---|---|---|"
    for name in extra:
        head += f" {name} bytes | {name} acc |"
        sep += "---|---|"
    lines += ["", "## Accuracy vs file size (retrained models)", "",
              "SuRP: whole `.rdc` file of the iterative SuRP model (SuRP streams + lossless biases + container; "
              "default 3 refinement passes after the sparsity target, or 6), accuracy of the decoded file; "
              "magnitude: the global magnitude + retrain model, lossless float32 values.", "", head, sep]
    for s in sorted(res["size"]):
        e = res["size"][s]
        row = (f"| {100 * s:g}% | {np.mean(e['surp_bytes']):.0f} | {_m(e['surp_acc'])} | "
               f"{np.mean(e['surp6_bytes']):.0f} | {_m(e['surp6_acc'])} | {np.mean(e['csr_bytes']):.0f} | "
               f"{np.mean(e['zstd_bytes']):.0f} | {_m(e['mag_acc'])} |")
        for name in extra:
            row += f" {np.mean(e[name + '_bytes']):.0f} | {_m(e[name + '_acc'])} |"
        lines.append(row)
    if res["budget"]:
        lines += ["", "## Budgeted reads of one progressive SuRP file (90% target, 6 refinement passes, seed 0)", "",
                  "| bytes read | accuracy | sparsity of the decoded model |", "|---|---|---|"]
        for b, a, sp in res["budget"]:
            lines.append(f"| {b} | {100 * a:.1f} | {100 * sp:.1f}% |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    sp = sorted(res["oneshot_surp"])
    x = [100 * s for s in sp]
    for key, label, style in (("oneshot_surp", "one-shot SuRP", "o--"), ("oneshot_mag", "one-shot global magnitude", "s--"),
                              ("iter_surp", "iterative SuRP + retrain", "o-"),
                              ("iter_surp_none", "iterative SuRP (no layer norm.) + retrain", "d-"),
                              ("iter_surp_fisher", "iterative SuRP (Fisher emphasis) + retrain", "v-"),
                              ("iter_gmag", "global magnitude + retrain", "s-"),
                              ("iter_lmag", "layer-wise magnitude + retrain", "^-")):
        a1.plot(x, [100 * np.mean(res[key][s]) for s in sp], style, label=label)
    a1.set_xlabel("sparsity (%)")
    a1.set_ylabel("test accuracy (%)")
    a1.set_title("accuracy vs sparsity")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    ss = sorted(res["size"])
    e = res["size"]
    a2.plot([np.mean(e[s]["surp_bytes"]) for s in ss], [100 * np.mean(e[s]["surp_acc"]) for s in ss], "o-",
            label="SuRP .rdc")
    a2.plot([np.mean(e[s]["surp6_bytes"]) for s in ss], [100 * np.mean(e[s]["surp6_acc"]) for s in ss], "d-",
            label="SuRP .rdc, 6 refinement passes")
    a2.plot([np.mean(e[s]["csr_bytes"]) for s in ss], [100 * np.mean(e[s]["mag_acc"]) for s in ss], "s-",
            label="magnitude + CSR")
    a2.plot([np.mean(e[s]["zstd_bytes"]) for s in ss], [100 * np.mean(e[s]["mag_acc"]) for s in ss], "^-",
            label="magnitude + zstd safetensors")
    if res["budget"]:
        a2.plot([b for b, _, _ in res["budget"]], [100 * a for _, a, _ in res["budget"]], "x:",
                label="SuRP budgeted reads (one file)")
    a2.set_xscale("log")
    a2.set_xlabel("file size (bytes)")
    a2.set_ylabel("test accuracy (%)")
    a2.set_title("accuracy vs file size")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="retraining steps per stage")
    ap.add_argument("--quick", action="store_true", help="3 sparsities, short schedule (smoke test)")
    args = ap.parse_args()
    t = time.time()
    res = run(args.seeds, args.steps, args.quick)
    text = tables(res, args.seeds, args.steps)
    os.makedirs(RESULTS, exist_ok=True)
    name = "surp_digits" + ("_quick" if args.quick else "")
    with open(os.path.join(RESULTS, name + ".md"), "w") as fh:
        fh.write(text + f"\nTotal run time {time.time() - t:.0f} s.\n")
    plot(res, os.path.join(RESULTS, name + ".png"))
    print(text)
    print(f"total {time.time() - t:.1f}s")


if __name__ == "__main__":
    main()
