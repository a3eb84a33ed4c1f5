#!/usr/bin/env bash
# Quick start, step 1: set up (.venv, torch, build) and run the demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
python -m ferrum_ext demo "$@"
