"""Resuming on prepared blocks costs the same at any step: launch-to-first-new-step when resuming at step 20 and
at step 2,000 of the same tiny run, and the one part of a resume that grows with the step, at the 10B run's size.

    python benchmarks/bench_resume.py [--repeats 5] [--steps 20 2000]

1. Prepares the bundled Shakespeare corpus into blocks of 32 tokens (recipe.data), trains a 1-layer, 32-wide GPT
   (batch 2, no evaluation) to the last of --steps, saving a checkpoint at each of them.
2. For each repeat and each step k (in alternating order), starts `python -m recipe.train` on a run directory that
   holds only checkpoint-k and measures the wall time from the launch to the end of step k + 1, the first new step.
3. Times what a resume at step k does that depends on k, at the 10B run's size (9.7M blocks of 1,024 tokens, 8
   processes x 64 blocks): accelerate's SkipBatchSampler enumerates the k x 8 batches of indices it skips (no data
   is read), after the epoch's permutation, which every resume draws whatever k is.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import header, table

REPO_ROOT = Path(__file__).resolve().parent.parent

TINY_RUN = {
    "train_files": [str(REPO_ROOT / "data" / "shakespeare")],
    "validation_documents": 2,
    "block_size": 32,
    "model_config": {"n_layer": 1, "n_embd": 32, "n_head": 4, "n_positions": 32},
    "per_device_train_batch_size": 2,
    "warmup_steps": 10,
    "learning_rate": 1e-3,
    "eval_strategy": "no",
    "save_strategy": "no",  # the child saves at --steps only (two checkpoints instead of a hundred)
    "logging_steps": 100,
    "sample_max_new_tokens": 0,
    "report_to": "none",
    "dataloader_num_workers": 0,
    "disable_tqdm": True,
    "seed": 0,
}


def child(mode: str, config: str, steps: list[int]) -> None:
    """In a fresh process: train with checkpoints at `steps` (mode "train"), or resume and report the time at the
    end of the first new step, then exit at once (mode "resume")."""
    from transformers import TrainerCallback

    from recipe.train import main
    from recipe.trainer import GPTTrainer

    class SaveAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_save = state.global_step in steps
            control.should_training_stop = state.global_step >= max(steps)

    class FirstNewStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            print(json.dumps({"first_new_step": state.global_step, "at": time.time()}), flush=True)
            os._exit(0)

    original_init = GPTTrainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(SaveAt() if mode == "train" else FirstNewStep())

    GPTTrainer.__init__ = init
    sys.exit(main([config]))


def run(command: list[str], environment: dict) -> str:
    result = subprocess.run(command, env=environment, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def skip_cost_at_scale(skip_steps: list[int], blocks: int = 9_700_000, processes: int = 8, batch: int = 64) -> list:
    """Seconds to the first batch after skipping k steps' batches, with accelerate's own samplers."""
    import torch
    from accelerate.data_loader import BatchSamplerShard, SeedableRandomSampler, SkipBatchSampler
    from torch.utils.data import BatchSampler

    rows = []
    for steps in skip_steps:
        start = time.perf_counter()
        sampler = SeedableRandomSampler(data_source=range(blocks), num_samples=blocks, generator=torch.Generator())
        sampler.set_epoch(0)
        shard = BatchSamplerShard(BatchSampler(sampler, batch, False), num_processes=processes, process_index=3)
        next(iter(SkipBatchSampler(shard, skip_batches=steps)))
        rows.append({"resume at step": f"{steps:,}", "s to the first batch": f"{time.perf_counter() - start:.2f}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 2000])
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CONFIG"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child(*arguments.child, arguments.steps)
        return

    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT),
                   "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    load_before = os.getloadavg()
    times = {steps: [] for steps in arguments.steps}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        environment["HF_DATASETS_CACHE"] = str(scratch / "datasets-cache")
        config = scratch / "tiny.json"
        settings = {**TINY_RUN, "prepared_dir": str(scratch / "prepared"), "output_dir": str(scratch / "trained"),
                    "max_steps": max(arguments.steps) + 10}
        config.write_text(json.dumps(settings))
        run([sys.executable, "-m", "recipe.data", str(config)], environment)
        steps_arguments = ["--steps", *map(str, arguments.steps)]
        started = time.perf_counter()
        run([sys.executable, __file__, "--child", "train", str(config), *steps_arguments], environment)
        print(f"# trained {max(arguments.steps)} steps in {time.perf_counter() - started:.0f} s", file=sys.stderr)

        for repeat in range(arguments.repeats):
            order = arguments.steps if repeat % 2 == 0 else arguments.steps[::-1]
            for steps in order:
                run_dir = scratch / f"resume-{steps}"
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir()
                shutil.copytree(scratch / "trained" / f"checkpoint-{steps}", run_dir / f"checkpoint-{steps}")
                shutil.copy(scratch / "trained" / "run_config.json", run_dir / "run_config.json")
                resume_config = scratch / f"resume-{steps}.json"
                resume_config.write_text(json.dumps({**settings, "output_dir": str(run_dir)}))
                launched = time.time()
                report = json.loads(run([sys.executable, __file__, "--child", "resume", str(resume_config),
                                         *steps_arguments], environment).strip().splitlines()[-1])
                assert report["first_new_step"] == steps + 1, report
                times[steps].append(report["at"] - launched)
                print(f"# resume at {steps}: {times[steps][-1]:.2f} s", file=sys.stderr)
    load_after = os.getloadavg()

    rows = [{"resume at step": f"{steps:,}", "median s, launch to end of first new step": f"{statistics.median(t):.2f}",
             "min - max s": f"{min(t):.2f} - {max(t):.2f}"} for steps, t in times.items()]
    first, last = (statistics.median(times[steps]) for steps in (arguments.steps[0], arguments.steps[-1]))
    argv = ["--repeats", str(arguments.repeats), *steps_arguments]
    print(header("Resume on prepared blocks: launch to first new step", " ".join(["python benchmarks/bench_resume.py",
                                                                                   *argv])))
    print(f"- load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    print(table(rows))
    print(f"\nresume at step {arguments.steps[-1]:,} vs {arguments.steps[0]:,}: {100 * (last / first - 1):+.1f}%\n")
    print("Skipping at the 10B run's size (9.7M blocks, 8 processes x 64): accelerate's SkipBatchSampler\n")
    print(table(skip_cost_at_scale([0, 2_000, 15_000])))


if __name__ == "__main__":
    main()
