"""Loss, perplexity and bits per byte of a language model from summed token losses, as an `evaluate` metric.

The loss is the mean over all predicted tokens (sequences weigh by their length), the perplexity its exponential.
Bits per byte is the loss of the text tokens in bits over the UTF-8 bytes they decode to: unlike a loss per token,
it compares models with different tokenizers (nanochat reports it; nanoGPT's character-level loss in nats divided
by ln 2 is the same measure for ASCII text). Unlike the Hub's `perplexity` metric, this one takes losses, so it
never loads a model itself.
"""

import math

import datasets
import evaluate
import numpy as np

_INPUTS = """
Args:
    loss_sums: per sequence, the summed cross-entropy (natural log) of its predicted tokens.
    token_counts: per sequence, the number of predicted tokens.
    text_loss_sums: per sequence, the summed cross-entropy of its predicted tokens that are text (not special).
    byte_counts: per sequence, the UTF-8 bytes those text tokens decode to.
Returns:
    loss: total loss / total tokens.
    perplexity: exp(loss).
    bpb: total text loss / ln(2) / total bytes.
Example:
    >>> metric.compute(loss_sums=[6.0, 2.0], token_counts=[3, 1], text_loss_sums=[6.0, 0.0], byte_counts=[6, 0])
    {'loss': 2.0, 'perplexity': 7.38905609893065, 'bpb': 1.4426950408889634}
"""


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"loss_sums": datasets.Value("float64"), "token_counts": datasets.Value("int64"),
                 "text_loss_sums": datasets.Value("float64"), "byte_counts": datasets.Value("int64")}
            ),
        )

    def _compute(self, loss_sums, token_counts, text_loss_sums, byte_counts):
        loss = float(np.sum(loss_sums) / np.sum(token_counts))
        byte_total = int(np.sum(byte_counts))
        bpb = float(np.sum(text_loss_sums) / math.log(2) / byte_total) if byte_total else float("nan")
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bpb": bpb}
