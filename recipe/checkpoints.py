"""Checkpoints on disk, through their whole life: written atomically and checksummed, found again for a resume,
read as safetensors only, with errors that name the file.

    training step N ─► _partial-checkpoint-N/ (Trainer writes) ─► checksums + fsync ─► rename to checkpoint-N/
    rerun ─► resume_checkpoint: drop partial saves, verify the newest checkpoint-N, resume from it
"""

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints
from transformers.utils import logging

from .errors import CheckpointError

logger = logging.get_logger("recipe")

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
# The files of a run directory that more than one module reads.
RUN_CONFIG_FILE = "run_config.json"  # the resolved settings, written at the start of a run
TRAINER_STATE_FILE = "trainer_state.json"  # Trainer's state: global step, log history
PLOT_FILE = "loss.png"  # the training curves (recipe.curves)
CARD_FILE = "README.md"  # the model card (recipe.card)
BASELINE_FILE = "baseline_perplexity.json"  # another model on the run's validation data (recipe.evaluate)
# What a checkpoint records of its data, so that a resume reads on from there (recipe.trainer).
TRAIN_DATA_FILE = "train_data.json"  # the fingerprint of the prepared data the run trains on
# What a checkpoint records of the step guard (recipe.trainer): the steps skipped, the spike detector's windows.
STEP_GUARD_FILE = "step_guard.json"
LAUNCH_FILE = "launch.json"  # the launch that saved a checkpoint: its number of processes and how they shard
SHARDING_NAMES = {"fsdp": "FSDP", "deepspeed": "DeepSpeed", "none": "unsharded: DDP or one process"}


def stream_position_file(process_index: int) -> str:
    """Where a checkpoint keeps one process's stream position (streaming runs), beside Trainer's rng_state_N.pth."""
    return f"stream_position_{process_index}.json"


def metrics_file(split: str) -> str:
    """Trainer's `save_metrics(split)` file: train_results.json, eval_results.json."""
    return f"{split}_results.json"


def evaluation_file(task: str) -> str:
    """Where recipe.evaluate saves a task's result in a checkpoint directory: eval_hellaswag.json, ..."""
    return f"eval_{task}.json"


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root` to disk, so a rename after it publishes complete data."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())
        directory = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False):
    """Yield a fresh temporary directory beside `path`; when the block succeeds it becomes `path` in one rename.

    A crash or an exception inside the block leaves `path` as it was (absent, or the previous version), never
    half-written. An existing non-empty `path` is replaced only with `overwrite=True`.
    """
    path = Path(path)
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise CheckpointError(f"{path} already exists; choose another path or allow overwriting it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        fsync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if path.exists():
        retired = path.parent / f".{path.name}.old-{os.getpid()}"
        os.rename(path, retired)
        os.rename(staging, path)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, path)


# Trainer checkpoints are written under this prefix, then renamed: never resumed (get_last_checkpoint matches
# `checkpoint-<N>` only) and never pushed (Trainer's uploads skip `_*`).
STAGING_PREFIX = "_partial-"
CHECKSUMS_FILE = "checksums.sha256"  # sha256sum's format, so `sha256sum -c checksums.sha256` works too


def checkpoint_name(step: int) -> str:
    return f"{PREFIX_CHECKPOINT_DIR}-{step}"


def staging_dir(run_dir: str | Path, step: int) -> Path:
    """The directory Trainer saves into at step N, as if it were the run directory: checkpoint-N is written
    inside it (`_partial-checkpoint-N/checkpoint-N`) and moved out when complete."""
    return Path(run_dir) / f"{STAGING_PREFIX}{checkpoint_name(step)}"


def publish_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Make the complete checkpoint written under `staging_dir(run_dir, step)` the run's `checkpoint-N`: checksum
    every file (so a resume can name a file damaged later), flush it all to disk, then rename it into place."""
    staging_root, name = staging_dir(run_dir, step), checkpoint_name(step)
    write_checksums(staging_root / name)
    fsync_tree(staging_root)  # complete on disk before it gets its final name
    final = Path(run_dir) / name
    if final.exists():  # a re-save of the same step (e.g. the end of a resumed, finished run)
        shutil.rmtree(final)
    os.rename(staging_root / name, final)
    shutil.rmtree(staging_root, ignore_errors=True)
    return final


def rotate(run_dir: str | Path, save_total_limit: int | None, best_model_checkpoint: str | None) -> None:
    """Delete the oldest complete checkpoints beyond `save_total_limit` (Trainer's rule, by step number)."""
    rotate_checkpoints(output_dir=str(run_dir), save_total_limit=save_total_limit,
                       best_model_checkpoint=best_model_checkpoint, use_mtime=False)


def last_complete_checkpoint(run_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` of a run directory (never a partial save), or None."""
    return get_last_checkpoint(str(run_dir)) if Path(run_dir).is_dir() else None


def resume_checkpoint(run_dir: str | Path, overwrite: bool, is_writer: bool) -> str | None:
    """The newest complete checkpoint of a run, verified against its checksums; or None to start fresh.

    Partial saves that a kill interrupted are removed, and with `overwrite` every old checkpoint too (by the
    process that writes, `is_writer`). A checkpoint file damaged since it was written is named, with what to do.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    if is_writer:
        for leftover in run_dir.glob(f"{STAGING_PREFIX}*"):  # a save that a kill interrupted: never complete
            logger.warning(f"removing the incomplete checkpoint {leftover}")
            shutil.rmtree(leftover, ignore_errors=True)
    if overwrite:
        if is_writer:
            for old in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
                shutil.rmtree(old)
        return None
    last = last_complete_checkpoint(run_dir)
    if last is None:
        return None
    try:
        verify_checksums(last)
    except CheckpointError as error:
        raise CheckpointError(
            f"{error}. Delete {last} to resume from the checkpoint before it, or set overwrite_output_dir to start over"
        ) from None
    return last


