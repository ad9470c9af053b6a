"""recipe/step_guard.py on its own: one decision per optimizer step from the step's losses and gradient norm."""

from types import SimpleNamespace

import pytest
import torch

from recipe.errors import TrainingStopped
from recipe.step_guard import StepGuard


def guard(nonfinite_loss="stop", spike_guard="off") -> StepGuard:
    """The mixin's state and what it reads of a Trainer, without a Trainer."""
    step_guard = object.__new__(StepGuard)
    step_guard.state = SimpleNamespace(global_step=4)
    step_guard.lr_scheduler = SimpleNamespace(last_epoch=4)
    step_guard.callback_handler = SimpleNamespace(on_train_end=lambda args, state, control: control)
    step_guard.args, step_guard.control = None, None
    step_guard.is_world_process_zero = lambda: True
    step_guard._init_step_guard(nonfinite_loss, spike_guard, spike_zscore=3.0, spike_window=4)
    return step_guard


def step(step_guard, losses, grad_norm):
    """The micro-batches' losses as training_step adds them, then the guard's decision."""
    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.ones(2, 2)
    for loss in losses:
        step_guard._add_micro_batch_loss(torch.tensor(loss))
    step_guard._guard_step(model, torch.tensor(grad_norm))
    return model


def test_a_finite_step_passes_and_the_next_starts_afresh():
    step_guard = guard()
    model = step(step_guard, [1.0, 2.0], 0.5)
    assert model.weight.grad is not None and step_guard._step_loss is None
    assert step_guard.skipped_steps == {"nonfinite": [], "spike": []}


@pytest.mark.parametrize("losses, grad_norm, reason", [
    ([1.0, float("nan")], 0.5, "non-finite loss at step 5"),
    ([1.0, 1.0], float("inf"), "non-finite gradient at step 5"),
    ([1.0, 1.0], 0.0, "the gradient norm is exactly 0 at step 5"),
])
def test_a_bad_step_stops_before_the_optimizer_applies_it(losses, grad_norm, reason):
    with pytest.raises(TrainingStopped, match=reason):
        step(guard(), losses, grad_norm)


def test_a_skipped_step_drops_its_gradient_and_rewinds_the_schedule():
    step_guard = guard(nonfinite_loss="skip")
    assert step_guard._add_micro_batch_loss(torch.tensor(float("nan"))) == 0  # logged as 0, not NaN
    model = step(step_guard, [float("inf")], 0.5)
    assert model.weight.grad is None and step_guard.lr_scheduler.last_epoch == 3
    assert step_guard.skipped_steps["nonfinite"] == [5]


def test_a_spike_is_skipped_once_the_window_is_full():
    step_guard = guard(spike_guard="skip")
    for loss in (2.0, 2.1, 1.9, 2.0):
        assert step(step_guard, [loss], 1.0).weight.grad is not None
    assert step(step_guard, [9.0], 1.0).weight.grad is None
    assert step_guard.skipped_steps["spike"] == [5]
