"""Run settings: one flat JSON file plus `--key value` overrides, parsed by HfArgumentParser and checked early.

Merge order: dataclass defaults < the JSON file < the command line. Every check here runs before any data or
model work, so a mistake in a config costs seconds, not a GPU-hour.
"""

import dataclasses
import json
import math
import os
import types
import typing
from argparse import ArgumentError
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import HfArgumentParser, SchedulerType, TrainingArguments
from transformers.training_args import OptimizerNames

from .checkpoints import RUN_CONFIG_FILE
from .configuration_gpt import GPTConfig
from .errors import CheckpointError, ConfigError
from .optimization import MUON, SCHEDULES, check_schedule, check_warmup_before_decay
from .sources import classify_source

MIN_TRAINED_VOCAB_SIZE = 257  # the 256 byte tokens every byte-level BPE starts from, plus <|endoftext|>


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Absent: train from scratch. An OpenAI GPT-2 Hub id or transformers GPT-2 directory: "
                          "convert and fine-tune. A recipe checkpoint: continue from it."},
    )
    model_config: dict | str | None = field(
        default=None,
        metadata={"help": "GPTConfig overrides for training from scratch, e.g. {\"n_layer\": 6} (JSON on the CLI)."},
    )
    make_vocab_size_divisible_by: int = field(
        default=64,
        metadata={"help": "Pad the embedding rows to a multiple of this (64: 50,257 -> 50,304, faster on GPUs). "
                          "Logits are cut back to the vocabulary, so results for real tokens do not change."},
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "eager | sdpa | flex_attention | flash_attention_2 | flash_attention_3"}
    )
    loss_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Tokens per chunk of the fused LM-head + cross-entropy used in training: the full fp32 "
                          "logits are never materialised (less memory; faster on CPU, slower on GPUs). 0: the "
                          "library's loss on full logits. Absent: chosen for the device at start and printed "
                          "(recipe.flops.choose_loss_chunk_size). Evaluation and generation compute full logits."},
    )

    def __post_init__(self):
        if isinstance(self.model_config, str):
            try:
                self.model_config = json.loads(self.model_config)
            except json.JSONDecodeError as error:
                raise ConfigError(f"model_config={self.model_config!r} is not a JSON object: {error}") from None
        if self.model_config is not None and not isinstance(self.model_config, dict):
            raise ConfigError(f"model_config must be a JSON object of GPTConfig fields, got {self.model_config!r}")


