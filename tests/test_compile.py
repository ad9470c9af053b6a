"""torch.compile (inductor, on the CPU) trains the same model as eager: every training path's gradients are compared,
not only whether it compiles. A compiled chunked loss once gave all-zero gradients on a GPU while compiling fine."""

import pytest
import torch

from recipe import GPTConfig, GPTForCausalLM
from recipe.sampling import generate_text
from recipe.tokenization import gpt2_tokenizer

pytestmark = pytest.mark.slow  # each case compiles a forward and a backward with inductor (~20 s on 2 cores)

# One case per training path, each compiled once: full logits and the chunked loss; sdpa and eager attention;
# gradient checkpointing; fp32 and bf16 autocast. (Flex attention has no backward on the CPU: its forward is
# compared below, its gradients by benchmarks/gpu_check.sh on a GPU.)
CASES = {
    "full-logits, sdpa": dict(loss_chunk_size=0, attn="sdpa"),
    "chunked, eager attention, checkpointing": dict(loss_chunk_size=16, attn="eager", checkpointing=True),
    "chunked, sdpa, bf16": dict(loss_chunk_size=16, attn="sdpa", bf16=True),
}


def _model(loss_chunk_size: int, attn: str) -> GPTForCausalLM:
    # A padded vocabulary and a chunk size that does not divide the 2 x 24 tokens: the awkward shapes.
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=200, n_positions=32,
                       make_vocab_size_divisible_by=64, loss_chunk_size=loss_chunk_size)
    model = GPTForCausalLM(config).train()
    model.set_attn_implementation(attn)
    return model


def _gradients(model, input_ids, bf16: bool, compiled: bool = False) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    step = torch.compile(model) if compiled else model
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = step(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_compiled_training_step_has_the_eager_gradients(case):
    model = _model(case["loss_chunk_size"], case["attn"])
    if case.get("checkpointing"):
        model.gradient_checkpointing_enable()
    input_ids = torch.randint(0, 200, (2, 24))
    bf16 = case.get("bf16", False)

    eager = _gradients(model, input_ids, bf16)
    compiled = _gradients(model, input_ids, bf16, compiled=True)

    # Of the largest gradient. Measured (torch 2.13; AVX-512 and AVX2, 1 and 2 threads, RESULTS.md): fp32 at most
    # 7.3e-7, the order of float32 sums; bf16 at most 3.5e-7, as compiled and eager round to bf16 at the same points
    # (the matmuls' outputs). 1e-5 is 14x fp32's. bf16 keeps room for a graph that rounds an activation where eager
    # does not (up to bf16's eps, 3.9e-3, each): a wrong gradient is off by far more.
    tolerance = 2e-2 if bf16 else 1e-5
    for name, gradient in eager.items():
        assert compiled[name].abs().max() > 0 or gradient.abs().max() == 0, f"{name}: compiled gradient is all zero"
        scale = gradient.abs().max().clamp(min=1e-3)
        assert (compiled[name] - gradient).abs().max() <= tolerance * scale, name
    norm = torch.stack([gradient.norm() for gradient in compiled.values()]).norm()
    assert norm > 0.1  # the loss of a random model has a real gradient


def test_compiled_flex_attention_gives_the_sdpa_loss_and_logits():
    """The model compiled with flex attention computes what it computes with sdpa. The reference is eager sdpa, not
    flex outside torch.compile: there transformers compiles flex_attention by itself, so the comparison would be of
    inductor's flex kernel with itself.

    32 tokens, not the 24 of the cases above: on CPUs without AVX-512, torch 2.13's CPU flex kernel is wrong when a
    block of keys ends in a tail of 8 and head_dim is 8 or 16, as here. Its q @ k.T micro-GEMM (inductor's
    CppMicroGemmFP32Vec, transposed B, N tail) computes 16 columns for that tail: it reads 8 keys past it and writes
    8 scores past its buffer. At 24 tokens under AVX2 that moves the loss by 7e-4 to 1.1e-3 and the logits by up to
    0.08, or gives NaN, depending on the memory after the keys (the old flex-vs-flex test saw 1.7e-4 or NaN here,
    8e-5 to 4e-4 on another machine). With no tail, compiled flex differs from eager sdpa only as compiled sdpa does,
    by the order of float32 sums (the kernel's exp_u20, a polynomial exp within 20 ulps, adds nothing visible): at
    most 9.5e-7 on the loss (2 ulps of 5.3) and 1.5e-7 on the logits, over 5 seeds, AVX-512 and AVX2
    (ATEN_CPU_CAPABILITY), 1 and 2 threads (benchmarks/flex_cpu_check.py, RESULTS.md). So 1e-5 on both: 10x that on
    the loss, 65x on the logits, and far below the kernel's bug (70x above it on the loss, 6,000x on the logits)."""
    model = _model(loss_chunk_size=0, attn="flex_attention")
    reference = _model(loss_chunk_size=0, attn="sdpa")
    input_ids = torch.randint(0, 200, (2, 32))
    with torch.no_grad():
        eager = reference(input_ids=input_ids, labels=input_ids)
        compiled = torch.compile(model)(input_ids=input_ids, labels=input_ids)
    assert abs(compiled.loss.item() - eager.loss.item()) <= 1e-5
    assert (compiled.logits - eager.logits).abs().max().item() <= 1e-5


def test_compiled_training_uses_sdpas_causal_kernel_without_a_mask():
    """Under torch.compile, an unpadded batch reaches sdpa as is_causal=True with no mask: the flash path. (A
    materialised (T, T) mask is what create_causal_mask gives while tracing, and it sends sdpa to a slower kernel.)"""
    model = GPTForCausalLM(GPTConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=100, n_positions=32)).train()
    model.set_attn_implementation("sdpa")
    calls = []

    def capture(graph_module, example_inputs):
        calls.extend(node for node in graph_module.graph.nodes
                     if node.op == "call_function" and "scaled_dot_product_attention" in str(node.target))
        return graph_module.forward

    input_ids = torch.randint(0, 100, (2, 16))
    torch.compile(model, backend=capture, fullgraph=True)(input_ids=input_ids, labels=input_ids)
    assert len(calls) == 1
    assert calls[0].kwargs.get("is_causal") is True and calls[0].kwargs.get("attn_mask") is None


