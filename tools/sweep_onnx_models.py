"""Robustness sweep of the ONNX path over real-world ONNX files (a tool, not a test).

For every model: ``rdc compress`` (lossless) + ``rdc decompress``, then ``rdc compress --bits 4`` +
``rdc decompress``, and ``rdc info`` on both files. Checked: the restored models pass
``onnx.checker.check_model``; the lossless one is byte-identical to the original (else why not) and gives
bit-identical onnxruntime outputs; the lossy one loads and runs in onnxruntime with the same output dtypes
and shapes, keeps the graph (nodes, tensor names, dtypes, dims) and every integer or shape-steering tensor
unchanged, and its relative output error is reported. Any ``internal error`` line, traceback or a step over
the time limit is a failure.

Models: every ``model.onnx`` (and ``light_*.onnx``) under onnx's shipped backend test data, plus the
``.onnx`` files under any path given on the command line (e.g. unpacked magika / rapidocr wheels)::

    PYTHONPATH=. python tools/sweep_onnx_models.py [EXTRA_DIR_OR_FILE ...] [--jobs 1] [--filter SUBSTR]

Each model runs in its own worker process (``--one MODEL``) with a time limit, so a hang or a crash of
one model is reported and the sweep goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: A step (one rdc command) over this many seconds counts as a hang.
STEP_SECONDS = 60.0
#: Size given to dynamic non-batch axes of random inputs (divisible by 32: detectors downsample).
DYNAMIC_DIM = 64

#: ONNX float element types (float, float16, double, bfloat16, float8 variants): the lossy candidates.
_FLOAT_TYPES = {1, 10, 11, 16, 17, 18, 19, 20}

# Inputs (by position) of ops whose values steer shapes, indices or resampling: checked unchanged after
# lossy compression, independently of the library's own list.
_STEERING = {
    "Reshape": {1}, "Resize": {1, 2, 3}, "Upsample": {1}, "Slice": {1, 2, 3, 4}, "Pad": {1, 2, 3},
    "Expand": {1}, "Tile": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2}, "Gather": {1},
    "GatherElements": {1}, "GatherND": {1}, "Squeeze": {1}, "Unsqueeze": {1}, "Split": {1}, "TopK": {1},
    "OneHot": {1}, "ScatterND": {1}, "ScatterElements": {1}, "Where": {0}, "CumSum": {1},
}


def onnx_test_models() -> list[Path]:
    """The ONNX files shipped with onnx's backend test data (light, pytorch-converted/-operator, simple)."""
    import onnx

    base = Path(onnx.__file__).parent / "backend" / "test" / "data"
    found = []
    for sub in ("light", "pytorch-converted", "pytorch-operator", "simple"):
        found += sorted((base / sub).glob("*/model.onnx")) + sorted((base / sub).glob("*.onnx"))
    return found


# ----------------------------------------------------------------------------------------------------
# One model (worker side)


def _rdc(args: list[str]) -> tuple[int, str, float]:
    """Run one ``rdc`` command in-process: (exit code, stderr + stdout text, seconds)."""
    from rdformat.cli import main

    err, out = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        except BaseException as exc:  # noqa: BLE001 - a traceback is the finding
            import traceback

            traceback.print_exc()
            code = 99
            err.write(f"\nTRACEBACK {type(exc).__name__}: {exc}\n")
    return code, err.getvalue() + out.getvalue(), time.perf_counter() - start


