#!/usr/bin/env bash
# Fetch, here, the wheels that the lent GPU machine's Python (3.12, no network) lacks for gpu_check.sh: its image has
# torch, accelerate, tiktoken, pandas, pyarrow and matplotlib, but no datasets or evaluate and an older transformers.
# They land in .whl/ (git-ignored); gpu_check.sh installs them from there when it finds them.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
for package in transformers==5.24.0 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$package"
done
ls -la .whl
