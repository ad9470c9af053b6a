"""GPTTrainer: transformers' Trainer with the few overrides pre-training GPT-2 needs.

- the optimizer and schedule of recipe.optimization: weight decay on exactly the 2-D tensors (matmuls and
  embeddings), as nanoGPT / llm.c do, or Muon for the blocks' matrices with AdamW for the rest; the GPT-2
  reproductions' schedules by name, beside transformers' own;
- a guard at every optimizer step, before the optimizer applies it: a non-finite loss or gradient stops the run
  (or skips that step), and so does a gradient norm of exactly zero (no gradient reached the parameters: the run
  would train nothing), so nothing of that step is applied or saved; optionally a loss or gradient norm far above
  its recent history (recipe.spikes) skips the step or stops the run too;
- evaluation that predicts every validation token once and reports bits per byte beside the loss, each process
  reading its own share of the blocks (streamed ones too; see `evaluation_loop`);
- throughput (tokens/s), MFU and ETA in the logs;
- checkpoints written under a staging name and renamed into place (recipe.checkpoints), so `checkpoint-N` is
  always complete; the run's card and loss plot at the end (recipe.card);
- tokens counted on the host (fixed-size blocks), without the per-micro-batch device sync Trainer uses;
- data that resumes where it stopped: each checkpoint records the fingerprint of the prepared data (checked on
  resume) or, when streaming, every process's stream position (restored on resume instead of replaying the stream);
- a resume only by the launch that saved the checkpoint (its number of processes and sharding, recorded beside it);
- FSDP on CPU processes too (accelerate runs DDP there instead), and gathered state dicts saved as the unsharded
  model saves itself, so an FSDP checkpoint is the same complete model as a DDP one.
"""

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from accelerate.data_loader import prepare_data_loader
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput
from transformers.utils import logging

from .callbacks import PreemptionCallback
from .card import write_model_card
from .checkpoints import (
    LAUNCH_FILE,
    PLOT_FILE,
    STEP_GUARD_FILE,
    TRAIN_DATA_FILE,
    check_same_launch,
    checkpoint_name,
    launch_record,
    publish_checkpoint,
    rotate,
    staging_dir,
    stream_position_file,
)
from .curves import plot_runs
from .errors import DataError, TrainingStopped
from .flops import model_flops_per_token, peak_flops
from .optimization import MUON, SCHEDULES, create_muon_optimizer, create_schedule, decay_parameter_names
from .scoring import loss_metrics, next_token_sums, process_share
from .spikes import SpikeDetector
from .stream import BlockStream
from .tokenization import token_byte_counts

logger = logging.get_logger("recipe")


