"""Exceptions that raystream raises. Each message names the culprit and the fix."""

from __future__ import annotations


class RaystreamError(Exception):
    """Base class of raystream's own errors."""


class PlanError(RaystreamError, ValueError):
    """The pipeline cannot be planned: an unknown column, a bad argument.

    Raised when the pipeline is built or started, before any data is read.
    """


class ConfigError(RaystreamError, ValueError):
    """A configuration (``RunConfig`` or a YAML job config) is invalid."""


class UserFunctionError(RaystreamError):
    """A user function (``map_batches``, ``filter``, ``foreach_batch``...) raised.

    The message holds the function's own traceback, the epoch and the split
    (or partition) it was processing.
    """


class JobFailedError(RaystreamError):
    """A job stopped because of an error. ``__cause__`` holds the error."""
