"""Prepared blocks (recipe.prepared) through the data command and training: tokenized once into uint16 shards, in
parallel and resumably, equal to the map pipeline's blocks, read by each process on its own, refused by name when
they disagree with a config or are damaged."""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import datasets
import numpy as np
import pytest
import torch
from datasets import Dataset, load_from_disk
from safetensors.torch import load_file

from helpers import (
    REPO_ROOT, SCRIPTS, SHAKESPEARE, VALIDATION_DOCUMENTS, damage_file, joined_ids, launch, one_error_line, recorded,
    scene_texts, tiny_config,
)
from recipe.args import DataArguments
from recipe.data import main as data_main
from recipe.errors import DataError
from recipe.pipeline import prepare_datasets, validation_blocks
from recipe import prepared
from recipe.prepared import (
    LOCK_FILE, MANIFEST_FILE, PARTIAL_SUFFIX, ShardWriter, open_prepared, prepare_blocks, token_type,
)
from recipe.tokenization import GPT2_EOT_ID, gpt2_encoding, load_tokenizer, train_bpe_tokenizer
from recipe.train import main as train_main

pytestmark = pytest.mark.usefixtures("datasets_cache")  # a fresh datasets cache for every test


def scene_args(scenes, prepared_dir, **overrides) -> DataArguments:
    settings = dict(train_files=[str(scenes)], validation_documents=VALIDATION_DOCUMENTS, block_size=64,
                    prepared_dir=str(prepared_dir))
    return DataArguments(**{**settings, **overrides})


def split_documents(split: str) -> list[str]:
    documents = scene_texts()
    return documents[:VALIDATION_DOCUMENTS] if split == "validation" else documents[VALIDATION_DOCUMENTS:]


def manifest_of(directory) -> dict:
    return json.loads((directory / MANIFEST_FILE).read_text())


def shard_files(directory) -> dict:
    """Every shard file of a prepared directory: relative path -> its bytes."""
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*.arrow"))}


@pytest.mark.parametrize("tokenizer_kind", ["gpt2", "trained"])
def test_one_shard_holds_exactly_the_map_pipelines_blocks(scenes, tmp_path, tokenizer_kind):
    tokenizer = load_tokenizer() if tokenizer_kind == "gpt2" else train_bpe_tokenizer([scene_texts()], 300)
    args = scene_args(scenes, tmp_path / "prepared")
    summary = prepare_blocks(args, tokenizer)
    prepared = open_prepared(args, tokenizer)
    mapped = prepare_datasets(args, tokenizer)

    assert summary["shards"] == 2  # one per split: the default shard holds ~100M tokens
    for split in ("train", "validation"):
        assert np.array_equal(prepared[split]["input_ids"], np.array(mapped[split]["input_ids"]))
    assert np.array_equal(prepared["validation"]["next_token"], np.array(mapped["validation"]["next_token"]))


def test_build_nanogpts_validation_tokens_are_the_first_tokens_of_the_stream_in_every_path(scenes, tmp_path):
    """validation_tokens=N: the first N tokens of build-nanogpt's stream (fineweb.py: an end-of-text token, then
    each document), as blocks that know their next token; training starts with the first document after them.
    The map pipeline, the prepared blocks (with several train shards) and recipe.evaluate's validation_blocks agree."""
    tokenizer, encoding = load_tokenizer(), gpt2_encoding()
    documents, wanted = scene_texts(), 5_000
    stream = [token for text in documents for token in [GPT2_EOT_ID, *encoding.encode_ordinary(text)]][:wanted]
    blocks = [stream[start : start + 64] for start in range(0, wanted - 64, 64)]  # each with a next token in stream
    starts = np.cumsum([0] + [1 + len(encoding.encode_ordinary(text)) for text in documents])
    first_training_document = int(np.count_nonzero(starts[:-1] < wanted))

    # Shards of 2,000 tokens: the validation stream stays one shard (it must start with its first document).
    args = replace(scene_args(scenes, tmp_path / "prepared", prepared_shard_tokens=2_000),
                   validation_documents=None, validation_tokens=wanted)
    mapped = prepare_datasets(args, tokenizer)
    assert mapped["validation"]["input_ids"] == blocks
    assert mapped["validation"]["next_token"] == [stream[start + 64] for start in range(0, wanted - 64, 64)]
    assert mapped["train"]["input_ids"][0] == joined_ids(documents[first_training_document:], tokenizer)[:64]

    summary = prepare_blocks(args, tokenizer)
    assert len(manifest_of(tmp_path / "prepared")["splits"]["validation"]["shards"]) == 1 < summary["shards"] - 1
    prepared = open_prepared(args, tokenizer)
    for column in ("input_ids", "next_token"):
        assert np.array_equal(prepared["validation"][column], np.array(mapped["validation"][column])), column
    assert np.array_equal(prepared["train"]["input_ids"][0], mapped["train"]["input_ids"][0])  # shard 0 starts there
    assert validation_blocks(args, tokenizer)["input_ids"] == blocks


