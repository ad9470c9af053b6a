"""The Trainer path trains step for step like a plain PyTorch loop written after build-nanogpt's train_gpt2.py.

Both start from the same weights (the recipe's own initial weights, copied into the benchmarks' plain reference
model) and train on the same micro-batches (recorded from the recipe's run, replayed in order): AdamW over the
same two groups (decay 0.1 on the 2-D tensors, none on the rest; betas (0.9, 0.95), eps 1e-8), build-nanogpt's
get_lr, the loss of each micro-batch divided by the accumulation steps, clip_grad_norm_(1.0). fp32 on the CPU.
"""

import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, build_nanogpt_get_lr, launch, recorded, tiny_config

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from reference_gpt import ReferenceGPT  # noqa: E402

pytestmark = pytest.mark.slow

STEPS, WARMUP, PEAK, MIN_LR_RATE = 40, 10, 1e-3, 0.1
# A BPE of 500 tokens trained on the plays (the recipe's training matmul padded to 512 columns, nanoGPT's embedding
# to 512 rows: the padding columns must stay out of the loss), so that the LM head does not dominate the seconds
# this takes.
VOCAB, PADDED_VOCAB = 500, 512
RUN = dict(per_device_train_batch_size=4, block_size=32, max_steps=STEPS, warmup_steps=WARMUP, learning_rate=PEAK,
           lr_scheduler_kwargs={"min_lr_rate": MIN_LR_RATE}, train_tokenizer_vocab_size=VOCAB, eval_strategy="no",
           save_strategy="no", sample_max_new_tokens=0, logging_steps=1)
SHAPE = dict(n_layer=2, n_embd=64, n_head=4, n_positions=64)  # tiny_config's model

# Tolerances. The floor is float32 rounding: the recipe's fused chunked cross-entropy sums in another order than
# F.cross_entropy over full logits, and Trainer's fused AdamW rounds differently from the per-tensor AdamW that
# build-nanogpt uses on a CPU. The test measures that floor each time (the loop with fused AdamW against the loop
# with per-tensor AdamW, same micro-batches) and prints it with the recipe's differences (`pytest -s`). Measured
# here (2026-12-01, AMD EPYC, torch 2.13; 1 and 2 processes, several runs): loss 1.1-2.1e-7 relative (floor
# 0.9-1.7e-7), gradient norm 1.5-1.9e-7 (floor 1.1-1.6e-7), weights 3.2-4.3e-6 absolute (floor 3.2-4.7e-6). So the
# recipe differs from the loop by the floor alone. The tolerances are 50x (loss) and 500x (gradient norm, one reduction more) above it for
# other CPUs and thread counts; 1e-3 on the weights is the bound: 200x the floor, and a step at the peak
# rate moves a weight by up to 1e-3 (Adam's update is at most about lr), so one missed or doubled step fails it.
LOSS_RTOL, GRAD_NORM_RTOL, WEIGHT_ATOL = 1e-5, 1e-4, 1e-3


RENAMES = {"transformer.wte.": "token_embedding.", "transformer.wpe.": "position_embedding.",
           "transformer.ln_f.": "final_norm.", ".ln_1.": ".norm_1.", ".ln_2.": ".norm_2.", ".attn.c_attn.": ".attention.qkv.",
           ".attn.c_proj.": ".attention.out.", ".mlp.c_fc.": ".expand.", ".mlp.c_proj.": ".project.",
           "transformer.h.": "blocks."}


def reference_name(name: str) -> str:
    """A recipe parameter's name in the reference model."""
    for old, new in RENAMES.items():
        name = name.replace(old, new)
    return name


