"""Gradient accumulation through Trainer's num_items_in_batch path equals one full batch."""

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, default_data_collator

from recipe import GPTConfig, GPTForCausalLM

VALID_TOKENS_PER_ROW = (3, 6, 10, 15)  # any two rows hold a different number of targets than the other two


def _dataset(seq_len: int = 16) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    rows = {"input_ids": [], "labels": []}
    for valid in VALID_TOKENS_PER_ROW:
        input_ids = torch.randint(0, 100, (seq_len,), generator=generator)
        labels = input_ids.clone()
        labels[: seq_len - valid] = -100  # the first positions are context only
        rows["input_ids"].append(input_ids.tolist())
        rows["labels"].append(labels.tolist())
    return Dataset.from_dict(rows)


def _model(loss_chunk_size: int = 0) -> GPTForCausalLM:
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=16, loss_chunk_size=loss_chunk_size)
    return GPTForCausalLM(config)


def _one_sgd_step(tmp_path, batch_size: int, accumulation: int, loss_chunk_size: int) -> dict[str, torch.Tensor]:
    model = _model(loss_chunk_size)
    args = TrainingArguments(
        output_dir=str(tmp_path / f"run-{batch_size}x{accumulation}"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1.0,
        lr_scheduler_type="constant",
        optim="sgd",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping: the step is exactly -lr * gradient
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        seed=0,
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    Trainer(model=model, args=args, train_dataset=_dataset(), data_collator=default_data_collator).train()
    return {name: before[name] - p.detach() for name, p in model.named_parameters()}  # = the gradient


@pytest.mark.parametrize("loss_chunk_size", [0, 7], ids=["library-loss", "chunked-loss"])
def test_two_unequal_micro_batches_equal_the_full_batch(tmp_path, loss_chunk_size):
    full = _one_sgd_step(tmp_path, batch_size=4, accumulation=1, loss_chunk_size=loss_chunk_size)
    accumulated = _one_sgd_step(tmp_path, batch_size=2, accumulation=2, loss_chunk_size=loss_chunk_size)
    for name in full:
        assert (full[name] - accumulated[name]).abs().max().item() <= 1e-6, name  # measured <= 6e-8 (AVX-512, AVX2)


def test_averaging_micro_batch_means_would_differ():
    """The check above has teeth: the naive mean of per-micro-batch means is measurably different."""
    model = _model()
    batch = default_data_collator([row for row in _dataset()])
    model(**batch).loss.backward()
    full = model.transformer.wte.weight.grad.clone()
    model.zero_grad()
    for half in (slice(0, 2), slice(2, 4)):
        (model(input_ids=batch["input_ids"][half], labels=batch["labels"][half]).loss / 2).backward()
    assert (model.transformer.wte.weight.grad - full).abs().max().item() > 1e-4
