"""A training process's stream of blocks that knows where it stands: for `streaming: true` runs.

    this process's documents (split_dataset_by_node) ─► tokenized lazily (datasets map) ─► BlockStream ─► Trainer
    checkpoint-N/stream_position_<rank>.json ◄─ position(): where the next block this process trains on begins

datasets' `IterableDataset.state_dict()` restores where the documents stand, but not the tokens that packing carries
from one document into the next block. So a position here is the documents' state before the document in which the
next block begins, plus how many of that document's tokens earlier blocks took: restoring it re-tokenizes at most that
document's map batch, whatever the step, instead of replaying the stream.

The stream runs ahead of training (accelerate fetches one batch early; Trainer fetches the micro-batches of a step at
once), so the trainer says how many blocks it actually consumed (`mark_consumed`) and the stream keeps the positions
from there on. It is read in the training process itself (no dataloader workers), where these positions live.
"""

from collections import deque

import numpy as np
import torch
from datasets import IterableDataset


class BlockStream(torch.utils.data.IterableDataset):
    """`block_size` blocks packed across document boundaries from tokenized documents (rows of `input_ids`, each
    document's ids and its eos), exactly as the map pipeline's GroupIntoBlocks packs them; each pass over the
    documents is one epoch. At most `max_blocks` per pass (max_train_samples, per process)."""

    def __init__(self, documents: IterableDataset, block_size: int, max_blocks: int | None = None):
        self.documents = documents.with_format("numpy")
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.epoch = -1  # the pass under way; the first __iter__ starts pass 0
        self.produced = 0  # blocks yielded, over all passes (counted on from a restored position)
        self.consumed = 0  # blocks the trainer has consumed
        start = {"epoch": 0, "documents": None, "skip_tokens": 0, "epoch_blocks": 0}
        self.positions = {0: start}  # blocks produced -> the position after them, kept from `consumed` on
        self._start = None  # a restored position: where the next __iter__ begins

    def position(self) -> dict:
        """Where the stream stands after the blocks the trainer consumed: JSON, for `load_position`."""
        return {"blocks": self.consumed, **self.positions[self.consumed]}

    def load_position(self, position: dict) -> None:
        """Continue, at the next __iter__, right after the blocks that `position` counts."""
        self.produced = self.consumed = position["blocks"]
        self._start = {key: position[key] for key in ("epoch", "documents", "skip_tokens", "epoch_blocks")}
        self.positions = {self.produced: self._start}

    def mark_consumed(self, blocks: int) -> None:
        """The trainer took `blocks` more blocks: positions before them are no longer needed."""
        self.consumed += blocks
        if self.consumed not in self.positions:
            raise RuntimeError(f"the trainer consumed {self.consumed} blocks but the stream produced {self.produced}")
        for produced in [key for key in self.positions if key < self.consumed]:
            del self.positions[produced]

    def __iter__(self):
        start, self._start = self._start, None
        if start is None:
            start = {"epoch": self.epoch + 1, "documents": None, "skip_tokens": 0, "epoch_blocks": 0}
        self.epoch = start["epoch"]
        self.documents.set_epoch(self.epoch)  # datasets applies a loaded state to the pass of the same epoch only
        if start["documents"] is not None:
            self.documents.load_state_dict(start["documents"])
        skip_tokens, epoch_blocks = start["skip_tokens"], start["epoch_blocks"]

        carry = np.empty(0, dtype=np.int64)  # tokens not yet in a block
        # The documents whose tokens are in `carry`: (documents' state before each, its tokens still in `carry`).
        in_carry: deque[list] = deque()
        state_after_last = start["documents"]  # None: the beginning of this pass
        for row in self.documents:
            if self.max_blocks is not None and epoch_blocks >= self.max_blocks:
                return
            tokens = row["input_ids"].astype(np.int64)[skip_tokens:]
            in_carry.append([state_after_last, len(tokens), skip_tokens])
            skip_tokens = 0
            state_after_last = self.documents.state_dict()
            carry = np.concatenate([carry, tokens])
            while len(carry) >= self.block_size and (self.max_blocks is None or epoch_blocks < self.max_blocks):
                block, carry = carry[: self.block_size], carry[self.block_size :]
                _take_tokens(in_carry, self.block_size)
                epoch_blocks += 1
                self.produced += 1
                if in_carry:
                    state, _, taken = in_carry[0]
                    self.positions[self.produced] = {"epoch": self.epoch, "documents": state,
                                                     "skip_tokens": taken, "epoch_blocks": epoch_blocks}
                else:
                    self.positions[self.produced] = {"epoch": self.epoch, "documents": state_after_last,
                                                     "skip_tokens": 0, "epoch_blocks": epoch_blocks}
                yield {"input_ids": block}


def _take_tokens(in_carry: deque, count: int) -> None:
    """Account for `count` tokens leaving the front of the carry: documents wholly taken leave `in_carry`; the first
    one left counts how many of its tokens are gone (its `taken`, which a restored position skips)."""
    while count:
        entry = in_carry[0]
        if entry[1] <= count:
            count -= entry[1]
            in_carry.popleft()
        else:
            entry[1] -= count
            entry[2] += count
            count = 0
