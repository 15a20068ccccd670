"""The errors of a training run: bad settings, unusable directories, stops."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid (the message names the flag)."""


class RunDirError(ValueError):
    """The output directory cannot be used for this run."""


class RunStopped(RuntimeError):
    """A run stopped before its end (e.g. a full disk).

    The message says why, which checkpoint is kept and how to continue.
    """


class TrainingDiverged(RunStopped):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C, SIGTERM under the CLI).

    A ``KeyboardInterrupt``, so code that handles Ctrl-C keeps working; the
    message says which checkpoint is kept and how to continue.
    """
