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
        make_vocab_size_divisible_by: in training, the LM head's matmul runs over the vocabulary padded to a
            multiple of this many columns, e.g. 64 gives 50,304 for GPT-2 (aligned, faster on GPUs); the padding
            columns stay out of the softmax. The weights have exactly `vocab_size` rows, as GPT-2's do, so every
            result is that of an unpadded model.
        resid_pdrop, embd_pdrop, attn_pdrop: dropout rates. 0.0 by default, as in the GPT-2 reproductions
            (nanoGPT, llm.c) that pre-train without dropout; OpenAI's released configs say 0.1.
        layer_norm_epsilon: LayerNorm's epsilon.
        initializer_range: std of the N(0, std) init of linear and embedding weights (GPT-2: 0.02).
        tie_word_embeddings: share the LM head with the token embedding, as GPT-2 does.
        loss_chunk_size: 0 computes the training loss from the full logits with the library's loss function. N > 0
            fuses the LM head with the cross-entropy and processes N tokens at a time, so the (tokens x vocab) fp32
            logits are never materialised while training (less peak memory; same loss and gradients; the training
            forward returns no logits). A setting of the run, not of the model: the recipe chooses it for the
            device at start, and `config.json` does not record it, so a checkpoint behaves as GPT-2 for everyone.
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

    def to_dict(self) -> dict:
        """The saved fields, without `loss_chunk_size` (a run's setting: see above)."""
        fields = super().to_dict()
        fields.pop("loss_chunk_size", None)
        return fields

    @property
    def padded_vocab_size(self) -> int:
        """Columns of the LM head's matmul in training: `vocab_size` rounded up to `make_vocab_size_divisible_by`."""
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
