"""``rdc demo``: compress a built-in model losslessly, restore it bit for bit, then a lossy version."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from .. import adapters, convert
from ..file.breakdown import breakdown as file_breakdown
from .output import EXIT_FAIL, EXIT_OK, PROG, Out
from .summary import ratio

def _demo_tensors():
    """A small real architecture (MTCNN-style conv net + batch norm + dense head), built with numpy."""
    import numpy as np

    rng = np.random.default_rng(20240501)
    tensors: dict[str, np.ndarray] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        fan_in = cin * k * k
        w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / fan_in)
        tensors[f"{name}.weight"] = w.astype(np.float32)
        tensors[f"{name}.bias"] = (rng.standard_normal(cout) * 0.01).astype(np.float32)

    def bn(name: str, c: int) -> None:
        tensors[f"{name}.weight"] = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
        tensors[f"{name}.bias"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        tensors[f"{name}.running_mean"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
        tensors[f"{name}.running_var"] = (1 + 0.1 * np.abs(rng.standard_normal(c))).astype(np.float32)
        tensors[f"{name}.num_batches_tracked"] = np.array(60000, dtype=np.int64)

    conv("conv1", 3, 16, 3)
    bn("bn1", 16)
    conv("conv2", 16, 32, 3)
    bn("bn2", 32)
    conv("conv3", 32, 64, 3)
    bn("bn3", 64)
    fc = rng.standard_normal((128, 64 * 4 * 4)) * np.sqrt(2.0 / 1024)
    tensors["fc.weight"] = fc.astype(np.float32)
    tensors["fc.bias"] = np.zeros(128, dtype=np.float32)
    tensors["head.weight"] = (rng.standard_normal((10, 128)) * 0.05).astype(np.float32)
    tensors["head.bias"] = np.zeros(10, dtype=np.float32)
    return tensors


def _demo_source(workdir: Path) -> tuple[Path, str]:
    try:
        from importlib.resources import files

        sample = files("rdformat").joinpath("data", "sample.safetensors")
        if sample.is_file():
            target = workdir / "sample.safetensors"
            with sample.open("rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return target, "shipped sample model (rdformat/data/sample.safetensors)"
    except (ModuleNotFoundError, OSError, TypeError):
        pass
    from ..safetensors import write_safetensors

    target = workdir / "demo_model.safetensors"
    write_safetensors(_demo_tensors(), target, metadata={"format": "pt", "model": "rdc-demo-cnn"})
    return target, "built-in demo CNN (3 conv + batch norm + 2 dense layers, float32)"


def cmd_demo(args: argparse.Namespace, out: Out) -> int:
    import numpy as np

    from ..safetensors import read_safetensors

    keep = Path(args.keep) if args.keep else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rdc-demo-") as tmp:
        work = keep or Path(tmp)
        src, what = _demo_source(work)
        rdc = work / (src.stem + ".rdc")
        restored = work / (src.stem + ".restored.safetensors")
        convert.compress_file(src, rdc, fmt="safetensors", progress=out.progress)
        convert.decompress_file(rdc, restored, fmt="safetensors", progress=out.progress)
        a, meta_a = read_safetensors(src)
        b, meta_b = read_safetensors(restored)
        exact = list(a) == list(b) and meta_a == meta_b and all(
            a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
            and np.array_equal(a[k].reshape(-1).view(np.uint8), b[k].reshape(-1).view(np.uint8)) for k in a)
        params = sum(int(v.size) for v in a.values())
        s_src, s_rdc, s_back = (p.stat().st_size for p in (src, rdc, restored))
        out.say(f"rdc demo: {what}")
        out.say(f"  {len(a)} tensors, {params:,} parameters")
        out.say(f"  original   {src.name:<34} {s_src:>10,} bytes")
        out.say(f"  compressed {rdc.name:<34} {s_rdc:>10,} bytes  ratio {ratio(s_src, s_rdc):.3f}x (lossless)")
        out.say(f"  restored   {restored.name:<34} {s_back:>10,} bytes")
        lossy = work / (src.stem + ".4bit.rdc")
        convert.compress_file(src, lossy, fmt="safetensors", lossy={"bits": 4}, progress=out.progress)
        with adapters.open_rdc(lossy) as f:
            c = dict(iter(f))
        num = sum(float(np.sum((c[k].astype(np.float64) - a[k].astype(np.float64)) ** 2)) for k in a)
        den = sum(float(np.sum(a[k].astype(np.float64) ** 2)) for k in a)
        s_lossy = lossy.stat().st_size
        rel = (num / den) ** 0.5
        out.say(f"  lossy      {lossy.name:<34} {s_lossy:>10,} bytes  ratio {ratio(s_src, s_lossy):.3f}x "
                f"(--bits 4: relative L2 error {100 * rel:.1f}%, {8 * s_lossy / params:.1f} bits per parameter "
                "in the file, headers and tables included)")
        b = file_breakdown(lossy)
        if b["lossy_weights"]:
            out.say(f"             of which: {b['lossy_weights']:,} quantized weights at "
                    f"{b['lossy_bits_per_weight']:.2f} bits each, {b['lossless_payload_bytes']:,} bytes of lossless "
                    f"tensors, {b['overhead_bytes']:,} bytes of names, headers, tables and metadata")
        out.say(f"  bit-exact: {'yes, every tensor identical' if exact else 'NO - tensors differ'}")
        if keep is not None:
            out.say(f"  files kept in {keep}")
    if not exact:
        print(f"{PROG}: error: demo round trip is not bit-exact", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK
