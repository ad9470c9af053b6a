"""Streaming for training (recipe.stream): each process packs its own documents into blocks, and a checkpoint's
stream position continues exactly where the run stopped, without replaying the stream."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from helpers import launch, one_error_line, recorded, tiny_config
from recipe.args import DataArguments, parse_settings
from recipe.errors import ConfigError
from recipe import GPTConfig, GPTForCausalLM
from recipe.pipeline import prepare_datasets, stream_datasets
from recipe.scoring import evaluate_perplexity
from recipe.tokenization import GPT2_EOT_ID, gpt2_encoding, load_tokenizer, token_byte_counts
from recipe.train import main as train_main

pytestmark = pytest.mark.usefixtures("datasets_cache")  # a fresh datasets cache for every test


def stream_args(scenes, **overrides) -> DataArguments:
    return DataArguments(**{"train_files": [str(scenes)], "validation_documents": 10, "block_size": 64,
                            "streaming": True, **overrides})


def blocks_of(stream) -> list[list[int]]:
    return [block["input_ids"].tolist() for block in stream]


def test_one_process_stream_gives_the_map_pipelines_blocks(scenes):
    args = stream_args(scenes)
    streamed = blocks_of(stream_datasets(args, load_tokenizer(), 0, 1)["train"])
    assert streamed == prepare_datasets(replace(args, streaming=False), load_tokenizer())["train"]["input_ids"]


@pytest.mark.parametrize("max_train_samples", [None, 300])
def test_a_stream_restored_at_any_block_continues_where_it_stopped(scenes, max_train_samples):
    args = stream_args(scenes, max_train_samples=max_train_samples)
    tokenizer = load_tokenizer()
    whole = blocks_of(stream_datasets(args, tokenizer, 0, 1)["train"])
    assert len(whole) == (max_train_samples or len(whole))
    skipped_into_a_document = []
    for stop_after in [0, 1, *range(5, len(whole), 97), len(whole) - 1]:
        stream = stream_datasets(args, tokenizer, 0, 1)["train"]
        blocks = iter(stream)
        for _ in range(min(stop_after + 3, len(whole))):  # run ahead, as a prefetching loader does
            next(blocks)
        stream.mark_consumed(stop_after)
        position = json.loads(json.dumps(stream.position()))  # as a checkpoint stores it
        skipped_into_a_document.append(position["skip_tokens"] > 0)

        restored = stream_datasets(args, tokenizer, 0, 1)["train"]
        restored.load_position(position)
        assert blocks_of(restored) == whole[stop_after:], f"restored after {stop_after} blocks"
    assert any(skipped_into_a_document) and not all(skipped_into_a_document)  # mid-document and at a boundary


def test_streaming_settings_are_checked_before_any_work(scenes, tmp_path):
    with pytest.raises(ConfigError, match="set prepared_dir .* or streaming .*, not both"):
        stream_args(scenes, prepared_dir=str(tmp_path / "prepared"))
    config = tiny_config(tmp_path, streaming=True, validation_documents=1, dataloader_num_workers=2)
    with pytest.raises(ConfigError, match="set dataloader_num_workers=0"):
        parse_settings(config, [])


# ---------------------------------------------------------------------------------------------------------------------
# Two processes: each streams its own documents, and a resume continues each stream where it stood


def one_block_documents(count: int) -> list[str]:
    """Documents of exactly 31 GPT-2 tokens (32 with the separator): one block of 32 each, naming its number."""
    encoding, documents = gpt2_encoding(), []
    for number in range(count):
        text = f"Document {number}:"
        text += " a" * (31 - len(encoding.encode_ordinary(text)))
        assert len(encoding.encode_ordinary(text)) == 31
        documents.append(text)
    return documents


def documents_by_step(record: dict, block_ids: dict) -> dict[int, list[int]]:
    """The document numbers one process trained on at each optimizer step, in order."""
    steps = {}
    for step, batch in record["trained"]:
        steps.setdefault(step, []).extend(block_ids[tuple(block)] for block in batch)
    return steps


@pytest.mark.slow
def test_two_processes_stream_disjoint_documents_and_resume_each_stream_exactly(tmp_path, capsys):
    documents = one_block_documents(200)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in documents[:160]))
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in documents[160:]))
    encoding = gpt2_encoding()
    block_ids = {(*encoding.encode_ordinary(text), GPT2_EOT_ID): number for number, text in enumerate(documents)}
    # One validation block for two processes: each reads its own share of the streamed split (one gets none), and
    # the evaluation is that of one process.
    run = dict(train_files=[str(tmp_path / "train.jsonl")], validation_files=[str(tmp_path / "validation.jsonl")],
               streaming=True, block_size=32, model_config={"n_layer": 1, "n_embd": 32, "n_head": 4, "n_positions": 32},
               per_device_train_batch_size=2, max_steps=6, save_steps=3, warmup_steps=1, eval_steps=3,
               sample_max_new_tokens=0, max_eval_samples=1)
    whole_config = tiny_config(tmp_path, "whole", **run)
    launch("train_and_record.py", tmp_path / "whole-record", whole_config, processes=2)
    whole = [recorded(tmp_path / "whole-record", rank) for rank in (0, 1)]
    evaluated = json.loads((tmp_path / "whole" / "eval_results.json").read_text())
    model = GPTForCausalLM(GPTConfig(**run["model_config"], make_vocab_size_divisible_by=64))
    model.load_state_dict(load_file(tmp_path / "whole-record" / "rank0.safetensors"), strict=False)
    validation = prepare_datasets(replace(parse_settings(whole_config, []).data, streaming=False), load_tokenizer())
    alone = evaluate_perplexity(model.eval(), validation["validation"], token_byte_counts(load_tokenizer()))
    assert alone["n"] == 1
    assert evaluated["eval_loss"] == pytest.approx(alone["loss"], rel=1e-6)
    assert evaluated["eval_bpb"] == pytest.approx(alone["bpb"], rel=1e-6)

    trained = [documents_by_step(record, block_ids) for record in whole]
    for rank in (0, 1):
        in_order = [number for step in range(1, 7) for number in trained[rank][step]]
        assert in_order == list(range(rank, 24, 2))  # its own documents (split_dataset_by_node), none twice or skipped
        streamed = [block_ids[tuple(block)] for block in whole[rank]["streamed"]]
        assert streamed[: len(in_order)] == in_order  # read from its own stream: nothing dispatched by rank 0
    checkpoint = tmp_path / "whole" / "checkpoint-3"
    for rank in (0, 1):
        position = json.loads((checkpoint / f"stream_position_{rank}.json").read_text())
        assert (position["process"], position["processes"], position["blocks"]) == (rank, 2, 6)
        assert f"stream_position_{rank}.json" in (checkpoint / "checksums.sha256").read_text()

    # The same run, as if it had died right after saving checkpoint-3.
    (tmp_path / "resumed").mkdir()
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-3")
    shutil.copy(tmp_path / "whole" / "run_config.json", tmp_path / "resumed" / "run_config.json")
    resumed_config = tiny_config(tmp_path, "resumed", **run)
    launch("train_and_record.py", tmp_path / "resumed-record", resumed_config, processes=2)
    for rank in (0, 1):
        resumed = documents_by_step(recorded(tmp_path / "resumed-record", rank), block_ids)
        assert resumed == {step: trained[rank][step] for step in (4, 5, 6)}, f"process {rank}"
    expected, actual = (load_file(tmp_path / name / "rank0.safetensors") for name in ("whole-record", "resumed-record"))
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name

    # One process cannot take over the streams of two.
    shutil.rmtree(tmp_path / "resumed")
    (tmp_path / "resumed").mkdir()
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-3")
    shutil.copy(tmp_path / "whole" / "run_config.json", tmp_path / "resumed" / "run_config.json")
    capsys.readouterr()
    assert train_main([str(resumed_config)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "checkpoint-3 was saved by 2 processes and this launch has 1 process: resume it with the launch" in line
