"""A GPTTrainer concern: data that resumes where it stopped. Each checkpoint records the fingerprint of the
prepared data (checked on resume) or, when streaming, every process's stream position (restored on resume instead
of replaying the stream), and a run resumed after its last step trains none.

A mixin over transformers' Trainer (see recipe.trainer for why mixins).
"""

import json
from pathlib import Path

from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
from transformers import Trainer

from .checkpoints import TRAIN_DATA_FILE, stream_position_file
from .errors import DataError
from .stream import BlockStream


class ResumableData(Trainer):
    def _init_resumable_data(self, data_fingerprint: str | None) -> None:
        self.data_fingerprint = data_fingerprint  # of the prepared data trained on; None for other data
        if isinstance(self.train_dataset, BlockStream):
            self.args.ignore_data_skip = True  # a stream resumes from its recorded position, never by re-reading

    def get_train_dataloader(self):
        if not isinstance(self.train_dataset, BlockStream):
            return super().get_train_dataloader()  # map-style: Trainer's seeded sampler, sharded by accelerate
        # The stream is this process's own part already (split_dataset_by_node). Given to accelerator.prepare, it
        # would be read by rank 0 and dispatched (accelerate's default for an IterableDataset) or, with dispatching
        # off, split a second time (every process keeping a slice of its own part). So it is prepared as the loader
        # of one process, read here without workers: the stream's positions are this process's to record.
        loader = DataLoader(self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
                            pin_memory=self.args.dataloader_pin_memory)
        return prepare_data_loader(loader, self.args.device, num_processes=1, process_index=0, put_on_device=True,
                                   dispatch_batches=False)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if isinstance(self.train_dataset, BlockStream):
            self.train_dataset.mark_consumed(len(inputs["input_ids"]))
        return super().training_step(model, inputs, num_items_in_batch)

    def _save_data_position(self, checkpoint: Path) -> None:
        """Beside the weights: the prepared data's fingerprint (main process), and each process's stream position."""
        checkpoint.mkdir(parents=True, exist_ok=True)
        if isinstance(self.train_dataset, BlockStream):
            position = {"process": self.args.process_index, "processes": self.args.world_size,
                        **self.train_dataset.position()}
            (checkpoint / stream_position_file(self.args.process_index)).write_text(json.dumps(position) + "\n")
        if self.data_fingerprint is not None and self.args.should_save:
            (checkpoint / TRAIN_DATA_FILE).write_text(json.dumps({"fingerprint": self.data_fingerprint}) + "\n")

    def _restore_data_position(self, checkpoint: Path) -> None:
        """Refuse to resume on other data than the checkpoint's; put each process's stream where it stood."""
        recorded_file = checkpoint / TRAIN_DATA_FILE
        recorded = json.loads(recorded_file.read_text())["fingerprint"] if recorded_file.is_file() else None
        if recorded != self.data_fingerprint:
            def describe(fingerprint):
                return f"the prepared data {fingerprint}" if fingerprint else "data that was not prepared"
            raise DataError(
                f"{checkpoint} was trained on {describe(recorded)}, but prepared_dir now gives "
                f"{describe(self.data_fingerprint)}: resume on the data it was trained on, or set overwrite_output_dir "
                f"to start over"
            )
        if isinstance(self.train_dataset, BlockStream):
            rank, processes = self.args.process_index, self.args.world_size
            path = checkpoint / stream_position_file(rank)
            position = json.loads(path.read_text()) if path.is_file() else {}
            if position.get("processes") != processes:
                saved_by = f"{position['processes']} processes" if position else "a run that did not stream this way"
                raise DataError(
                    f"{checkpoint} holds the stream positions of {saved_by}, and this launch has {processes}: resume "
                    f"with as many processes as it was saved by (each process streams its own documents)"
                )
            self.train_dataset.load_position(position)

    def _run_epoch(self, *args, **kwargs):
        """Trainer checks max_steps only after a step, so a run resumed from its last checkpoint (killed between that
        save and the final one) would train one step more than the run has. Nothing is left to train then."""
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)
