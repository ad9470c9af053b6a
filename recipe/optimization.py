"""The optimizer and learning-rate schedule of a run, built from its settings and handed to GPTTrainer.

- Parameter groups: weight decay on exactly the 2-D tensors (matmul weights and embeddings; the tied embedding and
  LM head are one tensor, counted once), none on biases and LayerNorm gains (nanoGPT's `configure_optimizers`,
  llm.c). The optimizer over them is any of Trainer's `optim` names (default: fused AdamW).
- Schedules by name, beside transformers' own (`lr_scheduler_type`): `gpt2_cosine` is the GPT-2 reproductions'
  warm-up and cosine (build-nanogpt's `get_lr`, llm.c's `get_learning_rate`), step for step. transformers'
  `cosine_with_min_lr` warms up as step / W, so the first step of a run has rate 0 and the warm-up lags a step.
"""

import inspect
import math

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers import SchedulerType
from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION


def decay_parameter_names(model: torch.nn.Module) -> list[str]:
    """Decay every 2-D tensor (matmul weights, embeddings); never biases or LayerNorm gains."""
    return [name for name, parameter in model.named_parameters() if parameter.dim() >= 2]


# -- schedules: the rate of the 0-based optimizer step `step`, from the peak rate of a parameter group ----------

def gpt2_cosine_lr(step: int, max_lr: float, *, warmup_steps: int, max_steps: int, min_lr_rate: float) -> float:
    """Linear warm-up to max_lr over the first warmup_steps steps, max_lr * (step + 1) / warmup_steps (step 0
    already trains); then a cosine from max_lr at step warmup_steps down to min_lr = min_lr_rate * max_lr at
    step max_steps; min_lr after. The same arithmetic as build-nanogpt's train_gpt2.py `get_lr` (and llm.c's
    llmc/schedulers.h), so the rates are those floats exactly."""
    min_lr = max_lr * min_lr_rate
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:  # = build-nanogpt's `step > max_steps`: at max_steps the cosine is exactly min_lr
        return min_lr
    decay_ratio = (step - warmup_steps) / (max_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return min_lr + coeff * (max_lr - min_lr)


SCHEDULES = {"gpt2_cosine": gpt2_cosine_lr}
SCHEDULE_KWARGS = {"gpt2_cosine": {"min_lr_rate": 0.1}}  # lr_scheduler_kwargs each schedule takes, with defaults


def schedule_arguments(name: str, lr_scheduler_kwargs: dict | None) -> dict:
    """The schedule's lr_scheduler_kwargs with its defaults, checked: a ValueError names a wrong key or value."""
    defaults = SCHEDULE_KWARGS[name]
    given = dict(lr_scheduler_kwargs or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"lr_scheduler_kwargs has {unknown}, which lr_scheduler_type={name} does not take "
                         f"(it takes {sorted(defaults)})")
    arguments = {**defaults, **given}
    for key, value in arguments.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"lr_scheduler_kwargs {key}={value!r} must be a number in [0, 1]")
    return arguments


def check_schedule(name: str, lr_scheduler_kwargs: dict | None) -> None:
    """A ValueError, naming the key, for lr_scheduler_kwargs that the schedule `name` does not take: transformers'
    schedules would raise a TypeError only when Trainer builds them, after the data and model work."""
    if name in SCHEDULES:
        schedule_arguments(name, lr_scheduler_kwargs)
        return
    name = SchedulerType(name).value
    parameters = inspect.signature(TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]).parameters
    if name in ("constant", "constant_with_warmup") or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return  # transformers passes these no kwargs, or all of them
    taken = sorted(set(parameters) - {"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch"})
    unknown = sorted(set(lr_scheduler_kwargs or {}) - set(taken))
    if unknown:
        raise ValueError(f"lr_scheduler_kwargs has {unknown}, which lr_scheduler_type={name} does not take "
                         f"(it takes {taken}): set lr_scheduler_kwargs to what it takes, or {{}}")


class StepSchedule(LRScheduler):
    """The rate of every parameter group is SCHEDULES[name](step, the group's peak rate, ...), with step =
    `last_epoch`, the 0-based optimizer step the rate is applied to: a pure function of the step, so setting
    `last_epoch` back gives that step's rate again, and a state of plain numbers (Trainer reads scheduler.pt with
    weights_only=True). Groups with different peaks (Muon's matrices, AdamW's rest) follow the one schedule."""

    def __init__(self, optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, max_steps: int,
                 **lr_scheduler_kwargs):
        self.name = name
        self.arguments = {"warmup_steps": warmup_steps, "max_steps": max_steps,
                          **schedule_arguments(name, lr_scheduler_kwargs)}
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        rate = SCHEDULES[self.name]
        return [rate(self.last_epoch, peak, **self.arguments) for peak in self.base_lrs]


def create_schedule(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int,
                    lr_scheduler_kwargs: dict | None) -> StepSchedule:
    """One of the recipe's SCHEDULES for a run of max_steps optimizer steps."""
    return StepSchedule(optimizer, name, warmup_steps, max_steps, **(lr_scheduler_kwargs or {}))
