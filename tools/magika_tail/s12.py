from s4 import *
ev_keys = {r.tobytes() for r in X[:N_EVAL]}
c576 = np.arange(N_EVAL, N_EVAL + N_CAL + N_EXTRA); c576 = c576[[X[i].tobytes() not in ev_keys for i in c576]]
Xc64 = X[N_EVAL:N_EVAL + N_CAL]; Xc576 = X[c576]
print("cal64 dups with eval:", sum(X[i].tobytes() in ev_keys for i in range(N_EVAL, N_EVAL + N_CAL)))
b = 3.0
res = {}
for label, xc, mr in (("64 files rows=1e6", Xc64, 10**6), ("576 files default rows", Xc576, None), ("576 files rows=1e6", Xc576, 10**6)):
    t = time.time()
    feeds = [{"bytes": xc[i:i + 64]} for i in range(0, len(xc), 64)]
    c = onnx_input_covariances(MODEL, feeds, **({} if mr is None else {"max_rows": mr}))
    print(label, "cov", {k[-10:]: v.samples for k, v in c.items()}, f"{time.time()-t:.0f}s")
    point("cal+comp " + label, b, sens_cal, c)
    res[label] = c
pickle.dump(res, open(DIR + "/libcovs.pkl", "wb"))
