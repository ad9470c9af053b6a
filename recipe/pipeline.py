"""The data pipeline: text to training blocks, the datasets way: load, one map to tokenize, one map to group.

    files / Hub ─► load_documents ─► tokenize_documents (map: ids + eos per document, num_proc)
                                 ─► group_into_blocks (map: block_size rows across document boundaries)

Both maps are cached by datasets' fingerprint, so a second run of the same config reads the cache and tokenizes
nothing. The fingerprint covers the data, the tokenizer and the settings, not this file's code: after changing the
map functions, set overwrite_cache. With `streaming` the same two functions run lazily on an IterableDataset; for
training, each process packs its own documents into a BlockStream (recipe.stream). Corpora too large to map in one
go are prepared once into shards by recipe.prepared, which reuses the loading and the two map functions here.
GPT-2's BPE is encoded by tiktoken (identical ids, ~10x faster than transformers' tokenizer), and batches stay in
Arrow and numpy: memory holds one batch of documents, never the corpus.
"""

import codecs
import glob
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict, Features, IterableDataset, IterableDatasetDict, List, Value, load_dataset
from datasets.distributed import split_dataset_by_node
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .checkpoints import atomic_directory
from .errors import DataError
from .stream import BlockStream
from .tokenization import gpt2_encoding, is_gpt2_bpe, load_tokenizer, train_bpe_tokenizer

if TYPE_CHECKING:  # the settings are passed in; the pipeline does not depend on how they were parsed
    from .args import DataArguments

DATA_FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SUPPORTED_SUFFIXES = ", ".join(DATA_FILE_BUILDERS)
TRAINED_TOKENIZER_DIR = "tokenizer"  # inside output_dir
# Documents per map batch: enough to amortise datasets' per-batch cost, few enough that a batch of long documents
# (a Shakespeare play is ~37k tokens) stays a few MB, so memory does not grow with the corpus.
DOCUMENTS_PER_BATCH = 16


def load_or_train_tokenizer(data_args: "DataArguments", output_dir: str | Path) -> PreTrainedTokenizerBase:
    """The run's tokenizer: `tokenizer_name` (default GPT-2's BPE), or with `train_tokenizer_vocab_size` a byte-level
    BPE of that size trained on the training documents, saved in output_dir/tokenizer and reused from there."""
    vocab_size = data_args.train_tokenizer_vocab_size
    if vocab_size is None:
        return load_tokenizer(data_args.tokenizer_name, setting="tokenizer_name")
    directory = Path(output_dir) / TRAINED_TOKENIZER_DIR
    if not directory.exists():
        train_documents = load_documents(data_args)["train"].select_columns([data_args.text_column])
        text_batches = (batch[data_args.text_column] for batch in train_documents.iter(batch_size=DOCUMENTS_PER_BATCH))
        tokenizer = train_bpe_tokenizer(text_batches, vocab_size)
        if len(tokenizer) < vocab_size:
            raise DataError(
                f"the training documents only yield a vocabulary of {len(tokenizer)} tokens, fewer than "
                f"train_tokenizer_vocab_size={vocab_size}: lower it or add text"
            )
        with atomic_directory(directory) as staging:
            tokenizer.save_pretrained(staging)
    tokenizer = load_tokenizer(directory)
    if len(tokenizer) != vocab_size:
        raise DataError(
            f"{directory} holds a tokenizer of {len(tokenizer)} tokens, not train_tokenizer_vocab_size={vocab_size}: "
            f"delete it to train a new one"
        )
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------------
# Loading: one row per document


def resolve_data_files(patterns: list[str], key: str) -> list[Path]:
    """The files that `patterns` (files, directories or globs) name, in sorted order, all of one format."""
    files = []
    for pattern in patterns:
        path = Path(pattern)
        if any(char in pattern for char in "*?["):
            matches = sorted(Path(match) for match in glob.glob(pattern, recursive=True) if Path(match).is_file())
            if not matches:
                raise DataError(f"{key}: no file matches {pattern}")
        elif path.is_dir():
            matches = sorted(match for match in path.rglob("*") if match.suffix in DATA_FILE_BUILDERS)
            matches = [match for match in matches if match.is_file()]
            if not matches:
                raise DataError(f"{key}: directory {pattern} holds no {SUPPORTED_SUFFIXES} files")
        elif path.is_file():
            matches = [path]
        else:
            raise DataError(f"{key}: {pattern} does not exist")
        files.extend(matches)
    for file in files:
        if file.suffix not in DATA_FILE_BUILDERS:
            raise DataError(f"{key}: {file} is not a {SUPPORTED_SUFFIXES} file")
    formats = {DATA_FILE_BUILDERS[file.suffix] for file in files}
    if len(formats) > 1:
        raise DataError(f"{key} mixes formats ({', '.join(sorted(formats))}); use one format per split")
    return files


