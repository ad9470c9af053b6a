"""GPTConfig / GPTModel / GPTForCausalLM: parity with transformers' GPT-2, init, loss, attention backends."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from recipe import GPTConfig, GPTForCausalLM, GPTModel
from recipe.modeling_gpt import Linear
from helpers import twin_models


def test_default_config_is_gpt2_124m():
    config = GPTConfig()
    assert (config.vocab_size, config.n_positions, config.n_embd, config.n_layer, config.n_head) == (
        50257, 1024, 768, 12, 12
    )
    with torch.device("meta"):
        model = GPTForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # tied head: counted once
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(n_embd=100, n_head=12), "n_embd=100 must be divisible by n_head=12"),
        (dict(n_layer=0), "n_layer must be a positive integer, got 0"),
        (dict(vocab_size=-5), "vocab_size must be a positive integer, got -5"),
        (dict(n_positions=2.5), "n_positions must be a positive integer, got 2.5"),
        (dict(attn_pdrop=1.5), "attn_pdrop must be a probability in [0, 1), got 1.5"),
        (dict(make_vocab_size_divisible_by=0), "make_vocab_size_divisible_by must be a positive integer, got 0"),
        (dict(loss_chunk_size=-1), "loss_chunk_size must be 0 (off) or a positive integer, got -1"),
    ],
)
def test_invalid_config_names_field_and_value(fields, message):
    with pytest.raises(ValueError) as error:
        GPTConfig(**fields)
    assert message in str(error.value)


def test_config_changed_after_construction_is_checked_by_the_model():
    config = GPTConfig(n_layer=1, n_embd=32, n_head=4)
    config.n_head = 5
    with pytest.raises(ValueError, match="n_embd=32 must be divisible by n_head=5"):
        GPTModel(config)


def test_auto_classes_know_the_model():
    config = AutoConfig.for_model(GPTConfig.model_type, n_layer=1, n_embd=32, n_head=4, vocab_size=100)
    assert isinstance(config, GPTConfig)
    assert isinstance(AutoModel.from_config(config), GPTModel)
    assert isinstance(AutoModelForCausalLM.from_config(config), GPTForCausalLM)


@pytest.mark.parametrize(
    "shape, batch, seq_len",
    [
        (dict(n_layer=2, n_embd=32, n_head=4), 3, 17),
        (dict(n_layer=3, n_embd=96, n_head=6, n_positions=128), 2, 128),
        (dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024), 1, 1024),  # GPT-2 124M, full context
    ],
    ids=["tiny", "small-full-context", "gpt2-124m-full-context"],
)
def test_logits_match_transformers_gpt2(shape, batch, seq_len):
    ours, reference = twin_models(**shape)
    input_ids = torch.randint(0, 50257, (batch, seq_len))
    with torch.no_grad():
        difference = (ours(input_ids).logits - reference(input_ids).logits).abs().max().item()
    assert difference <= 1e-4  # measured at most 2.3e-6 (124M, 1,024 tokens; AVX-512 and AVX2, 1 and 2 threads)


def test_left_padded_batch_matches_transformers_gpt2():
    ours, reference = twin_models()
    input_ids = torch.randint(0, 50257, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :5] = 0
    attention_mask[1, :2] = 0
    # Positions count real tokens only, as generate() builds them for left padding.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours_logits = ours(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        reference_logits = reference(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    real = attention_mask.bool()
    assert (ours_logits[real] - reference_logits[real]).abs().max().item() <= 1e-4
    # A padded row equals the same sequence run alone without padding.
    with torch.no_grad():
        alone = ours(input_ids[:1, 5:]).logits
    assert (ours_logits[0, 5:] - alone[0]).abs().max().item() <= 1e-5


def test_loss_matches_transformers_gpt2():
    ours, reference = twin_models()
    input_ids = torch.randint(0, 50257, (2, 16))
    labels = input_ids.clone()
    labels[0, :4] = -100
    assert torch.allclose(ours(input_ids, labels=labels).loss, reference(input_ids, labels=labels).loss, atol=1e-6)


def test_vocab_padding_is_only_the_training_matmuls_layout():
    """make_vocab_size_divisible_by pads the LM head's matmul in training, never the weights: clients see GPT-2's
    shapes, and the training loss, logits and gradients are those of the unpadded model."""
    plain, _ = twin_models(seed=3)
    padded, _ = twin_models(seed=3, make_vocab_size_divisible_by=64)
    assert padded.config.padded_vocab_size == 50304
    assert padded.transformer.wte.weight.shape[0] == padded.lm_head.weight.shape[0] == padded.config.vocab_size == 50257
    assert padded.num_parameters() == plain.num_parameters()
    input_ids = torch.randint(0, 50257, (2, 16))
    outputs = {}
    for name, model in (("plain", plain), ("padded", padded)):
        model.train()
        outputs[name] = model(input_ids, labels=input_ids)
        outputs[name].loss.backward()
    assert outputs["padded"].logits.shape[-1] == 50257
    # different matmul shapes, so different summation blocking: equal to the fp32 floor, not bit for bit
    torch.testing.assert_close(outputs["padded"].logits, outputs["plain"].logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(outputs["padded"].loss, outputs["plain"].loss, rtol=1e-6, atol=0)
    for (name, p), (_, q) in zip(padded.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8, msg=name)


@pytest.mark.parametrize("threads", [2, 3])
def test_linear_shares_few_rows_out_over_the_threads_with_nn_linears_result(threads):
    """Decoding on a CPU multiplies a row or a few by each weight; Linear then splits the output features over the
    threads (an uneven count leaves a few for a plain matmul). Training and many rows keep nn.Linear's own path."""
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for out_features, bias in [(96, True), (97, False)]:
            layer = Linear(32, out_features, bias=bias)
            for shape in [(32,), (1, 1, 32), (3, 5, 32)]:
                x = torch.randn(shape)
                with torch.no_grad():
                    assert layer._split_pays(x)
                    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
            assert not layer._split_pays(x)  # autograd on: nn.Linear, bit for bit what training has always done
            with torch.no_grad():
                assert not layer._split_pays(torch.randn(65, 32))
    finally:
        torch.set_num_threads(previous)


