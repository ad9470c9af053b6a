"""recipe/throughput.py on its own: tokens counted on the host, and tokens/s, ETA and MFU from two training logs."""

from types import SimpleNamespace

import pytest
import torch

from recipe import GPTConfig, GPTForCausalLM
from recipe.flops import model_flops_per_token
from recipe.throughput import ThroughputLogging


def throughput(world_size: int = 2, peak_tflops: float | None = 100.0) -> ThroughputLogging:
    """The mixin's state and what it reads of a Trainer, without a Trainer."""
    logging = object.__new__(ThroughputLogging)
    logging.args = SimpleNamespace(world_size=world_size, include_num_input_tokens_seen="yes",
                                   device=torch.device("cpu"))
    logging.state = SimpleNamespace(num_input_tokens_seen=0, global_step=0, max_steps=100)
    logging.model = GPTForCausalLM(GPTConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=100, n_positions=16))
    logging.accelerator = SimpleNamespace(unwrap_model=lambda model: model)
    logging._init_throughput(peak_tflops)
    return logging


def test_tokens_are_counted_from_shapes_on_every_process():
    logging = throughput(world_size=2)
    for _ in range(3):
        logging._track_num_input_tokens({"input_ids": torch.zeros(4, 16, dtype=torch.long)})
    assert logging.state.num_input_tokens_seen == 3 * 4 * 16 * 2 and logging.seq_len == 16


def test_tokens_per_second_eta_and_mfu_come_from_the_last_two_logs(monkeypatch):
    logging = throughput(world_size=2, peak_tflops=100.0)
    clock = iter([10.0, 14.0])
    monkeypatch.setattr("recipe.throughput.time.perf_counter", lambda: next(clock))
    logging.seq_len = 16
    first = {}
    logging._add_throughput(first)
    assert first == {}  # nothing to measure against yet
    logging.state.num_input_tokens_seen, logging.state.global_step = 8_000, 20
    second = {}
    logging._add_throughput(second)
    assert second["tokens_per_second"] == 2_000.0  # 8,000 tokens in 4 s
    assert second["eta_seconds"] == 16  # 0.2 s a step, 80 steps left
    flops = 2_000.0 * model_flops_per_token(logging.model, 16)
    assert second["mfu"] == pytest.approx(round(flops / (100e12 * 2), 4))