def test_compiled_static_cache_decoding_gives_the_eager_tokens():
    """generate_text(compile=True), what `recipe.generate --compile` runs: a static cache and a compiled forward."""
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig(n_layer=2, n_embd=32, n_head=4, n_positions=64)).eval()
    tokenizer = gpt2_tokenizer()
    eager = generate_text(model, tokenizer, "To be, or not to be", max_new_tokens=12, temperature=0)
    compiled = generate_text(model, tokenizer, "To be, or not to be", max_new_tokens=12, temperature=0, compile=True)
    assert compiled == eager


def test_muon_trains_the_compiled_model_as_it_trains_the_eager_one(tmp_path):
    """optim=muon with Trainer's torch_compile: the optimizer is built on the model's own parameters before
    accelerate compiles it, so the compiled module trains the same weights, bit for bit (Dynamo's eager backend:
    the compiler's own numerics are the other tests' subject)."""
    from helpers import tiny_config
    from recipe.args import parse_settings
    from recipe.train import train

    final = {}
    for name, compiled in (("eager", {}), ("compiled", {"torch_compile": True, "torch_compile_backend": "eager"})):
        config = tiny_config(tmp_path, name, optim="muon", max_steps=2, warmup_steps=1, eval_strategy="no",
                             save_strategy="no", sample_max_new_tokens=0, **compiled)
        trainer = train(parse_settings(config, []))
        assert (type(trainer.model_wrapped).__name__ == "OptimizedModule") == bool(compiled)
        optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
        assert optimized == {id(p) for p in trainer.model_wrapped.parameters()}
        state = trainer.optimizer.optimizer.state  # AdamW's and Muon's, one dict
        assert sum("momentum_buffer" in moments for moments in state.values()) == 2 * 4  # 2 blocks x 4 matrices
        final[name] = {key: value.detach().clone() for key, value in trainer.model.state_dict().items()}
    for key, value in final["eager"].items():
        assert torch.equal(final["compiled"][key], value), key
