"""Peak memory of one training step: ours (full logits), ours (chunked cross-entropy), GPT2LMHeadModel.

    python benchmarks/bench_memory.py --device cpu --shape 124m --batch 4 --seq 1024
    python benchmarks/bench_memory.py --device cuda --shape 124m --batch 16 --seq 1024 --bf16

Each variant runs in its own process, so one cannot inherit another's allocations. On CUDA the figure is
torch.cuda.max_memory_allocated() over the step; on CPU it is the growth of the process's peak resident set
(ru_maxrss) from just before the step, i.e. activations, gradients, optimizer state and temporaries.
"""

import argparse
import json
import resource
import subprocess
import sys

import torch

from common import add_shape_arguments, print_report, twin_models

VARIANTS = {"ours": "ours", "ours, chunked cross-entropy": "ours", "GPT2LMHeadModel": "reference"}


def resident_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(args, variant: str) -> dict:
    """One training step of one variant in this process: its peak memory and its loss."""
    chunk_size = args.loss_chunk_size if variant == "ours, chunked cross-entropy" else 0
    ours, reference = twin_models(args.shape, args.seq, args.device, loss_chunk_size=chunk_size)
    model = ours if VARIANTS[variant] == "ours" else reference
    del ours, reference
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, fused=True)
    input_ids = torch.randint(0, 50257, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(args.device)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = resident_peak_bytes()
    with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    optimizer.step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resident_peak_bytes() - before
    return {"peak_bytes": peak, "loss": loss.item()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_arguments(parser, shape="124m", batch=4, seq=1024)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--loss_chunk_size", type=int, default=4096, help="tokens per chunk of the chunked variant")
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # the worker mode
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv

    if args.variant:
        torch.manual_seed(0)
        print(json.dumps(measure(args, args.variant)))
        return 0

    results = {}
    for name in VARIANTS:
        worker = subprocess.run([sys.executable, __file__, *argv, "--variant", name], capture_output=True, text=True)
        if worker.returncode == -9:  # the kernel's OOM killer: the variant does not fit in this machine's memory
            results[name] = None
            continue
        if worker.returncode != 0:
            raise SystemExit(f"error: the {name} worker failed:\n{worker.stderr[-2000:]}")
        results[name] = json.loads(worker.stdout.strip().splitlines()[-1])
    baseline = (results["GPT2LMHeadModel"] or {}).get("peak_bytes")
    rows = []
    for name, result in results.items():
        if result is None:
            rows.append({"variant": name, "peak memory (GiB)": "killed: out of memory", "vs GPT2LMHeadModel": "",
                         "loss": ""})
            continue
        rows.append({
            "variant": name,
            "peak memory (GiB)": f"{result['peak_bytes'] / 2**30:.2f}",
            "vs GPT2LMHeadModel": f"{result['peak_bytes'] / baseline:.2f}x" if baseline else "",
            "loss": f"{result['loss']:.6f}",
        })
    print_report("Peak training-step memory", argv,
                 f"shape {args.shape}, batch {args.batch} x {args.seq} tokens, {'bf16' if args.bf16 else 'fp32'}", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