def reference_loop(initial: dict, micro_batches: list[list[torch.Tensor]], fused: bool = False) -> dict:
    """build-nanogpt's training loop on the recorded micro-batches: per step, the loss and gradient norm it printed,
    the rate it set, and the final weights under the recipe's names. In one thread, as the recorded run (helpers'
    launch): a machine's core count does not change its sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference_loop(initial, micro_batches, fused)
    finally:
        torch.set_num_threads(threads)


def _reference_loop(initial: dict, micro_batches: list[list[torch.Tensor]], fused: bool) -> dict:
    torch.manual_seed(0)
    model = ReferenceGPT(**SHAPE, padded_vocab_size=PADDED_VOCAB, vocab_size=VOCAB)
    state = {reference_name(name): tensor for name, tensor in initial.items()}
    # nanoGPT's embedding has the padding rows (zeros here: the softmax never reads them); the recipe's has not
    state["token_embedding.weight"] = torch.nn.functional.pad(state["token_embedding.weight"],
                                                              (0, 0, 0, PADDED_VOCAB - VOCAB))
    model.load_state_dict({**state, "head.weight": state["token_embedding.weight"]})  # the head is tied
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=PEAK, betas=(0.9, 0.95), eps=1e-8, fused=fused)
    losses, norms, rates = [], [], []
    for step, batches in enumerate(micro_batches):
        optimizer.zero_grad()
        loss_accum = 0.0
        for input_ids in batches:
            loss = model(input_ids, input_ids) / len(batches)
            loss_accum += loss.detach()
            loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item())
        rates.append(build_nanogpt_get_lr(step, PEAK, WARMUP, STEPS, MIN_LR_RATE))
        for group in optimizer.param_groups:
            group["lr"] = rates[-1]
        optimizer.step()
        losses.append(loss_accum.item())
    final = {name: model.state_dict()[reference_name(name)][: len(tensor)].detach().clone()  # without padding rows
             for name, tensor in initial.items()}
    return {"losses": losses, "norms": norms, "rates": rates, "weights": final}


def recipe_steps(records: list[dict]) -> dict:
    """Per optimizer step of a recorded run (one record per process): the micro-batches of every process, in order,
    the loss (each process's share summed, then averaged over processes, as Trainer logs it), the gradient norm and
    the rate applied."""
    micro_batches = [[] for _ in range(STEPS)]
    for micro_batch in range(max(sum(1 for step, _ in records[0]["trained"] if step == 1), 1)):
        for record in records:
            for step in range(1, STEPS + 1):
                blocks = [batch for number, batch in record["trained"] if number == step][micro_batch]
                micro_batches[step - 1].append(torch.tensor(blocks))
    losses = [sum(loss for record in records for number, loss in record["losses"] if number == step) / len(records)
              for step in range(1, STEPS + 1)]
    _, norms, rates = zip(*records[0]["steps"])
    return {"micro_batches": micro_batches, "losses": losses, "norms": list(norms), "rates": list(rates)}


def largest_differences(recipe: dict, reference: dict, recipe_weights: dict) -> dict:
    """The largest relative loss and gradient-norm differences over the steps, and absolute weight difference."""
    def relative(ours, theirs):
        return max(abs(a - b) / abs(b) for a, b in zip(ours, theirs))
    weights = max((recipe_weights[name] - tensor).abs().max().item() for name, tensor in reference["weights"].items())
    return {"loss": relative(recipe["losses"], reference["losses"]),
            "gradient norm": relative(recipe["norms"], reference["norms"]), "weights": weights}


def assert_replays(recipe: dict, reference: dict, recipe_weights: dict) -> None:
    assert recipe["rates"] == reference["rates"]  # build-nanogpt's get_lr, the same floats
    assert recipe["rates"][0] == PEAK / WARMUP
    for step, (ours, theirs) in enumerate(zip(recipe["losses"], reference["losses"])):
        assert ours == pytest.approx(theirs, rel=LOSS_RTOL), f"loss at step {step}"
    for step, (ours, theirs) in enumerate(zip(recipe["norms"], reference["norms"])):
        assert ours == pytest.approx(theirs, rel=GRAD_NORM_RTOL), f"gradient norm at step {step}"
    assert reference["losses"][-1] < 0.9 * reference["losses"][0]  # it trained: the comparison has teeth
    for name, tensor in reference["weights"].items():
        assert (recipe_weights[name] - tensor).abs().max().item() <= WEIGHT_ATOL, name


@pytest.mark.parametrize("processes", [1, 2], ids=["1-process-accumulation-2", "2-processes-loop-accumulation-4"])
def test_the_trainer_path_trains_step_for_step_like_build_nanogpts_loop(tmp_path, processes):
    config = tiny_config(tmp_path, model_config=SHAPE, gradient_accumulation_steps=2, **RUN)
    launch("train_and_record.py", tmp_path / "record", config, processes=processes)
    records = [recorded(tmp_path / "record", rank) for rank in range(processes)]
    recipe = recipe_steps(records)
    assert all(len(batches) == 2 * processes for batches in recipe["micro_batches"])
    initial = load_file(tmp_path / "record" / "rank0-initial.safetensors")
    reference = reference_loop(initial, recipe["micro_batches"])
    final = load_file(tmp_path / "record" / "rank0.safetensors")
    differences = largest_differences(recipe, reference, final)
    fused = reference_loop(initial, recipe["micro_batches"], fused=True)
    floor = largest_differences(fused, reference, fused["weights"])
    print(f"\n{processes} process(es), {STEPS} steps: recipe vs build-nanogpt-style loop "
          + ", ".join(f"{key} {value:.1e}" for key, value in differences.items())
          + "; fused vs per-tensor AdamW in the loop (the floor) "
          + ", ".join(f"{key} {value:.1e}" for key, value in floor.items()))
    assert_replays(recipe, reference, final)
