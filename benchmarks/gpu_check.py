"""The GPU check behind gpu_check.sh: does the 124M path learn, is it right under torch.compile, is it fast.

    python benchmarks/gpu_check.py                 # one GPU: GPT-2 124M, bf16, torch.compile (~6 min on an H100)
    python benchmarks/gpu_check.py --device cpu    # a dry run of every step at a tiny shape, eager, fp32

(a) learning: configs/gpt2_124m.json through the real Trainer path (recipe.train) on the bundled corpus for ~15
    optimizer steps: FAIL unless the loss falls by at least 1.0 nat and no step's gradient norm is zero; its
    tokens/s against the bare step of (b) is the Trainer overhead.
(b) speed: one optimizer step of ours as shipped, ours with the other loss, a plain PyTorch GPT-2 (nanoGPT style)
    and GPT2LMHeadModel, side by side (bench_train.py), with MFU and peak memory; FAIL if ours as shipped is
    slower than the plain reference.
(c) correctness under compile: compiled vs eager gradients (relative error) for the full and chunked loss and for
    sdpa and flex attention, and bf16 logits against GPT2LMHeadModel's. (The dry run compiles with the "eager"
    backend: it checks the script, tests/test_compile.py checks inductor on the CPU.)
(d) decoding: batch-1 greedy new tokens/s, eager (dynamic cache), static cache + compiled forward, and
    GPT2LMHeadModel; the compiled path must give the same tokens.
Prints one markdown table and exits 1 if any check FAILs.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import bench_train
from common import header, table, timed, twin_models
from recipe import GPTConfig, GPTForCausalLM

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECK_CONFIG = REPO_ROOT / "configs" / "gpt2_124m.json"
# What (a) changes in the shipped config: the bundled corpus instead of FineWeb-Edu, a short run with a short
# warm-up (so the learning rate is high enough to show learning in 15 steps), nothing saved.
DATA_KEYS = ("dataset_name", "dataset_config_name", "streaming", "validation_documents", "validation_tokens",
             "prepared_dir", "preprocessing_num_workers")
SHORT_RUN = {"train_files": [str(REPO_ROOT / "data" / "shakespeare")], "validation_split_percentage": 5,
             "warmup_steps": 2, "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no",
             "report_to": "none", "sample_max_new_tokens": 0, "dataloader_num_workers": 2}


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def learning(args, bare_tokens_per_second: float | None) -> list[dict]:
    """(a) The shipped config's Trainer path on the bundled corpus."""
    from recipe.args import parse_settings
    from recipe.train import train

    config = {key: value for key, value in json.loads(CHECK_CONFIG.read_text()).items() if key not in DATA_KEYS}
    config.update(SHORT_RUN, max_steps=args.train_steps)
    if not args.device.startswith("cuda"):  # the dry run: a tiny GPT, small batches, no compilation
        config.update(model_config={"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": args.seq},
                      block_size=args.seq, per_device_train_batch_size=args.batch, per_device_eval_batch_size=2,
                      tokens_per_step=args.batch * args.seq * args.accumulation, torch_compile=False,
                      learning_rate=3e-3, dataloader_num_workers=0, max_eval_samples=8)
    with tempfile.TemporaryDirectory() as directory:
        config_file = Path(directory) / "config.json"
        config_file.write_text(json.dumps({**config, "output_dir": str(Path(directory) / "run")}))
        start = time.perf_counter()
        trainer = train(parse_settings(config_file))
        seconds = time.perf_counter() - start
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "grad_norm" in entry]
    losses, norms = [entry["loss"] for entry in logs], [entry["grad_norm"] for entry in logs]
    rates = [entry["tokens_per_second"] for entry in logs[len(logs) // 2:] if "tokens_per_second" in entry]
    fall = losses[0] - losses[-1]
    rows = [
        {"check": f"(a) Trainer path of gpt2_124m.json, {len(losses)} steps: loss first -> last",
         "value": f"{losses[0]:.3f} -> {losses[-1]:.3f} (-{fall:.2f} nat)", "target": ">= 1.0 nat lower",
         "verdict": verdict(fall >= 1.0)},
        {"check": "(a) smallest gradient norm of a step", "value": f"{min(norms):.3g}", "target": "> 0",
         "verdict": verdict(min(norms) > 0)},
        {"check": "(a) wall time of the run (build, data, compile, steps)", "value": f"{seconds:.0f} s",
         "target": "report", "verdict": ""},
    ]
    if rates and bare_tokens_per_second:
        trainer_rate = statistics.median(rates)
        overhead = 1 - trainer_rate / bare_tokens_per_second
        rows.append({"check": "(a) Trainer tokens/s (median, 2nd half) vs the bare step of ours as shipped (b)",
                     "value": f"{trainer_rate:,.0f} vs {bare_tokens_per_second:,.0f}: overhead {overhead:.1%}",
                     "target": "<= 3% slower" if args.device.startswith("cuda") else "report",
                     "verdict": verdict(overhead <= 0.03) if args.device.startswith("cuda") else ""})
    return rows


def speed(args) -> tuple[list[dict], float]:
    """(b) The step-time table; returns its rows and ours-as-shipped tokens/s."""
    rows = bench_train.run(args)
    print(table(rows) + "\n", flush=True)
    ours = rows[0]
    ratio = float(ours["vs reference"].strip("*x"))
    cuda = args.device.startswith("cuda")
    result = [{"check": f"(b) step, {row['model']}", "value": f"{row['step (ms)']} ms, {row['tokens/s']} tokens/s"
               + (f", MFU {row['MFU']}" if "MFU" in row else "")
               + (f", peak {row['peak memory (GiB)']} GiB" if "peak memory (GiB)" in row else ""),
               "target": "report", "verdict": ""} for row in rows]
    result.append({"check": "(b) ours as shipped vs the plain reference, same GPU, same run",
                   "value": f"{ratio:.2f}x", "target": ">= 1.00x" if cuda else "report",
                   "verdict": verdict(ratio >= 1.0) if cuda else ""})
    return result, float(ours["tokens/s"].replace(",", ""))


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference.float()).norm() / reference.float().norm().clamp(min=1e-12)).item()


