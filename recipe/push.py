"""Publish a training run to the Hugging Face Hub: model, code, tokenizer, model card, plot and results.

    python -m recipe.push outputs/my-run your-name/gpt2-124m-fineweb-edu [--private]

Everything goes up in one commit; checkpoints and pickles stay local (recipe.hub).
"""

import argparse
import sys

from .errors import RecipeError, exit_command
from .hub import push_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.push", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="CKPT", help="a training output directory (or any recipe checkpoint)")
    parser.add_argument("repo_id", help="the Hub model repository, e.g. your-name/gpt2-124m")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    args = parser.parse_args(argv)
    try:
        commit = push_run(args.run_dir, args.repo_id, args.private)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"pushed {args.run_dir} to {commit.commit_url}")
    return 0


if __name__ == "__main__":
    exit_command(main())
