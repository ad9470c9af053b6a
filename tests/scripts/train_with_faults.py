"""recipe/train.py's main() with faults injected from the environment, for the reliability tests.

RECIPE_TEST_PROGRESS=FILE    append "<step>" to FILE after every optimizer step (so a test knows where the run is;
                             the main process writes it)
RECIPE_TEST_HANG_IN_SAVE=N   hang inside the save of checkpoint-N, after its weights and optimizer are written
RECIPE_TEST_NAN_AT_STEP=N    make the training loss NaN at optimizer step N (gradient accumulation 1)
RECIPE_TEST_ZERO_AT_STEP=N   multiply the training loss by 0 from optimizer step N on (no gradient reaches the weights)
RECIPE_TEST_SPIKE_AT_STEP=N  multiply the training loss of every micro-batch of optimizer step N by 1000
RECIPE_TEST_DROP_STEP=N      read optimizer step N's micro-batches and throw them away: step N trains on step N+1's
RECIPE_TEST_STOP_AFTER=N     stop after optimizer step N (the schedule stays that of max_steps)
"""

import functools
import os
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from recipe.modeling_gpt import GPTForCausalLM
from recipe.train import main
from recipe.trainer import GPTTrainer

progress_file = os.environ.get("RECIPE_TEST_PROGRESS")
hang_step = int(os.environ.get("RECIPE_TEST_HANG_IN_SAVE", 0))
nan_step = int(os.environ.get("RECIPE_TEST_NAN_AT_STEP", 0))
zero_step = int(os.environ.get("RECIPE_TEST_ZERO_AT_STEP", 0))
spike_step = int(os.environ.get("RECIPE_TEST_SPIKE_AT_STEP", 0))
drop_step = int(os.environ.get("RECIPE_TEST_DROP_STEP", 0))
stop_after = int(os.environ.get("RECIPE_TEST_STOP_AFTER", 0))
trainer = None  # the run's GPTTrainer, once built


class ReportProgress(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # one line per step, however many processes
            with open(progress_file, "a") as handle:
                handle.write(f"{state.global_step}\n")


class StopAfter(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == stop_after:
            control.should_training_stop = True


original_init = GPTTrainer.__init__


def init_with_progress(self, *args, **kwargs):
    global trainer
    original_init(self, *args, **kwargs)
    trainer = self
    if progress_file:
        self.add_callback(ReportProgress())
    if stop_after:
        self.add_callback(StopAfter())


GPTTrainer.__init__ = init_with_progress

original_save = GPTTrainer._save_optimizer_and_scheduler


def save_then_hang(self, output_dir):
    original_save(self, output_dir)
    if self.state.global_step == hang_step:
        Path(progress_file).with_suffix(".saving").write_text(output_dir)
        time.sleep(600)


GPTTrainer._save_optimizer_and_scheduler = save_then_hang

original_get_batch_samples = GPTTrainer.get_batch_samples


def get_batch_samples_dropping_one_step(self, epoch_iterator, num_batches, device):
    if self.state.global_step + 1 == drop_step:
        original_get_batch_samples(self, epoch_iterator, num_batches, device)  # never trained on
    return original_get_batch_samples(self, epoch_iterator, num_batches, device)


GPTTrainer.get_batch_samples = get_batch_samples_dropping_one_step

original_forward = GPTForCausalLM.forward
training_forwards = 0


@functools.wraps(original_forward)  # Trainer reads the signature to pick dataset columns
def forward_with_faults(self, *args, **kwargs):
    global training_forwards
    output = original_forward(self, *args, **kwargs)
    if self.training:
        training_forwards += 1
        if training_forwards == nan_step:
            output.loss = output.loss * float("nan")
        if zero_step and training_forwards >= zero_step:
            output.loss = output.loss * 0.0
        if trainer.state.global_step + 1 == spike_step:
            output.loss = output.loss * 1000.0
    return output


GPTForCausalLM.forward = forward_with_faults

sys.exit(main(sys.argv[1:]))
