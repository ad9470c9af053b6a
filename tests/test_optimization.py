"""recipe/optimization.py: the schedules give the specified rate at every step, by the formula of their sources;
Muon takes the blocks' matrices, AdamW the rest, and their one optimizer's state round-trips exactly (Muon's own
update: tests/test_muon.py)."""

import io

import pytest
import torch

from helpers import REPO_ROOT, build_nanogpt_get_lr
from recipe import GPTConfig, GPTForCausalLM
from recipe.args import RecipeTrainingArguments, parse_settings
from recipe.muon import Muon
from recipe.optimization import SCHEDULES, MuonWithAdamW, create_muon_optimizer, create_schedule


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
        decay = group_rates[warmup:max_steps + 1]
        assert all(later < earlier for earlier, later in zip(decay, decay[1:]))

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


def modded_nanogpt_wsd(step: int, max_lr: float, warmup_steps: int, max_steps: int, decay_fraction: float,
                       min_lr_rate: float) -> float:
    """The reference for wsd: gpt2_cosine's warm-up, then modded-nanogpt's `get_lr` (stable at 1, then the weight
    w = (1 - step / steps) / cooldown_frac between 1 and the floor), times the peak."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    x = min(step / max_steps, 1.0)
    if x < 1 - decay_fraction:
        return max_lr
    w = (1 - x) / decay_fraction
    return (w * 1.0 + (1 - w) * min_lr_rate) * max_lr


def test_wsd_warms_up_holds_then_decays_linearly_to_its_floor_at_every_step():
    warmup, max_steps, arguments = 3, 20, {"decay_fraction": 0.4, "min_lr_rate": 0.1}
    scheduler = create_schedule("wsd", two_group_optimizer(), warmup, max_steps, arguments)
    rates = applied_rates(scheduler, max_steps + 2)
    for peak, group_rates in zip((6e-4, 0.02), zip(*rates)):
        expected = [modded_nanogpt_wsd(step, peak, warmup, max_steps, **arguments) for step in range(max_steps + 2)]
        assert list(group_rates) == pytest.approx(expected, rel=1e-12)  # (w * 1 + ...) * peak vs w * peak + ...
        assert group_rates[0] == peak / warmup and group_rates[warmup - 1] == peak
        assert set(group_rates[warmup:13]) == {peak}  # stable until 60% of the run (step 12), where the decay starts
        steps = [group_rates[step] - group_rates[step + 1] for step in range(12, max_steps)]
        assert steps == pytest.approx([peak * 0.9 / 8] * 8)  # linear: 8 equal steps down to the floor
        assert group_rates[max_steps] == group_rates[-1] == pytest.approx(0.1 * peak)

    with pytest.raises(ValueError, match="warmup_steps=13 runs into the decay, which starts at step 12 of 20"):
        create_schedule("wsd", two_group_optimizer(), 13, max_steps, arguments)
    with pytest.raises(ValueError, match="decay_fraction=0 leaves no steps to decay in"):
        create_schedule("wsd", two_group_optimizer(), warmup, max_steps, {"decay_fraction": 0})
    with pytest.raises(ValueError, match=r"lr_scheduler_kwargs has \['num_cycles'\], which lr_scheduler_type=wsd "
                                         r"does not take \(it takes \['decay_fraction', 'min_lr_rate'\]\)"):
        create_schedule("wsd", two_group_optimizer(), warmup, max_steps, {"num_cycles": 1})


def tiny_gpt(n_layer: int = 2) -> GPTForCausalLM:
    torch.manual_seed(0)
    return GPTForCausalLM(GPTConfig(n_layer=n_layer, n_embd=32, n_head=4, vocab_size=100, n_positions=16))


def muon_arguments(tmp_path) -> RecipeTrainingArguments:
    return RecipeTrainingArguments(output_dir=str(tmp_path), optim="muon", learning_rate=3e-3, weight_decay=0.1,
                                   muon_learning_rate=0.02, muon_momentum=0.9, muon_weight_decay=0.01, report_to=[])


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest_each_with_its_rate_and_decay(tmp_path):
    model = tiny_gpt()
    optimizer = create_muon_optimizer(model, muon_arguments(tmp_path))
    names = {id(p): name for name, p in model.named_parameters()}
    groups = [(group, sorted(names[id(p)] for p in group["params"])) for group in optimizer.param_groups]
    [(embeddings, embedding_names), (gains, gain_names), (qkv, qkv_names), (matrices, matrix_names)] = groups
    assert embedding_names == ["transformer.wpe.weight", "transformer.wte.weight"]  # wte is the tied head, once
    assert all(name.endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_f.weight")) for name in gain_names)
    assert qkv_names == [f"transformer.h.{layer}.attn.c_attn.weight" for layer in range(2)] and qkv["row_blocks"] == 3
    assert matrix_names == sorted(f"transformer.h.{layer}.{matrix}.weight" for layer in range(2)
                                  for matrix in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert sum(len(names) for _, names in groups) == len(list(model.parameters()))
    assert (embeddings["lr"], embeddings["weight_decay"], embeddings["betas"], embeddings["fused"]) == (
        3e-3, 0.1, (0.9, 0.95), True)
    assert (gains["lr"], gains["weight_decay"]) == (3e-3, 0.0)
    for group in (qkv, matrices):
        assert (group["lr"], group["weight_decay"], group["momentum"]) == (0.02, 0.01, 0.9)
    assert isinstance(optimizer.muon, Muon) and isinstance(optimizer.adamw, torch.optim.AdamW)

    with pytest.raises(ValueError, match=r"^Muon orthogonalises matrices, and transformer.ln_f.weight has shape "
                                         r"\(32,\): give it to AdamW$"):
        MuonWithAdamW([], [{"params": [("transformer.ln_f.weight", model.transformer.ln_f.weight)]}], {}, {})


def test_muon_state_round_trips_exactly_and_a_step_without_gradients_changes_nothing(tmp_path):
    """Two steps, saved as Trainer saves optimizer.pt and loaded into a fresh optimizer: the next steps are the
    same bits as the original's. A step where every .grad is None (the guard's skip) leaves weights and state as
    they were; one where a few are None leaves those."""
    def gradients(step):
        generator = torch.Generator().manual_seed(step)
        return [torch.randn(p.shape, generator=generator) for p in model.parameters()]

    def train(optimizer, model, scheduler, steps):
        for step in steps:
            for parameter, gradient in zip(model.parameters(), gradients(step)):
                parameter.grad = gradient.clone()
            optimizer.step()
            scheduler.step()

    model = tiny_gpt()
    optimizer = create_muon_optimizer(model, muon_arguments(tmp_path))
    scheduler = create_schedule("wsd", optimizer, 2, 8, {"decay_fraction": 0.5, "min_lr_rate": 0.0})
    assert [group["lr"] for group in optimizer.param_groups] == [1.5e-3, 1.5e-3, 0.01, 0.01]  # one schedule
    train(optimizer, model, scheduler, range(2))
    momentum = {id(p): state["momentum_buffer"] for p, state in optimizer.state.items() if "momentum_buffer" in state}
    assert len(momentum) == 8 and all(buffer.abs().sum() > 0 for buffer in momentum.values())
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)

    resumed_model = tiny_gpt()
    resumed_model.load_state_dict(model.state_dict())
    resumed = create_muon_optimizer(resumed_model, muon_arguments(tmp_path))
    resumed_scheduler = create_schedule("wsd", resumed, 2, 8, {"decay_fraction": 0.5, "min_lr_rate": 0.0})
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed_scheduler.load_state_dict(scheduler.state_dict())
    train(optimizer, model, scheduler, range(2, 5))
    train(resumed, resumed_model, resumed_scheduler, range(2, 5))
    for (name, expected), actual in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(expected, actual), name

    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    states = {id(p): {key: value.clone() for key, value in state.items()} for p, state in optimizer.state.items()}
    model.zero_grad(set_to_none=True)
    optimizer.step()
    assert all(torch.equal(weights[name], p) for name, p in model.named_parameters())
    assert all(torch.equal(states[id(p)][key], value) for p, state in optimizer.state.items()
               for key, value in state.items())
    c_attn = model.transformer.h[0].attn.c_attn.weight
    for parameter, gradient in zip(model.parameters(), gradients(5)):
        parameter.grad = None if parameter is c_attn else gradient
    optimizer.step()
    assert torch.equal(c_attn, weights["transformer.h.0.attn.c_attn.weight"])
    assert torch.equal(optimizer.state[c_attn]["momentum_buffer"], states[id(c_attn)]["momentum_buffer"])
    assert not torch.equal(model.transformer.h[1].attn.c_attn.weight, weights["transformer.h.1.attn.c_attn.weight"])
