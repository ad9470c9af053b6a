"""Steady-state throughput of the data pipeline against (a) raw tiktoken + numpy packing and (b) run_clm.py's way.

Every measurement is a fresh process with an empty datasets cache, run over N copies of the Shakespeare corpus (one
document per file). The rate is marginal, (tokens(large) - tokens(small)) / (time(large) - time(small)), so process
start and imports (~5 s here) cancel out. Each repeat runs every pipeline on the small and then the large corpus,
back to back, and gives one marginal rate per pipeline; the table shows the median over repeats, which a burst of
load from another user of the machine moves less than it moves a single time. Memory is the peak anonymous
resident memory (RSS minus file-backed pages such as memory-mapped Arrow caches) summed over the process and its
workers, sampled every 20 ms; forked workers count the pages they share with their parent again, so compare it
between corpus sizes rather than across pipelines.

    python benchmarks/bench_data.py [--workers 2] [--copies 2 16] [--repeats 3]

The three pipelines, each with --workers processes, each ending with blocks of 1,024 tokens on disk:
  recipe     recipe.data: load, map(tokenize with tiktoken + eos), map(group with numpy), train/validation split
  tiktoken   (a) a multiprocessing.Pool encoding whole files with tiktoken, the ids appended to one file, reshaped
  run_clm    (b) transformers' examples/pytorch/language-modeling/run_clm.py: map(transformers tokenizer), then
             map(group by concatenating Python lists, labels stored as a copy), on the same documents

Then the prepared path (recipe.prepared), with 1 and with 2 workers, next to (a) with as many workers:
  prepared   recipe.data with prepared_dir: load, shards of ~1M tokens, each tokenized and packed into uint16 blocks
             by a pool of workers, checksummed, renamed, recorded in the manifest
and the rate at which training reads prepared blocks, in one process with one thread (a dataloader worker): random
batches of 64 blocks from open_prepared's train split through collate_blocks (what Trainer's dataloader does), next
to the same blocks read from a raw uint16 file with numpy.memmap and fancy indexing.
"""

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from itertools import chain
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS = REPO_ROOT / "data" / "shakespeare"
BLOCK_SIZE = 1024
PIPELINES = {"recipe": "recipe", "tiktoken": "tiktoken (a)", "run_clm": "run_clm (b)"}  # name -> label in the table
PREPARED_SHARD_TOKENS = 1_000_000  # ~3 shards at 2 copies, ~25 at 16: work for every worker
READ_BATCH = 64  # blocks per batch, as gpt2_124m.json's per_device_train_batch_size


# ---------------------------------------------------------------------------------------------------------------------
# The pipelines, each run in a child process; each returns the number of tokens it produced.


def run_recipe(corpus: Path, workers: int, output: Path) -> int:
    from recipe.args import DataArguments
    from recipe.pipeline import group_into_blocks, load_documents, summarize, tokenize_documents
    from recipe.tokenization import load_tokenizer

    data_args = DataArguments(train_files=[str(corpus)], block_size=BLOCK_SIZE, preprocessing_num_workers=workers)
    tokenized = tokenize_documents(load_documents(data_args), load_tokenizer(), data_args)
    return summarize(tokenized, group_into_blocks(tokenized, data_args))["tokens"]


def _prepared_args(corpus: Path, workers: int, output: Path):
    from recipe.args import DataArguments

    return DataArguments(train_files=[str(corpus)], block_size=BLOCK_SIZE, preprocessing_num_workers=workers,
                         prepared_dir=str(output / "prepared"), prepared_shard_tokens=PREPARED_SHARD_TOKENS)


def run_prepared(corpus: Path, workers: int, output: Path) -> int:
    from recipe.prepared import prepare_blocks
    from recipe.tokenization import load_tokenizer

    return prepare_blocks(_prepared_args(corpus, workers, output), load_tokenizer())["tokens"]


def read_rates(corpus: Path, output: Path, passes: int = 5) -> dict[str, float]:
    """Tokens/s of reading every prepared training block in random batches, in this process: through open_prepared +
    collate_blocks, and from a raw uint16 file of the same blocks with numpy.memmap. The two readers alternate, one
    pass each, `passes` times, after a warm-up pass each; the median pass counts."""
    import numpy as np
    import torch

    from recipe.pipeline import collate_blocks
    from recipe.prepared import open_prepared, prepare_blocks
    from recipe.tokenization import load_tokenizer

    args = _prepared_args(corpus, 2, output)
    prepare_blocks(args, load_tokenizer())
    blocks = open_prepared(args, load_tokenizer())["train"]
    raw_file = output / "blocks.bin"
    blocks[:]["input_ids"].tofile(raw_file)  # (blocks, block_size) uint16
    raw = np.memmap(raw_file, dtype=np.uint16, mode="r").reshape(-1, BLOCK_SIZE)  # (blocks, block_size)

    def read_prepared(indices):
        return collate_blocks(blocks.__getitems__(indices.tolist()))

    def read_raw(indices):
        input_ids = torch.from_numpy(raw[indices].astype(np.int64))  # (batch, block_size)
        return {"input_ids": input_ids, "labels": input_ids.clone()}

    readers = {"prepared": read_prepared, "raw": read_raw}
    rates = {name: [] for name in readers}
    threads = torch.get_num_threads()
    # One thread, as in a DataLoader worker process (torch sets it there): on a busy machine, a copy split over two
    # threads waits for a free core (measured here: ~10 ms per 512 KB label copy instead of 0.03 ms).
    torch.set_num_threads(1)
    for epoch in range(passes + 1):
        order = np.random.default_rng(epoch).permutation(len(blocks))
        for name, read in readers.items():
            tokens, start = 0, time.perf_counter()
            for first in range(0, len(order), READ_BATCH):
                tokens += read(order[first : first + READ_BATCH])["input_ids"].numel()
            if epoch:  # the first pass warms the page cache and the allocator
                rates[name].append(tokens / (time.perf_counter() - start))
    torch.set_num_threads(threads)
    return {name: statistics.median(values) for name, values in rates.items()}


