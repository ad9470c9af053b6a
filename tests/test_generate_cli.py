"""recipe.generate: greedy output equals transformers' GPT-2 from every checkpoint layout; cache, streaming, errors."""

import huggingface_hub
import pytest
import torch
from transformers import GPT2LMHeadModel

from recipe.convert import from_openai, to_openai
from recipe.generate import generate_text, load_model_and_tokenizer, main
from recipe.tokenization import gpt2_tokenizer

PROMPT = "To be, or not to be, that is the question:"


@pytest.fixture(scope="module")
def checkpoints(openai_gpt2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    from_openai(openai_gpt2_dir, root / "recipe")
    to_openai(root / "recipe", root / "export")
    return {"openai": openai_gpt2_dir, "recipe": root / "recipe", "export": root / "export"}


def _run(capsys, *argv):
    code = main([str(argument) for argument in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("layout", ["openai", "recipe", "export", "hub id"])
def test_greedy_generation_equals_transformers_gpt2_on_converted_weights(layout, checkpoints, monkeypatch, capsys):
    tokenizer = gpt2_tokenizer()
    reference = GPT2LMHeadModel.from_pretrained(checkpoints["openai"]).eval()
    input_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    expected = reference.generate(input_ids, max_new_tokens=12, do_sample=False, pad_token_id=50256)
    if layout == "hub id":  # the download is intercepted: it hands back the local stand-in for OpenAI's GPT-2
        monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(checkpoints["openai"]))
        source = "gpt2"
    else:
        source = checkpoints[layout]

    code, out, err = _run(capsys, source, "--prompt", PROMPT, "--temperature", 0, "--max_new_tokens", 12)
    assert code == 0, err
    assert out == tokenizer.decode(expected[0], skip_special_tokens=True) + "\n"


def test_generation_uses_the_kv_cache(checkpoints):
    model, tokenizer = load_model_and_tokenizer(checkpoints["recipe"])
    fed = []  # tokens the model embeds at each forward pass
    model.transformer.wte.register_forward_hook(lambda module, inputs, output: fed.append(inputs[0].shape[-1]))
    generate_text(model, tokenizer, PROMPT, max_new_tokens=5, temperature=0)
    assert fed == [len(tokenizer(PROMPT)["input_ids"]), 1, 1, 1, 1]  # the prompt once, then one token per step


def test_stream_prints_the_same_text(checkpoints, capsys):
    argv = [checkpoints["recipe"], "--prompt", PROMPT, "--temperature", 0, "--max_new_tokens", 8]
    _, printed_at_the_end, _ = _run(capsys, *argv)
    code, streamed, _ = _run(capsys, *argv, "--stream")
    assert code == 0
    assert streamed == printed_at_the_end


def test_seeded_sampling_is_reproducible_and_returns_each_sequence(checkpoints, capsys):
    argv = [checkpoints["recipe"], "--prompt", PROMPT, "--max_new_tokens", 8, "--num_return_sequences", 3]
    first = _run(capsys, *argv, "--seed", 1)[1]
    assert first == _run(capsys, *argv, "--seed", 1)[1]
    assert first != _run(capsys, *argv, "--seed", 2)[1]
    samples = first.strip().split("\n" + "-" * 40 + "\n")
    assert len(samples) == 3 and all(sample.startswith(PROMPT) for sample in samples)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--temperature", -1], "--temperature=-1.0 must be >= 0"),
        (["--top_p", 0], "--top_p=0.0 must be in (0, 1]"),
        (["--top_p", 1.5], "--top_p=1.5 must be in (0, 1]"),
        (["--temperature", 0, "--num_return_sequences", 2], "needs sampling"),
        (["--stream", "--num_return_sequences", 2], "--stream prints one sequence"),
        (["--prompt", "hello " * 80], "prompts are never truncated"),
        (["--prompt", " ".join(["hello"] * 60), "--max_new_tokens", 10], "lower --max_new_tokens to 4"),
    ],
)
def test_bad_options_are_one_line_errors(options, message, checkpoints, capsys):
    code, out, err = _run(capsys, checkpoints["recipe"], "--prompt", PROMPT, *options)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_directory_that_is_not_a_model_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    code, out, err = _run(capsys, tmp_path, "--prompt", PROMPT)
    assert (code, out) == (2, "")
    assert err == f"error: {tmp_path} has no config.json: not a model checkpoint\n"


def test_an_empty_prompt_samples_from_end_of_text(checkpoints):
    model, tokenizer = load_model_and_tokenizer(checkpoints["recipe"])
    (text,) = generate_text(model, tokenizer, "", max_new_tokens=6, temperature=0)
    expected = model.generate(torch.tensor([[50256]]), max_new_tokens=6, do_sample=False, pad_token_id=50256)
    assert text == tokenizer.decode(expected[0], skip_special_tokens=True)


def test_without_max_new_tokens_as_many_as_fit_are_generated(checkpoints):
    """The model's context is 64 tokens: a 60-token prompt leaves room for 4, which is what it gets by default."""
    model, tokenizer = load_model_and_tokenizer(checkpoints["recipe"])
    prompt = " ".join(["hello"] * 60)
    (text,) = generate_text(model, tokenizer, prompt, temperature=0)
    prompt_ids = tokenizer(prompt)["input_ids"]
    expected = model.generate(torch.tensor([prompt_ids]), max_new_tokens=64 - len(prompt_ids), do_sample=False,
                              pad_token_id=50256)
    assert text == tokenizer.decode(expected[0], skip_special_tokens=True)
