"""Shared fixtures. The Hub is unreachable in CI: everything here is built locally."""

import json
import os

# Set before transformers / datasets are imported anywhere, so a stray Hub lookup fails at once instead of in 50 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402

import datasets  # noqa: E402

from helpers import scene_texts, tiny_gpt2_config, train_tiny_run  # noqa: E402
from recipe.tokenization import gpt2_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def openai_gpt2_dir(tmp_path_factory) -> Path:
    """A stand-in for an OpenAI GPT-2 checkpoint: a random tiny GPT2LMHeadModel plus GPT-2's tokenizer, saved."""
    directory = tmp_path_factory.mktemp("openai-gpt2")
    torch.manual_seed(1234)
    GPT2LMHeadModel(tiny_gpt2_config()).save_pretrained(directory)
    gpt2_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished tiny training run (helpers.train_tiny_run), trained once for the whole session. Read it only:
    a test that writes into a run works on a copy (shutil.copytree)."""
    run_dir = tmp_path_factory.mktemp("tiny-run") / "run"
    train_tiny_run(run_dir)
    return run_dir


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch) -> Path:
    """A fresh datasets cache for one test: nothing it reads was cached by another (the data tests use it)."""
    cache = tmp_path / "datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    """120 scene documents (helpers.scene_texts), one json row each: ~60k GPT-2 tokens."""
    path = tmp_path_factory.mktemp("scenes") / "scenes.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in scene_texts()))
    return path
