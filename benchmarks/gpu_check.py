"""The GPU check behind gpu_check.sh: correctness first, then speed, then memory, in one table.

    python benchmarks/gpu_check.py                 # one GPU: GPT-2 124M, bf16, torch.compile
    python benchmarks/gpu_check.py --device cpu    # a dry run of the same steps at a tiny shape

1. Logits parity with GPT2LMHeadModel: fp32 (max |diff| <= 1e-4) and bf16 (our and transformers' bf16 logits are
   both bf16 approximations of the same fp32 function: ours must be within 1e-2 relative error of the fp32
   logits and no further from them than transformers' own, times 1.5).
2. Training throughput and MFU, ours vs GPT2LMHeadModel, same Trainer-like step (bench_train.py).
3. Peak memory of a training step with full logits and with the chunked cross-entropy (bench_memory.py).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from bench_train import run as run_speed
from common import header, table, twin_models

HERE = Path(__file__).parent


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference.float()).norm() / reference.float().norm()).item()


def parity(shape: str, batch: int, seq: int, device: str) -> list[dict]:
    ours, theirs = twin_models(shape, seq, device)
    ours.eval(), theirs.eval()
    input_ids = torch.randint(0, 50257, (batch, seq), device=device)
    with torch.no_grad():
        ours_fp32, theirs_fp32 = ours(input_ids).logits, theirs(input_ids).logits
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            ours_bf16, theirs_bf16 = ours(input_ids).logits, theirs(input_ids).logits
    fp32_difference = (ours_fp32 - theirs_fp32).abs().max().item()
    ours_error, theirs_error = relative_error(ours_bf16, ours_fp32), relative_error(theirs_bf16, theirs_fp32)
    agreement = (ours_bf16.argmax(-1) == theirs_bf16.argmax(-1)).float().mean().item()
    return [
        {"check": "fp32 logits, max abs difference ours vs GPT2LMHeadModel", "value": f"{fp32_difference:.2e}",
         "target": "<= 1e-4", "verdict": "PASS" if fp32_difference <= 1e-4 else "FAIL"},
        {"check": "bf16 logits, relative error vs fp32 (ours / GPT2LMHeadModel)",
         "value": f"{ours_error:.2e} / {theirs_error:.2e}", "target": "ours <= 1e-2 and <= 1.5x theirs",
         "verdict": "PASS" if ours_error <= 1e-2 and ours_error <= 1.5 * theirs_error else "FAIL"},
        {"check": "bf16 next-token argmax agreement", "value": f"{agreement:.2%}", "target": "report", "verdict": ""},
    ]


def speed(args) -> list[dict]:
    speed_args = argparse.Namespace(
        device=args.device, shape=args.shape, batch=args.batch, seq=args.seq, steps=args.steps, warmup=args.warmup,
        bf16=args.bf16, compile=args.compile, loss_chunk_size=args.loss_chunk_size,
    )
    rows = run_speed(speed_args)
    ours, theirs, ratio = rows
    result = [{"check": f"training tokens/s, ours ({args.batch}x{args.seq})", "value": ours["tokens/s"],
               "target": ">= 450,000 on one H100" if args.device.startswith("cuda") else "report",
               "verdict": ""},
              {"check": "training tokens/s, GPT2LMHeadModel (sdpa)", "value": theirs["tokens/s"], "target": "report",
               "verdict": ""},
              {"check": "speed ratio ours / GPT2LMHeadModel", "value": ratio["tokens/s"].strip("*"),
               "target": ">= 1.5x" if args.device.startswith("cuda") else "report", "verdict": ""}]
    if "MFU" in ours:
        result.insert(1, {"check": "MFU, ours (6N + 12LHQT FLOPs/token, 989 TFLOP/s peak)", "value": ours["MFU"],
                          "target": "~40%", "verdict": ""})
    return result


def memory(args) -> list[dict]:
    command = [sys.executable, str(HERE / "bench_memory.py"), "--device", args.device, "--shape", args.shape,
               "--batch", str(args.memory_batch), "--seq", str(args.seq), "--loss_chunk_size", str(args.loss_chunk_size)]
    command += ["--bf16"] if args.bf16 else []
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = [line.strip("|").split("|") for line in output.splitlines() if line.startswith("| ") and "variant" not in line]
    peaks = {cells[0].strip(): float(cells[1]) if "killed" not in cells[1] else float("inf") for cells in rows}
    losses = {cells[0].strip(): float(cells[3]) if cells[3].strip() else float("nan") for cells in rows}
    saving = 1 - peaks["ours, chunked cross-entropy"] / peaks["ours"]
    loss_gap = abs(losses["ours, chunked cross-entropy"] - losses["ours"])

    def verdict(passed: bool) -> str:  # a CPU dry run at a tiny shape measures allocator noise, not the design
        return ("PASS" if passed else "FAIL") if args.device.startswith("cuda") else "(dry run)"

    return [
        {"check": f"peak memory GiB, ours / GPT2LMHeadModel ({args.memory_batch}x{args.seq})",
         "value": f"{peaks['ours']:.2f} / {peaks['GPT2LMHeadModel']:.2f}", "target": "ours <= theirs",
         "verdict": verdict(peaks["ours"] <= peaks["GPT2LMHeadModel"])},
        {"check": "peak memory cut by the chunked cross-entropy", "value": f"{saving:.1%}", "target": ">= 30%",
         "verdict": verdict(saving >= 0.30)},
        {"check": "loss, chunked vs full logits", "value": f"{loss_gap:.1e}",
         "target": "<= 1e-5 (fp32); bf16 rounding otherwise", "verdict": ""},
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    args, _ = parser.parse_known_args(argv)
    cuda = args.device.startswith("cuda")
    parser.add_argument("--shape", default="124m" if cuda else "tiny")
    parser.add_argument("--batch", type=int, default=16 if cuda else 2)
    parser.add_argument("--memory_batch", type=int, default=16 if cuda else 2)
    parser.add_argument("--seq", type=int, default=1024 if cuda else 64)
    parser.add_argument("--steps", type=int, default=20 if cuda else 2)
    parser.add_argument("--warmup", type=int, default=5 if cuda else 1)
    parser.add_argument("--loss_chunk_size", type=int, default=4096, help="ours, as the recipe trains (0: full logits)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=cuda)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=cuda)
    args = parser.parse_args(argv)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)

    rows = parity(args.shape, 2 if cuda else 1, args.seq, args.device)
    rows += speed(args)
    rows += memory(args)
    command = "bash benchmarks/gpu_check.sh " + " ".join(sys.argv[1:] if argv is None else argv)
    print(header("GPU check", command))
    print(json.dumps({key: value for key, value in vars(args).items()}))
    print()
    print(table(rows))
    return 0 if all(row["verdict"] != "FAIL" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
