"""Train a GPT with transformers' Trainer.

    python recipe/train.py configs/shakespeare.json                      # one process (CPU or one GPU)
    accelerate launch recipe/train.py configs/gpt2_124m.json             # any accelerate config: DDP, FSDP, ...
    python recipe/train.py configs/gpt2_124m.json --max_steps 100 --output_dir runs/try   # CLI beats the file
    python -m recipe.train configs/shakespeare.json                      # the same, as a module

Parse, check, build, train, save. Rerunning the same command resumes from the last complete checkpoint.
The heavy modules (Trainer, datasets, matplotlib) are imported only after the config has passed its checks, so a
mistake in it is reported in seconds.
"""

import json
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file (`python recipe/train.py`, `accelerate launch recipe/train.py`), Python puts recipe/ first on
    # sys.path, where the recipe's own modules would shadow libraries of the same name (recipe/evaluate.py and the
    # `evaluate` library). Import everything from the package instead, as `python -m recipe.train` does.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch  # noqa: E402
from transformers import set_seed  # noqa: E402

from recipe.args import Settings, check_output_dir, parse_settings  # noqa: E402
from recipe.checkpoints import RUN_CONFIG_FILE, last_complete_checkpoint, resume_checkpoint  # noqa: E402
from recipe.errors import RecipeError, TrainingStopped, exit_command  # noqa: E402
from recipe.flops import choose_loss_chunk_size, describe_validation, run_plan  # noqa: E402
from recipe.optimization import describe_optimization  # noqa: E402
from recipe.sources import build_model, check_resumable_layout  # noqa: E402
from recipe.tokenization import load_tokenizer  # noqa: E402


def dry_run(settings: Settings) -> None:
    """Build the model on the meta device (no data, no weights) and print the run's plan."""
    data = settings.data
    vocab_size = data.train_tokenizer_vocab_size or len(load_tokenizer(data.tokenizer_name, setting="tokenizer_name"))
    with torch.device("meta"):
        model = build_model(settings.model, vocab_size, eos_token_id=None)
    print(json.dumps(plan(settings, model), indent=2))


def plan(settings: Settings, model) -> dict:
    """Choose the model's loss for this run's device and micro-batch, then the run's plan, printed at start."""
    training = settings.training
    model.config.loss_chunk_size, why = choose_loss_chunk_size(
        settings.model.loss_chunk_size, model.config.padded_vocab_size,
        training.per_device_train_batch_size * settings.data.block_size, training.device,
    )
    run = {"data": settings.describe_data(), "validation": describe_validation(settings.to_dict()),
           **run_plan(settings, model)}
    run["loss"] += f" ({why})"
    run["optimization"] = describe_optimization(training)
    return run


def train(settings: Settings):
    """Build everything from the checked settings and train; returns the GPTTrainer."""
    from recipe.callbacks import HellaSwagCallback, PreemptionCallback, SampleCallback
    from recipe.pipeline import collate_blocks, load_or_train_tokenizer, prepare_datasets, stream_datasets
    from recipe.prepared import open_prepared, prepared_fingerprint
    from recipe.scoring import read_hellaswag
    from recipe.trainer import GPTTrainer

    training = settings.training
    set_seed(training.seed)
    with training.main_process_first(desc="tokenizer"):
        tokenizer = load_or_train_tokenizer(settings.data, training.output_dir)
    model = build_model(settings.model, len(tokenizer), tokenizer.eos_token_id)
    run = plan(settings, model)
    checkpoint = resume_checkpoint(training.output_dir, training.overwrite_output_dir, training.should_save)
    if checkpoint is not None:
        check_resumable_layout(checkpoint)
    if training.should_save:
        Path(training.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(training.output_dir) / RUN_CONFIG_FILE).write_text(json.dumps(settings.to_dict(), indent=2) + "\n")
    if training.process_index == 0:
        print(json.dumps(run))
        if checkpoint is not None:
            print(f"resuming from {checkpoint}")
    hellaswag = read_hellaswag(training.hellaswag_file, training.hellaswag_limit) if training.hellaswag_steps else None

    data, data_fingerprint = settings.data, None
    if data.prepared_dir is not None:  # tokenized once by recipe.data; every process reads its own blocks
        datasets = open_prepared(data, tokenizer)
        data_fingerprint = prepared_fingerprint(data.prepared_dir)
    elif data.streaming:  # every process streams and tokenizes its own documents
        datasets = stream_datasets(data, tokenizer, training.process_index, training.world_size)
    else:
        with training.main_process_first(desc="dataset preparation"):
            datasets = prepare_datasets(data, tokenizer)

    # The finished run is pushed by recipe.hub (one commit, the recipe's card, no pickles), not by Trainer.
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
        spike_guard=training.spike_guard,
        spike_zscore=training.spike_zscore,
        spike_window=training.spike_window,
        peak_tflops=training.peak_tflops,
        data_fingerprint=data_fingerprint,
    )
    if hellaswag is not None:
        trainer.add_callback(HellaSwagCallback(trainer, hellaswag, training.hellaswag_steps))

    result = trainer.train(resume_from_checkpoint=checkpoint)
    if trainer.preemption.stopped_at_step is not None:
        return trainer  # a checkpoint was saved at the step boundary; the rest waits for the rerun

    trainer.save_model()
    trainer.save_state()
    trainer.save_metrics("train", result.metrics)
    trainer.save_metrics("eval", trainer.final_metrics())
    trainer.create_model_card()  # with the loss plot
    if push_repo is not None and trainer.is_world_process_zero():
        from recipe.hub import push_run  # only when pushing: its imports cost a quick start 0.4 s

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
        if settings.training.dry_run:
            dry_run(settings)
            return 0
        check_output_dir(settings)
        trainer = train(settings)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as error:
        last_good = last_complete_checkpoint(settings.training.output_dir)
        print(f"error: {error}; nothing of that step was applied or saved. Last good checkpoint: {last_good or 'none'}",
              file=sys.stderr)
        return 1
    preemption = trainer.preemption
    if preemption.stopped_at_step is not None and trainer.is_world_process_zero():
        print(
            f"{preemption.requested_by}: stopped after step {preemption.stopped_at_step} and saved "
            f"{settings.training.output_dir}/checkpoint-{preemption.stopped_at_step}. "
            f"Run the same command again to resume."
        )
    return 0


if __name__ == "__main__":
    exit_command(main())
