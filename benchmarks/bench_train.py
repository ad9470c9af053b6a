"""Training-step speed: our GPT vs transformers' GPT2LMHeadModel, same weights, same batch, steps interleaved.

    python benchmarks/bench_train.py --device cpu --shape small --batch 8 --seq 256
    python benchmarks/bench_train.py --device cuda --shape 124m --batch 16 --seq 1024 --bf16 --compile

A step is forward + backward + clip + fused AdamW, as in training. The two models alternate step by step (and
which goes first alternates too), so drift in the machine's speed hits both alike. Prints a markdown table.
"""

import argparse
import sys

import torch

from common import add_shape_arguments, median, print_report, timed, twin_models
from recipe.flops import model_flops_per_token, peak_flops


def make_step(model, input_ids, bf16: bool, device: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step():
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run(args) -> list[dict]:
    ours, theirs = twin_models(args.shape, args.seq, args.device, loss_chunk_size=args.loss_chunk_size)
    if args.compile:
        ours, theirs = torch.compile(ours), torch.compile(theirs)
    input_ids = torch.randint(0, 50257, (args.batch, args.seq), device=args.device)
    steps = {"ours": make_step(ours, input_ids, args.bf16, args.device),
             "GPT2LMHeadModel": make_step(theirs, input_ids, args.bf16, args.device)}
    seconds = {name: [] for name in steps}
    peak_memory = {name: 0 for name in steps}
    for iteration in range(args.warmup + args.steps):
        order = list(steps) if iteration % 2 == 0 else list(reversed(steps))
        for name in order:
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            elapsed = timed(steps[name], args.device)
            if args.device.startswith("cuda"):
                peak_memory[name] = max(peak_memory[name], torch.cuda.max_memory_allocated())
            if iteration >= args.warmup:
                seconds[name].append(elapsed)

    tokens = args.batch * args.seq
    flops = model_flops_per_token(getattr(ours, "_orig_mod", ours), args.seq)
    peak = peak_flops(torch.cuda.get_device_name()) if args.device.startswith("cuda") else None
    rows = []
    for name in steps:
        step_time = median(seconds[name])
        row = {"model": name, "step (ms)": f"{step_time * 1e3:.1f}", "tokens/s": f"{tokens / step_time:,.0f}"}
        if peak:
            row["MFU"] = f"{tokens / step_time * flops / peak:.1%}"
            row["peak memory (GiB)"] = f"{peak_memory[name] / 2**30:.2f}"
        rows.append(row)
    ratio = median(seconds["GPT2LMHeadModel"]) / median(seconds["ours"])
    rows.append({key: "" for key in rows[0]} | {"model": "ratio ours / GPT2LMHeadModel",
                                                 "tokens/s": f"**{ratio:.2f}x**"})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_arguments(parser, shape="small", batch=8, seq=256)
    parser.add_argument("--steps", type=int, default=10, help="measured steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per model first")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--loss_chunk_size", type=int, default=4096,
                        help="our fused chunked cross-entropy, as the recipe trains (0: the library loss on full logits)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = run(args)
    loss = f"chunked cross-entropy ({args.loss_chunk_size} tokens)" if args.loss_chunk_size else "library loss"
    print_report("Training step: ours vs GPT2LMHeadModel (sdpa)", argv,
                 f"shape {args.shape}, batch {args.batch} x {args.seq} tokens, {'bf16' if args.bf16 else 'fp32'}, "
                 f"{'compiled' if args.compile else 'eager'}, ours with the {loss}, median of {args.steps} "
                 f"interleaved steps", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
