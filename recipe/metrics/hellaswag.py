"""HellaSwag accuracy from the losses of each example's four endings, as an `evaluate` metric.

Completion style, as in build-nanogpt's hellaswag.py: every ending is scored by the cross-entropy of its tokens
after the context. `acc` picks the ending with the lowest total loss; `acc_norm` the lowest loss per token, which
does not favour short endings.
"""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{zellers2019hellaswag,
  title={HellaSwag: Can a Machine Really Finish Your Sentence?},
  author={Zellers, Rowan and Holtzman, Ari and Bisk, Yonatan and Farhadi, Ali and Choi, Yejin},
  booktitle={Proceedings of the 57th Annual Meeting of the Association for Computational Linguistics},
  year={2019}
}
"""

_INPUTS = """
Args:
    loss_sums: per example, the summed cross-entropy of each ending's tokens (4 floats).
    token_counts: per example, the number of tokens of each ending (4 ints).
    references: per example, the index of the correct ending (0-3).
Returns:
    acc: fraction of examples whose lowest-total-loss ending is the correct one.
    acc_norm: the same with the loss per token.
Example:
    >>> metric.compute(loss_sums=[[6.0, 4.0, 9.0, 8.0]], token_counts=[[3, 1, 3, 8]], references=[3])
    {'acc': 0.0, 'acc_norm': 1.0}
"""


class HellaSwag(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "loss_sums": datasets.Sequence(datasets.Value("float64")),
                    "token_counts": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Value("int64"),
                }
            ),
            homepage="https://rowanzellers.com/hellaswag/",
        )

    def _compute(self, loss_sums, token_counts, references):
        loss_sums = np.asarray(loss_sums, dtype=np.float64)  # (N, 4)
        loss_means = loss_sums / np.asarray(token_counts, dtype=np.float64)  # (N, 4)
        references = np.asarray(references)
        return {
            "acc": float(np.mean(loss_sums.argmin(axis=1) == references)),
            "acc_norm": float(np.mean(loss_means.argmin(axis=1) == references)),
        }
