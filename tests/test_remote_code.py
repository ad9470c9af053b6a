"""A saved checkpoint carries its code: it loads and generates the Hugging Face way in a Python that cannot import
`recipe`, with standard input closed and without a prompt or a warning (helpers.load_in_fresh_python)."""

import json
import shutil

import pytest
import torch
from huggingface_hub import HfApi

from helpers import TINY_RUN_SETTINGS, load_in_fresh_python
from recipe import GPTForCausalLM
from recipe.convert import from_openai
from recipe.hub import push_run
from recipe.tokenization import gpt2_tokenizer

PROMPT = "To be, or not to be"


def _pushed_copy(run_dir, repository):
    """Run recipe.hub.push_run on run_dir, writing the files of its one commit to `repository` instead of the Hub."""
    def create_commit(self, repo_id, operations, **kwargs):
        repository.mkdir()
        for operation in operations:
            shutil.copy(operation.path_or_fileobj, repository / operation.path_in_repo)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
        patch.setattr(HfApi, "create_commit", create_commit)
        push_run(run_dir, "someone/tiny-gpt")


@pytest.fixture(scope="module")
def layouts(tiny_run, openai_gpt2_dir, tmp_path_factory):
    """OpenAI's GPT-2 layout converted by recipe.convert, a finished run, one of its checkpoint-N and the repository
    that pushing the run creates."""
    root = tmp_path_factory.mktemp("layouts")
    from_openai(openai_gpt2_dir, root / "converted")
    run_dir = shutil.copytree(tiny_run, root / "run")  # push_run writes the card and the plot into the run
    _pushed_copy(run_dir, root / "pushed")
    return {"converted": root / "converted", "run": run_dir,
            "checkpoint": run_dir / f"checkpoint-{TINY_RUN_SETTINGS['save_steps']}", "pushed": root / "pushed"}


@pytest.fixture(scope="module")
def loaded(layouts):
    """What a fresh Python without the package made of each layout: all loaded by one process."""
    return dict(zip(layouts, load_in_fresh_python(PROMPT, *layouts.values())))


def _greedy_text(checkpoint) -> str:
    """The greedy continuation of PROMPT by the package's own class."""
    tokenizer = gpt2_tokenizer()
    model = GPTForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        ids = model.generate(**tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=8, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(ids[0])


def test_a_converted_checkpoint_loads_and_generates_without_the_package(layouts, loaded):
    checkpoint = layouts["converted"]
    saved_files = {path.name for path in checkpoint.iterdir()}
    assert {"modeling_gpt.py", "configuration_gpt.py", "model.safetensors", "config.json"} <= saved_files
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_gpt.GPTForCausalLM"

    assert loaded["converted"]["class"] == "GPTForCausalLM"
    assert loaded["converted"]["module"].startswith("transformers_modules.")
    assert loaded["converted"]["text"] == _greedy_text(checkpoint)


@pytest.mark.parametrize("layout", ["run", "checkpoint", "pushed"])
def test_a_run_its_checkpoint_and_its_push_load_the_hugging_face_way_silently(layout, layouts, loaded):
    """AutoTokenizer, AutoConfig, AutoModelForCausalLM and pipeline() with trust_remote_code=True, and GPT2Tokenizer
    without it: no prompt and no warning (checked for every load), the remote classes, and the same greedy text as
    the package's own class."""
    report = loaded[layout]
    assert report["config"] == "GPTConfig"
    assert report["class"] == report["pipeline_class"] == "GPTForCausalLM"
    assert report["module"].startswith("transformers_modules.")
    assert report["tokenizer"] == report["plain_tokenizer"] == "GPT2Tokenizer" and report["same_ids"]
    assert report["text"] == _greedy_text(layouts[layout])