def test_each_of_several_shards_holds_the_map_pipelines_blocks_of_its_documents(scenes, tmp_path):
    tokenizer = load_tokenizer()
    args = scene_args(scenes, tmp_path / "prepared", prepared_shard_tokens=5_000)
    prepare_blocks(args, tokenizer)
    manifest = manifest_of(tmp_path / "prepared")

    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) >= 5
    assert [shard["documents"][0] for shard in shards[1:]] == [shard["documents"][1] for shard in shards[:-1]]
    assert (shards[0]["documents"][0], shards[-1]["documents"][1]) == (0, len(split_documents("train")))
    for shard in shards:
        first, end = shard["documents"]
        expected = joined_ids(split_documents("train")[first:end], tokenizer)
        blocks = Dataset.from_file(str(tmp_path / "prepared" / "train" / shard["file"]))["input_ids"]
        assert [token for block in blocks for token in block] == expected[: len(blocks) * 64]
        assert len(expected) - len(blocks) * 64 < 64  # only the shard's final partial block is dropped
        assert shard["tokens"] == len(expected) and shard["blocks"] == len(blocks)

    prepared = open_prepared(args, tokenizer)["train"]
    assert len(prepared) == sum(shard["blocks"] for shard in shards)  # the shards, in order, are the split


def test_two_workers_write_the_same_files_as_one(scenes, tmp_path):
    tokenizer = load_tokenizer()
    one = scene_args(scenes, tmp_path / "one", prepared_shard_tokens=5_000)
    two = replace(one, prepared_dir=str(tmp_path / "two"), preprocessing_num_workers=2)
    prepare_blocks(one, tokenizer)
    prepare_blocks(two, tokenizer)
    assert shard_files(tmp_path / "one") == shard_files(tmp_path / "two")
    assert manifest_of(tmp_path / "one")["splits"] == manifest_of(tmp_path / "two")["splits"]
    assert manifest_of(tmp_path / "one")["fingerprint"] == manifest_of(tmp_path / "two")["fingerprint"]


def test_blocks_are_uint16_on_disk_about_2_bytes_a_token_and_load_from_disk_reads_them(tmp_path):
    args = DataArguments(train_files=[str(SHAKESPEARE)], validation_documents=2, block_size=1024,
                         prepared_dir=str(tmp_path / "prepared"))
    summary = prepare_blocks(args, load_tokenizer())
    blocks = load_from_disk(str(tmp_path / "prepared"))  # a DatasetDict, by datasets alone

    assert set(blocks) == {"train", "validation"}
    assert blocks["train"].features["input_ids"] == datasets.List(datasets.Value("uint16"), length=1024)
    tokens_in_blocks = (summary["train_blocks"] + summary["validation_blocks"]) * 1024
    on_disk = sum(path.stat().st_size for path in (tmp_path / "prepared").rglob("*.arrow"))
    assert on_disk == summary["bytes"]
    assert 2.0 <= on_disk / tokens_in_blocks < 2.01
    assert str(token_type(50_257)) == "uint16"
    assert str(token_type(100_277)) == "uint32"  # e.g. GPT-4's cl100k vocabulary


def test_dry_run_estimates_documents_tokens_disk_and_shards_and_writes_nothing(scenes, tmp_path, capsys):
    config = tmp_path / "config.json"
    settings = {"train_files": [str(scenes)], "validation_documents": VALIDATION_DOCUMENTS, "block_size": 64,
                "prepared_dir": str(tmp_path / "prepared"), "prepared_shard_tokens": 5_000,
                "output_dir": str(tmp_path / "run")}
    config.write_text(json.dumps(settings))
    assert data_main([str(config), "--dry_run", "--json"]) == 0
    estimate = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not (tmp_path / "prepared").exists()

    assert data_main([str(config), "--json"]) == 0
    prepared = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert estimate["documents"] == prepared["documents"] == len(scene_texts())
    assert estimate["shards"] == prepared["shards"]
    assert abs(estimate["estimated_tokens"] - prepared["tokens"]) <= 0.01 * prepared["tokens"]
    assert estimate["disk_bytes_needed"] == 2 * estimate["estimated_tokens"]
    assert estimate["disk_bytes_free"] > 0


