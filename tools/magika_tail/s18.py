"""compensation with covariances measured on LOW-MARGIN calibration files only (pool of 3451 non-eval files)."""
from s4 import *
d2 = np.load(DIR + "/more.npz")
ev_keys = {r.tobytes() for r in X[:N_EVAL]}
c = np.arange(N_EVAL, N_EVAL + N_CAL + N_EXTRA); c = c[[X[i].tobytes() not in ev_keys for i in c]]
XP = np.concatenate([X[c], d2["X"]]); ZP = np.concatenate([Z[c], d2["Z"]]); mp = margins(ZP)
b = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
res = {}
for thr in [float(t) for t in (sys.argv[2].split(",") if len(sys.argv) > 2 else ["1", "2"])]:
    sel = XP[mp < thr]
    t = time.time()
    cv = onnx_input_covariances(MODEL, [{"bytes": sel[i:i + 64]} for i in range(0, len(sel), 64)], max_rows=10**6)
    print(f"margin<{thr}: {len(sel)} files, cov {time.time()-t:.0f}s", flush=True)
    point(f"cal+comp(cov m<{thr})", b, sens_cal, cv)
    res[thr] = cv
pickle.dump(res, open(DIR + "/lowcovs.pkl", "wb"))