def compiled_gradients(args) -> list[dict]:
    """(c) Compiled vs eager gradients of a 2-layer GPT-2-wide model, per training path; bf16 logits parity."""
    rows = []
    cuda = args.device.startswith("cuda")
    width = dict(n_embd=768, n_head=12) if cuda else dict(n_embd=64, n_head=4)
    paths = {"full logits, sdpa": (0, "sdpa"), "chunked loss, sdpa": (4096 if cuda else 16, "sdpa")}
    if cuda:  # flex attention has no backward on the CPU
        paths["full logits, flex attention"] = (0, "flex_attention")
    input_ids = torch.randint(0, 50257, (4 if cuda else 2, args.seq), device=args.device)
    for name, (chunk_size, attention) in paths.items():
        torch.manual_seed(0)
        config = GPTConfig(n_layer=2, n_positions=max(1024, args.seq), make_vocab_size_divisible_by=64,
                           loss_chunk_size=chunk_size, **width)
        model = GPTForCausalLM(config).to(args.device).train()
        model.set_attn_implementation(attention)
        gradients = []
        for step in (model, torch.compile(model, backend=args.compile_backend)):
            model.zero_grad(set_to_none=True)
            with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
                loss = step(input_ids=input_ids, labels=input_ids).loss
            loss.backward()
            gradients.append(torch.cat([parameter.grad.flatten().float() for parameter in model.parameters()]))
        eager, compiled = gradients
        error = relative_error(compiled, eager)
        limit = 1e-2 if args.bf16 else 1e-5
        rows.append({"check": f"(c) compiled vs eager gradients, {name}",
                     "value": f"relative error {error:.1e}, compiled norm {compiled.norm():.3g}",
                     "target": f"<= {limit:g}, norm > 0", "verdict": verdict(error <= limit and compiled.norm() > 0)})
        del model
    ours, theirs = twin_models(args.shape, args.seq, args.device)
    ours.eval(), theirs.eval()
    input_ids = torch.randint(0, 50257, (2, args.seq), device=args.device)
    with torch.no_grad():
        ours_fp32, theirs_fp32 = ours(input_ids).logits, theirs(input_ids).logits
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16):
            ours_bf16, theirs_bf16 = ours(input_ids).logits, theirs(input_ids).logits
    ours_error, theirs_error = relative_error(ours_bf16, ours_fp32), relative_error(theirs_bf16, theirs_fp32)
    rows.append({"check": "(c) bf16 logits, relative error vs fp32 (ours / GPT2LMHeadModel)",
                 "value": f"{ours_error:.2e} / {theirs_error:.2e}", "target": "ours <= 1e-2 and <= 1.5x theirs",
                 "verdict": verdict(ours_error <= 1e-2 and ours_error <= 1.5 * theirs_error)})
    return rows


