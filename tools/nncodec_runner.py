"""Run NNCodec 2.1.3 (ISO/IEC 15938-17 NNC reference software) on a set of tensors, at several QPs.

This script runs INSIDE the NNCodec virtual environment made by tools/setup_nncodec.sh (numpy<2,
CPU torch, nncodec 2.1.3); our benchmarks reach it through tools/nncodec_peer.py. It imports nothing
from rdformat.

    <venv>/bin/python tools/nncodec_runner.py REQUEST.json     # encode + decode, write results
    <venv>/bin/python tools/nncodec_runner.py --check          # import + tiny round trip, print versions

REQUEST.json:

    {"tensors": "/abs/in.npz",          # float32 (or int32) arrays, any shape, any names
     "qps": [-32, -24, -16],            # NNCodec QPs for weight tensors (>= 2-D)
     "out_dir": "/abs/out",             # result.json and qp_<qp>.npz (decoded tensors) go here
     "options": {...}}                  # see DEFAULTS below; every NNCodec parameter is set explicitly

For each qp, all tensors are coded into ONE bitstream with ``nncodec.nn.encode`` and decoded with
``nncodec.nn.decode`` (NNCodec's documented NN-coding API; for a dict of numpy arrays it calls
``nncodec.nnc.compress``/``decompress``). ``bytes`` is ``len(bitstream)``: the real, complete NNR
bitstream (headers, tensor names and shapes included). Times are wall-clock seconds of those two calls,
single-threaded, the minimum over ``repeats`` runs; ``*_cpu_s`` are the process CPU times of the
same calls (less disturbed than wall clock when other work shares the cores).

What NNCodec does with tensors, by shape (NNRModel.init_model_from_dict in 2.1.3):
  * ndim >= 2 -> parameter type "weight": quantized with ``qp``;
  * ndim == 1 -> type "unspecified" (biases, PReLU slopes, norms): quantized with ``nonweight_qp``
    (default -75: step ~2.4e-6, near-lossless, NOT lossless); dependent quantization applies to them
    too when use_dq is on;
  * ndim == 0 -> NNCodec's encoder crashes (IndexError in coder/baseline.py). Option ``scalars``:
    "reshape" (default) codes it as a 1-element 1-D tensor and reshapes the result back to ();
    "skip" leaves it out of the bitstream (reported in ``skipped``; not in the decoded npz);
    "error" fails.
Step size for a QP (qp_density = 2): step = (4 + (qp & 3)) * 2**((qp >> 2) - 2), i.e. 2**(qp/4) when
qp is a multiple of 4. With use_dq the decoder reconstructs on a grid of that step, each of the two
dependent quantizers having twice the step.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

DEFAULTS = {
    "use_dq": True,  # dependent scalar (trellis-coded) quantization
    "nonweight_qp": -75,  # QP for 1-D tensors (NNCodec default); None -> qp - 8 (step / 4)
    "row_skipping": True,  # nncodec.nn default: skip all-zero rows in arithmetic coding
    "param_opt": True,  # nncodec.nn default: per-tensor CABAC parameter optimisation
    "opt_qp": False,  # no size-based per-layer QP modification
    "approx_method": "uniform",  # uniform scalar quantization (not codebook)
    "bitdepth": None,  # None: use qp (an int here would pick integer-aligned QPs instead)
    "sparsity": 0.0,
    "struct_spars_factor": 0.0,
    "tca": False,
    "pre_signalling": False,
    "compress_differences": False,
    "bnf": False,
    "lsa": False,
    "qp_per_tensor": None,
    "scalars": "reshape",  # reshape | skip | error  (0-d tensors, see module doc)
    "repeats": 1,  # timing: minimum over this many encode and decode runs
    "decode_repeats": 0,  # timing: at least this many decode runs (the minimum is taken)
    "keep_bitstreams": False,  # also write qp_<qp>.nnc into out_dir
}
NNCODEC_VERSION = "2.1.3"


def _install_torchvision_stub() -> bool:
    """Make ``import nncodec.nnc`` work without torchvision.

    nncodec imports its image-classification helpers (datasets/transforms of torchvision) at import
    time, although coding a dict of arrays never uses them. PyPI's torchvision wheels need torch's
    CUDA libraries (libtorch_cuda.so), so they do not load beside the CPU torch of our venv. If the
    real torchvision imports, it is used; otherwise a placeholder module is registered whose classes
    can be built but raise if ever called. Returns True if the stub was installed."""
    try:
        import torchvision  # noqa: F401

        return False
    except Exception:
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]

    class _Unavailable:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, *args, **kwargs):
            raise RuntimeError("torchvision is not installed in the NNCodec venv (stub module)")

    def _getattr(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unavailable

    tv = types.ModuleType("torchvision")
    tv.__getattr__ = _getattr
    tv.__version__ = "0.0.0+stub"
    for sub in ("datasets", "transforms", "models", "ops", "io", "utils"):
        m = types.ModuleType("torchvision." + sub)
        m.__getattr__ = _getattr
        setattr(tv, sub, m)
        sys.modules["torchvision." + sub] = m
    sys.modules["torchvision"] = tv
    return True


def _import_nncodec():
    stub = _install_torchvision_stub()
    import numpy as np
    import torch

    torch.set_num_threads(1)
    with contextlib.redirect_stdout(sys.stderr):
        import nncodec.nn as nn_api
        from nncodec.nnc_core.common import get_stepsize_from_qp
    return np, torch, nn_api, get_stepsize_from_qp, stub


def _versions(np, torch, stub) -> dict:
    from importlib.metadata import version

    return {
        "nncodec": version("nncodec"),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torchvision": "stub" if stub else version("torchvision"),
        "python": sys.version.split()[0],
        "torch_threads": torch.get_num_threads(),
    }


def _nn_args(qp: int, opts: dict, results_dir: str) -> dict:
    """Every key of nncodec.nn.nncargs, set explicitly."""
    return {
        "approx_method": opts["approx_method"],
        "bitdepth": opts["bitdepth"],
        "compress_differences": bool(opts["compress_differences"]),
        "nonweight_qp": opts["nonweight_qp"],
        "opt_qp": bool(opts["opt_qp"]),
        "qp": int(qp),
        "qp_density": 2,
        "quantize_only": False,
        "results": results_dir,
        "row_skipping": bool(opts["row_skipping"]),
        "sparsity": float(opts["sparsity"]),
        "struct_spars_factor": float(opts["struct_spars_factor"]),
        "tca": bool(opts["tca"]),
        "pre_signalling": bool(opts["pre_signalling"]),
        "use_dq": bool(opts["use_dq"]),
        "param_opt": bool(opts["param_opt"]),
        "qp_per_tensor": opts["qp_per_tensor"],
        "verbose": False,
        "bnf": bool(opts["bnf"]),
        "lsa": bool(opts["lsa"]),
        "wandb": False,
        "lr": 1e-3,
        "epochs": 1,
        "dataset_path": None,
        "model": "NN",
        "max_batches": None,
        "workers": 1,
        "batch_size": 8,
    }


def _safe_name(name: str) -> bool:
    # NNCodec treats names ending in _G/_H as low-rank factors and asserts on "_G"/"_H" elsewhere.
    return "_G" not in name and "_H" not in name


def run_request(req: dict) -> dict:
    np, torch, nn_api, get_stepsize_from_qp, stub = _import_nncodec()
    opts = {**DEFAULTS, **(req.get("options") or {})}
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown options: {sorted(unknown)}")
    if opts["scalars"] not in ("reshape", "skip", "error"):
        raise ValueError("options.scalars must be reshape, skip or error")
    out_dir = req["out_dir"]
    os.makedirs(out_dir, exist_ok=True)

    with np.load(req["tensors"], allow_pickle=False) as z:
        src = {k: z[k] for k in z.files}

    coded: dict[str, np.ndarray] = {}  # NNCodec name -> array as given to NNCodec
    back: dict[str, tuple[str, tuple]] = {}  # NNCodec name -> (original name, original shape)
    info: dict[str, dict] = {}
    skipped: list[dict] = []
    renamed: dict[str, str] = {}
    for i, (name, a) in enumerate(src.items()):
        if a.dtype not in (np.float32, np.int32):
            raise ValueError(f"{name}: dtype {a.dtype} (NNCodec takes float32 or int32)")
        entry = {"shape": list(a.shape), "dtype": str(a.dtype), "size": int(a.size)}
        if a.ndim == 0:
            if opts["scalars"] == "error":
                raise ValueError(f"{name}: 0-d tensor (NNCodec's encoder crashes on these)")
            if opts["scalars"] == "skip":
                entry["role"] = "skipped-0d"
                info[name] = entry
                skipped.append({"name": name, "reason": "0-d tensor", "raw_bytes": int(a.nbytes)})
                continue
            entry["role"] = "0d-as-1d"
            a = a.reshape(1)
        elif a.ndim == 1:
            entry["role"] = "nonweight(1-D)"
        else:
            entry["role"] = "weight"
        nname = name
        if not _safe_name(name):
            nname = f"nncpeer{i}"
            while nname in src:
                nname += "x"
        if nname != name:
            renamed[name] = nname
        coded[nname] = np.ascontiguousarray(a)
        back[nname] = (name, tuple(src[name].shape))
        info[name] = entry

    runs = []
    with tempfile.TemporaryDirectory(prefix="nnc_") as scratch:
        for qp in req["qps"]:
            args = _nn_args(qp, opts, scratch)
            enc_t, dec_t, enc_c, dec_c = [], [], [], []
            bs = dec = None
            repeats = max(1, int(opts["repeats"]))
            # decodes beyond the encodes (a small model's decode takes milliseconds: its minimum needs more
            # samples than an encode's)
            decodes = max(repeats, int(opts.get("decode_repeats") or 0))
            for i in range(decodes):
                with contextlib.redirect_stdout(sys.stderr):
                    if i < repeats:
                        params = {k: v.copy() for k, v in coded.items()}
                        c0, t0 = time.process_time(), time.perf_counter()
                        bs_i = nn_api.encode(params, args=args)
                        c1, t1 = time.process_time(), time.perf_counter()
                        if bs is not None and bytes(bs_i) != bytes(bs):
                            raise RuntimeError("NNCodec encoder is not deterministic across repeats")
                        bs = bs_i
                        enc_t.append(t1 - t0)
                        enc_c.append(c1 - c0)
                    c1, t1 = time.process_time(), time.perf_counter()
                    dec = nn_api.decode(bytearray(bs), args=args)
                    c2, t2 = time.process_time(), time.perf_counter()
                dec_t.append(t2 - t1)
                dec_c.append(c2 - c1)
            decoded = {}
            for nname, (name, shape) in back.items():
                d = np.asarray(dec[nname])
                decoded[name] = d.reshape(shape)
            fn = f"qp_{qp}.npz"
            np.savez(os.path.join(out_dir, fn), **decoded)
            if opts["keep_bitstreams"]:
                with open(os.path.join(out_dir, f"qp_{qp}.nnc"), "wb") as f:
                    f.write(bytes(bs))
            nw_qp = opts["nonweight_qp"] if opts["nonweight_qp"] else int(qp) - 8
            runs.append(
                {
                    "qp": int(qp),
                    "step": float(get_stepsize_from_qp(int(qp), 2)),
                    "nonweight_qp": int(nw_qp),
                    "nonweight_step": float(get_stepsize_from_qp(int(nw_qp), 2)),
                    "bytes": len(bs),
                    "encode_s": min(enc_t),
                    "decode_s": min(dec_t),
                    "encode_cpu_s": min(enc_c),
                    "decode_cpu_s": min(dec_c),
                    "encode_s_all": enc_t,
                    "decode_s_all": dec_t,
                    "decoded": fn,
                }
            )

    n_all = sum(int(a.size) for a in src.values())
    n_coded = sum(int(a.size) for a in coded.values())
    return {
        "versions": _versions(np, torch, stub),
        "options": opts,
        "tensors": info,
        "renamed": renamed,
        "skipped": skipped,
        "n_weights": n_all,
        "n_coded": n_coded,
        "runs": runs,
    }


def check() -> dict:
    np, torch, nn_api, _, stub = _import_nncodec()
    rng = np.random.default_rng(0)
    params = {"w": rng.laplace(0, 1, (64, 64)).astype(np.float32), "b": rng.standard_normal(8).astype(np.float32)}
    with tempfile.TemporaryDirectory(prefix="nnc_") as d, contextlib.redirect_stdout(sys.stderr):
        args = _nn_args(-8, DEFAULTS, d)
        bs = nn_api.encode({k: v.copy() for k, v in params.items()}, args=args)
        dec = nn_api.decode(bytearray(bs), args=args)
    err = float(np.abs(dec["w"] - params["w"]).max())
    assert dec["w"].shape == (64, 64) and err <= 0.5, err  # step 2**-2: |error| <= step
    v = _versions(np, torch, stub)
    assert v["nncodec"] == NNCODEC_VERSION, v
    assert torch.version.cuda is None, "CUDA torch in the NNCodec venv"
    v["check_bytes"] = len(bs)
    return v


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[1] == "--check":
        print(json.dumps(check()))
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        req = json.load(f)
    res = run_request(req)
    path = req.get("result") or os.path.join(req["out_dir"], "result.json")
    with open(path + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(path + ".tmp", path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
