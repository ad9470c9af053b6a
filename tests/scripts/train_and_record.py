"""Train through recipe.train and record what THIS process read and trained on, in DUMP_DIR/rank<N>.json:

  trained   per micro-batch: [optimizer step it belongs to, its blocks as lists of ids]
  fetched   the indices this process fetched from a map-style dataset (datasets.Dataset.__getitems__)
  streamed  the blocks this process's own stream produced (a BlockStream), as lists of ids

and its final weights in DUMP_DIR/rank<N>.safetensors.
Usage (under any launcher): python train_and_record.py DUMP_DIR CONFIG.json [--key value ...]
"""

import json
import sys
from pathlib import Path

import datasets
from safetensors.torch import save_file

from recipe.args import parse_settings
from recipe.stream import BlockStream
from recipe.train import train
from recipe.trainer import GPTTrainer

record = {"trained": [], "fetched": [], "streamed": []}

original_step = GPTTrainer.training_step


def recording_step(self, model, inputs, num_items_in_batch=None):
    record["trained"].append([self.state.global_step + 1, inputs["input_ids"].tolist()])
    return original_step(self, model, inputs, num_items_in_batch)


original_getitems = datasets.Dataset.__getitems__


def recording_getitems(self, keys):
    if len(self) > 100:  # the training blocks, not the few evaluation blocks
        record["fetched"].extend(int(key) for key in keys)
    return original_getitems(self, keys)


original_iter = BlockStream.__iter__


def recording_iter(self):
    for block in original_iter(self):
        record["streamed"].append(block["input_ids"].tolist())
        yield block


GPTTrainer.training_step = recording_step
datasets.Dataset.__getitems__ = recording_getitems
BlockStream.__iter__ = recording_iter

dump_dir, config, *overrides = sys.argv[1:]
trainer = train(parse_settings(config, overrides))
rank = trainer.args.process_index
Path(dump_dir).mkdir(parents=True, exist_ok=True)
Path(dump_dir, f"rank{rank}.json").write_text(json.dumps(record))
state = {name: tensor.detach().contiguous() for name, tensor in trainer.model.state_dict().items()}
state.pop("lm_head.weight", None)  # tied to transformer.wte.weight
save_file(state, f"{dump_dir}/rank{rank}.safetensors")
