"""Trainer overhead: GPTTrainer vs a bare PyTorch loop, same model, same batches, same optimiser and schedule.

    python benchmarks/bench_trainer.py --device cpu --shape small --batch 8 --seq 256 --steps 30

The bare loop is the floor: batches already on the device, no callbacks, no logging. The Trainer run is the
recipe's real path (dataloader, accumulation bookkeeping, NaN guard, logging every 10 steps). Both report the
median optimizer-step time after a warm-up; the two runs alternate in chunks so drift affects both.
"""

import argparse
import sys
import tempfile
import time

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback

from common import add_shape_arguments, median, print_report, timed, twin_models
from recipe.args import RecipeTrainingArguments
from recipe.optimization import create_schedule
from recipe.pipeline import collate_blocks
from recipe.trainer import GPTTrainer


class StepTimes(TrainerCallback):
    def __init__(self, device: str):
        self.device = device
        self.times: list[float] = []
        self.last = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now


def bare_loop(model, batches, steps: int, device: str, bf16: bool) -> list[float]:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)
    scheduler = create_schedule("gpt2_cosine", optimizer, warmup_steps=2, max_steps=steps,
                                lr_scheduler_kwargs={"min_lr_rate": 0.1})

    def step(input_ids):
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return [timed(lambda: step(batches[index % len(batches)]), device) for index in range(steps)]


def trainer_run(model, dataset, steps: int, args) -> list[float]:
    timer = StepTimes(args.device)
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = RecipeTrainingArguments(
            output_dir=output_dir, max_steps=steps, per_device_train_batch_size=args.batch, warmup_steps=2,
            logging_steps=10, eval_strategy="no", save_strategy="no", report_to=[], disable_tqdm=True,
            dataloader_num_workers=args.workers, use_cpu=not args.device.startswith("cuda"), bf16=args.bf16,
            seed=0,
        )
        trainer = GPTTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collate_blocks,
                             callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # the logs are computed as usual, only not printed over the table
        trainer.train()
    return timer.times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_arguments(parser, shape="small", batch=8, seq=256)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both runs")
    parser.add_argument("--workers", type=int, default=0, help="Trainer dataloader workers")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args(argv)

    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 50257, (args.batch * args.steps, args.seq), generator=generator)
    dataset = Dataset.from_dict({"input_ids": blocks.tolist()})
    batches = [blocks[i : i + args.batch].to(args.device) for i in range(0, len(blocks), args.batch)]
    warmup = 3
    bare_times, trainer_times = [], []
    for _ in range(args.rounds):
        model, _ = twin_models(args.shape, args.seq, args.device)
        bare_times += bare_loop(model, batches, args.steps, args.device, args.bf16)[warmup:]
        model, _ = twin_models(args.shape, args.seq, args.device)
        trainer_times += trainer_run(model, dataset, args.steps, args)[warmup:]

    tokens = args.batch * args.seq
    rows = [{"loop": name, "step (ms)": f"{median(times) * 1e3:.1f}", "tokens/s": f"{tokens / median(times):,.0f}"}
            for name, times in (("bare PyTorch", bare_times), ("GPTTrainer", trainer_times))]
    overhead = median(trainer_times) / median(bare_times) - 1
    rows.append({"loop": "Trainer overhead", "step (ms)": "", "tokens/s": f"**{overhead:+.1%}**"})
    print_report("Trainer vs a bare PyTorch loop", argv,
                 f"shape {args.shape}, batch {args.batch} x {args.seq} tokens, {args.rounds} rounds x {args.steps} "
                 f"steps (first {warmup} of each dropped), median step", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
