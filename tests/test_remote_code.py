"""A saved checkpoint carries its code: it loads and generates in a Python that cannot import `recipe`."""

import json

import torch

from helpers import load_in_fresh_python
from recipe import GPTForCausalLM
from recipe.convert import from_openai
from recipe.tokenization import gpt2_tokenizer

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
