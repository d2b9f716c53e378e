from s4 import *
from scipy.stats import norm
b = 3.0
def sig(out):
    zr = Z[ev.idx]; r = np.arange(len(zr)); o = np.argsort(-zr, 1)
    d = (out[r, o[:, 0]] - out[r, o[:, 1]]) - (zr[r, o[:, 0]] - zr[r, o[:, 1]])
    low = m_all[ev.idx] < 1
    return np.mean(d[low] ** 2), np.mean(d ** 2)
for label, s, c in (("weight-error", None, None), ("cal", sens_cal, None), ("cal+comp", sens_cal, cov)):
    nb, dec = save_load(W, b, s, c)
    tot = sig(ev.flips(dec)[1])
    line = f"{label:14s} {nb} B  sigma2(m<1) {tot[0]:.4f} all {tot[1]:.4f} |"
    for k, n in (("E", NE), ("W", NW), ("D", ND)):
        d3 = {kk: (W[kk] if kk != n else dec[kk]) for kk in W}
        fl, out = ev.flips(d3)
        s2 = sig(out)
        line += f" only {k}: sig2 {s2[0]:.4f}/{s2[1]:.4f} per1Mw {s2[0]/W[n].size*1e6:.3f} flips {len(fl)} err2 {np.sum((dec[n]-W[n])**2.0):.3g} |"
    print(line, flush=True)
