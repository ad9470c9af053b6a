"""The recipe's errors: input a user can fix (one line, exit code 2) and runs that stop for a reason (exit code 1).

Every command catches `RecipeError` once and prints `error: <message>`; the message names the key, file or value.
"""


class RecipeError(ValueError):
    """Input the recipe cannot use. The message is one line that names the key, file or value, and what to do."""


class ConfigError(RecipeError):
    """A setting (config file, --key value, command-line flag) that cannot run."""


class DataError(RecipeError):
    """Text, a tokenizer, a prepared dataset or an evaluation file that cannot be used."""


class CheckpointError(RecipeError):
    """A model directory or file that cannot be used (missing, damaged, not a GPT)."""


class TrainingStopped(RuntimeError):
    """A run stopped at a step because going on could not succeed (a non-finite loss, a zero gradient).
    Nothing of that step was applied or saved."""
