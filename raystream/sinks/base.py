"""The sink contract: a lifecycle around per-epoch writes.

One job drives one sink through these calls, in this order:

1. ``on_start(context)`` once, on the driver, before the first epoch.
2. ``write(table, epoch_id, writer)`` for each epoch's output. A sink with
   ``on_driver = False`` is pickled to the actors that produce the output
   and writes there, once per (epoch, producing actor), so no rows pass
   through the driver. A sink with ``on_driver = True`` is called on the
   driver once per epoch with the whole epoch's output (``writer`` is 0).
   Epochs with no output rows are not written.
3. ``on_epoch_complete(epoch_id, results)`` once per epoch, on the driver,
   in epoch order, after every write of that epoch returned; ``results``
   are the values the writes returned. This is where output becomes visible.
4. ``on_finish()`` once after the last epoch, or ``on_failure(error)`` once
   when the job fails.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import pyarrow as pa


@dataclass(frozen=True)
class SinkContext:
    """What a sink knows about the stream it writes.

    Attributes:
        schema: The output schema, or ``None`` when known only at run time.
        upsert_keys: When set, the output is an upsert stream: a later row
            with the same values in these columns replaces an earlier one.
        bounded: True when the job's source ends.
        job_id: Names the job's run, and stays the same when a job with a
            ``checkpoint_dir`` resumes: a sink can tell its own earlier output
            (to replace or keep) from another job's (an error, unless told).
        resumed: True when the job resumes from a checkpoint.
    """

    schema: pa.Schema | None
    upsert_keys: tuple[str, ...] | None
    bounded: bool
    job_id: str = ""
    resumed: bool = False


class Sink(ABC):
    """Where a pipeline's output goes."""

    #: The user-facing name, used in errors: ``"write_parquet"``.
    name: str = "sink"
    #: Where ``write`` runs: True on the driver, False in the producing actors.
    on_driver: bool = False

    def on_start(self, context: SinkContext) -> None:  # noqa: B027 - optional hook
        """Prepare the destination. Called once on the driver before the first epoch."""

    @abstractmethod
    def write(self, table: pa.Table, epoch_id: int, writer: int) -> Any:
        """Write (or stage) one epoch's output of one writer; return a small picklable result."""

    def on_epoch_complete(self, epoch_id: int, results: list[Any]) -> None:  # noqa: B027 - optional hook
        """Make the epoch's output visible. Called once per epoch, in order, on the driver."""

    def on_finish(self) -> None:  # noqa: B027 - optional hook
        """Called once on the driver after the last epoch completed."""

    def on_failure(self, error: BaseException) -> None:  # noqa: B027 - optional hook
        """Called once on the driver when the job fails; leave no half-visible output."""
