"""A saved checkpoint carries its code: it loads and generates in a Python that cannot import `recipe`."""

import json
import os
import subprocess
import sys
import textwrap

import torch

from recipe.convert import from_openai
from recipe.tokenization import gpt2_tokenizer
from recipe import GPTForCausalLM

LOAD_WITHOUT_RECIPE = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoRecipe(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "recipe" or name.startswith("recipe."):
                raise ImportError("the recipe package must not be needed to load a checkpoint")

    sys.meta_path.insert(0, NoRecipe())
    from transformers import AutoModelForCausalLM, pipeline

    checkpoint = sys.argv[1]
    model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True)
    generator = pipeline("text-generation", model=checkpoint, trust_remote_code=True)
    text = generator("To be, or not to be", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    print(json.dumps({
        "class": type(model).__name__,
        "module": type(model).__module__,
        "text": text,
        "recipe_imported": any(name == "recipe" or name.startswith("recipe.") for name in sys.modules),
    }))
    """
)


def test_checkpoint_loads_and_generates_without_the_package(openai_gpt2_dir, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    from_openai(openai_gpt2_dir, checkpoint)
    saved_files = {path.name for path in checkpoint.iterdir()}
    assert {"modeling_gpt.py", "configuration_gpt.py", "model.safetensors", "config.json"} <= saved_files
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_gpt.GPTForCausalLM"

    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_RECIPE, str(checkpoint)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
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
