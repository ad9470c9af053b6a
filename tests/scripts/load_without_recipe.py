"""Load checkpoints the Hugging Face way in a Python that cannot import `recipe`, and report what each call said.

Usage: python load_without_recipe.py PROMPT CHECKPOINT_DIR... -> prints one JSON line.

For each directory: AutoTokenizer, AutoConfig, AutoModelForCausalLM and pipeline("text-generation"), each with
trust_remote_code=True, then GPT2Tokenizer (the tokenizer's own class, without trust_remote_code) and a greedy
continuation of PROMPT through the pipeline. Run it with standard input closed: a "[y/N]" prompt then ends at once
instead of waiting 15 s. Everything the calls say is reported as that directory's `noise`: Python warnings, log
records of WARNING and above (transformers' and huggingface_hub's loggers do not propagate to the root logger) and
text printed on stdout, where input() writes its prompt. Warnings are recorded rather than raised: raised, one could
be swallowed by a library's `except Exception` and go unseen.
"""

import contextlib
import importlib.abc
import io
import json
import logging
import sys
import warnings


class NoRecipe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "recipe" or name.startswith("recipe."):
            raise ImportError("the recipe package must not be needed to load a checkpoint")


class KeepRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        if record not in self.records:  # one record reaches both its library's logger and the root
            self.records.append(record)


sys.meta_path.insert(0, NoRecipe())
import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Tokenizer, pipeline  # noqa: E402

transformers.logging.set_verbosity_warning()  # whatever TRANSFORMERS_VERBOSITY says
log = KeepRecords()
for name in (None, "transformers", "huggingface_hub"):
    logging.getLogger(name).addHandler(log)


def load(checkpoint: str, prompt: str) -> dict:
    log.records.clear()
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed):
        warnings.simplefilter("always")
        tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=True)
        config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True)
        generator = pipeline("text-generation", model=checkpoint, trust_remote_code=True)
        text = generator(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
        plain_tokenizer = GPT2Tokenizer.from_pretrained(checkpoint)
    noise = [f"{warning.category.__name__}: {warning.message}" for warning in caught]
    noise += [f"{record.levelname} {record.name}: {record.getMessage()}" for record in log.records]
    noise += [f"stdout: {printed.getvalue()}"] if printed.getvalue() else []
    return {
        "directory": checkpoint,
        "tokenizer": type(tokenizer).__name__,
        "plain_tokenizer": type(plain_tokenizer).__name__,
        "same_ids": tokenizer(prompt)["input_ids"] == plain_tokenizer(prompt)["input_ids"],
        "config": type(config).__name__,
        "class": type(model).__name__,
        "module": type(model).__module__,
        "pipeline_class": type(generator.model).__name__,
        "text": text,
        "noise": noise,
    }


prompt, *checkpoints = sys.argv[1:]
loads = [load(checkpoint, prompt) for checkpoint in checkpoints]
print(json.dumps({
    "loads": loads,
    "recipe_imported": any(name == "recipe" or name.startswith("recipe.") for name in sys.modules),
}))
