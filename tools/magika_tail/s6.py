from s4 import *
covs = pickle.load(open(DIR + "/cov_cal.pkl", "rb"))
print({k[-14:]: (v.matrix.shape, v.layout) for k, v in cov.items()})
b = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
for name in ("argmax", "argmax_grad", "allpos"):
    c2 = dict(cov); c2[NW] = covs[name]
    point("cal+comp[" + name + "]", b, sens_cal, c2)
    c3 = {NW: covs[name]}
    point("cal+compW-only[" + name + "]", b, sens_cal, c3)
point("grad-mse+comp[argmax]", b, grad_sens("mse"), {**cov, NW: covs["argmax"]})
