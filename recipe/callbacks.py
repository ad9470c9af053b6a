"""Trainer callbacks: a greedy sample at each evaluation, HellaSwag during training, and clean preemption."""

import signal
import threading

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from .scoring import score_hellaswag

logger = logging.get_logger("recipe")


class SampleCallback(TrainerCallback):
    """After each evaluation, continue a fixed prompt greedily and log it, to see the model learn to write.

    Every process generates (FSDP needs all ranks in each forward); only the main process logs.
    """

    def __init__(self, tokenizer, prompt: str, max_new_tokens: int):
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.samples: list[tuple[int, str]] = []

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.max_new_tokens <= 0 or model is None:
            return
        device = next(model.parameters()).device
        prompt_ids = self.tokenizer(self.prompt, return_tensors="pt").input_ids.to(device)
        context = model.config.n_positions
        prompt_ids = prompt_ids[:, -(context - self.max_new_tokens):]  # keep room for the new tokens
        was_training = model.training
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(args.bf16)):
            output = model.generate(
                prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=model.config.eos_token_id,
            )
        model.train(was_training)
        text = self.tokenizer.decode(output[0], skip_special_tokens=True)
        self.samples.append((state.global_step, text))
        if state.is_world_process_zero:
            print(f"sample at step {state.global_step}: {text!r}")


class HellaSwagCallback(TrainerCallback):
    """Score HellaSwag from a local file every `every_steps` optimizer steps (and at the end), logged with the
    losses as eval_hellaswag_acc / eval_hellaswag_acc_norm. Every process scores its share of the examples."""

    def __init__(self, trainer, examples: list[dict], every_steps: int):
        self.trainer = trainer
        self.examples = examples
        self.every_steps = every_steps

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps != 0 and state.global_step != state.max_steps:
            return
        with torch.autocast(args.device.type, dtype=torch.bfloat16, enabled=bool(args.bf16)):
            scores = score_hellaswag(
                model, self.trainer.processing_class, self.examples, batch_size=args.per_device_eval_batch_size
            )
        self.trainer.log({"eval_hellaswag_acc": scores["acc"], "eval_hellaswag_acc_norm": scores["acc_norm"]})


class PreemptionCallback(TrainerCallback):
    """SIGTERM (preemption) or SIGINT (Ctrl-C): finish the current optimizer step, save a checkpoint, stop.

    The signal handler only sets a flag; the step boundary acts on it, so the checkpoint is a consistent
    optimizer state. The flag is OR-ed across processes (over gloo, on the CPU: no GPU sync), so all ranks stop
    at the same step even when the signal reaches them at different times. A second signal exits at once.
    """

    def __init__(self):
        self.requested_by: str | None = None
        self.stopped_at_step: int | None = None
        self._previous_handlers = {}
        self._group = None

    def _handle(self, signum, frame):
        if self.requested_by is not None:  # the second signal: the user really means it
            self.restore_handlers()
            raise KeyboardInterrupt
        self.requested_by = signal.Signals(signum).name
        logger.warning(f"{self.requested_by} received: finishing this step, then saving a checkpoint and stopping")

    def install_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be caught in the main thread
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, self._handle)

    def restore_handlers(self):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def on_train_begin(self, args, state, control, **kwargs):
        self.install_handlers()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self._group = torch.distributed.new_group(backend="gloo")

    def _any_process_requested(self) -> bool:
        if self._group is None:
            return self.requested_by is not None
        flag = torch.tensor([self.requested_by is not None], dtype=torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_process_requested() and not control.should_training_stop:
            self.requested_by = self.requested_by or "a signal on another process"
            self.stopped_at_step = state.global_step
            control.should_save = True
            control.should_evaluate = False  # the grace period is for saving, not for an evaluation
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.restore_handlers()
