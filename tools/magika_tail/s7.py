"""extra calibration files: not among the 3576 cached ones."""
from common import *
files = bt.magika_files()
rng = np.random.default_rng(0)
pick = rng.choice(len(files), size=N_EVAL + N_CAL + N_EXTRA, replace=False)
print("files", len(files))
rest = np.setdiff1d(np.arange(len(files)), pick)
more = np.random.default_rng(1).choice(rest, size=min(3000, len(rest)), replace=False)
X2 = bt.magika_rows([files[i] for i in more])
probe = OnnxProbe(MODEL, [{"bytes": X2[i:i+200]} for i in range(0, len(X2), 200)], threads=1)
Z2 = probe._all_reference[-1]
# exact duplicates of eval rows would leak: drop them
X, Z = features()
ev_keys = {r.tobytes() for r in X[:N_EVAL]}
keep = np.array([r.tobytes() not in ev_keys for r in X2])
print("dups of eval rows dropped", (~keep).sum())
np.savez(DIR + "/more.npz", X=X2[keep], Z=Z2[keep])
m = margins(Z2[keep]); print(len(m), (m < 1).sum(), (m < 4).sum())
