from common import *
import pickle, sys
from rdformat.producers.channels import ChannelSensitivity
X, Z = features()
m_all = margins(Z)
sub = np.where(m_all[:N_EVAL] < 4)[0]
ev = Evaluator(X, Z, sub)
W = ev.weights
NE, NW, ND = "jax2tf_get_logits_/Const:0", "jax2tf_get_logits_/pjit_get_logits_/MagikaV2/Conv_0/transpose_3:0", "jax2tf_get_logits_/Const_24:0"
G = pickle.load(open(DIR + "/grad.pkl", "rb"))
# calibrated noise-injection sensitivity as in the bench (64 cal files), cached
if os.path.exists(DIR + "/senscal.pkl"):
    sens_cal, cov = pickle.load(open(DIR + "/senscal.pkl", "rb"))
else:
    Xc = X[N_EVAL:N_EVAL + N_CAL]
    t = time.time(); cp = OnnxProbe(MODEL, {"bytes": Xc}, max_samples=None, threads=1); sens_cal = cp.output_sensitivity(); print("sens_cal", time.time() - t)
    t = time.time(); cov = onnx_input_covariances(MODEL, {"bytes": Xc}); print("cov", time.time() - t)
    pickle.dump((sens_cal, cov), open(DIR + "/senscal.pkl", "wb"))
def show(s):
    return {k[-12:]: (round(float(v), 4), None if not isinstance(v, ChannelSensitivity) or v.axis0 is None else round(float(v.axis0.max()/max(v.axis0.min(),1e-12)),1),
                      None if not isinstance(v, ChannelSensitivity) or v.axis1 is None else round(float(v.axis1.max()/max(v.axis1.min(),1e-12)),1)) for k, v in s.items() if W[k].size > 1000}
print("sens_cal", show(sens_cal))
def grad_sens(scheme, base=None, g=None):
    acc = (g or G)["acc"][scheme]
    out = dict(base or sens_cal)  # small tensors keep the calibrated figure, rescaled below
    ref_mean = float(sens_cal[NW])  # put grad figures on the same scale: W equal to cal's W
    scale = ref_mean / acc["W"].mean()
    for k, n in (("E", NE), ("W", NW), ("D", ND)):
        a = acc[k] if k != "W" else acc[k][..., 0]
        ax0 = a.mean(tuple(range(1, a.ndim))); ax1 = a.mean(tuple(i for i in range(a.ndim) if i != 1))
        out[n] = ChannelSensitivity(float(a.mean() * scale), np.maximum(ax0, 1e-30), np.maximum(ax1, 1e-30))
    return out
def point(label, bits, sens=None, cov=None, **kw):
    t = time.time()
    nb, dec = save_load(W, bits, sens, cov, **kw)
    fl, out = ev.flips(dec)
    zr = Z[ev.idx]; r = np.arange(len(zr)); o = np.argsort(-zr, 1)
    d = (out[r, o[:, 0]] - out[r, o[:, 1]]) - (zr[r, o[:, 0]] - zr[r, o[:, 1]])
    low = m_all[ev.idx] < 1
    from scipy.stats import norm
    sig = np.sqrt(np.mean(d[low] ** 2)); ef = norm.cdf(-m_all[:N_EVAL] / sig).sum()
    print(f"{label:28s} bits {bits}: {nb} B flips {len(fl)} (of {N_EVAL})  rms dmargin(m<1) {sig:.4f} all {np.sqrt(np.mean(d**2)):.4f} E[flips] {ef:.1f}  {time.time()-t:.0f}s", flush=True)
    return nb, len(fl)
if __name__ == "__main__":
    GO = pickle.load(open(DIR + "/grad_oracle.pkl", "rb"))
    b = 3.0
    point("weight-error", b)
    point("cal", b, sens_cal)
    point("grad-mse", b, grad_sens("mse"))
    for s in ("mse", "inv2", "flip0.2"):
        point("ORACLE-" + s, b, grad_sens(s, g=GO))
        point("ORACLE-" + s + " str1", b, grad_sens(s, g=GO), channel_strength=1.0)
