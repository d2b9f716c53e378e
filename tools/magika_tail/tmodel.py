"""magika standard_v3_3 re-implemented in torch (for per-file margin gradients)."""
import numpy as np, torch, onnx
from onnx import numpy_helper
from common import MODEL
P = "jax2tf_get_logits_/pjit_get_logits_/MagikaV2/"
NAMES = dict(E="jax2tf_get_logits_/Const:0", Eb=P+"Dense_0/Reshape:0", g0=P+"LayerNorm_0/Reshape_2:0", b0=P+"LayerNorm_0/Reshape_3:0",
             W=P+"Conv_0/transpose_3:0", cb="const_fold_opt__209", g1=P+"LayerNorm_1/Reshape_2:0", b1=P+"LayerNorm_1/Reshape_3:0",
             D="jax2tf_get_logits_/Const_24:0", Db=P+"Dense_1/Reshape:0")
def load():
    m = onnx.load(str(MODEL))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return {k: torch.tensor(np.array(inits[v], np.float32)) for k, v in NAMES.items()}
def gelu(x):
    return 0.5 * x * (1 + torch.tanh(0.7978846 * (x + 0.044715 * x ** 3)))
def trunk(p, X):
    """X int (N,2048) -> conv input (N,256,512) after LN0."""
    e = gelu(p["E"][X.long()] + p["Eb"].reshape(1, 1, 64))      # (N,2048,64)
    h = e.reshape(-1, 512, 256)
    mu = h.mean(1, keepdim=True); var = (h * h).mean(1, keepdim=True) - mu * mu
    h = (h - mu) / torch.sqrt(var.clamp_min(0) + 1e-6) * p["g0"] + p["b0"]
    return h.transpose(1, 2)                                    # (N,256,512)
def head(p, x, W=None, D=None):
    W = p["W"] if W is None else W
    c = torch.nn.functional.conv1d(x, W[..., 0]) + p["cb"].reshape(1, 512, 1)
    a = gelu(c).amax(2)                                         # (N,512)
    mu = a.mean(1, keepdim=True); var = (a * a).mean(1, keepdim=True) - mu * mu
    a = (a - mu) / torch.sqrt(var.clamp_min(0) + 1e-6) * p["g1"].reshape(1, 512) + p["b1"].reshape(1, 512)
    D = p["D"] if D is None else D
    return a @ D + p["Db"].reshape(1, 214)
def logits(p, X):
    return head(p, trunk(p, X))
