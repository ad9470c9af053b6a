"""Ours behaves as transformers' GPT2LMHeadModel through every public argument a client passes.

Each test builds both models with the same weights (GPT-2's init, mapped by the recipe's own converter) and
requires the same outputs, warnings and errors, under every attention implementation that runs on a CPU. GPT-2 has
no flex attention: ours under flex is compared with GPT-2 under eager. Where ours differs by design, the test says
why and checks the documented behaviour instead.

Tolerances: the same fp32 weights through the same arithmetic in another order (nn.Linear for Conv1D, another
attention kernel). Measured over these tests (2026-12-04, AMD EPYC, torch 2.13): logits and hidden states at most
3.6e-7 apart, so 1e-5 is 28x that and far below anything a wrong mask or position does (1e-2 and more); losses at
most 1.8e-7 relative, so 2e-6 relative is 11x.
"""

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from recipe import GPTForCausalLM
from recipe.tokenization import gpt2_tokenizer
from helpers import twin_models

# head_dim 32: torch's CPU flex kernel is wrong at head_dim 8 and 16 on machines without AVX-512 (test_compile.py)
SHAPE = dict(n_layer=2, n_embd=64, n_head=2, n_positions=64)
IMPLEMENTATIONS = ["eager", "sdpa", "flex_attention"]
ATOL = 1e-5


def pair(implementation: str = "sdpa", seed: int = 0, **overrides):
    """(ours, GPT-2) with the same weights, in eval mode, ours with `implementation`."""
    ours, reference = twin_models(seed=seed, **{**SHAPE, **overrides})
    ours.set_attn_implementation(implementation)
    reference.set_attn_implementation("eager" if implementation == "flex_attention" else implementation)
    return ours, reference


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, atol: float = ATOL):
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= atol


def assert_same_loss(ours: torch.Tensor, theirs: torch.Tensor):
    """A mean of fp32 log-probabilities summed in another order: a few ulps of the loss, relative."""
    assert abs(ours.item() - theirs.item()) <= 2e-6 * abs(theirs.item())


def both(ours, reference, **inputs):
    with torch.no_grad():
        return ours(**inputs), reference(**inputs)


# -- forward ------------------------------------------------------------------------------------------------------

def _padded(side: str):
    input_ids = torch.randint(0, 50257, (3, 20))
    attention_mask = torch.ones_like(input_ids)
    if side == "left":
        attention_mask[0, :6], attention_mask[1, :2] = 0, 0
    else:
        attention_mask[0, 14:], attention_mask[1, 18:] = 0, 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() builds them
    return input_ids, attention_mask, position_ids


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", ["plain", "right-padded", "left-padded", "position_ids", "token_type_ids",
                                  "inputs_embeds"])
def test_forward_equals_gpt2(implementation, case):
    torch.manual_seed(1)
    ours, reference = pair(implementation)
    input_ids = torch.randint(0, 50257, (2, 32))
    inputs, real = {"input_ids": input_ids}, torch.ones_like(input_ids, dtype=torch.bool)
    if case in ("right-padded", "left-padded"):
        input_ids, attention_mask, position_ids = _padded(case.split("-")[0])
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if case == "left-padded":
            inputs["position_ids"] = position_ids
        real = attention_mask.bool()
    elif case == "position_ids":
        inputs["position_ids"] = torch.arange(5, 37).expand(2, -1)  # a continuation: positions 5 to 36
    elif case == "token_type_ids":
        inputs["token_type_ids"] = torch.randint(0, 50257, (2, 32))
    elif case == "inputs_embeds":
        inputs = {"inputs_embeds": ours.transformer.wte(input_ids).detach()}
    mine, theirs = both(ours, reference, **inputs)
    assert_same(mine.logits[real], theirs.logits[real])


