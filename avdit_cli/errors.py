"""Typed errors. Each message is one line that says what went wrong and what to do.

The CLI prints ``str(error)`` in red and exits 1; the traceback is shown only with ``--debug``.
"""

from __future__ import annotations


class AvditError(Exception):
    """Base class of every error avdit reports to a user."""


class ConfigError(AvditError):
    """A preset, YAML file or ``--set`` override is invalid."""


class WeightsError(AvditError):
    """Model weights are missing, incomplete or do not fit the model."""


class DataError(AvditError):
    """Input media or a cache cannot be used."""


class TrainingError(AvditError):
    """A training run cannot go on (a non-finite loss, an unusable checkpoint)."""
