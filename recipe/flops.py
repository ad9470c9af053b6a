"""The arithmetic of a run's cost: training FLOPs per token, the peak FLOP/s of known GPUs (for MFU), the plan of a
run (with what its evaluations score), and the one memory decision made for the device: how the training loss is
computed."""

import torch

# Dense bf16 peak FLOP/s per device, from NVIDIA's datasheets (without sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIE": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def flops_per_token(config, parameters: int, seq_len: int) -> float:
    """Training FLOPs per token of a GPT with `parameters` parameters (tied head counted once): 6N for the matmuls
    with parameters (forward + backward) plus 12*L*H*Q*T for attention (PaLM, Chowdhery et al. 2022, appendix B;
    nanoGPT's estimate_mfu). N leaves out the position embedding, a lookup; the tied token embedding counts once,
    as the LM head's matmul, over the vocabulary padded as training pads it (nanoGPT's 50,304 rows)."""
    head_padding = (config.padded_vocab_size - config.vocab_size) * config.n_embd
    matmul_parameters = parameters + head_padding - config.n_positions * config.n_embd
    head_dim = config.n_embd // config.n_head
    return 6 * matmul_parameters + 12 * config.n_layer * config.n_head * head_dim * seq_len


def model_flops_per_token(model, seq_len: int) -> float:
    """`flops_per_token` of a built GPTForCausalLM (any device, meta included)."""
    return flops_per_token(model.config, sum(p.numel() for p in model.parameters()), seq_len)


def peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a GPU from its name, or None when it is not in the table."""
    name = device_name.upper()
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


# On CPUs the fused, chunked cross-entropy was faster than the library loss on full logits (1.07x at the small shape,
# benchmarks/RESULTS.md); on an H200 it was slower (184 vs 151 ms a step at 64 x 1,024, issue #10), so GPUs compute
# full logits unless their fp32 copy of one micro-batch would take more than this share of the GPU's memory.
CPU_LOSS_CHUNK_SIZE = 4096
MAX_LOGITS_MEMORY_SHARE = 0.25


def choose_loss_chunk_size(requested: int | None, padded_vocab_size: int, tokens_per_micro_batch: int,
                           device: torch.device) -> tuple[int, str]:
    """(loss_chunk_size, why) for a run: the requested one when the config sets it, else chunks on CPUs, and on a
    GPU full logits when they fit comfortably (fastest), chunks when they would not (e.g. 64 x 1,024 tokens of
    GPT-2 on a 40 GB GPU)."""
    if requested is not None:
        return requested, "loss_chunk_size set in the config"
    if device.type != "cuda":
        return CPU_LOSS_CHUNK_SIZE, f"automatic on {device.type}, where chunks are faster"
    logits_bytes = tokens_per_micro_batch * padded_vocab_size * 4
    total = torch.cuda.get_device_properties(device).total_memory
    sizes = f"the fp32 logits of a micro-batch take {logits_bytes / 2**30:.1f} of {total / 2**30:.0f} GiB"
    if logits_bytes <= MAX_LOGITS_MEMORY_SHARE * total:
        return 0, f"automatic on {torch.cuda.get_device_name(device)}: {sizes}"
    return CPU_LOSS_CHUNK_SIZE, f"automatic on {torch.cuda.get_device_name(device)}: {sizes}"


# build-nanogpt's validation shard: the first 100M tokens of FineWeb-Edu sample-10BT in GPT-2's BPE, an end-of-text
# token before each document (fineweb.py); its training loop scores the first 20 x 64 x 1,024 of them
# (train_gpt2.py: val_loss_steps = 20, B = 64, T = 1024), where OpenAI's GPT-2 124M has a loss of 3.2924.
BUILD_NANOGPT_VALIDATION = {"dataset_name": "HuggingFaceFW/fineweb-edu", "dataset_config_name": "sample-10BT",
                            "validation_tokens": 100_000_000, "block_size": 1024}
BUILD_NANOGPT_EVAL_BLOCKS = 20 * 64


def describe_validation(config: dict) -> str:
    """What a run (its flat settings, as in run_config.json) scores at each evaluation, in one line."""
    limit = config.get("max_eval_samples")
    which = f"its first {limit:,} blocks" if limit else "all its blocks"
    if config.get("validation_tokens"):
        held_out = (f"the first {config['validation_tokens']:,} tokens of the training documents (an end-of-text "
                    f"token before each document; those documents are not trained on)")
        tokenizer = config.get("tokenizer_name") or "gpt2"
        gpt2_bpe = tokenizer.split("/")[-1].startswith("gpt2") and not config.get("train_tokenizer_vocab_size")
        if gpt2_bpe and all(config.get(key) == value for key, value in BUILD_NANOGPT_VALIDATION.items()):
            held_out = f"build-nanogpt's FineWeb-Edu validation shard, {held_out}"
            if limit == BUILD_NANOGPT_EVAL_BLOCKS:
                which += " (the 20 x 64 x 1,024 tokens its loop scores, where OpenAI's GPT-2 124M scores 3.2924)"
    elif config.get("validation_files"):
        held_out = "validation_files " + ", ".join(config["validation_files"])
    elif config.get("validation_documents"):
        held_out = f"the first {config['validation_documents']:,} training documents"
    else:
        held_out = (f"the validation split of {config.get('dataset_name')}, or else the first "
                    f"{config.get('validation_split_percentage', 5)}% of the training documents")
    return f"{held_out}: {which}, every token after the first predicted once"


def run_plan(settings, model) -> dict:
    """The arithmetic of a run: what one optimizer step is, how many there are, and what it costs on a named GPU
    (`dry_run_gpu`, `dry_run_num_gpus`, `dry_run_mfu`)."""
    training, block_size = settings.training, settings.data.block_size
    plan = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens_per_step": settings.tokens_per_step,
        "batch": (
            f"{training.per_device_train_batch_size} sequences x {training.gradient_accumulation_steps} accumulation "
            f"x {training.world_size} processes x {block_size} tokens"
        ),
        "steps": training.max_steps if training.max_steps > 0 else None,
        "flops_per_token": model_flops_per_token(model, block_size),
        "loss": (f"chunked cross-entropy, {model.config.loss_chunk_size} tokens a chunk" if model.config.loss_chunk_size
                 else "full logits"),
    }
    if plan["steps"] is not None:
        plan["total_tokens"] = plan["steps"] * plan["tokens_per_step"]
        gpu_flops = peak_flops(training.dry_run_gpu)
        num_gpus = training.dry_run_num_gpus or training.world_size
        if gpu_flops is not None:
            seconds = plan["total_tokens"] * plan["flops_per_token"] / (gpu_flops * training.dry_run_mfu * num_gpus)
            plan["estimate"] = (
                f"{seconds / 3600:.2f} h on {num_gpus} x {training.dry_run_gpu} at {training.dry_run_mfu:.0%} MFU"
            )
    return plan
