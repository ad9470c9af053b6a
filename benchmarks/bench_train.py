"""Training-step speed, side by side: the recipe's GPT, a plain-PyTorch GPT-2 in nanoGPT's style, GPT2LMHeadModel.

    python benchmarks/bench_train.py --device cpu --shape small --batch 8 --seq 256
    python benchmarks/bench_train.py --device cuda --shape 124m --batch 64 --seq 1024 --bf16 --compile

A step is `accumulation` forward + backward passes, then clipping and fused AdamW, as in training. The contenders
take turns step by step (the order rotates), so drift in the machine's speed hits all alike. "ours" trains with
the loss the recipe chooses for the device (recipe.flops.choose_loss_chunk_size); the other loss is timed too.
Ratios are against the plain reference. Prints a markdown table.
"""

import argparse
import sys

import torch

from common import SHAPES, add_shape_arguments, median, print_report, timed, twin_models
from recipe.flops import choose_loss_chunk_size, model_flops_per_token, peak_flops
from reference_gpt import ReferenceGPT

REFERENCE = "plain PyTorch (nanoGPT style)"


def contenders(args) -> dict[str, torch.nn.Module]:
    """name -> model in train mode on the device: ours as shipped, ours with the other loss, the reference, and
    transformers' GPT2LMHeadModel (sdpa)."""
    device = torch.device(args.device)
    shipped, _ = choose_loss_chunk_size(None, 50304, args.batch * args.seq, device)
    other = 0 if shipped else 4096
    ours, theirs = twin_models(args.shape, args.seq, args.device, loss_chunk_size=shipped)
    ours_other, _ = twin_models(args.shape, args.seq, args.device, loss_chunk_size=other)
    shape = SHAPES[args.shape]
    torch.manual_seed(0)
    reference = ReferenceGPT(shape["n_layer"], shape["n_embd"], shape["n_head"], max(1024, args.seq)).to(device)

    def loss_name(chunk_size):
        return f"chunked loss, {chunk_size} tokens" if chunk_size else "full logits"

    return {
        f"ours as shipped ({loss_name(shipped)})": ours,
        f"ours, {loss_name(other)}": ours_other,
        REFERENCE: reference.train(),
        "GPT2LMHeadModel (sdpa)": theirs,
    }


def make_step(model, batches: list[torch.Tensor], bf16: bool, device: str, compile: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    forward = torch.compile(model) if compile else model

    def loss_of(input_ids):
        output = forward(input_ids=input_ids, labels=input_ids)
        return output if torch.is_tensor(output) else output.loss

    def step():
        for input_ids in batches:  # gradient accumulation: the loss of each micro-batch weighs 1 / len(batches)
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
                loss = loss_of(input_ids) / len(batches)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run(args) -> list[dict]:
    """The table's rows: one per contender (step time, tokens/s, ratio to the reference, MFU and peak memory on a
    GPU), measured over `args.steps` rotating rounds after `args.warmup`."""
    models = contenders(args)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 50257, (args.batch, args.seq), generator=generator).to(args.device)
               for _ in range(args.accumulation)]
    steps = {name: make_step(model, batches, args.bf16, args.device, args.compile) for name, model in models.items()}
    cuda = args.device.startswith("cuda")
    seconds = {name: [] for name in steps}
    peak_memory = dict.fromkeys(steps, 0)
    names = list(steps)
    for iteration in range(args.warmup + args.steps):
        for name in names[iteration % len(names):] + names[: iteration % len(names)]:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            elapsed = timed(steps[name], args.device)
            if cuda:
                peak_memory[name] = max(peak_memory[name], torch.cuda.max_memory_allocated())
            if iteration >= args.warmup:
                seconds[name].append(elapsed)

    tokens = args.batch * args.seq * args.accumulation
    ours = next(iter(models.values()))
    flops = model_flops_per_token(ours, args.seq)
    peak = peak_flops(torch.cuda.get_device_name()) if cuda else None
    reference_time = median(seconds[REFERENCE])
    rows = []
    for name in steps:
        step_time = median(seconds[name])
        row = {"model": name, "step (ms)": f"{step_time * 1e3:.1f}", "tokens/s": f"{tokens / step_time:,.0f}",
               "vs reference": f"**{reference_time / step_time:.2f}x**"}
        if peak:
            row["MFU"] = f"{tokens / step_time * flops / peak:.1%}"
        if cuda:
            row["peak memory (GiB)"] = f"{peak_memory[name] / 2**30:.1f}"
        rows.append(row)
    return rows


def add_arguments(parser, shape: str, batch: int, seq: int) -> None:
    add_shape_arguments(parser, shape=shape, batch=batch, seq=seq)
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=10, help="measured rounds (one step of each contender)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first (compilation)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every contender")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, shape="small", batch=8, seq=256)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = run(args)
    print_report("Training step: ours vs a plain PyTorch GPT-2 and GPT2LMHeadModel", argv,
                 f"shape {args.shape}, {args.accumulation} x {args.batch} x {args.seq} tokens a step, "
                 f"{'bf16' if args.bf16 else 'fp32'}, {'compiled' if args.compile else 'eager'}, fused AdamW, "
                 f"clipping; median of {args.steps} rotating rounds", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