def launch_record(processes: int, sharding: str) -> str:
    """What LAUNCH_FILE holds: the number of processes and their sharding ("fsdp", "deepspeed" or "none")."""
    return json.dumps({"processes": processes, "sharding": sharding}) + "\n"


def check_same_launch(checkpoint: str | Path, processes: int, sharding: str) -> None:
    """Refuse to resume a checkpoint with another number of processes or another sharding than saved it.

    A resume must be the run it continues: with other processes the batch per step changes (unless derived from
    tokens_per_step, which changes the accumulation instead) and each process's RNG state and stream position
    belong to its rank; FSDP and DeepSpeed keep the optimizer state in their own files. A checkpoint written before
    the launch was recorded is not checked.
    """
    recorded_file = Path(checkpoint) / LAUNCH_FILE
    if not recorded_file.is_file():
        return
    saved = json.loads(recorded_file.read_text())
    if (saved["processes"], saved["sharding"]) != (processes, sharding):
        def describe(count, kind):
            named = f" ({SHARDING_NAMES.get(kind, kind)})" if saved["sharding"] != sharding else ""
            return f"{count} process{'es' if count != 1 else ''}{named}"
        raise CheckpointError(
            f"{checkpoint} was saved by {describe(saved['processes'], saved['sharding'])} and this launch has "
            f"{describe(processes, sharding)}: resume it with the launch that saved it, or set overwrite_output_dir "
            f"to start over"
        )


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (memory stays flat for files of any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: str | Path) -> None:
    """Record the SHA-256 of every file under `directory`, so a later read can tell a damaged file by name."""
    directory = Path(directory)
    files = sorted(path for path in directory.rglob("*") if path.is_file() and path.name != CHECKSUMS_FILE)
    lines = [f"{file_sha256(path)}  {path.relative_to(directory).as_posix()}\n" for path in files]
    (directory / CHECKSUMS_FILE).write_text("".join(lines))


def verify_checksums(directory: str | Path) -> None:
    """Raise a CheckpointError naming the first file that is missing or differs from its recorded SHA-256."""
    directory = Path(directory)
    listing = directory / CHECKSUMS_FILE
    if not listing.is_file():
        raise CheckpointError(f"{directory} has no {CHECKSUMS_FILE}: it was not completely written by this recipe")
    for line in listing.read_text().splitlines():
        expected, name = line.split("  ", 1)
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing from the checkpoint")
        if file_sha256(path) != expected:
            raise CheckpointError(f"{path} is corrupt or truncated: its SHA-256 differs from {listing}")


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files holding a checkpoint's weights (one file, or the shards its index lists)."""
    directory = Path(directory)
    single = directory / SAFETENSORS_FILE
    if single.is_file():
        return [single]
    index = directory / SAFETENSORS_INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index} is not a safetensors index (no valid 'weight_map'): {error}") from None
        shards = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [str(shard) for shard in shards if not shard.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return shards
    pickled = [name for name in PICKLE_WEIGHT_FILES if (directory / name).exists()]
    if pickled:
        raise CheckpointError(
            f"{directory} holds only {', '.join(pickled)}; this recipe loads safetensors only (pickle files can run "
            f"code). Re-save the model with save_pretrained() from a trusted environment."
        )
    raise CheckpointError(f"{directory} has no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE}: not a model checkpoint")


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read one safetensors file; a truncated or corrupt file is a CheckpointError naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {error}") from None


def check_safetensors_header(path: str | Path) -> None:
    """Cheaply verify that a safetensors file is complete: its header parses and its tensors fit in the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            if not 0 < header_length <= size - 8:
                raise ValueError(f"header length {header_length} does not fit in {size} bytes")
            header = json.loads(handle.read(header_length))
        data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        if 8 + header_length + data_end != size:
            raise ValueError(f"tensors end at byte {8 + header_length + data_end} but the file has {size}")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {error}") from None


def load_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, merged across shards."""
    state = {}
    for path in weight_files(directory):
        state.update(load_safetensors(path))
    return state
