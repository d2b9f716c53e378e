from s4 import *
for n in (NE, NW, ND):
    v = sens_cal[n]; print(n[-10:], None if v.axis0 is None else (len(np.unique(v.axis0)), v.axis0.max()/v.axis0.min()), None if v.axis1 is None else (len(np.unique(v.axis1)), v.axis1.max()/v.axis1.min()))
GP = pickle.load(open(DIR + "/grad_pool.pkl", "rb"))
gp = grad_sens("mse", g=GP)
b = 3.0
def mix(keys):
    out = dict(sens_cal)
    for n in keys:
        out[n] = ChannelSensitivity(float(sens_cal[n]), gp[n].axis0, gp[n].axis1)
    return out
point("cal+gradprofile W", b, mix([NW]))
point("cal+gradprofile W,E,D", b, mix([NW, NE, ND]))
point("cal+gradprofile W str1", b, mix([NW]), channel_strength=1.0)
point("cal+gradprofile W +comp", b, mix([NW]), cov)