def _check_readable(file: Path, key: str) -> None:
    """Refuse, by name, a file that datasets would crash on (an empty json/parquet) or silently load as invalid text
    (pyarrow's json reader does not check UTF-8). Read in 16 MB chunks: memory stays flat."""
    if file.stat().st_size == 0:
        if file.suffix != ".txt":  # an empty .txt file is an empty document; an empty json/parquet file is broken
            raise DataError(f"{key}: {file} is empty")
        return
    if file.suffix == ".parquet":  # Parquet stores strings as UTF-8 by specification
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(file, "rb") as handle:
        try:
            while chunk := handle.read(1 << 24):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:
            raise DataError(f"{key}: {file} is not UTF-8 text ({error.reason}); re-encode it as UTF-8") from None


def _load_files(patterns: list[str], key: str, streaming: bool) -> Dataset | IterableDataset:
    files = resolve_data_files(patterns, key)
    for file in files:
        _check_readable(file, key)
    builder = DATA_FILE_BUILDERS[files[0].suffix]
    # One .txt file = one document. The text builder yields each as a one-row table, which datasets buffers until
    # writer_batch_size rows (default 1,000 documents, all in memory) before writing: write every batch instead.
    options = {"sample_by": "document", "writer_batch_size": DOCUMENTS_PER_BATCH} if builder == "text" else {}
    data_files = [str(file) for file in files]
    return load_dataset(builder, data_files=data_files, split="train", streaming=streaming, **options)


def _load_hub_dataset(data_args: "DataArguments") -> dict[str, Dataset | IterableDataset]:
    name = data_args.dataset_name
    try:
        # Downloaded (and converted to Arrow) by preprocessing_num_workers processes, unless streamed.
        num_proc = None if data_args.streaming else data_args.preprocessing_num_workers
        splits = load_dataset(name, data_args.dataset_config_name, streaming=data_args.streaming, num_proc=num_proc)
    except ConnectionError:
        raise DataError(
            f"dataset_name={name!r} needs the Hugging Face Hub, which cannot be reached here (offline or "
            f"HF_HUB_OFFLINE=1) and the dataset is not cached; use local files instead: train_files (and "
            f"validation_files) with {SUPPORTED_SUFFIXES} files, directories or globs"
        ) from None
    if "train" not in splits:
        raise DataError(f"dataset_name={name!r} has no train split (it has {list(splits)})")
    return {split: splits[split] for split in ("train", "validation") if split in splits}


def _hold_out_validation(documents: Dataset | IterableDataset, data_args: "DataArguments"):
    """(train, validation), the first documents becoming validation, as run_clm.py's `train[:N%]` does."""
    if data_args.validation_documents is not None:  # always set when streaming (DataArguments checks it)
        count, setting = data_args.validation_documents, f"validation_documents={data_args.validation_documents}"
    else:
        percentage = data_args.validation_split_percentage
        count = max(1, round(len(documents) * percentage / 100)) if percentage > 0 else 0
        setting = f"validation_split_percentage={percentage}"
    if count < 1:
        raise DataError(f"{setting} holds out no validation documents; hold some out or set validation_files")
    if isinstance(documents, IterableDataset):
        return documents.skip(count), documents.take(count)
    if count >= len(documents):
        raise DataError(
            f"{setting} holds out {count} of the {len(documents)} training documents, leaving none to train on; "
            f"set validation_files"
        )
    return documents.select(range(count, len(documents))), documents.select(range(count))


def _check_documents(documents: Dataset | IterableDataset, text_column: str, source: str) -> None:
    """An unknown text column, missing texts or a corpus without text are refused here, before any tokenization."""
    if isinstance(documents, IterableDataset):
        first = next(iter(documents.take(1)), None)  # a stream shows its columns, and whether it is empty, in row one
        if first is None:
            raise DataError(f"{source} is empty: it holds no documents")
        columns = list(first)
    else:
        columns = documents.column_names
    if text_column not in columns:
        raise DataError(f"text_column={text_column!r} is not a column of {source}; its columns are {columns}")
    if isinstance(documents, Dataset):
        texts = documents.data.column(text_column)
        if texts.null_count:
            raise DataError(f"{source}: {texts.null_count} of its {len(documents)} rows have no {text_column!r}")
        if not pc.sum(pc.binary_length(texts)).as_py():
            raise DataError(f"{source} is empty: it holds no text")


