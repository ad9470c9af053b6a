"""Compiled flex attention on the CPU (inductor's C++ template) against sdpa, under each x86 vector ISA inductor can
target here: the measurement behind the tolerance of tests/test_compile.py's flex test.

    python benchmarks/flex_cpu_check.py [--isa avx512 avx2] [--threads 1 2] [--seeds 5]

Each (ISA, threads) runs in a fresh process with ATEN_CPU_CAPABILITY=<isa> (inductor compiles for that ISA, and
ATen's own kernels use it too: an AVX2-only CPU, simulated on an AVX-512 one) and a fresh inductor cache.
1. The kernel alone: torch.compile(flex_attention), causal, (2, 4, T, head_dim), against fp64 sdpa; the memory right
   after the keys holds NaN, so that a read past the keys shows as NaN instead of depending on what lies there.
2. The test's model (2 layers, 32 wide, 4 heads of 8, vocabulary 200 padded to 256, batch 2 x T, no grad) over
   `--seeds` seeds: the compiled flex model's loss and logits against the eager sdpa model's, and compiled sdpa's
   against eager sdpa's for comparison.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from common import header, table

KERNEL_SHAPES = [(24, 8), (40, 8), (24, 16), (32, 8), (48, 8), (24, 32)]  # (kv length, head_dim)
MODEL_LENGTHS = [24, 32]


def child(seeds: int) -> None:
    """In a fresh process (ISA and threads set by the parent): one JSON line per measurement."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from recipe import GPTConfig, GPTForCausalLM

    compiled_flex = torch.compile(flex_attention, dynamic=False)
    for length, head_dim in KERNEL_SHAPES:
        torch.manual_seed(0)
        query, key, value = (torch.randn(2, 4, length, head_dim) for _ in range(3))
        storage = torch.full((key.numel() + 4096,), float("nan"))  # NaN right after the keys
        padded_key = storage[: key.numel()].view_as(key).copy_(key)
        mask = create_block_mask(lambda b, h, q, kv: q >= kv, B=None, H=None, Q_LEN=length, KV_LEN=length,
                                 device="cpu")
        reference = F.scaled_dot_product_attention(query.double(), key.double(), value.double(), is_causal=True)
        error = (compiled_flex(query, padded_key, value, block_mask=mask).double() - reference).abs().max().item()
        print(json.dumps({"part": "kernel", "T": length, "head_dim": head_dim, "error": error}), flush=True)

    def model(attn: str, seed: int) -> GPTForCausalLM:
        torch.manual_seed(seed)
        config = GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=200, n_positions=32,
                           make_vocab_size_divisible_by=64, loss_chunk_size=0)
        gpt = GPTForCausalLM(config).train()
        gpt.set_attn_implementation(attn)
        return gpt

    for length in MODEL_LENGTHS:
        reference, flex, sdpa = model("sdpa", 0), model("flex_attention", 0), model("sdpa", 0)
        compiled = {"flex_attention": torch.compile(flex), "sdpa": torch.compile(sdpa)}
        for seed in range(seeds):
            weights = model("sdpa", seed).state_dict()
            for gpt in (reference, flex, sdpa):
                gpt.load_state_dict(weights)
            input_ids = torch.randint(0, 200, (2, length), generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                eager = reference(input_ids=input_ids, labels=input_ids)
                for attn, step in compiled.items():
                    out = step(input_ids=input_ids, labels=input_ids)
                    print(json.dumps({"part": "model", "T": length, "attn": attn, "seed": seed,
                                      "loss": abs(out.loss.item() - eager.loss.item()),
                                      "logits": (out.logits - eager.logits).abs().max().item()}), flush=True)


def measure(isa: str, threads: int, seeds: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as cache:
        environment = {**os.environ, "ATEN_CPU_CAPABILITY": isa, "OMP_NUM_THREADS": str(threads),
                       "TORCHINDUCTOR_CACHE_DIR": cache}
        result = subprocess.run([sys.executable, __file__, "--child", "--seeds", str(seeds)], env=environment,
                                capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"{isa}, {threads} threads: the child failed\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isa", nargs="+", default=["avx512", "avx2"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        return child(arguments.seeds)

    kernel_rows, model_rows = {}, {}
    for isa in arguments.isa:
        for threads in arguments.threads:
            column = f"{isa}, {threads} thread{'s' * (threads > 1)}"
            for row in measure(isa, threads, arguments.seeds):
                if row["part"] == "kernel":
                    key = (row["T"], row["head_dim"])
                    kernel_rows.setdefault(key, {"T": key[0], "head_dim": key[1]})[column] = f"{row['error']:.1e}"
                else:
                    key = (row["T"], row["attn"])
                    cell = model_rows.setdefault(key, {"T": key[0], "compiled": key[1]}).setdefault(column, [0, 0])
                    cell[0], cell[1] = max(cell[0], row["loss"]), max(cell[1], row["logits"])
    for row in model_rows.values():
        for column, (loss, logits) in list(row.items())[2:]:
            row[column] = f"{loss:.1e} / {logits:.1e}"
    print(header("Compiled flex attention on the CPU, against sdpa", " ".join(["python", *sys.argv])))
    print("Kernel alone: max |compiled flex - fp64 sdpa| over the output, NaN stored right after the keys.\n")
    print(table(list(kernel_rows.values())) + "\n")
    print(f"The test's model, eager sdpa as the reference, max over {arguments.seeds} seeds: |loss difference| / "
          f"max |logits difference|.\n")
    print(table(list(model_rows.values())))


if __name__ == "__main__":
    main()
