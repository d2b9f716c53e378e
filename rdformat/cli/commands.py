"""The ``rdc`` command: compress, decompress, inspect and verify ``.rdc`` files.

    rdc compress model.pt model.rdc            # .pt/.pth, .safetensors, *.safetensors.index.json, .onnx, .npz
    rdc decompress model.rdc model.safetensors  # output format from the suffix: .safetensors .pt .onnx .npz
    rdc info model.rdc [--json]
    rdc verify model.rdc                        # exit 0 when everything decodes, 1 otherwise
    rdc demo                                    # compress + restore a built-in model, check bit-exactness

Errors are reported as one line on stderr with a non-zero exit code (1: the operation failed,
2: bad usage); progress bars go to stderr when it is a terminal (``--quiet`` silences everything
but errors).

One module on purpose (about 500 lines): every command's handler next to its argparse definition, so a
flag and what it does are read together.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import adapters, convert
from ..api import Limits
from ..errors import CommandLineError, InvalidInputError, RdcError, UnsupportedFeatureError
from ..file.reader import salvage
from .demo import cmd_demo
from .output import EXIT_FAIL, EXIT_OK, EXIT_USAGE, PROG, Out
from .summary import human_size, input_bytes, output_bytes, ratio, same_file, tensor_summary

def _check_paths(src: Path, dst: Path) -> None:
    if not src.exists():
        raise FileNotFoundError(2, "no such file", os.fspath(src))
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise CommandLineError(f"output folder {parent} does not exist")
    if dst.is_dir():
        raise CommandLineError(f"output {dst} is a directory")
    if dst.exists() and same_file(src, dst):
        raise CommandLineError("input and output are the same file")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line on stderr (exit code 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    try:
        from .._version import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


# ----------------------------------------------------------------------------------------------------
# Commands


def _lossy_from_args(args: argparse.Namespace) -> dict | None:
    """Lossless unless a lossy target is asked for explicitly (nobody degrades a model by accident)."""
    targets = {key: value for key, value in (("bits", args.bits), ("rel_error", args.rel_error),
                                             ("size", args.size), ("sparsity", args.sparsity)) if value is not None}
    if len(targets) > 1:
        raise InvalidInputError("give only one of --bits, --rel-error, --size and --sparsity")
    method = args.method or ("surp" if "sparsity" in targets else "auto")
    if method not in ("sq", "dq", "auto", "surp"):
        raise UnsupportedFeatureError(f"lossy method {method!r} is not available; known: auto, sq, dq, surp")
    if args.method is not None and not targets:
        raise InvalidInputError("--method needs a target: --bits, --rel-error, --size or --sparsity")
    if method == "surp" and set(targets) - {"bits", "sparsity"}:
        raise InvalidInputError("--method surp takes --sparsity or --bits")
    if method != "surp" and "sparsity" in targets:
        raise InvalidInputError("--sparsity needs --method surp")
    lossless_vectors = getattr(args, "lossless_vectors", False)
    if lossless_vectors and (not targets or method == "surp"):
        raise InvalidInputError("--lossless-vectors goes with --bits, --rel-error or --size")
    if targets:
        extra = {"fine": False} if lossless_vectors else {}
        return {"method": method, **targets, **extra}
    return None


def _codec_label(codec: dict | None) -> str:
    if codec is None:
        return "lossless"
    targets = {k: v for k, v in codec.items() if k not in ("method", "fine")}
    key, value = next(iter(targets.items()))
    return f"lossy {codec.get('method', 'auto')}, target {key.replace('_', '-')} {value}"


def _task_aware(args: argparse.Namespace, src: Path, fmt: str, lossy: dict, out: Out) -> dict:
    """Add the sensitivity rate control should use (and, for --max-output-error, the bits found)."""
    from .. import calibrate

    onnx_only = [flag for flag, given in (("--calibration", args.calibration), ("--input-shape", args.input_shape),
                                          ("--max-output-error", args.max_output_error is not None)) if given]
    if onnx_only and fmt != "onnx":
        raise CommandLineError(f"{onnx_only[0]} works with ONNX models only, not with a {fmt} file (a Hugging Face "
                               "folder is measured on synthetic inputs; --sensitivity FILE.json takes any other)")
    shapes = calibrate.parse_input_shapes(args.input_shape or ())
    if lossy["method"] == "surp" and args.max_output_error is not None:
        raise CommandLineError("--method surp does not take --max-output-error yet (give --sparsity or --bits)")
    if args.sensitivity:
        lossy["sensitivity"] = calibrate.read_sensitivity_file(args.sensitivity)
        out.say(f"task-aware: sensitivity of {len(lossy['sensitivity'])} tensors from {args.sensitivity}")
    elif args.no_calibrate:
        pass
    elif fmt == "onnx":
        compensate = not args.no_compensate and lossy["method"] in ("auto", "sq")
        found = calibrate.onnx_sensitivity(src, calibration=args.calibration, input_shapes=shapes,
                                           compensate=compensate)
        lossy["sensitivity"] = found.sensitivity
        if found.covariance:
            lossy["covariance"] = found.covariance
        out.say(found.notice)
    elif (found := calibrate.hf_sensitivity(src, fmt=fmt) if fmt in ("safetensors", "pytorch") else None) is not None:
        lossy["sensitivity"] = found.sensitivity  # a Hugging Face folder: config.json says how to run it
        out.say(found.notice)
    else:
        out.say(f"note: a {fmt} file holds weights only and cannot be run: bits are allocated by weight error "
                "(--sensitivity FILE.json, e.g. from rdformat.torch.output_sensitivity, makes it task-aware; "
                "so does a Hugging Face config.json beside a .safetensors or .bin file)")
    if args.write_sensitivity:
        if not lossy.get("sensitivity"):
            raise CommandLineError("--write-sensitivity: no sensitivity was measured (an ONNX model or a Hugging Face folder that runs here "
                                   "is needed)")
        calibrate.write_sensitivity_file(lossy["sensitivity"], args.write_sensitivity)
        out.say(f"sensitivity written to {args.write_sensitivity} (reuse it with --sensitivity)")
    if args.max_output_error is not None:
        from ..api import Lossy

        base = Lossy(**{**lossy, "bits": calibrate.SEARCH_BITS[1]})
        chosen, achieved = calibrate.onnx_output_error_search(src, args.max_output_error, base,
                                                              calibration=args.calibration, input_shapes=shapes)
        verdict = "within" if achieved <= args.max_output_error else "NOT within (finest setting tried)"
        out.say(f"max-output-error: {chosen.bits:g} bits per weight keeps the outputs' relative RMS change at "
                f"{achieved:.4g}, {verdict} the target {args.max_output_error:g}")
        lossy = {k: v for k, v in lossy.items() if k not in ("rel_error", "size")}
        lossy["bits"] = chosen.bits
    return lossy


def cmd_compress(args: argparse.Namespace, out: Out) -> int:
    src, dst = Path(args.input), Path(args.output)
    if args.max_output_error is not None:
        if any(v is not None for v in (args.bits, args.rel_error, args.size, args.sparsity)):
            raise CommandLineError("give either --max-output-error or one of --bits, --rel-error, --size")
        args.bits = 8.0  # a placeholder target: the output-error search replaces it
    codec = _lossy_from_args(args)
    _check_paths(src, dst)
    fmt = None if args.format == "auto" else args.format
    if codec is not None:
        fmt = fmt or adapters.detect_format(src)
        codec = _task_aware(args, src, fmt, codec, out)
    elif args.sensitivity or args.calibration or args.input_shape or args.write_sensitivity:
        raise CommandLineError("--sensitivity, --write-sensitivity, --calibration and --input-shape go with a lossy "
                               "target (--bits ...)")
    options = {}
    if args.key is not None:
        fmt = fmt or adapters.detect_format(src)
        if fmt != "pytorch":
            raise CommandLineError(f"--key picks the state_dict of a PyTorch checkpoint; {src} is {fmt}")
        options["key"] = args.key
    fmt = convert.compress_file(src, dst, fmt=fmt, lossy=codec, progress=out.progress, **options)
    if not out.quiet:
        summary = tensor_summary(dst)
        in_bytes = input_bytes(src, fmt)
        extra = f", {summary['alias_count']} aliases" if summary["alias_count"] else ""
        out.say(f"{src} ({fmt}) -> {dst}: {summary['tensor_count']} tensors{extra}, {_codec_label(codec)}")
        out.say(f"  input  {in_bytes:>14,} bytes ({human_size(in_bytes)})")
        out.say(f"  output {summary['file_bytes']:>14,} bytes ({human_size(summary['file_bytes'])})  "
                f"ratio {ratio(in_bytes, summary['file_bytes']):.3f}x "
                f"(tensor data {summary['raw_bytes']:,} bytes -> {ratio(summary['raw_bytes'], summary['file_bytes']):.3f}x)")
    return EXIT_OK


def cmd_decompress(args: argparse.Namespace, out: Out) -> int:
    src, dst = Path(args.input), Path(args.output)
    _check_paths(src, dst)
    fmt = convert.output_format(dst)
    options: dict[str, Any] = {}
    if fmt == "onnx" and args.external_data != "auto":
        options["external_data"] = args.external_data == "yes"
    elif args.external_data != "auto":
        raise adapters.FormatError("--external-data applies to .onnx outputs only")
    source: Any = src
    if args.partial:
        # a truncated layered file (a partial download): rebuild a complete file from its whole records
        source, cut = salvage(src)
        out.say(f"{src}: {cut}" if cut is not None else f"{src} is complete (nothing was cut)")
    # --max-bytes: progressive (SuRP) tensors decode from a prefix of the file (a coarser model).
    convert.decompress_file(source, dst, fmt=fmt, progress=out.progress, budget=args.max_bytes,
                            limits=_limits_from_args(args), **options)
    out.say(f"{src} -> {dst} ({fmt}): {output_bytes(dst, fmt):,} bytes")
    return EXIT_OK


def cmd_info(args: argparse.Namespace, out: Out) -> int:
    summary = tensor_summary(args.file)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return EXIT_OK
    src = summary["source_format"] or "unknown"
    print(f"{summary['file']}: {summary['tensor_count']} tensors"
          + (f" + {summary['alias_count']} aliases" if summary["alias_count"] else "")
          + f", source {src}"
          + (f", graph {summary['graph']['format']} {summary['graph']['bytes']:,} bytes" if summary["graph"] else ""))
    rows = summary["tensors"]
    if rows:
        sensitive = any(r.get("sensitivity") is not None for r in rows)
        channels = any(r.get("channel_steps") for r in rows)
        headers = ("name", "dtype", "shape", "codec", "stored", "raw", "ratio", "bits/w", "sparsity", "rel.err",
                   *(("sens.",) if sensitive else ()), *(("ch. steps",) if channels else ()), "flags")
        table = []
        for r in rows:
            flags = []
            if r["structural"]:
                flags.append("structural")
            if r["alias_of"]:
                flags.append(f"alias of {r['alias_of']}")
            table.append((r["name"], r["dtype"], "x".join(map(str, r["shape"])) or "scalar", r["codec"],
                          f"{r['stored_bytes']:,}", f"{r['raw_bytes']:,}",
                          "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
                          "-" if r["bits_per_weight"] is None else f"{r['bits_per_weight']:.2f}",
                          "-" if r["sparsity"] is None else f"{100 * r['sparsity']:.1f}%",
                          "-" if r["rel_error"] is None else ("0" if r["rel_error"] == 0 else f"{r['rel_error']:.2e}"),
                          *((("-" if r.get("sensitivity") is None else f"{r['sensitivity']:.3g}x"),) if sensitive else ()),
                          *((("-" if not r.get("channel_steps") else
                              "x{:.3g}..x{:.3g}".format(*r["channel_steps"])),) if channels else ()),
                          ", ".join(flags)))
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
        right = set(range(4, 10 + sensitive + channels))
        fmt_row = lambda cells: "  ".join(  # noqa: E731
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        print(fmt_row(headers))
        for t in table:
            print(fmt_row(t))
    if any(r.get("sensitivity") is not None for r in rows):
        print("sens.: the tensor's output sensitivity relative to the mean, as rate control used it "
              "(higher: finer steps)")
    if any(r.get("channel_steps") for r in rows):
        print("ch. steps: range of the per-channel step factors (axis scales) within the tensor "
              "(below 1: channels the outputs feel more get finer steps)")
    print(f"total: tensor data {summary['raw_bytes']:,} bytes, file {summary['file_bytes']:,} bytes, "
          f"ratio {summary['ratio']:.3f}x")
    b = summary["breakdown"]
    cats = b["categories"]
    parts = ", ".join(f"{k} {v:,}" for k, v in cats.items() if k != "payload" and v)
    print(f"payload (coded weights) {b['payload_bytes']:,} bytes, overhead {b['overhead_bytes']:,} bytes "
          f"({100 * b['overhead_fraction']:.1f}% of the file): {parts}")
    if b["lossy_weights"]:
        print(f"quantized weights: {b['lossy_weights']:,} at {b['lossy_bits_per_weight']:.2f} bits/weight of payload "
              "(what --bits counts; overhead and lossless tensors come on top)")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, out: Out) -> int:
    path = args.file
    limits = _limits_from_args(args)
    with adapters.open_rdc(path, limits=limits) as f:  # the index: what the file claims to hold
        names = f.keys()
        aliases = dict(f.aliases)
    with adapters.open_rdc(path, limits=limits) as f:  # a fresh pass over every record, in file order
        count = nbytes = 0
        seen = set()
        for name, array in out.progress(iter(f), total=len(names), desc="verify"):
            seen.add(name)
            if name not in aliases:
                count += 1
                nbytes += array.nbytes
        missing = [n for n in names if n not in seen]
        if missing:
            raise RdcError(f"tensors listed in the index were not found while reading: {missing[:5]}")
        if f.graph is not None and f.graph_format == "onnx":
            try:
                from ..onnx import _parse_graph, _refs

                model = _parse_graph(f)
                unknown = [n for _, n, _ in _refs(model) if n not in seen]
                if unknown:
                    raise RdcError(f"the ONNX graph references tensors missing from the file: {unknown[:5]}")
            except adapters.MissingDependencyError:
                pass
            except ImportError:  # onnx not installed: the graph stays unchecked
                pass
    out.say(f"{path}: OK ({count} tensors"
            + (f" + {len(aliases)} aliases" if aliases else "")
            + f", {nbytes:,} bytes decoded, checksums valid)")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------
# Parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _byte_size(text: str) -> int:
    units = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
             "kib": 1024, "mib": 1024**2, "gib": 1024**3}
    t = text.strip().lower()
    num = t.rstrip("kmgib")
    try:
        value = float(num) * units[t[len(num):]]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 250000, 300k, 1.5M)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return int(value)


_NO_LIMIT = ("0", "none", "off")


def _size_or_none(text: str) -> int | str:
    """A byte size (``8G``, ``512MiB``...), or ``"none"`` for 0/none/off (no limit)."""
    return "none" if text.strip().lower() in _NO_LIMIT else _byte_size(text)


def _ratio_or_none(text: str) -> float | str:
    """A positive ratio, or ``"none"`` for 0/none/off (no limit)."""
    return "none" if text.strip().lower() in _NO_LIMIT else _positive_float(text)


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    """The reader-limit options of every command that decodes tensors (decompression bombs)."""
    d = Limits()
    group = p.add_argument_group(
        "reader limits", "a hostile file cannot make a read decode more than these (the error names the option "
        "to raise for a trusted file)")
    group.add_argument("--max-output", type=_size_or_none, default=None, metavar="SIZE",
                       help=f"total decoded bytes of the read (default {d.max_output_bytes >> 30}GiB; k/M/G/KiB/MiB/"
                            "GiB suffixes; 0 or none: no limit)")
    group.add_argument("--max-ratio", type=_ratio_or_none, default=None, metavar="R",
                       help=f"decoded bytes per stored byte of the file (default {d.max_ratio:g}; any file may decode "
                            f"to {d.ratio_floor_bytes >> 20} MiB whatever its size; 0 or none: no limit)")


def _limits_from_args(args: argparse.Namespace) -> Limits | None:
    """The reader limits --max-output / --max-ratio ask for (None: the defaults)."""
    changes: dict[str, Any] = {}
    if args.max_output is not None:
        changes["max_output_bytes"] = None if args.max_output == "none" else args.max_output
    if args.max_ratio is not None:
        changes["max_ratio"] = None if args.max_ratio == "none" else args.max_ratio
    return Limits(**changes) if changes else None


def _command(sub: Any, common: argparse.ArgumentParser, name: str, summary: str, description: str,
             func: Any, *files: tuple[str, str, str]) -> argparse.ArgumentParser:
    """One ``rdc`` subcommand with the common options, its handler and its file arguments
    (``(dest, metavar, help)`` each)."""
    p = sub.add_parser(name, parents=[common], help=summary, description=description)
    p.set_defaults(func=func)
    for dest, metavar, text in files:
        p.add_argument(dest, metavar=metavar, help=text)
    return p


#: What the task-aware option group of ``rdc compress --help`` says.
_TASK_HELP = ("with a lossy target, bits go where the model's outputs feel them: for ONNX models the output "
              "sensitivity of each tensor is measured with onnxruntime (noise injection; synthetic inputs unless "
              "--calibration is given; real calibration inputs also let the sq levels compensate each layer's "
              "errors); a .safetensors or .bin with a Hugging Face config.json beside it is run with transformers "
              "on synthetic inputs; for others a --sensitivity file is used")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")

    parser = _Parser(
        prog=PROG,
        description="Compress neural-network weights into compact .rdc files and restore them.",
        epilog="Run 'rdc COMMAND --help' for the options of a command.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = _command(sub, common, "compress", "convert a model file into .rdc (lossless unless --bits/--rel-error/--size)",
                 "Convert a .pt/.pth checkpoint, .safetensors file, sharded *.safetensors.index.json, .onnx model or "
                 ".npz archive into .rdc. The input format is detected from the file's content and name.",
                 cmd_compress, ("input", "IN", "model file to compress"), ("output", "OUT", "the .rdc file to write"))
    p.add_argument("--format", default="auto",
                   choices=("auto", "pytorch", "safetensors", "safetensors-index", "onnx", "npz"),
                   help="input format (default: detect)")
    p.add_argument("--key", default=None, metavar="KEY",
                   help="PyTorch checkpoints: the entry holding the state_dict to store, when the checkpoint "
                        "holds several (e.g. 'G' of a GAN's {'G': ..., 'D': ...}; default: found automatically)")
    lossy = p.add_argument_group(
        "lossy options", "without one of these the file is lossless; with one, float tensors of 2+ dimensions "
        "are quantized (codec sq or dq), 1-D float tensors of 64+ values finely, and everything else stays "
        "lossless")
    lossy.add_argument("--bits", type=_positive_float, default=None, metavar="B",
                       help="target bits per weight of the quantized tensors' levels, e.g. 4 (headers, tables "
                            "and lossless tensors come on top: rdc info shows the payload and the overhead "
                            "separately)")
    lossy.add_argument("--rel-error", type=_positive_float, default=None, metavar="E",
                       help="target relative L2 error of the whole model, e.g. 0.01")
    lossy.add_argument("--size", type=_byte_size, default=None, metavar="S",
                       help="target file size (bytes, or with k/M/G suffix), an upper bound")
    lossy.add_argument("--sparsity", type=_positive_float, default=None, metavar="S",
                       help="SuRP: fraction of pruned weights among 2+-D float tensors, e.g. 0.9")
    lossy.add_argument("--method", default=None, metavar="NAME", choices=("auto", "sq", "dq", "surp"),
                       help="auto (default: sq or dq, whichever the plan predicts smaller), sq (scalar "
                            "quantization), dq (trellis-coded quantization) or surp (successive-refinement "
                            "pruning, progressive)")
    task = p.add_argument_group("task-aware options", _TASK_HELP)
    task.add_argument("--max-output-error", type=_positive_float, default=None, metavar="E",
                      help="ONNX: the fewest bits that keep the relative RMS change of the model's outputs within E "
                           "(e.g. 0.01), searched by running the compressed model")
    task.add_argument("--calibration", default=None, metavar="PATH",
                      help="ONNX: calibration inputs, an .npz keyed by input name or a folder of <input>.npy")
    task.add_argument("--input-shape", action="append", default=None, metavar="NAME=DxD...",
                      help="ONNX: shape of a dynamic input for synthetic calibration inputs, e.g. x=1x3x224x224")
    task.add_argument("--sensitivity", default=None, metavar="FILE.json",
                      help="per-tensor sensitivity ({name: value}) written by rdformat's estimators")
    task.add_argument("--write-sensitivity", default=None, metavar="FILE.json",
                      help="also save the measured sensitivity, to reuse with --sensitivity")
    task.add_argument("--no-calibrate", action="store_true",
                      help="allocate bits by weight error only (no inference)")
    task.add_argument("--no-compensate", action="store_true",
                      help="ONNX with --calibration: round each weight on its own instead of choosing sq levels "
                           "that keep each layer's outputs on the calibration inputs (error compensation)")
    lossy.add_argument("--lossless-vectors", action="store_true",
                       help="keep 1-D tensors (biases, norm gains) lossless; by default those with 64 or more "
                            "values get a fine step (relative error about 0.1%%)")

    p = _command(sub, common, "decompress", "restore an .rdc file as .safetensors/.pt/.onnx/.npz",
                 "Restore an .rdc file. The output format follows OUT's suffix: .safetensors, "
                 ".safetensors.index.json (shards), .pt/.pth, .onnx (needs a file compressed from ONNX) or .npz.",
                 cmd_decompress, ("input", "IN.rdc", "the .rdc file"), ("output", "OUT", "file to write"))
    p.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto",
                   help="ONNX only: write large weights to OUT.data (default: as the source model did, "
                        "or when over 1.8 GB)")
    p.add_argument("--max-bytes", type=_byte_size, default=None, metavar="N",
                   help="read budget: read only the first N bytes of a layered SuRP file (plus its index), "
                        "giving a sparser, coarser model; in older SuRP files the budget is shared by the "
                        "progressive streams in proportion to their sizes")
    p.add_argument("--partial", action="store_true",
                   help="IN is a truncated layered SuRP file (a partial download): restore the model its "
                        "complete layers describe and say what was cut")
    _add_limit_options(p)

    p = _command(sub, common, "info", "list the tensors of an .rdc file",
                 "Show tensors, dtypes, shapes, codecs, sizes and compression ratios.", cmd_info,
                 ("file", "FILE", "the .rdc file"))
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")

    p = _command(sub, common, "verify", "decode everything and check all checksums",
                 "Decode every tensor and check every checksum. Exit code 0 when the file is intact, 1 otherwise.",
                 cmd_verify, ("file", "FILE", "the .rdc file"))
    _add_limit_options(p)

    p = _command(sub, common, "demo", "compress and restore a built-in model",
                 "Compress a small built-in model, restore it, print the sizes and the ratio and confirm the round "
                 "trip is bit-exact.", cmd_demo)
    p.add_argument("--keep", metavar="DIR", default=None, help="keep the demo files in DIR")
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _run_capturing_warnings(args: argparse.Namespace, out: Out) -> int:
    """Run a command with library warnings (torch, numpy...) captured: on success each is shown as one
    ``warning:`` line (unless --quiet); on failure they are dropped, so the error stays one line."""
    with warnings.catch_warnings(record=True) as caught:
        code = args.func(args, out)
    if not out.quiet:
        for message in dict.fromkeys(_one_line(w.message) for w in caught):
            print(f"{PROG} {args.command}: warning: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rdc`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        print(f"{PROG}: error: a command is required: compress, decompress, info, verify or demo "
              f"(see {PROG} --help)", file=sys.stderr)
        return EXIT_USAGE
    out = Out(args.quiet)
    try:
        return _run_capturing_warnings(args, out)
    except RdcError as exc:
        print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
    except FileNotFoundError as exc:
        print(f"{PROG} {args.command}: error: {exc.filename or ''}: no such file or directory", file=sys.stderr)
    except IsADirectoryError as exc:
        print(f"{PROG} {args.command}: error: {exc.filename or ''}: is a directory", file=sys.stderr)
    except PermissionError as exc:
        print(f"{PROG} {args.command}: error: {exc.filename or ''}: permission denied", file=sys.stderr)
    except BrokenPipeError:  # e.g. "rdc info x | head"
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:  # pragma: no cover
            pass
        return EXIT_FAIL
    except OSError as exc:
        print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{PROG} {args.command}: error: out of memory", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - last resort: one line, never a traceback
        print(f"{PROG} {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
    return EXIT_FAIL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
