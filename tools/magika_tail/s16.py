import s4
from s4 import *
s4.ev = Evaluator(X, Z, np.arange(N_EVAL))
sub5 = set(np.where(m_all[:N_EVAL] < 5)[0])
covs = pickle.load(open(DIR + "/cov_cal.pkl", "rb"))
GP = pickle.load(open(DIR + "/grad_pool.pkl", "rb")); gp = grad_sens("mse", g=GP)
prof = dict(sens_cal); prof[NW] = ChannelSensitivity(float(sens_cal[NW]), gp[NW].axis0, gp[NW].axis1)
for label, b, s, c in (("weight-error FULL", 2.0, None, None), ("cal FULL", 2.0, sens_cal, None), ("cal+comp FULL", 3.0, sens_cal, cov), ("cal+Wprof+comp FULL", 3.0, prof, {**cov, NW: covs["allpos"]})):
    nb, dec = save_load(W, b, s, c)
    fl, _ = s4.ev.flips(dec)
    print(f"{label} bits {b}: {nb} B flips {len(fl)}; outside m<5 subset: {sum(int(i) not in sub5 for i in fl)}; max margin flipped {m_all[fl].max():.2f}", flush=True)
