"""A GPTTrainer concern: checkpoints written under a staging name and renamed into place once every process is
done (recipe.checkpoints), so `checkpoint-N` is always complete; and gathered state dicts (FSDP, DeepSpeed) saved as
the unsharded model saves itself, so every checkpoint is the same complete model.

A mixin over transformers' Trainer (see recipe.trainer for why mixins). What else a resume needs is the trainer's
to add, in `_save_resume_state`, written into the staged checkpoint before it is published.
"""

import shutil
from pathlib import Path

from torch.distributed.fsdp import FSDPModule
from transformers import Trainer

from .checkpoints import checkpoint_name, publish_checkpoint, rotate, staging_dir


class StagedCheckpoints(Trainer):
    def _save_resume_state(self, checkpoint: Path) -> None:
        """Write what a resume needs beyond Trainer's files into `checkpoint` (staged); nothing by default."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save a gathered state dict (FSDP, DeepSpeed) exactly as the unsharded model saves itself.

        The gather gives a tied weight one copy per name: aliased again, save_pretrained stores it once. And FSDP2
        turns the model into an instance of a class it makes up (`FSDPGPTForCausalLM`, a subclass of ours in torch's
        `_fsdp_init` module), while save_pretrained copies the files that define the model's class: torch's FSDP
        sources, with an auto_map naming a class no file defines, so the checkpoint would not load without the recipe
        (transformers 5.24 strips the prefix from `architectures` only). So the save sees our class.
        """
        if state_dict is not None:
            names_of = {}
            for name, parameter in self.model.named_parameters(remove_duplicate=False):
                names_of.setdefault(id(parameter), []).append(name)
            for first, *aliases in names_of.values():
                for alias in aliases:
                    if first in state_dict and alias in state_dict:
                        state_dict[alias] = state_dict[first]
        if not isinstance(self.model, FSDPModule):
            return super()._save(output_dir, state_dict)
        fsdp_class = type(self.model)
        self.model.__class__ = next(cls for cls in fsdp_class.__mro__ if not issubclass(cls, FSDPModule))
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.model.__class__ = fsdp_class

    def _get_output_dir(self, trial) -> str:
        return getattr(self, "_staging_output_dir", None) or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer writes `checkpoint-N` into a staging directory; once every process is done, it is published."""
        run_dir = super()._get_output_dir(trial)
        staging = staging_dir(run_dir, self.state.global_step)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
            self._save_resume_state(staging / checkpoint_name(self.state.global_step))
        finally:
            self._staging_output_dir = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = publish_checkpoint(run_dir, self.state.global_step)
            if self.state.best_model_checkpoint and str(staging) in self.state.best_model_checkpoint:
                self.state.best_model_checkpoint = str(final)
            rotate(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()
