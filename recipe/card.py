"""The model card (README.md) of a training run: what it was trained on, how, what it scores, how to load it.

Everything is read from the files a run leaves in its output directory (run_config.json, trainer_state.json,
*_results.json, eval_<task>.json from recipe.evaluate, loss.png from recipe.plot); what a run lacks is left out.
Training writes the card at the end of a run, after the loss plot; recipe.hub writes it again, with the Hub repo
id, before uploading.
"""

import json
import math
from pathlib import Path

from huggingface_hub import ModelCardData, metadata_load
from safetensors import safe_open
from transformers.utils import CONFIG_NAME

from .checkpoints import (
    BASELINE_FILE,
    CARD_FILE,
    PLOT_FILE,
    RUN_CONFIG_FILE,
    TRAINER_STATE_FILE,
    evaluation_file,
    metrics_file,
    weight_files,
)
from .flops import describe_validation
from .errors import CheckpointError

# Reference figures of OpenAI's GPT-2 124M, as build-nanogpt measured them (hellaswag.py; play.ipynb).
GPT2_HELLASWAG_ACC_NORM = 0.2955
GPT2_FINEWEB_EDU_VAL_LOSS = 3.2924


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def parameter_count(run_dir: Path) -> int | None:
    """Parameters stored in the checkpoint's safetensors (read from the headers, no weights loaded)."""
    try:
        files = weight_files(run_dir)
    except CheckpointError:
        return None
    count = 0
    for path in files:
        with safe_open(path, framework="pt") as weights:
            count += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return count


def tokens_per_step(run_config: dict, trainer_state: dict) -> str | None:
    """"2 × 4 × 8 processes × 1,024 = 65,536": micro-batch × accumulation × processes × block size.

    The number of processes is not in the config; it is the one that makes the tokens the Trainer counted add up.
    When none does, the figure is given per process.
    """
    try:
        micro_batch, accumulation = run_config["per_device_train_batch_size"], run_config["gradient_accumulation_steps"]
        block_size = run_config["block_size"]
    except KeyError:
        return None
    per_process = micro_batch * accumulation * block_size
    tokens, steps = trainer_state.get("num_input_tokens_seen", 0), trainer_state.get("global_step", 0)
    processes = round(tokens / (steps * per_process)) if steps else 0
    if processes < 1 or processes * steps * per_process != tokens:
        return f"{micro_batch} × {accumulation} × {block_size:,} = {per_process:,} per process"
    return (f"{micro_batch} × {accumulation} × {processes} process{'es' if processes > 1 else ''} × {block_size:,}"
            f" = {per_process * processes:,}")


def _metadata(run_dir: Path, run_config: dict) -> ModelCardData:
    previous = metadata_load(run_dir / CARD_FILE) if (run_dir / CARD_FILE).is_file() else None
    dataset = run_config.get("dataset_name")
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["gpt2", "gpt2-recipe", "causal-lm", "custom_code"],
        # The recipe cannot know the license of your weights: a license set in the card's metadata is kept.
        license=(previous or {}).get("license"),
        datasets=[dataset] if dataset else None,
    )


