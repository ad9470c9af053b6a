"""AdamW vs Muon on the bundled corpus, side by side: validation loss (and bits per byte, when the evaluation logs
it) against tokens, the tokens the Muon run needs to reach the AdamW run's final validation loss, and the step time
of each.

    python benchmarks/bench_optim.py                 # configs/shakespeare_adamw.json vs configs/shakespeare.json
    python benchmarks/bench_optim.py --muon_set muon_learning_rate=0.04 --muon_set max_steps=300   # a sweep point

Both runs are recipe.train as a user runs it, with the configs' own seed, so they start from the same weights (checked
below) and read the training blocks in the same order (Trainer's sampler, seeded), and both use one tokenizer (the
AdamW run's, trained once). They are evaluated every --eval_steps on the configs' validation blocks. The tokens to
reach the AdamW run's final loss are interpolated between the Muon run's evaluations. The step times come from
short extra runs of each config, alternating (--timing_rounds), so the load of a shared machine falls on both alike;
the load average is printed. --plot draws both runs with recipe.plot's overlay. --muon_qkv whole orthogonalises
c_attn as one matrix instead of the recipe's three q, k, v blocks (the measurement behind that choice:
benchmarks/RESULTS.md).
"""

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from transformers import set_seed

from common import print_report
from recipe import optimization
from recipe.args import parse_settings
from recipe.curves import plot_runs
from recipe.pipeline import TRAINED_TOKENIZER_DIR, load_or_train_tokenizer
from recipe.sources import build_model
from recipe.train import train

REPO_ROOT = Path(__file__).resolve().parent.parent
QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--sample_max_new_tokens", "0", "--save_strategy", "no"]


def settings_for(config: Path, output_dir: Path, overrides: list[str]):
    return parse_settings(config, [*overrides, *QUIET, "--output_dir", str(output_dir),
                                   "--overwrite_output_dir", "true"])


