"""GPT-2's BPE offline (recipe.tokenization): the bundled files, tiktoken's Encoding of them, and recognising them."""

import tiktoken
import tiktoken.load
from helpers import REPO_ROOT
from tiktoken_ext import openai_public
from transformers import AutoTokenizer

from recipe.tokenization import (
    GPT2_EOT_ID,
    GPT2_MERGES_FILE,
    GPT2_VOCAB_FILE,
    gpt2_encoding,
    gpt2_tokenizer,
    is_gpt2_bpe,
    load_tokenizer,
    train_bpe_tokenizer,
)

PLAYS = sorted((REPO_ROOT / "data" / "shakespeare").glob("*.txt"))


def tiktoken_gpt2(monkeypatch, cache_dir) -> tiktoken.Encoding:
    """tiktoken's own "gpt2" Encoding, its two downloads answered with the bundled files. tiktoken checks them
    against OpenAI's SHA-256 hashes, so this fails unless the bundled files are exactly the ones it would fetch."""
    bundled = {"vocab.bpe": GPT2_MERGES_FILE, "encoder.json": GPT2_VOCAB_FILE}
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache_dir))  # empty: no earlier copy skips the hash check
    monkeypatch.setattr(tiktoken.load, "read_file", lambda url: bundled[url.rsplit("/", 1)[-1]].read_bytes())
    return tiktoken.Encoding(**openai_public.gpt2())


def test_default_tokenizer_gives_tiktoken_gpt2_ids_on_the_whole_corpus(monkeypatch, tmp_path):
    official = tiktoken_gpt2(monkeypatch, tmp_path)
    tokenizer = load_tokenizer()  # HF_HUB_OFFLINE=1 (conftest): any Hub lookup would raise at once

    assert tokenizer.eos_token_id == official.eot_token == GPT2_EOT_ID
    assert len(tokenizer) == official.n_vocab
    for play in PLAYS:
        text = play.read_text()
        expected = official.encode_ordinary(text)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected, play.name
        assert gpt2_encoding().encode_to_numpy(text, disallowed_special=()).tolist() == expected, play.name


def test_gpt2_hub_names_resolve_to_the_bundled_files_without_the_hub():
    for name in ("gpt2", "openai-community/gpt2-xl"):
        assert is_gpt2_bpe(load_tokenizer(name))


def test_gpt2_bpe_is_recognised_by_its_contents_not_its_name(tmp_path):
    gpt2_tokenizer().save_pretrained(tmp_path / "my-tokenizer")
    assert is_gpt2_bpe(AutoTokenizer.from_pretrained(tmp_path / "my-tokenizer"))

    extended = gpt2_tokenizer()
    extended.add_tokens(["<|pad|>"])
    assert not is_gpt2_bpe(extended)

    texts = [play.read_text() for play in PLAYS[:2]]
    assert not is_gpt2_bpe(train_bpe_tokenizer([texts], vocab_size=300))


def test_trained_bpe_has_the_requested_size_and_endoftext_as_eos():
    tokenizer = train_bpe_tokenizer([[play.read_text() for play in PLAYS[:2]]], vocab_size=300)
    assert len(tokenizer) == 300
    assert tokenizer.eos_token == "<|endoftext|>"
    text = "To be, or not to be"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
