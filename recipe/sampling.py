"""Sampling text from a GPT with transformers' `generate()`: greedy, or temperature / top-k / top-p sampling.

A prompt that does not leave room for the `max_new_tokens` asked for in the model's context is refused, never
silently cut; without a number, as many as fit, up to DEFAULT_NEW_TOKENS.
"""

import torch
from transformers import CompileConfig, PreTrainedTokenizerBase, TextStreamer, set_seed

from .errors import ConfigError
from .modeling_gpt import GPTForCausalLM


DEFAULT_NEW_TOKENS = 64


def check_sampling(temperature: float, top_k: int, top_p: float, max_new_tokens: int | None,
                   num_return_sequences: int) -> None:
    """Refuse, by flag and value, settings that generate() would reject late or misread."""
    if not temperature >= 0:
        raise ConfigError(f"--temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k < 0:
        raise ConfigError(f"--top_k={top_k} must be >= 0 (0 means no top-k filtering)")
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top_p={top_p} must be in (0, 1] (1 means no nucleus filtering)")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"--max_new_tokens={max_new_tokens} must be at least 1")
    if num_return_sequences < 1:
        raise ConfigError(f"--num_return_sequences={num_return_sequences} must be at least 1")
    if temperature == 0 and num_return_sequences > 1:
        raise ConfigError(
            f"--num_return_sequences={num_return_sequences} needs sampling: greedy decoding (--temperature 0) "
            f"has one answer"
        )


@torch.no_grad()
def generate_text(
    model: GPTForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    max_new_tokens: int | None = None,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: int | None = None,
    streamer: TextStreamer | None = None,
    compile: bool = False,
) -> list[str]:
    """Prompt plus continuation, one string per sequence. Temperature 0 is greedy decoding; otherwise sampling
    with top-k 50 by default (what build-nanogpt and transformers' pipeline use for GPT-2).

    `compile`: decode with transformers' static cache and a compiled forward (`generate` compiles it): the same
    tokens, without the per-token launch overhead that bounds batch-1 decoding on a GPU. The first call pays the
    compilation."""
    check_sampling(temperature, top_k, top_p, max_new_tokens, num_return_sequences)
    eot_id = tokenizer.eos_token_id
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] or [eot_id]  # "" samples unconditionally
    context = model.config.n_positions
    if len(prompt_ids) >= context:
        raise ConfigError(
            f"the prompt is {len(prompt_ids)} tokens, which fills the model's context of {context} tokens: "
            f"shorten it (prompts are never truncated)"
        )
    if max_new_tokens is None:
        max_new_tokens = min(DEFAULT_NEW_TOKENS, context - len(prompt_ids))
    if len(prompt_ids) + max_new_tokens > context:
        raise ConfigError(
            f"the prompt is {len(prompt_ids)} tokens and --max_new_tokens={max_new_tokens}, but the model's context "
            f"is {context} tokens: lower --max_new_tokens to {context - len(prompt_ids)} or shorten the prompt"
        )
    if seed is not None:
        set_seed(seed)
    if temperature == 0:
        decoding = dict(do_sample=False, temperature=None, top_k=None, top_p=None)
    else:
        decoding = dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    if compile:
        compile_config = CompileConfig(fullgraph=True)
        compile_config._compile_all_devices = True  # generate() compiles only on accelerators unless told
        decoding.update(cache_implementation="static", compile_config=compile_config)
    sequences = model.generate(
        torch.tensor([prompt_ids], device=model.device),
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_return_sequences,
        use_cache=True,
        pad_token_id=eot_id,
        streamer=streamer,
        **decoding,
    )  # (num_return_sequences, prompt + new tokens), stopped early at <|endoftext|>
    return tokenizer.batch_decode(sequences, skip_special_tokens=True)
