"""A saved checkpoint carries its code: it loads and generates in a Python that cannot import `recipe`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from recipe import GPTForCausalLM
from recipe.convert import from_openai
from recipe.tokenization import gpt2_tokenizer

LOAD_WITHOUT_RECIPE = Path(__file__).parent / "scripts" / "load_without_recipe.py"


def load_in_fresh_python(checkpoint: Path, prompt: str) -> dict:
    """Run scripts/load_without_recipe.py on a checkpoint; its JSON report."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(LOAD_WITHOUT_RECIPE), str(checkpoint), prompt],
        cwd=checkpoint.parent, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_checkpoint_loads_and_generates_without_the_package(openai_gpt2_dir, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    from_openai(openai_gpt2_dir, checkpoint)
    saved_files = {path.name for path in checkpoint.iterdir()}
    assert {"modeling_gpt.py", "configuration_gpt.py", "model.safetensors", "config.json"} <= saved_files
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_gpt.GPTForCausalLM"

    loaded = load_in_fresh_python(checkpoint, "To be, or not to be")
    assert loaded["class"] == "GPTForCausalLM"
    assert loaded["module"].startswith("transformers_modules.")
    assert not loaded["recipe_imported"]

    # The same greedy continuation as the package's own class gives.
    tokenizer = gpt2_tokenizer()
    prompt = tokenizer("To be, or not to be", return_tensors="pt")
    model = GPTForCausalLM.from_pretrained(checkpoint)
    with torch.no_grad():
        expected = model.generate(**prompt, max_new_tokens=8, do_sample=False, pad_token_id=50256)
    assert loaded["text"] == tokenizer.decode(expected[0])