def test_one_prepare_at_a_time_and_a_killed_one_resumes_without_redoing_finished_shards(scenes, tmp_path,
                                                                                          monkeypatch, capsys):
    """Two processes: a prepare with 2 workers hangs in shard 3; a second prepare of the directory stops at once,
    naming it and the first; after kill -9 of the first (its workers die with it, and the lock with them) a rerun
    resumes: finished shards verified and kept, the rest written, the files those of an uninterrupted prepare."""
    config = tmp_path / "config.json"
    settings = {"train_files": [str(scenes)], "validation_documents": VALIDATION_DOCUMENTS, "block_size": 64,
                "prepared_dir": str(tmp_path / "prepared"), "prepared_shard_tokens": 5_000,
                "output_dir": str(tmp_path / "run")}
    config.write_text(json.dumps(settings))
    directory, marker = tmp_path / "prepared", tmp_path / "hanging"
    environment = {**os.environ, "RECIPE_TEST_HANG_AT_SHARD": "3", "RECIPE_TEST_MARKER": str(marker),
                   "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    process = subprocess.Popen([sys.executable, str(SCRIPTS / "prepare_with_faults.py"), str(config),
                                "--preprocessing_num_workers", "2"],
                               cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)  # its own process group, for the clean-up below
    deadline = time.monotonic() + 120

    def finished() -> list[str]:
        return [shard["file"] for shard in manifest_of(directory)["splits"]["train"]["shards"] if "sha256" in shard]

    # Shard 3 starts once each worker has finished a shard; wait until the manifest records those two.
    while not marker.exists() or len(finished()) < 2:
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        with monkeypatch.context() as patch:  # it must stop before reading the corpus, so before writing anything
            patch.setattr(prepared, "survey", lambda *args: pytest.fail("the second prepare read the corpus"))
            assert data_main([str(config)]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"prepared_dir={directory} is being prepared by another process (pid {process.pid} on " in line
        assert json.loads((directory / LOCK_FILE).read_text())["pid"] == process.pid  # the lock file, as it was

        process.send_signal(signal.SIGKILL)
        process.wait()
        with open(directory / LOCK_FILE) as lock:  # free once the worker, killed with its parent, is gone
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    assert time.monotonic() < deadline, "the killed prepare's worker still holds the lock"
                    time.sleep(0.05)
    finally:  # whatever failed, no process of the first prepare outlives the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    splits = manifest_of(directory)["splits"]
    done = {directory / split / shard["file"] for split, entry in splits.items() for shard in entry["shards"]
            if "sha256" in shard}
    hung = directory / "train" / splits["train"]["shards"][3]["file"]
    assert hung not in done and len(done) >= 2 and hung.with_name(hung.name + PARTIAL_SUFFIX).exists()
    with pytest.raises(DataError, match=rf"is incomplete \({len(done)} of \d+ shards prepared\): run python -m "
                                        r"recipe.data"):
        open_prepared(DataArguments(**{k: v for k, v in settings.items() if k != "output_dir"}), load_tokenizer())
    kept = {path: path.stat() for path in done}

    written = []
    original_write = ShardWriter.write

    def counting_write(self, split, documents, first, end, path, report):
        written.append(path)
        return original_write(self, split, documents, first, end, path, report)

    monkeypatch.setattr(ShardWriter, "write", counting_write)
    assert data_main([str(config)]) == 0  # one worker: the writes are counted in this process
    every_shard = {directory / split / shard["file"]
                   for split, entry in manifest_of(directory)["splits"].items() for shard in entry["shards"]}
    assert sorted(written) == sorted(every_shard - done)
    for path, before in kept.items():  # the finished shards were verified and kept, not written again
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), path
    assert not list(directory.rglob(f"*{PARTIAL_SUFFIX}")) and not (directory / LOCK_FILE).exists()

    uninterrupted = scene_args(scenes, tmp_path / "uninterrupted", prepared_shard_tokens=5_000)
    prepare_blocks(uninterrupted, load_tokenizer())
    assert shard_files(directory) == shard_files(tmp_path / "uninterrupted")
    assert manifest_of(directory)["complete"]


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file or setting; nothing overwritten


def run_data(tmp_path, capsys, settings: dict, *arguments) -> tuple[int, str]:
    config = tmp_path / "data-config.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path / "run"), **settings}))
    status = data_main([str(config), *arguments])
    return status, capsys.readouterr().err


def modification_times(directory) -> dict:
    return {path: path.stat().st_mtime_ns for path in directory.rglob("*") if path.is_file()}


