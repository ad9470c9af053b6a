"""GPT-2 as a transformers model: GPTModel (the block stack) and GPTForCausalLM (plus the tied LM head).

The architecture is exactly OpenAI's GPT-2 (Radford et al. 2019): learned token and position embeddings,
pre-LayerNorm blocks of causal self-attention and a 4x GELU(tanh) MLP, a final LayerNorm, and an LM head tied
to the token embedding. Parameter names are GPT-2's (`wte`, `wpe`, `h`, `c_attn`, `c_proj`, `ln_f`) so that
OpenAI's weights map over by name, with nn.Linear (our `Linear`) in place of GPT-2's transposed Conv1D.

This file is copied into every checkpoint (remote code): it imports only torch, transformers and, relatively,
the configuration file.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import capture_outputs

from .configuration_gpt import GPTConfig

try:
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # a torch built without distributed: nothing can be sharded
    FSDPModule = ()


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict, same training path) that multiplies a few rows faster on a
    multi-core CPU, which is what decoding does: one row per sequence and token.

    For a few rows, MKL's GEMM runs on one core (torch 2.13: a 1 x 768 by 768 x 2304 product takes as long on 1
    thread as on 2), so one core streams each weight from memory. Splitting the output features into one group per
    thread and multiplying the groups in one batched matmul puts every core to work: greedy decoding of the 124M
    model went from 0.91x to 1.44x GPT2LMHeadModel on 2 cores (benchmarks/RESULTS.md). Training (autograd on),
    GPUs, compiled graphs and weights that are not plain tensors (quantized) keep nn.Linear's own path.
    """

    max_split_rows = 64  # beyond this GEMM threads well on its own

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._split_pays(input):
            return super().forward(input)
        groups = torch.get_num_threads()
        even = self.out_features - self.out_features % groups  # output features shared out evenly
        rows = input.reshape(-1, self.in_features)  # (M, C_in)
        weight = self.weight[:even].view(groups, -1, self.in_features).transpose(1, 2)  # (g, C_in, even/g)
        output = torch.bmm(rows.expand(groups, -1, -1), weight)  # (g, M, even/g)
        output = output.transpose(0, 1).reshape(len(rows), even)  # (M, g, even/g) -> (M, even): groups side by side
        if even < self.out_features:  # fewer rows than threads left over, e.g. the last of 50,257 on 2 threads
            output = torch.cat([output, rows @ self.weight[even:].t()], dim=1)
        if self.bias is not None:
            output.add_(self.bias)
        return output.view(*input.shape[:-1], self.out_features)

    def _split_pays(self, input: torch.Tensor) -> bool:
        return (
            not torch.compiler.is_compiling()  # first: the compiler makes its own kernels (and cannot trace the rest)
            and input.device.type == "cpu"
            and 1 < torch.get_num_threads() <= self.out_features
            and input.numel() <= self.max_split_rows * self.in_features
            and not torch.is_grad_enabled()
            and type(self.weight.data) is torch.Tensor
            and self.weight.is_contiguous()
        )


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention written out, for reference and for `output_attentions`. q, k, v: (B, nh, T, hs)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, nh, T, T_kv)
    if attention_mask is not None:
        scores = scores + attention_mask  # (B, 1, T, T_kv): 0 where allowed, dtype-min where not (causal, padding)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2)  # (B, T, nh, hs)
    return output, weights


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads in one matmul
        self.c_proj = Linear(config.n_embd, config.n_embd)
        self.c_proj.is_residual_projection = True
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states, attention_mask=None, cache: Cache | None = None, **kwargs):
        batch, seq_len, width = hidden_states.shape
        query, key, value = self.c_attn(hidden_states).split(width, dim=2)
        # (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs)
        query = query.view(batch, seq_len, self.n_head, self.head_dim).transpose(1, 2)
        key = key.view(batch, seq_len, self.n_head, self.head_dim).transpose(1, 2)
        value = value.view(batch, seq_len, self.n_head, self.head_dim).transpose(1, 2)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)  # (B, nh, T_past + T, hs)
        if self.config._attn_implementation == "flex_attention":
            # Compiled flex attention (torch 2.11) refuses q, k and v that are views of one buffer, as the split of
            # c_attn's output is; give it three.
            query, key, value = query.contiguous(), key.contiguous(), value.contiguous()

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attn_pdrop if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = output.reshape(batch, seq_len, width)  # (B, T, nh, hs) -> (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(output)), weights


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.is_residual_projection = True
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states):
        # GPT-2 uses the tanh approximation of GELU ("gelu_new" in transformers); one fused kernel here.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(hidden_states), approximate="tanh")))


