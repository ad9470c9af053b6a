"""The recipe's metrics as local `evaluate` modules, loaded by path: they work offline, and anyone can
`evaluate.load("<this directory>/hellaswag.py")` them.

`evaluate.load("perplexity")` or any other bare name goes to the Hub, which offline fails slowly with a
misleading `FileNotFoundError`; nothing in the recipe loads a metric that way.
"""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).parent


def load_metric(name: str) -> evaluate.EvaluationModule:
    """One of the metrics in this directory ("hellaswag", "perplexity"), loaded by path, results kept in memory."""
    return evaluate.load(str(METRICS_DIR / f"{name}.py"), keep_in_memory=True)
