"""Container overhead of small models, in one run: where a file's bytes go, lossless and at 4 bits/weight.

For each model: the file ``rdc compress`` writes (through the framework adapter, metadata included),
split by :func:`rdformat.file.breakdown.breakdown` into payload (coded weights) and overhead (names,
headers, entropy tables, statistics, metadata, graph, framing, index, end); and, lossless, the ratio of
the tensor data against ZipNN 0.5.4 and zstd -3 on the same tensors (concatenated raw bytes, which hold
no names or shapes), plus the ratio of a bare ``rdformat.save`` of the tensors (no adapter metadata). ZipNN's
output size is printed too, with the file's size minus it (negative: the whole .rdc file is smaller than
ZipNN's bare tensor bytes).

Models: MTCNN P-Net, R-Net and O-Net (``../shared/models/*.pt``), an ONNX export of O-Net (graph included),
magika's ONNX classifier from the ``magika`` package and RapidOCR's PP-OCRv4 detector and recogniser
(``rapidocr_onnxruntime``) when installed.

    python tools/bench_overhead.py [--markdown tools/results/bench_overhead.md]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import rdformat  # noqa: E402
from rdformat import convert  # noqa: E402
from rdformat.file.breakdown import breakdown  # noqa: E402

MODELS = ROOT.parent / "shared" / "models"


def _onet_onnx(folder: Path) -> Path | None:
    """O-Net exported to ONNX with its checkpoint's weights (None without the checkpoint)."""
    if not (MODELS / "onet.pt").exists():
        return None
    import torch
    from mtcnn import load_mtcnn

    _p, _r, onet = load_mtcnn(MODELS)
    path = folder / "onet.onnx"
    torch.onnx.export(onet.eval(), torch.zeros(1, 3, 48, 48), str(path), input_names=["x"], dynamo=False)
    return path


def _magika() -> Path | None:
    try:
        import magika
    except ImportError:
        return None
    found = sorted(Path(magika.__file__).parent.glob("models/*/model.onnx"))
    return found[0] if found else None


def _ppocr() -> list[tuple[str, Path]]:
    """RapidOCR's PP-OCRv4 text detector and recogniser (paddle2onnx exports) when installed."""
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return []
    folder = Path(rapidocr_onnxruntime.__file__).parent / "models"
    return [(f"PP-OCRv4 {kind} (.onnx)", folder / f"ch_PP-OCRv4_{kind}_infer.onnx") for kind in ("det", "rec")
            if (folder / f"ch_PP-OCRv4_{kind}_infer.onnx").exists()]


def models(folder: Path) -> list[tuple[str, Path]]:
    out = [(f"MTCNN {n} (.pt)", MODELS / f"{n}.pt") for n in ("pnet", "rnet", "onet") if (MODELS / f"{n}.pt").exists()]
    onnx_onet = _onet_onnx(folder)
    if onnx_onet is not None:
        out.append(("MTCNN onet (.onnx export)", onnx_onet))
    mag = _magika()
    if mag is not None:
        out.append((f"magika {mag.parent.name} (.onnx)", mag))
    return out + _ppocr()


def tensors_of(path: Path) -> dict[str, np.ndarray]:
    """The float tensors of a model file, as the adapter stores them (read back from a lossless .rdc)."""
    buf = io.BytesIO()
    tmp = Path(tempfile.mkdtemp()) / "t.rdc"
    convert.compress_file(path, tmp)
    with rdformat.open(tmp) as f:
        aliases = f.aliases
        out = {n: a for n, a in f if n not in aliases}
    del buf
    return out


def zipnn_bytes(blob: bytes, dtype: str) -> int | str:
    try:
        from zipnn import ZipNN
    except ImportError:
        return "not installed"
    z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)
    return len(z.compress(bytearray(blob)))


def zstd_bytes(blob: bytes) -> int | str:
    try:
        import zstandard
    except ImportError:
        return "not installed"
    return len(zstandard.ZstdCompressor(level=3).compress(blob))


def row(label: str, mode: str, path: Path, raw: int, extra: dict) -> dict:
    b = breakdown(path)
    c = b["categories"]
    return {"model": label, "mode": mode, "file": b["file_bytes"], "payload": b["payload_bytes"],
            "overhead": b["overhead_bytes"], "pct": 100 * b["overhead_fraction"], "raw": raw,
            "bpw": b["lossy_bits_per_weight"], "parts": {k: v for k, v in c.items() if k != "payload" and v}, **extra}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = ap.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    rows = []
    for label, path in models(folder):
        tensors = tensors_of(path)
        floats = {n: a for n, a in tensors.items() if a.dtype == np.float32}
        blob = b"".join(a.tobytes() for a in floats.values())
        raw = sum(a.nbytes for a in tensors.values())
        lossless = folder / "lossless.rdc"
        convert.compress_file(path, lossless)
        extra = {}
        if len(floats) == len(tensors):  # ratios against peers on the same bytes (float32 tensors only)
            bare = rdformat.save(tensors, io.BytesIO()).bytes
            z, s = zipnn_bytes(blob, "float32"), zstd_bytes(blob)
            extra = {"bare": raw / bare, "zipnn": raw / z if isinstance(z, int) else z,
                     "zipnn_bytes": z if isinstance(z, int) else None,
                     "zstd": raw / s if isinstance(s, int) else s}
        rows.append(row(label, "lossless", lossless, raw, extra))
        lossy = folder / "bits4.rdc"
        convert.compress_file(path, lossy, lossy=rdformat.Lossy(bits=4))
        rows.append(row(label, "--bits 4", lossy, raw, {}))
        for r in rows[-2:]:
            print(r, file=sys.stderr)

    def f(v, fmt):
        return "-" if v is None or v == "" else (fmt.format(v) if isinstance(v, (int, float)) else str(v))

    lines = ["| model | mode | file bytes | payload | overhead | overhead % | payload bits/weight (quantized) | "
             "ratio (file) | ratio, bare tensors | ZipNN 0.5.4 | ZipNN bytes | file - ZipNN | zstd -3 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {r['file']:,} | {r['payload']:,} | {r['overhead']:,} | "
                     f"{r['pct']:.2f}% | {f(r['bpw'], '{:.2f}')} | {r['raw'] / r['file']:.3f}x | "
                     f"{f(r.get('bare'), '{:.3f}x')} | {f(r.get('zipnn'), '{:.3f}x')} | "
                     f"{f(r.get('zipnn_bytes'), '{:,}')} | "
                     f"{f(r['file'] - r['zipnn_bytes'] if r.get('zipnn_bytes') else None, '{:+,}')} | "
                     f"{f(r.get('zstd'), '{:.3f}x')} |")
    lines += ["", "Overhead by category (bytes):", "",
              "| model | mode | " + " | ".join(["tables", "names", "headers", "stats", "metadata", "graph", "framing",
                                                  "index", "end"]) + " |",
              "|---|---|" + "---:|" * 9]
    for r in rows:
        p = r["parts"]
        lines.append(f"| {r['model']} | {r['mode']} | " + " | ".join(
            f"{p.get(k, 0):,}" for k in ("tables", "names", "headers", "stats", "metadata", "graph", "framing",
                                         "index", "end")) + " |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
