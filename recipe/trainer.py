"""GPTTrainer: transformers' Trainer with the few overrides pre-training GPT-2 needs.

- weight decay on exactly the 2-D tensors (matmuls and embeddings), as nanoGPT / llm.c do;
- throughput (tokens/s), MFU, ETA and perplexity in the logs;
- a non-finite loss is caught at the step where it happens: the run stops (or skips that batch) before the
  optimizer applies it, so NaN weights are never written;
- checkpoints are written to a staging directory and renamed into place, so `checkpoint-N` is always complete;
- tokens are counted on the host (fixed-size blocks), without the per-micro-batch device sync Trainer uses.
"""

import math
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .callbacks import PreemptionCallback
from .card import write_model_card
from .checkpoints import STAGING_PREFIX, fsync_tree, write_checksums
from .modeling_gpt import GPTForCausalLM
from .plot import PLOT_FILE, plot_runs


# Dense bf16 peak FLOP/s per device, from NVIDIA's datasheets (without sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIE": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN or infinite loss; nothing after the last good step was saved."""


def flops_per_token(model: GPTForCausalLM, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls with parameters (forward + backward) plus 12*L*H*Q*T for
    attention (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT's estimate_mfu). N excludes the position
    embedding, a lookup; the tied token embedding counts once, as the LM head's matmul."""
    config = model.config
    n_params = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    head_dim = config.n_embd // config.n_head
    return 6 * n_params + 12 * config.n_layer * config.n_head * head_dim * seq_len


def peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a GPU from its name, or None when it is not in the table."""
    name = device_name.upper()
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


class GPTTrainer(Trainer):
    def __init__(self, *args, nonfinite_loss: str = "stop", peak_tflops: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.preemption = next(
            (callback for callback in self.callback_handler.callbacks if isinstance(callback, PreemptionCallback)), None
        )
        self.nonfinite_loss = nonfinite_loss
        self.skipped_batches: list[int] = []
        self._step_is_finite = None  # device bool, AND-ed over the micro-batches of one optimizer step
        self._last_log = None  # (time, tokens seen, step) of the previous training log
        self.seq_len = None  # learnt from the first batch
        self.peak_flops_per_device = peak_tflops * 1e12 if peak_tflops else None
        if self.peak_flops_per_device is None and self.args.device.type == "cuda":
            self.peak_flops_per_device = peak_flops(torch.cuda.get_device_name(self.args.device))

    # -- optimisation ----------------------------------------------------------------------------------------

    def get_decay_parameter_names(self, model) -> list[str]:
        """Decay every 2-D tensor (matmul weights, embeddings); never biases or LayerNorm gains."""
        return [name for name, parameter in model.named_parameters() if parameter.dim() >= 2]

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss)
        self._step_is_finite = finite if self._step_is_finite is None else self._step_is_finite & finite
        if self.accelerator.sync_gradients:  # the last micro-batch: the optimizer step comes next
            self._guard_nonfinite(model)
        if self.nonfinite_loss == "skip":  # a skipped batch adds 0 to the logged loss instead of making it NaN
            loss = torch.where(finite, loss, torch.zeros_like(loss))
        return loss

    def _guard_nonfinite(self, model) -> None:
        """The one host sync per optimizer step: was every micro-batch's loss finite, on every process?"""
        step_is_finite, self._step_is_finite = self._step_is_finite.to(torch.int32), None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(step_is_finite, op=torch.distributed.ReduceOp.MIN)
        if bool(step_is_finite):
            return
        step = self.state.global_step + 1
        if self.nonfinite_loss == "skip":
            # Optimizers leave parameters whose .grad is None untouched (no moment or step-count update either).
            model.zero_grad(set_to_none=True)
            self.skipped_batches.append(step)
            self.log({"skipped_nonfinite_batches": len(self.skipped_batches)})
            return
        raise NonFiniteLossError(f"non-finite loss at step {step}")

    # -- logging ----------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 700.0))
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
            if isinstance(self.model, GPTForCausalLM) and self.peak_flops_per_device and self.seq_len:
                achieved = tokens_per_second * flops_per_token(self.model, self.seq_len)
                logs["mfu"] = round(achieved / (self.peak_flops_per_device * self.args.world_size), 4)
        self._last_log = (now, tokens, step)

    def _track_num_input_tokens(self, inputs) -> None:
        """Count tokens without a device sync: every process holds a (B, T) block batch of the same shape."""
        if self.args.include_num_input_tokens_seen == "no":
            return
        input_ids = inputs["input_ids"]
        self.seq_len = input_ids.shape[-1]
        self.state.num_input_tokens_seen += input_ids.numel() * self.args.world_size

    # -- output -----------------------------------------------------------------------------------------------

    def create_model_card(self, *args, **kwargs) -> None:
        """The recipe's card (data, hyperparameters, results, loss plot) instead of Trainer's generic one."""
        if not self.is_world_process_zero():
            return
        output_dir = Path(self.args.output_dir)
        if (output_dir / "trainer_state.json").is_file():
            plot_runs([output_dir], output_dir / PLOT_FILE)
        write_model_card(output_dir)

    # -- checkpoints ------------------------------------------------------------------------------------------

    def _get_output_dir(self, trial) -> str:
        return getattr(self, "_staging_output_dir", None) or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N` under a staging name, then rename it into place once every process is done."""
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = run_dir / f"{STAGING_PREFIX}{name}"
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_output_dir = str(staging_root)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_output_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            write_checksums(staging_root / name)  # lets a resume name a file damaged later
            fsync_tree(staging_root)  # complete on disk before it gets its final name
            final = run_dir / name
            if final.exists():  # a re-save of the same step (e.g. the end of a resumed, finished run)
                shutil.rmtree(final)
            os.rename(staging_root / name, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            if self.state.best_model_checkpoint and STAGING_PREFIX in self.state.best_model_checkpoint:
                self.state.best_model_checkpoint = str(final)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()
