"""Convert between OpenAI's GPT-2 layout (transformers' GPT2LMHeadModel) and recipe checkpoints.

    python -m recipe.convert from-openai gpt2 out/gpt2            # Hub id or local GPT-2 directory
    python -m recipe.convert to-openai out/my-run out/my-run-gpt2  # stock GPT2LMHeadModel, no remote code

The conversion itself lives in recipe.sources.
"""

import argparse
import sys

from .errors import RecipeError, exit_command
from .sources import from_openai, load_model, load_openai_gpt2, to_openai

__all__ = ["main", "from_openai", "to_openai", "load_openai_gpt2", "load_model"]  # documented here too


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    into = commands.add_parser("from-openai", help="GPT-2 (Hub id or transformers directory) -> recipe checkpoint")
    into.add_argument("source")
    into.add_argument("output")
    into.add_argument("--make_vocab_size_divisible_by", type=int, default=1,
                      help="pad the embedding rows to a multiple of this (64 gives 50,304 for GPT-2)")
    into.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    out = commands.add_parser("to-openai", help="recipe checkpoint -> stock GPT2LMHeadModel directory")
    out.add_argument("source")
    out.add_argument("output")
    out.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    try:
        if args.command == "from-openai":
            path = from_openai(args.source, args.output, args.make_vocab_size_divisible_by, args.overwrite)
        else:
            path = to_openai(args.source, args.output, args.overwrite)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    exit_command(main())