def _results(run_dir: Path) -> list[tuple[str, str]]:
    """(evaluation, value) rows from the Trainer's final eval and recipe.evaluate's files."""
    rows = []
    final_eval = _read_json(run_dir / metrics_file("eval"))
    if "eval_loss" in final_eval:
        loss = final_eval["eval_loss"]
        rows.append(("validation loss (end of training)", f"{loss:.4f}"))
        perplexity = final_eval.get("eval_perplexity", math.exp(loss))
        rows.append(("validation perplexity (end of training)", f"{perplexity:.2f}"))
    if "eval_bpb" in final_eval:
        rows.append(("validation bits per byte (end of training)", f"{final_eval['eval_bpb']:.4f}"))
    if "eval_hellaswag_acc_norm" in final_eval:
        rows.append(("HellaSwag acc_norm (end of training)", f"{final_eval['eval_hellaswag_acc_norm']:.4f}"))
    hellaswag = _read_json(run_dir / evaluation_file("hellaswag"))
    if "acc_norm" in hellaswag:
        examples = f"{hellaswag['n']:,} examples, completion style"
        rows.append((f"HellaSwag acc_norm ({examples})", f"{hellaswag['acc_norm']:.4f}"))
        rows.append((f"HellaSwag acc ({examples})", f"{hellaswag['acc']:.4f}"))
    validation = _read_json(run_dir / evaluation_file("perplexity"))
    if "loss" in validation:
        blocks = f"recipe.evaluate, {validation['n']:,} blocks"
        rows.append((f"validation loss ({blocks})", f"{validation['loss']:.4f}"))
        rows.append((f"validation perplexity ({blocks})", f"{validation['perplexity']:.2f}"))
        if "bpb" in validation:
            rows.append((f"validation bits per byte ({blocks})", f"{validation['bpb']:.4f}"))
    baseline = _read_json(run_dir / BASELINE_FILE)
    if "bpb" in baseline:
        on_same_data = f"`{baseline['model']}` on the same validation documents, {baseline['n']:,} blocks"
        if baseline.get("same_tokenizer"):
            rows.append((f"baseline: validation loss of {on_same_data}", f"{baseline['loss']:.4f}"))
        rows.append((f"baseline: validation bits per byte of {on_same_data}", f"{baseline['bpb']:.4f}"))
    return rows


