"""The errors a user can cause or meet, under one base the command line catches.

Every error here is a :class:`UserError`; the CLI prints it as one line
(``stalerl <command>: error: <message>``) and exits with status 2, with no traceback. They stay
``ValueError`` subclasses, so code written against the older ``except ValueError`` keeps working.
The message names the key, file (and line), path or process, what is wrong and what to do.
What each error refuses is listed in ``docs/REFUSALS.md``.
"""

from __future__ import annotations

__all__ = [
    "UserError", "CheckpointError", "ConfigError", "ObjectiveError", "OutputError", "RewardError", "RunDirError", "RunLockedError",
    "TemplateError",
]


class UserError(ValueError):
    """Base of every anticipated failure the CLI turns into one line and exit status 2."""


class ConfigError(UserError):
    """A configuration key is unknown, or its value has the wrong type or lies outside its range."""


class CheckpointError(UserError):
    """A checkpoint or model directory is incomplete, corrupt or does not match its config."""


class OutputError(UserError):
    """An output location cannot be written (read-only, under a file, disk full, file too large);
    the message names the path and what was being written."""


class RunDirError(UserError):
    """A run directory cannot be used as asked (an existing run without ``--resume``, a damaged
    ``config.yaml``, a ``--resume`` override the checkpoint cannot take)."""


class RunLockedError(RunDirError):
    """Another live process is writing the run directory."""


class ObjectiveError(UserError):
    """An objective cannot be built as asked: an unknown name or hyperparameter, a value of the
    wrong type, or a user objective file whose class does not satisfy the contract."""


class RewardError(UserError):
    """A reward function cannot be imported or called as configured (``reward.function``), or it
    returned something other than one finite score per completion."""


class TemplateError(UserError):
    """A prompt template is unknown or not a valid format string, or a chat template is asked of a
    tokenizer that has none."""
