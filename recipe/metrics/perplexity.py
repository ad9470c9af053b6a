"""Loss and perplexity of a language model from per-sequence token losses, as an `evaluate` metric.

The loss is the mean over all predicted tokens (sequences weigh by their length), the perplexity its exponential.
Unlike the Hub's `perplexity` metric, this one takes losses, so it never loads a model itself.
"""

import math

import datasets
import evaluate
import numpy as np

_INPUTS = """
Args:
    loss_sums: per sequence, the summed cross-entropy (natural log) of its predicted tokens.
    token_counts: per sequence, the number of predicted tokens.
Returns:
    loss: total loss / total tokens.
    perplexity: exp(loss).
Example:
    >>> metric.compute(loss_sums=[6.0, 2.0], token_counts=[3, 1])
    {'loss': 2.0, 'perplexity': 7.38905609893065}
"""


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"loss_sums": datasets.Value("float64"), "token_counts": datasets.Value("int64")}
            ),
        )

    def _compute(self, loss_sums, token_counts):
        loss = float(np.sum(loss_sums) / np.sum(token_counts))
        return {"loss": loss, "perplexity": math.exp(loss)}