@pytest.fixture
def prepared_scenes(scenes, tmp_path):
    """Scenes prepared with block_size 64 into tmp_path/prepared; the settings, as a config's keys."""
    settings = {"train_files": [str(scenes)], "validation_documents": VALIDATION_DOCUMENTS, "block_size": 64,
                "prepared_dir": str(tmp_path / "prepared")}
    prepare_blocks(DataArguments(**settings), load_tokenizer())
    return settings


def test_a_config_that_disagrees_with_the_prepared_blocks_is_refused_by_setting(prepared_scenes, tmp_path, capsys):
    before = modification_times(tmp_path / "prepared")
    status, err = run_data(tmp_path, capsys, {**prepared_scenes, "block_size": 32})
    assert status == 2
    assert "holds blocks made with block_size=64, but this config gives block_size=32" in one_error_line(err)

    trained = train_bpe_tokenizer([scene_texts()], 300)
    trained.save_pretrained(tmp_path / "other-tokenizer")
    status, err = run_data(tmp_path, capsys, {**prepared_scenes, "tokenizer_name": str(tmp_path / "other-tokenizer")})
    assert status == 2
    assert "holds blocks made with tokenizer='gpt2'" in one_error_line(err) and "tokenizer_name" in err

    config = tiny_config(tmp_path, **{**prepared_scenes, "block_size": 32}, max_steps=2, warmup_steps=1)
    assert train_main([str(config)]) == 2
    assert "block_size=64, but this config gives block_size=32" in one_error_line(capsys.readouterr().err)
    assert modification_times(tmp_path / "prepared") == before


def test_a_corpus_that_changed_under_its_prepared_blocks_is_refused(scenes, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    shutil.copy(scenes, corpus)
    settings = {"train_files": [str(corpus)], "validation_documents": VALIDATION_DOCUMENTS, "block_size": 64,
                "prepared_dir": str(tmp_path / "prepared")}
    prepare_blocks(DataArguments(**settings), load_tokenizer())
    before = modification_times(tmp_path / "prepared")
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in scene_texts()[:-1]))  # one fewer
    status, err = run_data(tmp_path, capsys, settings)
    assert status == 2
    line = one_error_line(err)
    assert f"the train documents differ from those prepared_dir={tmp_path / 'prepared'} was prepared from" in line
    assert modification_times(tmp_path / "prepared") == before


