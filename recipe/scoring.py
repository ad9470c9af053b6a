"""Scoring a loaded model: HellaSwag (completion style) and loss / perplexity over blocks of tokens.

Both work under a multi-process launch (accelerate, torchrun, Trainer with DDP): every process scores its share
and all of them get the full result. The figures go through the local `evaluate` metrics in recipe/metrics/.
"""

import itertools
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState
from datasets import Dataset
from accelerate.utils import gather_object
from transformers import PreTrainedTokenizerBase

from .errors import DataError
from .metrics import load_metric

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
HELLASWAG_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt2-recipe" / "hellaswag_val.jsonl"
DOWNLOAD_TIMEOUT_S = 10  # offline, fail in seconds rather than hang


def read_hellaswag(path: str | Path, limit: int | None = None) -> list[dict]:
    """Examples {"ctx", "endings" (4 strings), "label" (0-3)} of a HellaSwag jsonl file (the official format)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    examples = []
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if limit is not None and len(examples) == limit:
                break
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
            if not (
                isinstance(example, dict)
                and isinstance(example.get("ctx"), str)
                and isinstance(example.get("endings"), list)
                and len(example["endings"]) == 4
                and all(isinstance(ending, str) for ending in example["endings"])
                and example.get("label") in (0, 1, 2, 3)
            ):
                raise DataError(
                    f"{path}, line {number}: a HellaSwag example needs 'ctx' (a string), 'endings' (4 strings) "
                    f"and 'label' (0, 1, 2 or 3)"
                )
            examples.append({key: example[key] for key in ("ctx", "endings", "label")})
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples


def download_hellaswag() -> Path:
    """The official validation file (10,042 examples), downloaded once into HELLASWAG_CACHE."""
    destination = HELLASWAG_CACHE
    if destination.is_file():
        return destination
    try:
        with urllib.request.urlopen(HELLASWAG_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError) as error:
        raise DataError(
            f"could not download HellaSwag from {HELLASWAG_URL} ({error}); without network, pass a local copy "
            f"with --data FILE.jsonl"
        ) from None
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(f".partial-{os.getpid()}")
    partial.write_bytes(data)
    partial.rename(destination)  # a complete file or none
    return destination


def _batches(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _this_process_share(items: Iterable) -> Iterator:
    """Every n-th item starting at this process's index (all of them without a multi-process launch), lazily."""
    state = PartialState()
    return itertools.islice(items, state.process_index, None, state.num_processes)


class ProcessShare(torch.utils.data.IterableDataset):
    """This process's share of a split's blocks: every n-th one from its index, read by the process itself. No
    process dispatches to another, so a streamed split works with fewer blocks than processes, and the blocks
    scored, and the result, are those of one process. (A map-style split is read with `Dataset.select` instead.)"""

    def __init__(self, blocks: Iterable):
        self.blocks = blocks

    def __iter__(self):
        return _this_process_share(self.blocks)


def process_share(blocks: Iterable) -> Iterable:
    """This process's share of `blocks`: a map-style Dataset stays one (rows rank, rank + n, ...), else ProcessShare."""
    if isinstance(blocks, Dataset):
        state = PartialState()
        return blocks.select(range(state.process_index, len(blocks), state.num_processes))
    return ProcessShare(blocks)


@contextmanager
def _evaluation_mode(model):
    """Dropout off for the block, then the model's mode as it was (a training callback continues training)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def hellaswag_losses(model, tokenizer: PreTrainedTokenizerBase, examples: list[dict],
                     batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of each ending's tokens after its context, and the ending lengths: both (N, 4).

    Each ending is tokenized as " " + ending (GPT-2's BPE attaches the space to the word) and appended to the
    context. The 4 rows of `batch_size` examples go through the model in one forward pass, padded on the
    right: attention is causal, so no real token sees the padding and the scores do not depend on the batch.
    """
    loss_sums, token_counts = [], []
    for batch in _batches(examples, batch_size):
        rows = []  # (tokens, ending length): 4 per example
        for example in batch:
            context = tokenizer.encode(example["ctx"], add_special_tokens=False)
            for ending in example["endings"]:
                ending_tokens = tokenizer.encode(" " + ending, add_special_tokens=False)
                rows.append((context + ending_tokens, len(ending_tokens)))
        width = max(len(tokens) for tokens, _ in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)  # (4B, T); pad id 0 is never scored
        is_ending = torch.zeros(len(rows), width, dtype=torch.bool)  # (4B, T)
        for row, (tokens, ending_length) in enumerate(rows):
            input_ids[row, : len(tokens)] = torch.tensor(tokens)
            is_ending[row, len(tokens) - ending_length : len(tokens)] = True
        input_ids = input_ids.to(model.device)
        logits = model(input_ids).logits  # (4B, T, V)
        # logits at position t predict token t + 1
        token_losses = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="none"
        ).view(len(rows), width - 1)  # (4B, T - 1)
        scored = is_ending[:, 1:].to(model.device)
        loss_sums.append(torch.where(scored, token_losses, 0.0).sum(1).view(-1, 4).cpu())  # (B, 4)
        token_counts.append(scored.sum(1).view(-1, 4).cpu())  # (B, 4)
    if not loss_sums:
        return torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.long)
    return torch.cat(loss_sums), torch.cat(token_counts)


