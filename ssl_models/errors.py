"""User-facing error types of ssl_models.

The CLI turns these into one line ``stopgrad: error: ...`` (exit status 2); a bug still shows its
traceback. Configuration values are checked by the config dataclasses (``ConfigError``); what can only
be checked once data or hardware is in hand raises these.
"""

from __future__ import annotations

__all__ = ["DataError", "TrainingError"]


class TrainingError(RuntimeError):
    """A training or evaluation run cannot start or cannot go on (non-finite loss, bad run folder, ...)."""


class DataError(TrainingError):
    """A data source that is missing, unreadable or inconsistent; the message names the file or folder."""
