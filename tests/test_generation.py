"""generate() through GenerationMixin and the Cache API: KV cache = no cache = transformers' GPT-2; sampling knobs."""

import torch

from recipe.tokenization import gpt2_tokenizer
from helpers import twin_models


def _greedy(model, input_ids, **kwargs):
    return model.generate(input_ids, max_new_tokens=12, do_sample=False, pad_token_id=50256, **kwargs)


def test_greedy_with_cache_equals_without_cache_and_transformers_gpt2():
    ours, reference = twin_models(seed=5)
    prompt = torch.randint(0, 50257, (1, 7))
    with_cache = _greedy(ours, prompt, use_cache=True)
    without_cache = _greedy(ours, prompt, use_cache=False)
    theirs = _greedy(reference, prompt)
    assert with_cache.shape == (1, 19)
    assert torch.equal(with_cache, without_cache)
    assert torch.equal(with_cache, theirs)


def test_static_cache_generates_what_the_dynamic_cache_does():
    ours, _ = twin_models(seed=8)
    tokenizer = gpt2_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    batch = tokenizer(["To be, or not to be", "Friends, Romans, countrymen"], return_tensors="pt", padding=True)
    dynamic = ours.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=50256)
    static = ours.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=50256,
                           cache_implementation="static")
    assert torch.equal(static, dynamic)


def test_batched_left_padded_prompts_generate_as_if_alone():
    ours, reference = twin_models(seed=6)
    tokenizer = gpt2_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    prompts = ["To be, or not to be", "Friends, Romans, countrymen, lend me your ears"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    batched = ours.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=50256)
    assert torch.equal(batched, reference.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=50256))
    for row, prompt in enumerate(prompts):
        alone = _greedy(ours, tokenizer(prompt, return_tensors="pt").input_ids, max_length=None)
        new_tokens = batched[row, batch.input_ids.shape[1] :]
        assert torch.equal(new_tokens, alone[0, -12:][:8])


def test_seeded_sampling_is_reproducible():
    ours, _ = twin_models(seed=7)
    prompt = torch.randint(0, 50257, (2, 5))
    samples = []
    for _ in range(2):
        torch.manual_seed(42)
        samples.append(ours.generate(prompt, do_sample=True, max_new_tokens=10, pad_token_id=50256))
    assert torch.equal(samples[0], samples[1])
    torch.manual_seed(43)
    assert not torch.equal(samples[0], ours.generate(prompt, do_sample=True, max_new_tokens=10, pad_token_id=50256))


def _sampling_scores(model, prompt, **sampling):
    """The processed next-token scores generate() sampled from at each step, and the raw logits there."""
    torch.manual_seed(0)
    output = model.generate(
        prompt, do_sample=True, max_new_tokens=6, pad_token_id=50256,
        output_scores=True, output_logits=True, return_dict_in_generate=True, **sampling,
    )
    return output.sequences, torch.stack(output.scores, 1), torch.stack(output.logits, 1)  # (B, steps, V)


def test_top_k_excludes_all_but_the_k_most_likely():
    ours, _ = twin_models(seed=8)
    sequences, scores, logits = _sampling_scores(ours, torch.randint(0, 50257, (2, 4)), top_k=5, top_p=1.0)
    kept = torch.isfinite(scores)
    assert torch.all(kept.sum(-1) == 5)
    assert torch.equal(kept, logits >= logits.topk(5, dim=-1).values[..., -1:])
    chosen = sequences[:, 4:]
    assert torch.all(kept.gather(-1, chosen[..., None]))


def test_top_p_keeps_the_smallest_set_reaching_p():
    ours, _ = twin_models(seed=9)
    ours.transformer.wte.weight.data *= 40  # a peaked distribution, so the nucleus is small
    top_p = 0.6
    sequences, scores, logits = _sampling_scores(ours, torch.randint(0, 50257, (2, 4)), top_p=top_p, top_k=0)
    probabilities = logits.softmax(-1)
    sorted_probabilities, order = probabilities.sort(-1, descending=True)
    mass_before = sorted_probabilities.cumsum(-1) - sorted_probabilities
    in_nucleus_sorted = mass_before < top_p  # a token is kept while the mass before it is below p
    expected = torch.zeros_like(in_nucleus_sorted).scatter(-1, order, in_nucleus_sorted)
    kept = torch.isfinite(scores)
    assert torch.equal(kept, expected)
    assert kept.sum(-1).max() < 50257
    assert torch.all(kept.gather(-1, sequences[:, 4:, None]))


def test_temperature_divides_the_logits():
    ours, _ = twin_models(seed=10)
    _, scores, logits = _sampling_scores(ours, torch.randint(0, 50257, (1, 4)), temperature=0.5, top_k=0, top_p=1.0)
    assert torch.allclose(scores, logits / 0.5, atol=1e-5)
