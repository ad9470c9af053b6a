"""Train a GPT with transformers' Trainer.

    python recipe/train.py configs/shakespeare.json                      # one process (CPU or one GPU)
    accelerate launch recipe/train.py configs/gpt2_124m.json             # any accelerate config: DDP, FSDP, ...
    python recipe/train.py configs/gpt2_124m.json --max_steps 100 --output_dir runs/try   # CLI beats the file

Parse, check, build, train, save. Rerunning the same command resumes from the last complete checkpoint.
The heavy modules (Trainer, datasets, matplotlib) are imported only after the config has passed its checks, so a
mistake in it is reported in seconds.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from recipe.args import (
    RUN_CONFIG_FILE,
    ConfigError,
    Settings,
    check_output_dir,
    model_config_overrides,
    parse_settings,
)
from recipe.checkpoints import STAGING_PREFIX, CheckpointError, verify_checksums
from recipe.configuration_gpt import GPTConfig
from recipe.convert import load_model, load_openai_gpt2
from recipe.modeling_gpt import GPTForCausalLM
from recipe.tokenization import load_tokenizer

logger = logging.get_logger("recipe")


def build_model(settings: Settings, vocab_size: int, eos_token_id: int | None) -> GPTForCausalLM:
    """From scratch (GPTConfig + model_config), from OpenAI's GPT-2 (converted) or from a recipe checkpoint."""
    model_args = settings.model
    source = model_args.model_name_or_path
    if source is None:
        config = GPTConfig(
            vocab_size=vocab_size,
            bos_token_id=eos_token_id,
            eos_token_id=eos_token_id,
            make_vocab_size_divisible_by=model_args.make_vocab_size_divisible_by,
            **model_config_overrides(model_args),
        )
        model = GPTForCausalLM(config)
    elif _is_openai_gpt2(source):
        model = load_openai_gpt2(source, model_args.make_vocab_size_divisible_by)
    else:
        model = load_model(source)
    if vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {vocab_size} tokens but the model's vocab_size is {model.config.vocab_size}"
        )
    model.set_attn_implementation(model_args.attn_implementation)
    model.config.loss_chunk_size = model_args.loss_chunk_size
    model.generation_config.pad_token_id = model.config.eos_token_id
    return model


def _is_openai_gpt2(source: str) -> bool:
    config_file = Path(source) / "config.json"
    if config_file.is_file():
        return json.loads(config_file.read_text()).get("model_type") == "gpt2"
    return source.split("/")[-1] in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def run_plan(settings: Settings, model: GPTForCausalLM) -> dict:
    """The arithmetic of the run: what one step is, how many there are, and what it costs on a named GPU."""
    from recipe.trainer import flops_per_token, peak_flops

    training, block_size = settings.training, settings.data.block_size
    parameters = sum(p.numel() for p in model.parameters())
    plan = {
        "parameters": parameters,
        "tokens_per_step": settings.tokens_per_step,
        "batch": (
            f"{training.per_device_train_batch_size} sequences x {training.gradient_accumulation_steps} accumulation "
            f"x {training.world_size} processes x {block_size} tokens"
        ),
        "steps": training.max_steps if training.max_steps > 0 else None,
        "flops_per_token": flops_per_token(model, block_size),
    }
    if plan["steps"] is not None:
        plan["total_tokens"] = plan["steps"] * plan["tokens_per_step"]
        gpu_flops = peak_flops(training.dry_run_gpu)
        num_gpus = training.dry_run_num_gpus or training.world_size
        if gpu_flops is not None:
            seconds = plan["total_tokens"] * plan["flops_per_token"] / (gpu_flops * training.dry_run_mfu * num_gpus)
            plan["estimate"] = (
                f"{seconds / 3600:.2f} h on {num_gpus} x {training.dry_run_gpu} at {training.dry_run_mfu:.0%} MFU"
            )
    return plan


def resume_checkpoint(settings: Settings) -> str | None:
    """The newest complete checkpoint of this run, checked; or None to start fresh (clearing an old run)."""
    training = settings.training
    output_dir = Path(training.output_dir)
    if not output_dir.is_dir():
        return None
    if training.should_save:
        for leftover in output_dir.glob(f"{STAGING_PREFIX}*"):  # a save that a kill interrupted: never complete
            logger.warning(f"removing the incomplete checkpoint {leftover}")
            shutil.rmtree(leftover, ignore_errors=True)
    if training.overwrite_output_dir:
        if training.should_save:
            for old in output_dir.glob("checkpoint-*"):
                shutil.rmtree(old)
        return None
    last = get_last_checkpoint(str(output_dir))
    if last is None:
        return None
    try:
        verify_checksums(last)
    except CheckpointError as error:
        raise CheckpointError(
            f"{error}. Delete {last} to resume from the checkpoint before it, or set overwrite_output_dir to start over"
        ) from None
    return last


