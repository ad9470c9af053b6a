"""The plain-PyTorch peer of the speed benchmarks: GPT-2 written the way the hand-made reproductions write it.

No transformers, no masks, no cache, no output classes: token + position embeddings, pre-LayerNorm blocks with one
fused q/k/v matmul and `F.scaled_dot_product_attention(is_causal=True)`, a GELU(tanh) MLP, a final LayerNorm and
an LM head tied to the embedding over the vocabulary padded to 50,304 rows, trained with `F.cross_entropy` on those
padded logits. That is the shape of nanoGPT's model.py (Karpathy, MIT), written here for the benchmarks; the
recipe's model must be at least as fast as this, inside Trainer. With `vocab_size` the padding columns are kept out
of the softmax, as llm.c and the recipe do (build-nanogpt's softmax runs over all 50,304): the exact-replay test
(tests/test_replay.py) trains it against the recipe.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x):
        batch, seq_len, width = x.shape
        # (B, T, 3C) -> 3 x (B, nh, T, hs)
        q, k, v = self.qkv(x).view(batch, seq_len, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.out(y.transpose(1, 2).reshape(batch, seq_len, width))


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm_1, self.norm_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = Attention(width, heads)
        self.expand, self.project = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        x = x + self.attention(self.norm_1(x))
        return x + self.project(F.gelu(self.expand(self.norm_2(x)), approximate="tanh"))


class ReferenceGPT(nn.Module):
    def __init__(self, n_layer: int = 12, n_embd: int = 768, n_head: int = 12, n_positions: int = 1024,
                 padded_vocab_size: int = 50304, vocab_size: int | None = None):
        super().__init__()
        self.vocab_size = vocab_size  # None: the loss runs over every padded column, as nanoGPT's
        self.token_embedding = nn.Embedding(padded_vocab_size, n_embd)
        self.position_embedding = nn.Embedding(n_positions, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.final_norm = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, padded_vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight  # tied
        for name, parameter in self.named_parameters():  # GPT-2's init; residual projections scaled by depth
            if parameter.dim() == 2:
                scaled = name.endswith(("attention.out.weight", "project.weight"))
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * n_layer) if scaled else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(parameter)

    def forward(self, input_ids, labels):
        """Mean next-token cross-entropy; `labels` = `input_ids`, shifted here as the recipe's model does."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.final_norm(x))  # (B, T, V_padded)
        if self.vocab_size is not None:
            logits = logits[..., : self.vocab_size]  # (B, T, V): the padding columns are not tokens
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): token t predicts token t + 1
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
