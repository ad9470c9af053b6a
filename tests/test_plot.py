"""recipe.plot on the trainer_state.json of a real (tiny) Trainer run: the plotted data, a valid PNG, the CLI."""

import json
import shutil

import matplotlib.image
import pytest

from recipe.curves import plot_runs, read_log_history
from recipe.plot import main, parse_reference
from helpers import TINY_RUN_SETTINGS as SETTINGS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory):
    return shutil.copytree(tiny_run, tmp_path_factory.mktemp("plot") / "run")


def _assert_valid_png(path):
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    height, width, channels = matplotlib.image.imread(path).shape
    assert height > 0 and width > 0 and channels in (3, 4)


def _copy_state(run_dir, destination, edit=lambda entry: entry):
    state = json.loads((run_dir / "trainer_state.json").read_text())
    state["log_history"] = [edit(dict(entry)) for entry in state["log_history"]]
    destination.mkdir(parents=True)
    (destination / "trainer_state.json").write_text(json.dumps(state))
    return state["log_history"]


def test_plot_writes_a_png_of_the_logged_curves(run_dir, tmp_path):
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    train = [entry for entry in history if "loss" in entry]
    evals = [entry for entry in history if "eval_loss" in entry]
    assert len(train) == SETTINGS["max_steps"] // SETTINGS["logging_steps"]
    assert len(evals) == SETTINGS["max_steps"] // SETTINGS["eval_steps"]

    plotted = plot_runs([run_dir], tmp_path / "loss.png")

    tokens = [entry["num_input_tokens_seen"] for entry in train]
    assert list(plotted) == ["run"]
    assert plotted["run"]["train loss"] == (tokens, [entry["loss"] for entry in train])
    assert plotted["run"]["eval loss"] == ([entry["num_input_tokens_seen"] for entry in evals],
                                           [entry["eval_loss"] for entry in evals])
    assert plotted["run"]["eval bits per byte"] == ([entry["num_input_tokens_seen"] for entry in evals],
                                                    [entry["eval_bpb"] for entry in evals])
    assert plotted["run"]["learning rate"] == (tokens, [entry["learning_rate"] for entry in train])
    # tokens/s is measured between two training logs: from the second one on, never mixed with Trainer's average
    timed = [entry for entry in train if "tokens_per_second" in entry]
    assert len(timed) == len(train) - 1
    assert plotted["run"]["tokens/s"] == ([entry["num_input_tokens_seen"] for entry in timed],
                                          [entry["tokens_per_second"] for entry in timed])
    _assert_valid_png(tmp_path / "loss.png")


def test_cli_overlays_runs_with_references_and_writes_next_to_the_first(run_dir, tmp_path, capsys):
    _copy_state(run_dir, tmp_path / "a")
    def halve_the_loss(entry):
        return {**entry, "loss": entry["loss"] / 2} if "loss" in entry else entry

    _copy_state(run_dir, tmp_path / "b", halve_the_loss)
    argv = [str(tmp_path / "a"), str(tmp_path / "b"), "--reference", "3.2924:GPT-2 124M", "--reference", "4"]
    assert main(argv) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'a' / 'loss.png'}\n"
    _assert_valid_png(tmp_path / "a" / "loss.png")

    plotted = plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "both.png")
    assert list(plotted) == ["a", "b"]
    assert plotted["b"]["train loss"][1] == [loss / 2 for loss in plotted["a"]["train loss"][1]]
    assert parse_reference("3.2924:GPT-2 124M") == (3.2924, "GPT-2 124M")
    assert parse_reference("4") == (4.0, "4")


def test_a_runs_baseline_is_a_line_beside_its_bits_per_byte(run_dir, tmp_path):
    """recipe.evaluate's baseline (another model on the run's validation documents): its bits per byte always, its
    loss only in the same tokens."""
    _copy_state(run_dir, tmp_path / "run")
    baseline = {"model": "gpt2", "same_tokenizer": False, "task": "perplexity", "n": 4, "loss": 3.3, "bpb": 1.2}
    (tmp_path / "run" / "baseline_perplexity.json").write_text(json.dumps(baseline))
    plotted = plot_runs([tmp_path / "run"], tmp_path / "loss.png")["run"]
    assert plotted["baseline bits per byte"] == ([], [1.2]) and "baseline loss" not in plotted
    (tmp_path / "run" / "baseline_perplexity.json").write_text(json.dumps({**baseline, "same_tokenizer": True}))
    assert plot_runs([tmp_path / "run"], tmp_path / "loss.png")["run"]["baseline loss"] == ([], [3.3])
    _assert_valid_png(tmp_path / "loss.png")


def test_a_run_in_progress_is_read_from_its_latest_checkpoint(run_dir, tmp_path):
    for source, name in [("checkpoint-3", "checkpoint-9"), ("checkpoint-6", "checkpoint-10")]:
        shutil.copytree(run_dir / source, tmp_path / name)
    expected = json.loads((run_dir / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    assert read_log_history(tmp_path) == expected  # checkpoint-10, not the lexicographically last checkpoint-9


def test_older_logs_without_token_counts_are_plotted_against_steps(run_dir, tmp_path):
    def older(entry):
        entry.pop("num_input_tokens_seen", None)
        entry.pop("tokens_per_second", None)
        return entry

    history = _copy_state(run_dir, tmp_path / "old", older)
    plotted = plot_runs([tmp_path / "old"], tmp_path / "old" / "loss.png")["old"]
    train = [entry for entry in history if "loss" in entry]
    assert plotted["train loss"] == ([entry["step"] for entry in train], [entry["loss"] for entry in train])
    # without the recipe's throughput callback, Trainer's own running average is shown
    assert plotted["tokens/s"][1] == [entry["train_tokens_per_second"] for entry in train]


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda tmp: [str(tmp)], "has no trainer_state.json"),
        (lambda tmp: [str(tmp / "broken")], "is not a Trainer state with a log_history"),
        (lambda tmp: [str(tmp / "broken"), "--reference", "three"], "--reference 'three' is not LOSS[:LABEL]"),
    ],
)
def test_bad_input_is_one_line(make_argv, message, tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "trainer_state.json").write_text("{}")
    assert main(make_argv(tmp_path)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and message in captured.err and captured.err.count("\n") == 1
