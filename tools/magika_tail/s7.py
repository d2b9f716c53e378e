"""extra calibration files: not among the 3576 cached ones."""
from common import *
import json, sysconfig
from pathlib import Path
from magika import Magika
from magika.types.seekable import Seekable
cfg = json.loads((MODEL.parent / "config.min.json").read_text())
roots = [Path(sysconfig.get_paths()["stdlib"]), bt.ROOT]
files = []
for root in roots:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith((".venv", ".git")) and d != "__pycache__"]
        for f in filenames:
            p = Path(dirpath) / f
            try:
                if p.is_file() and not p.is_symlink() and p.stat().st_size >= cfg["min_file_size_for_dl"]:
                    files.append(p)
            except OSError:
                pass
files.sort()
rng = np.random.default_rng(0)
pick = rng.choice(len(files), size=N_EVAL + N_CAL + N_EXTRA, replace=False)
print("files", len(files))
rest = np.setdiff1d(np.arange(len(files)), pick)
more = np.random.default_rng(1).choice(rest, size=min(3000, len(rest)), replace=False)
rows = []
for i in more:
    with open(files[i], "rb") as fh:
        fs = Magika._extract_features_from_seekable(Seekable(fh), cfg["beg_size"], cfg["mid_size"], cfg["end_size"], cfg["padding_token"], cfg["block_size"], cfg["use_inputs_at_offsets"])
    rows.append(fs.beg[: cfg["beg_size"]] + fs.end[-cfg["end_size"]:])
X2 = np.asarray(rows, np.int32)
probe = OnnxProbe(MODEL, [{"bytes": X2[i:i+200]} for i in range(0, len(X2), 200)], threads=1)
Z2 = probe._all_reference[-1]
# exact duplicates of eval rows would leak: drop them
X, Z = features()
ev_keys = {r.tobytes() for r in X[:N_EVAL]}
keep = np.array([r.tobytes() not in ev_keys for r in X2])
print("dups of eval rows dropped", (~keep).sum())
np.savez(DIR + "/more.npz", X=X2[keep], Z=Z2[keep])
m = margins(Z2[keep]); print(len(m), (m < 1).sum(), (m < 4).sum())
