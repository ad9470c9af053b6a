"""The arithmetic of a run's cost: training FLOPs per token and the peak FLOP/s of known GPUs (for MFU)."""

# Dense bf16 peak FLOP/s per device, from NVIDIA's datasheets (without sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIE": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def flops_per_token(config, parameters: int, seq_len: int) -> float:
    """Training FLOPs per token of a GPT with `parameters` parameters (tied head counted once): 6N for the matmuls
    with parameters (forward + backward) plus 12*L*H*Q*T for attention (PaLM, Chowdhery et al. 2022, appendix B;
    nanoGPT's estimate_mfu). N leaves out the position embedding, a lookup; the tied token embedding counts once,
    as the LM head's matmul."""
    matmul_parameters = parameters - config.n_positions * config.n_embd
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
