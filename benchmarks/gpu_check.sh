#!/usr/bin/env bash
# One H100, no network, under 8 minutes: correctness, then 124M throughput/MFU vs GPT2LMHeadModel, then memory.
#   bash benchmarks/gpu_check.sh                  # on the GPU machine (needs this package and its dependencies)
#   bash benchmarks/gpu_check.sh --device cpu     # dry run of every step at a tiny shape
# Prints one markdown table; exits 1 if a correctness or memory check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the recipe package, installed or not
exec python3 benchmarks/gpu_check.py "$@"