def _training(run_dir: Path, run_config: dict, trainer_state: dict) -> list[tuple[str, str]]:
    """(setting, value) rows of the data and hyperparameters, as far as the run recorded them."""
    rows = []
    if run_config.get("model_name_or_path"):
        rows.append(("initialised from", f"`{run_config['model_name_or_path']}`"))
    if run_config.get("dataset_name"):
        config_name = run_config.get("dataset_config_name")
        rows.append(("data", f"`{run_config['dataset_name']}`" + (f" (`{config_name}`)" if config_name else "")))
    elif run_config.get("train_files"):
        rows.append(("data", ", ".join(f"`{name}`" for name in run_config["train_files"])))
    if run_config:
        rows.append(("validation", describe_validation(run_config)))
    for key, setting in [("block_size", "block size (tokens per sequence)"),
                         ("per_device_train_batch_size", "micro-batch per process"),
                         ("gradient_accumulation_steps", "gradient accumulation steps")]:
        if key in run_config:
            rows.append((setting, f"{run_config[key]:,}"))
    step_tokens = tokens_per_step(run_config, trainer_state)
    if step_tokens:
        rows.append(("tokens per optimizer step", step_tokens))
    if "global_step" in trainer_state:
        rows.append(("optimizer steps", f"{trainer_state['global_step']:,}"))
    if trainer_state.get("num_input_tokens_seen"):
        rows.append(("tokens seen", f"{trainer_state['num_input_tokens_seen']:,}"))
    if "learning_rate" in run_config:
        schedule = f"peak {run_config['learning_rate']:g}"
        if "lr_scheduler_type" in run_config:
            schedule += f", {run_config['lr_scheduler_type']} schedule"
            scheduler_kwargs = run_config.get("lr_scheduler_kwargs")
            if isinstance(scheduler_kwargs, dict) and scheduler_kwargs:
                schedule += " (" + ", ".join(f"{key}={value}" for key, value in scheduler_kwargs.items()) + ")"
        if run_config.get("warmup_steps"):
            schedule += f", {run_config['warmup_steps']:g} warmup steps"
        rows.append(("learning rate", schedule))
    if "optim" in run_config:
        adamw = (f"betas {run_config.get('adam_beta1')}, {run_config.get('adam_beta2')}; weight decay "
                 f"{run_config.get('weight_decay')}; gradient clipping {run_config.get('max_grad_norm')}")
        if run_config["optim"] == "muon":
            rows.append(("optimizer", f"Muon for the blocks' matrices (peak {run_config.get('muon_learning_rate'):g}, "
                                      f"momentum {run_config.get('muon_momentum')}, weight decay "
                                      f"{run_config.get('muon_weight_decay')}), AdamW for the rest ({adamw})"))
        else:
            rows.append(("optimizer", f"{run_config['optim']} ({adamw})"))
    if "bf16" in run_config:
        rows.append(("precision", "bf16 autocast" if run_config["bf16"] else "fp32"))
    runtime = _read_json(run_dir / metrics_file("train")).get("train_runtime")
    if runtime:
        rows.append(("training time", f"{runtime / 3600:.2f} h ({runtime:,.0f} s)"))
    return rows


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def model_card(run_dir: str | Path, repo_id: str | None = None) -> str:
    """The card's markdown, YAML metadata included. `repo_id` names the model in the loading snippet."""
    run_dir = Path(run_dir)
    run_config = _read_json(run_dir / RUN_CONFIG_FILE)
    trainer_state = _read_json(run_dir / TRAINER_STATE_FILE)
    model_config = _read_json(run_dir / CONFIG_NAME)
    name = repo_id or str(run_dir)
    parameters = parameter_count(run_dir)

    start = run_config.get("model_name_or_path")
    how = f"starting from `{start}`" if start else "from scratch"
    sections = [
        f"---\n{_metadata(run_dir, run_config).to_yaml()}\n---",
        f"# {name.split('/')[-1]}",
        "A GPT-2-architecture language model"
        + (f" with {parameters:,} parameters" if parameters else "")
        + f", trained {how} with gpt2-recipe (transformers `Trainer`, `datasets`, `accelerate`).",
    ]
    results = _results(run_dir)
    if results:
        sections += [
            "## Results",
            _table(("evaluation", "value"), results),
            f"For comparison, OpenAI's GPT-2 124M scores HellaSwag acc_norm {GPT2_HELLASWAG_ACC_NORM} (completion "
            f"style, 10,042 validation examples) and has a loss of {GPT2_FINEWEB_EDU_VAL_LOSS} on FineWeb-Edu's "
            f"validation shard, as measured by Karpathy's build-nanogpt "
            f"([hellaswag.py](https://github.com/karpathy/build-nanogpt/blob/master/hellaswag.py), "
            f"[play.ipynb](https://github.com/karpathy/build-nanogpt/blob/master/play.ipynb)). Losses are "
            f"comparable only on the same validation data.",
        ]
    if (run_dir / PLOT_FILE).is_file():
        sections.append(f"![Training loss, eval loss, learning rate and throughput against tokens seen]({PLOT_FILE})")
    training = _training(run_dir, run_config, trainer_state)
    if training:
        sections += ["## Training", _table(("setting", "value"), training)]
    if model_config:
        architecture = [(key, f"{model_config[key]:,}") for key in
                        ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size") if key in model_config]
        sections += ["## Architecture", _table(("GPTConfig field", "value"), architecture)]
    sections += [
        "## How to use",
        "The model's code ships in this repository (`configuration_gpt.py`, `modeling_gpt.py`); "
        "`trust_remote_code=True` runs it. `AutoTokenizer` needs the flag too, although the tokenizer is GPT-2's own "
        "`GPT2Tokenizer`: transformers reads the model's `config.json` first, and without the flag asks whether to run "
        "the code. `GPT2Tokenizer.from_pretrained` loads the tokenizer without it.",
        f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{name}", trust_remote_code=True)
generator = pipeline("text-generation", model="{name}", trust_remote_code=True)
print(generator("Hello, I'm a language model,", max_new_tokens=40, do_sample=True, top_k=50)[0]["generated_text"])
```""",
        f'With gpt2-recipe installed: `python -m recipe.generate {name} --prompt "Hello, I\'m a language model,"`.',
    ]
    return "\n\n".join(sections) + "\n"


def write_model_card(run_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write run_dir/README.md (see `model_card`) and return its path."""
    path = Path(run_dir) / CARD_FILE
    path.write_text(model_card(run_dir, repo_id))
    return path