def _packed_row(lengths: list[int]):
    """One row of documents packed end to end, positions restarting at 0 for each, as DataCollatorWithFlattening
    makes it (no attention mask)."""
    input_ids = torch.randint(0, 50257, (1, sum(lengths)))
    position_ids = torch.cat([torch.arange(length) for length in lengths]).unsqueeze(0)
    return input_ids, position_ids


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("lengths", [[16, 32, 16], [48, 64, 48]], ids=["within-context", "longer-than-context"])
def test_packed_rows_attend_within_each_document_as_gpt2(implementation, lengths):
    """A row of several documents (160 tokens for a context of 64 in the second case): every document sees only
    itself, as if run alone, and the loss is GPT-2's. Every position id is below n_positions, so GPT-2 accepts the
    row; so does ours. Without a cache, as the packing collators' users run it (transformers finds packed rows only
    then; see test_training_builds_no_cache_unless_asked)."""
    torch.manual_seed(2)
    ours, reference = pair(implementation)
    input_ids, position_ids = _packed_row(lengths)
    labels = input_ids.clone()
    labels[position_ids == 0] = -100  # no document predicts the first token of the next
    mine, theirs = both(ours, reference, input_ids=input_ids, position_ids=position_ids, labels=labels,
                        use_cache=False)
    assert_same(mine.logits, theirs.logits)
    assert_same_loss(mine.loss, theirs.loss)
    start = 0
    for length in lengths:
        with torch.no_grad():
            alone = ours(input_ids[:, start : start + length]).logits
        assert_same(mine.logits[:, start : start + length], alone)
        start += length


def test_training_builds_no_cache_unless_asked():
    """By design: in training mode ours builds no KV cache unless `use_cache=True` is passed (GPT-2 builds one from
    config.use_cache, memory a training step never reads, and with a cache transformers stops looking for packed
    rows). In eval mode, and whenever it is asked, ours returns the cache as GPT-2 does."""
    ours, reference = pair("sdpa")
    input_ids = torch.randint(0, 50257, (1, 8))
    ours.train(), reference.train()
    assert ours(input_ids).cache is None and reference(input_ids).cache is not None
    assert ours(input_ids, use_cache=True).cache.get_seq_length() == 8
    ours.eval()
    assert ours(input_ids).cache.get_seq_length() == 8


def test_positions_beyond_the_context_are_refused_by_name():
    """Ours names the position and the context; GPT-2 fails inside its position embedding with an IndexError."""
    ours, reference = pair("sdpa")
    input_ids, position_ids = torch.randint(0, 50257, (1, 70)), torch.arange(70).unsqueeze(0)
    with pytest.raises(ValueError, match="position_ids reach 69, beyond the context of n_positions=64"):
        ours(input_ids, position_ids=position_ids)
    with pytest.raises(IndexError):
        reference(input_ids, position_ids=position_ids)
    with pytest.raises(ValueError, match="Input of 70 tokens .* n_positions=64"):
        ours(input_ids)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_decoding_with_a_cache_equals_the_full_forward_and_gpt2(implementation, name):
    """The 8th token after a cache of 7, passed under the current name `cache` or the old `past_key_values` (which
    GPT-2 still accepts until transformers 5.40, with a FutureWarning): the full forward's logits, GPT-2's, and
    GPT-2's warnings."""
    torch.manual_seed(3)
    ours, reference = pair(implementation)
    input_ids = torch.randint(0, 50257, (2, 8))
    results = {}
    for label, model in (("ours", ours), ("gpt2", reference)):
        with torch.no_grad():
            full = model(input_ids).logits[:, -1]
            prefix = model(input_ids[:, :7], use_cache=True).cache
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step = model(input_ids[:, 7:], **{name: prefix}).logits[:, -1]
        results[label] = (full, step, sorted({type(warning.message).__name__ for warning in caught
                                               if "past_key_values" in str(warning.message)}))
    (full, step, warned), (gpt2_full, gpt2_step, gpt2_warned) = results["ours"], results["gpt2"]
    assert_same(gpt2_step, gpt2_full)  # GPT-2 decodes right too: the comparison has a sound reference
    assert_same(step, full)
    assert_same(step, gpt2_step)
    assert warned == gpt2_warned == (["FutureWarning"] if name == "past_key_values" else [])


