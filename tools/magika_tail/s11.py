import os
DIR = os.environ.get("MAGIKA_TAIL_DIR", "/tmp/mx")
import pickle, numpy as np
GO = pickle.load(open(DIR + "/grad_oracle.pkl", "rb"))["acc"]["mse"]
GP = pickle.load(open(DIR + "/grad_pool.pkl", "rb"))["acc"]["mse"]
GC = pickle.load(open(DIR + "/grad.pkl", "rb"))["acc"]["mse"]
def flat(g): return {k: (g[k][..., 0] if k == "W" else g[k]).astype(np.float64) for k in "EWD"}
GO, GP, GC = flat(GO), flat(GP), flat(GC)
def approx(g, kind):
    out = {}
    for k, a in g.items():
        a = a / sum(x.sum() for x in g.values()) * 1e6
        if kind == "tensor": out[k] = np.full_like(a, a.mean())
        elif kind == "sep":
            p = a.mean()
            for ax in range(a.ndim if k == "W" else 2):
                if kind == "sep" and ax >= 2: continue
                p = p * (a.mean(tuple(i for i in range(a.ndim) if i != ax), keepdims=True) / a.mean())
            out[k] = np.broadcast_to(p, a.shape)
        elif kind == "sep3":
            p = a.mean()
            for ax in range(a.ndim):
                p = p * (a.mean(tuple(i for i in range(a.ndim) if i != ax), keepdims=True) / a.mean())
            out[k] = np.broadcast_to(p, a.shape)
        elif kind == "elem": out[k] = a
        elif kind == "uniform": out[k] = np.ones_like(a)
    return out
def gain(truth, est, floor=1e-3):
    S = np.concatenate([truth[k].ravel() for k in "EWD"]); S = S / S.mean()
    E = np.concatenate([np.asarray(est[k]).ravel() for k in "EWD"]); E = E / E.mean(); E = np.maximum(E, floor)
    # step^2 ~ 1/E, rate equalised via geometric mean: D = mean(S/E) * GM(E); uniform D = mean(S)
    return 0.5 * np.log2(S.mean() / (np.mean(S / E) * np.exp(np.mean(np.log(E)))))
for tname, truth in (("oracle-eval", GO),):
    for ename, g in (("oracle", GO), ("pool(961 low-margin cal)", GP), ("576 cal", GC)):
        print(tname, "<-", ename, {kind: round(gain(truth, approx(g, kind)), 3) for kind in ("tensor", "sep", "sep3", "elem")})
print("--- per-tensor breakdown, strength 0.7 (E^0.7), floor 0.02")
def gain2(truth, est, keys, strength=0.7, floor=0.02):
    S = np.concatenate([truth[k].ravel() for k in keys]); S = S / S.mean()
    E = np.concatenate([np.asarray(est[k]).ravel() for k in keys]); E = E / E.mean(); E = np.maximum(E, floor) ** strength
    return 0.5 * np.log2(S.mean() / (np.mean(S / E) * np.exp(np.mean(np.log(E)))))
for keys in ("EWD", "W", "E", "D"):
    for ename, g in (("oracle", GO), ("pool", GP), ("576cal", GC)):
        print(keys, ename, {kind: round(gain2(GO, approx(g, kind), keys), 3) for kind in ("tensor", "sep", "elem")}, {kind: round(gain2(GO, approx(g, kind), keys, 1.0), 3) for kind in ("sep", "elem")})
