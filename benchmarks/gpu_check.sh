#!/usr/bin/env bash
# One H100 or H200, no network, sized for about 6 minutes (not yet run on a GPU): does the 124M path learn through
# Trainer, is it right under torch.compile, is its step at least the plain PyTorch reference's, how fast does it decode.
#   bash benchmarks/gpu_check.sh                  # on the GPU machine (needs this package's dependencies)
#   bash benchmarks/gpu_check.sh --device cpu     # dry run of every step at a tiny shape
# The lent GPU machine has no network and lacks a few dependencies: run benchmarks/gpu_wheels.sh here first, carry
# .whl/ with the working tree, and this script installs them there (device tool: carry [".whl"]).
# Prints one markdown table; exits 1 if a check FAILs. See benchmarks/gpu_check.py for what each row means.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the recipe package, installed or not
if ! python3 -c "import datasets, evaluate, recipe" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/gpu-check-site"
fi
exec python3 benchmarks/gpu_check.py "$@"
