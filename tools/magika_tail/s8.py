from s4 import *
GP = pickle.load(open(DIR + "/grad_pool.pkl", "rb"))
b = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
for s in ("mse", "flip0.4", "flip0.8"):
    point("POOL-" + s, b, grad_sens(s, g=GP))
