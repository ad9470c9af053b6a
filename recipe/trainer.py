"""GPTTrainer: transformers' Trainer plus what pre-training GPT-2 needs, one concern per module.

| concern | module |
| --- | --- |
| the launch: FSDP on CPU processes as on GPUs; a resume only by the launch that saved the checkpoint | `launch` |
| the step guard: non-finite, zero-gradient and spiking steps stopped or skipped before they are applied | `step_guard` |
| tokens/s, MFU and ETA in the logs; tokens counted on the host | `throughput` |
| evaluation over each process's share of the blocks, every token predicted once, bits per byte | `share_evaluation` |
| checkpoints staged and published whole; gathered state dicts saved as the unsharded model's | `staged_checkpoints` |
| data that resumes where it stopped: the prepared data's fingerprint, each process's stream position | `resumable_data` |
| the optimizer and schedules of recipe.optimization; the card and loss plot at the end | here |

Each concern is a mixin: a Trainer subclass holding the few Trainer methods it overrides and the state it keeps,
created by its `_init_...` method. Mixins, because these concerns change what Trainer's own methods compute (the
gradient norm before the optimizer step, the evaluation loop, where a checkpoint is written), which Trainer's
callback events only observe; what the events suffice for is in recipe.callbacks (samples, HellaSwag,
preemption). The concerns do not call each other: this class ties them together, in `_save_resume_state` (what a
checkpoint holds beyond Trainer's files) and `train` (what a resume restores).
"""

from pathlib import Path

from transformers import Trainer

from .callbacks import PreemptionCallback
from .card import write_model_card
from .checkpoints import PLOT_FILE
from .curves import plot_runs
from .launch import Launch
from .optimization import MUON, SCHEDULES, create_muon_optimizer, create_schedule, decay_parameter_names
from .resumable_data import ResumableData
from .share_evaluation import ShareEvaluation
from .staged_checkpoints import StagedCheckpoints
from .step_guard import StepGuard
from .throughput import ThroughputLogging


class GPTTrainer(Launch, StepGuard, ThroughputLogging, ShareEvaluation, StagedCheckpoints, ResumableData, Trainer):
    def __init__(self, *args, nonfinite_loss: str = "stop", spike_guard: str = "off", spike_zscore: float = 7.0,
                 spike_window: int = 128, peak_tflops: float | None = None, data_fingerprint: str | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._init_step_guard(nonfinite_loss, spike_guard, spike_zscore, spike_window)
        self._init_throughput(peak_tflops)
        self._init_evaluation()
        self._init_resumable_data(data_fingerprint)
        self.preemption = next(
            (callback for callback in self.callback_handler.callbacks if isinstance(callback, PreemptionCallback)), None
        )

    # -- resuming: what a checkpoint holds beyond Trainer's files, and what a resume restores ------------------

    def _save_resume_state(self, checkpoint: Path) -> None:
        self._save_launch(checkpoint)
        self._save_data_position(checkpoint)
        self._save_step_guard(checkpoint)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is not None:
            checkpoint = Path(resume_from_checkpoint)
            self._check_launch(checkpoint)
            self._restore_data_position(checkpoint)
            self._restore_step_guard(checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # -- optimisation: recipe.optimization's groups, optimizers and schedules ------------------------------------

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

    # -- output ---------------------------------------------------------------------------------------------------

    def create_model_card(self, *args, **kwargs) -> None:
        """The recipe's card (data, hyperparameters, results, loss plot) instead of Trainer's generic one."""
        if self.is_world_process_zero():
            plot_runs([self.args.output_dir], f"{self.args.output_dir}/{PLOT_FILE}")
            write_model_card(self.args.output_dir)
