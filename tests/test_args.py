"""Settings: defaults < JSON file < command line, and every bad config refused early, by key and value."""

import json
import subprocess
import sys

import pytest

from helpers import REPO_ROOT
from recipe import train as train_module
from recipe.args import check_settings, parse_settings
from recipe.errors import ConfigError
from recipe.train import main
from helpers import tiny_config


def test_command_line_beats_the_file_and_the_file_beats_the_defaults(tmp_path):
    config = tiny_config(tmp_path, learning_rate=1e-3, max_steps=40)
    settings = parse_settings(config, ["--learning_rate", "2e-3", "--model_config", '{"n_layer": 3, "n_embd": 64, "n_head": 4}'])
    assert settings.training.learning_rate == 2e-3  # command line
    assert settings.training.max_steps == 40  # file
    assert settings.model.model_config == {"n_layer": 3, "n_embd": 64, "n_head": 4}
    assert settings.training.adam_beta2 == 0.95  # the recipe's default (GPT-3 / nanoGPT), not Trainer's 0.999
    assert settings.training.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    assert settings.training.weight_decay == 0.1


def test_tokens_per_step_derives_the_accumulation(tmp_path):
    config = tiny_config(tmp_path, tokens_per_step=2048, per_device_train_batch_size=4)
    settings = parse_settings(config, [])
    assert settings.training.gradient_accumulation_steps == 8  # 2048 / (4 x 1 process x 64 tokens)
    assert settings.tokens_per_step == 2048
    with pytest.raises(ConfigError, match="tokens_per_step=2000 is not a positive multiple of .* = 256"):
        parse_settings(config, ["--tokens_per_step", "2000"])
    with pytest.raises(ConfigError, match="not both"):
        parse_settings(config, ["--gradient_accumulation_steps", "2"])


BAD_CONFIGS = {
    "unknown key in the file": ({"learning_rat": 1e-3}, [], "unknown keys ['learning_rat']"),
    "unknown key on the command line": ({}, ["--learning_rat", "1"], "['--learning_rat', '1']"),
    "unknown model_config key": ({"model_config": {"n_layers": 2}}, [], "model_config has unknown keys ['n_layers']"),
    "wrong type": ({"per_device_train_batch_size": 8.5}, [], "per_device_train_batch_size=8.5 has the wrong type"),
    "not a number": ({"learning_rate": "fast"}, [], "--learning_rate/--learning-rate: invalid float value: 'fast'"),
    "a string for a list": ({"train_files": "data"}, [], "train_files='data' has the wrong type"),
    "heads do not divide the width": (
        {"model_config": {"n_embd": 100, "n_head": 12}}, [], "n_embd=100 must be divisible by n_head=12"
    ),
    "block longer than the context": ({"block_size": 128}, [], "block_size=128 is longer than the model's context n_positions=64"),
    "zero learning rate": ({"learning_rate": 0}, [], "learning_rate=0 must be positive"),
    "negative learning rate": ({}, ["--learning_rate=-1e-3"], "learning_rate=-0.001 must be positive"),
    "zero batch": ({"per_device_train_batch_size": 0}, [], "per_device_train_batch_size=0 must be positive"),
    "warm-up longer than the run": ({"warmup_steps": 50, "max_steps": 50}, [], "warmup_steps=50 is not shorter than the run (max_steps=50)"),
    "unknown schedule": ({"lr_scheduler_type": "gpt2_cosin"}, [], "lr_scheduler_type='gpt2_cosin' is not a schedule: "
                         "the recipe's are ['gpt2_cosine', 'wsd'], transformers' ['linear', "),
    "schedule kwargs the schedule does not take": (
        {"lr_scheduler_type": "linear"}, [], "lr_scheduler_kwargs has ['min_lr_rate'], which lr_scheduler_type=linear "
        "does not take (it takes []): set lr_scheduler_kwargs to what it takes, or {}"
    ),
    "a floor above the peak": ({"lr_scheduler_kwargs": {"min_lr_rate": 2}}, [],
                               "lr_scheduler_kwargs min_lr_rate=2 must be a number in [0, 1]"),
    "Muon momentum of 1": ({"optim": "muon"}, ["--muon_momentum", "1"], "muon_momentum=1.0 must be positive and below 1"),
    "a wsd warm-up into its decay": (
        {"lr_scheduler_type": "wsd", "lr_scheduler_kwargs": {"decay_fraction": 0.9}}, [],
        "warmup_steps=5 runs into the decay, which starts at step 3 of 30 (decay_fraction=0.9)"
    ),
    "bf16 without a GPU": ({"bf16": True}, [], "bf16=true needs a GPU with bfloat16 support"),
    "no data": ({"train_files": None}, [], "no training data"),
    "HellaSwag file missing": ({"hellaswag_steps": 10, "hellaswag_file": "nowhere.jsonl"}, [],
                               "hellaswag_file=nowhere.jsonl does not exist"),
    "both a Hub dataset and files": ({"dataset_name": "some/corpus"}, [], "set dataset_name (a Hub dataset) or "
                                     "train_files (local files), not both"),
    "streaming without a validation set": ({"streaming": True}, [], "streaming=true needs validation_documents"),
    "spike threshold not positive": ({"spike_zscore": 0}, [], "spike_zscore=0 must be a positive number of standard"),
    "spike window of one step": ({}, ["--spike_window", "1"], "spike_window=1 must be at least 2 steps"),
    "unknown spike guard": ({"spike_guard": "warn"}, [], "spike_guard='warn' has the wrong type"),
}


