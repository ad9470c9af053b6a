"""Training curves: train and eval loss against tokens seen, then validation bits per byte (which compares runs
whatever their tokenizer), the learning rate and throughput.

Everything comes from the Trainer's `trainer_state.json` (its `log_history`); a run still in progress is read
from its latest checkpoint-N/. Runs that do not all log `num_input_tokens_seen` are plotted against steps. A run's
baseline (another model on its validation data, saved by recipe.evaluate) is drawn as a horizontal line.
"""

import json
import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, ScalarFormatter

from .checkpoints import BASELINE_FILE, TRAINER_STATE_FILE
from .errors import DataError

# curve -> the log_history keys that hold it, in order of preference. Trainer logs its own running average
# `train_tokens_per_second`; the recipe's throughput callback logs `tokens_per_second` over the last interval.
CURVES = {
    "train loss": ("loss",),
    "eval loss": ("eval_loss",),
    "eval bits per byte": ("eval_bpb",),
    "learning rate": ("learning_rate",),
    "tokens/s": ("tokens_per_second", "train_tokens_per_second"),
}

Curve = tuple[list[float], list[float]]  # (x, y)


def trainer_state_file(run_dir: str | Path) -> Path:
    """run_dir/trainer_state.json, or for a run still training, the one in its latest checkpoint-N/."""
    run_dir = Path(run_dir)
    if (run_dir / TRAINER_STATE_FILE).is_file():
        return run_dir / TRAINER_STATE_FILE
    checkpoints = [path for path in run_dir.glob(f"checkpoint-*/{TRAINER_STATE_FILE}")
                   if re.fullmatch(r"checkpoint-\d+", path.parent.name)]
    if not checkpoints:
        raise DataError(f"{run_dir} has no {TRAINER_STATE_FILE} (nor a checkpoint-N/ with one): not a training run")
    return max(checkpoints, key=lambda path: int(path.parent.name.split("-")[1]))


def read_log_history(run_dir: str | Path) -> list[dict]:
    """The Trainer's log entries of a run: training logs, eval logs and the final summary."""
    path = trainer_state_file(run_dir)
    try:
        return json.loads(path.read_text())["log_history"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path} is not a Trainer state with a log_history: {error}") from None


def curves(log_history: list[dict], x_key: str) -> dict[str, Curve]:
    """The plotted (x, y) of each quantity in CURVES, from the entries that log both it and `x_key`. A curve reads
    one key throughout: the first of its keys that the run logs at all (never a mix of two measures)."""
    plotted = {}
    for name, keys in CURVES.items():
        key = next((key for key in keys if any(key in entry for entry in log_history)), None)
        points = [(entry[x_key], entry[key]) for entry in log_history if x_key in entry and key in entry]
        plotted[name] = ([x for x, _ in points], [y for _, y in points])
    return plotted


def read_baseline(run_dir: str | Path) -> dict | None:
    """The run's baseline_perplexity.json (recipe.evaluate), or None."""
    path = Path(run_dir) / BASELINE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _run_labels(run_dirs: list[Path]) -> list[str]:
    names = [path.resolve().name for path in run_dirs]
    return names if len(set(names)) == len(names) else [str(path) for path in run_dirs]


def plot_runs(run_dirs: list[str | Path], output: str | Path,
              references: list[tuple[float, str]] = ()) -> dict[str, dict[str, Curve]]:
    """Write a PNG of the runs' curves overlaid, with horizontal (loss, label) reference lines; return what was
    plotted: run label -> curve name -> (x, y), a baseline's horizontal line as ([], [its value])."""
    run_dirs = [Path(path) for path in run_dirs]
    histories = [read_log_history(path) for path in run_dirs]
    logs_tokens = all(
        "num_input_tokens_seen" in entry for history in histories for entry in history if "loss" in entry
    )
    x_key = "num_input_tokens_seen" if logs_tokens else "step"
    plotted = {label: curves(history, x_key) for label, history in zip(_run_labels(run_dirs), histories)}

    baselines = [read_baseline(path) for path in run_dirs]
    with_bpb = any(run_curves["eval bits per byte"][1] for run_curves in plotted.values())
    panels = ("loss", "bpb", "lr", "throughput") if with_bpb else ("loss", "lr", "throughput")
    figure = Figure(figsize=(9, 12 if with_bpb else 10), layout="constrained")
    FigureCanvasAgg(figure)
    axes = dict(zip(panels, figure.subplots(len(panels), 1, sharex=True, height_ratios=(2, *[1] * (len(panels) - 1)))))
    for index, ((label, run_curves), baseline) in enumerate(zip(plotted.items(), baselines)):
        color = f"C{index}"
        axes["loss"].plot(*run_curves["train loss"], color=color, linewidth=1, label=f"{label} train")
        axes["loss"].plot(*run_curves["eval loss"], color=color, linestyle="--", marker="o", markersize=3,
                          label=f"{label} eval")
        if with_bpb:
            axes["bpb"].plot(*run_curves["eval bits per byte"], color=color, marker="o", markersize=3, label=label)
        axes["lr"].plot(*run_curves["learning rate"], color=color)
        axes["throughput"].plot(*run_curves["tokens/s"], color=color)
        if baseline is not None:  # the same validation documents; a loss per token compares only in the same tokens
            name = f"{baseline['model']} on {label}'s validation"
            if with_bpb and "bpb" in baseline:
                axes["bpb"].axhline(baseline["bpb"], color=color, linestyle=":", linewidth=1.5, label=name)
                run_curves["baseline bits per byte"] = ([], [baseline["bpb"]])
            if baseline.get("same_tokenizer"):
                axes["loss"].axhline(baseline["loss"], color=color, linestyle=":", linewidth=1.5, label=name)
                run_curves["baseline loss"] = ([], [baseline["loss"]])
    loss_axes = axes["loss"]
    for loss, label in references:
        loss_axes.axhline(loss, color="gray", linestyle=":", linewidth=1.5, label=label)
    loss_axes.set_yscale("log")  # from ~11 at init down to ~3: the late improvements stay visible
    loss_axes.yaxis.set_major_formatter(ScalarFormatter())  # plain numbers (3, 4, 6, 10), not powers of 10
    loss_axes.yaxis.set_minor_formatter(ScalarFormatter())
    loss_axes.set_ylabel("loss (nats per token)")
    loss_axes.legend(fontsize="small")
    if with_bpb:
        axes["bpb"].set_ylabel("eval bits per byte")
        axes["bpb"].legend(fontsize="small")
    axes["lr"].set_ylabel("learning rate")
    throughput_axes = axes["throughput"]
    throughput_axes.set_ylabel("tokens/s")
    throughput_axes.yaxis.set_major_formatter(EngFormatter())
    throughput_axes.set_xlabel("tokens seen" if logs_tokens else "optimizer step")
    if logs_tokens:
        throughput_axes.xaxis.set_major_formatter(EngFormatter())  # 500 M, 1 G, 10 G
    for panel in axes.values():
        panel.grid(alpha=0.3)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    return plotted
