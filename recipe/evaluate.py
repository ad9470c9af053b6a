"""Evaluate a GPT on HellaSwag (completion style) or on the validation split of a training config.

    python -m recipe.evaluate outputs/my-run --task hellaswag [--data hellaswag_val.jsonl] [--limit N]
    python -m recipe.evaluate outputs/my-run --task perplexity --config configs/my-run.json
    accelerate launch -m recipe.evaluate outputs/my-run --task hellaswag   # the examples are split over processes

The last line printed is the result as JSON; for a local checkpoint it is also saved as CKPT/eval_<task>.json.
The scoring lives in recipe.scoring.
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
from .checkpoints import evaluation_file
from .errors import ConfigError, RecipeError
from .pipeline import prepare_datasets
from .prepared import open_prepared
from .scoring import download_hellaswag, evaluate_perplexity, read_hellaswag, score_hellaswag
from .sources import load_model_and_tokenizer


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
            data_args = parse_settings(args.config).data
            model, tokenizer = load_model_and_tokenizer(args.checkpoint)
            if data_args.prepared_dir is not None:  # the blocks training evaluated on, uint16 on disk
                validation = open_prepared(data_args, tokenizer)["validation"]
            else:
                validation = prepare_datasets(data_args, tokenizer)["validation"]
            blocks = validation.with_format("torch", dtype=torch.int64)
            result = evaluate_perplexity(model.to(state.device), blocks, args.batch_size)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result = {"task": args.task, **result}
    if state.is_main_process:
        if Path(args.checkpoint).is_dir():
            (Path(args.checkpoint) / evaluation_file(args.task)).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
