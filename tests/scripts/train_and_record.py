"""Train through recipe.train and record what THIS process read and trained on, in DUMP_DIR/rank<N>.json:

  trained   per micro-batch: [optimizer step it belongs to, its blocks as lists of ids]
  losses    per micro-batch: [optimizer step, the loss Trainer's training_step returned (its share of the step)]
  steps     per optimizer step: [step, gradient norm (before clipping), learning rate applied by the step]
  fetched   the indices this process fetched from a map-style dataset (datasets.Dataset.__getitems__)
  streamed  the blocks this process's own stream produced (a BlockStream), as lists of ids

and its initial and final weights in DUMP_DIR/rank<N>-initial.safetensors and DUMP_DIR/rank<N>.safetensors.
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

record = {"trained": [], "losses": [], "steps": [], "fetched": [], "streamed": []}
dump_dir, config, *overrides = sys.argv[1:]


def weights(model) -> dict:
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied to transformer.wte.weight
    return state


original_train = GPTTrainer.train


def recording_train(self, *args, **kwargs):
    Path(dump_dir).mkdir(parents=True, exist_ok=True)
    save_file(weights(self.model), f"{dump_dir}/rank{self.args.process_index}-initial.safetensors")
    return original_train(self, *args, **kwargs)


original_step = GPTTrainer.training_step


def recording_step(self, model, inputs, num_items_in_batch=None):
    step = self.state.global_step + 1
    record["trained"].append([step, inputs["input_ids"].tolist()])
    loss = original_step(self, model, inputs, num_items_in_batch)
    record["losses"].append([step, loss.item()])
    return loss


original_grad_norm = GPTTrainer._get_grad_norm


def recording_grad_norm(self, model, grad_norm=None):
    grad_norm = original_grad_norm(self, model, grad_norm)
    rate = self.optimizer.param_groups[0]["lr"]  # set by the scheduler for this step; optimizer.step() comes next
    record["steps"].append([self.state.global_step + 1, float(grad_norm), rate])
    return grad_norm


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


GPTTrainer.train = recording_train
GPTTrainer.training_step = recording_step
GPTTrainer._get_grad_norm = recording_grad_norm
datasets.Dataset.__getitems__ = recording_getitems
BlockStream.__iter__ = recording_iter

trainer = train(parse_settings(config, overrides))
rank = trainer.args.process_index
Path(dump_dir).mkdir(parents=True, exist_ok=True)
Path(dump_dir, f"rank{rank}.json").write_text(json.dumps(record))
save_file(weights(trainer.model), f"{dump_dir}/rank{rank}.safetensors")
