"""Prepared blocks on disk: a corpus tokenized once into `block_size` blocks, then read map-style by every process.

    python -m recipe.data CONFIG ─► prepare_blocks: documents (recipe.pipeline) ─► contiguous shards ─► a pool of
        preprocessing_num_workers processes, each tokenizing and packing whole shards ─► prepared_dir/{train,validation}
    recipe.train ─► open_prepared: the manifest checked against the config ─► datasets.load_from_disk, memory-mapped

The format is datasets' own: each split is a directory that `datasets.load_from_disk` reads (Arrow IPC files plus
state.json and dataset_info.json; `load_from_disk(prepared_dir)` gives the DatasetDict), so training gets a map-style
Dataset: Trainer's sampler gives each process its own blocks in a seeded order, and a resume skips indices, not data.
A block is a FixedSizeList of uint16 ids (uint32 for vocabularies of 65,536 or more): 2 bytes a token on disk, as
llm.c's and build-nanogpt's .bin shards, memory-mapped and gathered at tens of millions of tokens/s (RESULTS.md).

Written here rather than with Dataset.map + save_to_disk, which would write datasets' cache and then copy it (twice
the disk) and start over after an interruption: each shard is written under a temporary name, renamed when complete
and recorded in manifest.json (documents, tokens, blocks, bytes, SHA-256), so a rerun keeps the finished shards;
the datasets metadata is written last. Every shard packs its own documents, as the map pipeline packs a whole split,
and drops its final partial block (less than one block per ~100M-token shard), so the blocks do not depend on the
number of workers: 1 or 16 workers, or two nodes preparing the same config, write identical files.

One prepare writes a directory at a time: it holds a lock on prepared_dir/prepare.lock that the kernel drops when
its holder dies (_one_prepare_at_a_time says how, and what it relies on over NFS).
"""

import concurrent.futures
import contextlib
import ctypes
import datetime
import errno
import fcntl
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, DatasetInfo, Features, load_from_disk
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .checkpoints import file_sha256
from .errors import DataError
from .pipeline import (
    DOCUMENTS_PER_BATCH,
    TokenizeDocuments,
    block_columns,
    block_grouping,
    count_validation_documents,
    load_documents,
    validation_token_documents,
)
from .tokenization import tokenizer_fingerprint

if TYPE_CHECKING:
    from .args import DataArguments

MANIFEST_FILE = "manifest.json"
FORMAT = "gpt2-recipe prepared blocks 2"  # 2: validation blocks carry their next token
SPLITS = ("train", "validation")
PARTIAL_SUFFIX = ".partial"  # a shard or manifest being written; never read
LOCK_FILE = "prepare.lock"  # locked by the prepare writing the directory; holds its pid, host and start time
# The sample tokenized to estimate tokens per byte of text: documents spread evenly over the training split, up to
# 1,000 of them and about 4 MB of text (~1M tokens, a second's work): all of a small corpus, so its estimate is exact.
SAMPLE_DOCUMENTS, SAMPLE_BYTES = 1000, 4 << 20
BLOCKS_PER_RECORD_BATCH = 1024  # rows per Arrow record batch (~2 MB at block_size 1024): few chunks to index
COMMAND = "python -m recipe.data CONFIG"
TOKENIZER_KEYS = ("tokenizer", "eos_token_id", "vocab_size")  # what the tokenizer settings decide


def token_type(vocab_size: int) -> pa.DataType:
    """uint16 holds the ids of vocabularies under 65,536 (GPT-2's 50,257): 2 bytes a token."""
    return pa.uint16() if vocab_size <= 1 << 16 else pa.uint32()


def block_features(split: str, block_size: int, vocab_size: int) -> Features:
    return block_columns(split, block_size, str(token_type(vocab_size)))


