"""A GPTTrainer concern: tokens/s, MFU and ETA in every training log, and tokens counted on the host.

Trainer counts the tokens it has seen with a device sync per micro-batch; every process here holds a (B, T) block
batch of the same shape, so the count is the product of shapes. MFU is achieved FLOP/s (recipe.flops, 6N + attention
per token) over the devices' bf16 peak, for GPUs in recipe.flops' table or with `peak_tflops`.

A mixin over transformers' Trainer (see recipe.trainer for why mixins).
"""

import time

import torch
from transformers import Trainer

from .flops import model_flops_per_token, peak_flops


class ThroughputLogging(Trainer):
    def _init_throughput(self, peak_tflops: float | None) -> None:
        self._last_log = None  # (time, tokens seen, step) of the previous training log
        self.seq_len = None  # learnt from the first batch
        self.peak_flops_per_device = peak_tflops * 1e12 if peak_tflops else None
        if self.peak_flops_per_device is None and self.args.device.type == "cuda":
            self.peak_flops_per_device = peak_flops(torch.cuda.get_device_name(self.args.device))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "learning_rate" in logs:
            self._add_throughput(logs)
        super().log(logs, start_time)

    def _add_throughput(self, logs: dict[str, float]) -> None:
        now, tokens, step = time.perf_counter(), self.state.num_input_tokens_seen, self.state.global_step
        if self._last_log is not None and now > self._last_log[0] and step > self._last_log[2]:
            tokens_per_second = (tokens - self._last_log[1]) / (now - self._last_log[0])
            logs["tokens_per_second"] = round(tokens_per_second, 1)
            seconds_per_step = (now - self._last_log[0]) / (step - self._last_log[2])
            logs["eta_seconds"] = round(seconds_per_step * max(self.state.max_steps - step, 0))
            if self.peak_flops_per_device and self.seq_len:
                achieved = tokens_per_second * model_flops_per_token(self.accelerator.unwrap_model(self.model),
                                                                     self.seq_len)
                logs["mfu"] = round(achieved / (self.peak_flops_per_device * self.args.world_size), 4)
        self._last_log = (now, tokens, step)

    def _track_num_input_tokens(self, inputs) -> None:
        """Count tokens without a device sync: every process holds a (B, T) block batch of the same shape."""
        if self.args.include_num_input_tokens_seen == "no":
            return
        input_ids = inputs["input_ids"]
        self.seq_len = input_ids.shape[-1]
        self.state.num_input_tokens_seen += input_ids.numel() * self.args.world_size