@dataclass
class DataArguments:
    """Where the text comes from and how it becomes blocks. Names follow transformers' run_clm.py."""

    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset, e.g. HuggingFaceFW/fineweb-edu."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's config, e.g. sample-10BT."})
    train_files: list[str] | None = field(
        default=None,
        metadata={"help": "Local training text: files, directories or globs of .txt (one file = one document), "
                          ".json/.jsonl or .parquet (one row = one document)."},
    )
    validation_files: list[str] | None = field(default=None, metadata={"help": "Local validation text, as train_files."})
    text_column: str = field(default="text", metadata={"help": "The column holding the text (json, parquet, Hub)."})
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "Percent of the training documents held out for validation when there is no validation "
                          "split or validation_files."},
    )
    validation_documents: int | None = field(
        default=None,
        metadata={"help": "Hold out the first N training documents as validation instead of a percentage (needed "
                          "when streaming without validation_files or a validation split: a stream has no length)."},
    )
    validation_tokens: int | None = field(
        default=None,
        metadata={"help": "Hold out the first N tokens of the training documents' token stream as validation, "
                          "documents in corpus order with an end-of-text token before each, as build-nanogpt's "
                          "fineweb.py writes its validation shard (100,000,000 tokens); the documents they come "
                          "from are not trained on. With max_eval_samples K, evaluation scores the first K blocks."},
    )
    block_size: int = field(default=1024, metadata={"help": "Tokens per training sequence."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep at most this many training blocks."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most this many validation blocks."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenizing and grouping (datasets' num_proc)."}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the dataset (IterableDataset), tokenizing while training: for corpora larger than "
                          "disk. Each process reads its own documents; a checkpoint records where each stream stands."},
    )
    prepared_dir: str | None = field(
        default=None,
        metadata={"help": "Tokenize once into this directory (python -m recipe.data CONFIG: block_size blocks of "
                          "uint16 ids, in parallel, resumable) and train from it: every process reads its own blocks "
                          "map-style, and a resume skips indices, not data. For corpora of any size."},
    )
    prepared_shard_tokens: int = field(
        default=100_000_000,
        metadata={"help": "About this many tokens per prepared shard (estimated from a sample): the unit of parallel "
                          "work and of resuming an interrupted prepare. Each shard drops its final partial block."},
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize instead of reusing datasets' cache."})
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "A Hub id or local tokenizer directory. Default: GPT-2's BPE, bundled (no network)."},
    )
    train_tokenizer_vocab_size: int | None = field(
        default=None,
        metadata={"help": "Train a new byte-level BPE of this vocabulary size on the training corpus (saved with "
                          "the run) instead of using tokenizer_name."},
    )

    def __post_init__(self):
        """The checks that need only these settings: they hold wherever DataArguments are built."""
        if self.dataset_name is None and not self.train_files:
            raise ConfigError("no training data: set dataset_name (a Hub dataset) or train_files (local files)")
        if self.dataset_name is not None and self.train_files:
            raise ConfigError("set dataset_name (a Hub dataset) or train_files (local files), not both")
        if not 0 <= self.validation_split_percentage < 100:
            raise ConfigError(f"validation_split_percentage={self.validation_split_percentage} must be in [0, 100)")
        for key in ("block_size", "validation_documents", "validation_tokens", "max_train_samples", "max_eval_samples",
                    "preprocessing_num_workers", "prepared_shard_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key}={value} must be positive")
        if self.validation_tokens is not None:
            for other in ("validation_documents", "validation_files"):
                if getattr(self, other):
                    raise ConfigError(f"set validation_tokens or {other} (two hold-outs), not both")
            if self.streaming:
                raise ConfigError("validation_tokens needs the documents counted in tokens before training starts, "
                                  "which a stream cannot do: use validation_documents with streaming=true")
            if self.train_tokenizer_vocab_size is not None:
                raise ConfigError("validation_tokens counts tokens of the tokenizer, and train_tokenizer_vocab_size "
                                  "trains it on the training documents: hold out validation_documents instead")
            if self.validation_tokens <= self.block_size:
                raise ConfigError(f"validation_tokens={self.validation_tokens} holds less than one block and the "
                                  f"token after it (block_size={self.block_size})")
        if self.prepared_dir is not None and self.streaming:
            raise ConfigError("set prepared_dir (tokenize once, then read blocks) or streaming (tokenize while "
                              "training), not both")
        if self.prepared_shard_tokens < self.block_size:
            raise ConfigError(f"prepared_shard_tokens={self.prepared_shard_tokens} is smaller than one block "
                              f"(block_size={self.block_size})")
        if self.streaming and self.validation_documents is None and not self.validation_files:
            raise ConfigError(
                "streaming=true needs validation_documents (the first N documents of the stream are held out; a "
                "stream has no length to take validation_split_percentage of) or validation_files"
            )
        if self.train_tokenizer_vocab_size is not None:
            if self.tokenizer_name is not None:
                raise ConfigError("set tokenizer_name (use a tokenizer) or train_tokenizer_vocab_size (train one), not both")
            if self.train_tokenizer_vocab_size < MIN_TRAINED_VOCAB_SIZE:
                raise ConfigError(
                    f"train_tokenizer_vocab_size={self.train_tokenizer_vocab_size} is too small: a byte-level BPE "
                    f"needs at least {MIN_TRAINED_VOCAB_SIZE} tokens (256 bytes + <|endoftext|>)"
                )


