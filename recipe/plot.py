"""Plot training curves: train and eval loss against tokens seen, with the learning rate and throughput below.

    python -m recipe.plot outputs/my-run                                   # writes outputs/my-run/loss.png
    python -m recipe.plot outputs/run-a outputs/run-b --reference "3.2924:GPT-2 124M" --output compare.png

The plotting lives in recipe.curves.
"""

import argparse
import sys
from pathlib import Path

from .checkpoints import PLOT_FILE
from .curves import plot_runs
from .errors import ConfigError, RecipeError, exit_command


def parse_reference(text: str) -> tuple[float, str]:
    """"3.2924:GPT-2 124M" -> (3.2924, "GPT-2 124M"); the label defaults to the number."""
    loss, _, label = text.partition(":")
    try:
        return float(loss), label or loss
    except ValueError:
        raise ConfigError(f"--reference {text!r} is not LOSS[:LABEL], e.g. 3.2924:GPT-2 124M") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training output directories")
    parser.add_argument("--reference", action="append", default=[], metavar="LOSS[:LABEL]",
                        help="a horizontal line on the loss panel, e.g. 3.2924:GPT-2 124M (repeatable)")
    parser.add_argument("--output", help=f"the PNG to write (default: RUN_DIR/{PLOT_FILE} of the first run)")
    args = parser.parse_args(argv)
    output = Path(args.output or Path(args.run_dirs[0]) / PLOT_FILE)
    try:
        references = [parse_reference(text) for text in args.reference]
        plot_runs(args.run_dirs, output, references)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    exit_command(main())
