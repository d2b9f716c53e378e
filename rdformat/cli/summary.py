"""What ``rdc compress`` and ``rdc info`` report: sizes of inputs and outputs, per-tensor facts."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .. import adapters
from ..codecs.axis_scales import KEYS as SCALE_KEYS, AxisScales, factor
from ..errors import RdcError
from ..file.breakdown import breakdown as file_breakdown


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n}"  # pragma: no cover


def ratio(raw: int, stored: int) -> float:
    return raw / stored if stored else float("inf")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def input_bytes(path: Path, fmt: str) -> int:
    """Bytes of the input on disk, including shards and ONNX external data files."""
    total = path.stat().st_size
    if fmt == "safetensors-index":
        from ..safetensors import read_index

        _, shards = read_index(path)
        total += sum(p.stat().st_size for _, p, _ in shards)
    elif fmt == "onnx":
        try:
            import onnx

            model = onnx.load(os.fspath(path), load_external_data=False)
            from ..onnx import _external_entries, _tensor_slots

            locations = {
                _external_entries(t).get("location")
                for t, _, _ in _tensor_slots(model)
                if t.data_location == onnx.TensorProto.EXTERNAL
            }
            for loc in locations:
                if loc:
                    try:
                        total += adapters.path_inside(path.parent, loc, what="external data").stat().st_size
                    except (RdcError, OSError):
                        pass
        except Exception:  # pragma: no cover - only a size estimate
            pass
    return total


def output_bytes(path: Path, fmt: str) -> int:
    total = path.stat().st_size if path.exists() else 0
    if fmt == "onnx":
        # the data file is <name>.data, or <name>.rdc-<8 hex>.data when it replaced a model in place
        pattern = re.compile(rf"{re.escape(path.name)}(\.rdc-[0-9a-f]{{8}})?\.data")
        try:
            total += sum((path.parent / n).stat().st_size for n in os.listdir(path.parent or ".")
                         if pattern.fullmatch(n))
        except OSError:
            pass
    elif fmt == "safetensors-index":
        try:
            doc = json.loads(path.read_text())
            for fname in set(doc.get("weight_map", {}).values()):
                total += (path.parent / fname).stat().st_size
        except (OSError, ValueError):
            pass
    return total


def _stat(value: Any, lo: float, hi: float) -> float | None:
    """A statistic from a file's codec config: a finite real number in ``[lo, hi]``, else None (unknown)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # a JSON integer too large for a float
        return None
    return value if math.isfinite(value) and lo <= value <= hi else None


def _channel_steps(config: Any, shape: tuple[int, ...]) -> list[float] | None:
    """Smallest and largest factor the axis scales (spec 5.6) put on the tensor's step, or None."""
    if not isinstance(config, dict) or not any(k in config for k in SCALE_KEYS):
        return None
    try:
        scales = AxisScales.from_config(config, "info")
        scales.check_shape(shape, "info")
    except RdcError:
        return None  # what the file says is not plausible: shown as unknown
    e = scales.exponents(shape)
    return [float(factor(np.min(e))), float(factor(np.max(e)))]


def tensor_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Per-tensor facts of an .rdc file (for ``info`` and the compress summary)."""
    file_bytes = os.path.getsize(path)
    with adapters.open_rdc(path) as f:
        aliases = dict(f.aliases)
        rows = []
        raw = stored = 0
        for name in f.keys():
            ti = f.info(name)
            alias_of = ti.alias_of or aliases.get(name)
            row = {
                "name": name,
                "dtype": ti.dtype.name,
                "shape": list(ti.shape),
                "codec": ti.codec,
                "structural": bool(ti.structural),
                "stored_bytes": 0 if alias_of else int(ti.stored_bytes),
                "raw_bytes": int(ti.nbytes),
                "alias_of": alias_of,
            }
            row["ratio"] = None if alias_of else round(ratio(row["raw_bytes"], row["stored_bytes"]), 4)
            numel = int(ti.nbytes // max(ti.dtype.itemsize, 1))
            row["bits_per_weight"] = None if alias_of or not numel else round(8 * row["stored_bytes"] / numel, 4)
            stats = ti.codec_config.get("stats") if isinstance(ti.codec_config, dict) else None
            stats = stats if isinstance(stats, dict) else {}
            # what the file says: shown only when it is a plausible number, else unknown
            row["sparsity"] = _stat(stats.get("sparsity"), 0.0, 1.0)
            row["rel_error"] = _stat(stats.get("err"), 0.0, float("inf"))
            if row["rel_error"] is None and ti.codec in ("raw", "bytesplit"):
                row["rel_error"] = 0.0  # lossless codecs
            row["channel_steps"] = _channel_steps(ti.codec_config, tuple(ti.shape))
            if not alias_of:
                raw += row["raw_bytes"]
                stored += row["stored_bytes"]
            rows.append(row)
        info = adapters.adapter_info(f.metadata)
        tensor_rows = [r for r in rows if not r["alias_of"]]
        for row in tensor_rows:
            row["sensitivity"] = None
        for position, value in _recorded_sensitivity(info, len(tensor_rows)):
            tensor_rows[position]["sensitivity"] = value
        return {
            "file": os.fspath(path),
            "file_bytes": file_bytes,
            "source_format": info.get("source_format"),
            "tensor_count": len(rows) - len(aliases),
            "alias_count": len(aliases),
            "raw_bytes": raw,
            "stored_bytes": stored,
            "ratio": round(ratio(raw, file_bytes), 4),
            "graph": {"format": f.graph_format, "bytes": len(f.graph)} if f.graph is not None else None,
            "metadata": f.metadata,
            "breakdown": file_breakdown(path),
            "tensors": rows,
        }


def _recorded_sensitivity(info: dict, count: int) -> list[tuple[int, float]]:
    """The (tensor position, relative sensitivity) pairs a lossy save recorded, or none.

    The file's metadata is untrusted: anything but two equally long lists of in-range positions and
    positive finite numbers is ignored (the table then shows no sensitivity).
    """
    entry = info.get("sensitivity")
    if not isinstance(entry, dict):
        return []
    index, relative = entry.get("index"), entry.get("relative")
    if not (isinstance(index, list) and isinstance(relative, list) and len(index) == len(relative)):
        return []
    pairs = []
    for i, v in zip(index, relative):
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count:
            return []
        value = _stat(v, 0.0, float("inf"))  # a finite real number (None for 10**400, NaN, a string...)
        if value is None or value <= 0:
            return []
        pairs.append((i, value))
    return pairs