def test_input_longer_than_context_names_both_lengths():
    model = GPTForCausalLM(GPTConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=100, n_positions=16))
    with pytest.raises(ValueError, match="Input of 17 tokens .* n_positions=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_init_statistics():
    torch.manual_seed(0)
    config = GPTConfig(n_layer=6, n_embd=384, n_head=6)
    model = GPTForCausalLM(config)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    for name, parameter in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert parameter.std().item() == pytest.approx(residual_std, rel=0.05), name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert parameter.std().item() == pytest.approx(0.02, rel=0.05), name
            assert abs(parameter.mean().item()) < 1e-3, name
        elif name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "transformer.ln_f.weight":
            assert torch.all(parameter == 1), name
        elif name.endswith(".bias"):
            assert torch.all(parameter == 0), name
        else:
            raise AssertionError(f"untested parameter {name}")


def test_loading_a_checkpoint_does_not_reinitialise(tmp_path):
    model = GPTForCausalLM(GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=100))
    with torch.no_grad():
        for index, parameter in enumerate(model.parameters()):
            parameter.fill_(0.5 + index)  # nothing an init would produce
    model.save_pretrained(tmp_path)
    loaded = GPTForCausalLM.from_pretrained(tmp_path)
    for (name, saved), (_, restored) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(saved, restored), name
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_eager_and_sdpa_agree():
    model, _ = twin_models()
    input_ids = torch.randint(0, 50257, (2, 20))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :6] = 0
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            outputs[implementation] = model(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    assert (outputs["eager"][real] - outputs["sdpa"][real]).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_flex_attention_agrees_with_sdpa():
    """16 tokens: a whole number of the CPU flex kernel's 16-key blocks (see tests/test_compile.py's flex test for
    the tail it gets wrong without AVX-512)."""
    model, _ = twin_models()
    input_ids = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        sdpa = model(input_ids).logits
        model.set_attn_implementation("flex_attention")
        flex = model(input_ids).logits
    assert (flex - sdpa).abs().max().item() <= 1e-5


def _gradients(model, input_ids):
    model.zero_grad(set_to_none=True)
    model(input_ids, labels=input_ids).loss.backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_gradients():
    model, _ = twin_models()
    model.train()
    input_ids = torch.randint(0, 50257, (2, 16))
    plain = _gradients(model, input_ids)
    model.activation_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in model.transformer.h)
    checkpointed = _gradients(model, input_ids)
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-7), name


def test_chunked_cross_entropy_matches_the_library_loss():
    model, _ = twin_models(make_vocab_size_divisible_by=64)
    model.train()
    input_ids = torch.randint(0, 50257, (3, 20))
    labels = input_ids.clone()
    labels[0, :7] = -100
    for num_items_in_batch in (None, torch.tensor(100)):
        kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        model.config.loss_chunk_size = 0
        model.zero_grad(set_to_none=True)
        full = model(input_ids, labels=labels, **kwargs)
        full.loss.backward()
        full_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        model.config.loss_chunk_size = 16  # does not divide the 60 tokens: the last chunk is short
        model.zero_grad(set_to_none=True)
        chunked = model(input_ids, labels=labels, **kwargs)
        chunked.loss.backward()
        assert chunked.logits is None
        assert abs(chunked.loss.item() - full.loss.item()) <= 1e-5
        for name, parameter in model.named_parameters():
            assert torch.allclose(parameter.grad, full_grads[name], atol=1e-6, rtol=1e-5), name


def test_hidden_states_and_attentions_can_be_returned():
    model, _ = twin_models()
    model.set_attn_implementation("eager")
    input_ids = torch.randint(0, 50257, (1, 8))
    output = model(input_ids, output_hidden_states=True, output_attentions=True)
    assert len(output.hidden_states) == model.config.n_layer + 1
    assert len(output.attentions) == model.config.n_layer
    assert output.attentions[0].shape == (1, model.config.n_head, 8, 8)


@pytest.mark.parametrize("loss_chunk_size", [0, 16], ids=["library-loss", "chunked-loss"])
def test_a_training_step_compiles_without_graph_breaks(loss_chunk_size):
    model = GPTForCausalLM(GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=32,
                                     loss_chunk_size=loss_chunk_size)).train()
    input_ids = torch.randint(0, 100, (2, 16))
    explanation = torch._dynamo.explain(lambda ids: model(input_ids=ids, labels=ids).loss)(input_ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
