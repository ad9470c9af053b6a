"""OpenAI GPT-2 weights in and out (recipe.convert), with a random tiny GPT2LMHeadModel standing in for OpenAI's."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, GPT2LMHeadModel

from recipe import GPTForCausalLM
from recipe.errors import CheckpointError
from recipe.convert import from_openai, load_model, load_openai_gpt2, main, to_openai
from recipe.sources import padded_embedding_rows


def _logits(model, input_ids):
    with torch.no_grad():
        return model.eval()(input_ids).logits


def test_from_openai_then_to_openai_reproduces_the_original_logits(openai_gpt2_dir, tmp_path):
    original = GPT2LMHeadModel.from_pretrained(openai_gpt2_dir)
    input_ids = torch.randint(0, 50257, (2, 24))

    assert main(["from-openai", str(openai_gpt2_dir), str(tmp_path / "recipe")]) == 0
    converted = GPTForCausalLM.from_pretrained(tmp_path / "recipe")
    assert (_logits(converted, input_ids) - _logits(original, input_ids)).abs().max().item() <= 1e-5
    assert AutoTokenizer.from_pretrained(tmp_path / "recipe")("To be")["input_ids"] == [2514, 307]

    assert main(["to-openai", str(tmp_path / "recipe"), str(tmp_path / "openai")]) == 0
    exported_config = json.loads((tmp_path / "openai" / "config.json").read_text())
    assert exported_config["model_type"] == "gpt2" and "auto_map" not in exported_config
    exported = GPT2LMHeadModel.from_pretrained(tmp_path / "openai")
    assert (_logits(exported, input_ids) - _logits(original, input_ids)).abs().max().item() <= 1e-5
    assert (tmp_path / "openai" / "tokenizer.json").is_file()


def test_training_padding_converts_openais_weights_exactly(openai_gpt2_dir, tmp_path):
    """make_vocab_size_divisible_by pads the training matmul only: the converted checkpoint holds OpenAI's tensors as
    they are (transposed back by to-openai, bit for bit) and records the padding for its later runs."""
    from_openai(openai_gpt2_dir, tmp_path / "padded", make_vocab_size_divisible_by=64)
    padded = GPTForCausalLM.from_pretrained(tmp_path / "padded")
    assert padded.transformer.wte.weight.shape[0] == padded.config.vocab_size == 50257
    assert padded.config.padded_vocab_size == 50304
    to_openai(tmp_path / "padded", tmp_path / "openai")
    exported = load_file(tmp_path / "openai" / "model.safetensors")
    original = load_file(openai_gpt2_dir / "model.safetensors")
    assert set(exported) == set(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name


def test_a_checkpoint_with_the_earlier_padded_rows_loads_without_them(openai_gpt2_dir, tmp_path):
    """Checkpoints saved before the embeddings had exactly vocab_size rows carry 47 padding rows (of 50,304): the
    recipe's loader drops them, which no token ever read, and gives the same logits."""
    from_openai(openai_gpt2_dir, tmp_path / "today", make_vocab_size_divisible_by=64)
    state = load_file(tmp_path / "today" / "model.safetensors")
    state["transformer.wte.weight"] = torch.cat([state["transformer.wte.weight"], torch.randn(47, 32)])
    (tmp_path / "earlier").mkdir()
    save_file(state, tmp_path / "earlier" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "earlier" / "config.json").write_text((tmp_path / "today" / "config.json").read_text())
    assert padded_embedding_rows(tmp_path / "earlier") == 47 and padded_embedding_rows(tmp_path / "today") == 0
    earlier = load_model(tmp_path / "earlier")
    assert earlier.transformer.wte.weight.shape[0] == 50257 and earlier.lm_head.weight is earlier.transformer.wte.weight
    input_ids = torch.randint(0, 50257, (2, 24))
    assert torch.equal(_logits(earlier, input_ids), _logits(load_model(tmp_path / "today"), input_ids))


def test_not_a_gpt2_checkpoint_is_named(tmp_path, openai_gpt2_dir):
    from_openai(openai_gpt2_dir, tmp_path / "recipe")
    with pytest.raises(CheckpointError, match="model_type='recipe_gpt', not 'gpt2'"):
        load_openai_gpt2(tmp_path / "recipe")
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_openai_gpt2(tmp_path)


def test_missing_weights_file_is_named(tmp_path, openai_gpt2_dir):
    (tmp_path / "config.json").write_text((openai_gpt2_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        load_openai_gpt2(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path, openai_gpt2_dir):
    state = load_file(openai_gpt2_dir / "model.safetensors")
    state["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(32, 100)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((openai_gpt2_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"'transformer.h.1.mlp.c_fc.weight' has shape \(100, 32\)"):
        load_openai_gpt2(tmp_path)


def test_truncated_weights_file_is_named(tmp_path, openai_gpt2_dir):
    data = (openai_gpt2_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "config.json").write_text((openai_gpt2_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        load_openai_gpt2(tmp_path)


def test_cli_reports_errors_in_one_line_and_writes_nothing(tmp_path, capsys):
    assert main(["from-openai", str(tmp_path), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_overwritten_by_default(tmp_path, openai_gpt2_dir):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists"):
        from_openai(openai_gpt2_dir, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    from_openai(openai_gpt2_dir, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists()
