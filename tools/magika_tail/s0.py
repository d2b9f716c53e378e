from common import *
t=time.time(); X, Z = features(); print(X.shape, Z.shape, time.time()-t)
m = margins(Z[:N_EVAL]); print(np.percentile(m,[1,5,10,25,50]), (m<1).sum(), (m<2).sum(), (m<4).sum())
