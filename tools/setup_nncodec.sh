#!/usr/bin/env bash
# Make the virtual environment in which NNCodec 2.1.3 (the ISO/IEC 15938-17 NNC reference software,
# PyPI "nncodec") runs for our benchmarks; tools/nncodec_peer.py calls it through a subprocess.
#
#   tools/setup_nncodec.sh [VENV_DIR]      # default: <repo>/.venv-nncodec
#   FORCE=1 tools/setup_nncodec.sh         # delete and rebuild the venv
#
# Idempotent: if VENV_DIR already passes `tools/nncodec_runner.py --check`, nothing is installed.
#
# What goes in, and why:
#   * CPU torch 2.13.0+cpu (local wheel via pip's find-links). The "+cpu" pin means pip can never
#     resolve to the multi-GB CUDA torch on PyPI: without the local wheel it fails instead.
#     Override with TORCH_SPEC=... if another CPU torch is at hand.
#   * nncodec==2.1.3 with --no-deps: its install_requires names torchvision, whose PyPI wheels need
#     torch's CUDA libraries (they fail to load beside a CPU torch: "operator torchvision::nms does
#     not exist") and would drag torch up to the CUDA build. Coding a dict of arrays never touches
#     torchvision; nncodec only imports it, so nncodec_runner.py supplies a placeholder module.
#     nncodec builds its DeepCABAC C++ extension (pybind11) from the sdist: ~2 min with gcc, then
#     pip's wheel cache makes a rebuild instant.
#   * The other packages nncodec imports when `nncodec.nn` is imported: numpy<2, scikit-learn, pandas,
#     opencv (headless: no libGL needed; 4.11 is the last that supports numpy<2), h5py, tqdm, click,
#     pybind11. ptflops and torchmetrics (also in install_requires) are never imported; left out.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-nncodec}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}"
RUNNER="$ROOT/tools/nncodec_runner.py"
DEPS=(
  "numpy==1.26.4"
  "scikit-learn==1.9.1"
  "pandas==3.0.6"
  "opencv-python-headless==4.11.0.86"
  "h5py==3.16.0"
  "tqdm==4.70.1"
  "click==8.5.1"
  "pybind11==3.1.0"
)

say() { echo "[setup_nncodec] $*"; }

pip_install() {  # quiet pip install; on failure show pip's output (minus find-links noise) and stop
  local log rc=0
  log="$(mktemp)"
  "$VENV/bin/python" -m pip --disable-pip-version-check install -q "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -n 30 >&2 || true
    echo "[setup_nncodec] ERROR: pip install $* failed (exit $rc)" >&2
  fi
  rm -f "$log"
  return "$rc"
}

check() {
  [ -x "$VENV/bin/python" ] && OMP_NUM_THREADS=1 "$VENV/bin/python" "$RUNNER" --check 2>/dev/null
}

if [ "${FORCE:-0}" = "1" ] && [ -d "$VENV" ]; then
  say "FORCE=1: removing $VENV"
  rm -rf "$VENV"
fi

if out="$(check)"; then
  say "already working, nothing to do: $VENV"
  say "versions: $out"
  exit 0
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv $VENV with $($PY --version 2>&1)"
  "$PY" -m venv "$VENV"
else
  say "venv $VENV exists but does not pass the check: repairing it"
fi
# Keep git away from the venv even where .gitignore does not list it.
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"

CONSTRAINTS="$VENV/nncodec-constraints.txt"
echo "$TORCH_SPEC" > "$CONSTRAINTS"

say "installing $TORCH_SPEC (CPU build; the pin refuses any CUDA torch)"
pip_install "$TORCH_SPEC"
"$VENV/bin/python" -W ignore -c "import torch, sys; sys.exit(0 if torch.version.cuda is None else 'CUDA torch installed')"

say "installing nncodec's import-time dependencies: ${DEPS[*]}"
pip_install -c "$CONSTRAINTS" "${DEPS[@]}"

if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('nncodec') == '2.1.3' else 1)" 2>/dev/null; then
  say "nncodec 2.1.3 already installed"
else
  say "installing nncodec==2.1.3 --no-deps (builds the DeepCABAC C++ extension; ~2 min the first time)"
  pip_install --no-deps -c "$CONSTRAINTS" "nncodec==2.1.3"
fi

if "$VENV/bin/python" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
  echo "[setup_nncodec] ERROR: CUDA packages (nvidia-*) ended up in $VENV" >&2
  exit 1
fi

if ! out="$(check)"; then
  echo "[setup_nncodec] ERROR: $VENV still fails the check; run: $VENV/bin/python $RUNNER --check" >&2
  exit 1
fi
say "done in $(( $(date +%s) - start )) s: $VENV"
say "versions: $out"
say "size: $(du -sh "$VENV" | cut -f1)"
