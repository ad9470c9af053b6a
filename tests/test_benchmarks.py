"""Smoke tests: every speed/memory benchmark runs end to end at a tiny size and prints its table (no timing checks)."""

import subprocess
import sys

import pytest

from helpers import REPO_ROOT, tiny_config

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


def test_bench_optim_trains_adamw_and_muon_from_the_same_start_and_prints_the_ratio(tmp_path):
    """bench_optim at a tiny size: a 1-layer GPT on four plays with a 512-token BPE, 4 steps each."""
    tiny = dict(model_config={"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}, max_steps=4,
                warmup_steps=1, train_tokenizer_vocab_size=512, max_eval_samples=8)
    adamw = tiny_config(tmp_path, "adamw", **tiny)
    muon = tiny_config(tmp_path, "muon", optim="muon", lr_scheduler_type="wsd",
                       lr_scheduler_kwargs={"decay_fraction": 0.5, "min_lr_rate": 0.0}, **tiny)
    output = run([sys.executable, "benchmarks/bench_optim.py", "--adamw", str(adamw), "--muon", str(muon),
                  "--eval_steps", "2", "--timing_steps", "4", "--timing_rounds", "1",
                  "--plot", str(tmp_path / "overlay.png")])
    assert output.startswith("### AdamW vs Muon: validation loss against tokens")
    assert "- command: `python benchmarks/bench_optim.py" in output and "- machine: " in output
    assert "the same initial weights" in output and "one tokenizer, one data order" in output
    rows = [line for line in output.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| tokens | AdamW val loss") and "| Muon val loss" in rows[0]
    assert [row.split(" | ")[0] for row in rows[1:3]] == ["| 1,024", "| 2,048"]  # an evaluation every 2 steps
    assert any(row.startswith("| Muon's tokens to AdamW's final val loss |") for row in rows)
    assert any(row.startswith("| median step time (ms) |") for row in rows)
    assert (tmp_path / "overlay.png").stat().st_size > 0  # recipe.plot's overlay of the two runs


def test_bench_quickstart_reports_compute_and_bits_per_byte_of_the_command_a_user_runs(tmp_path):
    """bench_quickstart on the tests' tiny config: recipe/train.py runs as a user runs it, and its row holds the
    compute (FLOPs per token x tokens trained) and the final evaluation's bits per byte, as the run saved them."""
    config = tiny_config(tmp_path, max_steps=6, warmup_steps=1, eval_steps=6, save_steps=6,
                         train_tokenizer_vocab_size=512, sample_max_new_tokens=0)
    output = run([sys.executable, "benchmarks/bench_quickstart.py", "--config", str(config), "--only", "shipped"])
    assert output.startswith(f"### The quick start: candidates for {config.name}")
    header, row = [line for line in output.splitlines() if line.startswith("| ")]
    values = dict(zip(header.strip("| ").split(" | "), row.strip("| ").split(" | ")))
    assert values["candidate"] == "shipped" and values["tokens"] == f"{6 * 8 * 64:,}"  # 6 steps of 8 x 64 tokens
    parameters = int(values["parameters"].replace(",", ""))
    assert float(values["TFLOP"]) * 1e12 >= 6 * parameters * 6 * 8 * 64 * 0.99  # 6N per token at least
    assert 0 < float(values["eval bpb"]) < 16 and float(values["wall s"]) >= float(values["training steps s"])