@pytest.mark.parametrize("fields, overrides, message", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_is_refused_before_any_work_in_one_line(tmp_path, capsys, monkeypatch, fields, overrides, message):
    def forbidden(*args, **kwargs):
        raise AssertionError("a bad config must be refused before the model or the data are touched")

    monkeypatch.setattr(train_module, "build_model", forbidden)
    monkeypatch.setattr("recipe.pipeline.prepare_datasets", forbidden)
    config = tiny_config(tmp_path, **fields)
    assert main([str(config), *overrides]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert message in error
    assert not (tmp_path / "run").exists()  # nothing written


def test_muon_under_deepspeed_is_refused_by_name_and_under_fsdp_is_not(tmp_path, monkeypatch):
    """Checked on the parsed settings: an accelerate DeepSpeed launch cannot even parse them without DeepSpeed
    installed (TrainingArguments requires it), which the suite does not install (README: DeepSpeed)."""
    settings = parse_settings(tiny_config(tmp_path, optim="muon"), [])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_settings(settings)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match=r"^optim=muon does not work with DeepSpeed: its ZeRO optimizer hands the "
                                          r"optimizer flat partitions, not matrices"):
        check_settings(settings)


def test_an_output_dir_holding_another_run_is_refused_unless_overwriting(tmp_path, capsys):
    config = tiny_config(tmp_path, max_steps=2, warmup_steps=1, eval_strategy="no", sample_max_new_tokens=0)
    assert main([str(config)]) == 0
    before = sorted(path.name for path in (tmp_path / "run").iterdir())
    capsys.readouterr()
    assert main([str(config), "--learning_rate", "1e-2"]) == 2
    assert "holds a run with a different config (learning_rate: 0.003 -> 0.01)" in capsys.readouterr().err
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == before
    assert main([str(config), "--learning_rate", "1e-2", "--overwrite_output_dir"]) == 0
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert saved["learning_rate"] == 1e-2


def test_missing_or_invalid_config_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.json")]) == 2
    assert f"config file {tmp_path / 'nope.json'} does not exist" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text('{"learning_rate": 1e-3,\n "max_steps": }')
    assert main([str(tmp_path / "broken.json")]) == 2
    assert "is not valid JSON (line 2, column 15)" in capsys.readouterr().err


def test_the_cli_prints_no_traceback(tmp_path):
    config = tiny_config(tmp_path, learning_rate=-1)
    result = subprocess.run([sys.executable, "recipe/train.py", str(config)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: learning_rate=-1 must be positive"
    assert "Traceback" not in result.stderr


def test_a_dry_run_with_a_tokenizer_that_cannot_be_loaded_is_one_line(tmp_path, capsys):
    config = tiny_config(tmp_path, tokenizer_name=str(tmp_path / "no-such-tokenizer"))
    assert main([str(config), "--dry_run"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: tokenizer_name={str(tmp_path / 'no-such-tokenizer')!r} cannot be loaded")
    assert error.count("\n") == 1
