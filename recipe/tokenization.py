"""Tokenizers: GPT-2's BPE from files bundled with the package (no network), or any transformers tokenizer."""

from pathlib import Path

from transformers import AutoTokenizer, GPT2Tokenizer, PreTrainedTokenizerBase

GPT2_ASSETS = Path(__file__).parent / "assets" / "gpt2"
GPT2_VOCAB_FILE = GPT2_ASSETS / "encoder.json"  # OpenAI's name; `vocab.json` in the Hub's layout
GPT2_MERGES_FILE = GPT2_ASSETS / "vocab.bpe"  # OpenAI's name; `merges.txt` in the Hub's layout
GPT2_EOT_ID = 50256  # <|endoftext|>, GPT-2's document separator and its only special token

# Every OpenAI GPT-2 size shares one BPE, byte-identical to the bundled files, so these names need no Hub lookup.
GPT2_HUB_IDS = {
    f"{org}{size}" for org in ("", "openai-community/") for size in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
}


def gpt2_tokenizer() -> GPT2Tokenizer:
    """OpenAI's GPT-2 tokenizer (50,257 tokens), built from the bundled BPE files."""
    # v5: the arguments are `vocab=` / `merges=`; the v4 names `vocab_file=` / `merges_file=` are silently ignored.
    return GPT2Tokenizer(vocab=str(GPT2_VOCAB_FILE), merges=str(GPT2_MERGES_FILE), model_max_length=1024)


def load_tokenizer(name_or_path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """GPT-2's tokenizer by default (offline), else any Hub id or local tokenizer directory."""
    if name_or_path is None or (str(name_or_path) in GPT2_HUB_IDS and not Path(name_or_path).exists()):
        return gpt2_tokenizer()
    return AutoTokenizer.from_pretrained(str(name_or_path))
