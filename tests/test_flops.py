"""The run's arithmetic: FLOPs per token, the plan, and the loss chosen for the device."""

import pytest
import torch

from recipe import GPTConfig, GPTForCausalLM
from recipe.flops import CPU_LOSS_CHUNK_SIZE, choose_loss_chunk_size, model_flops_per_token, peak_flops


def test_flops_per_token_of_gpt2_124m_is_nanogpts_estimate():
    with torch.device("meta"):
        model = GPTForCausalLM(GPTConfig(make_vocab_size_divisible_by=64))
    # 6N + 12LHQT with N = 124,475,904 (nanoGPT's count: its head is padded to 50,304 rows, as the recipe's training
    # matmul is) - the 1,024 x 768 position embedding (nanoGPT's estimate_mfu)
    assert model_flops_per_token(model, 1024) == 6 * (124_475_904 - 1024 * 768) + 12 * 12 * 12 * 64 * 1024
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("Some GPU") is None


@pytest.fixture
def gpu_with(monkeypatch):
    """Pretend the device is a CUDA GPU with this much memory (the choice reads only its size and name)."""
    def pretend(gib: int):
        properties = type("Properties", (), {"total_memory": gib * 2**30})()
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"GPU with {gib} GiB")
        return torch.device("cuda")
    return pretend


def test_the_loss_is_chosen_for_the_device_and_the_config_wins(gpu_with):
    tokens = 64 * 1024  # GPT-2's micro-batch: its fp32 logits over 50,304 columns take 12.3 GiB
    assert choose_loss_chunk_size(None, 50304, tokens, torch.device("cpu"))[0] == CPU_LOSS_CHUNK_SIZE
    chunk_size, why = choose_loss_chunk_size(None, 50304, tokens, gpu_with(80))
    assert chunk_size == 0 and "12.3 of 80 GiB" in why  # full logits: fastest, and they fit
    assert choose_loss_chunk_size(None, 50304, tokens, gpu_with(40))[0] == CPU_LOSS_CHUNK_SIZE  # would not fit well
    assert choose_loss_chunk_size(0, 50304, tokens, gpu_with(40)) == (0, "loss_chunk_size set in the config")
