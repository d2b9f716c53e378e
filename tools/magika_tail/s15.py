import os
DIR = os.environ.get("MAGIKA_TAIL_DIR", "/tmp/mx")
import json, math, sys, numpy as np
from pathlib import Path; REPO = Path(__file__).resolve().parents[2]; sys.path.insert(0, str(REPO / "tools")); sys.path.insert(0, str(REPO))
from bench_task import bytes_at
C = json.load(open(sys.argv[1] if len(sys.argv) > 1 else DIR + "/curves.json"))
N = 3000
def fit(pts, flips_bar):
    # smooth: least squares log(flips) = a + b log(bytes) over all points with 8..200 flips
    x = np.array([math.log(p["bytes"]) for p in pts if 8 <= p["flips"] <= 200]); y = np.array([math.log(p["flips"]) for p in pts if 8 <= p["flips"] <= 200])
    b, a = np.polyfit(x, y, 1)
    return math.exp((math.log(flips_bar) - a) / b), b
we = C["weight-error"]
for bar in (0.99, 0.98, 0.97):
    fb = round((1 - bar) * N)
    ref = bytes_at([{"bytes": p["bytes"], "quality": 1 - p["flips"] / N} for p in we], bar)
    reff, _ = fit(we, fb)
    print(f"--- bar {bar} (<= {fb} disagreeing files of {N})")
    for name, pts in C.items():
        q = [{"bytes": p["bytes"], "quality": 1 - p["flips"] / N} for p in pts]
        b = bytes_at(q, bar); f, slope = fit(pts, fb)
        print(f"{name:45s} last-crossing {b and round(b):>8} ({'' if b is None or ref is None else f'{100*(1-b/ref):+.1f}%'})   log-fit {round(f):>8} ({100*(1-f/reff):+.1f}%, slope {slope:.2f})")
