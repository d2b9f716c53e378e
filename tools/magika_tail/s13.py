import s4
from s4 import *
import json
# wider subset for low-rate points
sub5 = np.where(m_all[:N_EVAL] < 5)[0]
s4.ev = ev5 = Evaluator(X, Z, sub5)
print("subset m<5:", len(sub5))
GP = pickle.load(open(DIR + "/grad_pool.pkl", "rb")); GO = pickle.load(open(DIR + "/grad_oracle.pkl", "rb"))
gp = grad_sens("mse", g=GP)
prof = dict(sens_cal); prof[NW] = ChannelSensitivity(float(sens_cal[NW]), gp[NW].axis0, gp[NW].axis1)
covs = pickle.load(open(DIR + "/cov_cal.pkl", "rb"))
methods = {
    "weight-error": (dict(), [2.0, 2.5, 3.0, 3.5, 3.75, 4.0, 4.25, 4.5, 5.0]),
    "cal": (dict(sens=sens_cal), [2.0, 2.5, 2.75, 3.0, 3.25, 3.5, 4.0]),
    "cal+comp": (dict(sens=sens_cal, cov=cov), [2.0, 2.5, 2.75, 3.0, 3.25, 3.5, 4.0]),
    "cal+Wprofile(grad,961 cal)+comp(576 cal)": (dict(sens=prof, cov={**cov, NW: covs["allpos"]}), [2.0, 2.5, 2.75, 3.0, 3.25, 3.5, 4.0]),
    "ORACLE grad-mse on eval files": (dict(sens=grad_sens("mse", g=GO)), [2.0, 2.5, 2.75, 3.0, 3.25, 3.5, 4.0]),
}
out = {}
for name, (kw, bl) in methods.items():
    out[name] = []
    for b in bl:
        nb, fl = point(name[:28], b, kw.get("sens"), kw.get("cov"))
        out[name].append({"bits": b, "bytes": nb, "flips": fl})
    json.dump(out, open(DIR + "/curves.json", "w"))
