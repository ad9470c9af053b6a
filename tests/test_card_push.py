"""recipe.card and recipe.push on a real (tiny) training run; every Hub call is intercepted."""

import json
import shutil

import pytest
from huggingface_hub import HfApi, metadata_load, metadata_save
from huggingface_hub.errors import OfflineModeIsEnabled

from recipe.card import tokens_per_step, write_model_card
from recipe.evaluate import main as evaluate_main
from recipe.curves import plot_runs
from recipe.push import main
from helpers import TINY_RUN_SETTINGS as SETTINGS

REPO_ID = "someone/tiny-gpt"
HELLASWAG_EXAMPLES = [
    {"ctx": "The cat", "label": 0, "endings": ["sat.", "ran away from the dog.", "is", "slept on the mat"]},
    {"ctx": "Friends", "label": 1, "endings": [", Romans", ", countrymen, lend me your ears", "!", "of mine"]},
]
MODEL_FILES = {"config.json", "configuration_gpt.py", "modeling_gpt.py", "generation_config.json", "model.safetensors"}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}
RUN_FILES = {"README.md", "loss.png", "run_config.json", "trainer_state.json", "all_results.json",
             "train_results.json", "eval_results.json", "eval_hellaswag.json"}


@pytest.fixture(scope="module")
def run_dir(tiny_run, tmp_path_factory):
    """A finished run, evaluated on a few HellaSwag examples with recipe.evaluate."""
    root = tmp_path_factory.mktemp("card")
    shutil.copytree(tiny_run, root / "run")
    data = root / "hellaswag.jsonl"
    data.write_text("".join(json.dumps(example) + "\n" for example in HELLASWAG_EXAMPLES))
    assert evaluate_main([str(root / "run"), "--task", "hellaswag", "--data", str(data)]) == 0
    return root / "run"


def _read(path):
    return json.loads(path.read_text())


def _assert_card_reports_the_run(card: str, run_dir):
    final_eval = _read(run_dir / "eval_results.json")
    hellaswag = _read(run_dir / "eval_hellaswag.json")
    assert f"| validation loss (end of training) | {final_eval['eval_loss']:.4f} |" in card
    assert f"| validation perplexity (end of training) | {final_eval['eval_perplexity']:.2f} |" in card
    assert f"{hellaswag['acc_norm']:.4f}" in card and f"({hellaswag['n']} examples, completion style)" in card
    assert "0.2955" in card and "3.2924" in card  # GPT-2 124M's reference figures


def test_card_reports_data_hyperparameters_metrics_and_usage(run_dir):
    (run_dir / "loss.png").unlink(missing_ok=True)
    card = write_model_card(run_dir, REPO_ID).read_text()
    run_config, state = _read(run_dir / "run_config.json"), _read(run_dir / "trainer_state.json")

    metadata = metadata_load(run_dir / "README.md")
    assert metadata["library_name"] == "transformers"
    assert metadata["datasets"] == [run_config["dataset_name"]]
    assert "license" not in metadata  # unknown: the recipe does not guess one
    _assert_card_reports_the_run(card, run_dir)
    tokens_per_step = (run_config["per_device_train_batch_size"] * run_config["gradient_accumulation_steps"]
                       * run_config["block_size"])  # one process
    assert f"| tokens per optimizer step | {run_config['per_device_train_batch_size']} × " in card
    assert f"1 process × {run_config['block_size']} = {tokens_per_step:,} |" in card
    assert f"| tokens seen | {state['num_input_tokens_seen']:,} |" in card
    assert f"| optimizer steps | {state['global_step']} |" in card
    assert f'AutoModelForCausalLM.from_pretrained("{REPO_ID}", trust_remote_code=True)' in card
    assert f'AutoTokenizer.from_pretrained("{REPO_ID}", trust_remote_code=True)' in card  # test_remote_code's calls
    assert f'pipeline("text-generation", model="{REPO_ID}", trust_remote_code=True)' in card
    assert "loss.png" not in card

    plot_runs([run_dir], run_dir / "loss.png")
    metadata_save(run_dir / "README.md", {**metadata, "license": "apache-2.0"})  # the author picks a license
    card = write_model_card(run_dir, REPO_ID).read_text()
    assert "](loss.png)" in card
    assert metadata_load(run_dir / "README.md")["license"] == "apache-2.0"


def test_tokens_per_step_counts_the_processes_that_make_the_logged_tokens_add_up():
    config = {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 4, "block_size": 1024}
    per_process = 16 * 4 * 1024
    eight_gpus = {"global_step": 10, "num_input_tokens_seen": 10 * 8 * per_process}
    assert tokens_per_step(config, eight_gpus) == f"16 × 4 × 8 processes × 1,024 = {8 * per_process:,}"
    assert tokens_per_step(config, {}) == f"16 × 4 × 1,024 = {per_process:,} per process"  # no log: unknown


@pytest.fixture
def hub(monkeypatch):
    """Record the HfApi calls instead of making them."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        calls.append(("create_commit", repo_id, list(operations)))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0123"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


def test_push_uploads_model_tokenizer_card_and_plot_in_one_commit(run_dir, hub, capsys):
    (run_dir / "loss.png").unlink(missing_ok=True)
    assert main([str(run_dir), REPO_ID, "--private"]) == 0
    assert capsys.readouterr().out == f"pushed {run_dir} to https://huggingface.co/{REPO_ID}/commit/0123\n"

    assert [call[:2] for call in hub] == [("create_repo", REPO_ID), ("create_commit", REPO_ID)]
    assert hub[0][2] == {"private": True, "exist_ok": True}
    operations = hub[1][2]
    assert {operation.path_in_repo for operation in operations} == MODEL_FILES | TOKENIZER_FILES | RUN_FILES
    # left behind: checkpoint-N/, runs/ (TensorBoard) and the pickled training_args.bin
    assert (run_dir / f"checkpoint-{SETTINGS['max_steps']}").is_dir()
    assert (run_dir / "runs").is_dir() and (run_dir / "training_args.bin").is_file()
    assert all(operation.path_or_fileobj == str(run_dir / operation.path_in_repo) for operation in operations)
    card = (run_dir / "README.md").read_text()
    _assert_card_reports_the_run(card, run_dir)
    assert "](loss.png)" in card  # the plot was made for the push
    assert (run_dir / "loss.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "make_argv, message",
    [
        (lambda run_dir, tmp: [str(tmp), REPO_ID], "has no config.json: not a model checkpoint"),
        (lambda run_dir, tmp: [str(run_dir), "not a//repo id"], "Repo id must"),
    ],
)
def test_bad_input_is_refused_before_any_hub_call(make_argv, message, run_dir, tmp_path, hub, capsys):
    assert main(make_argv(run_dir, tmp_path)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err and captured.err.count("\n") == 1
    assert hub == []


def test_a_hub_failure_is_one_line(run_dir, monkeypatch, capsys):
    def offline(self, repo_id, **kwargs):
        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/repos/create: offline mode is enabled.")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    assert main([str(run_dir), REPO_ID]) == 2
    assert capsys.readouterr().err == (
        f"error: could not push to {REPO_ID}: Cannot reach https://huggingface.co/api/repos/create: "
        f"offline mode is enabled.\n"
    )
