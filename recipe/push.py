"""Publish a training run to the Hugging Face Hub: model, code, tokenizer, model card, plot and results.

    python -m recipe.push outputs/my-run your-name/gpt2-124m-fineweb-edu [--private]

Everything goes up in ONE commit, so the repository is never seen half-uploaded. Only the run's top-level files
are published: checkpoint-N/ and runs/ (TensorBoard) stay local, and so do pickles (training_args.bin and the
optimizer, scheduler and RNG states), which can run code when loaded and are of no use to someone using the model.
"""

import argparse
import sys
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub.errors import HTTPError
from huggingface_hub.utils import validate_repo_id

from .card import write_model_card
from .checkpoints import CheckpointError, check_safetensors_header, weight_files
from .plot import PLOT_FILE, TRAINER_STATE_FILE, plot_runs

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def check_model_dir(run_dir: Path) -> None:
    """Refuse a directory without a complete model and a tokenizer, naming what is missing."""
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"{run_dir} has no config.json: not a model checkpoint")
    for path in weight_files(run_dir):
        check_safetensors_header(path)
    if not any((run_dir / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{run_dir} has no tokenizer (tokenizer.json); save one there with save_pretrained")


def files_to_push(run_dir: str | Path) -> list[Path]:
    """The run's top-level files except pickles and hidden files, sorted."""
    return sorted(
        path for path in Path(run_dir).iterdir()
        if path.is_file() and not path.name.startswith(".") and not path.name.endswith(PICKLE_SUFFIXES)
    )


def push_run(run_dir: str | Path, repo_id: str, private: bool = False) -> CommitInfo:
    """Plot the run if it has no plot yet, (re)write its model card, then upload it in one commit."""
    run_dir = Path(run_dir)
    validate_repo_id(repo_id)
    check_model_dir(run_dir)
    if (run_dir / TRAINER_STATE_FILE).is_file() and not (run_dir / PLOT_FILE).is_file():
        plot_runs([run_dir], run_dir / PLOT_FILE)
    write_model_card(run_dir, repo_id)
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)  # an existing repo keeps its visibility
    operations = [CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=path) for path in files_to_push(run_dir)]
    return api.create_commit(repo_id, operations, commit_message=f"Upload {run_dir.resolve().name} (gpt2-recipe)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.push", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", metavar="CKPT", help="a training output directory (or any recipe checkpoint)")
    parser.add_argument("repo_id", help="the Hub model repository, e.g. your-name/gpt2-124m")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    args = parser.parse_args(argv)
    try:
        commit = push_run(args.run_dir, args.repo_id, args.private)
    except (CheckpointError, ValueError) as error:  # HFValidationError (a bad repo id) is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, HTTPError) as error:  # no network, no token, no permission: the Hub's reason in one line
        print(f"error: could not push to {args.repo_id}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"pushed {args.run_dir} to {commit.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
