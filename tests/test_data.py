"""The data pipeline (recipe.pipeline) and its command (recipe.data): documents -> tokens + separators -> blocks, cached, multi-process and streamed."""

import json
from dataclasses import replace

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken
import torch
from helpers import SHAKESPEARE, VALIDATION_DOCUMENTS, joined_ids, scene_texts
from datasets import IterableDataset

import recipe.pipeline
from recipe.args import DataArguments
from recipe.data import main
from recipe.errors import ConfigError, DataError
from recipe.pipeline import (
    collate_blocks,
    group_into_blocks,
    load_documents,
    load_or_train_tokenizer,
    prepare_datasets,
    resolve_data_files,
    tokenize_documents,
)
from recipe.tokenization import GPT2_EOT_ID, is_gpt2_bpe, load_tokenizer, train_bpe_tokenizer

pytestmark = pytest.mark.usefixtures("datasets_cache")  # a fresh datasets cache for every test


@pytest.fixture(scope="module")
def trained_tokenizer():
    """A small byte-level BPE: a tokenizer that is not GPT-2's, so the pipeline uses transformers, not tiktoken."""
    return train_bpe_tokenizer([scene_texts()], vocab_size=300)


def scene_args(scenes, **overrides) -> DataArguments:
    settings = dict(train_files=[str(scenes)], validation_documents=VALIDATION_DOCUMENTS, block_size=64)
    return DataArguments(**{**settings, **overrides})


@pytest.mark.parametrize("block_size", [64, 10_000])  # 10,000 > the tokens of a batch: batches that end no block
@pytest.mark.parametrize("tokenizer_kind", ["gpt2", "trained"])
def test_blocks_are_the_documents_joined_with_separators(scenes, trained_tokenizer, tokenizer_kind, block_size):
    tokenizer = load_tokenizer() if tokenizer_kind == "gpt2" else trained_tokenizer
    blocks = prepare_datasets(scene_args(scenes, block_size=block_size), tokenizer)

    documents = scene_texts()
    held_out = {"validation": documents[:VALIDATION_DOCUMENTS], "train": documents[VALIDATION_DOCUMENTS:]}
    for split, split_documents in held_out.items():
        expected = joined_ids(split_documents, tokenizer)
        assert expected.count(tokenizer.eos_token_id) == len(split_documents)  # separators only where appended
        rows = blocks[split]["input_ids"]
        assert len(rows) > 0 and all(len(row) == block_size for row in rows)
        assert [token for row in rows for token in row] == expected[: len(rows) * block_size]
        # Validation blocks carry the token after each, so that evaluation predicts every token once.
        held = split == "validation"
        assert blocks[split].column_names == ["input_ids", "next_token"] if held else ["input_ids"]
        if held:
            assert blocks[split]["next_token"] == expected[block_size : len(rows) * block_size + 1 : block_size]
        assert len(expected) - len(rows) * block_size < block_size + held  # only the final partial block is dropped


def test_a_document_is_a_txt_file_or_a_json_or_parquet_row(tmp_path):
    documents = scene_texts()[:12]
    (tmp_path / "txt").mkdir()
    for index, text in enumerate(documents):
        (tmp_path / "txt" / f"{index:02d}.txt").write_text(text)
    (tmp_path / "scenes.json").write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
    pq.write_table(pa.table({"text": documents}), tmp_path / "scenes.parquet")

    tokenizer = load_tokenizer()
    expected = joined_ids(documents[2:], tokenizer)
    for source in ("txt", "scenes.json", "scenes.parquet"):
        args = DataArguments(train_files=[str(tmp_path / source)], validation_documents=2, block_size=32)
        rows = prepare_datasets(args, tokenizer)["train"]["input_ids"]
        assert [token for row in rows for token in row] == expected[: len(rows) * 32], source