def _encode_file(path: Path):
    import numpy as np

    from recipe.tokenization import GPT2_EOT_ID, gpt2_encoding

    tokens = gpt2_encoding().encode_to_numpy(path.read_text(encoding="utf-8"), disallowed_special=())
    return np.append(tokens, GPT2_EOT_ID).astype(np.int32)


def run_tiktoken(corpus: Path, workers: int, output: Path) -> int:
    import numpy as np

    from recipe.tokenization import gpt2_encoding

    gpt2_encoding()  # built once, before the fork, as a hand-written prepare script would
    count = 0
    with multiprocessing.Pool(workers) as pool, open(output / "tokens.bin", "wb") as sink:
        for tokens in pool.imap(_encode_file, sorted(corpus.glob("*.txt"))):
            sink.write(tokens.tobytes())
            count += len(tokens)
    ids = np.memmap(output / "tokens.bin", dtype=np.int32, mode="r")
    blocks = ids[: count // BLOCK_SIZE * BLOCK_SIZE].reshape(-1, BLOCK_SIZE)  # (blocks, block_size)
    np.save(output / "blocks.npy", blocks)
    return count


def run_run_clm(corpus: Path, workers: int, output: Path) -> int:
    import pyarrow.compute as pc
    from datasets import load_dataset

    from recipe.tokenization import gpt2_tokenizer

    tokenizer = gpt2_tokenizer()
    files = [str(path) for path in sorted(corpus.glob("*.txt"))]
    raw = {
        "train": load_dataset("text", data_files=files, sample_by="document", split="train[5%:]"),
        "validation": load_dataset("text", data_files=files, sample_by="document", split="train[:5%]"),
    }

    def tokenize(examples):
        return tokenizer(examples["text"])

    def group_texts(examples):
        joined = {key: list(chain(*examples[key])) for key in examples}
        usable = len(joined["input_ids"]) // BLOCK_SIZE * BLOCK_SIZE
        result = {key: [ids[i : i + BLOCK_SIZE] for i in range(0, usable, BLOCK_SIZE)] for key, ids in joined.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    count = 0
    for split, documents in raw.items():
        tokenized = documents.map(tokenize, batched=True, num_proc=workers, remove_columns=["text"])
        count += pc.sum(pc.list_value_length(tokenized.data.column("input_ids"))).as_py()  # counted without a copy
        tokenized.map(group_texts, batched=True, num_proc=workers)
    return count


# ---------------------------------------------------------------------------------------------------------------------
# Measuring


def make_corpus(directory: Path, copies: int) -> Path:
    """`copies` hard links (or copies) of every Shakespeare file: the same text, as more documents."""
    directory.mkdir(parents=True)
    for copy in range(copies):
        for path in sorted(CORPUS.glob("*.txt")):
            target = directory / f"{copy:03d}_{path.name}"
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    return directory


def _anonymous_memory(process) -> int:
    import psutil

    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            memory = member.memory_info()
            total += memory.rss - memory.shared
        except psutil.NoSuchProcess:
            pass
    return total


def measure(pipeline: str, corpus: Path, workers: int, scratch: Path) -> tuple[float, int, int]:
    """(seconds, tokens, peak anonymous bytes) of one fresh child process running `pipeline` over `corpus`."""
    import psutil

    output = Path(tempfile.mkdtemp(dir=scratch))
    environment = dict(
        os.environ,
        HF_DATASETS_CACHE=str(output / "cache"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    command = [sys.executable, __file__, "--child", pipeline, str(corpus), str(workers), str(output)]
    peak, done = 0, threading.Event()
    start = time.perf_counter()
    child = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample():
        nonlocal peak
        process = psutil.Process(child.pid)
        while not done.wait(0.02):
            try:
                peak = max(peak, _anonymous_memory(process))
            except psutil.NoSuchProcess:
                return

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"{pipeline} on {corpus} failed:\n{stderr[-3000:]}")
    shutil.rmtree(output)
    return seconds, json.loads(stdout.splitlines()[-1])["tokens"], peak


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )
    cpus = f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))})"
    return f"{cpus}, {model}, {platform.system()} {platform.release()}"