def test_hidden_states_attentions_and_tuples_equal_gpt2():
    torch.manual_seed(4)
    ours, reference = pair("eager")
    input_ids = torch.randint(0, 50257, (2, 12))
    mine, theirs = both(ours, reference, input_ids=input_ids, output_hidden_states=True, output_attentions=True)
    assert len(mine.hidden_states) == len(theirs.hidden_states) == SHAPE["n_layer"] + 1
    for a, b in zip(mine.hidden_states, theirs.hidden_states):
        assert_same(a, b)
    assert len(mine.attentions) == len(theirs.attentions) == SHAPE["n_layer"]
    for a, b in zip(mine.attentions, theirs.attentions):
        assert_same(a, b)
    mine, theirs = both(ours, reference, input_ids=input_ids, labels=input_ids, return_dict=False)
    assert isinstance(mine, tuple) and isinstance(theirs, tuple) and len(mine) == len(theirs)
    assert_same_loss(mine[0], theirs[0])
    assert_same(mine[1], theirs[1])  # the logits


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_loss_and_num_items_in_batch_equal_gpt2(mode):
    """In training mode too, where ours takes its padded matmul (make_vocab_size_divisible_by) for the loss."""
    torch.manual_seed(5)
    ours, reference = pair("sdpa", make_vocab_size_divisible_by=64)
    getattr(ours, mode)(), getattr(reference, mode)()
    input_ids = torch.randint(0, 50257, (2, 16))
    labels = input_ids.clone()
    labels[0, :5] = -100
    for kwargs in ({}, {"num_items_in_batch": torch.tensor(40)}):
        mine, theirs = ours(input_ids, labels=labels, **kwargs), reference(input_ids, labels=labels, **kwargs)
        assert_same_loss(mine.loss, theirs.loss)
        assert_same(mine.logits, theirs.logits)


def test_the_chunked_training_loss_equals_gpt2_and_returns_no_logits():
    """By design: with loss_chunk_size, a training forward with labels never materialises the logits (that is the
    memory it saves), so `logits` is None there; the loss and gradients are GPT-2's. It is a setting of the run:
    a saved config.json does not carry it, so a checkpoint's clients get GPT-2's behaviour."""
    torch.manual_seed(6)
    ours, reference = pair("sdpa", make_vocab_size_divisible_by=64)
    ours.train(), reference.train()
    ours.config.loss_chunk_size = 10
    input_ids = torch.randint(0, 50257, (2, 16))
    mine, theirs = ours(input_ids, labels=input_ids), reference(input_ids, labels=input_ids)
    assert mine.logits is None
    assert_same_loss(mine.loss, theirs.loss)
    assert "loss_chunk_size" not in ours.config.to_dict()


# -- the vocabulary and the LM head --------------------------------------------------------------------------

def test_the_vocabulary_is_self_consistent_as_gpt2s():
    """make_vocab_size_divisible_by=64 pads the training matmul only: config, both matrices and the parameter
    count are GPT-2's, and a loss computed from the output embeddings (as TRL's fused loss does) is the model's."""
    torch.manual_seed(7)
    ours, reference = pair("sdpa", make_vocab_size_divisible_by=64)
    assert ours.config.vocab_size == reference.config.vocab_size == 50257
    assert ours.get_input_embeddings().weight.shape == reference.get_input_embeddings().weight.shape
    assert ours.get_output_embeddings().weight.shape == reference.get_output_embeddings().weight.shape
    assert ours.num_parameters() == reference.num_parameters()
    ours.train()
    input_ids = torch.randint(0, 50257, (2, 16))
    hidden = ours.transformer(input_ids).last_hidden_state
    logits = hidden @ ours.get_output_embeddings().weight.T
    from_embeddings = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten())
    assert_same_loss(from_embeddings, ours(input_ids, labels=input_ids).loss)