@dataclass
class RecipeTrainingArguments(TrainingArguments):
    """TrainingArguments with the GPT-2 reproductions' defaults (build-nanogpt, llm.c), plus the recipe's knobs."""

    # AdamW as in GPT-3's paper (Brown et al. 2020, appendix B) and the GPT-2 reproductions: betas (0.9, 0.95).
    optim: str = field(
        default="adamw_torch_fused",
        metadata={"help": "The optimizer: any of Trainer's names, or muon: torch.optim.Muon for the 2-D weights inside "
                          "the blocks and fused AdamW (learning_rate, weight_decay, adam_*) for the embeddings, the "
                          "tied head, biases and gains (recipe.optimization)."},
    )
    muon_learning_rate: float = field(
        default=0.02, metadata={"help": "optim=muon: the peak rate of the blocks' matrices (the schedule scales it "
                                        "as it scales learning_rate)."}
    )
    muon_momentum: float = field(default=0.95, metadata={"help": "optim=muon: Muon's (Nesterov) momentum."})
    muon_weight_decay: float = field(
        default=0.0, metadata={"help": "optim=muon: decoupled decay of the blocks' matrices (each step multiplies them "
                                       "by 1 - rate x decay)."}
    )
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    learning_rate: float = field(default=6e-4, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.1, metadata={"help": "Decay of 2-D weights (matmuls and embeddings)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clipping."})
    lr_scheduler_type: str = field(
        default="gpt2_cosine",
        metadata={"help": "gpt2_cosine: the GPT-2 reproductions' warm-up (step 0 at peak / warmup_steps) and cosine; "
                          "wsd: that warm-up, a constant rate, and a linear decay over the last decay_fraction of the "
                          "run (recipe.optimization); or any of Trainer's scheduler names."},
    )
    lr_scheduler_kwargs: dict | str | None = field(
        default_factory=lambda: {"min_lr_rate": 0.1},
        metadata={"help": "The schedule's settings: min_lr_rate (the floor, a fraction of the peak: 10%); for wsd also "
                          "decay_fraction (0.4)."},
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 autocast. Absent: on when the GPU supports it, fp32 on CPU."}
    )
    tf32: bool | None = field(default=None, metadata={"help": "TF32 matmuls. Absent: on with an Ampere+ GPU."})
    use_cpu: bool | None = field(default=None, metadata={"help": "Train on the CPU. Absent: when there is no GPU."})
    include_num_input_tokens_seen: str | bool = field(default=True, metadata={"help": "Log tokens seen."})
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={"help": "Trainer's filter syncs the device on every micro-batch; the recipe's own guard "
                          "(nonfinite_loss) checks once per optimizer step and stops or skips instead."},
    )
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation computes the loss only."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "tensorboard, wandb, ..."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    save_steps: float = field(default=500, metadata={"help": "Save a checkpoint every N optimizer steps."})
    eval_strategy: str = field(default="steps", metadata={"help": "no | steps | epoch"})
    eval_steps: float | None = field(default=250, metadata={"help": "Evaluate every N optimizer steps."})
    dataloader_num_workers: int = field(default=2, metadata={"help": "Dataloader worker processes."})
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "Every parameter of the GPT gets a gradient at every step, so DDP need not search the "
                          "autograd graph for unused ones after each backward (Trainer's default would)."},
    )

    tokens_per_step: int | None = field(
        default=None,
        metadata={"help": "Tokens per optimizer step (GPT-2 reproduction: 524,288). When set, gradient_accumulation_steps "
                          "is derived: tokens_per_step / (per_device_train_batch_size x processes x block_size), so "
                          "one config runs unchanged on 1, 8 or 16 GPUs."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that holds another run. Without it, the same config "
                          "resumes from its last complete checkpoint, and a different config is refused."},
    )
    dry_run: bool = field(
        default=False, metadata={"help": "Validate the config, build the model, print the plan; touch no data."}
    )
    dry_run_gpu: str = field(default="H100", metadata={"help": "The GPU the dry run's time estimate is for."})
    dry_run_num_gpus: int | None = field(default=None, metadata={"help": "GPUs for the estimate (default: this launch's processes)."})
    dry_run_mfu: float = field(default=0.4, metadata={"help": "Model FLOPs utilisation assumed by the estimate."})
    peak_tflops: float | None = field(
        default=None, metadata={"help": "bf16 dense peak per device for MFU; absent: looked up from the GPU's name."}
    )
    sample_prompt: str = field(
        default="Hello, I'm a language model,", metadata={"help": "Prompt of the greedy sample logged at each eval."}
    )
    sample_max_new_tokens: int = field(default=32, metadata={"help": "Length of that sample (0: no sample)."})
    hellaswag_file: str | None = field(
        default=None, metadata={"help": "A local HellaSwag jsonl to evaluate during training (acc_norm logged)."}
    )
    hellaswag_steps: int = field(default=0, metadata={"help": "Evaluate HellaSwag every N steps (0: never)."})
    hellaswag_limit: int | None = field(default=None, metadata={"help": "Examples of HellaSwag to use."})
    nonfinite_loss: Literal["stop", "skip"] = field(
        default="stop",
        metadata={"help": "A NaN/inf loss stops the run (stop) or its step is skipped (skip: as spike_guard skips). "
                          "Never saved."},
    )
    spike_guard: Literal["off", "skip", "stop"] = field(
        default="off",
        metadata={"help": "A step whose loss or gradient norm is more than spike_zscore standard deviations above the "
                          "mean of the last spike_window steps is skipped (skip: not applied, the schedule does not "
                          "advance, counted in the logs) or stops the run (stop). As llm.c's -sl / -sg."},
    )
    spike_zscore: float = field(
        default=7.0, metadata={"help": "The z-score above which a step is a spike (llm.c's GPT-3 125M run: 7.0)."}
    )
    spike_window: int = field(
        default=128,
        metadata={"help": "Steps of history a step is scored against; the first spike_window steps are never scored "
                          "(llm.c: 128)."},
    )

    def __post_init__(self):
        if self.use_cpu is None:  # Trainer needs it set to run data parallel on CPU-only machines
            self.use_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
        cuda = torch.cuda.is_available() and not self.use_cpu
        if self.bf16 is None:
            self.bf16 = cuda and torch.cuda.is_bf16_supported()
        elif self.bf16 and not (cuda and torch.cuda.is_bf16_supported()):
            raise ConfigError("bf16=true needs a GPU with bfloat16 support and none is in use; remove bf16 (automatic)")
        if self.tf32 is None and cuda and torch.cuda.get_device_capability()[0] >= 8:
            self.tf32 = True
        # TrainingArguments converts lr_scheduler_type with transformers' SchedulerType, which does not know the
        # recipe's schedules: it checks a name of its own meanwhile, and the recipe's name is put back after.
        schedule = self.lr_scheduler_type
        if schedule in SCHEDULES:
            self.lr_scheduler_type = SchedulerType.LINEAR
        elif schedule not in {member.value for member in SchedulerType} and not isinstance(schedule, SchedulerType):
            raise ConfigError(f"lr_scheduler_type={schedule!r} is not a schedule: the recipe's are "
                              f"{sorted(SCHEDULES)}, transformers' {[member.value for member in SchedulerType]}")
        # The same for optim (OptimizerNames).
        optimizer = self.optim
        if optimizer == MUON:
            self.optim = OptimizerNames.ADAMW_TORCH_FUSED
        super().__post_init__()
        if schedule in SCHEDULES:
            self.lr_scheduler_type = schedule
        if optimizer == MUON:
            self.optim = MUON


