"""Exceptions with messages that name the config key, the bad value and the valid choices."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """A config value is invalid. The message says which key, what value, and what is allowed."""

    def __init__(self, key: str, value: object, valid: Iterable | str | None = None, hint: str = ""):
        if valid is None:
            choices = ""
        elif isinstance(valid, str):
            choices = f"; expected {valid}"
        else:
            choices = "; valid choices: " + ", ".join(map(str, valid))
        super().__init__(f"{key}={value!r} is invalid{choices}" + (f". {hint}" if hint else ""))
        self.key, self.value = key, value


class DataNotFoundError(FileNotFoundError):
    """A data set's files are missing under the data root (set ``CLFRAME_DATA_ROOT``)."""


class DataError(ValueError):
    """A data file exists but is unreadable (truncated, bad header, inconsistent); the message names it and the fix."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read; the message names the file and the fix."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/inf; the runner keeps results so far and stops."""

    def __init__(self, experience: int, step: int, value: float):
        super().__init__(
            f"non-finite loss ({value}) at experience {experience}, step {step}; "
            "try a lower strategy.lr or check the data"
        )
        self.experience, self.step = experience, step
