"""The tools people use on a GPT-2 checkpoint, on a checkpoint the recipe's own command trained, each beside the
same weights exported to transformers' GPT2LMHeadModel (`recipe.convert to-openai`): PEFT (LoRA on the blocks and
on the LM head, prompt tuning, prefix tuning), TRL's SFTTrainer (plain, packed, padding-free) and its fused LM-head
loss; and what serving and conversion tools read from a checkpoint.

Tolerances: the two models compute the same fp32 arithmetic in another order (nn.Linear against Conv1D). Measured
here (2026-12-04, AMD EPYC, torch 2.13): logits at most 7.2e-7 apart (1e-5 is 14x that), losses and gradient
norms equal or within 4e-7 relative (5e-6 is 12x). Trained a few steps by AdamW, whose normalisation amplifies that
rounding, the logged losses part by up to 1.9e-5 relative (2e-4 is 10x).
"""

import json
import math

import peft
import pytest
import torch
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

from helpers import scene_texts, tiny_config
from recipe import GPTForCausalLM, GPTModel
from recipe.convert import to_openai
from recipe.train import main as train


ATOL, LOSS_RTOL, TRAINED_RTOL = 1e-5, 5e-6, 2e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """A checkpoint of `python recipe/train.py` (GPT-2's BPE, the default vocabulary padding to 64, 2 layers x 64,
    n_positions 64) and its to-openai export: the same weights as a stock GPT2LMHeadModel."""
    root = tmp_path_factory.mktemp("clients")
    config = tiny_config(root, max_steps=8, warmup_steps=2, eval_strategy="no", save_strategy="no",
                         sample_max_new_tokens=0, logging_steps=4)
    assert train([str(config)]) == 0
    run = root / "run"
    assert json.loads((run / "config.json").read_text())["make_vocab_size_divisible_by"] == 64
    to_openai(run, root / "export")
    return {"recipe": run, "export": root / "export"}


def load(checkpoints, name: str, **kwargs):
    model = AutoModelForCausalLM.from_pretrained(checkpoints[name], trust_remote_code=True, **kwargs)
    assert isinstance(model, GPTForCausalLM if name == "recipe" else GPT2LMHeadModel)
    return model


def both(checkpoints, **kwargs) -> tuple:
    return load(checkpoints, "recipe", **kwargs), load(checkpoints, "export", **kwargs)


def batch(tokenizer, rows: int = 2, length: int = 24) -> dict:
    texts = [text[:400] for text in scene_texts()[10 : 10 + rows]]
    encoded = tokenizer(texts, return_tensors="pt", truncation=True, max_length=length, padding="max_length")
    return {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask,
            "labels": encoded.input_ids.masked_fill(encoded.attention_mask == 0, -100)}


@pytest.fixture(scope="module")
def tokenizer(checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["recipe"], trust_remote_code=True)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, atol: float = ATOL):
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= atol


def assert_same_loss(ours, theirs, rtol: float = LOSS_RTOL):
    ours, theirs = float(ours), float(theirs)
    assert abs(ours - theirs) <= rtol * abs(theirs), (ours, theirs)


# -- PEFT ---------------------------------------------------------------------------------------------------------

def lora(model, target_modules: list[str], seed: int = 0):
    torch.manual_seed(seed)  # the adapters' A matrices: the same draws for both models (same shapes, same order)
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                             target_modules=target_modules, fan_in_fan_out=isinstance(model, GPT2LMHeadModel))
    return peft.get_peft_model(model, config)


def one_lora_step(model, inputs: dict) -> dict:
    """One SGD step on the adapter: (its gradients, by name, before the step)."""
    model.train()
    loss = model(**inputs).loss
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    model.zero_grad()
    return gradients


