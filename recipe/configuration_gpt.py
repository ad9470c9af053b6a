"""GPTConfig: the shape of a GPT-2 block stack. The defaults are GPT-2 124M.

Field names follow transformers' `GPT2Config`, so a GPT-2 user reads this config without a glossary.
This file is copied into every checkpoint (remote code): it imports only transformers.
"""

from transformers import PreTrainedConfig


class GPTConfig(PreTrainedConfig):
    r"""
    Args:
        vocab_size: tokens the tokenizer can produce (GPT-2's BPE: 50,257).
        n_positions: the context length, i.e. the rows of the learned position embedding.
        n_embd: the residual stream width. Must be divisible by `n_head`.
        n_layer: the number of transformer blocks.
        n_head: attention heads per block; each head is `n_embd // n_head` wide.
        make_vocab_size_divisible_by: pad the embedding (and LM head) to a multiple of this many rows, e.g. 64
            gives 50,304 rows for GPT-2 (faster matmuls on GPUs). The padding rows are never read: logits are cut
            back to `vocab_size`, so results for real tokens are exactly those of an unpadded model.
        resid_pdrop, embd_pdrop, attn_pdrop: dropout rates. 0.0 by default, as in the GPT-2 reproductions
            (nanoGPT, llm.c) that pre-train without dropout; OpenAI's released configs say 0.1.
        layer_norm_epsilon: LayerNorm's epsilon.
        initializer_range: std of the N(0, std) init of linear and embedding weights (GPT-2: 0.02).
        tie_word_embeddings: share the LM head with the token embedding, as GPT-2 does.
        loss_chunk_size: 0 computes the training loss from the full logits with the library's loss function. N > 0
            fuses the LM head with the cross-entropy and processes N tokens at a time, so the (tokens x vocab) fp32
            logits are never materialised while training (less peak memory; same loss and gradients).
    """

    model_type = "recipe_gpt"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    make_vocab_size_divisible_by: int = 1
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None
    use_cache: bool = True
    loss_chunk_size: int = 0

    def __post_init__(self, **kwargs):
        self.check_fields()
        super().__post_init__(**kwargs)

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token embedding and the LM head: `vocab_size` rounded up to `make_vocab_size_divisible_by`."""
        multiple = self.make_vocab_size_divisible_by
        return -(-self.vocab_size // multiple) * multiple

    def check_fields(self) -> None:
        """Raise a ValueError naming the first field whose value cannot describe a GPT."""
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "make_vocab_size_divisible_by"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                f"(each head is n_embd // n_head wide)"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"GPTConfig.{name} must be a probability in [0, 1), got {value!r}")
        for name in ("layer_norm_epsilon", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive number, got {value!r}")
        if isinstance(self.loss_chunk_size, bool) or not isinstance(self.loss_chunk_size, int) or self.loss_chunk_size < 0:
            raise ValueError(f"GPTConfig.loss_chunk_size must be 0 (off) or a positive integer, got {self.loss_chunk_size!r}")


__all__ = ["GPTConfig"]