@dataclass
class Settings:
    model: ModelArguments
    data: DataArguments
    training: RecipeTrainingArguments

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step = micro-batch x accumulation x processes x sequence length (build-nanogpt)."""
        training = self.training
        return (
            training.per_device_train_batch_size
            * training.gradient_accumulation_steps
            * training.world_size
            * self.data.block_size
        )

    def describe_data(self) -> str:
        """Where the run's text comes from, in one line for the plan."""
        data = self.data
        if data.dataset_name:
            name = "/".join(filter(None, [data.dataset_name, data.dataset_config_name]))
            source = f"{name} (Hub{', streamed' if data.streaming else ''})"
        else:
            source = ", ".join(data.train_files)
        return f"{source}, prepared in {data.prepared_dir}" if data.prepared_dir else source

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings as one flat, JSON-serialisable dict (the shape of a config file)."""
        resolved = {}
        for arguments in (self.model, self.data, self.training):
            for item in dataclasses.fields(arguments):
                if item.init and not item.name.startswith("_") and item.name not in NOT_SERIALISED:
                    resolved[item.name] = _jsonable(getattr(arguments, item.name))
        return resolved


NOT_SERIALISED = {"hub_token", "local_rank"}  # secrets and per-process launch details

# Keys that do not change what a run computes: they may differ when the same run is resumed.
RESUME_NEUTRAL_KEYS = {
    "overwrite_output_dir", "resume_from_checkpoint", "dry_run", "dry_run_gpu", "dry_run_num_gpus", "dry_run_mfu",
    "report_to", "run_name", "project", "disable_tqdm", "log_level", "log_level_replica", "log_on_each_node",
    "logging_steps", "logging_first_step", "logging_strategy", "push_to_hub", "hub_model_id", "hub_strategy",
    "hub_private_repo", "hub_always_push", "hub_revision", "save_steps", "save_strategy", "save_total_limit",
    "eval_steps", "eval_strategy", "eval_on_start", "per_device_eval_batch_size", "max_eval_samples",
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "preprocessing_num_workers", "overwrite_cache", "sample_prompt", "sample_max_new_tokens", "hellaswag_file",
    "hellaswag_steps", "hellaswag_limit", "peak_tflops", "skip_memory_metrics", "output_dir",
    "prepared_dir",  # the prepared data may move: each checkpoint records its fingerprint, checked on resume
}


def _jsonable(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


ARGUMENT_CLASSES = (ModelArguments, DataArguments, RecipeTrainingArguments)


def _field_types() -> dict[str, Any]:
    types_by_name = {}
    for arguments_class in ARGUMENT_CLASSES:
        hints = typing.get_type_hints(arguments_class)
        for item in dataclasses.fields(arguments_class):
            if item.init:
                types_by_name[item.name] = hints[item.name]
    return types_by_name


def _matches(value, annotation) -> bool:
    """Whether a JSON value can stand for a field of this type annotation."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return value in [member.value for member in annotation]
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is list or annotation is list:
        item_types = typing.get_args(annotation)
        return isinstance(value, list) and all(_matches(item, item_types[0]) for item in value if item_types)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return True  # anything richer (e.g. accelerator configs) is checked by the dataclass itself


