"""Fault injection: kill -9 anywhere, preemption signals, NaN losses, loss spikes, damaged checkpoints, bad configs.

Every run here is a subprocess of scripts/train_with_faults.py (recipe/train.py's main plus injected faults),
and every resume is compared with an uninterrupted run of the same config, weight for weight.
"""

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, damage_file, one_error_line, tiny_config
from recipe.modeling_gpt import GPTForCausalLM
from recipe.optimization import wsd_lr
from recipe.train import main

pytestmark = pytest.mark.slow

FAULTS = Path(__file__).parent / "scripts" / "train_with_faults.py"
RUN = dict(max_steps=12, save_steps=3, eval_strategy="no", sample_max_new_tokens=0, logging_steps=1)


def start(config: Path, progress: Path, **faults) -> subprocess.Popen:
    environment = {**os.environ, "RECIPE_TEST_PROGRESS": str(progress), "OMP_NUM_THREADS": "2"}
    environment.update({f"RECIPE_TEST_{key.upper()}": str(value) for key, value in faults.items()})
    return subprocess.Popen(
        [sys.executable, str(FAULTS), str(config)], cwd=REPO_ROOT, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(config: Path, progress: Path, **faults) -> subprocess.CompletedProcess:
    process = start(config, progress, **faults)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def wait_for(predicate, process: subprocess.Popen, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"the run ended early: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def steps_done(progress: Path) -> int:
    return len(progress.read_text().split()) if progress.exists() else 0


def weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model.safetensors")


def assert_same_weights(expected: dict, actual: dict):
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of the run every interrupted run must end with."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    result = finish(tiny_config(directory, **RUN), directory / "progress")
    assert result.returncode == 0, result.stderr[-3000:]
    return weights(directory / "run")


def test_sigkill_at_a_random_step_then_the_same_command_ends_identically(tmp_path, uninterrupted):
    kill_after = random.randint(2, 10)  # any step must work; the number is in the failure message
    config = tiny_config(tmp_path, **RUN)
    process = start(config, tmp_path / "progress")
    wait_for(lambda: steps_done(tmp_path / "progress") >= kill_after, process)
    process.kill()
    process.wait()
    assert not (tmp_path / "run" / "model.safetensors").exists(), "the run finished before it was killed"

    result = finish(config, tmp_path / "progress")
    assert result.returncode == 0, f"killed after step {kill_after}: {result.stderr[-3000:]}"
    assert_same_weights(uninterrupted, weights(tmp_path / "run"))


def test_sigkill_during_a_checkpoint_write_is_never_resumed_from(tmp_path, uninterrupted):
    config = tiny_config(tmp_path, **RUN)
    process = start(config, tmp_path / "progress", hang_in_save=9)
    wait_for(lambda: (tmp_path / "progress.saving").exists(), process)
    process.kill()
    process.wait()
    output_dir = tmp_path / "run"
    assert not (output_dir / "checkpoint-9").exists()
    assert (output_dir / "_partial-checkpoint-9" / "checkpoint-9" / "model.safetensors").exists()
    assert (output_dir / "checkpoint-6" / "checksums.sha256").exists()

    result = finish(config, tmp_path / "progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {output_dir / 'checkpoint-6'}" in result.stdout
    assert not (output_dir / "_partial-checkpoint-9").exists()
    assert_same_weights(uninterrupted, weights(output_dir))


def test_a_run_killed_after_its_last_checkpoint_resumes_to_the_same_end_without_another_step(tmp_path):
    config = tiny_config(tmp_path, **{**RUN, "max_steps": 3, "warmup_steps": 1})
    assert main([str(config)]) == 0
    output_dir = tmp_path / "run"
    finished = weights(output_dir)
    for path in output_dir.iterdir():  # what a kill between the last checkpoint and the final save leaves
        if path.name not in ("checkpoint-3", "run_config.json"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    assert main([str(config)]) == 0
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 3
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-3"]
    assert_same_weights(finished, weights(output_dir))


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_preemption_saves_at_the_step_boundary_and_exits_cleanly(tmp_path, uninterrupted, signal_number):
    config = tiny_config(tmp_path, **RUN)
    process = start(config, tmp_path / "progress")
    wait_for(lambda: steps_done(tmp_path / "progress") >= 4, process)
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    stopped_at = steps_done(tmp_path / "progress")
    assert f"{signal.Signals(signal_number).name}: stopped after step {stopped_at}" in stdout
    assert "Run the same command again to resume" in stdout
    assert (tmp_path / "run" / f"checkpoint-{stopped_at}" / "checksums.sha256").exists()
    assert not (tmp_path / "run" / "model.safetensors").exists()

    result = finish(config, tmp_path / "progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(uninterrupted, weights(tmp_path / "run"))


def test_nonfinite_loss_stops_at_its_step_and_writes_no_nan(tmp_path):
    config = tiny_config(tmp_path, **RUN)
    result = finish(config, tmp_path / "progress", nan_at_step=8)
    assert result.returncode == 1
    assert "error: non-finite loss at step 8" in result.stderr
    assert "Last good checkpoint: " in result.stderr and "checkpoint-6" in result.stderr
    output_dir = tmp_path / "run"
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert not (output_dir / "model.safetensors").exists()
    for checkpoint in output_dir.glob("checkpoint-*"):
        assert all(torch.isfinite(tensor).all() for tensor in weights(checkpoint).values())


def test_a_step_whose_gradient_is_zero_stops_the_run_in_one_line(tmp_path):
    config = tiny_config(tmp_path, **RUN)
    result = finish(config, tmp_path / "progress", zero_at_step=5)
    assert result.returncode == 1
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: the gradient norm is exactly 0 at step 5: no gradient reached the parameters")
    assert "Last good checkpoint: " in error and "checkpoint-3" in error
    output_dir = tmp_path / "run"
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-3"]  # nothing of step 5
    assert not (output_dir / "model.safetensors").exists()


def test_nonfinite_loss_can_skip_its_batch_instead(tmp_path):
    config = tiny_config(tmp_path, **{**RUN, "nonfinite_loss": "skip", "save_steps": 1})
    result = finish(config, tmp_path / "progress", nan_at_step=8)
    assert result.returncode == 0, result.stderr[-3000:]
    output_dir = tmp_path / "run"
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert any(entry.get("skipped_nonfinite_batches") == 1 for entry in history)
    assert all(math.isfinite(entry["loss"]) for entry in history if "loss" in entry)
    assert all(torch.isfinite(tensor).all() for tensor in weights(output_dir).values())
    # The skipped step left the weights exactly as they were.
    assert_same_weights(weights(output_dir / "checkpoint-7"), weights(output_dir / "checkpoint-8"))


# Two micro-batches a step, so that the detector's loss is their sum, as Trainer logs it. The detector scores from
# step 5 on (its window, steps 1-4, is full); the spike is injected there.
SPIKE_RUN = {**RUN, "max_steps": 8, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
             "spike_guard": "skip", "spike_window": 4}
SPIKE_STEP = 5


def log_history(output_dir: Path) -> list[dict]:
    """The training logs (one per step here) of a run's trainer_state.json."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


@pytest.fixture(scope="module")
def never_saw_the_spiked_batch(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of SPIKE_RUN trained on data without step 5's micro-batches, one step shorter: a skipped step
    must end exactly there (the schedule is still that of max_steps, as a skipped step does not advance it)."""
    directory = tmp_path_factory.mktemp("without-the-batch")
    result = finish(tiny_config(directory, **SPIKE_RUN), directory / "progress", drop_step=SPIKE_STEP,
                    stop_after=SPIKE_RUN["max_steps"] - 1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(entry["skipped_spike_steps"] == 0 for entry in log_history(directory / "run"))  # no false alarm
    return weights(directory / "run")


@pytest.fixture(scope="module")
def spiked_killed_and_resumed(tmp_path_factory) -> tuple[Path, str, subprocess.CompletedProcess]:
    """SPIKE_RUN with the loss of step 5 x 1000, killed while saving checkpoint-6 (after it skipped the spike), then
    rerun: the rerun resumes from checkpoint-3 and can only score step 5 with the window that checkpoint recorded.
    Its output directory, the killed run's stderr, the rerun."""
    directory = tmp_path_factory.mktemp("spiked")
    config = tiny_config(directory, **SPIKE_RUN)
    process = start(config, directory / "progress", spike_at_step=SPIKE_STEP, hang_in_save=6)
    wait_for(lambda: (directory / "progress.saving").exists(), process)
    process.kill()
    killed_stderr = process.communicate()[1]
    rerun = finish(config, directory / "progress", spike_at_step=SPIKE_STEP)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return directory / "run", killed_stderr, rerun


def test_a_loss_spike_is_skipped_as_if_its_batch_were_not_in_the_data(spiked_killed_and_resumed,
                                                                       never_saw_the_spiked_batch):
    output_dir, killed_stderr, _ = spiked_killed_and_resumed
    assert f"skipping step {SPIKE_STEP}: the loss " in killed_stderr
    history = log_history(output_dir)
    assert [entry["skipped_spike_steps"] for entry in history] == [0] * 4 + [1] * 4
    assert_same_weights(never_saw_the_spiked_batch, weights(output_dir))
    # The detector scores the loss Trainer logs (the sum over the step's micro-batches), to the bit.
    guard = json.loads((output_dir / "checkpoint-3" / "step_guard.json").read_text())
    assert guard["spike_detector"]["loss"] == [entry["loss"] for entry in history[:3]]
    assert guard["spike_detector"]["grad_norm"] == [entry["grad_norm"] for entry in history[:3]]


def test_a_resumed_run_skips_the_same_spike(spiked_killed_and_resumed):
    output_dir, _, rerun = spiked_killed_and_resumed
    assert f"resuming from {output_dir / 'checkpoint-3'}" in rerun.stdout
    assert f"skipping step {SPIKE_STEP}: the loss " in rerun.stderr
    assert json.loads((output_dir / "checkpoint-6" / "step_guard.json").read_text())["skipped_steps"]["spike"] == [SPIKE_STEP]


def test_a_loss_spike_can_stop_the_run_in_one_line(tmp_path):
    config = tiny_config(tmp_path, **{**SPIKE_RUN, "spike_guard": "stop"})
    result = finish(config, tmp_path / "progress", spike_at_step=SPIKE_STEP)
    assert result.returncode == 1
    error = one_error_line(result.stderr)
    match = re.match(rf"error: loss spike at step {SPIKE_STEP}: the loss (\S+) is (\S+) standard deviations above "
                     rf"the mean (\S+) of the last 4 steps \(spike_zscore=7\); nothing of that step was applied", error)
    assert match, error
    loss, zscore, mean = map(float, match.groups())
    assert loss > 1000 * 9 and 9 < mean < 11 and zscore > 7  # the loss x 1000, against losses of about 10
    assert error.endswith(str(tmp_path / "run" / "checkpoint-3"))
    assert sorted(path.name for path in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-3"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.pt"])
def test_a_damaged_checkpoint_file_is_named(tmp_path, damage, victim):
    config = tiny_config(tmp_path, **{**RUN, "max_steps": 3, "warmup_steps": 1})
    assert main([str(config)]) == 0
    damaged = tmp_path / "run" / "checkpoint-3" / victim
    damage_file(damaged, damage)
    assert main([str(config)]) == 2


def test_a_damaged_checkpoint_error_is_one_line_naming_the_file(tmp_path, capsys):
    config = tiny_config(tmp_path, **{**RUN, "max_steps": 3, "warmup_steps": 1})
    assert main([str(config)]) == 0
    capsys.readouterr()
    damaged = tmp_path / "run" / "checkpoint-3" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert main([str(config)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert f"error: {damaged} is corrupt or truncated" in error
    assert "Delete" in error and "checkpoint-3" in error


def test_the_muon_config_resumes_exactly_after_sigkill_and_loads(tmp_path):
    """configs/shakespeare.json (the Muon quick start), shortened: killed at a random step and rerun, it ends with the weights of the
    uninterrupted run (Muon's momentum buffers are in every checkpoint and restored); every step ran at wsd's
    rate; the result loads with from_pretrained."""
    config = json.loads((REPO_ROOT / "configs" / "shakespeare.json").read_text())
    config.update(max_steps=8, warmup_steps=2, save_steps=3, eval_steps=4, logging_steps=1, max_eval_samples=16,
                  per_device_train_batch_size=16, train_tokenizer_vocab_size=512, sample_max_new_tokens=0,
                  report_to="none")
    configs = {}
    for name in ("whole", "killed"):
        configs[name] = tmp_path / f"{name}.json"
        configs[name].write_text(json.dumps({**config, "output_dir": str(tmp_path / name)}))
    result = finish(configs["whole"], tmp_path / "whole.progress")
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(tmp_path / "whole" / "tokenizer", tmp_path / "killed" / "tokenizer")  # the same BPE, trained once

    kill_after = random.randint(4, 7)  # after checkpoint-3; the number is in the failure message
    process = start(configs["killed"], tmp_path / "killed.progress")
    wait_for(lambda: steps_done(tmp_path / "killed.progress") >= kill_after, process)
    process.kill()
    process.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "the run finished before it was killed"
    result = finish(configs["killed"], tmp_path / "killed.progress")
    assert result.returncode == 0, f"killed after step {kill_after}: {result.stderr[-3000:]}"
    assert "resuming from" in result.stdout
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "killed"))

    momentum = torch.load(tmp_path / "whole" / "checkpoint-3" / "optimizer.pt", weights_only=True)["state"]
    assert sum("momentum_buffer" in state for state in momentum.values()) == 4 * 4  # 4 blocks x 4 matrices
    history = json.loads((tmp_path / "whole" / "trainer_state.json").read_text())["log_history"]
    rates = [entry["learning_rate"] for entry in history if "learning_rate" in entry]
    assert rates == [wsd_lr(step, config["learning_rate"], warmup_steps=2, max_steps=8, decay_fraction=0.4,
                            min_lr_rate=0.1) for step in range(8)]
    evals = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    assert evals[-1] < evals[0]
    assert GPTForCausalLM.from_pretrained(tmp_path / "killed").config.n_layer == 4
    assert "Muon for the blocks' matrices (peak 0.03" in (tmp_path / "killed" / "README.md").read_text()  # the card
