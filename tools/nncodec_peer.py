"""NNCodec 2.1.3 as a peer codec for our benchmarks, from our own environment (numpy 2).

NNCodec needs numpy<2 and torch, so it lives in its own venv (tools/setup_nncodec.sh) and runs in a
subprocess (tools/nncodec_runner.py); tensors and results travel through temporary files.

    import nncodec_peer                       # with tools/ on sys.path
    if nncodec_peer.available():
        for r in nncodec_peer.run({"w": w}, qps=[-24, -16, -8]):
            print(r["qp"], r["bits_per_weight"], r["encode_s"], r["decode_s"])

Each result dict: qp, step (weight step size), nonweight_qp, nonweight_step, bytes (complete NNR
bitstream length), n_weights (elements of all input tensors), bits_per_weight (8 * bytes / n_weights),
decoded ({name: array} with the input shapes; float32, or int32 for integer inputs), encode_s,
decode_s (single-threaded wall clock, min over ``repeats`` runs, or ``decode_repeats`` decodes if more),
encode_cpu_s, decode_cpu_s (process CPU time of the same calls, min over the same runs), skipped (0-d tensors left out when
scalars="skip"), cast ({name: original dtype} for inputs converted to float32/int32), versions.

The venv is found at $NNCODEC_VENV, else <repo>/.venv-nncodec.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tools" / "nncodec_runner.py"
SETUP_HINT = "run tools/setup_nncodec.sh"

_THREAD_ENV = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")}


class NNCodecUnavailable(RuntimeError):
    pass


def venv_dir() -> Path:
    return Path(os.environ.get("NNCODEC_VENV") or ROOT / ".venv-nncodec")


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(_THREAD_ENV)
    return env


@functools.lru_cache(maxsize=None)
def _check() -> tuple[bool, str]:
    py = venv_python()
    if not py.exists():
        return False, f"NNCodec venv not found at {venv_dir()}: {SETUP_HINT}"
    try:
        p = subprocess.run([str(py), str(RUNNER), "--check"], capture_output=True, text=True, env=_env(), timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"NNCodec venv at {venv_dir()} does not work ({e}): {SETUP_HINT}"
    if p.returncode != 0:
        tail = "\n".join(p.stderr.strip().splitlines()[-5:])
        return False, f"NNCodec venv at {venv_dir()} fails its check: {SETUP_HINT}\n{tail}"
    return True, p.stdout.strip()


def available() -> bool:
    """True if the NNCodec venv exists and passes a tiny encode/decode round trip (cached)."""
    return _check()[0]


def versions() -> dict:
    ok, msg = _check()
    if not ok:
        raise NNCodecUnavailable(msg)
    return json.loads(msg)


def _to_nncodec_dtype(name: str, a: np.ndarray) -> tuple[np.ndarray, str | None]:
    # (np.ascontiguousarray would turn a 0-d array into shape (1,))
    a = np.asarray(a)
    if a.dtype == np.float32 or a.dtype == np.int32:
        return np.asarray(a, order="C"), None
    if a.dtype.kind == "f" or a.dtype.name in ("bfloat16",) or a.dtype.name.startswith("float8"):
        return a.astype(np.float32, order="C"), str(a.dtype)
    if a.dtype.kind in "iub":
        if a.size and (a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{name}: integer values outside int32, NNCodec cannot code them")
        return a.astype(np.int32, order="C"), str(a.dtype)
    raise ValueError(f"{name}: dtype {a.dtype} not supported by NNCodec")


def run(
    tensors: dict[str, np.ndarray],
    qps: list[int],
    *,
    use_dq: bool = True,
    nonweight_qp: int | None = -75,
    row_skipping: bool = True,
    param_opt: bool = True,
    opt_qp: bool = False,
    scalars: str = "reshape",
    repeats: int = 1,
    decode_repeats: int = 0,
    keep_bitstreams: bool = False,
    timeout: float | None = None,
    workdir: str | os.PathLike | None = None,
) -> list[dict]:
    """Encode all ``tensors`` into one NNCodec bitstream per qp, decode it, and time both.

    qp: NNCodec QP of the tensors with ndim >= 2; step = (4 + (qp & 3)) * 2**((qp >> 2) - 2), i.e.
    2**(qp/4) at multiples of 4 (qp=-32 -> 1/256, qp=0 -> 1). 1-D tensors are coded with
    ``nonweight_qp`` (-75, step ~2.4e-6: near-lossless; None -> qp - 8). ``scalars``: what to do with
    0-d tensors, which NNCodec's encoder cannot take: "reshape" (code as shape (1,)), "skip", "error".
    ``workdir``: keep the request, inputs and outputs there (default: a temp dir, removed).
    """
    ok, msg = _check()
    if not ok:
        raise NNCodecUnavailable(msg)
    qps = [int(q) for q in qps]
    arrays, cast = {}, {}
    for name, a in tensors.items():
        arrays[name], orig = _to_nncodec_dtype(name, a)
        if orig is not None:
            cast[name] = orig
    opts = {
        "use_dq": bool(use_dq),
        "nonweight_qp": nonweight_qp,
        "row_skipping": bool(row_skipping),
        "param_opt": bool(param_opt),
        "opt_qp": bool(opt_qp),
        "scalars": scalars,
        "repeats": int(repeats),
        "decode_repeats": int(decode_repeats),
        "keep_bitstreams": bool(keep_bitstreams),
    }
    ctx = tempfile.TemporaryDirectory(prefix="nncodec_peer_") if workdir is None else None
    d = Path(ctx.name if ctx else workdir)
    try:
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / "in.npz", **arrays)
        req = {"tensors": str(d / "in.npz"), "qps": qps, "out_dir": str(d / "out"), "options": opts}
        (d / "request.json").write_text(json.dumps(req))
        p = subprocess.run(
            [str(venv_python()), str(RUNNER), str(d / "request.json")],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=timeout,
        )
        if p.returncode != 0:
            tail = "\n".join(p.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"nncodec_runner failed (exit {p.returncode}):\n{tail}")
        res = json.loads((d / "out" / "result.json").read_text())
        out = []
        for r in res["runs"]:
            with np.load(d / "out" / r["decoded"], allow_pickle=False) as z:
                decoded = {k: z[k] for k in z.files}
            out.append(
                {
                    "qp": r["qp"],
                    "step": r["step"],
                    "nonweight_qp": r["nonweight_qp"],
                    "nonweight_step": r["nonweight_step"],
                    "bytes": r["bytes"],
                    "n_weights": res["n_weights"],
                    "bits_per_weight": 8.0 * r["bytes"] / max(1, res["n_weights"]),
                    "decoded": decoded,
                    "encode_s": r["encode_s"],
                    "decode_s": r["decode_s"],
                    "encode_cpu_s": r["encode_cpu_s"],
                    "decode_cpu_s": r["decode_cpu_s"],
                    "skipped": res["skipped"],
                    "renamed": res["renamed"],
                    "cast": cast,
                    "versions": res["versions"],
                    "bitstream": str(d / "out" / f"qp_{r['qp']}.nnc") if keep_bitstreams and workdir else None,
                }
            )
        return out
    finally:
        if ctx is not None:
            ctx.cleanup()
