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
    """Every section of the GPU check runs and prints its rows; the checks that hold at any size pass."""
    output = run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu"])
    rows = [line for line in output.splitlines() if line.startswith("| (")]
    sections = list(dict.fromkeys(row[2:5] for row in rows))
    assert sections == ["(a)", "(b)", "(c)", "(d)"]
    verdicts = [row.rstrip(" |").rsplit("|", 1)[-1].strip() for row in rows]
    assert "FAIL" not in verdicts
    passed = [row for row, verdict in zip(rows, verdicts) if verdict == "PASS"]
    assert any("loss first -> last" in row for row in passed)  # the Trainer path learns (>= 1 nat in 15 steps)
    assert any("smallest gradient norm" in row for row in passed)
    assert sum("compiled vs eager gradients" in row for row in passed) == 2
    assert any("generate the same tokens" in row for row in passed)
    assert "plain PyTorch (nanoGPT style)" in output and "GPT2LMHeadModel" in output