def score_hellaswag(model, tokenizer: PreTrainedTokenizerBase, examples: list[dict],
                    batch_size: int = 8) -> dict:
    """{"n", "acc", "acc_norm"} of a loaded model (on any device) on HellaSwag examples (see `read_hellaswag`).

    Under a multi-process launch (accelerate, torchrun, Trainer with DDP) EVERY process must call it: each scores
    its share of the examples and all of them get the full result.
    """
    if not examples:
        raise DataError("no HellaSwag examples to score")
    share = list(_this_process_share(examples))
    with _evaluation_mode(model):
        loss_sums, token_counts = hellaswag_losses(model, tokenizer, share, batch_size)
    labels = [example["label"] for example in share]
    scored = gather_object(list(zip(loss_sums.tolist(), token_counts.tolist(), labels)))
    sums, counts, labels = zip(*scored)
    result = load_metric("hellaswag").compute(loss_sums=sums, token_counts=counts, references=labels)
    return {"n": len(scored), **result}


def next_token_targets(batch: dict) -> torch.Tensor:
    """(B, T) the token each position of `input_ids` (B, T) predicts: the next one in its block and, at the last
    position, the block's `next_token` when it has one (validation blocks do, so that every token of a split after
    its first is predicted exactly once, as in build-nanogpt's loop), else nothing (-100)."""
    input_ids = batch["input_ids"]
    last = batch.get("next_token")
    if last is None:
        last = torch.full_like(input_ids[:, :1], -100)
    return torch.cat([input_ids[:, 1:], last.view(-1, 1).to(input_ids)], dim=1)


SUMS = ("loss_sum", "tokens", "text_loss_sum", "text_bytes", "blocks")  # what next_token_sums adds up


@torch.no_grad()
def _batch_sums(model, batch: dict, token_bytes: torch.Tensor | None) -> torch.Tensor:
    """(5,) float64, see SUMS: the cross-entropy (nats) of every predicted token, their number, the cross-entropy
    of the tokens that are text (not special) and the UTF-8 bytes they decode to, and the blocks."""
    input_ids = batch["input_ids"]
    targets = next_token_targets(batch)  # (B, T)
    logits = model(input_ids=input_ids).logits  # (B, T, V)
    losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none").double()  # (B*T,)
    predicted = targets.flatten() != -100
    if token_bytes is None:  # no tokenizer to measure bytes with: no bits per byte
        text_bytes = torch.zeros_like(losses, dtype=torch.long)
    else:
        text_bytes = token_bytes[targets.flatten().clamp(min=0)] * predicted  # (B*T,); 0 for special tokens
    is_text = text_bytes > 0
    return torch.stack([losses.sum(), predicted.sum(), losses[is_text].sum(), text_bytes.sum(),
                        torch.tensor(len(input_ids), device=losses.device)]).double()


def next_token_sums(model, batches: Iterable[dict], token_bytes: torch.Tensor | None,
                    context=nullcontext) -> dict:
    """SUMS of next-token prediction over `batches` (dicts of `input_ids` (B, T) and optionally `next_token` (B,)),
    added up over every process of a multi-process launch, which must all call it, each with its own batches.

    Processes may hold different numbers of batches (or none: fewer validation blocks than processes): each forward
    is taken in step with the others, and a process that has run out runs one token through the model instead, as
    FSDP needs every process in every forward. `context` wraps each forward (e.g. Trainer's autocast)."""
    device = next(model.parameters()).device
    token_bytes = token_bytes.to(device) if token_bytes is not None else None
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    sums = torch.zeros(len(SUMS), dtype=torch.float64, device=device)
    batches = iter(batches)
    while True:
        batch = next(batches, None)
        if distributed:
            any_left = torch.tensor([batch is not None], dtype=torch.int32, device=device)
            torch.distributed.all_reduce(any_left, op=torch.distributed.ReduceOp.MAX)
            if not any_left.item():
                break
        elif batch is None:
            break
        with context():
            if batch is None:
                model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))  # in step with the others
                continue
            sums += _batch_sums(model, {key: value.to(device) for key, value in batch.items()}, token_bytes)
    if distributed:
        torch.distributed.all_reduce(sums)
    return dict(zip(SUMS, sums.tolist()))


def loss_metrics(sums: dict) -> dict:
    """{"n" (blocks), "loss" (nats per predicted token), "perplexity", "bpb" (bits per byte of text)} of
    next_token_sums, through the local perplexity metric."""
    if not sums["tokens"]:
        raise DataError("no validation blocks to evaluate")
    result = load_metric("perplexity").compute(
        loss_sums=[sums["loss_sum"]], token_counts=[int(sums["tokens"])],
        text_loss_sums=[sums["text_loss_sum"]], byte_counts=[int(sums["text_bytes"])],
    )
    if not sums["text_bytes"]:
        del result["bpb"]  # no bytes measured (no tokenizer given)
    return {"n": int(sums["blocks"]), **result}


def evaluate_perplexity(model, blocks: Iterable[dict], token_bytes: torch.Tensor, batch_size: int = 8) -> dict:
    """loss_metrics of next-token prediction over blocks of `input_ids` (all one length, with `next_token` or
    not), e.g. a validation split. Under a multi-process launch every process must call it, as `score_hellaswag`."""
    def batches():
        for batch in _batches(process_share(blocks), batch_size):
            yield {key: torch.stack([torch.as_tensor(block[key]) for block in batch]).long() for key in batch[0]
                   if key in ("input_ids", "next_token")}

    with _evaluation_mode(model):
        return loss_metrics(next_token_sums(model, batches(), token_bytes))
