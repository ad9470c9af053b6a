"""The optimizer and learning-rate schedule of a run, built from its settings and handed to GPTTrainer.

- Parameter groups: weight decay on exactly the 2-D tensors (matmul weights and embeddings; the tied embedding and
  LM head are one tensor, counted once), none on biases and LayerNorm gains (nanoGPT's `configure_optimizers`,
  llm.c). The optimizer over them is any of Trainer's `optim` names (default: fused AdamW).
- Muon (recipe.muon) for the 2-D weights inside the blocks with AdamW for the rest, as one optimizer.
- Schedules by name, beside transformers' own (`lr_scheduler_type`): `gpt2_cosine` is the GPT-2 reproductions'
  warm-up and cosine (build-nanogpt's `get_lr`, llm.c's `get_learning_rate`), step for step. transformers'
  `cosine_with_min_lr` warms up as step / W, so the first step of a run has rate 0 and the warm-up lags a step.
  `wsd` is that warm-up, a stable phase and a linear decay over the last fraction of the run (the speedruns').
"""

import inspect
import math

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers import SchedulerType
from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

from .muon import Muon


def decay_parameter_names(model: torch.nn.Module) -> list[str]:
    """Decay every 2-D tensor (matmul weights, embeddings); never biases or LayerNorm gains."""
    return [name for name, parameter in model.named_parameters() if parameter.dim() >= 2]


# -- Muon for the blocks' matrices, AdamW for the rest ------------------------------------------------------------

MUON = "muon"  # the recipe's `optim` name, beside Trainer's


def muon_parameter_names(model: torch.nn.Module) -> list[str]:
    """The 2-D weights inside the transformer blocks (the modules named by `_no_split_modules`): the hidden layers
    Muon is for. The token and position embeddings, the tied LM head, biases and LayerNorm gains stay with AdamW
    (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"; modded-nanogpt, nanochat)."""
    block_classes = set(model._no_split_modules or ())
    in_blocks = {id(parameter) for module in model.modules() if type(module).__name__ in block_classes
                 for parameter in module.parameters()}
    return [name for name, parameter in model.named_parameters()
            if parameter.requires_grad and id(parameter) in in_blocks and parameter.dim() == 2]


# c_attn holds q, k and v in one (3n, n) matrix. Orthogonalised as three (n, n) matrices, each with the rate
# scaling of its own shape, as if they were separate weights, the earlier 128-wide quick start reached a validation
# loss 0.02-0.06 nats lower (three settings and seeds) than as one matrix (benchmarks/RESULTS.md, Optimizers, "q, k
# and v as three matrices or as one").
FUSED_QKV_BLOCKS = 3


