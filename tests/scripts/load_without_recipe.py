"""Load a checkpoint by remote code and generate through pipeline(), in a Python that cannot import `recipe`.

Usage: python load_without_recipe.py CHECKPOINT_DIR PROMPT -> prints one JSON line.
"""

import importlib.abc
import json
import sys


class NoRecipe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "recipe" or name.startswith("recipe."):
            raise ImportError("the recipe package must not be needed to load a checkpoint")


sys.meta_path.insert(0, NoRecipe())
from transformers import AutoModelForCausalLM, pipeline  # noqa: E402

checkpoint, prompt = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True)
generator = pipeline("text-generation", model=checkpoint, trust_remote_code=True)
text = generator(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
print(json.dumps({
    "class": type(model).__name__,
    "module": type(model).__module__,
    "text": text,
    "recipe_imported": any(name == "recipe" or name.startswith("recipe.") for name in sys.modules),
}))
