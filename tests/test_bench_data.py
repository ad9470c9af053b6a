"""benchmarks/bench_data.py: its three pipelines do the same work, and RESULTS.md records both of its ratios."""

import importlib.util
import re
import sys

import datasets
from helpers import REPO_ROOT

BENCHMARK = REPO_ROOT / "benchmarks" / "bench_data.py"


def load_benchmark(monkeypatch):
    """The script as a module, registered in sys.modules so that its Pool can pickle its functions."""
    spec = importlib.util.spec_from_file_location("bench_data", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_data", module)
    spec.loader.exec_module(module)
    return module


def test_the_three_pipelines_tokenize_the_same_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    works = sorted((REPO_ROOT / "data" / "shakespeare").glob("*.txt"), key=lambda path: path.stat().st_size)
    shortest = works[:20]  # 5% of them is one validation document
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for work in shortest:
        (corpus / work.name).symlink_to(work)

    bench = load_benchmark(monkeypatch)
    recipe_tokens = bench.run_recipe(corpus, 1, tmp_path)
    tiktoken_tokens = bench.run_tiktoken(corpus, 1, tmp_path)
    run_clm_tokens = bench.run_run_clm(corpus, 1, tmp_path)
    prepared_tokens = bench.run_prepared(corpus, 2, tmp_path)
    assert recipe_tokens == tiktoken_tokens == prepared_tokens  # the same ids, one separator per document
    assert run_clm_tokens == tiktoken_tokens - len(shortest)  # run_clm.py appends no separator

    reads = bench.read_rates(corpus, tmp_path / "reads", passes=1)  # both readers run on the same blocks
    assert set(reads) == {"prepared", "raw"} and min(reads.values()) > 0


def test_results_record_both_ratios():
    section = (REPO_ROOT / "benchmarks" / "RESULTS.md").read_text().split("## Data pipeline", 1)[1]
    ratios = dict(re.findall(r"^\| (tiktoken \(a\)|run_clm \(b\)) \|.*\| ([\d.]+)x \|", section, re.MULTILINE))
    assert set(ratios) == {"tiktoken (a)", "run_clm (b)"}