def test_data_files_are_files_directories_or_globs_of_one_format(tmp_path):
    plays = sorted(SHAKESPEARE.glob("*.txt"))
    assert resolve_data_files([str(SHAKESPEARE)], "train_files") == plays  # README.md is not a document
    assert resolve_data_files([str(SHAKESPEARE / "h*.txt")], "train_files") == [p for p in plays if p.name[0] == "h"]

    (tmp_path / "rows.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(DataError, match="mixes formats"):
        resolve_data_files([str(plays[0]), str(tmp_path / "rows.jsonl")], "train_files")
    with pytest.raises(DataError, match="README.md is not a"):
        resolve_data_files([str(SHAKESPEARE / "*")], "train_files")


def test_two_worker_processes_give_the_same_dataset_as_one(scenes, tmp_path, monkeypatch):
    tokenizer = load_tokenizer()
    args = scene_args(scenes)
    one_process = prepare_datasets(args, tokenizer)

    # A cache of its own: datasets would reuse the one-process cache files, whatever num_proc says.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "two-process-cache")
    args = replace(args, preprocessing_num_workers=2)
    tokenized = tokenize_documents(load_documents(args), tokenizer, args)
    assert all(len(split.cache_files) == 2 for split in tokenized.values())  # each process wrote its shard
    two_processes = group_into_blocks(tokenized, args)
    for split in ("train", "validation"):
        assert two_processes[split]["input_ids"] == one_process[split]["input_ids"]


def test_streaming_gives_the_same_blocks_as_map():
    plays = [str(SHAKESPEARE / name) for name in ("sonnets_gut.txt", "macbeth_gut.txt", "tempest_gut.txt")]
    args = DataArguments(train_files=plays, validation_documents=1, block_size=256, max_train_samples=50)
    tokenizer = load_tokenizer()
    mapped = prepare_datasets(args, tokenizer)
    streamed = prepare_datasets(replace(args, streaming=True), tokenizer)

    assert len(mapped["train"]) == 50
    for split in ("train", "validation"):
        assert isinstance(streamed[split], IterableDataset)
        assert streamed[split].column_names == mapped[split].column_names
        first_pass = list(streamed[split])
        assert first_pass == list(mapped[split])
        assert list(streamed[split]) == first_pass  # a second pass starts afresh


def test_second_run_reuses_the_cache_and_tokenizes_nothing(scenes, datasets_cache, monkeypatch):
    args = scene_args(scenes)
    first = prepare_datasets(args, load_tokenizer())
    cache_files = {path: path.stat().st_mtime_ns for path in datasets_cache.rglob("*.arrow")}

    def tokenize_again(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(tiktoken.Encoding, "encode_to_numpy", tokenize_again)
    second = prepare_datasets(args, load_tokenizer())
    assert {path: path.stat().st_mtime_ns for path in datasets_cache.rglob("*.arrow")} == cache_files
    for split in ("train", "validation"):
        assert second[split].cache_files == first[split].cache_files
        assert second[split]["input_ids"] == first[split]["input_ids"]

    with pytest.raises(AssertionError, match="tokenized again"):  # the patch does catch a tokenization
        prepare_datasets(replace(args, overwrite_cache=True), load_tokenizer())
    assert not [path for path in datasets_cache.rglob("tmp*")]  # and the interrupted map left no partial file


def test_cache_is_reused_with_a_transformers_tokenizer(scenes, trained_tokenizer, datasets_cache, tmp_path):
    trained_tokenizer.save_pretrained(tmp_path / "tokenizer")
    args = scene_args(scenes)
    first = prepare_datasets(args, load_tokenizer(tmp_path / "tokenizer"))
    cache_files = {path: path.stat().st_mtime_ns for path in datasets_cache.rglob("*.arrow")}
    second = prepare_datasets(args, load_tokenizer(tmp_path / "tokenizer"))  # loaded again: same fingerprint
    assert {path: path.stat().st_mtime_ns for path in datasets_cache.rglob("*.arrow")} == cache_files
    assert second["train"].cache_files == first["train"].cache_files


def test_max_samples_cap_the_blocks_of_each_split(scenes):
    blocks = prepare_datasets(scene_args(scenes, max_train_samples=7, max_eval_samples=3), load_tokenizer())
    assert (len(blocks["train"]), len(blocks["validation"])) == (7, 3)


def test_collate_blocks_gives_long_input_ids_and_the_same_ids_as_labels(scenes):
    blocks = prepare_datasets(scene_args(scenes), load_tokenizer())["train"]
    batch = collate_blocks([blocks[0], blocks[1], blocks[2]])
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"].shape == (3, 64)
    assert batch["input_ids"][1].tolist() == blocks[1]["input_ids"]
    assert torch.equal(batch["labels"], batch["input_ids"])
    numpy_rows = list(blocks.with_format("numpy").select(range(3)))
    assert torch.equal(collate_blocks(numpy_rows)["input_ids"], batch["input_ids"])


def test_trained_tokenizer_is_saved_with_the_run_and_reused(scenes, tmp_path, monkeypatch):
    args = scene_args(scenes, train_tokenizer_vocab_size=300)
    tokenizer = load_or_train_tokenizer(args, tmp_path / "run")
    assert len(tokenizer) == 300
    assert tokenizer.eos_token == "<|endoftext|>"
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()

    def train_again(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(recipe.pipeline, "train_bpe_tokenizer", train_again)
    assert load_or_train_tokenizer(args, tmp_path / "run").get_vocab() == tokenizer.get_vocab()


def test_without_a_vocab_size_the_run_uses_gpt2_and_trains_nothing(scenes, tmp_path):
    tokenizer = load_or_train_tokenizer(scene_args(scenes), tmp_path / "run")
    assert is_gpt2_bpe(tokenizer) and tokenizer.eos_token_id == GPT2_EOT_ID
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The CLI, and bad input: one line on stderr, exit status 2, no traceback, no partial cache


def run_cli(tmp_path, capsys, settings: dict, *arguments: str) -> tuple[int, str, str]:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path / "run"), **settings}))
    status = main([str(config), *arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_prints_the_summary_with_json_on_the_last_line(scenes, tmp_path, capsys):
    settings = {"train_files": [str(scenes)], "validation_documents": VALIDATION_DOCUMENTS, "block_size": 64}
    status, out, _ = run_cli(tmp_path, capsys, settings, "--json", "--block_size", "128")
    assert status == 0
    summary = json.loads(out.strip().splitlines()[-1])

    tokenizer = load_tokenizer()
    blocks = prepare_datasets(scene_args(scenes, block_size=128), tokenizer)
    assert summary == {
        "documents": len(scene_texts()),
        "tokens": len(joined_ids(scene_texts(), tokenizer)),
        "train_blocks": len(blocks["train"]),
        "validation_blocks": len(blocks["validation"]),
        "block_size": 128,
    }
    status, out, _ = run_cli(tmp_path, capsys, settings, "--block_size", "128")
    assert status == 0
    assert out.split() == [item for key, value in summary.items() for item in (key, f"{value:,}")]


def missing_file(tmp_path):
    path = tmp_path / "nowhere" / "play.txt"
    return {"train_files": [str(path)]}, f"train_files: {path} does not exist"


def not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Café au lait, ô Roméo".encode("latin-1"))
    return {"train_files": [str(path)]}, f"train_files: {path} is not UTF-8 text"


def not_utf8_json(tmp_path):  # pyarrow's json reader would store the invalid bytes without a word
    path = tmp_path / "rows.jsonl"
    path.write_bytes('{"text": "Café au lait"}\n'.encode("latin-1"))
    return {"train_files": [str(path)], "validation_documents": 1}, f"train_files: {path} is not UTF-8 text"


def empty_corpus(tmp_path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("")
    return {"train_files": [str(tmp_path / "*.txt")], "validation_documents": 1}, "train_files is empty"


def shorter_than_a_block(tmp_path):
    (tmp_path / "train.txt").write_text("To be, or not to be: that is the question.")
    (tmp_path / "validation.txt").write_text("Whether 'tis nobler in the mind to suffer")
    tokens = len(load_tokenizer()("To be, or not to be: that is the question.")["input_ids"]) + 1  # + separator
    settings = {"train_files": [str(tmp_path / "train.txt")], "validation_files": [str(tmp_path / "validation.txt")]}
    return settings, f"the train split has {tokens} tokens, fewer than block_size=1024"


def unknown_text_column(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"body": "Now is the winter"}\n{"body": "of our discontent"}\n')
    settings = {"train_files": [str(tmp_path / "rows.jsonl")], "validation_documents": 1}
    return settings, "text_column='text' is not a column of train_files; its columns are ['body']"


def rows_without_text(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"text": "Now is the winter"}\n{"title": "Richard III"}\n{"text": "of our"}\n')
    settings = {"train_files": [str(tmp_path / "rows.jsonl")], "validation_documents": 1}
    return settings, "train_files: 1 of its 3 rows have no 'text'"


def hub_dataset_offline(tmp_path):
    settings = {"dataset_name": "HuggingFaceFW/fineweb-edu", "dataset_config_name": "sample-10BT"}
    return settings, "dataset_name='HuggingFaceFW/fineweb-edu' needs the Hugging Face Hub", "use local files instead"


@pytest.mark.parametrize(
    "bad_input",
    [missing_file, not_utf8, not_utf8_json, empty_corpus, shorter_than_a_block, unknown_text_column,
     rows_without_text, hub_dataset_offline],
)
def test_bad_input_is_one_line_on_stderr_and_leaves_no_partial_cache(bad_input, tmp_path, capsys, datasets_cache):
    settings, *messages = bad_input(tmp_path)
    status, out, err = run_cli(tmp_path, capsys, settings)
    assert status == 2
    assert out == ""
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and all(message in last_line for message in messages)
    assert "Traceback" not in err
    leftovers = [p for p in datasets_cache.rglob("*") if p.name.startswith("tmp") or p.name.endswith(".incomplete")]
    assert leftovers == []


def test_streaming_without_validation_documents_is_refused_by_the_settings(scenes):
    with pytest.raises(ConfigError, match="streaming=true needs validation_documents"):
        DataArguments(train_files=[str(scenes)], streaming=True)


def test_unknown_column_of_a_stream_is_named(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"body": "Now is the winter"}\n{"body": "of our discontent"}\n')
    args = DataArguments(train_files=[str(tmp_path / "rows.jsonl")], validation_documents=1, streaming=True)
    with pytest.raises(DataError, match=r"its columns are \['body'\]"):
        load_documents(args)

