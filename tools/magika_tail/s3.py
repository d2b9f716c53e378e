from common import *
import torch, pickle
from torch.func import vmap, grad
torch.set_num_threads(1)
from tmodel import *
X, Z = features()
p = load()
WHICH = sys.argv[1] if len(sys.argv) > 1 else 'cal'
idx = np.arange(N_EVAL, N_EVAL + N_CAL + N_EXTRA) if WHICH == 'cal' else np.where(margins(Z[:N_EVAL]) < 4)[0]
if WHICH == 'pool':
    d2 = np.load(DIR + '/more.npz'); ev_keys = {r.tobytes() for r in X[:N_EVAL]}
    c = np.arange(N_EVAL, N_EVAL + N_CAL + N_EXTRA); c = c[[X[i].tobytes() not in ev_keys for i in c]]
    X = np.concatenate([X[c], d2['X']]); Z = np.concatenate([Z[c], d2['Z']])
    idx = np.where(margins(Z) < 4)[0]; print('pool', len(X), 'm<4', len(idx))
Zc = Z[idx]; order = np.argsort(-Zc, 1); c1, c2 = order[:, 0], order[:, 1]
m = margins(Zc)
SEL = torch.zeros(len(idx), 214); SEL[torch.arange(len(idx)), torch.tensor(c1)] = 1; SEL[torch.arange(len(idx)), torch.tensor(c2)] = -1
def margin(E, W, D, x, sel):
    q = dict(p); q["E"] = E
    z = head(q, trunk(q, x[None]), W=W, D=D)[0]
    return (z * sel).sum()
g = vmap(grad(margin, argnums=(0, 1, 2)), in_dims=(None, None, None, 0, 0))
schemes = {"mse": lambda m: np.ones_like(m), "inv2": lambda m: 1 / np.maximum(m, 0.05) ** 2}
for s in (0.1, 0.2, 0.4, 0.8):
    schemes[f"flip{s}"] = (lambda s: lambda m: np.exp(-0.5 * (m / s) ** 2) * m / s ** 3)(s)
W = {k: np.asarray(w) for k, w in zip("EWD", (p["E"], p["W"], p["D"]))}
acc = {s: {k: np.zeros(W[k].shape) for k in "EWD"} for s in schemes}
gn = np.zeros((len(idx), 3))
t = time.time()
B = 16
for i in range(0, len(idx), B):
    sl = slice(i, i + B)
    gE, gW, gD = g(p["E"], p["W"], p["D"], torch.tensor(X[idx[sl]]), SEL[sl])
    G = {"E": gE.numpy().astype(np.float64) ** 2, "W": gW.numpy().astype(np.float64) ** 2, "D": gD.numpy().astype(np.float64) ** 2}
    gn[sl] = np.stack([G[k].reshape(len(G[k]), -1).sum(1) for k in "EWD"], 1)
    for s, f in schemes.items():
        w = f(m[sl])
        for k in "EWD":
            acc[s][k] += np.tensordot(w, G[k], 1)
    if i % 128 == 0: print(i, time.time() - t, flush=True)
pickle.dump({"acc": acc, "gn": gn, "m": m}, open({"cal": DIR + "/grad.pkl", "pool": DIR + "/grad_pool.pkl"}.get(WHICH, DIR + "/grad_oracle.pkl"), "wb"))
for s in schemes:
    means = {k: acc[s][k].mean() for k in "EWD"}
    tot = sum(acc[s][k].sum() for k in "EWD"); n = sum(acc[s][k].size for k in "EWD")
    S = np.concatenate([acc[s][k].ravel() for k in "EWD"]); S = np.maximum(S, S.max() * 1e-9)
    amgm = S.mean() / np.exp(np.log(S).mean())
    # separable approx for W: a_o * b_c * c_k
    A = acc[s]["W"][..., 0]; sep = A.mean((1, 2), keepdims=True) * A.mean((0, 2), keepdims=True) * A.mean((0, 1), keepdims=True) / A.mean() ** 2
    Ssep = np.concatenate([acc[s]["E"].ravel(), sep.ravel(), acc[s]["D"].ravel()])
    # theoretical loss when allocating with Ssep but true S: D_i ~ 1/Ssep_i ; cost sum S_i/Ssep_i at rate GM
    print(s, "per-elem mean E/W/D rel to W:", {k: round(means[k] / means["W"], 2) for k in "EWD"},
          f"AM/GM all {amgm:.2f} -> {0.5*np.log2(amgm):.2f} bits")
