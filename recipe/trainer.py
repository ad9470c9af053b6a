"""GPTTrainer: transformers' Trainer with the few overrides pre-training GPT-2 needs.

- the optimizer and schedule of recipe.optimization: weight decay on exactly the 2-D tensors (matmuls and
  embeddings), as nanoGPT / llm.c do, or Muon for the blocks' matrices with AdamW for the rest; the GPT-2
  reproductions' schedules by name, beside transformers' own;
- a guard at every optimizer step, before the optimizer applies it: a non-finite loss or gradient stops the run
  (or skips that batch), and so does a gradient norm of exactly zero (no gradient reached the parameters: the run
  would train nothing), so nothing of that step is applied or saved;
- throughput (tokens/s), MFU, ETA and perplexity in the logs;
- checkpoints written under a staging name and renamed into place (recipe.checkpoints), so `checkpoint-N` is
  always complete; the run's card and loss plot at the end (recipe.card);
- tokens counted on the host (fixed-size blocks), without the per-micro-batch device sync Trainer uses;
- data that resumes where it stopped: each checkpoint records the fingerprint of the prepared data (checked on
  resume) or, when streaming, every process's stream position (restored on resume instead of replaying the stream).
"""

import json
import math
import shutil
import time
from pathlib import Path

import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
from transformers import Trainer

from .callbacks import PreemptionCallback
from .card import write_model_card
from .checkpoints import (
    PLOT_FILE,
    TRAIN_DATA_FILE,
    checkpoint_name,
    publish_checkpoint,
    rotate,
    staging_dir,
    stream_position_file,
)
from .curves import plot_runs
from .errors import DataError, TrainingStopped
from .flops import model_flops_per_token, peak_flops
from .optimization import MUON, SCHEDULES, create_muon_optimizer, create_schedule, decay_parameter_names
from .stream import BlockStream


