"""Muon's Newton-Schulz work per process, with the matrices split among 1 and 2 processes, and what that makes of it
on 8 GPUs.

    python benchmarks/bench_muon.py                   # GPT-2 124M's matrices (12 blocks of 768 wide), 1 and 2 processes
    python benchmarks/bench_muon.py --shape quickstart --steps 50

Each process (gloo, one thread, as the CPU launcher runs them) holds every Muon matrix of the model whole, as under
DDP, with the same random gradients, and times recipe.muon.Muon's step: momentum, its own matrices' Newton-Schulz
(in the precision recipe.muon chooses for the device and shape) and the one all-gather of the results. The
Newton-Schulz seconds of each process are timed apart (around `recipe.muon.orthogonalise`). Then the FLOPs: per
matrix block of n <= m, 5 iterations of 4 n^2 m + 2 n^3, summed, against each GPU's share of a training step of the
model at the 124M recipe's 524,288 tokens (6N + attention per token, recipe.flops): the fraction of its step each
GPU spends orthogonalising when every GPU does all of it, and when the work is split 8 ways (the busiest owner, from
recipe.muon.owners); printed for the 124M shape, the one trained on GPUs. A last row times one process iterating in
bf16 at every size, as torch's Muon does, against recipe.muon's choice for a CPU.
"""

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import print_report  # noqa: E402
from recipe import GPTConfig, GPTForCausalLM  # noqa: E402
from recipe import muon  # noqa: E402
from recipe.flops import flops_per_token  # noqa: E402
from recipe.optimization import FUSED_QKV_BLOCKS, fused_qkv_names, muon_parameter_names  # noqa: E402

SHAPES = {"124m": dict(n_layer=12, n_embd=768, n_head=12),
          "quickstart": dict(n_layer=4, n_embd=64, n_head=4, n_positions=64, vocab_size=2048)}
TOKENS_PER_STEP = 524_288  # configs/gpt2_124m.json


def muon_matrices(shape: str) -> list[tuple[str, tuple[int, int], int]]:
    """(name, shape, row blocks) of every matrix Muon takes in the model, as recipe.optimization groups them."""
    with torch.device("meta"):
        model = GPTForCausalLM(GPTConfig(**SHAPES[shape]))
    qkv, parameters = set(fused_qkv_names(model)), dict(model.named_parameters())
    return [(name, tuple(parameters[name].shape), FUSED_QKV_BLOCKS if name in qkv else 1)
            for name in muon_parameter_names(model)]


def newton_schulz_flops(matrices) -> list[float]:
    """FLOPs of each matrix's 5 iterations: per block of n <= m, x x^T (2n^2 m), gram^2 (2n^3), update x (2n^2 m)."""
    flops = []
    for _, (rows, columns), blocks in matrices:
        n, m = sorted((rows // blocks, columns))
        flops.append(blocks * muon.NS_STEPS * (4 * n * n * m + 2 * n ** 3))
    return flops


def timed_steps(rank: int, processes: int, port: int, shape: str, steps: int, output: str, bf16: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if bf16:  # torch's Muon's precision at every size, for comparison
        muon.CPU_BF16_MIN_SIDE = 0
    if processes > 1:
        dist.init_process_group("gloo", rank=rank, world_size=processes)
    generator = torch.Generator().manual_seed(0)
    parameters = [torch.nn.Parameter(torch.randn(size, generator=generator) * 0.02)
                  for _, size, _ in muon_matrices(shape)]
    groups = [{"params": [p], "row_blocks": blocks} for p, (_, _, blocks) in zip(parameters, muon_matrices(shape))]
    optimizer = muon.Muon(groups, lr=0.02, momentum=0.95, weight_decay=0.0)
    seconds_in_newton_schulz = [0.0]
    orthogonalise = muon.orthogonalise

    def timed_orthogonalise(update, row_blocks):
        start = time.perf_counter()
        result = orthogonalise(update, row_blocks)
        seconds_in_newton_schulz[0] += time.perf_counter() - start
        return result

    muon.orthogonalise = timed_orthogonalise
    step_seconds = []
    for step in range(steps + 1):  # the first is a warm-up
        for parameter in parameters:
            parameter.grad = torch.randn(parameter.shape, generator=generator)
        if processes > 1:
            dist.barrier()
        if step == 1:
            seconds_in_newton_schulz[0] = 0.0
        start = time.perf_counter()
        optimizer.step()
        if step:
            step_seconds.append(time.perf_counter() - start)
    torch.save({"step": sum(step_seconds) / steps, "newton_schulz": seconds_in_newton_schulz[0] / steps},
               f"{output}/{processes}-{rank}-{bf16}.pt")
    if processes > 1:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="124m", choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps (after one warm-up)")
    parser.add_argument("--output", default="/tmp/bench_muon")
    args = parser.parse_args(argv)
    Path(args.output).mkdir(parents=True, exist_ok=True)

    matrices = muon_matrices(args.shape)
    rows = []
    for processes, bf16 in ((1, False), (2, False), (1, True)):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        mp.spawn(timed_steps, args=(processes, port, args.shape, args.steps, args.output, bf16), nprocs=processes)
        for rank in range(processes):
            result = torch.load(f"{args.output}/{processes}-{rank}-{bf16}.pt")
            rows.append({"processes": processes, "process": rank,
                         "precision": "bf16 for every matrix (torch's)" if bf16 else "recipe.muon's choice",
                         "Newton-Schulz ms / step": f"{result['newton_schulz'] * 1e3:.1f}",
                         "Muon step ms": f"{result['step'] * 1e3:.1f}"})

    flops = newton_schulz_flops(matrices)
    config = GPTConfig(**SHAPES[args.shape])
    with torch.device("meta"):
        parameters = GPTForCausalLM(config).num_parameters()
    step_flops = flops_per_token(config, parameters, config.n_positions) * TOKENS_PER_STEP
    gpus = 8
    busiest = max(sum(f for f, owner in zip(flops, muon.owners(flops, gpus)) if owner == process)
                  for process in range(gpus))
    share = step_flops / gpus
    projection = "" if args.shape != "124m" else (
        f" Newton-Schulz: {sum(flops) / 1e12:.2f} TFLOP a step for {len(matrices)} matrices. On {gpus} GPUs at "
        f"{TOKENS_PER_STEP:,} tokens a step each GPU's share of the training step is {share / 1e12:.1f} TFLOP: "
        f"every GPU orthogonalising every matrix adds {sum(flops) / share:.1%} to it, split among the {gpus} "
        f"({busiest / 1e12:.3f} TFLOP on the busiest) {busiest / share:.2%}."
    )
    print_report(f"Muon's Newton-Schulz per process ({args.shape})", argv,
                 f"recipe.muon.Muon steps of the model's {len(matrices)} Muon matrices, gloo, 1 thread a process, "
                 f"{args.steps} timed steps after a warm-up; the precision is recipe.muon's for a CPU." + projection,
                 rows)


if __name__ == "__main__":
    main()