def test_a_directory_that_is_not_prepared_is_never_written_into(scenes, tmp_path, capsys):
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "notes.txt").write_text("mine")
    settings = {"train_files": [str(scenes)], "validation_documents": VALIDATION_DOCUMENTS, "block_size": 64,
                "prepared_dir": str(tmp_path / "prepared")}
    status, err = run_data(tmp_path, capsys, settings)
    assert status == 2
    assert "holds files but no manifest.json, so it is not a prepared directory" in one_error_line(err)
    assert [path.name for path in (tmp_path / "prepared").iterdir()] == ["notes.txt"]

    short = tmp_path / "short.jsonl"  # refused after the lock is taken: the directories it made for it go too
    short.write_text("".join(json.dumps({"text": text}) + "\n" for text in ["To be.", "Or not."]))
    status, err = run_data(tmp_path, capsys, {**settings, "train_files": [str(short)], "validation_documents": 1,
                                              "prepared_dir": str(tmp_path / "new" / "prepared")})
    assert status == 2 and "fewer than block_size=64" in one_error_line(err)
    assert not (tmp_path / "new").exists()
    status, err = run_data(tmp_path, capsys, {**settings, "prepared_dir": str(short)})  # a file
    assert status == 2 and f"prepared_dir={short} cannot hold the lock file" in one_error_line(err)

    config = tiny_config(tmp_path, **{**settings, "prepared_dir": str(tmp_path / "nowhere")}, max_steps=2,
                         warmup_steps=1)
    assert train_main([str(config)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"prepared_dir={tmp_path / 'nowhere'} has not been prepared" in line and "python -m recipe.data" in line


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_shard_is_named_and_left_as_it_is(prepared_scenes, tmp_path, capsys, damage):
    shard = tmp_path / "prepared" / "train" / "data-00000-of-00001.arrow"
    damage_file(shard, damage)
    data = shard.read_bytes()
    before = modification_times(tmp_path / "prepared")

    status, err = run_data(tmp_path, capsys, prepared_scenes)
    assert status == 2
    line = one_error_line(err)
    assert line.startswith(f"error: {shard} ") and "damaged" in line and "Delete it" in line
    assert modification_times(tmp_path / "prepared") == before and shard.read_bytes() == data
    if damage == "truncate":  # training checks sizes only (a SHA-256 of 20 GB per launch would cost minutes)
        config = tiny_config(tmp_path, **prepared_scenes, max_steps=2, warmup_steps=1)
        assert train_main([str(config)]) == 2
        assert f"{shard} is {len(data):,} bytes, not the" in one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------------------------------
# Training on prepared blocks


def _final_weights(output_dir) -> dict:
    return load_file(output_dir / "model.safetensors")


def test_resuming_on_prepared_blocks_ends_with_the_same_weights(prepared_scenes, tmp_path):
    run = dict(prepared_scenes, max_steps=6, save_steps=3, warmup_steps=2, eval_strategy="no", sample_max_new_tokens=0)
    assert train_main([str(tiny_config(tmp_path, "whole", **run))]) == 0
    checkpoint = tmp_path / "whole" / "checkpoint-3"
    assert json.loads((checkpoint / "train_data.json").read_text())["fingerprint"] == (
        manifest_of(tmp_path / "prepared")["fingerprint"])
    assert "train_data.json" in (checkpoint / "checksums.sha256").read_text()

    (tmp_path / "resumed").mkdir()
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-3")
    shutil.copy(tmp_path / "whole" / "run_config.json", tmp_path / "resumed" / "run_config.json")
    assert train_main([str(tiny_config(tmp_path, "resumed", **run))]) == 0
    expected, actual = _final_weights(tmp_path / "whole"), _final_weights(tmp_path / "resumed")
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_a_resume_on_other_prepared_data_is_refused(scenes, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    shutil.copy(scenes, corpus)
    settings = {"train_files": [str(corpus)], "validation_documents": VALIDATION_DOCUMENTS, "block_size": 64}
    prepare_blocks(DataArguments(**settings, prepared_dir=str(tmp_path / "first")), load_tokenizer())
    run = dict(settings, max_steps=4, save_steps=2, warmup_steps=1, eval_strategy="no", sample_max_new_tokens=0)
    config = tiny_config(tmp_path, **run, prepared_dir=str(tmp_path / "first"))
    assert train_main([str(config)]) == 0
    shutil.rmtree(tmp_path / "run" / "checkpoint-4")  # as if the run had stopped after step 2
    capsys.readouterr()

    # The same settings, another corpus behind them, prepared into another directory (prepared_dir may move).
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in reversed(scene_texts())))
    prepare_blocks(DataArguments(**settings, prepared_dir=str(tmp_path / "second")), load_tokenizer())
    config = tiny_config(tmp_path, **run, prepared_dir=str(tmp_path / "second"))
    assert train_main([str(config)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'run' / 'checkpoint-2'} was trained on the prepared data" in line
    assert "resume on the data it was trained on" in line
    assert sorted(path.name for path in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]


@pytest.mark.slow
def test_two_processes_read_disjoint_prepared_blocks_that_make_the_one_process_steps(prepared_scenes, tmp_path):
    common = dict(prepared_scenes, max_steps=5, eval_strategy="no", save_strategy="no", sample_max_new_tokens=0,
                  per_device_train_batch_size=4, warmup_steps=1)
    launch("train_and_record.py", tmp_path / "one", tiny_config(tmp_path, "one", gradient_accumulation_steps=2,
                                                                **common))
    launch("train_and_record.py", tmp_path / "two", tiny_config(tmp_path, "two", **common), processes=2)

    one, ranks = recorded(tmp_path / "one", 0), [recorded(tmp_path / "two", rank) for rank in (0, 1)]
    fetched = [set(rank["fetched"]) for rank in ranks]
    assert fetched[0] and fetched[1] and not fetched[0] & fetched[1]  # each process reads its own blocks only
    for step in range(1, 6):
        single = sorted(map(tuple, (block for s, batch in one["trained"] if s == step for block in batch)))
        both = sorted(map(tuple, (block for rank in ranks for s, batch in rank["trained"] if s == step
                                  for block in batch)))
        assert len(set(single)) == 8 and both == single, f"step {step}"
    weights = [load_file(tmp_path / "two" / f"rank{rank}.safetensors") for rank in (0, 1)]
    reference = load_file(tmp_path / "one" / "rank0.safetensors")
    for name, tensor in reference.items():
        # measured 0 (AVX-512, AVX2): the same kernels on the same blocks, and gloo's sum of two is exact
        assert torch.equal(weights[0][name], weights[1][name]) and (weights[0][name] - tensor).abs().max() <= 1e-5
