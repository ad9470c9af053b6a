"""A loss-spike detector: how many standard deviations a step's loss or gradient norm lies above its recent history.

llm.c skips the update of a step whose loss or gradient norm has a z-score above a threshold over a window of the
last steps (`-sl` / `-sg`, `llmc/outlier_detector.h`; 7.0 for both and a window of 128 in its GPT-3 125M run,
`scripts/run_gpt3_125M.sh`). This detector does the same on the values of the recipe's one host sync per optimizer
step, with two differences:

- the z-score is taken against the previous `window` values, not a window that already holds the new one (whose
  own weight caps any z-score near sqrt(window));
- its whole history is saved with each checkpoint (`state_dict`), so a resumed run detects exactly the spikes the
  uninterrupted one would.

Every finite value enters the window, a spike's too, as in llm.c: a spike widens the window's spread for the next
`window` steps (a second spike soon after must be larger to be caught), but a lasting change of level (new data, a
new learning rate) is accepted after a few skipped steps instead of every later step being skipped for good.
"""

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Spike:
    series: str  # "loss" | "grad_norm"
    value: float
    mean: float  # of the window before this step
    zscore: float

    def describe(self, window: int) -> str:
        name = "the loss" if self.series == "loss" else "the gradient norm"
        return (f"{name} {self.value:.4g} is {self.zscore:.1f} standard deviations above the mean {self.mean:.4g} "
                f"of the last {window} steps")


class SpikeDetector:
    """Windows of the last `window` losses and gradient norms; `observe` scores a step against them, then adds it."""

    SERIES = ("loss", "grad_norm")

    def __init__(self, window: int, zscore: float):
        self.window, self.zscore = window, zscore
        self.history = {series: deque(maxlen=window) for series in self.SERIES}

    def observe(self, **values: float | None) -> Spike | None:
        """The first of `loss`, `grad_norm` more than `zscore` standard deviations above the mean of its window
        (None while a window is still filling, its first `window` steps), after adding both to their windows.
        A value of None (a gradient norm DeepSpeed did not report) is neither scored nor added."""
        spike = None
        for series in self.SERIES:
            value = values[series]
            if value is None:
                continue
            history = self.history[series]
            if len(history) == self.window and spike is None:
                mean = sum(history) / self.window
                deviation = math.sqrt(sum((past - mean) ** 2 for past in history) / self.window)
                # A window of identical values has no spread to measure against: nothing can be called a spike.
                zscore = (value - mean) / deviation if deviation > 0 else 0.0
                if zscore > self.zscore:
                    spike = Spike(series, value, mean, zscore)
            history.append(value)
        return spike

    def state_dict(self) -> dict:
        return {"window": self.window, **{series: list(self.history[series]) for series in self.SERIES}}

    def load_state_dict(self, state: dict) -> None:
        for series in self.SERIES:
            self.history[series] = deque(state[series], maxlen=self.window)
