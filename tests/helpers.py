"""Helpers the tests share: tiny configs, twin models, a real tiny training run, loading in a fresh Python."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

from recipe import GPTConfig, GPTForCausalLM
from recipe.args import parse_settings
from recipe.callbacks import PreemptionCallback, SampleCallback
from recipe.checkpoints import RUN_CONFIG_FILE
from recipe.pipeline import collate_blocks
from recipe.sources import gpt_config_from_gpt2, state_dict_from_openai
from recipe.tokenization import gpt2_tokenizer
from recipe.trainer import GPTTrainer

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).parent / "scripts"
PLAYS = ["hamlet_gut.txt", "macbeth_gut.txt", "sonnets_gut.txt", "tempest_gut.txt"]
SHAKESPEARE = REPO_ROOT / "data" / "shakespeare"


VALIDATION_DOCUMENTS = 40  # of the 120 scenes, held out for validation by the data tests


def joined_ids(documents: list[str], tokenizer) -> list[int]:
    """The documents tokenized one by one with transformers, one eos after each, joined."""
    ids = []
    for document in documents:
        ids += tokenizer(document, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        ids.append(tokenizer.eos_token_id)
    return ids


def scene_texts(count: int = 120) -> list[str]:
    """Documents of 1 to 97 lines cut from the plays: more documents than one map batch, some far shorter and
    some longer than a block. One spells GPT-2's separator inside its text."""
    lines = [line for play in sorted(SHAKESPEARE.glob("h*.txt")) for line in play.read_text().splitlines(True)]
    documents, start = [], 0
    for index in range(count):
        length = 1 + index * 37 % 97
        documents.append("".join(lines[start : start + length]))
        start += length
    documents[7] = "A play within the play <|endoftext|> is only text here.\n" + documents[7]
    return documents


def tiny_gpt2_config(**overrides) -> GPT2Config:
    """A transformers GPT-2 config of OpenAI's layout at a tiny size (GPT-2's vocabulary, so its tokenizer works)."""
    fields = dict(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=50257,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    fields.update(overrides)
    return GPT2Config(**fields)


def twin_models(seed: int = 0, make_vocab_size_divisible_by: int = 1, **shape):
    """(ours, reference), both in eval mode, with identical weights drawn by transformers' GPT-2 init."""
    torch.manual_seed(seed)
    reference = GPT2LMHeadModel(tiny_gpt2_config(**shape)).eval()
    config = gpt_config_from_gpt2(reference.config, make_vocab_size_divisible_by)
    ours = GPTForCausalLM(config).eval()
    ours.load_state_dict(state_dict_from_openai(reference.state_dict(), config), strict=False)
    return ours, reference


def tiny_config(tmp_path: Path, name: str = "run", **overrides) -> Path:
    """A config of a 2-layer GPT on four plays: seconds per run on two CPU cores."""
    config = {
        "train_files": [str(REPO_ROOT / "data" / "shakespeare" / play) for play in PLAYS],
        "validation_split_percentage": 25,
        "model_config": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 64},
        "block_size": 64,
        "max_eval_samples": 32,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "max_steps": 30,
        "warmup_steps": 5,
        "learning_rate": 3e-3,
        "logging_steps": 5,
        "eval_steps": 15,
        "save_steps": 15,
        "report_to": "none",
        "dataloader_num_workers": 0,
        "sample_max_new_tokens": 8,
        "sample_prompt": "To be, or not to be",
        "output_dir": str(tmp_path / name),
        "seed": 0,
    }
    config.update(overrides)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


# A run as the recipe makes it, at a size that trains in seconds: its data is random blocks, but its settings name
# a Hub dataset, so that the card has one to report.
TINY_RUN_SETTINGS = {
    "dataset_name": "HuggingFaceFW/fineweb-edu",
    "dataset_config_name": "sample-10BT",
    "block_size": 16,
    "model_config": {"n_layer": 1, "n_embd": 32, "n_head": 4, "n_positions": 32},
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "max_steps": 6,
    "warmup_steps": 2,
    "logging_steps": 1,
    "eval_steps": 3,
    "save_steps": 3,
    "use_cpu": True,
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
    "sample_max_new_tokens": 4,
}