class Block(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, hidden_states, attention_mask=None, cache: Cache | None = None, **kwargs):
        attn_output, _ = self.attn(self.ln_1(hidden_states), attention_mask=attention_mask, cache=cache, **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class GPTPreTrainedModel(PreTrainedModel):
    config_class = GPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": Block, "attentions": CausalSelfAttention}

    def _init_weights(self, module):
        """GPT-2 init: N(0, 0.02) weights, zero biases, LayerNorm 1/0, and residual projections scaled by
        1/sqrt(2 * n_layer) because each block adds two of them to the residual stream (GPT-2 paper, sec. 2.3).
        The `init` helpers skip tensors already loaded from a checkpoint."""
        super()._init_weights(module)  # Linear / Embedding: N(0, initializer_range); LayerNorm: 1, 0
        if getattr(module, "is_residual_projection", False):
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also name, in `auto_map`, every class of this file registered for an auto class (transformers names only
        the one saved): vLLM's and SGLang's Transformers backends load the base model through `AutoModel`."""
        for model_class in (GPTModel, GPTForCausalLM):
            if model_class._auto_class is not None:
                auto_map = dict(getattr(self.config, "auto_map", None) or {})
                auto_map[model_class._auto_class] = f"{model_class.__module__.split('.')[-1]}.{model_class.__name__}"
                self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)


class GPTModel(GPTPreTrainedModel):
    """Embeddings and the block stack; returns the final LayerNorm's hidden states."""

    def __init__(self, config: GPTConfig):
        config.check_fields()  # catches fields changed after the config was built
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([Block(config, layer_idx) for layer_idx in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, new_embeddings):
        self.wte = new_embeddings

    @capture_outputs
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # as GPT2Model: the old name still works
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        The arguments of transformers' `GPT2Model.forward`, in its order, and with its meaning:
        token_type_ids: (B, T) ids whose token embeddings are added to the input's, as GPT-2 does.
        position_ids: (B, T) or (1, T). Absent: counted on from the cache. Rows whose positions restart at 0 hold
            several documents (`DataCollatorWithFlattening`, TRL's packing); with no attention mask and no cache,
            each token then attends within its own document only, and a row may be longer than `n_positions`
            as long as every position is below it.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)

        # A cache is for generation; training steps do not build one unless asked to.
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            use_cache = False
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        past_length = cache.get_seq_length() if cache is not None else 0  # a tensor for a static cache
        seq_len = inputs_embeds.shape[1]
        derived_positions = position_ids is None  # counted on from the cache, as opposed to given by the caller
        if derived_positions:
            position_ids = (torch.arange(seq_len, device=inputs_embeds.device) + past_length).unsqueeze(0)  # (1, T)
        if not torch.compiler.is_compiling() and past_length + seq_len > self.config.n_positions:
            self._check_positions(position_ids, past_length, seq_len, derived_positions)

        if attention_mask is None and cache is None and derived_positions and self.config._attn_implementation == "sdpa":
            # Plain causal attention (training, an unpadded prompt): no mask, so sdpa takes its is_causal path, the
            # flash kernels. create_causal_mask cannot know the batch is unpadded while torch.compile traces, and
            # then builds a (T, T) mask that sends sdpa to a masked kernel (2.3x slower on an H200). Positions
            # given by the caller go through create_causal_mask: that is where packed rows are found.
            causal_mask = None
        else:  # padding, a cache or given positions: the mask each backend expects
            causal_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                cache=cache,
                position_ids=position_ids,
            )

        hidden_states = inputs_embeds + self.wpe(position_ids)
        if token_type_ids is not None:
            hidden_states = hidden_states + self.wte(token_type_ids)
        hidden_states = self.drop(hidden_states)
        for block in self.h:
            hidden_states = block(
                hidden_states, attention_mask=causal_mask, cache=cache, position_ids=position_ids, **kwargs
            )
        hidden_states = self.ln_f(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)

    def _check_positions(self, position_ids, past_length, seq_len: int, derived: bool) -> None:
        """More tokens than the context: refused, unless the caller's positions (packed documents) all fit."""
        if derived:
            raise ValueError(
                f"Input of {past_length + seq_len} tokens ({past_length} cached + {seq_len} new) is longer than the "
                f"context of n_positions={self.config.n_positions}"
            )
        largest = int(position_ids.max())
        if largest >= self.config.n_positions:
            raise ValueError(
                f"position_ids reach {largest}, beyond the context of n_positions={self.config.n_positions} "
                f"(positions 0 to {self.config.n_positions - 1})"
            )


class GPTForCausalLM(GPTPreTrainedModel, GenerationMixin):
    """GPT-2 with its LM head; the loss is next-token cross-entropy through the library's loss function.

    Training adds two speed-ups that give the same loss and gradients, and take effect only while the LM head is
    the model's own plain `Linear` (a head wrapped or replaced by PEFT, quantisation or hooks is called as a module,
    with the library's loss on its logits, as GPT2LMHeadModel does):
    - `make_vocab_size_divisible_by`: the head's matmul runs over the vocabulary padded with zero rows to that
      multiple (50,304 for GPT-2's 50,257 at 64: aligned, faster on GPUs), its padding columns kept out of the
      softmax; the weights themselves have exactly `vocab_size` rows.
    - `loss_chunk_size` > 0: the fused, chunked LM head + cross-entropy. The training forward then returns
      `logits=None` (the logits are never materialised); evaluation and generation return logits as usual.
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.transformer = GPTModel(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # as GPT2LMHeadModel: the old name still works
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels: (B, T) token ids, shifted inside the model (labels = input_ids is right); -100 is ignored.
        kwargs: passed to the attention and the loss; Trainer's `num_items_in_batch` (target tokens in the whole
            optimizer step) makes the loss a sum over this micro-batch divided by it, so gradient accumulation
            equals one big batch.
        In training with labels and `config.loss_chunk_size` > 0 (and the model's own LM head), `logits` is None.
        """
        outputs = self.transformer(
            input_ids,
            cache=cache,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state  # (B, T, C)
        fast_training_loss = labels is not None and self.training and self._lm_head_is_plain()

        if fast_training_loss and self.config.loss_chunk_size:
            logits = None  # never materialised: the fused loss walks over chunks of tokens
            loss = chunked_cross_entropy(
                hidden_states,
                self.lm_head.weight,
                labels,
                chunk_size=self.config.loss_chunk_size,
                num_items_in_batch=kwargs.get("num_items_in_batch"),
                shift_labels=kwargs.get("shift_labels"),
            )
        elif fast_training_loss and self.config.padded_vocab_size > self.config.vocab_size:
            padded_logits = padded_lm_head(slice_logits_to_keep(hidden_states, logits_to_keep), self.lm_head.weight,
                                           self.config.padded_vocab_size)  # (B, T, V_padded)
            loss = self.loss_function(padded_logits, labels, vocab_size=padded_logits.shape[-1], **kwargs)
            logits = padded_logits[..., : self.config.vocab_size]  # the padding columns are not tokens
        else:  # as GPT2LMHeadModel
            logits = self.lm_head(slice_logits_to_keep(hidden_states, logits_to_keep))  # (B, T, V)
            loss = None
            if labels is not None:
                loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _lm_head_is_plain(self) -> bool:
        """Is the LM head still the model's own: a bias-free Linear holding a plain weight, with no hooks? Anything
        else (a PEFT adapter, a quantized layer, accelerate's offload hooks, a user's hook) is called as a module.
        FSDP2 turns the head into a subclass of its own class whose hooks only gather the weight, which its
        forward would then multiply as the Linear does: that head counts as plain (its weight is whole by now)."""
        head, head_class = self.lm_head, type(self.lm_head)
        sharded = isinstance(head, FSDPModule)
        if sharded:
            head_class = next(cls for cls in head_class.__mro__ if not issubclass(cls, FSDPModule))
        return (
            head_class in (Linear, nn.Linear)
            and head.bias is None
            and type(head.weight) is nn.Parameter
            and (sharded or not (head._forward_hooks or head._forward_pre_hooks))
            and not hasattr(head, "_hf_hook")
        )


def padded_lm_head(hidden_states: torch.Tensor, weight: torch.Tensor, padded_vocab_size: int) -> torch.Tensor:
    """The logits of `hidden_states @ weight.T` over `padded_vocab_size` columns: the real ones, then zero-weight
    columns at -inf, which a softmax gives exactly zero weight, so the loss is that of the real columns. Hand-written
    because a matmul over 50,304 rows (a multiple of 64) stays aligned in memory, where 50,257 is not, and compiled,
    the pad fuses into the weight's cast and the whole cross-entropy backward is one kernel, as in nanoGPT."""
    vocab_size = weight.shape[0]
    padded_weight = F.pad(weight, (0, 0, 0, padded_vocab_size - vocab_size))  # (V_padded, C): zero rows
    logits = F.linear(hidden_states, padded_weight)  # (B, T, V_padded)
    is_padding = torch.arange(padded_vocab_size, device=logits.device) >= vocab_size  # (V_padded,)
    return logits.masked_fill(is_padding, float("-inf"))


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over valid tokens of cross_entropy(hidden @ weight[:vocab].T, target), computed chunk by chunk.

    The gradients are computed during the forward pass (softmax minus one-hot, times the chunk's inputs), so
    neither the logits nor their softmax outlive one chunk; backward only scales the stored gradients.
    The same idea as the fused linear cross-entropy of Liger-Kernel and Apple's Cut Cross-Entropy.

    The returned loss is a fresh tensor, never one written in place: tracing this forward, torch 2.11's Dynamo
    returns every intermediate as an extra output, so an output updated in place (`loss_sum += ...`) comes back
    several times, autograd wires its gradient to the last copy, and backward receives zero: every gradient came
    out zero while the loss looked right (issue #10; upstream pytorch/pytorch#180642, fixed in 2.12). In-place
    writes stay confined to the gradient buffers, which only backward reads; tests/test_compile.py compares the
    compiled gradients with eager ones.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int):
        # hidden: (N, C); weight: (V, C); targets: (N,), -100 = ignore
        needs_grad_hidden, needs_grad_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if needs_grad_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad_weight else None
        chunk_losses = []
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            chunk = hidden[start:end]  # (n, C)
            chunk_targets = targets[start:end]  # (n,)
            logits = (chunk @ weight.T).float()  # (n, V)
            valid = (chunk_targets != -100)[:, None]  # (n, 1)
            safe_targets = chunk_targets.clamp(min=0)[:, None]  # (n, 1)
            log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)  # (n, 1)
            chunk_losses.append(((log_norm - logits.gather(1, safe_targets)) * valid).sum())
            if grad_hidden is None and grad_weight is None:
                continue
            # d(loss_sum)/d(logits) = softmax - onehot(target), zero for ignored tokens; in place, in the logits
            grad_logits = logits.sub_(log_norm).exp_()
            grad_logits.scatter_add_(1, safe_targets, torch.full_like(log_norm, -1.0))
            grad_logits = grad_logits.mul_(valid).to(chunk.dtype)  # (n, V)
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[start:end])  # (n, C)
            if grad_weight is not None and chunk.dtype == torch.float32:
                grad_weight.addmm_(grad_logits.T, chunk)  # (V, C), accumulated in place
            elif grad_weight is not None:
                grad_weight += (grad_logits.T @ chunk).float()  # (V, C)
        ctx.save_for_backward(
            grad_hidden if grad_hidden is not None else torch.empty(0),
            grad_weight if grad_weight is not None else torch.empty(0),
        )
        ctx.weight_dtype = weight.dtype
        return torch.stack(chunk_losses).sum()  # a new tensor (see the class docstring)

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_output if ctx.needs_input_grad[0] else None
        grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None


def chunked_cross_entropy(hidden_states, weight, labels, chunk_size, num_items_in_batch=None, shift_labels=None):
    """Next-token cross-entropy of `hidden_states @ weight.T` without materialising all logits.

    Same normalisation as transformers' ForCausalLMLoss: the mean over target tokens, or the sum divided by
    `num_items_in_batch` when Trainer passes it for gradient accumulation; `shift_labels`, when given (context
    parallelism), are the targets as they are.
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=-100)[..., 1:]  # (B, T): token t predicts token t + 1
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])  # (B*T, C)
    targets = shift_labels.reshape(-1).to(hidden.device)  # (B*T,)
    loss_sum = _LinearCrossEntropy.apply(hidden, weight, targets, chunk_size)
    if num_items_in_batch is None:
        return loss_sum / (targets != -100).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss_sum.device)
    return loss_sum / num_items_in_batch


__all__ = ["GPTModel", "GPTForCausalLM", "GPTPreTrainedModel"]
