"""A GPTTrainer concern: evaluation that predicts every validation token once and reports bits per byte beside the
loss, each process reading its own share of the blocks (streamed ones too).

A mixin over transformers' Trainer (see recipe.trainer for why mixins).
"""

from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput

from .scoring import loss_metrics, next_token_sums, process_share
from .tokenization import token_byte_counts


class ShareEvaluation(Trainer):
    def _init_evaluation(self) -> None:
        self.token_bytes = None  # the UTF-8 bytes of each token id, for bits per byte; from the tokenizer, once

    def get_eval_dataloader(self, eval_dataset=None):
        """This process's share of the validation blocks, read by the process itself, in order (no sampler, no
        dispatch from rank 0, no padding with repeated blocks): see recipe.scoring.ProcessShare."""
        blocks = eval_dataset if eval_dataset is not None else self.eval_dataset
        return DataLoader(process_share(blocks), batch_size=self.args.eval_batch_size, collate_fn=self.data_collator)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval") -> EvalLoopOutput:
        """Next-token loss, perplexity and bits per byte over the validation blocks, summed over every process.

        Written here because Trainer's loop gives the mean loss of each batch and nothing a bits-per-byte needs (the
        loss of each token and the bytes it decodes to), and because its loop over a streamed split is fed from rank
        0 and fails with fewer blocks than processes. Each block's last position predicts the block's `next_token`
        when it has one, so every validation token is predicted once. The model is prepared as Trainer's own loop
        prepares it (evaluation outside training, DeepSpeed, FSDP)."""
        model = self._wrap_model(self.model, training=False)
        if len(self.accelerator._models) == 0 and model is self.model:  # evaluate() called before train()
            model = (self.accelerator.prepare(model) if self.is_deepspeed_enabled or self.is_fsdp_enabled
                     else self.accelerator.prepare_model(model, evaluation_mode=True))
            if self.is_fsdp_enabled:
                self.model = model
        model.eval()
        if self.token_bytes is None and self.processing_class is not None:
            self.token_bytes = token_byte_counts(self.processing_class)

        def batches():
            for batch in dataloader:
                yield batch
                self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)

        self.callback_handler.eval_dataloader = dataloader
        sums = next_token_sums(model, batches(), self.token_bytes, context=self.autocast_smart_context_manager)
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in loss_metrics(sums).items() if key != "n"}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=int(sums["blocks"]))

    def final_metrics(self) -> dict:
        """The evaluation of the last step: that of its scheduled evaluation when there was one, else a new one."""
        for entry in reversed(self.state.log_history):
            if "eval_loss" in entry and entry["step"] == self.state.global_step:
                return {key: value for key, value in entry.items() if key.startswith("eval_") or key == "epoch"}
        return self.evaluate()