def test_peft_lora_on_the_blocks_trains_saves_reloads_and_merges_as_on_gpt2(checkpoints, tokenizer, tmp_path):
    inputs = batch(tokenizer)
    logits = {}
    for name, model in zip(("recipe", "export"), both(checkpoints)):
        model = lora(model, ["c_attn", "c_proj", "c_fc"])
        gradients = one_lora_step(model, inputs)
        assert all(g.abs().sum() > 0 for key, g in gradients.items() if "lora_B" in key)
        model.eval()
        with torch.no_grad():
            logits[name] = model(input_ids=inputs["input_ids"]).logits
        model.save_pretrained(tmp_path / name)
        reloaded = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / name, trust_remote_code=True).eval()
        with torch.no_grad():
            assert_close(reloaded(input_ids=inputs["input_ids"]).logits, logits[name])
            merged = reloaded.merge_and_unload()
            assert type(merged) is (GPTForCausalLM if name == "recipe" else GPT2LMHeadModel)
            assert_close(merged(input_ids=inputs["input_ids"]).logits, logits[name])
    assert_close(logits["recipe"], logits["export"])
    assert not torch.equal(logits["recipe"], load(checkpoints, "recipe")(input_ids=inputs["input_ids"]).logits)


def test_peft_lora_on_the_lm_head_gets_gpt2s_gradient_and_its_train_loss_is_its_eval_loss(checkpoints, tokenizer):
    """The training loss goes through the adapted head (a LoRA layer is not the model's own Linear): the adapter
    gets GPT-2's gradient, and a step's loss is the same in train and eval mode (no dropout here)."""
    inputs = batch(tokenizer)
    norms, losses = {}, {}
    for name, model in zip(("recipe", "export"), both(checkpoints)):
        model = lora(model, ["lm_head"])
        one_lora_step(model, inputs)  # B is zero at first: after a step the adapter changes the logits
        model.train()
        train_loss = model(**inputs).loss
        train_loss.backward()
        norms[name] = math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters() if p.grad is not None))
        model.eval()
        with torch.no_grad():
            eval_loss = model(**inputs).loss
        assert_same_loss(train_loss, eval_loss)
        losses[name] = eval_loss
    assert norms["recipe"] > 0.1
    assert_same_loss(norms["recipe"], norms["export"])
    assert_same_loss(losses["recipe"], losses["export"])


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_peft_prompt_and_prefix_tuning_give_gpt2s_loss_and_gradient(checkpoints, tokenizer, method):
    """Prompt tuning finds the word embeddings by their vocab_size rows; prefix tuning hands its prefix to the
    model as past_key_values, the name transformers still accepts."""
    inputs = batch(tokenizer)
    results = {}
    for name, model in zip(("recipe", "export"), both(checkpoints)):
        torch.manual_seed(1)
        config = (peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4) if method == "prompt" else
                  peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
        model = peft.get_peft_model(model, config)
        model.train()
        loss = model(**inputs).loss
        loss.backward()
        gradient = next(p.grad for p in model.parameters() if p.requires_grad)
        results[name] = (loss, gradient)
    assert_same_loss(results["recipe"][0], results["export"][0])
    assert_close(results["recipe"][1], results["export"][1], atol=1e-6)
    assert results["recipe"][1].abs().sum() > 0


# -- TRL ----------------------------------------------------------------------------------------------------------

def sft(checkpoints, name: str, tokenizer, tmp_path, **settings) -> tuple[list[float], int]:
    """SFTTrainer for a few steps on scenes of the plays, each under 64 tokens: the loss of each step, and the
    length of the first batch's rows."""
    texts = [text[:160] for text in scene_texts()[:24]]
    config = trl.SFTConfig(output_dir=str(tmp_path / name), max_steps=3, per_device_train_batch_size=4,
                           learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no", seed=0,
                           use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, **settings)
    model = load(checkpoints, name)
    if name == "export":
        # By design, not ours to match: Trainer derives the loss type from the class name, and ...LMHeadModel gives
        # it none, so it divides GPT-2's step loss by every label, position 0 of each row included (a loss 4/256
        # too low on the first batch here); ours (...ForCausalLM) by the predicted ones. Told what GPT-2's loss
        # is, Trainer counts for both alike.
        model.loss_type = "ForCausalLM"
    trainer = trl.SFTTrainer(model=model, args=config, processing_class=tokenizer,
                             train_dataset=Dataset.from_dict({"text": texts}))
    row_length = next(iter(trainer.get_train_dataloader()))["input_ids"].shape[-1]
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], row_length


