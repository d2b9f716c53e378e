import os
DIR = os.environ.get("MAGIKA_TAIL_DIR", "/tmp/mx")
import numpy as np
from scipy.stats import norm
d = np.load(DIR + "/feats.npz"); Z = d["Z"][:3000]
s = np.sort(Z, 1); m = s[:, -1] - s[:, -2]
for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2):
    print(f"files with margin < {t}: {(m < t).sum()}")
# duplicates inside eval set
keys = [r.tobytes() for r in d["X"][:3000]]
print("distinct eval feature rows:", len(set(keys)), "of 3000")
for sig in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
    p = norm.cdf(-m / sig)
    print(f"sigma {sig}: E[flips] {p.sum():.1f} sd {np.sqrt((p*(1-p)).sum()):.1f}  from m<0.05: {p[m<0.05].sum():.1f}")