class GPTTrainer(Trainer):
    def __init__(self, *args, nonfinite_loss: str = "stop", spike_guard: str = "off", spike_zscore: float = 7.0,
                 spike_window: int = 128, peak_tflops: float | None = None, data_fingerprint: str | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.data_fingerprint = data_fingerprint  # of the prepared data trained on; None for other data
        if isinstance(self.train_dataset, BlockStream):
            self.args.ignore_data_skip = True  # a stream resumes from its recorded position, never by re-reading
        self.preemption = next(
            (callback for callback in self.callback_handler.callbacks if isinstance(callback, PreemptionCallback)), None
        )
        self.nonfinite_loss = nonfinite_loss
        self.spike_guard = spike_guard
        self.spike_detector = SpikeDetector(spike_window, spike_zscore) if spike_guard != "off" else None
        self.skipped_steps: dict[str, list[int]] = {"nonfinite": [], "spike": []}  # the optimizer steps skipped, by cause
        # This process's part of the optimizer step's loss, on the device, summed over its micro-batches: the number
        # of non-finite micro-batch losses, and the sum of the losses `training_step` returns (what Trainer logs).
        self._step_nonfinite_losses = None
        self._step_loss = None
        self._last_log = None  # (time, tokens seen, step) of the previous training log
        self.seq_len = None  # learnt from the first batch
        self.token_bytes = None  # the UTF-8 bytes of each token id, for bits per byte; from the tokenizer, once
        self.peak_flops_per_device = peak_tflops * 1e12 if peak_tflops else None
        if self.peak_flops_per_device is None and self.args.device.type == "cuda":
            self.peak_flops_per_device = peak_flops(torch.cuda.get_device_name(self.args.device))

    # -- distribution -----------------------------------------------------------------------------------------

    def create_accelerator_and_postprocess(self) -> None:
        """An FSDP launch on CPU processes shards as it does on GPUs.

        accelerate (1.15, `AcceleratorState.__init__`) turns an FSDP launch into FSDP only on GPU-like devices; on CPU
        processes it silently runs DDP instead (the model a DistributedDataParallel, the whole optimizer state on
        every process). torch's FSDP2 runs on CPU over gloo, so the dropped plugin is put back as accelerate puts it
        on GPUs: the same sharding, gathering and checkpoint code then runs on CPU (accelerate_configs/fsdp_cpu.yaml,
        tested) as on GPUs (fsdp.yaml)."""
        super().create_accelerator_and_postprocess()
        state = self.accelerator.state
        if (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
                and state.distributed_type == DistributedType.MULTI_CPU):
            state.fsdp_plugin = FullyShardedDataParallelPlugin()  # the launcher's fsdp_config, from its environment
            if state.mixed_precision != "no":
                state.fsdp_plugin.set_mixed_precision(state.mixed_precision)
            state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.is_fsdp_enabled = True

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

    # -- logging ----------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "learning_rate" in logs:
            self._add_throughput(logs)
            self._add_skipped_steps(logs)
        super().log(logs, start_time)

    def _add_skipped_steps(self, logs: dict[str, float]) -> None:
        """Every training log counts the steps skipped so far, for each guard that skips."""
        if self.nonfinite_loss == "skip":
            logs["skipped_nonfinite_batches"] = len(self.skipped_steps["nonfinite"])
        if self.spike_guard == "skip":
            logs["skipped_spike_steps"] = len(self.skipped_steps["spike"])

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

    # -- evaluation -------------------------------------------------------------------------------------------

    def get_eval_dataloader(self, eval_dataset=None):
        """This process's share of the validation blocks, read by the process itself, in order (no sampler, no
        dispatch from rank 0, no padding with repeated blocks): see recipe.scoring.ProcessShare."""
        blocks = eval_dataset if eval_dataset is not None else self.eval_dataset
        return DataLoader(process_share(blocks), batch_size=self.args.eval_batch_size, collate_fn=self.data_collator)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval") -> EvalLoopOutput:
        """Next-token loss, perplexity and bits per byte over the validation blocks, summed over every process.

        Written here because Trainer's loop gives the mean loss of each batch and nothing a bits-per-byte needs (the
        loss of each token and the bytes it decodes to), and because its loop over a streamed split is fed from rank
        0 and fails with fewer blocks than processes. Each block's last position predicts the block's `next_token`
        when it has one, so every validation token is predicted once. The model is prepared as Trainer's own loop
        prepares it (evaluation outside training, DeepSpeed, FSDP)."""
        model = self._wrap_model(self.model, training=False)
        if len(self.accelerator._models) == 0 and model is self.model:  # evaluate() called before train()
            model = (self.accelerator.prepare(model) if self.is_deepspeed_enabled or self.is_fsdp_enabled
                     else self.accelerator.prepare_model(model, evaluation_mode=True))
            if self.is_fsdp_enabled:
                self.model = model
        model.eval()
        if self.token_bytes is None and self.processing_class is not None:
            self.token_bytes = token_byte_counts(self.processing_class)

        def batches():
            for batch in dataloader:
                yield batch
                self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)

        self.callback_handler.eval_dataloader = dataloader
        sums = next_token_sums(model, batches(), self.token_bytes, context=self.autocast_smart_context_manager)
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in loss_metrics(sums).items() if key != "n"}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=int(sums["blocks"]))

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

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save a gathered state dict (FSDP, DeepSpeed) exactly as the unsharded model saves itself.

        The gather gives a tied weight one copy per name: aliased again, save_pretrained stores it once. And FSDP2
        turns the model into an instance of a class it makes up (`FSDPGPTForCausalLM`, a subclass of ours in torch's
        `_fsdp_init` module), while save_pretrained copies the files that define the model's class: torch's FSDP
        sources, with an auto_map naming a class no file defines, so the checkpoint would not load without the recipe
        (transformers 5.24 strips the prefix from `architectures` only). So the save sees our class.
        """
        if state_dict is not None:
            names_of = {}
            for name, parameter in self.model.named_parameters(remove_duplicate=False):
                names_of.setdefault(id(parameter), []).append(name)
            for first, *aliases in names_of.values():
                for alias in aliases:
                    if first in state_dict and alias in state_dict:
                        state_dict[alias] = state_dict[first]
        if not isinstance(self.model, FSDPModule):
            return super()._save(output_dir, state_dict)
        fsdp_class = type(self.model)
        self.model.__class__ = next(cls for cls in fsdp_class.__mro__ if not issubclass(cls, FSDPModule))
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.model.__class__ = fsdp_class

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
            self._save_step_guard(staging / checkpoint_name(self.state.global_step))
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
        """Beside the weights: the launch and the prepared data's fingerprint (main process), and each process's
        stream position."""
        checkpoint.mkdir(parents=True, exist_ok=True)
        if self.args.should_save:
            (checkpoint / LAUNCH_FILE).write_text(launch_record(self.args.world_size, self._sharding()))
        if isinstance(self.train_dataset, BlockStream):
            position = {"process": self.args.process_index, "processes": self.args.world_size,
                        **self.train_dataset.position()}
            (checkpoint / stream_position_file(self.args.process_index)).write_text(json.dumps(position) + "\n")
        if self.data_fingerprint is not None and self.args.should_save:
            (checkpoint / TRAIN_DATA_FILE).write_text(json.dumps({"fingerprint": self.data_fingerprint}) + "\n")

    def _sharding(self) -> str:
        return "fsdp" if self.is_fsdp_enabled else "deepspeed" if self.is_deepspeed_enabled else "none"

    def _run_epoch(self, *args, **kwargs):
        """Trainer checks max_steps only after a step, so a run resumed from its last checkpoint (killed between that
        save and the final one) would train one step more than the run has. Nothing is left to train then."""
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is not None:
            check_same_launch(resume_from_checkpoint, self.args.world_size, self._sharding())
            self._restore_data_position(Path(resume_from_checkpoint))
            self._restore_step_guard(Path(resume_from_checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # -- the step guard's state: which steps were skipped, and the spike detector's windows -------------------------

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