def describe_data(settings: Settings) -> str:
    """Where the run's text comes from, in one line for the plan."""
    data = settings.data
    if data.dataset_name:
        name = "/".join(filter(None, [data.dataset_name, data.dataset_config_name]))
        return f"{name} (Hub{', streamed' if data.streaming else ''})"
    return ", ".join(data.train_files)


def final_evaluation(trainer) -> dict:
    """The metrics of the last step: those of its scheduled evaluation when there was one, else a new one."""
    state = trainer.state
    for entry in reversed(state.log_history):
        if "eval_loss" in entry and entry["step"] == state.global_step:
            return {key: value for key, value in entry.items() if key.startswith("eval_") or key == "epoch"}
    return trainer.evaluate()


def train(settings: Settings):
    """Build everything from the checked settings and train; returns the GPTTrainer (None for a dry run)."""
    from recipe.callbacks import HellaSwagCallback, PreemptionCallback, SampleCallback
    from recipe.data import collate_blocks, load_or_train_tokenizer, prepare_datasets
    from recipe.push import push_run
    from recipe.trainer import GPTTrainer

    training = settings.training
    set_seed(training.seed)
    if training.dry_run:  # no data: the vocabulary size comes from the tokenizer or the one to be trained
        vocab_size = settings.data.train_tokenizer_vocab_size or len(load_tokenizer(settings.data.tokenizer_name))
        with torch.device("meta"):
            model = build_model(settings, vocab_size, eos_token_id=None)
        print(json.dumps({"data": describe_data(settings), **run_plan(settings, model)}, indent=2))
        return None

    with training.main_process_first(desc="tokenizer"):
        tokenizer = load_or_train_tokenizer(settings.data, training.output_dir)
    model = build_model(settings, len(tokenizer), tokenizer.eos_token_id)
    checkpoint = resume_checkpoint(settings)
    if training.should_save:
        Path(training.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(training.output_dir) / RUN_CONFIG_FILE).write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
    if training.process_index == 0:
        print(json.dumps({"data": describe_data(settings), **run_plan(settings, model)}))
        if checkpoint is not None:
            print(f"resuming from {checkpoint}")

    with training.main_process_first(desc="dataset preparation"):
        datasets = prepare_datasets(settings.data, tokenizer)

    # The finished run is pushed by recipe.push (one commit, the recipe's card, no pickles), not by Trainer.
    push_repo = (training.hub_model_id or Path(training.output_dir).resolve().name) if training.push_to_hub else None
    training.push_to_hub = False

    trainer = GPTTrainer(
        model=model,
        args=training,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        data_collator=collate_blocks,
        processing_class=tokenizer,
        callbacks=[
            PreemptionCallback(),
            SampleCallback(tokenizer, training.sample_prompt, training.sample_max_new_tokens),
        ],
        nonfinite_loss=training.nonfinite_loss,
        peak_tflops=training.peak_tflops,
    )
    if training.hellaswag_steps > 0:
        from recipe.evaluate import read_hellaswag

        examples = read_hellaswag(training.hellaswag_file, limit=training.hellaswag_limit)
        trainer.add_callback(HellaSwagCallback(trainer, examples, training.hellaswag_steps))

    result = trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.preemption.stopped_at_step is not None:
        return trainer  # a checkpoint was saved at the step boundary; the rest waits for the rerun

    trainer.save_model()
    trainer.save_state()
    trainer.save_metrics("train", result.metrics)
    trainer.save_metrics("eval", final_evaluation(trainer))
    trainer.create_model_card()  # with the loss plot
    if push_repo is not None and trainer.is_world_process_zero():
        commit = push_run(training.output_dir, push_repo, private=bool(training.hub_private_repo))
        print(f"pushed {training.output_dir} to {commit.commit_url}")
    return trainer


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        settings = parse_settings(argv[0], argv[1:])
        check_output_dir(settings)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from recipe.data import DataError
    from recipe.trainer import NonFiniteLossError

    try:
        trainer = train(settings)
    except (ConfigError, CheckpointError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        output_dir = settings.training.output_dir
        last_good = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        print(f"error: {error}; nothing after it was saved. Last good checkpoint: {last_good or 'none'}",
              file=sys.stderr)
        return 1
    preemption = trainer.preemption if trainer is not None else None
    if preemption is not None and preemption.stopped_at_step is not None and trainer.is_world_process_zero():
        print(
            f"{preemption.requested_by}: stopped after step {preemption.stopped_at_step} and saved "
            f"{settings.training.output_dir}/checkpoint-{preemption.stopped_at_step}. "
            f"Run the same command again to resume."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
