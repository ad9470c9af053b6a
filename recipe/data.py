"""Prepare the datasets of a training config and print what they hold.

    python -m recipe.data CONFIG.json [--json] [--dry_run] [--key value ...]

Tokenizes, groups and caches exactly what training will read, so the run itself starts at once: with prepared_dir,
into that directory, in parallel, resumable and one prepare at a time (recipe.prepared; --dry_run prints the
documents, tokens, shards and disk it will take); without, into datasets' cache (recipe.pipeline).
"""

import argparse
import json
import sys

from .args import parse_settings
from .errors import ConfigError, DataError, RecipeError, exit_command
from .pipeline import (
    collate_blocks,
    group_into_blocks,
    load_or_train_tokenizer,
    prepare_datasets,
    summarize,
    tokenized_splits,
)
from .prepared import dry_run, prepare_blocks

__all__ = ["main", "prepare_datasets", "collate_blocks"]  # the library functions the README documents here too


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipe.data",
        description="Tokenize, group and cache the datasets of a training config, then print what they hold.",
        epilog="Any other --key value overrides that setting of the config.",
        allow_abbrev=False,
    )
    parser.add_argument("config", help="the run's JSON config (the file recipe.train reads)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    parser.add_argument("--dry_run", action="store_true",
                        help="with prepared_dir: print the documents, estimated tokens, shards and disk space a "
                             "prepare takes; tokenize only a sample, write nothing")
    arguments, overrides = parser.parse_known_args(argv)
    try:
        settings = parse_settings(arguments.config, overrides)
        data_args = settings.data
        if data_args.streaming:
            raise DataError(
                "streaming=true tokenizes while training: there is nothing to prepare or cache "
                "(add --streaming false to prepare and count the corpus)"
            )
        if arguments.dry_run and data_args.prepared_dir is None:
            raise ConfigError("--dry_run estimates a prepare into prepared_dir, which this config does not set")
        tokenizer = load_or_train_tokenizer(data_args, settings.training.output_dir)
        if arguments.dry_run:
            summary = dry_run(data_args, tokenizer)
        elif data_args.prepared_dir is not None:
            summary = prepare_blocks(data_args, tokenizer)
        else:
            tokenized = tokenized_splits(data_args, tokenizer)
            summary = summarize(tokenized, group_into_blocks(tokenized, data_args, tokenizer.eos_token_id))
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if arguments.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:<18} {value:>13,}")
    return 0


if __name__ == "__main__":
    exit_command(main())
