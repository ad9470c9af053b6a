"""Where a model comes from, and how to load it: recipe checkpoints, OpenAI's GPT-2 (Hub id or transformers
directory) and back.

`classify_source` is the one place that decides what a `model_name_or_path` is; the settings checks, training and
every loader ask it. OpenAI's GPT-2 uses transformers' `GPT2LMHeadModel` layout, whose Conv1D stores matmul weights
as (in, out) where nn.Linear stores (out, in), so the four matmul weights of each block are transposed on the way.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase
from transformers.utils import CONFIG_NAME

from .checkpoints import SAFETENSORS_INDEX_FILE, atomic_directory, check_safetensors_header, load_state_dict, weight_files
from .configuration_gpt import GPTConfig
from .errors import CheckpointError
from .modeling_gpt import GPTForCausalLM
from .tokenization import GPT2_HUB_IDS, TOKENIZER_FILES, has_tokenizer, load_tokenizer

OPENAI_MODEL_TYPE = "gpt2"  # transformers' GPT2Config.model_type
OPENAI_CONTEXT = 1024  # n_positions of every OpenAI GPT-2 size
# GPTConfig and transformers' GPT2Config name these the same and mean the same by them.
SHARED_CONFIG_FIELDS = (
    "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "resid_pdrop", "embd_pdrop", "attn_pdrop",
    "layer_norm_epsilon", "initializer_range", "tie_word_embeddings", "bos_token_id", "eos_token_id",
)
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers that old GPT-2 checkpoints carry (the causal mask); they are not parameters.
IGNORED_OPENAI_KEYS = (".attn.bias", ".attn.masked_bias")
HUB_FILES = [CONFIG_NAME, "generation_config.json", "*.safetensors", SAFETENSORS_INDEX_FILE, "*.py",
             *TOKENIZER_FILES]


@dataclass(frozen=True)
class ModelSource:
    """What a `model_name_or_path` is: `scratch` (None: a new GPT), `recipe` (a checkpoint of this recipe),
    `openai` (OpenAI's GPT-2 layout: a Hub id such as gpt2, or a transformers GPT-2 directory), or `hub` (another
    Hub id: known only once downloaded). `n_positions` when it is known without loading weights."""

    kind: Literal["scratch", "recipe", "openai", "hub"]
    n_positions: int | None = None


def read_model_config(directory: str | Path) -> dict:
    config_file = Path(directory) / CONFIG_NAME
    if not config_file.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}: not a model checkpoint")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_file} is not valid JSON: {error}") from None


def classify_source(name_or_path: str | Path | None) -> ModelSource:
    """Decide what a model source is from its name and, for a directory, its config.json (no weights read)."""
    if name_or_path is None:
        return ModelSource("scratch")
    path = Path(name_or_path)
    if path.is_dir():
        config = read_model_config(path)
        model_type = config.get("model_type")
        if model_type == GPTConfig.model_type:
            return ModelSource("recipe", config.get("n_positions"))
        if model_type == OPENAI_MODEL_TYPE:
            return ModelSource("openai", config.get("n_positions"))
        raise CheckpointError(
            f"{path / CONFIG_NAME} has model_type={model_type!r}: neither a recipe GPT ({GPTConfig.model_type!r}) "
            f"nor OpenAI's GPT-2 ({OPENAI_MODEL_TYPE!r})"
        )
    if path.exists() or str(name_or_path).startswith((".", "/")) or str(name_or_path).count("/") > 1:
        raise CheckpointError(f"{name_or_path} is not a directory (nor a Hub id)")
    if str(name_or_path) in GPT2_HUB_IDS:
        return ModelSource("openai", OPENAI_CONTEXT)
    return ModelSource("hub")


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A local model directory as is; otherwise a Hub id, downloaded (config, safetensors and tokenizer only)."""
    classify_source(name_or_path)  # refuses what is neither a model directory nor a Hub id
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=HUB_FILES))
    except Exception as error:  # offline, unknown repo, gated repo: all end here with the reason
        raise CheckpointError(
            f"{name_or_path} is not a local directory and could not be fetched from the Hub: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from None


# ---------------------------------------------------------------------------------------------------------------------
# OpenAI's layout <-> the recipe's


def gpt_config_from_gpt2(gpt2_config: GPT2Config, make_vocab_size_divisible_by: int = 1) -> GPTConfig:
    """The GPTConfig of a transformers GPT-2 config; variants this architecture does not have are refused."""
    unsupported = {
        "n_inner": (gpt2_config.n_inner, (None, 4 * gpt2_config.n_embd)),
        "activation_function": (gpt2_config.activation_function, ("gelu_new", "gelu_pytorch_tanh")),
        "scale_attn_weights": (gpt2_config.scale_attn_weights, (True,)),
        "scale_attn_by_inverse_layer_idx": (gpt2_config.scale_attn_by_inverse_layer_idx, (False,)),
        "add_cross_attention": (gpt2_config.add_cross_attention, (False,)),
    }
    for name, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise CheckpointError(f"GPT-2 config has {name}={value!r}; this recipe's GPT supports only {allowed}")
    fields = {name: getattr(gpt2_config, name) for name in SHARED_CONFIG_FIELDS}
    try:
        return GPTConfig(**fields, make_vocab_size_divisible_by=make_vocab_size_divisible_by)
    except ValueError as error:
        raise CheckpointError(f"GPT-2 config: {error}") from None


def gpt2_config_from_gpt(config: GPTConfig) -> GPT2Config:
    """The stock transformers GPT2Config with the same architecture. It also carries `n_ctx`, the context length
    under the name OpenAI's configs give it, which transformers no longer writes and llama.cpp's GGUF converter
    reads (its GPT-2 model: n_ctx, n_embd, n_head, layer_norm_epsilon)."""
    fields = {name: getattr(config, name) for name in SHARED_CONFIG_FIELDS}
    return GPT2Config(**fields, n_ctx=config.n_positions, activation_function="gelu_new",
                      architectures=["GPT2LMHeadModel"])


def _expected_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def state_dict_from_openai(openai_state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Map a GPT2LMHeadModel state dict (with or without the `transformer.` prefix) to GPTForCausalLM's."""
    with torch.device("meta"):
        expected = _expected_shapes(GPTForCausalLM(config))
    state = {}
    for name, tensor in openai_state.items():
        if name.endswith(IGNORED_OPENAI_KEYS) or name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        key = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        if key not in expected:
            raise CheckpointError(f"unexpected tensor {name!r} {tuple(tensor.shape)}: not part of GPT-2")
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
        if tensor.shape != expected[key]:
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(tensor.shape)} but the config needs {tuple(expected[key])}"
            )
        state[key] = tensor.contiguous()
    missing = sorted(set(expected) - set(state) - ({"lm_head.weight"} if config.tie_word_embeddings else set()))
    if missing:
        raise CheckpointError(f"GPT-2 checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    return state


def state_dict_to_openai(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Map a GPTForCausalLM state dict to GPT2LMHeadModel's (Linear -> Conv1D)."""
    openai_state = {}
    for key, tensor in state.items():
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()  # Linear (out, in) -> Conv1D (in, out)
        openai_state[key] = tensor.contiguous()
    return openai_state


def _build(model_class, config, state: dict[str, torch.Tensor]):
    """Instantiate without initialising (meta device), then take the given tensors as the parameters."""
    with torch.device("meta"):
        model = model_class(config)
    incompatible = model.load_state_dict(state, strict=False, assign=True)
    missing = [key for key in incompatible.missing_keys if not (key == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or incompatible.unexpected_keys:
        raise CheckpointError(f"missing tensors {missing[:3]}, unexpected tensors {incompatible.unexpected_keys[:3]}")
    model.tie_weights()
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Loading and converting


def load_openai_gpt2(name_or_path: str | Path, make_vocab_size_divisible_by: int = 1) -> GPTForCausalLM:
    """OpenAI's GPT-2 (Hub id or local transformers GPT-2 directory) as a GPTForCausalLM."""
    directory = resolve_checkpoint(name_or_path)
    raw_config = read_model_config(directory)
    if raw_config.get("model_type") != OPENAI_MODEL_TYPE:
        raise CheckpointError(
            f"{directory / CONFIG_NAME} has model_type={raw_config.get('model_type')!r}, not "
            f"{OPENAI_MODEL_TYPE!r}: not a transformers GPT-2 checkpoint"
        )
    config = gpt_config_from_gpt2(GPT2Config.from_dict(raw_config), make_vocab_size_divisible_by)
    return _build(GPTForCausalLM, config, state_dict_from_openai(load_state_dict(directory), config))


def load_model(name_or_path: str | Path, make_vocab_size_divisible_by: int = 1,
               **from_pretrained_kwargs) -> GPTForCausalLM:
    """Any GPT this recipe can use: a recipe checkpoint as saved, or OpenAI's GPT-2 layout (Hub id or local
    directory, e.g. a to-openai export) converted on the fly, its vocabulary padded to a multiple of
    `make_vocab_size_divisible_by`. Weights are read from safetensors only."""
    directory = resolve_checkpoint(name_or_path)
    if classify_source(directory).kind == "openai":
        return load_openai_gpt2(directory, make_vocab_size_divisible_by)
    for path in weight_files(directory):  # names a missing or pickle-only checkpoint before transformers does
        check_safetensors_header(path)
    if padded_embedding_rows(directory):
        config = GPTConfig.from_dict(read_model_config(directory))
        return _build(GPTForCausalLM, config, unpadded_state_dict(load_state_dict(directory), config))
    try:
        return GPTForCausalLM.from_pretrained(directory, use_safetensors=True, **from_pretrained_kwargs)
    except ValueError as error:  # a config.json whose fields GPTConfig refuses
        raise CheckpointError(f"{directory / CONFIG_NAME}: {str(error).splitlines()[0]}") from None


def padded_embedding_rows(directory: str | Path) -> int:
    """The padding rows of a recipe checkpoint saved before the embeddings had exactly `vocab_size` rows (its
    `wte` was padded to `make_vocab_size_divisible_by`); 0 for a checkpoint of today's layout."""
    vocab_size = read_model_config(directory).get("vocab_size")
    for path in weight_files(directory):
        with safe_open(str(path), "pt") as handle:
            if "transformer.wte.weight" in handle.keys():
                return max(handle.get_slice("transformer.wte.weight").get_shape()[0] - vocab_size, 0)
    return 0


def check_resumable_layout(checkpoint: str | Path) -> None:
    """A CheckpointError, in one line, for a checkpoint of the earlier padded layout: its weights load (load_model),
    but its optimizer state has the padding rows too, so a run cannot resume from it."""
    padding = padded_embedding_rows(checkpoint)
    if padding:
        raise CheckpointError(
            f"{checkpoint} was saved by an earlier version of the recipe, whose embeddings held {padding} padding rows "
            f"(its optimizer state has them too): resume it with that version, or start a new run from its weights "
            f"with model_name_or_path={checkpoint}"
        )


def unpadded_state_dict(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """An earlier checkpoint's weights without their padding rows, which no token ever read."""
    return {key: tensor[: config.vocab_size] if key in ("transformer.wte.weight", "lm_head.weight") else tensor
            for key, tensor in state.items()}


def build_model(model_args, vocab_size: int, eos_token_id: int | None) -> GPTForCausalLM:
    """The model a run trains, from its ModelArguments: from scratch (GPTConfig + model_config), OpenAI's GPT-2
    (converted, vocabulary padded) or a recipe checkpoint; with the run's attention and loss settings."""
    if classify_source(model_args.model_name_or_path).kind == "scratch":
        config = GPTConfig(
            vocab_size=vocab_size,
            bos_token_id=eos_token_id,
            eos_token_id=eos_token_id,
            make_vocab_size_divisible_by=model_args.make_vocab_size_divisible_by,
            **(model_args.model_config or {}),
        )
        model = GPTForCausalLM(config)
    else:
        model = load_model(model_args.model_name_or_path, model_args.make_vocab_size_divisible_by)
    if vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"the tokenizer has {vocab_size} tokens but the model's vocab_size is {model.config.vocab_size}"
        )
    model.set_attn_implementation(model_args.attn_implementation)
    if model_args.loss_chunk_size is not None:  # else chosen for the device once the batch is known
        model.config.loss_chunk_size = model_args.loss_chunk_size
    model.generation_config.pad_token_id = model.config.eos_token_id
    return model


def load_model_and_tokenizer(name_or_path: str | Path) -> tuple[GPTForCausalLM, PreTrainedTokenizerBase]:
    """The model (see `load_model`) and the tokenizer saved with it, else GPT-2's bundled one."""
    directory = resolve_checkpoint(name_or_path)
    model = load_model(directory).eval()
    return model, load_tokenizer(directory if has_tokenizer(directory) else None)


def _copy_tokenizer(source: Path, destination: Path) -> None:
    if has_tokenizer(source):
        load_tokenizer(source).save_pretrained(str(destination))


def from_openai(source: str | Path, output: str | Path, make_vocab_size_divisible_by: int = 1,
                overwrite: bool = False) -> Path:
    """Convert OpenAI's GPT-2 into a recipe checkpoint at `output` (weights, config, remote code, tokenizer)."""
    model = load_openai_gpt2(source, make_vocab_size_divisible_by)
    with atomic_directory(output, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        _copy_tokenizer(resolve_checkpoint(source), staging)
    return Path(output)


def to_openai(source: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Export a recipe checkpoint as a stock GPT2LMHeadModel directory that loads without remote code."""
    directory = resolve_checkpoint(source)
    raw_config = read_model_config(directory)
    if raw_config.get("model_type") != GPTConfig.model_type:
        raise CheckpointError(
            f"{directory / CONFIG_NAME} has model_type={raw_config.get('model_type')!r}, "
            f"not {GPTConfig.model_type!r}: not a recipe checkpoint"
        )
    config = GPTConfig.from_dict(raw_config)
    model = _build(GPT2LMHeadModel, gpt2_config_from_gpt(config), state_dict_to_openai(load_state_dict(directory), config))
    with atomic_directory(output, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        _copy_tokenizer(directory, staging)
    return Path(output)