def _graph_inputs(model) -> list:
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _inputs_for(model_path: Path, model) -> tuple[list[dict[str, Any]], str]:
    """Feeds from the model's test_data_set_* folders, else random ones of the declared shapes."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    inputs = _graph_inputs(model)
    feeds = []
    for ds in sorted(model_path.parent.glob("test_data_set_*")) if model_path.name == "model.onnx" else []:
        files = sorted(ds.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        feed = {}
        for vi, f in zip(inputs, files):
            t = onnx.TensorProto()
            t.ParseFromString(f.read_bytes())
            feed[vi.name] = numpy_helper.to_array(t)
        if len(feed) == len(inputs):
            feeds.append(feed)
    if feeds:
        return feeds, "test data"
    rng = np.random.default_rng(0)
    feed = {}
    for vi in inputs:
        tt = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        shape = [d.dim_value if d.dim_value > 0 else (1 if i == 0 else DYNAMIC_DIM)
                 for i, d in enumerate(tt.shape.dim)]
        if dtype.kind == "f":
            feed[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:  # indices: 0 is valid for any table
            feed[vi.name] = np.zeros(shape, dtype)
    return [feed], "random"


def _run(path: Path, feeds: list[dict[str, Any]]) -> list[list[Any]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return [session.run(None, feed) for feed in feeds]


def _same(a: Any, b: Any) -> bool:
    """Bit-identical outputs (string tensors: equal values; sequences: element by element)."""
    import numpy as np

    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(np.array_equal(a, b)) if a.dtype.kind == "O" else a.tobytes() == b.tobytes()


def _slots(model) -> dict[str, Any]:
    """``{slot key: TensorProto}`` for every initializer and Constant value (subgraphs and functions too)."""
    from rdformat.onnx import _tensor_slots

    out = {}
    for k, (t, name, _main) in enumerate(_tensor_slots(model)):
        out[f"{k}:{name}"] = t
    return out


def _has_external(model) -> bool:
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _slots(model).values())


def _same_tensors(a, b) -> bool:
    """Same tensor slots with the same dtype, dims and bytes (external data loaded)."""
    from onnx import numpy_helper

    x, y = _slots(a), _slots(b)
    if x.keys() != y.keys():
        return False
    for key, t in x.items():
        u = y[key]
        if t.data_type != u.data_type or list(t.dims) != list(u.dims):
            return False
        try:
            if numpy_helper.to_array(t).tobytes() != numpy_helper.to_array(u).tobytes():
                return False
        except Exception:  # noqa: BLE001 - types numpy_helper cannot read: compare the protos
            if t.SerializeToString() != u.SerializeToString():
                return False
    return True


def _steering_values(model) -> set[str]:
    from rdformat.onnx import _all_nodes

    marked = set()
    for node in _all_nodes(model):
        for i in _STEERING.get(node.op_type, ()):
            if i < len(node.input) and node.input[i]:
                marked.add(node.input[i])
    return marked


def _checker_verdict(restored: Path, original: Path) -> str:
    """'' when onnx.checker accepts the restored model; 'original too' when it rejects the original as well
    (not our doing); else the first line of its complaint about the restored model."""
    import onnx

    try:
        onnx.checker.check_model(os.fspath(restored))
        return ""
    except Exception as exc:  # noqa: BLE001 - the checker raises several types
        complaint = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        onnx.checker.check_model(os.fspath(original))
    except Exception:  # noqa: BLE001
        return "original too"
    return complaint


def _skeleton(model) -> bytes:
    """The model with every tensor's data removed (what lossy compression must not change)."""
    import onnx

    from rdformat.onnx import _clear_data

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for _key, t in _slots(m).items():
        _clear_data(t)
    return m.SerializeToString(deterministic=True)


def _non_identical_reason(orig_bytes: bytes, back_bytes: bytes, orig, back) -> str:
    """Why a lossless round trip is not byte-identical."""
    if orig == back:
        if orig.SerializeToString() == back_bytes:
            return ("same model; the original's protobuf encoding is not canonical (re-serialising it gives the "
                    "restored bytes)")
        return "same model, different encoding"
    a, b = _slots(orig), _slots(back)
    diff = [k for k in a if k in b and a[k] != b[k]]
    return f"models differ ({len(diff)} tensor slots differ, e.g. {diff[:2]})"


