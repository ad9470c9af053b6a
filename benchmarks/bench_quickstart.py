"""The quick start's cost and quality: candidate configs trained with the real command, side by side.

    python benchmarks/bench_quickstart.py                       # every candidate below, one after the other
    python benchmarks/bench_quickstart.py --only shipped 3x96   # some of them
    python benchmarks/bench_quickstart.py --config C --only shipped   # another base config (the tests' tiny one)
    python benchmarks/bench_quickstart.py --config configs/shakespeare.json configs/shakespeare_adamw.json \
        --only shipped --nanogpt ../nanoGPT                    # the quick start beside nanoGPT's CPU command

Each candidate is a config (by default `configs/shakespeare_adamw.json`, the sweep's base) with some keys changed, run as a user runs it (`python recipe/train.py`,
a fresh output directory and datasets cache, so the BPE is trained and the corpus tokenized as on a first run). It
reports the training compute (FLOPs per token, 6N + attention, times the tokens trained on: the figure compared
with nanoGPT's CPU run, 8.0 TFLOP), the validation bits per byte over all the held-out documents (every byte's
token predicted once), the wall time of the whole command, the time of the training steps (Trainer's runtime less
its evaluations), their tokens/s, and the rest: imports, BPE, tokenization, evaluation, saving.

--nanogpt DIR (a checkout of karpathy/nanoGPT; not part of this repository) runs nanoGPT's README command for a CPU
(its train_shakespeare_char config, 4 layers x 128, 2,000 iterations) in the same session, on a character dataset
written from exactly the documents of the first config's split (its training and held-out documents, in order,
into DIR/data/qs_char), and scores its checkpoint on every held-out character after the first, in non-overlapping
64-character windows: bits per byte are its nats per character / ln 2 (the corpus is ASCII, a byte a character).
"""

import argparse
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_report

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "shakespeare_adamw.json"

# name -> settings that differ from the config; every candidate is evaluated once, at the end, on all
# the held-out documents, and saves once, at the end.
def candidate(steps: int, **settings) -> dict:
    """Batch 64 x 64 tokens (4,096 a step) unless the settings say otherwise, whatever the shipped config has."""
    return {"max_steps": steps, "eval_steps": steps, "save_steps": steps, "max_eval_samples": None,
            "per_device_train_batch_size": 64, **settings}


def shape(layers: int, width: int, heads: int, context: int = 64) -> dict:
    return {"model_config": {"n_layer": layers, "n_embd": width, "n_head": heads, "n_positions": context},
            "block_size": context}


CANDIDATES = {
    "shipped": {},
    "4x128, 289 steps": candidate(289, **shape(4, 128, 4)),
    "4x96, 467 steps": candidate(467, **shape(4, 96, 4)),
    "4x96, T128, 436 steps": candidate(436, **shape(4, 96, 4, 128), per_device_train_batch_size=32),
    "3x96, T128, 534 steps": candidate(534, **shape(3, 96, 3, 128), per_device_train_batch_size=32),
    "4x96, BPE 1024, 544 steps": candidate(544, **shape(4, 96, 4), train_tokenizer_vocab_size=1024),
    "3x96, 568 steps": candidate(568, **shape(3, 96, 3)),
    "4x80, 627 steps": candidate(627, **shape(4, 80, 4)),
    "4x64, 889 steps": candidate(889, **shape(4, 64, 4)),
    "4x96, batch 32, 933 steps": candidate(933, **shape(4, 96, 4), per_device_train_batch_size=32),
    "4x96, 467 steps, lr 6e-3": candidate(467, **shape(4, 96, 4), learning_rate=6e-3),
    "4x64, batch 32, 1778 steps": candidate(1778, **shape(4, 64, 4), per_device_train_batch_size=32),
    "4x80, batch 32, 1254 steps": candidate(1254, **shape(4, 80, 4), per_device_train_batch_size=32),
    "3x96, batch 32, 1136 steps": candidate(1136, **shape(3, 96, 3), per_device_train_batch_size=32),
    "3x64, 1058 steps": candidate(1058, **shape(3, 64, 4)),
    "4x48, 1370 steps": candidate(1370, **shape(4, 48, 4)),
    "6x64, 674 steps": candidate(674, **shape(6, 64, 4)),
    "4x64, 889 steps, lr 6e-3": candidate(889, **shape(4, 64, 4), learning_rate=6e-3),
    "4x64, BPE 1536, 977 steps": candidate(977, **shape(4, 64, 4), train_tokenizer_vocab_size=1536),
}


