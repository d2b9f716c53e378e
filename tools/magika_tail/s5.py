"""max-pool-aware conv covariances from torch: H over argmax positions (unweighted / margin-gradient weighted)."""
from common import *
import torch, pickle
torch.set_num_threads(1)
from tmodel import *
from rdformat.producers.compensate import InputCovariance
X, Z = features()
p = load()
which = sys.argv[1] if len(sys.argv) > 1 else "cal"
idx = np.arange(N_EVAL, N_EVAL + N_CAL + N_EXTRA) if which == "cal" else (np.arange(N_EVAL, N_EVAL + N_CAL) if which == "cal64" else np.where(margins(Z[:N_EVAL]) < 4)[0])
Zc = Z[idx]; o = np.argsort(-Zc, 1)
H1 = np.zeros((1280, 1280)); H2 = np.zeros((1280, 1280)); HA = np.zeros((1280, 1280)); n1 = 0; w2 = 0.0; nA = 0
t = time.time()
B = 16
for i in range(0, len(idx), B):
    sl = slice(i, i + B)
    xb = torch.tensor(X[idx[sl]])
    with torch.no_grad():
        x = trunk(p, xb)                                   # (b,256,512)
    c = (torch.nn.functional.conv1d(x, p["W"][..., 0]) + p["cb"].reshape(1, 512, 1)).requires_grad_(True)
    a = gelu(c).amax(2)
    mu = a.mean(1, keepdim=True); var = (a * a).mean(1, keepdim=True) - mu * mu
    a = (a - mu) / torch.sqrt(var.clamp_min(0) + 1e-6) * p["g1"].reshape(1, 512) + p["b1"].reshape(1, 512)
    z = a @ p["D"] + p["Db"].reshape(1, 214)
    r = torch.arange(z.shape[0])
    (z[r, o[sl, 0]] - z[r, o[sl, 1]]).sum().backward()
    gc = c.grad.numpy()                                    # (b,512,508), nonzero at argmax only
    pos = gelu(c).detach().numpy().argmax(2)               # (b,512)
    u = np.take_along_axis(gc, pos[..., None], 2)[..., 0]  # (b,512)
    xn = x.numpy().astype(np.float64)
    win = np.lib.stride_tricks.sliding_window_view(xn, 5, axis=2)   # (b,256,508,5)
    for f in range(xn.shape[0]):
        rows = win[f][:, pos[f], :].transpose(1, 0, 2).reshape(512, 1280)   # (512 o, 256*5)
        H1 += rows.T @ rows; n1 += 512
        wr = rows * np.abs(u[f])[:, None]
        H2 += wr.T @ wr; w2 += float((u[f] ** 2).sum())
        allr = win[f].transpose(1, 0, 2).reshape(508, 1280)
        HA += allr.T @ allr; nA += 508
    if i % 128 == 0: print(i, time.time() - t, flush=True)
covs = {"argmax": InputCovariance(H1 / n1, "out_in", n1), "argmax_grad": InputCovariance(H2 / w2, "out_in", n1), "allpos": InputCovariance(HA / nA, "out_in", nA)}
pickle.dump(covs, open(fDIR + "/cov_{which}.pkl", "wb"))
for k, cv in covs.items():
    ev_ = np.linalg.eigvalsh(cv.matrix[0]); d = np.diag(cv.matrix[0])
    print(k, "AM/GM eig", ev_.mean() / np.exp(np.log(np.maximum(ev_, 1e-12)).mean()), "diag AM/GM", d.mean() / np.exp(np.log(d).mean()))