def _is_number(annotation) -> bool:
    """A type of numbers or booleans (or None) that argparse builds from one string, e.g. "1e-3" for a float; it
    names the key and value when it cannot. Strings and choices are checked as they are."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return any(option in (int, float, bool) for option in options) and all(
        option in (int, float, bool, type(None)) for option in options
    )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a config file, with unknown keys and wrongly typed values refused by name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}): {error.msg}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold one JSON object of settings, got {type(raw).__name__}")
    field_types = _field_types()
    unknown = sorted(key for key in raw if key not in field_types)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown} (not a model, data or training setting)")
    for key, value in raw.items():
        if isinstance(value, str) and _is_number(field_types[key]):
            continue  # argparse converts "1e-3" to a float, or names the key and value if it cannot
        if not _matches(value, field_types[key]):
            raise ConfigError(f"{path}: {key}={value!r} has the wrong type (expected {field_types[key]})")
    return raw


def parse_settings(config_file: str | Path, overrides: list[str] | None = None) -> Settings:
    """Defaults < JSON file < `--key value` overrides, then the early checks of `check_settings`."""
    raw = read_config_file(config_file)
    # No abbreviations: `--learning_rat 1` must be an unknown key, not a silent learning_rate=1.
    parser = HfArgumentParser(ARGUMENT_CLASSES, exit_on_error=False, allow_abbrev=False)
    parser.set_defaults(**raw)
    try:
        model, data, training = parser.parse_args_into_dataclasses(args=list(overrides or []), look_for_args_file=False)
    except ArgumentError as error:
        raise ConfigError(f"{error}") from None
    except ValueError as error:  # unknown --keys, and values the dataclasses refuse
        raise ConfigError(str(error).splitlines()[0]) from None
    settings = Settings(model, data, training)
    if training.tokens_per_step is not None:
        explicit = "gradient_accumulation_steps" in raw or any(
            item.split("=")[0] in ("--gradient_accumulation_steps", "--gradient-accumulation-steps")
            for item in overrides or []
        )
        if explicit:
            raise ConfigError("set tokens_per_step or gradient_accumulation_steps, not both (one derives the other)")
        training.gradient_accumulation_steps = accumulation_for(training.tokens_per_step, settings)
    check_settings(settings)
    return settings


def accumulation_for(tokens_per_step: int, settings: Settings) -> int:
    """Micro-batches per optimizer step so that batch x accumulation x processes x block = tokens_per_step."""
    training = settings.training
    per_micro_step = training.per_device_train_batch_size * training.world_size * settings.data.block_size
    if tokens_per_step <= 0 or tokens_per_step % per_micro_step:
        raise ConfigError(
            f"tokens_per_step={tokens_per_step} is not a positive multiple of per_device_train_batch_size "
            f"({training.per_device_train_batch_size}) x processes ({training.world_size}) x block_size "
            f"({settings.data.block_size}) = {per_micro_step}; change per_device_train_batch_size"
        )
    return tokens_per_step // per_micro_step


def model_config_overrides(model: ModelArguments) -> dict[str, Any]:
    """model_config checked against GPTConfig's fields (GPTConfig itself would accept any key silently)."""
    overrides = dict(model.model_config or {})
    known = {item.name for item in dataclasses.fields(GPTConfig)}
    unknown = sorted(key for key in overrides if key not in known)
    if unknown:
        raise ConfigError(f"model_config has unknown keys {unknown}; GPTConfig fields are e.g. n_layer, n_embd, n_head")
    for key in ("make_vocab_size_divisible_by", "loss_chunk_size"):
        if key in overrides:
            raise ConfigError(f"model_config sets {key}: set it at the top level of the config, where it applies to "
                              f"every model (from scratch or pretrained)")
    return overrides


