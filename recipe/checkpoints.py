"""Checkpoint files on disk: written atomically, read as safetensors only, with errors that name the file."""

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be used; the message names it."""


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
        raise FileExistsError(f"{path} already exists; choose another path or allow overwriting it")
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: str | Path) -> None:
    """Record the SHA-256 of every file under `directory`, so a later read can tell a damaged file by name."""
    directory = Path(directory)
    files = sorted(path for path in directory.rglob("*") if path.is_file() and path.name != CHECKSUMS_FILE)
    lines = [f"{_sha256(path)}  {path.relative_to(directory).as_posix()}\n" for path in files]
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
        if _sha256(path) != expected:
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