def load_documents(data_args: "DataArguments") -> DatasetDict | IterableDatasetDict:
    """The raw documents, one row each, split into train and validation (validation_files, the Hub's validation
    split, or documents held out from the start of train). With validation_tokens, only train: that hold-out is
    counted in tokens (split_validation_tokens)."""
    if data_args.dataset_name is not None:
        splits = _load_hub_dataset(data_args)
        sources = {split: f"dataset_name={data_args.dataset_name!r} ({split} split)" for split in splits}
    else:
        splits = {"train": _load_files(data_args.train_files, "train_files", data_args.streaming)}
        sources = {"train": "train_files"}
    if data_args.validation_files:
        splits["validation"] = _load_files(data_args.validation_files, "validation_files", data_args.streaming)
        sources["validation"] = "validation_files"
    if data_args.validation_tokens is not None:
        if "validation" in splits:
            raise DataError(f"validation_tokens holds out the first tokens of the training documents, but "
                            f"{sources['validation']} is a validation split already: drop one of them")
    elif "validation" not in splits:
        _check_documents(splits["train"], data_args.text_column, sources["train"])
        splits["train"], splits["validation"] = _hold_out_validation(splits["train"], data_args)
        sources["validation"] = f"the validation documents held out of {sources['train']}"
    for split, documents in splits.items():
        _check_documents(documents, data_args.text_column, sources[split])
    return IterableDatasetDict(splits) if data_args.streaming else DatasetDict(splits)


# ---------------------------------------------------------------------------------------------------------------------
# The two maps