def data_identity(data_args: "DataArguments", tokenizer: PreTrainedTokenizerBase) -> dict:
    """What the blocks depend on, by setting name: a prepared directory and the config reading it agree on all of it."""
    keys = ["block_size", "dataset_name", "dataset_config_name", "train_files", "text_column", "validation_files",
            "validation_documents", "validation_split_percentage", "prepared_shard_tokens"]
    if data_args.validation_files:  # the hold-out settings that apply (recipe.pipeline's _hold_out_validation)
        keys.remove("validation_documents")
    if data_args.validation_files or data_args.validation_documents is not None:
        keys.remove("validation_split_percentage")
    if data_args.validation_tokens is not None:  # (DataArguments refuses it with the other two)
        keys[keys.index("validation_split_percentage")] = "validation_tokens"
    return {
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "vocab_size": len(tokenizer),
        **{key: getattr(data_args, key) for key in keys},
    }


# ---------------------------------------------------------------------------------------------------------------------
# The manifest


def read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is damaged (not JSON: {error.msg}); delete {directory} and prepare again") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a manifest of this recipe's prepared blocks ({FORMAT!r})")
    return manifest


def _write_json(path: Path, value: dict) -> None:
    """Write JSON under a temporary name, flush it to disk, then rename it: the file is old or new, never half."""
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    with open(partial, "w") as handle:
        handle.write(json.dumps(value, indent=1) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def check_agreement(manifest: dict, data_args: "DataArguments", tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse, naming the setting, a config whose blocks would differ from those `manifest` describes."""
    directory = data_args.prepared_dir
    for key, value in data_identity(data_args, tokenizer).items():
        recorded = manifest["identity"].get(key)
        if recorded != value:
            setting = f"{key} (set by tokenizer_name / train_tokenizer_vocab_size)" if key in TOKENIZER_KEYS else key
            raise DataError(
                f"prepared_dir={directory} holds blocks made with {key}={recorded!r}, but this config gives "
                f"{key}={value!r}: its {setting} differs. Set prepared_dir to another directory to prepare these "
                f"settings there (nothing was changed)"
            )


def prepared_with(data_args: "DataArguments", tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether prepared_dir holds (or is preparing) blocks of this tokenizer's ids."""
    manifest = read_manifest(Path(data_args.prepared_dir))
    return manifest is not None and manifest["identity"]["tokenizer"] == tokenizer_fingerprint(tokenizer)


def prepared_fingerprint(directory: str | Path) -> str:
    """The identity of a complete prepared directory's content (settings and every shard's SHA-256)."""
    return read_manifest(Path(directory))["fingerprint"]


def _fingerprint(manifest: dict) -> str:
    shards = {split: [shard["sha256"] for shard in manifest["splits"][split]["shards"]] for split in SPLITS}
    content = {"identity": manifest["identity"], "shards": shards}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------------
# Estimating and planning


def _text_bytes(documents: Dataset, text_column: str) -> np.ndarray:
    """UTF-8 bytes of every document, read from the Arrow offsets alone (no text is decoded)."""
    lengths = pc.binary_length(documents.data.column(text_column))
    return np.concatenate([np.zeros(0, np.int64), *(chunk.to_numpy().astype(np.int64) for chunk in lengths.chunks)])


def _tokens_per_byte(documents: Dataset, byte_counts: np.ndarray, tokenize: TokenizeDocuments,
                     text_column: str) -> float:
    """Tokens (without separators) per byte of text, over a sample of the documents (SAMPLE_DOCUMENTS)."""
    count = min(len(documents), SAMPLE_DOCUMENTS, max(1, round(SAMPLE_BYTES * len(documents) / byte_counts.sum())))
    indices = np.unique(np.linspace(0, len(documents) - 1, count).astype(np.int64))
    sample = documents.select(indices).with_format("arrow")
    tokens = text_bytes = 0
    for batch in sample.iter(batch_size=DOCUMENTS_PER_BATCH):
        texts = batch[text_column]
        tokens += pc.sum(pc.list_value_length(tokenize(texts).column("input_ids"))).as_py() - len(texts)
        text_bytes += pc.sum(pc.binary_length(texts)).as_py() or 0
    return tokens / max(text_bytes, 1)


def plan_shards(byte_counts: np.ndarray, tokens_per_byte: float, shard_tokens: int) -> list[tuple[int, int]]:
    """Contiguous document ranges [first, end) of about `shard_tokens` tokens each (estimated from bytes of text)."""
    total = int(byte_counts.sum())
    count = min(len(byte_counts), max(1, math.ceil(total * tokens_per_byte / shard_tokens)))
    ends = np.cumsum(byte_counts)  # (documents,) bytes up to and including each document
    cuts = np.searchsorted(ends, total * np.arange(1, count) / count) + 1  # the document after each cut
    bounds = np.unique(np.concatenate([[0], cuts, [len(byte_counts)]]))
    return [(int(first), int(end)) for first, end in zip(bounds[:-1], bounds[1:])]


@dataclass
class Corpus:
    """The documents of each split and what they will make: the plan of a prepared directory."""

    documents: dict[str, Dataset]
    text_bytes: dict[str, int]
    estimated_tokens: dict[str, int]  # separators included
    shards: dict[str, list[dict]]


def survey(data_args: "DataArguments", tokenizer: PreTrainedTokenizerBase, estimate: bool = False) -> Corpus:
    """Load the documents, estimate their tokens from a sample and cut every split into shards. With
    validation_tokens, the validation documents are counted exactly by tokenizing them, or with `estimate` (a dry
    run) from their bytes; they are one shard (the stream must start with its first document)."""
    documents = dict(load_documents(data_args))
    tokenize = TokenizeDocuments(tokenizer)
    text_column = data_args.text_column
    byte_counts = {"train": _text_bytes(documents["train"], text_column)}
    tokens_per_byte = _tokens_per_byte(documents["train"], byte_counts["train"], tokenize, text_column)
    shard_tokens = {split: data_args.prepared_shard_tokens for split in SPLITS}
    if data_args.validation_tokens is not None:
        train, wanted = documents["train"], data_args.validation_tokens
        if estimate:
            held_out = validation_token_documents(byte_counts["train"] * tokens_per_byte + 1, wanted)
        else:
            held_out = count_validation_documents(train, tokenize, text_column, wanted)
        if held_out >= len(train):
            raise DataError(f"validation_tokens={wanted:,} takes all {len(train):,} training documents, leaving "
                            f"none to train on: lower it")
        documents["train"], documents["validation"] = train.select(range(held_out, len(train))), train.select(range(held_out))
        byte_counts["train"] = byte_counts["train"][held_out:]
        shard_tokens["validation"] = math.inf
    byte_counts["validation"] = _text_bytes(documents["validation"], text_column)
    corpus = Corpus({}, {}, {}, {})
    for split in SPLITS:
        ranges = plan_shards(byte_counts[split], tokens_per_byte, shard_tokens[split])
        corpus.documents[split] = documents[split]
        corpus.text_bytes[split] = int(byte_counts[split].sum())
        corpus.shards[split] = [
            {"file": f"data-{index:05d}-of-{len(ranges):05d}.arrow", "documents": [first, end],
             "estimated_tokens": int(round(byte_counts[split][first:end].sum() * tokens_per_byte)) + end - first}
            for index, (first, end) in enumerate(ranges)
        ]
        corpus.estimated_tokens[split] = sum(shard["estimated_tokens"] for shard in corpus.shards[split])
        if split == "validation" and data_args.validation_tokens is not None:
            corpus.estimated_tokens[split] = min(corpus.estimated_tokens[split], data_args.validation_tokens)
        if corpus.estimated_tokens[split] < data_args.block_size:
            raise DataError(f"the {split} split has about {corpus.estimated_tokens[split]} tokens, fewer than "
                            f"block_size={data_args.block_size}: add text or lower block_size")
    return corpus


def _free_bytes(directory: Path) -> int:
    existing = next(path for path in [directory, *directory.absolute().parents] if path.exists())
    return shutil.disk_usage(existing).free


def dry_run(data_args: "DataArguments", tokenizer: PreTrainedTokenizerBase) -> dict:
    """What preparing would take, without tokenizing the corpus or writing anything."""
    corpus = survey(data_args, tokenizer, estimate=True)
    tokens = sum(corpus.estimated_tokens.values())
    bytes_per_token = token_type(len(tokenizer)).byte_width
    return {
        "documents": sum(len(documents) for documents in corpus.documents.values()),
        "text_bytes": sum(corpus.text_bytes.values()),
        "estimated_tokens": tokens,
        "shards": sum(len(shards) for shards in corpus.shards.values()),
        "disk_bytes_needed": tokens * bytes_per_token,
        "disk_bytes_free": _free_bytes(Path(data_args.prepared_dir)),
        "block_size": data_args.block_size,
    }


# ---------------------------------------------------------------------------------------------------------------------
# One prepare at a time


@contextlib.contextmanager
def _one_prepare_at_a_time(directory: Path):
    """Hold an exclusive flock(2) on prepared_dir/prepare.lock while preparing; a second prepare of the directory
    stops at once with one line naming it and the holder (the pid, host and start time the holder wrote there).

    A crash cannot leave it stuck: the kernel drops a flock when the last descriptor of the locked file closes,
    however its holder ends (kill -9 and the OOM killer included). The shard workers inherit the descriptor, so the
    lock lasts while any of them writes, and they die with the main process (_die_with). A crashed prepare leaves the
    file, which is harmless: the next prepare locks it, writes its own details over the dead one's and goes on. A
    prepare that ends, well or with an error, deletes the file (and a prepared_dir it created and left empty), so a
    refused run leaves nothing behind; unlinking while still holding the lock, and checking after locking that the
    path still names the locked file, keeps that safe against a prepare starting at that moment.

    On NFS this relies on Linux clients (2.6.12 and later, see flock(2)) emulating flock as a whole-file byte-range
    lock that the server grants, so prepares on two nodes exclude each other as well, unless the filesystem is mounted
    with local_lock=flock or all (then only prepares on the same node do). When a whole client machine dies, an NFSv4
    server frees its locks once its lease expires (RFC 7530, 9.5: 90 s by default on Linux servers); NFSv3's lock
    manager frees them when that client reboots. Hand-written rather than filelock's FileLock (a dependency of
    datasets), which does not say who holds a lock and leaves its file behind after every run.
    """
    missing = [path for path in [directory, *directory.parents] if not path.exists()]  # created here, to remove
    path = directory / LOCK_FILE
    while True:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            try:
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the directory was removed by a prepare that created it and just gave up
                continue
        except OSError as error:
            raise DataError(f"prepared_dir={directory} cannot hold the lock file {LOCK_FILE} ({error.strerror}): "
                            f"set prepared_dir to a directory you can write") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.read(descriptor, 1024).decode(errors="replace")
            os.close(descriptor)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            try:
                holder = "pid {pid} on {host}, started {started}".format(**json.loads(holder))
            except (ValueError, KeyError):
                holder = "it has not written its details yet"
            raise DataError(f"prepared_dir={directory} is being prepared by another process ({holder}): wait for "
                            f"it to end, or stop it, then run {COMMAND} again (nothing was changed)") from None
        try:
            same_file = os.path.samestat(os.fstat(descriptor), os.stat(path))
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(descriptor)  # locked a file that its last holder unlinked as it finished: lock the one there now
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    record = json.dumps(holder).encode() + b"\n"
    os.pwrite(descriptor, record, 0)
    os.ftruncate(descriptor, len(record))  # after the write: the file is never seen empty
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while the lock is held: see above
        os.close(descriptor)
        for created in missing:  # innermost first; only directories left empty
            try:
                created.rmdir()
            except OSError:
                break


# ---------------------------------------------------------------------------------------------------------------------
# Writing shards (in worker processes)


@dataclass
class ShardWriter:
    """Tokenize documents [first, end) of a split and write their blocks to one Arrow file, as the map pipeline
    would group them (recipe.pipeline's TokenizeDocuments and block_grouping), in flat memory."""

    tokenize: TokenizeDocuments
    data_args: "DataArguments"
    vocab_size: int

    def write(self, split: str, documents: Dataset, first: int, end: int, path: Path,
              report=lambda tokens: None) -> dict:
        group = block_grouping(split, self.data_args, self.tokenize.eos_token_id)
        schema = block_features(split, self.data_args.block_size, self.vocab_size).arrow_schema
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        blocks = 0
        waiting: list[pa.Table] = []  # blocks not yet written

        def flush(stream):
            if waiting:
                stream.write_table(pa.concat_tables(waiting).combine_chunks())
                waiting.clear()

        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_stream(sink, schema) as stream:
            shard = documents.select(range(first, end)).with_format("arrow")
            for offset, batch in enumerate(shard.iter(batch_size=DOCUMENTS_PER_BATCH)):
                token_lists = self.tokenize(batch[self.data_args.text_column]).column("input_ids")
                new_blocks = group(token_lists, [first + offset * DOCUMENTS_PER_BATCH]).cast(schema)
                waiting.append(new_blocks)
                blocks += len(new_blocks)
                if sum(len(table) for table in waiting) >= BLOCKS_PER_RECORD_BATCH:
                    flush(stream)
                report(pc.sum(pc.list_value_length(token_lists)).as_py())
            flush(stream)
        tokens = group.streamed  # the tokens of the split's stream these documents gave (validation_tokens cuts it)
        digest = file_sha256(partial)
        os.replace(partial, path)
        return {"tokens": tokens, "blocks": blocks, "bytes": path.stat().st_size, "sha256": digest}


_progress = None  # in a worker: the tokens counter the main process shows
PR_SET_PDEATHSIG = 1  # Linux prctl(2): the signal this process gets when its parent dies


def _start_worker(progress, parent: int) -> None:
    global _progress
    _progress = progress
    _die_with(parent)


def _die_with(parent: int) -> None:
    """Have Linux kill this worker when the main process dies. Without it a killed prepare leaves its workers
    running: idle ones wait forever on the task queue (every sibling holds its other end) and keep the inherited
    prepare lock; busy ones finish and rename a shard while the next prepare may be writing it. The kernel watches
    the thread that forked the worker: the main thread, where the fork pool starts all its workers at the first
    submit. (Linux only: elsewhere, stop the workers of a killed prepare by hand.)"""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the main process died before prctl took effect
        os._exit(1)


def _report_progress(tokens: int) -> None:
    with _progress.get_lock():
        _progress.value += tokens


def _write_in_worker(writer: ShardWriter, split: str, documents: Dataset, first: int, end: int, path: Path) -> dict:
    return writer.write(split, documents, first, end, path, _report_progress)


def _write_shards(jobs: list[tuple], writer: ShardWriter, workers: int, on_done) -> None:
    """Write every (split, shard entry, documents, path) job, one process per worker, with one progress bar in tokens
    (rate and ETA against the estimate); `on_done(job, stats)` records each shard as it completes."""
    bar = tqdm(total=sum(job[1]["estimated_tokens"] for job in jobs), unit="tok", unit_scale=True,
               desc=f"Preparing {len(jobs)} shards with {workers} worker{'s' * (workers > 1)}")
    with bar:
        if workers <= 1:
            for job in jobs:
                split, shard, documents, path = job
                on_done(job, writer.write(split, documents, *shard["documents"], path, bar.update))
            return
        context = multiprocessing.get_context("fork")  # the workers inherit the lock, and their parent is this one
        progress = context.Value("q", 0)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                                    initargs=(progress, os.getpid())) as pool:
            futures = {pool.submit(_write_in_worker, writer, job[0], job[2], *job[1]["documents"], job[3]): job
                       for job in jobs}
            waiting = set(futures)
            try:
                while waiting:
                    done, waiting = concurrent.futures.wait(waiting, timeout=0.5,
                                                            return_when=concurrent.futures.FIRST_COMPLETED)
                    bar.update(progress.value - bar.n)
                    for future in done:
                        on_done(futures[future], future.result())
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise


# ---------------------------------------------------------------------------------------------------------------------
# Preparing a directory


def _split_metadata(directory: Path, split: str, shards: list[dict], features: Features, fingerprint: str) -> None:
    """datasets' state.json and dataset_info.json, as save_to_disk writes them, so that load_from_disk reads the
    split; written once every shard is complete."""
    state = {"_data_files": [{"filename": shard["file"]} for shard in shards], "_fingerprint": fingerprint,
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": split}
    DatasetInfo(features=features).write_to_directory(str(directory / split))
    _write_json(directory / split / "state.json", state)


def _check_shard(directory: Path, split: str, shard: dict, verify_content: bool) -> bool:
    """Whether a recorded shard is on disk as recorded: False if it is missing (then it is prepared again); a file
    that differs in size or, with `verify_content`, in SHA-256 is named and left as it is."""
    path = directory / split / shard["file"]
    if not path.is_file():
        return False
    size = path.stat().st_size
    damage = f"is {size:,} bytes, not the {shard['bytes']:,} recorded" if size != shard["bytes"] else None
    if damage is None and verify_content and file_sha256(path) != shard["sha256"]:
        damage = "differs from the SHA-256 recorded"
    if damage:
        raise DataError(f"{path} {damage} in {directory / MANIFEST_FILE}: it is damaged. Delete it and run "
                        f"{COMMAND} again to prepare that shard again")
    return True


def _new_manifest(data_args, tokenizer, corpus: Corpus, directory: Path) -> dict:
    if any(path.name != LOCK_FILE for path in directory.iterdir()):
        raise DataError(f"prepared_dir={directory} exists and holds files but no {MANIFEST_FILE}, so it is not a "
                        f"prepared directory: choose a new or empty prepared_dir (nothing was changed)")
    manifest = {
        "format": FORMAT,
        "identity": data_identity(data_args, tokenizer),
        "dtype": str(token_type(len(tokenizer))),
        "splits": {split: {"documents": len(corpus.documents[split]), "text_bytes": corpus.text_bytes[split],
                           "shards": corpus.shards[split]} for split in SPLITS},
        "complete": False,
    }
    _write_json(directory / MANIFEST_FILE, manifest)  # first: from here on, the directory is a prepared one
    return manifest


def _check_same_documents(manifest: dict, corpus: Corpus, directory: Path) -> None:
    for split in SPLITS:
        recorded = manifest["splits"][split]
        now = (len(corpus.documents[split]), corpus.text_bytes[split])
        if (recorded["documents"], recorded["text_bytes"]) != now:
            raise DataError(
                f"the {split} documents differ from those prepared_dir={directory} was prepared from "
                f"({recorded['documents']:,} documents of {recorded['text_bytes']:,} bytes then, {now[0]:,} of "
                f"{now[1]:,} now): set prepared_dir to another directory (nothing was changed)"
            )


def summarize_prepared(manifest: dict) -> dict:
    splits = manifest["splits"]
    return {
        "documents": sum(splits[split]["documents"] for split in SPLITS),
        "tokens": sum(shard["tokens"] for split in SPLITS for shard in splits[split]["shards"]),
        "train_blocks": sum(shard["blocks"] for shard in splits["train"]["shards"]),
        "validation_blocks": sum(shard["blocks"] for shard in splits["validation"]["shards"]),
        "block_size": manifest["identity"]["block_size"],
        "shards": sum(len(splits[split]["shards"]) for split in SPLITS),
        "bytes": sum(shard["bytes"] for split in SPLITS for shard in splits[split]["shards"]),
    }


def prepare_blocks(data_args: "DataArguments", tokenizer: PreTrainedTokenizerBase) -> dict:
    """Prepare `prepared_dir` from the config's corpus, or finish an interrupted prepare (its finished shards are
    verified and kept), or verify a complete one, holding the directory's lock throughout. Returns its summary."""
    directory = Path(data_args.prepared_dir)
    with _one_prepare_at_a_time(directory):
        return _prepare(directory, data_args, tokenizer)


def _prepare(directory: Path, data_args: "DataArguments", tokenizer: PreTrainedTokenizerBase) -> dict:
    manifest = read_manifest(directory)
    if manifest is not None:
        check_agreement(manifest, data_args, tokenizer)
    corpus = survey(data_args, tokenizer)
    if manifest is None:
        manifest = _new_manifest(data_args, tokenizer, corpus, directory)
    else:
        _check_same_documents(manifest, corpus, directory)

    jobs = []
    for split in SPLITS:
        (directory / split).mkdir(exist_ok=True)
        for partial in (directory / split).glob(f"*{PARTIAL_SUFFIX}"):  # left by an interrupted prepare
            partial.unlink()
        for shard in manifest["splits"][split]["shards"]:
            if "sha256" not in shard or not _check_shard(directory, split, shard, verify_content=True):
                jobs.append((split, shard, corpus.documents[split], directory / split / shard["file"]))
    writer = ShardWriter(TokenizeDocuments(tokenizer), data_args, len(tokenizer))

    def record(job, stats):
        job[1].update(stats)
        _write_json(directory / MANIFEST_FILE, manifest)

    if jobs:
        if manifest["complete"]:  # a shard deleted since: training refuses the directory until it is back
            manifest["complete"] = False
            _write_json(directory / MANIFEST_FILE, manifest)
        workers = data_args.preprocessing_num_workers or 1
        started = time.perf_counter()
        _write_shards(jobs, writer, workers, record)
        seconds = time.perf_counter() - started
        tokens = sum(job[1]["tokens"] for job in jobs)
        print(f"prepared {tokens:,} tokens in {len(jobs)} shards in {seconds:.1f} s: {tokens / seconds:,.0f} "
              f"tokens/s ({tokens / seconds / workers:,.0f} per worker)", file=sys.stderr)
    else:
        print(f"{directory} was prepared already: every shard verified against its SHA-256", file=sys.stderr)
    for split in SPLITS:
        if not sum(shard["blocks"] for shard in manifest["splits"][split]["shards"]):
            raise DataError(f"the {split} split gives no block of block_size={data_args.block_size} (each shard "
                            f"drops its final partial block): add text, lower block_size or raise "
                            f"prepared_shard_tokens")
    if not manifest["complete"]:
        manifest["fingerprint"] = _fingerprint(manifest)
        for split in SPLITS:
            features = block_features(split, data_args.block_size, len(tokenizer))
            _split_metadata(directory, split, manifest["splits"][split]["shards"], features, manifest["fingerprint"])
        _write_json(directory / "dataset_dict.json", {"splits": list(SPLITS)})
        manifest["complete"] = True
        _write_json(directory / MANIFEST_FILE, manifest)
    return summarize_prepared(manifest)


# ---------------------------------------------------------------------------------------------------------------------
# Reading, for training


def open_prepared(data_args: "DataArguments", tokenizer: PreTrainedTokenizerBase) -> DatasetDict:
    """The `train` and `validation` blocks of a complete prepared directory that agrees with the config, memory-
    mapped, as numpy arrays (the collator makes int64 tensors), with max_train_samples / max_eval_samples applied.
    Only sizes are checked here (a full SHA-256 check is the data command's, which rereads everything)."""
    directory = Path(data_args.prepared_dir)
    manifest = read_manifest(directory)
    if manifest is None:
        raise DataError(f"prepared_dir={directory} has not been prepared (no {MANIFEST_FILE}): run {COMMAND} with "
                        f"this run's config first, once (several nodes: on storage they all see)")
    check_agreement(manifest, data_args, tokenizer)
    if not manifest["complete"]:
        shards = [shard for split in SPLITS for shard in manifest["splits"][split]["shards"]]
        done = sum("sha256" in shard for shard in shards)
        raise DataError(f"prepared_dir={directory} is incomplete ({done} of {len(shards)} shards prepared): run "
                        f"{COMMAND} with this run's config again to finish it")
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            if not _check_shard(directory, split, shard, verify_content=False):
                raise DataError(f"{directory / split / shard['file']} is missing: run {COMMAND} with this run's "
                                f"config to prepare it again")
    try:
        blocks = load_from_disk(str(directory)).with_format("numpy")
    except (OSError, ValueError, pa.ArrowException) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"prepared_dir={directory} cannot be read ({reason}): delete it and run {COMMAND} again")
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for split, limit in limits.items():
        if limit is not None:
            blocks[split] = blocks[split].select(range(min(limit, len(blocks[split]))))
    return blocks
