"""Shared fixtures. The Hub is unreachable in CI: everything here is built locally."""

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

from helpers import tiny_gpt2_config  # noqa: E402
from recipe.tokenization import gpt2_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def openai_gpt2_dir(tmp_path_factory) -> Path:
    """A stand-in for an OpenAI GPT-2 checkpoint: a random tiny GPT2LMHeadModel plus GPT-2's tokenizer, saved."""
    directory = tmp_path_factory.mktemp("openai-gpt2")
    torch.manual_seed(1234)
    GPT2LMHeadModel(tiny_gpt2_config()).save_pretrained(directory)
    gpt2_tokenizer().save_pretrained(directory)
    return directory
