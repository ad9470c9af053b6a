"""recipe/train.py end to end on CPU: learning, data parallel = accumulation, resume, optimiser and schedule."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from helpers import (REPO_ROOT, SCRIPTS, accelerate_launch, build_nanogpt_get_lr, load_in_fresh_python, one_error_line,
                     tiny_config)
from recipe.checkpoints import write_checksums
from recipe.args import parse_settings
from recipe.modeling_gpt import GPTForCausalLM
from recipe.evaluate import main as evaluate_main
from recipe.train import main

def _final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model.safetensors")


def test_tiny_run_learns_and_its_output_loads_anywhere(tmp_path, capsys):
    config = tiny_config(tmp_path)
    assert main([str(config)]) == 0
    output_dir = tmp_path / "run"
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    train_losses = [entry["loss"] for entry in history if "loss" in entry]
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    assert train_losses[-1] < train_losses[0] - 1.0
    assert eval_losses[-1] < eval_losses[0]
    logged = next(entry for entry in history if "tokens_per_second" in entry)
    assert {"learning_rate", "grad_norm", "num_input_tokens_seen", "eta_seconds"} <= set(logged)
    rates = {entry["step"]: entry["learning_rate"] for entry in history if "learning_rate" in entry}
    assert rates == {step: build_nanogpt_get_lr(step - 1, 3e-3, 5, 30, 0.1) for step in range(5, 31, 5)}
    assert any("eval_perplexity" in entry for entry in history)
    assert "sample at step 15: 'To be, or not to be" in capsys.readouterr().out

    expected_files = {
        "model.safetensors", "config.json", "configuration_gpt.py", "modeling_gpt.py", "generation_config.json",
        "tokenizer.json", "tokenizer_config.json", "trainer_state.json", "run_config.json", "README.md",
        "checkpoint-15", "checkpoint-30",
    }
    assert expected_files <= {path.name for path in output_dir.iterdir()}
    assert GPTForCausalLM.from_pretrained(output_dir / "checkpoint-15").config.n_layer == 2
    [loaded] = load_in_fresh_python("To be, or not to be", output_dir)
    assert loaded["class"] == "GPTForCausalLM"
    assert loaded["text"].startswith("To be, or not to be")

    # Bits per byte beside every evaluation's loss: in the logs, the final results and the card; and the training
    # evaluation is exactly recipe.evaluate's on the same config and weights.
    assert all("eval_bpb" in entry for entry in history if "eval_loss" in entry)
    final = json.loads((output_dir / "eval_results.json").read_text())
    assert f"| validation bits per byte (end of training) | {final['eval_bpb']:.4f} |" in (output_dir / "README.md").read_text()
    capsys.readouterr()
    assert evaluate_main([str(output_dir), "--task", "perplexity", "--config", str(config)]) == 0
    evaluated = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert evaluated["loss"] == pytest.approx(final["eval_loss"], rel=1e-6)
    assert evaluated["bpb"] == pytest.approx(final["eval_bpb"], rel=1e-6)
    assert not (output_dir / "baseline_perplexity.json").exists()  # the run's own model is not its baseline


@pytest.mark.slow
@pytest.mark.parametrize("optim", ["adamw_torch_fused", "muon"])
def test_two_processes_equal_one_process_with_accumulation(tmp_path, optim):
    common = {"max_steps": 6, "eval_strategy": "no", "save_strategy": "no", "sample_max_new_tokens": 0,
              "per_device_train_batch_size": 4, "optim": optim}
    single = tiny_config(tmp_path, "single", gradient_accumulation_steps=2, **common)
    parallel = tiny_config(tmp_path, "parallel", **common)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(SCRIPTS / "train_and_dump.py"), str(tmp_path / "single-dump"), str(single)],
                   check=True, env=environment, cwd=REPO_ROOT, capture_output=True)
    launch = [*accelerate_launch(), str(SCRIPTS / "train_and_dump.py"), str(tmp_path / "parallel-dump"), str(parallel)]
    result = subprocess.run(launch, env=environment, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]

    rank0 = load_file(tmp_path / "parallel-dump" / "rank0.safetensors")
    rank1 = load_file(tmp_path / "parallel-dump" / "rank1.safetensors")
    reference = load_file(tmp_path / "single-dump" / "rank0.safetensors")
    assert json.loads((tmp_path / "parallel" / "trainer_state.json").read_text())["global_step"] == 6
    for name, tensor in reference.items():
        assert torch.equal(rank0[name], rank1[name]), name
        assert (rank0[name] - tensor).abs().max().item() <= 1e-5, name  # measured 0 (AVX-512, AVX2)


def test_resuming_from_a_checkpoint_ends_with_the_same_weights(tmp_path):
    uninterrupted = tiny_config(tmp_path, "whole", max_steps=12, save_steps=4, eval_steps=6)
    assert main([str(uninterrupted)]) == 0

    # The same run, as if it had died right after saving checkpoint-4: only that checkpoint survives.
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-4", resumed_dir / "checkpoint-4")
    shutil.copy(tmp_path / "whole" / "run_config.json", resumed_dir / "run_config.json")
    resumed = tiny_config(tmp_path, "resumed", max_steps=12, save_steps=4, eval_steps=6)
    assert main([str(resumed)]) == 0

    expected, actual = _final_weights(tmp_path / "whole"), _final_weights(resumed_dir)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_a_checkpoint_of_the_earlier_padded_layout_is_not_resumed_but_named(tmp_path, capsys):
    """Checkpoints saved before the embeddings had exactly vocab_size rows hold 47 more (and optimizer moments for
    them): resuming one is refused in one line that says what to do; its weights load (tests/test_convert.py)."""
    config = tiny_config(tmp_path, max_steps=4, warmup_steps=1, save_steps=2, eval_strategy="no", sample_max_new_tokens=0)
    assert main([str(config)]) == 0
    shutil.rmtree(tmp_path / "run" / "checkpoint-4")
    (tmp_path / "run" / "model.safetensors").unlink()
    checkpoint = tmp_path / "run" / "checkpoint-2"
    state = load_file(checkpoint / "model.safetensors")
    state["transformer.wte.weight"] = torch.cat([state["transformer.wte.weight"], torch.zeros(47, 64)])
    save_file(state, checkpoint / "model.safetensors", metadata={"format": "pt"})
    write_checksums(checkpoint)
    capsys.readouterr()
    assert main([str(config)]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: {checkpoint} was saved by an earlier version of the recipe, whose embeddings held 47 padding rows "
        f"(its optimizer state has them too): resume it with that version, or start a new run from its weights with "
        f"model_name_or_path={checkpoint}"
    )


class AppliedRates(TrainerCallback):
    """The rate of every parameter group just before each optimizer step: the rates its update uses."""

    def __init__(self):
        self.rates = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append([group["lr"] for group in optimizer.param_groups])


def test_only_2d_tensors_are_decayed_and_the_schedule_is_gpt2s(tmp_path):
    """A run of 4 steps: build-nanogpt's rate at every step (step 0 at peak / warm-up), each step's logged
    learning_rate is the one its update used, AdamW's groups decay exactly the 2-D tensors. (The 30 steps of
    test_tiny_run_learns_and_its_output_loads_anywhere check the logged rates of a longer run.)"""
    settings = parse_settings(tiny_config(tmp_path, max_steps=4, warmup_steps=2, learning_rate=6e-4, logging_steps=1,
                                          eval_strategy="no", save_strategy="no", sample_max_new_tokens=0), [])
    trainer = train_for_inspection(settings)
    applied = AppliedRates()
    trainer.add_callback(applied)
    trainer.train()
    expected = [build_nanogpt_get_lr(step, 6e-4, 2, 4, 0.1) for step in range(4)]
    assert [rates[0] for rates in applied.rates] == expected
    assert all(len(set(rates)) == 1 for rates in applied.rates)  # every group at the one rate
    logged = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert logged == expected  # the log of step N shows the rate of its own update, not the next one's

    decayed = {id(p) for group in trainer.optimizer.param_groups if group["weight_decay"] == 0.1
               for p in group["params"]}
    not_decayed = {id(p) for group in trainer.optimizer.param_groups if group["weight_decay"] == 0.0
                   for p in group["params"]}
    parameters = list(trainer.model.parameters())  # the tied embedding and LM head: one tensor, listed once
    assert decayed == {id(p) for p in parameters if p.dim() == 2}
    assert not_decayed == {id(p) for p in parameters if p.dim() < 2}
    assert sum(len(group["params"]) for group in trainer.optimizer.param_groups) == len(parameters)
    group = trainer.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-8 and group.get("fused")


def test_a_transformers_schedule_still_works_by_name(tmp_path):
    settings = parse_settings(tiny_config(tmp_path, max_steps=100, warmup_steps=10, learning_rate=6e-4,
                                          lr_scheduler_type="cosine_with_min_lr"), [])
    trainer = train_for_inspection(settings)
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    rates = []
    for _ in range(101):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.LambdaLR)  # transformers' own
    assert rates[0] == 0.0 and rates[5] == pytest.approx(3e-4)  # its warm-up: step / warmup_steps
    assert max(rates) == pytest.approx(6e-4) and rates.index(max(rates)) == 10
    assert rates[-1] == pytest.approx(6e-5)


def train_for_inspection(settings):
    """A GPTTrainer on the config's data, without training."""
    from recipe.pipeline import collate_blocks, load_or_train_tokenizer, prepare_datasets
    from recipe.sources import build_model
    from recipe.trainer import GPTTrainer

    tokenizer = load_or_train_tokenizer(settings.data, settings.training.output_dir)
    datasets = prepare_datasets(settings.data, tokenizer)
    return GPTTrainer(
        model=build_model(settings.model, len(tokenizer), tokenizer.eos_token_id),
        args=settings.training,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        data_collator=collate_blocks,
    )