def decoding(args) -> list[dict]:
    """(d) Batch-1 greedy decoding speed: eager with the dynamic cache, static cache + compiled, GPT2LMHeadModel."""
    ours, theirs = twin_models(args.shape, args.prompt + args.new_tokens, args.device)
    ours.eval(), theirs.eval()
    prompt = torch.randint(0, 50257, (1, args.prompt), device=args.device)

    def decode(model, **options):
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, pad_token_id=50256,
                              max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **options)

    from transformers import CompileConfig

    compile_config = CompileConfig(fullgraph=True, backend=args.compile_backend)
    compile_config._compile_all_devices = True  # generate() compiles only on accelerators unless told
    variants = {"ours, dynamic cache, eager": (ours, {}),
                "ours, static cache + compiled forward": (ours, {"cache_implementation": "static",
                                                                 "compile_config": compile_config}),
                "GPT2LMHeadModel, dynamic cache, eager": (theirs, {})}
    rows, tokens = [], {}
    with torch.no_grad():
        for name, (model, options) in variants.items():
            tokens[name] = decode(model, **options)  # warm-up (and compilation)
            seconds = statistics.median(timed(lambda: decode(model, **options), args.device) for _ in range(3))
            rows.append({"check": f"(d) decoding, {name}", "value": f"{args.new_tokens / seconds:,.0f} new tokens/s",
                         "target": ">= 675 (3x 225)" if "compiled" in name and args.device.startswith("cuda")
                         else "report", "verdict": ""})
            if "compiled" in name and args.device.startswith("cuda"):
                rows[-1]["verdict"] = verdict(args.new_tokens / seconds >= 675)
    same = all(torch.equal(output, tokens["ours, dynamic cache, eager"]) for output in tokens.values())
    rows.append({"check": "(d) the three generate the same tokens", "value": str(same), "target": "True",
                 "verdict": verdict(same)})
    return rows


def main(argv=None) -> int:
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default="cuda")
    cuda = device.parse_known_args(argv)[0].device.startswith("cuda")  # the defaults below depend on it
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_train.add_arguments(parser, shape="124m" if cuda else "tiny", batch=64 if cuda else 2,
                              seq=1024 if cuda else 64)
    parser.set_defaults(device="cuda", accumulation=8 if cuda else 2, steps=5 if cuda else 2, warmup=2 if cuda else 1,
                        bf16=cuda, compile=cuda)
    parser.add_argument("--train_steps", type=int, default=15, help="(a): optimizer steps of the Trainer run")
    parser.add_argument("--prompt", type=int, default=32, help="(d): prompt tokens")
    parser.add_argument("--new_tokens", type=int, default=128 if cuda else 8, help="(d): new tokens")
    args = parser.parse_args(argv)
    args.compile_backend = "inductor" if args.compile else "eager"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    command = "bash benchmarks/gpu_check.sh " + " ".join(sys.argv[1:] if argv is None else argv)
    print(header("GPU check", command), flush=True)

    sections, durations = {}, {}
    start = time.perf_counter()
    sections["(b)"], ours_tokens_per_second = speed(args)  # first: (a) compares the Trainer with its bare step
    durations["(b)"] = time.perf_counter() - start
    for name, section in (("(a)", lambda: learning(args, ours_tokens_per_second)),
                          ("(c)", lambda: compiled_gradients(args)), ("(d)", lambda: decoding(args))):
        start = time.perf_counter()
        sections[name] = section()
        durations[name] = time.perf_counter() - start
        if cuda:
            torch.cuda.empty_cache()
    rows = [row for name in sorted(sections) for row in sections[name]]
    print(table(rows))
    print("\nseconds per section: " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in sorted(durations.items())))
    return 0 if all(row["verdict"] != "FAIL" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
