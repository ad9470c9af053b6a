"""Evaluate a GPT on HellaSwag (completion style) or on the validation split of a training config.

    python -m recipe.evaluate outputs/my-run --task hellaswag [--data hellaswag_val.jsonl] [--limit N]
    python -m recipe.evaluate outputs/my-run --task perplexity --config configs/my-run.json
    python -m recipe.evaluate gpt2 --task perplexity --config configs/my-run.json   # the baseline on the same data
    accelerate launch -m recipe.evaluate outputs/my-run --task hellaswag   # the examples are split over processes

The last line printed is the result as JSON; for a local checkpoint it is also saved as CKPT/eval_<task>.json. A
perplexity of another model than the config's own run (OpenAI's GPT-2, say) is also saved in the run's output_dir as
its baseline (baseline_perplexity.json), which the run's card and plot show. The scoring lives in recipe.scoring.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from transformers.utils.logging import disable_progress_bar

from .args import parse_settings
from .checkpoints import BASELINE_FILE, evaluation_file
from .errors import ConfigError, RecipeError, exit_command
from .pipeline import validation_blocks
from .prepared import open_prepared, prepared_with
from .scoring import download_hellaswag, evaluate_perplexity, read_hellaswag, score_hellaswag
from .sources import load_model_and_tokenizer
from .tokenization import load_tokenizer, token_byte_counts, tokenizer_fingerprint


def _same_tokenizer(data_args, tokenizer) -> bool:
    """Whether the config's run tokenizes as `tokenizer` does (then their losses per token compare too)."""
    if data_args.train_tokenizer_vocab_size is not None:
        return False
    return tokenizer_fingerprint(load_tokenizer(data_args.tokenizer_name)) == tokenizer_fingerprint(tokenizer)


def _is_inside(path: Path, directory: Path) -> bool:
    return path.resolve() == directory.resolve() or directory.resolve() in path.resolve().parents


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="recipe checkpoint, OpenAI GPT-2 Hub id (gpt2, ...) or to-openai export")
    parser.add_argument("--task", required=True, choices=["hellaswag", "perplexity"])
    parser.add_argument("--data", help="hellaswag: a local jsonl (default: download the official validation file)")
    parser.add_argument("--limit", type=int, help="hellaswag: only the first N examples")
    parser.add_argument("--config", help="perplexity: the training config whose validation split is evaluated")
    parser.add_argument("--batch_size", type=int, default=8, help="examples (hellaswag) or blocks per forward pass")
    args = parser.parse_args(argv)
    disable_progress_bar()  # errors and results stay readable lines
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # set by `accelerate launch --cpu`
    try:
        if args.batch_size < 1:
            raise ConfigError(f"--batch_size={args.batch_size} must be at least 1")
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit={args.limit} must be at least 1")
        if args.task == "perplexity" and args.config is None:
            raise ConfigError("--task perplexity needs --config (the training config whose validation split to use)")
        if args.task == "hellaswag":
            with state.main_process_first():  # one download, then the others read the cached file
                examples = read_hellaswag(args.data or download_hellaswag(), args.limit)
            model, tokenizer = load_model_and_tokenizer(args.checkpoint)
            result = score_hellaswag(model.to(state.device), tokenizer, examples, args.batch_size)
        else:
            settings = parse_settings(args.config)
            data_args = settings.data
            model, tokenizer = load_model_and_tokenizer(args.checkpoint)
            if data_args.prepared_dir is not None and prepared_with(data_args, tokenizer):
                validation = open_prepared(data_args, tokenizer)["validation"]  # the blocks training evaluated on
            else:  # another tokenizer's, or not prepared: the same documents, tokenized by this model's tokenizer
                validation = validation_blocks(data_args, tokenizer)
            blocks = validation.with_format("torch", dtype=torch.int64)
            result = evaluate_perplexity(model.to(state.device), blocks, token_byte_counts(tokenizer), args.batch_size)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = {"task": args.task, **result}
    if state.is_main_process:
        checkpoint = Path(args.checkpoint)
        if checkpoint.is_dir():
            (checkpoint / evaluation_file(args.task)).write_text(json.dumps(result, indent=2) + "\n")
        run_dir = Path(settings.training.output_dir) if args.task == "perplexity" else None
        if run_dir is not None and not _is_inside(checkpoint, run_dir):
            baseline = {"model": args.checkpoint, "same_tokenizer": _same_tokenizer(data_args, tokenizer), **result}
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / BASELINE_FILE).write_text(json.dumps(baseline, indent=2) + "\n")
            print(f"saved as the baseline of {run_dir} ({run_dir / BASELINE_FILE}): its card and plot show it",
                  file=sys.stderr)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    exit_command(main())
