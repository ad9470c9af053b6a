"""Train through recipe.train and save THIS process's final weights to DUMP_DIR/rank<N>.safetensors.

Usage (under any launcher): python train_and_dump.py DUMP_DIR CONFIG.json [--key value ...]
Lets tests compare the weights every data-parallel rank ends with.
"""

import sys
from pathlib import Path

from safetensors.torch import save_file

from recipe.args import parse_settings
from recipe.train import train

dump_dir, config, *overrides = sys.argv[1:]
trainer = train(parse_settings(config, overrides))
state = {name: tensor.detach().contiguous() for name, tensor in trainer.model.state_dict().items()}
state.pop("lm_head.weight", None)  # tied to transformer.wte.weight
Path(dump_dir).mkdir(parents=True, exist_ok=True)
save_file(state, f"{dump_dir}/rank{trainer.args.process_index}.safetensors")