@pytest.mark.parametrize("pad_to_multiple_of", [None, 64])
def test_resize_token_embeddings_then_save_and_reload_as_gpt2(tmp_path, pad_to_multiple_of):
    torch.manual_seed(8)
    ours, reference = pair("sdpa", make_vocab_size_divisible_by=64)
    sizes = {}
    for label, model in (("ours", ours), ("gpt2", reference)):
        torch.manual_seed(9)  # the new rows are drawn around the old rows' mean
        model.resize_token_embeddings(50258, pad_to_multiple_of=pad_to_multiple_of)
        rows = model.get_input_embeddings().weight.shape[0]
        sizes[label] = (rows, model.config.vocab_size, model.get_output_embeddings().weight.shape[0])
        model.save_pretrained(tmp_path / label)
    assert sizes["ours"] == sizes["gpt2"] == ((50304,) * 3 if pad_to_multiple_of else (50258,) * 3)
    new_rows = slice(50257, None)
    assert torch.equal(ours.transformer.wte.weight[new_rows], reference.transformer.wte.weight[new_rows])
    mean = ours.transformer.wte.weight[:50257].mean(0)
    assert (ours.transformer.wte.weight[new_rows].mean(0) - mean).abs().max() < 0.05  # mean-initialised
    reloaded = GPTForCausalLM.from_pretrained(tmp_path / "ours")
    input_ids = torch.randint(0, 50258, (1, 10))
    mine, theirs = both(reloaded, GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2"), input_ids=input_ids)
    assert_same(mine.logits, theirs.logits)


class _ScaledHead(torch.nn.Module):
    """A replaced LM head: what PEFT or a quantizer puts in the model's place."""

    def __init__(self, head):
        super().__init__()
        self.head, self.scale = head, torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, hidden):
        return self.head(hidden) * self.scale


@pytest.mark.parametrize("loss_chunk_size", [0, 8])
def test_a_replaced_or_hooked_lm_head_is_honoured_in_training(loss_chunk_size):
    """The training loss goes through the model's lm_head module whenever it is not the model's own plain Linear:
    the same loss as in eval mode and as GPT-2 with the same head, and a gradient for the head's parameters."""
    torch.manual_seed(10)
    ours, reference = pair("sdpa", make_vocab_size_divisible_by=64)
    ours.config.loss_chunk_size = loss_chunk_size
    input_ids = torch.randint(0, 50257, (2, 12))
    for model in (ours, reference):
        model.lm_head = _ScaledHead(model.lm_head)
    losses = {}
    for mode in ("eval", "train"):
        ours.train(mode == "train"), reference.train(mode == "train")
        losses[mode] = ours(input_ids, labels=input_ids).loss
        assert_same_loss(losses[mode], reference(input_ids, labels=input_ids).loss)
    losses["train"].backward()
    assert ours.lm_head.scale.grad is not None and ours.lm_head.scale.grad.abs() > 0
    ours.lm_head = ours.lm_head.head  # the plain head again, now with a forward hook
    calls = []
    ours.lm_head.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    ours(input_ids, labels=input_ids)
    assert calls == [(2, 12, 50257)]


# -- training -----------------------------------------------------------------------------------------------------

def test_gradient_checkpointing_gives_gpt2s_gradients():
    torch.manual_seed(11)
    ours, reference = pair("sdpa")
    input_ids = torch.randint(0, 50257, (2, 16))
    gradients = {}
    for label, model in (("ours", ours), ("gpt2", reference)):
        model.train()
        model.activation_checkpointing_enable()
        model(input_ids, labels=input_ids).loss.backward()
        gradients[label] = model.transformer.h[0].mlp.c_fc.weight.grad
    assert_same(gradients["ours"], gradients["gpt2"].T, atol=1e-6)  # Linear (out, in) vs Conv1D (in, out)


