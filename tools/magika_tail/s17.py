import os
DIR = os.environ.get("MAGIKA_TAIL_DIR", "/tmp/mx")
import re, math, numpy as np
from scipy.stats import norm
rows = {}
for line in open(DIR + "/s13.log"):
    m = re.match(r"(.{28}) bits ([\d.]+): (\d+) B flips (\d+).*rms dmargin\(m<1\) ([\d.]+) all ([\d.]+) E\[flips\] ([\d.]+)", line)
    if m: rows.setdefault(m.group(1).strip(), []).append((int(m.group(3)), float(m.group(5)), float(m.group(6)), float(m.group(7))))
def at(pts, col, target):
    x = np.log([p[0] for p in pts]); y = np.log([p[col] for p in pts])
    b, a = np.polyfit(x, y, 1)   # smooth log-log fit of sigma (or E[flips]) vs bytes
    return math.exp((math.log(target) - a) / b)
for fl in (30, 60, 90):
    print(f"--- E[flips] = {fl} (smooth model: sum_f Phi(-m_f/sigma), sigma = rms margin change on m<1 files)")
    ref = at(rows["weight-error"], 3, fl)
    for k, pts in rows.items():
        v = at(pts, 3, fl); print(f"{k:30s} {v:9.0f}  {100*(1-v/ref):+.1f}%")