def _with_separators(token_arrays: list[np.ndarray], separator: int) -> pa.ListArray:
    """One Arrow list per document: its token ids, then `separator`; written into one int32 buffer."""
    lengths = np.array([len(tokens) + 1 for tokens in token_arrays], dtype=np.int32)
    offsets = np.zeros(len(token_arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.empty(offsets[-1], dtype=np.int32)
    for tokens, end in zip(token_arrays, offsets[1:]):
        values[end - 1 - len(tokens) : end - 1] = tokens
        values[end - 1] = separator
    return pa.ListArray.from_arrays(offsets, values)


class TokenizeDocuments:
    """Map function: a batch of documents -> `input_ids`, each document's ids followed by one eos.

    Text that spells a special token (e.g. "<|endoftext|>" inside a web page) is encoded as ordinary text, so only
    the separators this function appends are document boundaries.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        if tokenizer.eos_token_id is None:
            raise DataError(f"the tokenizer {tokenizer.name_or_path!r} has no eos_token to separate documents with")
        self.eos_token_id = tokenizer.eos_token_id
        # GPT-2's BPE goes through tiktoken; then no tokenizer object is kept, so GPT-2 loaded from anywhere shares
        # one cache fingerprint. Any other tokenizer is kept and becomes part of the fingerprint.
        self.tokenizer = None if is_gpt2_bpe(tokenizer) else tokenizer

    def __call__(self, texts: pa.ChunkedArray) -> pa.Table:
        texts = texts.to_pylist()
        if self.tokenizer is None:
            encoding = gpt2_encoding()
            token_arrays = [encoding.encode_to_numpy(text, disallowed_special=()) for text in texts]
        else:
            token_arrays = [np.asarray(document_ids, dtype=np.int32) for document_ids in self._encode(texts)]
        return pa.table({"input_ids": _with_separators(token_arrays, self.eos_token_id)})

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """The ids of each text, special tokens spelled out as text. A `tokenizers` backend encodes without the
        offsets and masks the tokenizer's __call__ computes and this pipeline drops: 1.7x faster (the quick start's
        corpus in 1.1 s instead of 1.9 s), the same ids (tested)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
        spelled_out = backend.encode_special_tokens
        backend.encode_special_tokens = True
        try:
            return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
        finally:
            backend.encode_special_tokens = spelled_out


class GroupIntoBlocks:
    """Map function: consecutive documents' ids -> rows of exactly `block_size` ids, running across documents.

    Blocks ignore document boundaries (the separators mark them), as in GPT-2's training. The ids after a batch's
    last full block carry over into the next batch, so a split loses only its final partial block. The carry makes
    the map sequential: it runs in one process, and starts afresh whenever a pass begins at the first document.

    With `next_token` (validation splits) each block also records the id that follows it, so that its last position
    is scored too: every token after the first is then predicted exactly once, as in build-nanogpt's and nanoGPT's
    evaluation (x = tokens[i : i + T], y = tokens[i + 1 : i + T + 1]). `start_tokens` are put before the first
    document and `max_tokens` ends the stream after that many tokens: build-nanogpt's validation shard is the first
    100M tokens of its stream, with an end-of-text token before each document (see `validation_token_documents`).
    """

    def __init__(self, block_size: int, next_token: bool = False, start_tokens: tuple[int, ...] = (),
                 max_tokens: int | None = None):
        self.block_size = block_size
        self.next_token = next_token
        self.start_tokens = tuple(start_tokens)
        self.max_tokens = max_tokens
        self.carry = np.empty(0, dtype=np.int32)
        self.streamed = 0  # tokens of this pass taken in so far, start tokens included

    def __call__(self, token_lists: pa.ChunkedArray, indices: list[int]) -> pa.Table:
        new = [chunk.to_numpy() for chunk in pc.list_flatten(token_lists).chunks]
        if indices[0] == 0:
            self.carry, self.streamed = self.carry[:0], 0
            new.insert(0, np.asarray(self.start_tokens, dtype=np.int32))
        new = np.concatenate([np.empty(0, dtype=np.int32), *new])  # (batch tokens,)
        if self.max_tokens is not None:
            new = new[: max(self.max_tokens - self.streamed, 0)]
        self.streamed += len(new)
        tokens = np.concatenate([self.carry, new])  # (carried + batch tokens,)
        held = int(self.next_token)  # the token after the last block must be here too
        count = max(len(tokens) - held, 0) // self.block_size
        usable = count * self.block_size
        self.carry = tokens[usable:].copy()
        columns = {"input_ids": pa.FixedSizeListArray.from_arrays(pa.array(tokens[:usable]), self.block_size)}
        if self.next_token:
            columns["next_token"] = pa.array(tokens[self.block_size : usable + 1 : self.block_size])  # (blocks,)
        return pa.table(columns)


def validation_token_documents(token_counts: np.ndarray, validation_tokens: int) -> int:
    """How many documents the first `validation_tokens` tokens of the stream come from, the stream being build-
    nanogpt's (fineweb.py): an end-of-text token, document 0, an end-of-text token, document 1, ... `token_counts`
    are the documents' token counts with their separator, as TokenizeDocuments makes them (the document, then
    eos): document i begins at position 1 + (the counts before it). The last of them is cut short; the training
    split starts with the next document, so that no document is in both."""
    before = np.concatenate([[0], np.cumsum(token_counts)[:-1]])  # (documents,) tokens of the documents before each
    return int(np.count_nonzero(1 + before < validation_tokens))


def count_validation_documents(documents: Dataset, tokenize: "TokenizeDocuments", text_column: str,
                              validation_tokens: int) -> int:
    """validation_token_documents of the first documents, tokenized from the first until there are enough tokens:
    the documents after them are never read."""
    counts, total = [], 0
    with tqdm(total=validation_tokens, unit="tok", unit_scale=True, desc="Counting the validation tokens") as bar:
        for batch in documents.with_format("arrow").iter(batch_size=DOCUMENTS_PER_BATCH):
            lengths = pc.list_value_length(tokenize(batch[text_column]).column("input_ids")).to_numpy()
            counts.append(lengths)
            bar.update(min(int(lengths.sum()), validation_tokens - bar.n))
            total += int(lengths.sum())
            if total >= validation_tokens:  # every later document starts after the last validation token
                break
    return validation_token_documents(np.concatenate([np.zeros(0, np.int64), *counts]), validation_tokens)


def split_validation_tokens(tokenized: Dataset, validation_tokens: int) -> tuple[Dataset, Dataset]:
    """(train, validation) tokenized documents for `validation_tokens`: see validation_token_documents."""
    lengths = pc.list_value_length(tokenized.data.column("input_ids"))
    token_counts = np.concatenate([np.zeros(0, np.int64), *(chunk.to_numpy() for chunk in lengths.chunks)])
    held_out = validation_token_documents(token_counts, validation_tokens)
    if held_out >= len(tokenized):
        raise DataError(f"validation_tokens={validation_tokens:,} takes all {len(tokenized):,} training documents "
                        f"({int(token_counts.sum()):,} tokens), leaving none to train on: lower it")
    return tokenized.select(range(held_out, len(tokenized))), tokenized.select(range(held_out))


def block_grouping(split: str, data_args: "DataArguments", eos_token_id: int | None) -> GroupIntoBlocks:
    """The GroupIntoBlocks of a split: validation blocks know their next token and, with validation_tokens, are
    build-nanogpt's validation stream."""
    if split != "validation":
        return GroupIntoBlocks(data_args.block_size)
    if data_args.validation_tokens is None:
        return GroupIntoBlocks(data_args.block_size, next_token=True)
    return GroupIntoBlocks(data_args.block_size, next_token=True, start_tokens=(eos_token_id,),
                           max_tokens=data_args.validation_tokens)


def block_columns(split: str, block_size: int, id_type: str = "int32") -> Features:
    """The columns of a split's blocks: `input_ids` and, for validation, `next_token`."""
    columns = {"input_ids": List(Value(id_type), length=block_size)}
    if split == "validation":
        columns["next_token"] = Value(id_type)
    return Features(columns)


def _map_splits(splits, function_for_split, data_args: "DataArguments", description: str, num_proc=None, **options):
    """One batched map over each split, on Arrow batches: Dataset.map (cached, multi-process) or, for a stream,
    IterableDataset.map (lazy). `function_for_split()` gives each split its own function (GroupIntoBlocks has state).

    A map that takes Arrow batches and returns an Arrow table does not merge the input columns into its output, so
    the output is exactly the returned `input_ids` (declared in `features`, so that a stream knows its columns too).
    """
    mapped = {}
    for split, dataset in splits.items():
        arguments = dict(function=function_for_split(), batched=True, batch_size=DOCUMENTS_PER_BATCH, **options)
        if isinstance(dataset, IterableDataset):
            mapped[split] = dataset.with_format("arrow").map(**arguments)
        else:
            mapped[split] = dataset.with_format("arrow").map(
                num_proc=num_proc,
                load_from_cache_file=not data_args.overwrite_cache,
                desc=f"{description} ({split})",
                **arguments,
            )
    return type(splits)(mapped)


def count_tokens(tokenized: Dataset) -> int:
    """Tokens in a tokenized split, separators included (read from the Arrow list offsets, not the ids)."""
    return pc.sum(pc.list_value_length(tokenized.data.column("input_ids"))).as_py() or 0


def tokenize_documents(documents, tokenizer: PreTrainedTokenizerBase, data_args: "DataArguments"):
    """The first map: each document -> its token ids plus one eos, with `preprocessing_num_workers` processes."""
    tokenize = TokenizeDocuments(tokenizer)
    return _map_splits(
        documents,
        lambda: tokenize,
        data_args,
        "Tokenizing",
        num_proc=data_args.preprocessing_num_workers,
        input_columns=[data_args.text_column],
        features=Features({"input_ids": List(Value("int32"))}),
    )


def group_into_blocks(tokenized, data_args: "DataArguments", eos_token_id: int | None = None):
    """The second map: tokenized documents -> `block_size` blocks (`input_ids`, and for validation `next_token`),
    with max_train_samples and max_eval_samples applied (the first blocks). In one process: see GroupIntoBlocks.
    `eos_token_id` starts build-nanogpt's validation stream (validation_tokens)."""
    block_size = data_args.block_size
    for split, dataset in tokenized.items():
        needed = block_size + (split == "validation")  # a validation block needs the token after it
        if isinstance(dataset, Dataset) and (tokens := count_tokens(dataset)) < needed:
            raise DataError(
                f"the {split} split has {tokens} tokens, fewer than block_size={block_size}"
                f"{' + 1' if needed > block_size else ''}: add text or lower block_size"
            )
    blocks = {}
    for split, dataset in tokenized.items():
        blocks.update(_map_splits(
            type(tokenized)({split: dataset}),
            lambda: block_grouping(split, data_args, eos_token_id),
            data_args,
            f"Grouping into blocks of {block_size}",
            input_columns=["input_ids"],
            with_indices=True,
            features=block_columns(split, block_size),
        ))
    blocks = type(tokenized)(blocks)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for split, limit in limits.items():
        if limit is not None and split in blocks:
            dataset = blocks[split]
            if isinstance(dataset, IterableDataset):
                blocks[split] = dataset.take(limit)
            else:
                blocks[split] = dataset.select(range(min(limit, len(dataset))))
    return blocks.with_format(None)


def prepare_datasets(data_args: "DataArguments", tokenizer: PreTrainedTokenizerBase) -> DatasetDict | IterableDatasetDict:
    """`train` and `validation` splits of `block_size` blocks (`input_ids`, and for validation `next_token`). Cached: a
    second run of the same config reads the cache. With `streaming`, lazy IterableDatasets built by the same
    functions."""
    return group_into_blocks(tokenized_splits(data_args, tokenizer), data_args, tokenizer.eos_token_id)


def tokenized_splits(data_args: "DataArguments", tokenizer: PreTrainedTokenizerBase):
    """The first map over the loaded documents: `train` and `validation` tokenized documents (validation_tokens
    holds out its documents once they are tokenized, since it counts tokens)."""
    tokenized = tokenize_documents(load_documents(data_args), tokenizer, data_args)
    if data_args.validation_tokens is not None:
        tokenized["train"], tokenized["validation"] = split_validation_tokens(tokenized["train"],
                                                                              data_args.validation_tokens)
    return tokenized


def validation_blocks(data_args: "DataArguments", tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """The validation split of prepare_datasets alone, for evaluating a model with its own tokenizer on a config's
    validation documents (e.g. OpenAI's GPT-2 on a run that trained its own BPE): the training documents are not
    tokenized, except, with validation_tokens, as many as the count needs."""
    documents = load_documents(data_args)
    if data_args.validation_tokens is None:
        held_out = documents["validation"]
    else:
        tokenize = TokenizeDocuments(tokenizer)
        count = count_validation_documents(documents["train"], tokenize, data_args.text_column,
                                           data_args.validation_tokens)
        held_out = documents["train"].select(range(count))
    tokenized = tokenize_documents(DatasetDict({"validation": held_out}), tokenizer, data_args)
    return group_into_blocks(tokenized, data_args, tokenizer.eos_token_id)["validation"]


def stream_datasets(data_args: "DataArguments", tokenizer: PreTrainedTokenizerBase, process_index: int,
                    num_processes: int) -> dict:
    """For `streaming`: `train`, this process's BlockStream over its own documents (split_dataset_by_node, so no
    process reads or tokenizes another's documents and none dispatches batches to the others), and `validation`,
    the held-out blocks as prepare_datasets streams them."""
    documents = load_documents(data_args)
    own_documents = split_dataset_by_node(documents["train"], rank=process_index, world_size=num_processes)
    tokenized = tokenize_documents(IterableDatasetDict({"train": own_documents}), tokenizer, data_args)["train"]
    validation = group_into_blocks(tokenize_documents(documents, tokenizer, data_args), data_args)["validation"]
    train = BlockStream(tokenized, data_args.block_size, data_args.max_train_samples)
    return {"train": train, "validation": validation}


def collate_blocks(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Trainer's data collator: blocks (lists, or numpy arrays of any integer type, such as prepared uint16 ids) ->
    `input_ids` (B, T) int64 and `labels`, the same ids (the model shifts them); validation blocks also carry
    `next_token` (B,), the token after each block (recipe.scoring predicts it from the block's last position)."""
    input_ids = np.stack([np.asarray(example["input_ids"]) for example in examples]).astype(np.int64)  # (B, T)
    input_ids = torch.from_numpy(input_ids)
    batch = {"input_ids": input_ids, "labels": input_ids.clone()}
    if "next_token" in examples[0]:
        batch["next_token"] = torch.tensor([int(example["next_token"]) for example in examples])  # (B,)
    return batch


def summarize(tokenized: DatasetDict, blocks: DatasetDict) -> dict[str, int]:
    """What the pipeline made: documents, tokens (one separator per document included), blocks per split."""
    return {
        "documents": sum(len(split) for split in tokenized.values()),
        "tokens": sum(count_tokens(split) for split in tokenized.values()),
        "train_blocks": len(blocks["train"]),
        "validation_blocks": len(blocks["validation"]),
        "block_size": blocks["train"].features["input_ids"].length,
    }