class GPTTrainer(Trainer):
    def __init__(self, *args, nonfinite_loss: str = "stop", peak_tflops: float | None = None,
                 data_fingerprint: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_fingerprint = data_fingerprint  # of the prepared data trained on; None for other data
        if isinstance(self.train_dataset, BlockStream):
            self.args.ignore_data_skip = True  # a stream resumes from its recorded position, never by re-reading
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
        return decay_parameter_names(model)

    def create_optimizer(self, model=None):
        """optim=muon: Muon for the blocks' matrices with AdamW for the rest (recipe.optimization); any other name
        through Trainer, with the recipe's decay groups."""
        if self.optimizer is None and self.args.optim == MUON:
            self.optimizer = create_muon_optimizer(self.model if model is None else model, self.args)
        return super().create_optimizer(model)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The recipe's schedules by name (recipe.optimization.SCHEDULES); transformers' through Trainer."""
        if self.lr_scheduler is None and self.args.lr_scheduler_type in SCHEDULES:
            self.lr_scheduler = create_schedule(
                self.args.lr_scheduler_type, optimizer or self.optimizer,
                warmup_steps=self.args.get_warmup_steps(num_training_steps), max_steps=num_training_steps,
                lr_scheduler_kwargs=self.args.lr_scheduler_kwargs,
            )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if isinstance(self.train_dataset, BlockStream):
            self.train_dataset.mark_consumed(len(inputs["input_ids"]))
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss)
        self._step_is_finite = finite if self._step_is_finite is None else self._step_is_finite & finite
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
        """The one host sync per optimizer step: were the losses of every micro-batch finite on every process, and
        is the gradient norm (computed by the clipping, the same on every process) finite and above zero?"""
        loss_is_finite, self._step_is_finite = self._step_is_finite, None
        if grad_norm is None:  # DeepSpeed may not report one: only the losses can be checked
            grad_norm = 1.0
        norm = torch.as_tensor(grad_norm, dtype=torch.float32, device=loss_is_finite.device)
        flags = torch.stack([loss_is_finite, torch.isfinite(norm), norm > 0]).to(torch.int32)  # (3,)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        loss_is_finite, norm_is_finite, gradient_reached = flags.tolist()
        step = self.state.global_step + 1
        if not (loss_is_finite and norm_is_finite):
            if self.nonfinite_loss == "skip":
                # Optimizers leave parameters whose .grad is None untouched (no moment or step-count update either).
                model.zero_grad(set_to_none=True)
                self.skipped_batches.append(step)
                self.log({"skipped_nonfinite_batches": len(self.skipped_batches)})
                return
            self._stop(f"non-finite {'loss' if not loss_is_finite else 'gradient'} at step {step}")
        if not gradient_reached:
            self._stop(
                f"the gradient norm is exactly 0 at step {step}: no gradient reached the parameters, so training "
                f"would change nothing"
            )

    def _stop(self, reason: str) -> None:
        """End training before the optimizer step: close what training opened (the progress bar, loggers, signal
        handlers) so that the error line the command prints stands on its own, then raise."""
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        raise TrainingStopped(reason)

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

    # -- output -----------------------------------------------------------------------------------------------

    def final_metrics(self) -> dict:
        """The evaluation of the last step: that of its scheduled evaluation when there was one, else a new one."""
        for entry in reversed(self.state.log_history):
            if "eval_loss" in entry and entry["step"] == self.state.global_step:
                return {key: value for key, value in entry.items() if key.startswith("eval_") or key == "epoch"}
        return self.evaluate()

    def create_model_card(self, *args, **kwargs) -> None:
        """The recipe's card (data, hyperparameters, results, loss plot) instead of Trainer's generic one."""
        if self.is_world_process_zero():
            plot_runs([self.args.output_dir], f"{self.args.output_dir}/{PLOT_FILE}")
            write_model_card(self.args.output_dir)

    # -- checkpoints ------------------------------------------------------------------------------------------

    def _get_output_dir(self, trial) -> str:
        return getattr(self, "_staging_output_dir", None) or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer writes `checkpoint-N` into a staging directory; once every process is done, it is published."""
        run_dir = super()._get_output_dir(trial)
        staging = staging_dir(run_dir, self.state.global_step)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
            self._save_data_position(staging / checkpoint_name(self.state.global_step))
        finally:
            self._staging_output_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = publish_checkpoint(run_dir, self.state.global_step)
            if self.state.best_model_checkpoint and str(staging) in self.state.best_model_checkpoint:
                self.state.best_model_checkpoint = str(final)
            rotate(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    # -- data: every process reads its own, and a resume reads on from where the checkpoint stopped -----------------

    def get_train_dataloader(self):
        if not isinstance(self.train_dataset, BlockStream):
            return super().get_train_dataloader()  # map-style: Trainer's seeded sampler, sharded by accelerate
        # The stream is this process's own part already (split_dataset_by_node). Given to accelerator.prepare, it
        # would be read by rank 0 and dispatched (accelerate's default for an IterableDataset) or, with dispatching
        # off, split a second time (every process keeping a slice of its own part). So it is prepared as the loader
        # of one process, read here without workers: the stream's positions are this process's to record.
        loader = DataLoader(self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
                            pin_memory=self.args.dataloader_pin_memory)
        return prepare_data_loader(loader, self.args.device, num_processes=1, process_index=0, put_on_device=True,
                                   dispatch_batches=False)

    def _save_data_position(self, checkpoint: Path) -> None:
        """Beside the weights: the prepared data's fingerprint (main process) and each process's stream position."""
        checkpoint.mkdir(parents=True, exist_ok=True)
        if isinstance(self.train_dataset, BlockStream):
            position = {"process": self.args.process_index, "processes": self.args.world_size,
                        **self.train_dataset.position()}
            (checkpoint / stream_position_file(self.args.process_index)).write_text(json.dumps(position) + "\n")
        if self.data_fingerprint is not None and self.args.should_save:
            (checkpoint / TRAIN_DATA_FILE).write_text(json.dumps({"fingerprint": self.data_fingerprint}) + "\n")

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is not None:
            self._restore_data_position(Path(resume_from_checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _restore_data_position(self, checkpoint: Path) -> None:
        """Refuse to resume on other data than the checkpoint's; put each process's stream where it stood."""
        recorded_file = checkpoint / TRAIN_DATA_FILE
        recorded = json.loads(recorded_file.read_text())["fingerprint"] if recorded_file.is_file() else None
        if recorded != self.data_fingerprint:
            def describe(fingerprint):
                return f"the prepared data {fingerprint}" if fingerprint else "data that was not prepared"
            raise DataError(
                f"{checkpoint} was trained on {describe(recorded)}, but prepared_dir now gives "
                f"{describe(self.data_fingerprint)}: resume on the data it was trained on, or set overwrite_output_dir "
                f"to start over"
            )
        if isinstance(self.train_dataset, BlockStream):
            rank, processes = self.args.process_index, self.args.world_size
            path = checkpoint / stream_position_file(rank)
            position = json.loads(path.read_text()) if path.is_file() else {}
            if position.get("processes") != processes:
                saved_by = f"{position['processes']} processes" if position else "a run that did not stream this way"
                raise DataError(
                    f"{checkpoint} holds the stream positions of {saved_by}, and this launch has {processes}: resume "
                    f"with as many processes as it was saved by (each process streams its own documents)"
                )
            self.train_dataset.load_position(position)