def check_one(model_path: Path, work: Path) -> dict[str, Any]:
    """All checks for one model; returns a row of the table (``problems``: what failed)."""
    import numpy as np
    import onnx

    row: dict[str, Any] = {"model": os.fspath(model_path), "problems": [], "notes": []}
    problems, notes = row["problems"], row["notes"]
    orig_bytes = model_path.read_bytes()
    row["size"] = len(orig_bytes)
    orig = onnx.load_model_from_string(orig_bytes)
    lossless_rdc, lossy_rdc = work / "lossless.rdc", work / "lossy.rdc"
    back_path, lossy_path = work / "back.onnx", work / "lossy.onnx"

    def step(name: str, args: list[str]) -> bool:
        code, text, secs = _rdc(args)
        row.setdefault("seconds", {})[name] = round(secs, 2)
        bad = [ln for ln in text.splitlines() if "internal error" in ln or "TRACEBACK" in ln or "Traceback" in ln]
        if code != 0 or bad:
            problems.append(f"{name}: exit {code}: " + " | ".join((bad or text.strip().splitlines() or [""])[-2:]))
            return False
        if secs > STEP_SECONDS:
            problems.append(f"{name}: took {secs:.0f} s")
        if name == "compress-lossy":
            row["lossy_notice"] = [ln for ln in text.splitlines() if ln.startswith(("note", "task-aware"))]
        return True

    # ---- lossless
    row["lossless_ok"] = row["identical"] = False
    if step("compress", ["compress", os.fspath(model_path), os.fspath(lossless_rdc)]) and \
            step("decompress", ["decompress", os.fspath(lossless_rdc), os.fspath(back_path)]):
        row["rdc_size"] = lossless_rdc.stat().st_size
        back_bytes = back_path.read_bytes()
        back = onnx.load_model_from_string(back_bytes)
        ok = True
        verdict = _checker_verdict(back_path, model_path)
        if verdict == "original too":
            notes.append("checker fails on the original too")
        elif verdict:
            problems.append(f"lossless: checker fails on the restored model only: {verdict}")
            ok = False
        row["identical"] = back_bytes == orig_bytes
        if _has_external(orig):
            # the restored model names its own data file: compare the tensors' values, not the bytes
            same = _same_tensors(onnx.load(os.fspath(model_path)), onnx.load(os.fspath(back_path)))
            notes.append("external data: " + ("tensors identical" if same else "TENSORS DIFFER"))
            if not same:
                ok = False
                problems.append("lossless: tensors of the external-data model differ")
        elif not row["identical"]:
            reason = _non_identical_reason(orig_bytes, back_bytes, orig, back)
            notes.append("not byte-identical: " + reason)
            if reason.startswith("models differ"):
                ok = False
                problems.append("lossless: " + reason)
        row["lossless_ok"] = ok
    step("info", ["info", os.fspath(lossless_rdc)]) if lossless_rdc.exists() else None

    # ---- onnxruntime on the original and the lossless restore
    feeds, source = _inputs_for(model_path, orig)
    row["inputs"] = source
    reference = None
    try:
        reference = _run(model_path, feeds)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"onnxruntime cannot run the original: {str(exc).splitlines()[0][:120]}")
    if reference is not None and back_path.exists():
        try:
            got = _run(back_path, feeds)
            same = all(_same(a, b) for fa, fb in zip(reference, got) for a, b in zip(fa, fb))
            row["lossless_outputs_identical"] = same
            if not same:
                problems.append("lossless: onnxruntime outputs differ")
                row["lossless_ok"] = False
        except Exception as exc:  # noqa: BLE001
            problems.append(f"lossless: onnxruntime fails on the restored model: {str(exc).splitlines()[0][:160]}")
            row["lossless_ok"] = False

    # ---- lossy
    row["lossy_ok"] = False
    if step("compress-lossy", ["compress", os.fspath(model_path), os.fspath(lossy_rdc), "--bits", "4"]) and \
            step("decompress-lossy", ["decompress", os.fspath(lossy_rdc), os.fspath(lossy_path)]):
        row["lossy_size"] = lossy_rdc.stat().st_size
        lossy = onnx.load(os.fspath(lossy_path))
        ok = True
        verdict = _checker_verdict(lossy_path, model_path)
        if verdict and verdict != "original too":
            problems.append(f"lossy: checker fails: {verdict}")
            ok = False
        if _skeleton(lossy) != _skeleton(orig):
            problems.append("lossy: graph structure (nodes, names, dtypes, dims) changed")
            ok = False
        steer = _steering_values(orig)
        full = onnx.load(os.fspath(model_path)) if _has_external(orig) else orig  # external data loaded
        a, b = _slots(full), _slots(lossy)
        from onnx import numpy_helper

        changed_int, changed_steer, changed = [], [], 0
        for key, t in a.items():
            if key not in b:
                continue
            try:
                x, y = numpy_helper.to_array(t), numpy_helper.to_array(b[key])
            except Exception:  # noqa: BLE001 - types numpy_helper cannot read stay inline anyway
                continue
            if x.tobytes() == y.tobytes():
                continue
            changed += 1
            name = key.split(":", 1)[1]
            if t.data_type not in _FLOAT_TYPES or t.data_type != b[key].data_type:
                changed_int.append(name)
            elif name in steer:
                changed_steer.append(name)
        row["lossy_changed_tensors"] = changed
        if changed_int:
            problems.append(f"lossy: integer/bool tensors altered: {changed_int[:3]}")
            ok = False
        if changed_steer:
            problems.append(f"lossy: shape/index-steering float tensors altered: {changed_steer[:3]}")
            ok = False
        if reference is not None:
            try:
                got = _run(lossy_path, feeds)
                errs = []
                for fa, fb in zip(reference, got):
                    for x, y in zip(fa, fb):
                        x, y = np.asarray(x), np.asarray(y)
                        if x.dtype != y.dtype or x.shape != y.shape:
                            problems.append(f"lossy: output {x.dtype}{x.shape} became {y.dtype}{y.shape}")
                            ok = False
                            continue
                        if x.dtype.kind == "f" and x.size:
                            xd, yd = x.astype(np.float64), y.astype(np.float64)
                            fin = np.isfinite(xd)
                            if not np.array_equal(np.isfinite(yd), fin):
                                errs.append(float("inf"))
                                continue
                            den = np.linalg.norm(xd[fin])
                            num = np.linalg.norm(xd[fin] - yd[fin])
                            errs.append(0.0 if num == 0 else (num / den if den else float("inf")))
                row["rel_error"] = max(errs) if errs else None
            except Exception as exc:  # noqa: BLE001
                problems.append(f"lossy: onnxruntime fails on the restored model: {str(exc).splitlines()[0][:160]}")
                ok = False
        row["lossy_ok"] = ok
        step("info-lossy", ["info", os.fspath(lossy_rdc)])
    return row


