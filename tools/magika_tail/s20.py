"""bound: only the conv quantized (embedding, dense and small tensors float): conv bytes vs margin noise."""
from s4 import *
for b in (2.8, 3.0, 3.2, 3.4):
    nb, dec = save_load({NW: W[NW]}, b)
    d2 = dict(W); d2[NW] = dec[NW]
    fl, out = ev.flips(d2)
    zr = Z[ev.idx]; r = np.arange(len(zr)); o = np.argsort(-zr, 1)
    d = (out[r, o[:, 0]] - out[r, o[:, 1]]) - (zr[r, o[:, 0]] - zr[r, o[:, 1]])
    print(f"conv only, {b} bits: conv {nb} B, flips {len(fl)}, rms dmargin(m<1) {np.sqrt(np.mean(d[m_all[ev.idx] < 1] ** 2)):.4f}", flush=True)
