"""Errors a user can act on, each with the exit code the CLI returns for it.

Exit codes: 1 = something is stale or failed verification (status/verify), 2 = bad config or
usage, 3 = bad input data (shards, manifests, images), 4 = bad label store, 5 = compute cluster
problem, 6 = a file of the run cannot be written (disk full, read-only, permissions), 7 =
numbers went non-finite (NaN/inf teacher logits or training loss), 130 = interrupted.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a message for the user and the process exit code."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(PipelineError):
    """A stage config or command-line value is wrong; the message names the file and field."""

    exit_code = 2


class DataError(PipelineError):
    """A shard, manifest or image is missing, corrupt or inconsistent; the message names it."""

    exit_code = 3


class StoreError(PipelineError):
    """A label partition is unreadable, corrupt or belongs to other inputs; names the file."""

    exit_code = 4


class ComputeError(PipelineError):
    """The Dask cluster cannot run the job (missing resources, workers dying)."""

    exit_code = 5


class OutputError(PipelineError):
    """A file the run writes (run lock, checkpoint, resume record, report) cannot be written:
    disk full, read-only, permissions. Names the file; the previous version of it is intact."""

    exit_code = 6


class NumericError(PipelineError):
    """NaN or inf where numbers must be finite: a teacher's logits (names the shard, view epoch
    and key) or a training loss (names the stage, epoch and step). Nothing built from them is kept."""

    exit_code = 7
