"""recipe.evaluate: the HellaSwag scorer against a hand computation, batching and padding, perplexity, the CLI."""

import io
import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch
from datasets import Dataset

import recipe.scoring as scoring_module
from helpers import REPO_ROOT, scene_texts
from recipe import GPTConfig, GPTForCausalLM
from recipe.convert import from_openai
from recipe.data import main as data_main
from recipe.errors import DataError
from recipe.evaluate import main
from recipe.card import model_card
from recipe.scoring import evaluate_perplexity, hellaswag_losses, read_hellaswag, score_hellaswag
from recipe.tokenization import gpt2_tokenizer, token_byte_counts, train_bpe_tokenizer

EXAMPLES = [
    {"ctx": "A man is sitting on a roof. he", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."]},
    {"ctx": "The cat", "label": 0,
     "endings": ["sat.", "ran away quickly from the dog.", "is", "slept on the warm mat all day long"]},
    {"ctx": "To be, or not to be, that is the question: whether", "label": 2,
     "endings": ["tis nobler", "a", "in the mind to suffer", "the slings and arrows of outrageous fortune"]},
    {"ctx": "Friends", "label": 1, "endings": [", Romans", ", countrymen, lend me your ears", "!", "of mine"]},
]


def _write_jsonl(path, lines):
    path.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def recipe_checkpoint(openai_gpt2_dir, tmp_path_factory):
    return from_openai(openai_gpt2_dir, tmp_path_factory.mktemp("evaluate") / "recipe")


def _random_model(seed=0):
    torch.manual_seed(seed)
    return GPTForCausalLM(GPTConfig(n_layer=2, n_embd=32, n_head=4, n_positions=64)).eval()


def test_scorer_agrees_with_a_hand_computed_example():
    # A real GPT whose logits ignore the input: with the final LayerNorm's weight at 0 every hidden state is
    # ln_f.bias = e_0, so every position's logits are column 0 of the (tied) token embedding, which we choose:
    # 4 for " the", 2 for ".", 0 for the other 50,255 tokens. A token's loss is then log Z minus its logit.
    tokenizer = gpt2_tokenizer()
    the, dot = tokenizer.convert_tokens_to_ids(["Ġthe", "."])
    model = GPTForCausalLM(GPTConfig(n_layer=1, n_embd=8, n_head=2, n_positions=64)).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(torch.eye(8)[0])
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[the, 0] = 4.0
        model.transformer.wte.weight[dot, 0] = 2.0
    log_z = math.log(50255 + math.exp(4) + math.exp(2))

    # The context ends in a cheap " the": scoring it by mistake, or missing an ending's last token, shows up.
    example = {"ctx": "I saw the", "endings": ["cat.", "the the the the.", "dog ran.", "the cat"], "label": 1}
    assert tokenizer.tokenize("I saw the") == ["I", "Ġsaw", "Ġthe"]
    assert [tokenizer.tokenize(" " + ending) for ending in example["endings"]] == [
        ["Ġcat", "."], ["Ġthe"] * 4 + ["."], ["Ġdog", "Ġran", "."], ["Ġthe", "Ġcat"],
    ]
    by_hand = [2 * log_z - 2, 5 * log_z - 4 * 4 - 2, 3 * log_z - 2, 2 * log_z - 4]

    loss_sums, token_counts = hellaswag_losses(model, tokenizer, [example], batch_size=1)
    assert token_counts.tolist() == [[2, 5, 3, 2]]
    # float32's log-sum-exp adds 50,255 equal terms, and its rounding grows with the terms each vector lane adds:
    # measured 3.3e-6 of these sums with AVX-512's 16 lanes, 6.3e-6 with AVX2's 8 (1 or 2 threads alike), ~5e-5
    # expected of a scalar sum. The mistakes this test is for (a token too many or too few) move a sum by >= 2 nats.
    torch.testing.assert_close(loss_sums[0], torch.tensor(by_hand), rtol=1e-4, atol=0)
    # Lowest sum: "the cat" (ending 3). Lowest mean: "the the the the." (ending 1), the label.
    assert score_hellaswag(model, tokenizer, [example]) == {"n": 1, "acc": 0.0, "acc_norm": 1.0}


def test_padding_and_batching_do_not_change_the_scores():
    model = _random_model()
    tokenizer = gpt2_tokenizer()
    unpadded = []  # each ending alone, no padding, no batch
    with torch.no_grad():
        for example in EXAMPLES:
            context = tokenizer.encode(example["ctx"])
            row = []
            for ending in example["endings"]:
                ending_tokens = tokenizer.encode(" " + ending)
                tokens = torch.tensor([context + ending_tokens])
                logits = model(tokens).logits[0, -len(ending_tokens) - 1 : -1]
                row.append(torch.nn.functional.cross_entropy(logits, tokens[0, -len(ending_tokens) :], reduction="sum"))
            unpadded.append(torch.stack(row))
    unpadded = torch.stack(unpadded)

    for batch_size in (1, 3, len(EXAMPLES)):
        loss_sums, _ = hellaswag_losses(model, tokenizer, EXAMPLES, batch_size)
        # Relative: padding and batch sizes change the matmul shapes, so float32 rounding, by at most 1.2e-7 of a
        # sum (2 ulps; 1 ulp of the largest, 119 nats) with AVX-512 and AVX2, 1 or 2 threads alike.
        torch.testing.assert_close(loss_sums, unpadded, rtol=1e-6, atol=0)
    model.train()
    assert score_hellaswag(model, tokenizer, EXAMPLES, batch_size=1) == score_hellaswag(model, tokenizer, EXAMPLES, 3)
    assert model.training, "scoring must leave a training model in training mode"


@pytest.mark.parametrize(
    "bad_line",
    [
        "{not json\n",
        {"ctx": "x", "endings": ["a", "b", "c"], "label": 0},
        {"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 4},
        {"endings": ["a", "b", "c", "d"], "label": 0},
    ],
)
def test_a_malformed_line_is_named_by_number(tmp_path, bad_line):
    path = _write_jsonl(tmp_path / "hellaswag.jsonl", [EXAMPLES[0], "\n", bad_line])
    with pytest.raises(DataError, match=r"hellaswag.jsonl, line 3: "):
        read_hellaswag(path)
    assert read_hellaswag(path, limit=1) == [EXAMPLES[0]]  # stops before the bad line


def test_cli_prints_json_last_and_saves_it_next_to_the_checkpoint(recipe_checkpoint, tmp_path, capsys):
    path = _write_jsonl(tmp_path / "hellaswag.jsonl", EXAMPLES)
    assert main([str(recipe_checkpoint), "--task", "hellaswag", "--data", str(path), "--limit", "3"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = GPTForCausalLM.from_pretrained(recipe_checkpoint)
    assert result == {"task": "hellaswag", **score_hellaswag(model, gpt2_tokenizer(), EXAMPLES[:3])}
    assert json.loads((recipe_checkpoint / "eval_hellaswag.json").read_text()) == result


def test_cli_bad_input_is_one_line(recipe_checkpoint, tmp_path, capsys):
    good = _write_jsonl(tmp_path / "good.jsonl", EXAMPLES)
    bad = _write_jsonl(tmp_path / "bad.jsonl", [EXAMPLES[0], {"ctx": "x"}])
    for argv, message in [
        ([str(recipe_checkpoint), "--data", str(bad)], "bad.jsonl, line 2: "),
        ([str(tmp_path), "--data", str(good)], "has no config.json"),
        ([str(recipe_checkpoint), "--data", str(good), "--limit", "0"], "--limit=0 must be at least 1"),
    ]:
        assert main([*argv, "--task", "hellaswag"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("error: ") and message in captured.err and captured.err.count("\n") == 1


def test_without_data_the_official_file_is_downloaded_once_and_offline_fails_fast(
    recipe_checkpoint, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(scoring_module, "HELLASWAG_CACHE", tmp_path / "cache" / "hellaswag_val.jsonl")
    jsonl = "".join(json.dumps(example) + "\n" for example in EXAMPLES).encode()
    requests = []

    def offline(url, timeout):
        requests.append((url, timeout))
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main([str(recipe_checkpoint), "--task", "hellaswag"]) == 2
    error = capsys.readouterr().err
    assert "could not download HellaSwag" in error and "--data FILE.jsonl" in error and error.count("\n") == 1
    assert requests == [(scoring_module.HELLASWAG_URL, scoring_module.DOWNLOAD_TIMEOUT_S)]

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: requests.append(url) or io.BytesIO(jsonl))
    for _ in range(2):
        assert main([str(recipe_checkpoint), "--task", "hellaswag"]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["n"] == len(EXAMPLES)
    assert len(requests) == 2, "the second run reads the cached file"
    assert (tmp_path / "cache" / "hellaswag_val.jsonl").read_bytes() == jsonl


def _blocks(count, length=16, seed=0, next_token=False):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50257, (count, length + 1), generator=generator)
    columns = {"input_ids": ids[:, :length].tolist()}
    if next_token:
        columns["next_token"] = ids[:, length].tolist()
    return Dataset.from_dict(columns)


@pytest.mark.parametrize("next_token", [False, True], ids=["blocks", "validation-blocks"])
def test_perplexity_is_the_models_next_token_loss_whatever_the_batch(next_token):
    model = _random_model(seed=1)
    blocks = _blocks(7, next_token=next_token)
    input_ids = torch.tensor(blocks["input_ids"])
    with torch.no_grad():
        logits = model(input_ids).logits  # (7, 16, V)
    # Written out: position t predicts token t + 1; the last position the block's next token, when it has one.
    targets = input_ids[:, 1:] if not next_token else torch.cat([input_ids[:, 1:], torch.tensor(blocks["next_token"])[:, None]], 1)
    losses = torch.nn.functional.cross_entropy(logits[:, : targets.shape[1]].flatten(0, 1), targets.flatten(), reduction="none")
    for batch_size in (1, 3, 7):
        result = evaluate_perplexity(model, blocks, token_byte_counts(gpt2_tokenizer()), batch_size)
        assert result["n"] == 7
        assert result["loss"] == pytest.approx(losses.mean().item(), rel=1e-6)  # float32 logits, float64 sums
        assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))


@pytest.fixture(scope="module")
def trained_tokenizer():
    return train_bpe_tokenizer([scene_texts()], vocab_size=300)


@pytest.mark.parametrize("tokenizer_kind", ["gpt2", "trained"])
def test_bits_per_byte_is_the_text_loss_in_bits_over_the_bytes_it_decodes_to(tokenizer_kind, trained_tokenizer):
    """Against a direct computation: every target token's loss, and the bytes of the whole decoded text (multi-byte
    characters included, whose bytes are spread over several byte-level tokens). The separators are not text."""
    tokenizer = gpt2_tokenizer() if tokenizer_kind == "gpt2" else trained_tokenizer
    text = "".join(scene_texts()[:3]) + "Café naïve — “quoted” 日本語 ✓"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids += tokenizer("To be, or not to be. " * 12, add_special_tokens=False)["input_ids"]  # > a block: cut in ASCII
    length = 32
    count = (len(ids) - 1) // length
    blocks = Dataset.from_dict({"input_ids": [ids[i * length : (i + 1) * length] for i in range(count)],
                                "next_token": [ids[(i + 1) * length] for i in range(count)]})
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=len(tokenizer))).eval()
    with torch.no_grad():
        logits = model(torch.tensor(ids[: count * length]).view(count, length)).logits  # (count, length, V)
    targets = torch.tensor(ids[1 : count * length + 1])
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets, reduction="none").double()
    is_text = targets != tokenizer.eos_token_id
    text_bytes = len(tokenizer.decode(targets[is_text].tolist()).encode("utf-8"))
    assert text_bytes < is_text.sum() * 4  # (several bytes a token: the measure is not tokens)

    result = evaluate_perplexity(model, blocks, token_byte_counts(tokenizer), batch_size=3)
    assert result["bpb"] == pytest.approx(losses[is_text].sum().item() / math.log(2) / text_bytes, rel=1e-9)
    assert result["loss"] == pytest.approx(losses.mean().item(), rel=1e-9)


def test_perplexity_cli_evaluates_the_validation_split_of_the_config(recipe_checkpoint, openai_gpt2_dir, tmp_path,
                                                                     capsys):
    plays = REPO_ROOT / "data" / "shakespeare"
    settings = {"train_files": [str(plays / "macbeth_gut.txt")], "validation_files": [str(plays / "tempest_gut.txt")],
                "block_size": 32, "max_eval_samples": 6, "output_dir": str(tmp_path / "out")}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(settings))
    assert main([str(recipe_checkpoint), "--task", "perplexity", "--config", str(config), "--batch_size", "2"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])

    # The same blocks as training's evaluation: The Tempest's first 6 x 32 tokens (each document + <|endoftext|>),
    # each with the token after it.
    tokenizer = gpt2_tokenizer()
    tempest = tokenizer((plays / "tempest_gut.txt").read_text())["input_ids"]
    blocks = [{"input_ids": torch.tensor(tempest[start : start + 32]), "next_token": torch.tensor(tempest[start + 32])}
              for start in range(0, 6 * 32, 32)]
    model = GPTForCausalLM.from_pretrained(recipe_checkpoint)
    assert result == {"task": "perplexity", **evaluate_perplexity(model, blocks, token_byte_counts(tokenizer), 2)}
    assert result["n"] == 6 and 0 < result["bpb"] < result["loss"]
    assert json.loads((recipe_checkpoint / "eval_perplexity.json").read_text()) == result
    # Not a checkpoint of the config's run (output_dir): the result is also the run's baseline.
    assert json.loads((tmp_path / "out" / "baseline_perplexity.json").read_text())["model"] == str(recipe_checkpoint)

    # The same split prepared into uint16 blocks (recipe.prepared): the same blocks, the same result.
    config.write_text(json.dumps({**settings, "prepared_dir": str(tmp_path / "prepared")}))
    assert data_main([str(config)]) == 0
    capsys.readouterr()
    assert main([str(recipe_checkpoint), "--task", "perplexity", "--config", str(config), "--batch_size", "2"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == result

    # OpenAI's GPT-2 (a local directory of its layout stands in for the Hub id) as the run's baseline.
    assert main([str(openai_gpt2_dir), "--task", "perplexity", "--config", str(config)]) == 0
    printed = capsys.readouterr()
    baseline = json.loads((tmp_path / "out" / "baseline_perplexity.json").read_text())
    assert baseline == {"model": str(openai_gpt2_dir), "same_tokenizer": True,
                        **json.loads(printed.out.splitlines()[-1])}
    assert "saved as the baseline of" in printed.err
    card = model_card(tmp_path / "out")
    assert f"baseline: validation bits per byte of `{openai_gpt2_dir}`" in card and f"{baseline['bpb']:.4f}" in card

    assert main([str(recipe_checkpoint), "--task", "perplexity"]) == 2
    assert "needs --config" in capsys.readouterr().err


def test_the_baseline_of_a_run_with_its_own_bpe_tokenizes_the_validation_documents_with_gpt2s(
        openai_gpt2_dir, trained_tokenizer, tmp_path, capsys):
    """A run that trained its own BPE: GPT-2 is scored on the same documents in its own tokens; bits per byte
    compare, losses per token do not (and the card says only the first)."""
    plays = REPO_ROOT / "data" / "shakespeare"
    settings = {"train_files": [str(plays / "macbeth_gut.txt")], "validation_files": [str(plays / "tempest_gut.txt")],
                "block_size": 32, "max_eval_samples": 4, "train_tokenizer_vocab_size": 300,
                "output_dir": str(tmp_path / "out")}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(settings))
    assert main([str(openai_gpt2_dir), "--task", "perplexity", "--config", str(config)]) == 0
    baseline = json.loads((tmp_path / "out" / "baseline_perplexity.json").read_text())
    assert baseline["same_tokenizer"] is False and baseline["n"] == 4
    tempest = gpt2_tokenizer()((plays / "tempest_gut.txt").read_text())["input_ids"]
    blocks = [{"input_ids": torch.tensor(tempest[start : start + 32]), "next_token": torch.tensor(tempest[start + 32])}
              for start in range(0, 4 * 32, 32)]
    model = GPTForCausalLM.from_pretrained(from_openai(openai_gpt2_dir, tmp_path / "converted"))
    assert baseline["bpb"] == pytest.approx(evaluate_perplexity(model, blocks, token_byte_counts(gpt2_tokenizer()))["bpb"])
    card = model_card(tmp_path / "out")
    assert "baseline: validation bits per byte" in card and "baseline: validation loss" not in card


@pytest.mark.slow
def test_two_processes_split_the_examples_and_agree_with_one(recipe_checkpoint, tmp_path):
    # torchrun sets the launch environment accelerate reads; on CPU, ACCELERATE_USE_CPU selects the gloo backend.
    path = _write_jsonl(tmp_path / "hellaswag.jsonl", EXAMPLES * 2 + EXAMPLES[:1])  # 9: an uneven split
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    finished = subprocess.run(
        [*launch, "-m", "recipe.evaluate", str(recipe_checkpoint), "--task", "hellaswag", "--data", str(path),
         "--batch_size", "2"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    printed = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    model = GPTForCausalLM.from_pretrained(recipe_checkpoint)
    alone = score_hellaswag(model, gpt2_tokenizer(), read_hellaswag(path), batch_size=2)
    assert [json.loads(line) for line in printed] == [{"task": "hellaswag", **alone}]  # printed once, by rank 0
