"""Publishing a training run to the Hugging Face Hub: model, code, tokenizer, model card, plot and results.

Everything goes up in ONE commit, so the repository is never seen half-uploaded. Only the run's top-level files
are published: checkpoint-N/ and runs/ (TensorBoard) stay local, and so do pickles (training_args.bin and the
optimizer, scheduler and RNG states), which can run code when loaded and are of no use to someone using the model.
"""

from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub.errors import HTTPError
from huggingface_hub.utils import validate_repo_id
from transformers.utils import CONFIG_NAME

from .card import write_model_card
from .checkpoints import PLOT_FILE, TRAINER_STATE_FILE, check_safetensors_header, weight_files
from .curves import plot_runs
from .errors import CheckpointError, ConfigError, RecipeError
from .tokenization import has_tokenizer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")


def check_model_dir(run_dir: Path) -> None:
    """Refuse a directory without a complete model and a tokenizer, naming what is missing."""
    if not (run_dir / CONFIG_NAME).is_file():
        raise CheckpointError(f"{run_dir} has no {CONFIG_NAME}: not a model checkpoint")
    for path in weight_files(run_dir):
        check_safetensors_header(path)
    if not has_tokenizer(run_dir):
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
    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise ConfigError(f"repo id {repo_id!r} is invalid: {str(error).splitlines()[0]}") from None
    check_model_dir(run_dir)
    if (run_dir / TRAINER_STATE_FILE).is_file() and not (run_dir / PLOT_FILE).is_file():
        plot_runs([run_dir], run_dir / PLOT_FILE)
    write_model_card(run_dir, repo_id)
    api = HfApi()
    operations = [CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=path) for path in files_to_push(run_dir)]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)  # an existing repo keeps its visibility
        return api.create_commit(repo_id, operations, commit_message=f"Upload {run_dir.resolve().name} (gpt2-recipe)")
    except (OSError, HTTPError) as error:  # no network, no token, no permission: the Hub's reason in one line
        raise RecipeError(f"could not push to {repo_id}: {str(error).splitlines()[0]}") from None
