"""A GPTTrainer concern: the launch. FSDP runs on CPU processes as on GPUs; each checkpoint records its launch
(processes and sharding), and a checkpoint resumes only by the launch that saved it.

A mixin over transformers' Trainer (see recipe.trainer for why mixins)."""

import os
from pathlib import Path

from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from transformers import Trainer

from .checkpoints import LAUNCH_FILE, check_same_launch, launch_record


class Launch(Trainer):
    def create_accelerator_and_postprocess(self) -> None:
        """An FSDP launch on CPU processes shards as it does on GPUs.

        accelerate (1.15, `AcceleratorState.__init__`) turns an FSDP launch into FSDP only on GPU-like devices; on CPU
        processes it silently runs DDP instead (the model a DistributedDataParallel, the whole optimizer state on
        every process). torch's FSDP2 runs on CPU over gloo, so the dropped plugin is put back as accelerate puts it
        on GPUs: the same sharding, gathering and checkpoint code then runs on CPU (accelerate_configs/fsdp_cpu.yaml,
        tested) as on GPUs (fsdp.yaml)."""
        super().create_accelerator_and_postprocess()
        state = self.accelerator.state
        if (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
                and state.distributed_type == DistributedType.MULTI_CPU):
            state.fsdp_plugin = FullyShardedDataParallelPlugin()  # the launcher's fsdp_config, from its environment
            if state.mixed_precision != "no":
                state.fsdp_plugin.set_mixed_precision(state.mixed_precision)
            state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.is_fsdp_enabled = True

    def launch_sharding(self) -> str:
        """How this launch shards the model: "fsdp", "deepspeed" or "none" (DDP or one process)."""
        return "fsdp" if self.is_fsdp_enabled else "deepspeed" if self.is_deepspeed_enabled else "none"

    def _save_launch(self, checkpoint: Path) -> None:
        """Beside the weights (main process): this launch's processes and sharding."""
        if self.args.should_save:
            checkpoint.mkdir(parents=True, exist_ok=True)
            (checkpoint / LAUNCH_FILE).write_text(launch_record(self.args.world_size, self.launch_sharding()))

    def _check_launch(self, checkpoint: Path) -> None:
        """A CheckpointError, in one line naming both, when this launch is not the one that saved `checkpoint`."""
        check_same_launch(checkpoint, self.args.world_size, self.launch_sharding())