def test_gpt2_124m_config_passes_the_dry_run(capsys):
    assert main([str(REPO_ROOT / "configs" / "gpt2_124m.json"), "--dry_run", "--dry_run_num_gpus", "8"]) == 0
    output = capsys.readouterr().out
    plan = json.loads(output[output.index("{"):])
    assert plan["parameters"] == 124_439_808  # GPT-2 124M: the training matmul's 47 padding columns are no parameters
    assert plan["tokens_per_step"] == 524_288
    assert plan["steps"] == 19_073 and plan["total_tokens"] == 19_073 * 524_288
    assert plan["estimate"].endswith("on 8 x H100 at 40% MFU")
    # Its evaluations score build-nanogpt's validation tokens, where GPT-2 124M's loss is 3.2924.
    assert plan["validation"].startswith("build-nanogpt's FineWeb-Edu validation shard, the first 100,000,000 tokens "
                                         "of the training documents")
    assert "its first 1,280 blocks (the 20 x 64 x 1,024 tokens its loop scores" in plan["validation"]
    assert plan["optimization"].startswith("adamw_torch_fused") and "gpt2_cosine schedule" in plan["optimization"]

    # The Muon plan: the same model and batch, two thirds of the tokens (README, "Choosing the optimizer").
    assert main([str(REPO_ROOT / "configs" / "gpt2_124m_muon.json"), "--dry_run", "--dry_run_num_gpus", "8"]) == 0
    output = capsys.readouterr().out
    muon = json.loads(output[output.index("{"):])
    assert muon["parameters"] == plan["parameters"] and muon["tokens_per_step"] == plan["tokens_per_step"]
    assert muon["total_tokens"] == 12_716 * 524_288 == pytest.approx(plan["total_tokens"] * 2 / 3, rel=1e-4)
    hours = [float(run["estimate"].split(" h ")[0]) for run in (plan, muon)]
    assert hours[1] == pytest.approx(hours[0] * 2 / 3, abs=0.01)
    assert muon["optimization"].startswith("Muon on the blocks' matrices") and "wsd schedule" in muon["optimization"]
    assert muon["validation"] == plan["validation"]  # the same yardstick: build-nanogpt's validation tokens


