"""Smoke tests: every speed/memory benchmark runs end to end at a tiny size and prints its table (no timing checks)."""

import subprocess
import sys

import pytest

from helpers import REPO_ROOT

pytestmark = pytest.mark.slow

TINY = ["--device", "cpu", "--shape", "tiny"]
RUNS = {
    "bench_train.py": [*TINY, "--batch", "2", "--seq", "32", "--steps", "1", "--warmup", "0"],
    "bench_decode.py": [*TINY, "--prompt", "4", "--new_tokens", "4", "--repeats", "1"],
    "bench_memory.py": [*TINY, "--batch", "2", "--seq", "32"],
    "bench_trainer.py": [*TINY, "--batch", "2", "--seq", "32", "--steps", "5", "--rounds", "1"],
}


def run(command: list[str]) -> str:
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("script", RUNS)
def test_benchmark_prints_its_table(script):
    output = run([sys.executable, f"benchmarks/{script}", *RUNS[script]])
    assert output.startswith("### ")
    assert "- command: `python benchmarks/" in output and "- machine: " in output
    table = [line for line in output.splitlines() if line.startswith("|")]
    assert len(table) >= 4  # header, rule, and a row per contender
    assert "GPT2LMHeadModel" in output or "bare PyTorch" in output


def test_gpu_check_dry_runs_on_cpu():
    output = run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu"])
    rows = [line for line in output.splitlines() if line.startswith("| ") and "check" not in line]
    assert len(rows) == 9
    parity = [row for row in rows if "logits, " in row]
    assert len(parity) == 2 and all(row.rstrip(" |").endswith("PASS") for row in parity)