def _random_blocks(count: int, block_size: int, seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    return Dataset.from_dict({"input_ids": torch.randint(0, 50257, (count, block_size), generator=generator).tolist()})


def train_tiny_run(output_dir: Path) -> None:
    """Train a 1-layer GPT for 6 steps with GPTTrainer and the recipe's callbacks (evals, checkpoints, samples),
    then save what recipe.train saves at the end of a run."""
    config_file = output_dir.parent / f"{output_dir.name}.json"
    config_file.write_text(json.dumps({**TINY_RUN_SETTINGS, "output_dir": str(output_dir)}))
    settings = parse_settings(config_file)
    training, tokenizer = settings.training, gpt2_tokenizer()
    torch.manual_seed(0)
    block_size = settings.data.block_size
    trainer = GPTTrainer(
        model=GPTForCausalLM(GPTConfig(**settings.model.model_config)),
        args=training,
        train_dataset=_random_blocks(48, block_size, seed=1),
        eval_dataset=_random_blocks(4, block_size, seed=2),
        data_collator=collate_blocks,
        processing_class=tokenizer,
        callbacks=[PreemptionCallback(), SampleCallback(tokenizer, "Hello", training.sample_max_new_tokens)],
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_CONFIG_FILE).write_text(json.dumps(settings.to_dict(), indent=2))
    result = trainer.train()
    trainer.save_model()
    trainer.save_state()
    trainer.save_metrics("train", result.metrics)
    trainer.save_metrics("eval", trainer.final_metrics())


def build_nanogpt_get_lr(it: int, max_lr: float, warmup_steps: int, max_steps: int, min_lr_rate: float) -> float:
    """The reference the recipe's gpt2_cosine is checked against: build-nanogpt's `get_lr` (karpathy/build-nanogpt,
    train_gpt2.py), the same arithmetic in the same order; llm.c's llmc/schedulers.h computes it too (in float32)."""
    min_lr = max_lr * min_lr_rate
    if it < warmup_steps:
        return max_lr * (it + 1) / warmup_steps
    if it > max_steps:
        return min_lr
    decay_ratio = (it - warmup_steps) / (max_steps - warmup_steps)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (max_lr - min_lr)


def load_in_fresh_python(prompt: str, *checkpoints: Path) -> list[dict]:
    """Run scripts/load_without_recipe.py on checkpoints in one fresh Python, standard input closed; a report per
    checkpoint. A prompt, a warning or a log warning from any of its loading calls fails the test."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "load_without_recipe.py"), prompt, *map(str, checkpoints)],
        cwd=checkpoints[0].parent, env=environment, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["recipe_imported"]
    for loaded in report["loads"]:
        assert loaded["noise"] == [], loaded
    return report["loads"]


def accelerate_launch(launcher: str = "cpu_ddp.yaml") -> list[str]:
    """`accelerate launch --config_file accelerate_configs/LAUNCHER` on a free port of its own, so that launches in
    parallel test workers do not meet on accelerate's default port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO_ROOT / "accelerate_configs" / launcher), "--main_process_port", str(port)]


def launch(script: str, dump_dir, config, processes: int = 1) -> None:
    """Run scripts/SCRIPT DUMP_DIR CONFIG in a fresh Python, or in 2 processes (accelerate_configs/cpu_ddp.yaml)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPTS / script), str(dump_dir), str(config)]
    if processes > 1:
        command[:1] = accelerate_launch()
    result = subprocess.run(command, env=environment, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def recorded(dump_dir, rank: int) -> dict:
    """What scripts/train_and_record.py recorded of one process."""
    return json.loads((dump_dir / f"rank{rank}.json").read_text())


def one_error_line(err: str) -> str:
    """The one `error: ...` line of a command's stderr (there must be exactly one, and no traceback)."""
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def damage_file(path: Path, how: str) -> None:
    """Damage a file as disks and interrupted copies do: "truncate" cuts it in half, anything else flips one byte."""
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
