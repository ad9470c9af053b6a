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
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState
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


def evaluate_perplexity(model, blocks: Iterable[dict], batch_size: int = 8) -> dict:
    """{"n" (blocks), "loss", "perplexity"} of next-token prediction over blocks of `input_ids` (all one length),
    e.g. a validation split. Under a multi-process launch every process must call it, as `score_hellaswag`."""
    loss_sums, token_counts = [], []
    with _evaluation_mode(model), torch.no_grad():
        for batch in _batches(_this_process_share(blocks), batch_size):
            input_ids = torch.stack([torch.as_tensor(block["input_ids"]) for block in batch]).to(model.device)
            logits = model(input_ids).logits  # (B, T, V)
            token_losses = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="none"
            )  # (B * (T - 1),): logits at t predict token t + 1
            loss_sums += token_losses.view(len(batch), -1).sum(1).tolist()
            token_counts += [input_ids.shape[1] - 1] * len(batch)
    scored = gather_object(list(zip(loss_sums, token_counts)))
    if not scored:
        raise DataError("no validation blocks to evaluate")
    sums, counts = zip(*scored)
    return {"n": len(scored), **load_metric("perplexity").compute(loss_sums=sums, token_counts=counts)}