def _context_length(settings: Settings) -> int | None:
    """n_positions of the model this run will train, when it is known without loading weights."""
    source = classify_source(settings.model.model_name_or_path)
    if source.kind == "scratch":
        return model_config_overrides(settings.model).get("n_positions", GPTConfig().n_positions)
    return source.n_positions


def check_settings(settings: Settings) -> None:
    """Refuse, by key and value, what cannot run. Everything that needs only the config is checked here, before
    any data, Hub or model work. Cheap: no data, no weights, no network."""
    model, data, training = settings.model, settings.data, settings.training
    try:
        source = classify_source(model.model_name_or_path)
    except CheckpointError as error:
        raise ConfigError(f"model_name_or_path: {error}") from None
    if source.kind != "scratch" and model.model_config:
        raise ConfigError("model_config applies to training from scratch; drop it or model_name_or_path")
    # The model's fields are validated by GPTConfig alone: model_config's, and the two top-level keys that apply to
    # any model (from scratch or pretrained).
    for key, fields in [("model_config: ", model_config_overrides(model)),
                        ("", {"make_vocab_size_divisible_by": model.make_vocab_size_divisible_by,
                              "loss_chunk_size": model.loss_chunk_size or 0})]:
        try:
            GPTConfig(**fields)
        except ValueError as error:
            raise ConfigError(key + str(error).replace("GPTConfig.", "")) from None
    positives = {
        "learning_rate": training.learning_rate,
        "per_device_train_batch_size": training.per_device_train_batch_size,
        "per_device_eval_batch_size": training.per_device_eval_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
    }
    for key, value in positives.items():
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{key}={value} must be positive")
    context = _context_length(settings)
    if context is not None and data.block_size > context:
        raise ConfigError(f"block_size={data.block_size} is longer than the model's context n_positions={context}")
    if training.max_steps > 0 and training.warmup_steps >= 1 and training.warmup_steps >= training.max_steps:
        raise ConfigError(
            f"warmup_steps={training.warmup_steps} is not shorter than the run (max_steps={training.max_steps})"
        )
    try:
        check_schedule(training.lr_scheduler_type, training.lr_scheduler_kwargs)
        if training.max_steps > 0:
            check_warmup_before_decay(training.lr_scheduler_type, training.lr_scheduler_kwargs,
                                      training.get_warmup_steps(training.max_steps), training.max_steps)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if data.streaming and training.dataloader_num_workers > 0:
        raise ConfigError(
            f"streaming=true reads each process's stream in that process, so that a checkpoint records exactly where "
            f"it stands: set dataloader_num_workers=0 (got {training.dataloader_num_workers})"
        )
    if data.streaming and training.max_steps <= 0:
        raise ConfigError(
            f"streaming=true needs max_steps > 0 (a stream has no length to count epochs), got {training.max_steps}"
        )
    if not (training.spike_zscore > 0 and math.isfinite(training.spike_zscore)):
        raise ConfigError(f"spike_zscore={training.spike_zscore} must be a positive number of standard deviations")
    if training.spike_window < 2:
        raise ConfigError(f"spike_window={training.spike_window} must be at least 2 steps (one has no spread)")
    uses_deepspeed = bool(training.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    for key in ("nonfinite_loss", "spike_guard"):
        if getattr(training, key) == "skip" and uses_deepspeed:
            raise ConfigError(f'{key}="skip" does not work with DeepSpeed, which steps inside its backward; use "stop"')
    if training.optim == MUON:
        if uses_deepspeed:
            raise ConfigError(
                "optim=muon does not work with DeepSpeed: its ZeRO optimizer hands the optimizer flat partitions, not "
                "matrices, and DeepSpeed's own Muon makes another update (Gram Newton-Schulz in fp16, q/k/v as one): "
                "use DDP or FSDP, or an AdamW optim"
            )
        for key in ("muon_learning_rate", "muon_momentum"):
            value = getattr(training, key)
            if not (value > 0 and math.isfinite(value)) or (key == "muon_momentum" and value >= 1):
                raise ConfigError(f"{key}={value} must be positive{' and below 1' if key == 'muon_momentum' else ''}")
        if not (training.muon_weight_decay >= 0 and math.isfinite(training.muon_weight_decay)):
            raise ConfigError(f"muon_weight_decay={training.muon_weight_decay} must be 0 or more")
    if training.hellaswag_steps > 0 and not training.hellaswag_file:
        raise ConfigError(f"hellaswag_steps={training.hellaswag_steps} needs hellaswag_file (a local jsonl)")
    if training.hellaswag_file and not Path(training.hellaswag_file).is_file():
        raise ConfigError(f"hellaswag_file={training.hellaswag_file} does not exist")


def check_output_dir(settings: Settings) -> None:
    """An output_dir holding another run's config is refused unless overwrite_output_dir is set (training only:
    evaluating or preparing data from a config does not write there)."""
    previous_file = Path(settings.training.output_dir) / RUN_CONFIG_FILE
    if settings.training.overwrite_output_dir or not previous_file.is_file():
        return
    previous = json.loads(previous_file.read_text())
    current = settings.to_dict()
    changed = sorted(
        key for key in set(previous) | set(current)
        if key not in RESUME_NEUTRAL_KEYS and previous.get(key) != current.get(key)
    )
    if changed:
        details = ", ".join(f"{key}: {previous.get(key)!r} -> {current.get(key)!r}" for key in changed[:5])
        raise ConfigError(
            f"output_dir={settings.training.output_dir} holds a run with a different config ({details}); "
            f"set overwrite_output_dir to start over there, or choose another output_dir"
        )
