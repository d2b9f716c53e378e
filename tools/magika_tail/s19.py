"""best-of-everything ceiling at 3 bits: oracle sensitivity (+ compensation with low-margin / argmax covariances)."""
from s4 import *
GO = pickle.load(open(DIR + "/grad_oracle.pkl", "rb")); so = grad_sens("mse", g=GO)
low = pickle.load(open(DIR + "/lowcovs.pkl", "rb"))[1.0]
co = pickle.load(open(DIR + "/cov_cal.pkl", "rb"))
for b in (2.9, 3.0):
    point("ORACLE+comp(cov m<1)", b, so, low)
    point("ORACLE+comp(argmax576 W)", b, so, {**low, NW: co["argmax"]})
