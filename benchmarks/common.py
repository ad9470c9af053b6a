"""Shared pieces of the benchmarks: the two models with the same weights, timing, and the report table."""

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from recipe import GPTForCausalLM
from recipe.sources import gpt_config_from_gpt2, state_dict_from_openai

SHAPES = {
    "tiny": dict(n_layer=2, n_embd=128, n_head=4),
    "small": dict(n_layer=6, n_embd=384, n_head=6),
    "124m": dict(n_layer=12, n_embd=768, n_head=12),
}


def twin_models(shape: str, seq_len: int, device: str, loss_chunk_size: int = 0, attn: str = "sdpa", seed: int = 0):
    """(ours, transformers' GPT2LMHeadModel) with identical weights, dropout off, on `device`, in train mode."""
    torch.manual_seed(seed)
    gpt2_config = GPT2Config(
        **SHAPES[shape], n_positions=max(1024, seq_len), vocab_size=50257,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=attn,
    )
    reference = GPT2LMHeadModel(gpt2_config)
    config = gpt_config_from_gpt2(gpt2_config)
    config.loss_chunk_size = loss_chunk_size
    config._attn_implementation = attn
    ours = GPTForCausalLM(config)
    ours.load_state_dict(state_dict_from_openai(reference.state_dict(), config), strict=False)
    return ours.to(device).train(), reference.to(device).train()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    """CPU model and core count, or the GPU's name: what a reader needs to compare figures."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def versions() -> str:
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}"


def header(title: str, command: str) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return (
        f"### {title}\n\n"
        f"- command: `{command}`\n- machine: {machine()}\n- versions: {versions()}\n"
        f"- date: {datetime.date.today().isoformat()}, commit {commit or 'unknown'}\n"
    )


def print_report(title: str, argv: list[str] | None, description: str, rows: list[dict]) -> None:
    """The benchmark's markdown section: the header (command, machine, versions, date), a line, the table."""
    command = " ".join(["python", os.path.relpath(sys.argv[0]), *(sys.argv[1:] if argv is None else argv)])
    print(header(title, command))
    print(description + "\n")
    print(table(rows))


def table(rows: list[dict]) -> str:
    """A markdown table of dicts that share keys."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[key]) for key in keys) + " |" for row in rows]
    return "\n".join(lines)


def add_shape_arguments(parser, shape: str, batch: int, seq: int | None = None) -> None:
    """--device, --shape, --batch and (when `seq` is given) --seq, with these defaults."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default=shape, choices=list(SHAPES))
    parser.add_argument("--batch", type=int, default=batch)
    if seq is not None:
        parser.add_argument("--seq", type=int, default=seq, help="tokens per sequence")
