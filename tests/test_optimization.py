"""recipe/optimization.py: the schedules give the specified rate at every step, by the formula of their sources."""

import io

import pytest
import torch

from helpers import REPO_ROOT, build_nanogpt_get_lr
from recipe.args import parse_settings
from recipe.optimization import SCHEDULES, create_schedule


def applied_rates(scheduler, steps: int) -> list[list[float]]:
    """The rate of every group at each optimizer step, as Trainer applies them: step, then advance."""
    rates = []
    for _ in range(steps):
        rates.append([group["lr"] for group in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def two_group_optimizer(peaks=(6e-4, 0.02)) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": peak} for peak in peaks])


def test_gpt2_cosine_is_build_nanogpts_get_lr_at_every_step():
    warmup, max_steps, min_lr_rate = 5, 30, 0.1
    scheduler = create_schedule("gpt2_cosine", two_group_optimizer(), warmup, max_steps, {"min_lr_rate": min_lr_rate})
    rates = applied_rates(scheduler, max_steps + 3)
    for peak, group_rates in zip((6e-4, 0.02), zip(*rates)):
        expected = [build_nanogpt_get_lr(step, peak, warmup, max_steps, min_lr_rate) for step in range(max_steps + 3)]
        assert list(group_rates) == expected  # the same floats: the same arithmetic
        assert group_rates[0] == peak / warmup  # step 0 already trains (transformers' cosine_with_min_lr: 0)
        assert group_rates[warmup - 1] == peak  # the warm-up ends at the peak, where the cosine starts:
        assert group_rates[warmup] == pytest.approx(peak, rel=1e-15)  # min_lr + (max_lr - min_lr), rounded
        assert group_rates[max_steps] == group_rates[-1] == pytest.approx(peak * min_lr_rate, rel=1e-15)
        assert all(later < earlier for earlier, later in zip(group_rates[warmup:max_steps], group_rates[warmup + 1:max_steps + 1]))

    # The rate is a function of last_epoch alone (the loss-spike guard rewinds it for a skipped step), and the state
    # is plain numbers: it round-trips torch.load(weights_only=True), as Trainer reads scheduler.pt.
    scheduler.last_epoch = 11
    scheduler.step()
    assert scheduler.get_last_lr()[0] == build_nanogpt_get_lr(12, 6e-4, warmup, max_steps, min_lr_rate)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    resumed = create_schedule("gpt2_cosine", two_group_optimizer(), warmup, max_steps, {"min_lr_rate": min_lr_rate})
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.last_epoch == 12 and resumed.get_last_lr() == scheduler.get_last_lr()


@pytest.mark.parametrize("config", sorted((REPO_ROOT / "configs").glob("*.json")), ids=lambda path: path.name)
def test_every_shipped_config_trains_its_first_step_at_peak_over_warmup(config):
    training = parse_settings(config, []).training
    assert training.lr_scheduler_type in SCHEDULES
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=training.learning_rate)
    scheduler = create_schedule(training.lr_scheduler_type, optimizer, training.get_warmup_steps(training.max_steps),
                                training.max_steps, training.lr_scheduler_kwargs)
    assert optimizer.param_groups[0]["lr"] == training.learning_rate / training.warmup_steps > 0
    assert scheduler.get_last_lr()[0] == training.learning_rate / training.warmup_steps
