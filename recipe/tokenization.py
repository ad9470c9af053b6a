"""Tokenizers: GPT-2's BPE from files bundled with the package (no network), or any transformers tokenizer.

GPT-2's BPE also exists as a tiktoken Encoding built from the same files: identical ids, about 10x faster on whole
documents, so the data pipeline uses it whenever a tokenizer turns out to be GPT-2's.
"""

import functools
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import tiktoken
import torch
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str
from transformers import AutoTokenizer, GPT2Tokenizer, PreTrainedTokenizerBase

from .errors import DataError

GPT2_ASSETS = Path(__file__).parent / "assets" / "gpt2"
GPT2_VOCAB_FILE = GPT2_ASSETS / "encoder.json"  # OpenAI's name; `vocab.json` in the Hub's layout
GPT2_MERGES_FILE = GPT2_ASSETS / "vocab.bpe"  # OpenAI's name; `merges.txt` in the Hub's layout
GPT2_EOT_TOKEN = "<|endoftext|>"
GPT2_EOT_ID = 50256  # <|endoftext|>, GPT-2's document separator and its only special token
GPT2_VOCAB_SIZE = 50257

# OpenAI's GPT-2 sizes on the Hub. They share one BPE, byte-identical to the bundled files, so their tokenizer
# needs no Hub lookup.
GPT2_HUB_IDS = frozenset(
    f"{org}{size}" for org in ("", "openai-community/") for size in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
)
# The files a saved tokenizer may consist of; either of the first two means a directory holds one.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json", "merges.txt", "special_tokens_map.json")


def gpt2_tokenizer() -> GPT2Tokenizer:
    """OpenAI's GPT-2 tokenizer (50,257 tokens), built from the bundled BPE files."""
    # v5: the arguments are `vocab=` / `merges=`; the v4 names `vocab_file=` / `merges_file=` are silently ignored.
    return GPT2Tokenizer(vocab=str(GPT2_VOCAB_FILE), merges=str(GPT2_MERGES_FILE), model_max_length=1024)


def has_tokenizer(directory: str | Path) -> bool:
    """Whether a directory holds a saved tokenizer."""
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES[:2])


def load_tokenizer(name_or_path: str | Path | None = None, setting: str = "tokenizer") -> PreTrainedTokenizerBase:
    """GPT-2's tokenizer by default (offline), else any Hub id or local tokenizer directory. A failure is a
    DataError that names `setting` (e.g. the config key the name came from)."""
    if name_or_path is None or (str(name_or_path) in GPT2_HUB_IDS and not Path(name_or_path).exists()):
        return gpt2_tokenizer()
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as error:  # not found, offline, not a tokenizer, an invalid repo id
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{setting}={str(name_or_path)!r} cannot be loaded: {reason}") from None


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's GPT-2 Encoding, built from the bundled files (tiktoken.get_encoding("gpt2") would download them)."""
    mergeable_ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(GPT2_MERGES_FILE), encoder_json_file=str(GPT2_VOCAB_FILE)
    )
    return tiktoken.Encoding(
        "gpt2",
        pat_str=r50k_pat_str,  # tiktoken's faster equivalent of GPT-2's pre-tokenization regex
        mergeable_ranks=mergeable_ranks,
        special_tokens={GPT2_EOT_TOKEN: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def _id_defining_parts(tokenizer: PreTrainedTokenizerBase) -> dict | None:
    """What decides a tokenizers-backed tokenizer's ids: the BPE model (vocab, merges, options), the normalizer,
    the pre-tokenizer and the added tokens. None for a tokenizer without a `tokenizers` backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    serialized = json.loads(backend.to_str())
    return {part: serialized.get(part) for part in ("model", "normalizer", "pre_tokenizer", "added_tokens")}


@functools.cache
def _gpt2_id_defining_parts() -> dict:
    return _id_defining_parts(gpt2_tokenizer())


def is_gpt2_bpe(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `tokenizer` gives exactly GPT-2's ids: the same vocab, merges, pre-tokenization and special token as
    the bundled files, whatever it is called or wherever it was loaded from."""
    if len(tokenizer) != GPT2_VOCAB_SIZE:  # cheap, and the answer for every trained BPE
        return False
    return _id_defining_parts(tokenizer) == _gpt2_id_defining_parts()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short name for the ids a tokenizer gives: "gpt2" for GPT-2's BPE (from anywhere), else a hash of what
    decides its ids (its vocabulary alone when it has no `tokenizers` backend)."""
    if is_gpt2_bpe(tokenizer):
        return "gpt2"
    parts = _id_defining_parts(tokenizer) or {"vocab": tokenizer.get_vocab()}
    return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def train_bpe_tokenizer(text_batches: Iterable[list[str]], vocab_size: int) -> PreTrainedTokenizerBase:
    """A new byte-level BPE of `vocab_size` tokens learnt from `text_batches`, with GPT-2's pre-tokenization and
    `<|endoftext|>` as its only special token (its eos)."""
    return gpt2_tokenizer().train_new_from_iterator(text_batches, vocab_size=vocab_size)


def _is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's tokens are byte-level BPE strings: one printable character per byte (GPT-2's scheme)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and json.loads(backend.to_str()).get("decoder", {}).get("type") == "ByteLevel"


def token_byte_counts(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """(len(tokenizer),) int64: the UTF-8 bytes of text each token id stands for; 0 for special tokens, which are
    markers (document separators), not text. The denominator of bits per byte, which compares models whatever
    their tokenizer (nanochat's evaluate_bpb counts the same way).

    A byte-level BPE token is a string of one character per byte (GPT-2's bytes-to-unicode map), so its length is
    its byte count, also for the tokens that hold part of a multi-byte character. Other tokenizers are measured by
    decoding each token alone."""
    special = set(tokenizer.all_special_ids)
    ids = range(len(tokenizer))
    if _is_byte_level(tokenizer):
        counts = [len(token) for token in tokenizer.convert_ids_to_tokens(list(ids))]
    else:
        counts = [len(tokenizer.decode([index]).encode("utf-8")) for index in ids]
    return torch.tensor([0 if index in special else count for index, count in zip(ids, counts)], dtype=torch.int64)
