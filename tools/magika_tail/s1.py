from common import *
import pickle
X, Z = features()
ev = Evaluator(X, Z, np.arange(N_EVAL))
W = ev.weights
print({k: v.shape for k, v in W.items() if v.size > 1000})
m = margins(Z)
res = {}
for b in [2.5, 3.0, 3.5, 4.0, 5.0]:
    t = time.time()
    nb, dec = save_load(W, b)
    fl, out = ev.flips(dec)
    res[b] = (nb, fl, out)
    dm = (np.sort(out,1)[:,-1]-np.sort(out,1)[:,-2])
    print(f"we bits {b}: {nb} B flips {len(fl)} agree {1-len(fl)/N_EVAL:.4f} flipped margins {np.round(np.sort(m[fl]),3)[:40]} max {m[fl].max() if len(fl) else 0:.3f}  {time.time()-t:.0f}s", flush=True)
    # restore one tensor at a time
    if b == 3.0:
        for k in W:
            if W[k].size < 1000: continue
            d2 = dict(dec); d2[k] = W[k]
            fl2, _ = ev.flips(d2)
            print(f"   restore {k[-40:]} {W[k].shape}: flips {len(fl2)}", flush=True)
            d3 = {kk: (W[kk] if kk != k else dec[kk]) for kk in W}
            fl3, _ = ev.flips(d3)
            print(f"   only {k[-40:]} quantized: flips {len(fl3)}", flush=True)
pickle.dump(res, open(DIR + "/we.pkl", "wb"))
