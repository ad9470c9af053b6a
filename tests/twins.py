"""Our GPT and transformers' GPT2LMHeadModel holding the same random weights, for parity tests."""

import torch
from transformers import GPT2LMHeadModel

from conftest import tiny_gpt2_config
from recipe import GPTForCausalLM
from recipe.convert import gpt_config_from_gpt2, state_dict_from_openai


def twin_models(seed: int = 0, make_vocab_size_divisible_by: int = 1, **shape):
    """(ours, reference), both in eval mode, with identical weights drawn by transformers' GPT-2 init."""
    torch.manual_seed(seed)
    reference = GPT2LMHeadModel(tiny_gpt2_config(**shape)).eval()
    config = gpt_config_from_gpt2(reference.config, make_vocab_size_divisible_by)
    ours = GPTForCausalLM(config).eval()
    state = state_dict_from_openai(reference.state_dict(), config)
    if make_vocab_size_divisible_by > 1:  # fill the padding rows with noise: they must not matter
        state["transformer.wte.weight"][config.vocab_size :] = torch.randn_like(
            state["transformer.wte.weight"][config.vocab_size :]
        )
    ours.load_state_dict(state, strict=False)
    return ours, reference