# ----------------------------------------------------------------------------------------------------
# The sweep (parent side)


def _worker(model: Path, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rdc-sweep-") as tmp:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", os.fspath(model), "--work", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"model": os.fspath(model), "problems": [f"HANG: no result within {timeout:.0f} s"], "notes": []}
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            return {"model": os.fspath(model), "problems": [f"worker crashed ({proc.returncode}): {tail}"], "notes": []}
        return json.loads(lines[-1])


def _short(path: str) -> str:
    p = Path(path)
    return f"{p.parent.parent.name}/{p.parent.name}" if p.name == "model.onnx" else f"{p.parent.name}/{p.name}"


def _table(rows: list[dict[str, Any]]) -> str:
    yes = lambda v: {True: "yes", False: "NO", None: "-"}.get(v, "-")  # noqa: E731
    head = ("model", "onnx B", "rdc B", "lossy B", "lossless", "identical", "lossy", "rel.err", "notes")
    body = []
    for r in rows:
        err = r.get("rel_error")
        body.append((_short(r["model"]), str(r.get("size", "-")), str(r.get("rdc_size", "-")),
                     str(r.get("lossy_size", "-")), yes(r.get("lossless_ok")), yes(r.get("identical")),
                     yes(r.get("lossy_ok")), "-" if err is None else f"{err:.3g}",
                     "; ".join(r["problems"] + r["notes"])[:200]))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head[:-1])]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths + [0])).rstrip()  # noqa: E731
    return "\n".join([fmt(head)] + [fmt(b) for b in body])


def main(argv: list[str] | None = None) -> int:
    """Run the sweep (or, with ``--one``, the checks of one model as a worker); exit 1 on any problem."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("extra", nargs="*", help="more .onnx files or folders searched for them")
    ap.add_argument("--filter", default=None, help="only models whose path contains this")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=6 * STEP_SECONDS, help="seconds per model")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(check_one(Path(args.one), Path(args.work))))
        return 0
    models = onnx_test_models()
    for e in args.extra:
        p = Path(e)
        models += sorted(p.rglob("*.onnx")) if p.is_dir() else [p]
    if args.filter:
        models = [m for m in models if args.filter in os.fspath(m)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        rows = []
        for row in pool.map(lambda m: _worker(m, args.timeout), models):
            rows.append(row)
            mark = "FAIL" if row["problems"] else "ok"
            print(f"[{len(rows)}/{len(models)}] {mark} {_short(row['model'])} {'; '.join(row['problems'])[:300]}",
                  file=sys.stderr, flush=True)
    print(_table(rows))
    n = len(rows)
    count = lambda key: sum(1 for r in rows if r.get(key))  # noqa: E731
    print(f"\nmodels {n}, lossless ok {count('lossless_ok')}, byte-identical {count('identical')}, "
          f"lossy ok {count('lossy_ok')}, with problems {sum(1 for r in rows if r['problems'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if any(r["problems"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
