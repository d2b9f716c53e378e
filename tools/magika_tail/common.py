"""Issue 12 experiment: why magika's task-aware tail is flat at the 99% agreement bar (branch magika-exp).

Throw-away experiment scripts (not part of the library or the bench), kept so the numbers of the
report can be re-run. Run them in order from this directory with the project's interpreter,
OMP_NUM_THREADS=1; everything is cached in $MAGIKA_TAIL_DIR (default /tmp/mx). Magika costs ~15 ms per
file here; only files whose original top1-top2 logit margin is small can flip, so most points are
evaluated on the eval files with margin < 4 or < 5 (s16 checks on all 3000 that no other file flips).

  s0   features of 3576 real files (bench_task.magika_features, seed 0: 3000 eval, 64 cal, 512 extra cal)
       and the original logits, once
  s1   weight-error curve on all 3000 files; at 3 bits, one tensor restored / only one tensor quantized
  s3   per-file margin gradients (torch re-implementation, tmodel.py) summed per element: "cal" (576 cal
       files), "oracle" (the eval files with margin < 4), "pool" (low-margin files of 3451 non-eval files)
  s4   shared: calibrated noise-injection sensitivity and covariances as the bench makes them, point()
  s5   conv covariances at the positions magika's GlobalMaxPool selects (plain / gradient-weighted / all)
  s6, s8, s10, s12  single 3-bit points of the variants (compensation covariances, gradient profiles)
  s7   2898 more non-eval calibration files (exact duplicates of eval rows dropped)
  s9   per-tensor balance: output-margin variance each tensor alone causes, per weight
  s11  high-rate ceiling of allocation: gain in bits/weight with per-tensor / separable / per-element steps
  s13  curves of 5 methods (run as `s13.py > $MAGIKA_TAIL_DIR/s13.log`); s15 bytes at 99/98/97% (last
       crossing and log-log fit); s17 the same from the smooth E[flips] model
  s14  margin statistics of the eval files and the binomial noise of the flip count
  s16  checks on all 3000 files that no file outside the low-margin subsets flips
  s18  compensation with covariances from low-margin calibration files only
  s19  ceiling: oracle sensitivity plus compensation
  s20  bound: only the conv quantized (everything else float): its bytes against the margin noise
"""
import os, sys, io, time, json
from pathlib import Path
os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO / "tools")); sys.path.insert(0, str(Path(__file__).resolve().parent))
#: where every script caches features, gradients, covariances and curves
DIR = os.environ.get("MAGIKA_TAIL_DIR", "/tmp/mx")
os.makedirs(DIR, exist_ok=True)
import numpy as np
import rdformat
from rdformat.onnx_calibration import OnnxProbe, onnx_input_covariances
import bench_task as bt
MODEL = bt.magika_model_path()
CACHE = DIR + "/feats.npz"
N_EVAL, N_CAL, N_EXTRA = 3000, 64, 512

def features():
    if os.path.exists(CACHE):
        d = np.load(CACHE); return d["X"], d["Z"]
    X, names = bt.magika_features(N_EVAL + N_CAL + N_EXTRA, seed=0)
    probe = OnnxProbe(MODEL, [{"bytes": X[i:i+200]} for i in range(0, len(X), 200)], threads=1)
    Z = probe._all_reference[-1]
    np.savez(CACHE, X=X, Z=Z)
    return X, Z

def margins(Z):
    s = np.sort(Z, axis=1)
    return s[:, -1] - s[:, -2]

class Evaluator:
    """top-1 agreement on subset idx of eval files; counts disagreements (flips) among them."""
    def __init__(self, X, Z, idx):
        self.idx = np.asarray(idx)
        self.probe = OnnxProbe(MODEL, [{"bytes": X[self.idx[i:i+200]]} for i in range(0, len(self.idx), 200)], threads=1)
        self.ref = Z[self.idx].argmax(1)
        self.weights = dict(self.probe.weights)
    def flips(self, decoded):
        out = self.probe._run_all({k: np.asarray(decoded[k], self.weights[k].dtype) for k in self.weights})[-1]
        return self.idx[out.argmax(1) != self.ref], out

def save_load(weights, bits, sens=None, cov=None, **kw):
    buf = io.BytesIO()
    rdformat.save(weights, buf, lossy=rdformat.Lossy(bits=bits, sensitivity=sens, covariance=cov, **kw))
    return len(buf.getvalue()), rdformat.load(buf.getvalue())
