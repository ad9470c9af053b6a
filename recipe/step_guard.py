"""A GPTTrainer concern: the step guard, one host sync per optimizer step before the optimizer applies it.

A non-finite loss or gradient stops the run (or skips that step), and so does a gradient norm of exactly zero (no
gradient reached the parameters: the run would train nothing), so nothing of that step is applied or saved;
optionally a loss or gradient norm far above its recent history (recipe.spikes) skips the step or stops the run.
Which steps were skipped, and the detector's windows, are saved with each checkpoint and restored on resume.

A mixin over transformers' Trainer (see recipe.trainer for why mixins).
"""

import json
import math
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor
from transformers import Trainer
from transformers.utils import logging

from .checkpoints import STEP_GUARD_FILE
from .errors import TrainingStopped
from .spikes import SpikeDetector

logger = logging.get_logger("recipe")


class StepGuard(Trainer):
    def _init_step_guard(self, nonfinite_loss: str, spike_guard: str, spike_zscore: float, spike_window: int) -> None:
        self.nonfinite_loss = nonfinite_loss
        self.spike_guard = spike_guard
        self.spike_detector = SpikeDetector(spike_window, spike_zscore) if spike_guard != "off" else None
        self.skipped_steps: dict[str, list[int]] = {"nonfinite": [], "spike": []}  # the optimizer steps skipped, by cause
        # This process's part of the optimizer step's loss, on the device, summed over its micro-batches: the number
        # of non-finite micro-batch losses, and the sum of the losses `training_step` returns (what Trainer logs).
        self._step_nonfinite_losses = None
        self._step_loss = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        return self._add_micro_batch_loss(super().training_step(model, inputs, num_items_in_batch))

    def _add_micro_batch_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Add a micro-batch's loss to the optimizer step's, on the device (no sync); return the loss to log."""
        finite = torch.isfinite(loss)
        nonfinite = (~finite).to(torch.float32)
        first = self._step_loss is None
        self._step_nonfinite_losses = nonfinite if first else self._step_nonfinite_losses + nonfinite
        self._step_loss = loss.float() if first else self._step_loss + loss.float()
        if self.nonfinite_loss == "skip":  # a skipped batch adds 0 to the logged loss instead of making it NaN
            loss = torch.where(finite, loss, torch.zeros_like(loss))
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        """Trainer calls this once per optimizer step, after clipping and before `optimizer.step()`: the place to
        decide whether the step may be applied."""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        self._guard_step(model, grad_norm)
        return grad_norm

    def _guard_step(self, model, grad_norm) -> None:
        """The one host sync per optimizer step: were the losses of every micro-batch finite on every process, is the
        gradient norm (computed by the clipping) finite and above zero, and are the step's loss and gradient norm
        far above their recent history?

        The step's loss is the one Trainer logs: `training_step` returns each micro-batch's loss already divided by
        the step's target tokens (`num_items_in_batch`, over every process) and multiplied by the number of
        processes, and Trainer logs their sum over micro-batches, averaged over processes. Here that is one SUM
        all-reduce of [non-finite micro-batches, loss sum, gradient norm], divided by the processes where a mean is
        meant, so every process decides from the same numbers."""
        nonfinite_losses, loss = self._step_nonfinite_losses, self._step_loss
        self._step_nonfinite_losses = self._step_loss = None
        norm_reported = grad_norm is not None  # DeepSpeed may not report one: only the losses can be checked
        if isinstance(grad_norm, DTensor):  # FSDP2: the norm over every shard, already reduced (replicated)
            grad_norm = grad_norm.full_tensor()
        norm = torch.as_tensor(grad_norm if norm_reported else 1.0, dtype=torch.float32, device=loss.device)
        sums = torch.stack([nonfinite_losses, loss, norm.reshape(())])  # (3,)
        processes = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM)
            processes = torch.distributed.get_world_size()
        nonfinite_losses, loss, norm = sums.tolist()
        loss, norm = loss / processes, norm / processes
        step = self.state.global_step + 1
        if nonfinite_losses or not math.isfinite(norm):
            if self.nonfinite_loss == "skip":
                self._skip_step(model, "nonfinite")
                return
            self._stop(f"non-finite {'loss' if nonfinite_losses else 'gradient'} at step {step}")
        if norm == 0:
            self._stop(
                f"the gradient norm is exactly 0 at step {step}: no gradient reached the parameters, so training "
                f"would change nothing"
            )
        if self.spike_detector is None:
            return
        spike = self.spike_detector.observe(loss=loss, grad_norm=norm if norm_reported else None)
        if spike is None:
            return
        description = f"{spike.describe(self.spike_detector.window)} (spike_zscore={self.spike_detector.zscore:g})"
        if self.spike_guard == "stop":
            self._stop(f"loss spike at step {step}: {description}")
        if self.is_world_process_zero():
            logger.warning(f"skipping step {step}: {description}")
        self._skip_step(model, "spike")

    def _skip_step(self, model, cause: str) -> None:
        """Leave this optimizer step out as if its batch were not in the data: no gradient applied and the optimizer
        state untouched (optimizers leave parameters whose .grad is None alone: no moment or step-count update), and
        the learning-rate schedule does not advance. Trainer's step count and the data still move on.

        Trainer calls `lr_scheduler.step()` right after `optimizer.step()`; stepping back first keeps the learning
        rate where it was. The recipe's schedules (recipe.optimization) and transformers' (LambdaLR) are functions
        of `last_epoch` alone, so this is exact."""
        model.zero_grad(set_to_none=True)
        self.lr_scheduler.last_epoch -= 1
        self.skipped_steps[cause].append(self.state.global_step + 1)

    def _stop(self, reason: str) -> None:
        """End training before the optimizer step: close what training opened (the progress bar, loggers, signal
        handlers) so that the error line the command prints stands on its own, then raise."""
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        raise TrainingStopped(reason)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "learning_rate" in logs:
            self._add_skipped_steps(logs)
        super().log(logs, start_time)

    def _add_skipped_steps(self, logs: dict[str, float]) -> None:
        """Every training log counts the steps skipped so far, for each guard that skips."""
        if self.nonfinite_loss == "skip":
            logs["skipped_nonfinite_batches"] = len(self.skipped_steps["nonfinite"])
        if self.spike_guard == "skip":
            logs["skipped_spike_steps"] = len(self.skipped_steps["spike"])

    def _save_step_guard(self, checkpoint: Path) -> None:
        """Beside the weights (main process; every process holds the same state, decided from all-reduced values)."""
        if not self.args.should_save:
            return
        checkpoint.mkdir(parents=True, exist_ok=True)
        detector = self.spike_detector.state_dict() if self.spike_detector is not None else None
        state = {"skipped_steps": self.skipped_steps, "spike_detector": detector}
        (checkpoint / STEP_GUARD_FILE).write_text(json.dumps(state) + "\n")

    def _restore_step_guard(self, checkpoint: Path) -> None:
        """The skipped steps and the detector's windows as they stood at the checkpoint (a checkpoint without them,
        or of a run with the guard off, starts the detector's windows afresh)."""
        path = checkpoint / STEP_GUARD_FILE
        if not path.is_file():
            return
        state = json.loads(path.read_text())
        self.skipped_steps = {cause: list(steps) for cause, steps in state["skipped_steps"].items()}
        if self.spike_detector is not None and state["spike_detector"] is not None:
            self.spike_detector.load_state_dict(state["spike_detector"])