@contextlib.contextmanager
def output_to_stderr():
    """Send stdout to stderr, Python's and the file descriptor's (the tokenizers library's BPE trainer writes there)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def initial_weights_digest(settings, tokenizer) -> str:
    """The weights recipe.train starts from (it seeds, loads the tokenizer, then builds the model)."""
    set_seed(settings.training.seed)
    model = build_model(settings.model, len(tokenizer), tokenizer.eos_token_id)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def evaluations(trainer) -> list[dict]:
    return [{"tokens": entry["num_input_tokens_seen"], "loss": entry["eval_loss"], "bpb": entry.get("eval_bpb")}
            for entry in trainer.state.log_history if "eval_loss" in entry]


def tokens_to_reach(curve: list[dict], target: float) -> float | None:
    """The first number of tokens at which the curve reaches the target loss, linear between evaluations."""
    previous = None
    for point in curve:
        if point["loss"] <= target:
            if previous is None:
                return point["tokens"]
            fraction = (previous["loss"] - target) / (previous["loss"] - point["loss"])
            return previous["tokens"] + fraction * (point["tokens"] - previous["tokens"])
        previous = point
    return None


def step_seconds(trainer) -> list[float]:
    """Seconds per optimizer step between consecutive training logs (the first log has no predecessor)."""
    tokens_per_step = None
    times = []
    for entry in trainer.state.log_history:
        if "tokens_per_second" in entry:
            tokens_per_step = tokens_per_step or trainer.state.num_input_tokens_seen / trainer.state.global_step
            times.append(tokens_per_step / entry["tokens_per_second"])
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adamw", default=str(REPO_ROOT / "configs" / "shakespeare_adamw.json"))
    parser.add_argument("--muon", default=str(REPO_ROOT / "configs" / "shakespeare.json"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for both runs")
    parser.add_argument("--muon_set", action="append", default=[], metavar="KEY=VALUE", help="for the Muon run")
    parser.add_argument("--eval_steps", type=int, default=25)
    parser.add_argument("--muon_qkv", choices=["split", "whole"], default="split",
                        help="c_attn's q, k, v orthogonalised as three matrices (the recipe's) or as one")
    parser.add_argument("--timing_steps", type=int, default=40, help="optimizer steps of each timing run")
    parser.add_argument("--timing_rounds", type=int, default=3, help="alternating timing runs of each (0: none)")
    parser.add_argument("--work_dir", default=None, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--plot", default=None, help="write recipe.plot's overlay of the two runs to this file")
    args = parser.parse_args(argv)

    def overrides(pairs):
        return [item for pair in pairs for item in ("--" + pair.split("=", 1)[0], pair.split("=", 1)[1])]

    common = overrides(args.set) + ["--eval_steps", str(args.eval_steps), "--eval_strategy", "steps",
                                    "--logging_steps", str(args.eval_steps)]
    runs = {"AdamW": (Path(args.adamw), common), "Muon": (Path(args.muon), common + overrides(args.muon_set))}
    if args.muon_qkv == "whole":
        optimization.FUSED_QKV_BLOCKS = 1  # c_attn as one (3n, n) matrix: no group of row blocks
    load_before = os.getloadavg()
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_optim-"))

    with output_to_stderr():  # the runs' plans, logs and progress: stdout is the report
        curves, digests, trained, timings = train_both(runs, work_dir, args)
    load_after = os.getloadavg()
    if args.plot:
        plot_runs([work_dir / name.lower() for name in runs], args.plot)
    if args.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)
    print_comparison(curves, digests, trained, timings, args, argv, load_before, load_after)
    return 0 if digests["AdamW"] == digests["Muon"] else 1


def train_both(runs: dict, work_dir: Path, args):
    """The two runs of the comparison, then the alternating timing runs."""
    curves, digests, trained, tokenizer_dir = {}, {}, {}, None
    for name, (config, run_overrides) in runs.items():
        output_dir = work_dir / name.lower()
        settings = settings_for(config, output_dir, run_overrides)
        if tokenizer_dir is not None and settings.data.train_tokenizer_vocab_size:
            shutil.copytree(tokenizer_dir, output_dir / TRAINED_TOKENIZER_DIR, dirs_exist_ok=True)  # one tokenizer
        tokenizer = load_or_train_tokenizer(settings.data, output_dir)
        tokenizer_dir = tokenizer_dir or output_dir / TRAINED_TOKENIZER_DIR
        digests[name] = initial_weights_digest(settings, tokenizer)
        trainer = train(settings)
        curves[name], trained[name] = evaluations(trainer), settings

    timings = {name: [] for name in runs}
    for _ in range(args.timing_rounds):
        for name, (config, run_overrides) in runs.items():
            output_dir = work_dir / f"{name.lower()}-timing"
            shutil.copytree(tokenizer_dir, output_dir / TRAINED_TOKENIZER_DIR, dirs_exist_ok=True)
            settings = settings_for(config, output_dir, [*run_overrides, "--max_steps", str(args.timing_steps),
                                                         "--warmup_steps", "1", "--eval_strategy", "no",
                                                         "--logging_steps", str(max(1, args.timing_steps // 8))])
            timings[name] += step_seconds(train(settings))
    return curves, digests, trained, timings


def print_comparison(curves, digests, trained, timings, args, argv, load_before, load_after) -> None:
    adamw, muon = curves["AdamW"], curves["Muon"]
    by_tokens = {}
    for name, curve in curves.items():
        for point in curve:
            by_tokens.setdefault(point["tokens"], {})[name] = point
    has_bpb = any(point["bpb"] is not None for curve in curves.values() for point in curve)

    def cell(point):
        if point is None:
            return ""
        return f"{point['loss']:.4f}" + (f" ({point['bpb']:.4f})" if has_bpb and point["bpb"] is not None else "")

    unit = " (bits per byte)" if has_bpb else ""
    rows = [{"tokens": f"{tokens:,}", f"AdamW val loss{unit}": cell(points.get("AdamW")),
             f"Muon val loss{unit}": cell(points.get("Muon"))} for tokens, points in sorted(by_tokens.items())]
    target, adamw_tokens = adamw[-1]["loss"], adamw[-1]["tokens"]
    reached = tokens_to_reach(muon, target)
    ratio = f"**{reached / adamw_tokens:.2f}x** ({reached:,.0f} of {adamw_tokens:,} tokens)" if reached else (
        f"not reached (Muon's final {muon[-1]['loss']:.4f} after {muon[-1]['tokens']:,} tokens)")
    rows.append({"tokens": "Muon's tokens to AdamW's final val loss", f"AdamW val loss{unit}": f"{target:.4f}",
                 f"Muon val loss{unit}": ratio})
    if args.timing_rounds:
        adamw_step, muon_step = (statistics.median(timings[name]) for name in ("AdamW", "Muon"))
        rows.append({"tokens": "median step time (ms)", f"AdamW val loss{unit}": f"{adamw_step * 1e3:.1f}",
                     f"Muon val loss{unit}": f"{muon_step * 1e3:.1f} (**{muon_step / adamw_step - 1:+.1%}**)"})
    def describe(settings) -> str:
        training = settings.training
        names = [getattr(value, "value", value) for value in (training.optim, training.lr_scheduler_type)]
        return (f"{names[0]}, {names[1]} {json.dumps(training.lr_scheduler_kwargs)}, {training.max_steps} steps of "
                f"{settings.tokens_per_step:,} tokens")

    same_start = "the same" if digests["AdamW"] == digests["Muon"] else "DIFFERENT"
    print_report(
        "AdamW vs Muon: validation loss against tokens", argv,
        f"AdamW: `{Path(args.adamw).name}` ({describe(trained['AdamW'])}); Muon: `{Path(args.muon).name}` "
        f"({describe(trained['Muon'])}, "
        f"c_attn orthogonalised {args.muon_qkv}); {same_start} initial weights (sha256 {digests['AdamW']} / "
        f"{digests['Muon']}), one tokenizer, one data order; step times: {args.timing_rounds} alternating rounds of "
        f"{args.timing_steps} steps each, median; load average {load_before[0]:.1f} before, {load_after[0]:.1f} "
        f"after, on {os.cpu_count()} cores",
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