# -- generate -----------------------------------------------------------------------------------------------------

def _left_padded_prompts():
    tokenizer = gpt2_tokenizer()
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
    return tokenizer(["To be, or not to be", "Friends, Romans, countrymen, lend me your ears"], return_tensors="pt",
                     padding=True)


GENERATE_CASES = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9),
    "beams": dict(do_sample=False, num_beams=3),
    "static-cache": dict(do_sample=False, cache_implementation="static"),
    "no-cache": dict(do_sample=False, use_cache=False),
}


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("case", list(GENERATE_CASES))
def test_generate_equals_gpt2(implementation, case):
    """Left-padded batched prompts, the scores included; sampling from the same seed."""
    ours, reference = pair(implementation, seed=12)
    prompts = _left_padded_prompts()
    outputs = []
    for model in (ours, reference):
        torch.manual_seed(13)
        outputs.append(model.generate(**prompts, max_new_tokens=8, pad_token_id=50256, output_scores=True,
                                      return_dict_in_generate=True, **GENERATE_CASES[case]))
    mine, theirs = outputs
    assert torch.equal(mine.sequences, theirs.sequences)
    assert len(mine.scores) == len(theirs.scores) == 8
    for a, b in zip(mine.scores, theirs.scores):
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite)
        assert_same(a[finite], b[finite], atol=1e-4)  # sums of log-probabilities in beams: measured 1.9e-6


def test_assisted_generation_equals_gpt2():
    ours, reference = pair("sdpa", seed=14)
    assistant, reference_assistant = pair("sdpa", seed=15, n_layer=1)
    prompt = torch.randint(0, 50257, (1, 6))
    mine = ours.generate(prompt, assistant_model=assistant, max_new_tokens=10, do_sample=False, pad_token_id=50256)
    theirs = reference.generate(prompt, assistant_model=reference_assistant, max_new_tokens=10, do_sample=False,
                                pad_token_id=50256)
    assert torch.equal(mine, theirs)
    assert torch.equal(mine, ours.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=50256))


# -- loading and export -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("load", ["bfloat16", "device_map-auto"])
def test_loading_options_equal_gpt2s(tmp_path, load):
    ours, reference = pair("sdpa", seed=16)
    ours.save_pretrained(tmp_path / "ours")
    reference.save_pretrained(tmp_path / "gpt2")
    kwargs = {"dtype": torch.bfloat16} if load == "bfloat16" else {"device_map": "auto"}
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", **kwargs)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2", **kwargs)
    assert isinstance(ours, GPTForCausalLM)
    assert {p.dtype for p in ours.parameters()} == {p.dtype for p in reference.parameters()}
    input_ids = torch.randint(0, 50257, (2, 12))
    mine, theirs = both(ours, reference, input_ids=input_ids)
    # bf16: two kernels round each product to 8 bits of mantissa in their own order (measured 5.9e-3)
    assert_same(mine.logits.float(), theirs.logits.float(), atol=ATOL if load != "bfloat16" else 0.05)


def test_torch_export_runs_as_eager():
    ours, reference = pair("sdpa", seed=17)
    input_ids = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        exported = torch.export.export(ours, (), {"input_ids": input_ids, "use_cache": False})
        exported_logits = exported.module()(input_ids=input_ids, use_cache=False).logits
        assert_same(exported_logits, reference(input_ids).logits)


def test_errors_for_bad_arguments_are_raised_as_gpt2s():
    ours, reference = pair("sdpa")
    input_ids = torch.randint(0, 50257, (1, 4))
    for model in (ours, reference):
        with pytest.raises(ValueError):
            model(input_ids=input_ids, inputs_embeds=model.transformer.wte(input_ids))
        with pytest.raises(ValueError):
            model()