def test_push_to_hub_uploads_weights_config_code_tokenizer_and_card_in_one_commit(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id))

    def create_commit(self, repo_id, operations, **kwargs):
        calls.append(("create_commit", repo_id, sorted(operation.path_in_repo for operation in operations)))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    config = tiny_config(tmp_path, max_steps=4, warmup_steps=1, save_steps=2, eval_steps=2,
                         push_to_hub=True, hub_model_id="someone/tiny-gpt")
    assert main([str(config)]) == 0
    assert [call[:2] for call in calls] == [("create_repo", "someone/tiny-gpt"), ("create_commit", "someone/tiny-gpt")]
    files = set(calls[1][2])
    expected = {"model.safetensors", "config.json", "configuration_gpt.py", "modeling_gpt.py",
                "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md", "loss.png"}
    assert expected <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) or name.startswith("checkpoint-") for name in files)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "someone/tiny-gpt" in card and "eval" in card.lower()


def test_hellaswag_during_training_works_from_the_documented_command_line(tmp_path):
    """`python recipe/train.py CONFIG`, as the README starts it: recipe/ is on sys.path first there, where the
    recipe's evaluate.py once shadowed the `evaluate` library that HellaSwag scoring imports."""
    examples = [{"ctx": "The cat sat on the", "endings": ["mat.", "moon.", "idea.", "run."], "label": 0},
                {"ctx": "To be, or not to", "endings": ["be.", "fish.", "red.", "seven."], "label": 0}]
    hellaswag_file = tmp_path / "hellaswag.jsonl"
    hellaswag_file.write_text("".join(json.dumps(example) + "\n" for example in examples))
    config = tiny_config(tmp_path, max_steps=6, warmup_steps=1, eval_strategy="no", sample_max_new_tokens=0,
                         hellaswag_file=str(hellaswag_file), hellaswag_steps=3)
    result = subprocess.run([sys.executable, "recipe/train.py", str(config)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    scored = [entry for entry in history if "eval_hellaswag_acc_norm" in entry]
    assert [entry["step"] for entry in scored] == [3, 6]
    assert all(0.0 <= entry["eval_hellaswag_acc_norm"] <= 1.0 for entry in scored)


def test_the_shakespeare_config_runs_end_to_end_shortened(tmp_path, capsys):
    config = REPO_ROOT / "configs" / "shakespeare.json"
    overrides = ["--output_dir", str(tmp_path / "shakespeare"), "--max_steps", "20", "--warmup_steps", "2",
                 "--eval_steps", "10", "--save_steps", "10", "--logging_steps", "5", "--max_eval_samples", "16",
                 "--train_tokenizer_vocab_size", "512", "--report_to", "none"]
    assert main([str(config), *overrides]) == 0
    output_dir = tmp_path / "shakespeare"
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    assert eval_losses[-1] < eval_losses[0]
    assert "sample at step 20: 'Romeo." in capsys.readouterr().out
    assert len(GPTForCausalLM.from_pretrained(output_dir).transformer.wte.weight) == 512  # the BPE's tokens
    assert (output_dir / "tokenizer" / "tokenizer.json").is_file()  # the trained BPE is kept with the run


@pytest.mark.parametrize("config", sorted((REPO_ROOT / "configs").glob("*.json")), ids=lambda path: path.name)
def test_every_shipped_config_validates(config):
    settings = parse_settings(config, [])
    assert settings.tokens_per_step > 0


@pytest.mark.parametrize("launcher", sorted((REPO_ROOT / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_accelerate_config_loads(launcher):
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    launch = load_config_from_file(str(launcher))
    assert launch.num_processes >= 1
    assert launcher.read_text().startswith("#")  # each one explains itself
    # accelerate copies each key of fsdp_config / deepspeed_config onto the launch argument of that name and drops a
    # key that names none, so a misspelt setting would be ignored without a word.
    arguments = {action.dest for action in launch_command_parser()._actions}
    settings = yaml.safe_load(launcher.read_text())
    for section, prefix in (("fsdp_config", "fsdp_"), ("deepspeed_config", "")):
        for key in settings.get(section, {}):
            assert (key if key.startswith(prefix) else prefix + key) in arguments, f"{launcher.name}: {section}.{key}"
