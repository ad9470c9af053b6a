"""A real, tiny training run: the output directory recipe/train.py leaves, made by transformers' Trainer in seconds."""

import json
import math
import time

import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, default_data_collator

from recipe import GPTConfig, GPTForCausalLM
from recipe.args import RUN_CONFIG_FILE, parse_settings
from recipe.tokenization import gpt2_tokenizer

BLOCK_SIZE = 16
SETTINGS = {
    "dataset_name": "HuggingFaceFW/fineweb-edu",
    "dataset_config_name": "sample-10BT",
    "block_size": BLOCK_SIZE,
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
}


class ThroughputAndPerplexity(TrainerCallback):
    """What the recipe's own callbacks add to the logs: tokens/s on training logs, perplexity on eval logs."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        entry = state.log_history[-1]
        if "loss" in entry:
            entry["tokens_per_second"] = entry["num_input_tokens_seen"] / (time.perf_counter() - self.start)
        if "eval_loss" in entry:
            entry["eval_perplexity"] = math.exp(entry["eval_loss"])


def _blocks(count: int, seed: int) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 50257, (count, BLOCK_SIZE), generator=generator).tolist()
    return Dataset.from_dict({"input_ids": input_ids, "labels": input_ids})


def train_tiny_run(output_dir) -> None:
    """Train a 1-layer GPT for 6 steps with evals and checkpoints, then save what a recipe run saves."""
    config_file = output_dir.parent / f"{output_dir.name}.json"
    config_file.write_text(json.dumps({**SETTINGS, "output_dir": str(output_dir)}))
    settings = parse_settings(config_file)
    torch.manual_seed(0)
    trainer = Trainer(
        model=GPTForCausalLM(GPTConfig(**settings.model.model_config)),
        args=settings.training,
        train_dataset=_blocks(48, seed=1),
        eval_dataset=_blocks(4, seed=2),
        data_collator=default_data_collator,
        processing_class=gpt2_tokenizer(),
        callbacks=[ThroughputAndPerplexity()],
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / RUN_CONFIG_FILE).write_text(json.dumps(settings.to_dict(), indent=2))
    train_metrics = trainer.train().metrics
    trainer.save_model()
    trainer.save_state()
    trainer.save_metrics("train", train_metrics)
    eval_metrics = trainer.evaluate()
    eval_metrics["eval_perplexity"] = math.exp(eval_metrics["eval_loss"])
    trainer.save_metrics("eval", eval_metrics)
