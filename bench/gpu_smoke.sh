#!/usr/bin/env bash
# One-GPU smoke check (issue 11 §4; bench/README.md § GPU smoke): run from the repository root on a
# machine with one CUDA GPU and no network. Writes bench/results/gpu_smoke/gpu_smoke.{json,md}.
#   bash bench/gpu_smoke.sh                       # every check
#   bash bench/gpu_smoke.sh --checks engines,rollout_throughput
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout "${GPU_SMOKE_TIMEOUT_S:-480}" "$PYTHON" bench/gpu_smoke.py --device "${GPU_SMOKE_DEVICE:-cuda}" "$@"
