"""Golden files: .rdc files written once that every later rdformat must decode to the very same bytes.

    python tools/gen_golden.py            # verify: the stored files decode (numpy and constriction paths)
                                          # to the stored arrays, and match their manifest checksums
    python tools/gen_golden.py --write    # write spec/vectors/golden/ (refuses to replace existing files)

Unlike the conformance vectors (``tools/gen_vectors.py``), golden files are never regenerated: they are
what a writer produced on the day they were made, so that a later change of the decoder (or of the
entropy coder's numpy path) that would decode an existing file differently is caught. A change of the
*writer* does not touch them. The data come from a fixed integer generator (a 64-bit LCG), not from
numpy's random distributions, so ``--write`` on a fresh checkout reproduces the same inputs.

Contents (see spec/vectors/golden/README.md):

* ``lossless.rdc`` - the default lossless codec (``bytesplit``): float32 (with NaN payloads, infinities,
  signed zeros, subnormals), bfloat16 in two chunks, int8, int32, uint8, a scalar and an empty tensor;
* ``lossless16.rdc`` - the same tensors written by format 1.6 (added with it): a TAIL record ends the file and
  bytesplit codes the exponent byte with the top mantissa bits (plane mode 5) where that is smaller;
* ``sq4.rdc`` - lossy at ~4 bits per weight (``rdformat.save(bits=4, method="sq")``: ``sq`` codec; 1-D tensors stay
  lossless), float32 and bfloat16 weights, several chunks and several ANS lanes per chunk;
* ``dq4.rdc`` - the same tensors at ~4 bits per weight with trellis-coded quantization (``dq`` codec);
* ``surp80.rdc`` - the same tensors pruned by SuRP to 80% sparsity (``surp`` codec, progressive streams);
* ``<file>.<tensor>.npy`` - each tensor's expected decoded array (bfloat16 as its uint16 bit pattern);
* ``manifest.json`` - SHA-256 of every file, and per tensor its dtype, shape and ``.npy`` file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ml_dtypes  # noqa: E402

import rdformat  # noqa: E402
from rdformat.entropy import ans  # noqa: E402

GOLDEN = ROOT / "spec" / "vectors" / "golden"
#: numpy cannot store these in .npy: their bit pattern is stored instead
BITS_DTYPES = {"bfloat16": "<u2", "float8_e4m3fn": "u1", "float8_e5m2": "u1"}


# ------------------------------------------------------------------------------------------------
# deterministic data


def lcg_u32(seed: int, n: int) -> np.ndarray:
    """``n`` pseudo-random uint32 from a 64-bit LCG (Knuth MMIX constants), high half of each state."""
    out = np.empty(n, dtype=np.uint32)
    s = (seed * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF
    for i in range(n):
        s = (s * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out[i] = s >> 32
    return out


def laplace(seed: int, n: int, scale: float) -> np.ndarray:
    """float64 Laplacian values by inverse CDF of the LCG (Python's math.log: correctly rounded in practice)."""
    u = lcg_u32(seed, n)
    out = np.empty(n, dtype=np.float64)
    for i, v in enumerate(u.tolist()):
        p = (v + 0.5) / 4294967296.0  # in (0, 1)
        out[i] = scale * math.log(2 * p) if p < 0.5 else -scale * math.log(2 * (1 - p))
    return out


def small_ints(seed: int, n: int, scale: float, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.rint(laplace(seed, n, scale)), lo, hi).astype(np.int64)


def lossless_tensors() -> dict[str, np.ndarray]:
    f32 = laplace(1, 128 * 96, 0.05).astype(np.float32)
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-40, 3.4e38, 1.0], np.float32)
    f32[:: 1229][: special.size] = special
    f32.view(np.uint32)[7] = 0x7FC12345  # a NaN payload
    return {
        "dense.weight": f32.reshape(128, 96),
        "emb.bf16": laplace(2, 192 * 192, 0.02).astype(ml_dtypes.bfloat16).reshape(192, 192),
        "quant.int8": small_ints(3, 4096, 6.0, -128, 127).astype(np.int8),
        "index.int32": (small_ints(4, 64 * 64, 300.0, -2**31, 2**31 - 1) * 7919).astype(np.int32).reshape(64, 64),
        "mask.uint8": (lcg_u32(5, 3000) % 3 == 0).astype(np.uint8),
        "scale": np.array(0.125, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def lossy_tensors() -> dict[str, np.ndarray]:
    return {
        "fc1.weight": laplace(11, 128 * 192, 0.03).astype(np.float32).reshape(128, 192),
        "fc1.bias": laplace(12, 128, 0.01).astype(np.float32),
        "conv.weight": laplace(13, 64 * 3 * 3 * 3, 0.1).astype(np.float32).reshape(64, 3, 3, 3),
        "proj.bf16": laplace(14, 128 * 64, 0.04).astype(ml_dtypes.bfloat16).reshape(128, 64),
    }


def write_files() -> dict[str, bytes]:
    """The golden .rdc files, as rdformat writes them today."""
    import io

    out = {}
    buf = io.BytesIO()
    rdformat.save(lossless_tensors(), buf, chunk_bytes=64 << 10, metadata={"golden": "lossless"})
    out["lossless.rdc"] = buf.getvalue()
    buf = io.BytesIO()
    rdformat.save(lossless_tensors(), buf, chunk_bytes=64 << 10, metadata={"golden": "lossless16"})
    out["lossless16.rdc"] = buf.getvalue()  # format 1.6: a TAIL record, bytesplit joint planes (mode 5)
    buf = io.BytesIO()
    rdformat.save(lossy_tensors(), buf, bits=4.0, chunk_bytes=48 << 10, metadata={"golden": "sq4"}, method="sq",
                  fine=False)
    out["sq4.rdc"] = buf.getvalue()
    buf = io.BytesIO()
    rdformat.save(lossy_tensors(), buf, bits=4.0, chunk_bytes=48 << 10, metadata={"golden": "dq4"}, method="dq",
                  fine=False)
    out["dq4.rdc"] = buf.getvalue()
    buf = io.BytesIO()
    rdformat.save(lossy_tensors(), buf, lossy=rdformat.Lossy(method="surp", sparsity=0.8), chunk_bytes=48 << 10,
                  metadata={"golden": "surp80"})
    out["surp80.rdc"] = buf.getvalue()
    return out


# ------------------------------------------------------------------------------------------------
# manifest, npy files, verification


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_npy(a: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The array to store (bit pattern for dtypes .npy cannot hold) and the stored dtype if changed."""
    stored = BITS_DTYPES.get(str(a.dtype))
    return (a.view(stored), stored) if stored else (a, None)


def load_manifest(root: Path = GOLDEN) -> dict:
    return json.loads((root / "manifest.json").read_text())


def expected_arrays(root: Path, entry: dict) -> dict[str, np.ndarray]:
    """{tensor name: expected array, with its real dtype} for one manifest file entry."""
    out = {}
    for name, t in entry["tensors"].items():
        raw = np.load(root / t["npy"], allow_pickle=False)
        if sha256((root / t["npy"]).read_bytes()) != t["sha256"]:
            raise AssertionError(f"{t['npy']}: checksum differs from the manifest")
        a = raw.view(np.dtype(getattr(ml_dtypes, t["dtype"], None) or t["dtype"])) if t.get("stored_as") else raw
        if str(a.dtype) != t["dtype"] or list(a.shape) != t["shape"]:
            raise AssertionError(f"{t['npy']}: dtype/shape {a.dtype}/{a.shape} differ from the manifest")
        out[name] = a
    return out


def decode_all(data: bytes, backend: str) -> dict[str, np.ndarray]:
    """Every tensor of a file, through the streaming reader and through random access (must agree)."""
    with ans.use_backend(backend):
        streamed = rdformat.load(data)
        with rdformat.open(data) as f:
            by_name = {k: f.get_tensor(k) for k in f.keys()}
    if streamed.keys() != by_name.keys() or any(streamed[k].tobytes() != by_name[k].tobytes() for k in streamed):
        raise AssertionError("streaming and random-access reads differ")
    return streamed


def verify(root: Path = GOLDEN) -> list[str]:
    """Problems found (empty list: every golden file decodes, on every backend, to its expected bytes)."""
    problems = []
    manifest = load_manifest(root)
    backends = ["numpy"] + (["constriction"] if "constriction" in ans.available_backends() else []) + ["auto"]
    for fname, entry in manifest["files"].items():
        data = (root / fname).read_bytes()
        if sha256(data) != entry["sha256"]:
            problems.append(f"{fname}: checksum differs from the manifest (golden files must never change)")
            continue
        expected = expected_arrays(root, entry)
        for be in backends:
            got = decode_all(data, be)
            if got.keys() != expected.keys():
                problems.append(f"{fname} [{be}]: tensors {sorted(got)} != {sorted(expected)}")
                continue
            for name, e in expected.items():
                g = got[name]
                if g.dtype != e.dtype or g.shape != e.shape or g.tobytes() != e.tobytes():
                    problems.append(f"{fname} [{be}]: tensor {name!r} decodes differently")
    return problems


def write(root: Path = GOLDEN, force: bool = False) -> None:
    """Add the golden files that do not exist yet (existing ones are kept byte for byte)."""
    files = write_files()
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    manifest = {"version": 1, "note": "golden files: never regenerate; see tools/gen_golden.py", "files": {}}
    if manifest_path.exists() and not force:
        manifest = json.loads(manifest_path.read_text())
    for fname, data in files.items():
        if fname in manifest["files"]:
            print(f"{fname}: kept (golden files never change)")
            continue
        if (root / fname).exists() and not force:
            raise SystemExit(f"{root / fname} exists but is not in the manifest: remove it or use --force")
        (root / fname).write_bytes(data)
        with ans.use_backend("numpy"):
            decoded = rdformat.load(data)
        tensors = {}
        for name, a in decoded.items():
            stored, stored_as = to_npy(a)
            npy = f"{fname[:-4]}.{name}.npy"
            np.save(root / npy, stored, allow_pickle=False)
            t = {"npy": npy, "dtype": str(a.dtype), "shape": list(a.shape),
                 "sha256": sha256((root / npy).read_bytes())}
            if stored_as:
                t["stored_as"] = stored_as
            tensors[name] = t
        manifest["files"][fname] = {"sha256": sha256(data), "bytes": len(data), "tensors": tensors}
        print(f"{fname}: written")
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help="add golden files that do not exist yet (never replaces one)")
    ap.add_argument("--force", action="store_true", help="with --write: replace existing files")
    args = ap.parse_args()
    if args.write:
        write(force=args.force)
    problems = verify()
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        raise SystemExit(1)
    print(f"golden files OK ({', '.join(load_manifest()['files'])}; backends: {', '.join(ans.available_backends())})")


if __name__ == "__main__":
    main()