def fused_qkv_names(model: torch.nn.Module) -> list[str]:
    """The blocks' fused q/k/v weights: the `c_attn` matrices, FUSED_QKV_BLOCKS x n_embd rows by n_embd columns."""
    return [name for name, parameter in model.named_parameters()
            if name.endswith("attn.c_attn.weight") and parameter.shape[0] == FUSED_QKV_BLOCKS * parameter.shape[1]]


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer, as Trainer holds one: torch.optim.AdamW for its `adamw_groups`, recipe.muon.Muon (torch's
    Muon's update, split among the processes) for its `muon_groups` (groups of (name, parameter) pairs). This class
    only lets them share one list of param_groups (the very dicts, so the LR scheduler sets every group's rate) and
    one state (keyed by parameter), so that state_dict() / load_state_dict() are torch's own format, Muon's momentum
    buffers and AdamW's moments included. A parameter whose .grad is None is left untouched by both (the
    non-finite guard's skip relies on it)."""

    def __init__(self, adamw_groups: list[dict], muon_groups: list[dict], adamw_defaults: dict, muon_defaults: dict):
        self.muon = Muon(muon_groups, **muon_defaults)  # first: it names a parameter it cannot take
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw_defaults)
        super().__init__([*self.adamw.param_groups, *self.muon.param_groups], defaults={})
        self._share()

    def _share(self) -> None:
        adamw_count = len(self.adamw.param_groups)
        self.adamw.param_groups = self.param_groups[:adamw_count]
        self.muon.param_groups = self.param_groups[adamw_count:]
        self.adamw.state = self.muon.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # new group dicts and a new state: share them again
        self._share()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.adamw.step()
        self.muon.step()
        return loss


def create_muon_optimizer(model: torch.nn.Module, args) -> MuonWithAdamW:
    """The groups of a Muon run, each with its own rate and decay: the embeddings and tied head (AdamW:
    learning_rate, weight_decay), the biases and gains (AdamW: learning_rate, no decay), and the blocks' matrices
    (Muon: muon_learning_rate, muon_momentum, muon_weight_decay), the fused q/k/v ones in FUSED_QKV_BLOCKS row
    blocks. AdamW's betas and eps are the run's adam_* settings."""
    muon_names, qkv_names = set(muon_parameter_names(model)), set(fused_qkv_names(model))
    named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    adamw = [(name, parameter) for name, parameter in named if name not in muon_names]
    adamw_groups = [
        {"params": [(n, p) for n, p in adamw if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [(n, p) for n, p in adamw if p.dim() < 2], "weight_decay": 0.0},
    ]
    muon_groups = [
        {"params": [(n, p) for n, p in named if n in muon_names and n in qkv_names], "row_blocks": FUSED_QKV_BLOCKS},
        {"params": [(n, p) for n, p in named if n in muon_names and n not in qkv_names]},
    ]
    return MuonWithAdamW(
        [group for group in adamw_groups if group["params"]], [group for group in muon_groups if group["params"]],
        adamw_defaults={"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon,
                        "fused": True},
        muon_defaults={"lr": args.muon_learning_rate, "momentum": args.muon_momentum,
                       "weight_decay": args.muon_weight_decay},
    )


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


def wsd_lr(step: int, max_lr: float, *, warmup_steps: int, max_steps: int, decay_fraction: float,
           min_lr_rate: float) -> float:
    """Warm-up / stable / decay, the speedruns' schedule: gpt2_cosine's warm-up, then max_lr, then over the last
    decay_fraction of the run a linear decay that reaches min_lr = min_lr_rate * max_lr at step max_steps (the
    decay of modded-nanogpt's `get_lr`: from progress step / max_steps = 1 - decay_fraction on, the weight
    w = (1 - progress) / decay_fraction goes from 1 to 0 between max_lr and min_lr); min_lr after. A constant rate
    until the decay lets a run be continued from any checkpoint of its stable phase (Hägele et al. 2024)."""
    min_lr = max_lr * min_lr_rate
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = step / max_steps
    if progress < 1 - decay_fraction:
        return max_lr
    weight = (1 - progress) / decay_fraction  # 1 -> 0
    return weight * max_lr + (1 - weight) * min_lr


SCHEDULES = {"gpt2_cosine": gpt2_cosine_lr, "wsd": wsd_lr}
# The lr_scheduler_kwargs each schedule takes, with their defaults: gpt2_cosine decays to 10% as build-nanogpt does;
# wsd decays over the last 40% of the run to 10%, modded-nanogpt's cooldown_frac and floor.
SCHEDULE_KWARGS = {"gpt2_cosine": {"min_lr_rate": 0.1}, "wsd": {"decay_fraction": 0.4, "min_lr_rate": 0.1}}


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
    if arguments.get("decay_fraction", 1.0) == 0:
        raise ValueError("lr_scheduler_kwargs decay_fraction=0 leaves no steps to decay in: use (0, 1]")
    return arguments


def check_warmup_before_decay(name: str, lr_scheduler_kwargs: dict | None, warmup_steps: int, max_steps: int) -> None:
    """A ValueError when the warm-up would run into the decay of a wsd run."""
    if name != "wsd":
        return
    decay_fraction = schedule_arguments(name, lr_scheduler_kwargs)["decay_fraction"]
    if warmup_steps > (1 - decay_fraction) * max_steps:
        raise ValueError(f"warmup_steps={warmup_steps} runs into the decay, which starts at step "
                         f"{(1 - decay_fraction) * max_steps:g} of {max_steps} (decay_fraction={decay_fraction}): "
                         f"shorten the warm-up or the decay")


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
        check_warmup_before_decay(name, lr_scheduler_kwargs, warmup_steps, max_steps)
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


def describe_optimization(args) -> str:
    """The optimizer and schedule of a run, in one line for its plan."""
    if args.optim == MUON:
        optimizer = (f"Muon on the blocks' matrices (rate {args.muon_learning_rate:g}, momentum "
                     f"{args.muon_momentum:g}, decay {args.muon_weight_decay:g}) + AdamW on the embeddings, head, "
                     f"biases and gains")
    else:
        optimizer = str(getattr(args.optim, "value", args.optim))
    schedule = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    kwargs = ", ".join(f"{key} {value:g}" for key, value in (args.lr_scheduler_kwargs or {}).items())
    return (f"{optimizer} (rate {args.learning_rate:g}, betas ({args.adam_beta1:g}, {args.adam_beta2:g}), decay "
            f"{args.weight_decay:g} on 2-D tensors); {schedule} schedule ({kwargs}) after {args.warmup_steps:g} "
            f"warm-up steps")