@pytest.mark.parametrize("settings", [{"max_length": 64},
                                      {"max_length": 160, "packing": True},
                                      {"max_length": None, "padding_free": True}],
                         ids=["plain", "packed-rows-longer-than-n_positions", "padding-free"])
def test_trl_sft_trains_as_on_gpt2(checkpoints, tokenizer, tmp_path, settings):
    """Packed rows of 160 tokens for a context of 64: every document's positions restart at 0, so each fits."""
    ours, row_length = sft(checkpoints, "recipe", tokenizer, tmp_path, **settings)
    theirs, _ = sft(checkpoints, "export", tokenizer, tmp_path, **settings)
    assert len(ours) == len(theirs) == 3
    if settings.get("packing"):
        assert row_length > load(checkpoints, "recipe").config.n_positions
    for mine, other in zip(ours, theirs):
        assert_same_loss(mine, other, rtol=TRAINED_RTOL)
    if settings.get("padding_free"):  # the same documents padded: the same loss
        padded, _ = sft(checkpoints, "recipe", tokenizer, tmp_path, max_length=64)
        assert_same_loss(ours[0], padded[0])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_trls_fused_lm_head_loss_is_the_models_own(checkpoints, tokenizer, mode):
    """TRL computes the loss from the base model's hidden states and get_output_embeddings().weight: over the
    model's own vocabulary, exactly vocab_size rows, it is the loss the model computes."""
    inputs = batch(tokenizer)
    model = load(checkpoints, "recipe")
    own = getattr(model, mode)()(**inputs).loss
    trl.trainer.utils.add_fused_lm_head(model)
    fused = model(**inputs, fused_lm_head=True)
    tokens = fused.label_mask.sum()
    assert_same_loss(-fused.log_probs.sum() / tokens, own)


# -- what serving and conversion tools read -----------------------------------------------------------------------

def test_config_names_every_auto_class_for_serving_backends(checkpoints):
    """vLLM's and SGLang's Transformers backends load the base model through auto_map's AutoModel, and need the
    attention interface and kwargs passed down (checked by the next test)."""
    config = json.loads((checkpoints["recipe"] / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_gpt.GPTConfig", "AutoModel": "modeling_gpt.GPTModel",
                                  "AutoModelForCausalLM": "modeling_gpt.GPTForCausalLM"}
    assert isinstance(AutoModelForCausalLM.from_pretrained(checkpoints["recipe"], trust_remote_code=True),
                      GPTForCausalLM)
    assert GPTModel._supports_attention_backend
    source = (checkpoints["recipe"] / "modeling_gpt.py").read_text()
    assert "ALL_ATTENTION_FUNCTIONS.get_interface(" in source  # also what set_attn_implementation looks for


def test_an_attention_backend_receives_the_callers_kwargs_through_every_module(checkpoints):
    """A serving backend registers its own attention function and passes its metadata as forward kwargs: every
    layer's attention call gets them."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    seen = []

    def probe(module, query, key, value, attention_mask, **kwargs):
        seen.append(kwargs.get("serving_metadata"))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("recipe_probe", probe)
    AttentionMaskInterface.register("recipe_probe", sdpa_mask)
    model = load(checkpoints, "recipe")
    model.set_attn_implementation("recipe_probe")
    input_ids = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        probed = model.transformer(input_ids, serving_metadata="block-table-7").last_hidden_state
        model.set_attn_implementation("sdpa")
        assert_close(probed, model.transformer(input_ids).last_hidden_state)
    assert seen == ["block-table-7"] * model.config.n_layer


def test_the_gpt2_export_carries_what_llama_cpps_gguf_converter_reads(checkpoints):
    """llama.cpp's convert_hf_to_gguf.py takes GPT2LMHeadModel and reads n_ctx, n_embd, n_head, n_layer and
    layer_norm_epsilon from config.json; transformers no longer writes n_ctx, so the export does (the converter
    itself was run on an export by hand: benchmarks/RESULTS.md)."""
    config = json.loads((checkpoints["export"] / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert config["n_ctx"] == config["n_positions"] == 64
    assert {"n_embd", "n_head", "n_layer", "layer_norm_epsilon"} <= config.keys()
    assert (checkpoints["export"] / "tokenizer.json").is_file()