def versions() -> str:
    from importlib.metadata import version

    packages = ("datasets", "tiktoken", "transformers", "tokenizers", "pyarrow", "numpy")
    return ", ".join(f"{name} {version(name)}" for name in packages) + f", Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="processes for every pipeline (num_proc / Pool size)")
    parser.add_argument("--copies", type=int, nargs=2, default=(2, 16), help="the small and large corpus, in copies")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs per pipeline; the median rate counts")
    parser.add_argument("--child", nargs=4, metavar=("PIPELINE", "CORPUS", "WORKERS", "OUTPUT"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.child:
        pipeline, corpus, workers, output = arguments.child
        runner = {"recipe": run_recipe, "tiktoken": run_tiktoken, "run_clm": run_run_clm,
                  "prepared": run_prepared}[pipeline]
        print(json.dumps({"tokens": runner(Path(corpus), int(workers), Path(output))}))
        return

    load_before = os.getloadavg()
    small, large = arguments.copies
    # (pipeline, workers): the three pipelines with --workers, then prepared and (a) with 1 and 2 workers
    contenders = [(pipeline, arguments.workers) for pipeline in PIPELINES]
    contenders += [entry for entry in [("prepared", 1), ("tiktoken", 1), ("prepared", 2), ("tiktoken", 2)]
                   if entry not in contenders]
    runs = {entry: [] for entry in contenders}  # per repeat: (small result, large result), each (s, tokens, bytes)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        corpora = [make_corpus(scratch / f"copies-{copies}", copies) for copies in (small, large)]
        for _ in range(arguments.repeats):
            for pipeline, workers in contenders:
                pair = [measure(pipeline, corpus, workers, scratch) for corpus in corpora]
                runs[pipeline, workers].append(pair)
                for copies, (seconds, tokens, peak) in zip((small, large), pair):
                    print(f"# {pipeline:8} {workers} workers {copies:2} copies: {seconds:6.2f} s, {tokens:,} tokens, "
                          f"peak {peak / 2**20:,.0f} MiB", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=scratch) as output:
            reads = read_rates(corpora[1], Path(output))
    load_after = os.getloadavg()

    def marginal_rate(pair) -> float:
        (small_seconds, small_tokens, _), (large_seconds, large_tokens, _) = pair
        return (large_tokens - small_tokens) / (large_seconds - small_seconds)

    rates = {entry: statistics.median(marginal_rate(pair) for pair in pairs) for entry, pairs in runs.items()}
    print(f"Command: `python benchmarks/bench_data.py --workers {arguments.workers} "
          f"--copies {small} {large} --repeats {arguments.repeats}`  ")
    print(f"Machine: {machine()}  ")
    print(f"Date: {date.today().isoformat()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after  ")
    print(f"Versions: {versions()}\n")
    print(f"| pipeline ({arguments.workers} workers) | s, {small} copies | s, {large} copies "
          f"| marginal tokens/s | recipe's rate is | peak memory, {small} -> {large} copies |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    def seconds_and_peaks(pairs):
        seconds = [statistics.median(pair[index][0] for pair in pairs) for index in (0, 1)]
        return seconds, [max(pair[index][2] for pair in pairs) / 2**20 for index in (0, 1)]

    recipe = rates["recipe", arguments.workers]
    for pipeline in PIPELINES:
        (small_seconds, large_seconds), (small_peak, large_peak) = seconds_and_peaks(runs[pipeline, arguments.workers])
        rate = rates[pipeline, arguments.workers]
        print(f"| {PIPELINES[pipeline]} | {small_seconds:.2f} | {large_seconds:.2f} | {rate / 1e6:.2f} M "
              f"| {recipe / rate:.2f}x | {small_peak:,.0f} -> {large_peak:,.0f} MiB |")

    print(f"\n| prepare into prepared_dir | s, {small} copies | s, {large} copies | marginal tokens/s | per worker "
          f"| vs tiktoken (a), same workers | peak memory, {small} -> {large} copies |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for workers in (1, 2):
        (small_seconds, large_seconds), (small_peak, large_peak) = seconds_and_peaks(runs["prepared", workers])
        rate = rates["prepared", workers]
        print(f"| prepared, {workers} worker{'s' * (workers > 1)} | {small_seconds:.2f} | {large_seconds:.2f} "
              f"| {rate / 1e6:.2f} M | {rate / workers / 1e6:.2f} M | {rate / rates['tiktoken', workers]:.2f}x "
              f"| {small_peak:,.0f} -> {large_peak:,.0f} MiB |")

    print(f"\n| training-side read, one process, one thread, random batches of {READ_BATCH} x {BLOCK_SIZE} | tokens/s "
          f"| vs raw |")
    print("| --- | ---: | ---: |")
    print(f"| prepared: open_prepared + collate_blocks | {reads['prepared'] / 1e6:.1f} M "
          f"| {reads['prepared'] / reads['raw']:.2f}x |")
    print(f"| raw: numpy.memmap of uint16 + fancy indexing | {reads['raw'] / 1e6:.1f} M | 1.00x |")


if __name__ == "__main__":
    main()