def run(name: str, base: Path, overrides: dict, workdir: Path, threads: int | None) -> dict:
    slug = "".join(char if char.isalnum() else "-" for char in name)
    config = {**json.loads(base.read_text()), **overrides, "output_dir": str(workdir / slug)}  # tensorboard too, as shipped
    config = {key: value for key, value in config.items() if value is not None}
    config_file = workdir / f"{slug}.json"
    config_file.write_text(json.dumps(config))
    environment = {**os.environ, "HF_DATASETS_CACHE": str(workdir / f"{slug}-cache")}
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "recipe/train.py", str(config_file)], cwd=REPO, env=environment,
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{name} failed: {result.stderr[-2000:]}")
    plan = json.loads(next(line for line in result.stdout.splitlines() if line.startswith('{"data"')))
    output = workdir / slug
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    final = json.loads((output / "eval_results.json").read_text())
    train_runtime = json.loads((output / "train_results.json").read_text())["train_runtime"]
    evaluating = sum(entry.get("eval_runtime", 0.0) for entry in history)
    training = train_runtime - evaluating
    tokens = plan["total_tokens"]
    shutil.rmtree(workdir / f"{slug}-cache", ignore_errors=True)
    return {
        "candidate": name,
        "settings": ", ".join(f"{key}={value}" for key, value in overrides.items()) or "as shipped",
        "parameters": f"{plan['parameters']:,}",
        "tokens": f"{tokens:,}",
        "TFLOP": f"{plan['flops_per_token'] * tokens / 1e12:.3g}",
        "eval bpb": f"{final['eval_bpb']:.3f}",
        "eval loss": f"{final['eval_loss']:.3f}",
        "wall s": f"{wall:.0f}",
        "training steps s": f"{training:.0f}",
        "tokens/s": f"{tokens / training:,.0f}",
        "rest s": f"{wall - training:.1f}",
    }


# nanoGPT's README command for a CPU, at the quick start's block of 64 tokens and without dropout (as in RESULTS.md).
NANOGPT_COMMAND = ["train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
                   "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4",
                   "--n_head=4", "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0",
                   "--dataset=qs_char"]
NANOGPT_TFLOP = 8.0  # its compute, as RESULTS.md counts it


def write_character_dataset(config: Path, nanogpt: Path) -> tuple[Path, str]:
    """nanoGPT's data/qs_char from the config's own training and held-out documents; returns it and the held-out
    text."""
    import numpy as np

    from recipe.args import parse_settings
    from recipe.pipeline import load_documents

    data = parse_settings(config, ["--output_dir", tempfile.mkdtemp()]).data
    documents = load_documents(data)
    train, validation = ("".join(documents[split][data.text_column]) for split in ("train", "validation"))
    characters = sorted(set(train + validation))
    index = {character: i for i, character in enumerate(characters)}
    directory = nanogpt / "data" / "qs_char"
    directory.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("val", validation)):
        np.array([index[character] for character in text], dtype=np.uint16).tofile(directory / f"{split}.bin")
    with open(directory / "meta.pkl", "wb") as handle:
        pickle.dump({"vocab_size": len(characters), "itos": dict(enumerate(characters)), "stoi": index}, handle)
    return directory, validation


def run_nanogpt(nanogpt: Path, config: Path, workdir: Path, threads: int | None) -> dict:
    """nanoGPT's command, timed as the recipe's is, then its checkpoint scored on every held-out character."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    directory, validation = write_character_dataset(config, nanogpt)
    out_dir = workdir / "nanogpt-out"
    environment = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *NANOGPT_COMMAND, f"--out_dir={out_dir}"], cwd=nanogpt, env=environment,
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"nanoGPT failed: {result.stderr[-2000:]}")
    sys.path.insert(0, str(nanogpt))
    from model import GPT, GPTConfig  # nanoGPT's model.py

    checkpoint = torch.load(out_dir / "ckpt.pt", map_location="cpu", weights_only=False)  # written just now
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict({key.removeprefix("_orig_mod."): value for key, value in checkpoint["model"].items()})
    model.eval()
    ids = torch.from_numpy(np.fromfile(directory / "val.bin", dtype=np.uint16).astype(np.int64))
    nats, window = 0.0, 64
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            x, y = ids[start : start + window], ids[start + 1 : start + window + 1]
            logits, _ = model(x[: len(y)][None], y[None])
            nats += F.cross_entropy(logits[0], y, reduction="sum").item()
    assert len(validation.encode()) == len(validation)  # ASCII: a byte a character
    return {"candidate": "nanoGPT's CPU command", "settings": " ".join(NANOGPT_COMMAND[1:]),
            "parameters": f"{sum(p.numel() for p in model.parameters()):,}", "tokens": "1.54M characters",
            "TFLOP": f"{NANOGPT_TFLOP:.3g}", "eval bpb": f"{nats / math.log(2) / (len(ids) - 1):.3f}",
            "eval loss": f"{nats / (len(ids) - 1):.3f}", "wall s": f"{wall:.0f}", "training steps s": "",
            "tokens/s": "", "rest s": ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=list(CANDIDATES), help="these candidates only")
    parser.add_argument("--config", type=Path, nargs="+", default=[CONFIG], help="the configs the candidates change")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of each run (default: the machine's)")
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: run its CPU command too, on the same text")
    args = parser.parse_args()
    names = args.only or list(CANDIDATES)
    with tempfile.TemporaryDirectory() as workdir:
        rows = []
        if args.nanogpt:
            rows.append(run_nanogpt(args.nanogpt.resolve(), args.config[0].resolve(), Path(workdir), args.threads))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        for config in args.config:
            for name in names:
                label = name if len(args.config) == 1 else f"{config.name}: {name}"
                rows.append(run(label, config.resolve(), CANDIDATES[name], Path(workdir), args.threads))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print_report(f"The quick start: candidates for {', '.join(config.name for config in args.config)}", None,
                 "Validation bits per byte over all the held-out documents; compute = FLOPs per token x tokens trained.",
                 rows)


if __name__ == "__main__":
    main()
