"""The package's layers import only downward, and no import cycle exists (issue 11).

Every ``import`` statement in ``rdformat/`` is read from the source (those inside functions too: a
lazy import is still a dependency), resolved to the module it names, and checked against the
layer table below. A module may import modules of a lower layer and modules of its own folder;
importing a higher layer, or a peer folder of the same rank, fails the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rdformat"

#: Layer of each top-level part of the package (module or folder), lowest first.
LAYERS: dict[str, int] = {
    "_version": 0,
    "errors": 0,
    "format": 1,
    "entropy": 2,
    "codecs": 3,
    "file": 4,  # reader, writer: container + codecs
    "producers": 4,  # quantizers, rate control, SuRP, sensitivity: numpy in, Prepared out
    "api": 5,  # save/load/open: the one place joining producers and the writer
    "_moved": 5,  # old module names -> new ones (imports nothing of the package statically)
    "adapters": 6,
    "torch_sensitivity": 6,  # noise injection on live torch modules (imports torch only when called)
    "torch": 7,
    "safetensors": 7,
    "onnx": 7,
    "npz": 7,
    "safetensors_io": 6.5,  # the safetensors file format itself (what the safetensors adapter converts)
    "contrib": 7,
    "onnx_calibration": 7,
    "hf_calibration": 7,  # runs Hugging Face folders (weights + config.json) through torch_sensitivity
    "convert": 8,  # picks an adapter by a file's format (what rdc compress/decompress call)
    "calibrate": 8,  # task-aware lossy targets for the CLI (runs ONNX models through onnx_calibration)
    "surp": 8,  # SuRP's user-facing module (re-exports the producer and the contrib loop)
    "cli": 9,
    "__init__": 10,
    "__main__": 11,
}


def _part(module: str) -> str:
    """``rdformat.codecs.sq`` -> ``codecs``; ``rdformat`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        out[name] = path
    return out


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that ``module`` imports (resolved; ``from x import y`` counts ``x.y`` when a module)."""
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from pkg import mod`` depends on pkg.mod (and pkg's __init__, which any import of a
            # submodule runs anyway); ``from mod import name`` depends on mod.
            subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
            names = subs if subs and len(subs) == len(node.names) else [target] + subs
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("rdformat"):
                found.add(name)
    found.discard(module)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {m: _imports(m, p, known) for m, p in modules.items()}


def test_every_part_has_a_layer() -> None:
    parts = {_part(m) for m in _modules()}
    assert not parts - set(LAYERS), f"parts without a layer in LAYERS: {sorted(parts - set(LAYERS))}"


def test_imports_only_go_down() -> None:
    bad = []
    for module, deps in _graph().items():
        own = _part(module)
        for dep in deps:
            other = _part(dep)
            if other == own or dep == "rdformat" and own == "__init__":
                continue
            if dep == "rdformat":  # ``from rdformat import x`` / ``import rdformat``: the top facade
                other = "__init__"
            if LAYERS[other] >= LAYERS[own]:
                bad.append(f"{module} (layer {LAYERS[own]}) imports {dep} (layer {LAYERS[other]})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_core_imports_no_framework() -> None:
    """The core (everything below the adapters) never imports torch, onnx or safetensors."""
    heavy = ("torch", "onnx", "onnxruntime", "safetensors")
    bad = []
    for module, path in _modules().items():
        if LAYERS[_part(module)] >= LAYERS["adapters"]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            bad += [f"{module} imports {n}" for n in names if n.split(".")[0] in heavy]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("old, new", [("rdformat.reader", "rdformat.file.reader"),
                                      ("rdformat.container", "rdformat.format.records"),
                                      ("rdformat.ratecontrol", "rdformat.producers.ratecontrol")])
def test_old_module_paths_still_import_with_a_warning(old, new):
    import importlib
    import subprocess
    import sys

    # a fresh interpreter: the old name must not be cached from an earlier import
    code = (f"import warnings, importlib; warnings.simplefilter('error')\n"
            f"try:\n    importlib.import_module({old!r})\nexcept DeprecationWarning as w:\n    print('warned', w)\n"
            f"warnings.simplefilter('ignore'); import {old} as m; print(m.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=PACKAGE.parent).stdout
    assert "warned" in out and new in out and out.strip().endswith(new)
    assert importlib.import_module(new)
