"""The hand-over from history to live: files before ``switch_at``, then Kafka from ``switch_at`` on.

:func:`raystream.hybrid` plans two source stages, ``history`` and ``live``,
merged by a :class:`~raystream.plan.logical.HybridNode`:

1. The ``history`` stage reads the history source through a
   :class:`TimeRangeSource` that keeps the events before ``switch_at``.
2. The ``live`` stage starts once every history split is done (the planner
   puts ``history`` in its ``SourceStage.after``). It reads the live source
   through a :class:`TimeRangeSource` that keeps the events at or after
   ``switch_at``.

Every event time belongs to exactly one side of ``switch_at``, so the events
both sources hold (Kafka's retention reaching back before ``switch_at``) are
read once. The live source must still hold the events from ``switch_at`` on
(its retention must reach back to it): those before its oldest record are
in neither source. Until the live stage starts, its splits hold its
watermark at ``switch_at`` minus the delay (their smallest event time is
raised to ``switch_at``), and the stages downstream see the smaller of both
watermarks, so keyed state and open windows carry across the switch and no
live event is late because of it. The splits of both stages, with their
positions, are in every checkpoint: a job killed on either side of the
switch resumes where it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raystream._time import to_epoch_ms
from raystream.errors import PlanError
from raystream.sources.base import Source, Split, SplitReader


@dataclass(frozen=True)
class HandOver:
    """What :func:`raystream.hybrid` reads: ``history`` before ``switch_at_ms``, then ``live`` from it on."""

    history: TimeRangeSource
    live: TimeRangeSource
    switch_at_ms: int


def hand_over(history: Source, live: Source, switch_at_ms: int, time_column: str) -> HandOver:
    """The two sides of a hybrid, both in the history's columns (see :func:`_common_schema`).

    Raises:
        PlanError: when the history is unbounded, a time column is missing or the columns cannot be cast.
    """
    if not history.bounded:
        raise PlanError(
            f"hybrid: the history source {history.name} is unbounded; history must end, so give it a bounded "
            "file source (without watch=True)"
        )
    schema = _common_schema(history, live, time_column)
    return HandOver(
        TimeRangeSource(history, time_column, schema, end_ms=switch_at_ms),
        TimeRangeSource(live, time_column, schema, start_ms=switch_at_ms),
        switch_at_ms,
    )


class TimeRangeSource(Source):
    """The events of ``inner`` whose time is in ``[start_ms, end_ms)``, cast to ``schema``: one side of a hybrid.

    Splits, positions and checkpoints are the inner source's own; each
    split's smallest event time is raised to ``start_ms``, so that an
    unstarted live split holds the watermark at the switch.
    """

    def __init__(
        self,
        inner: Source,
        time_column: str,
        schema: pa.Schema,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> None:
        self.inner = inner
        self.time_column = time_column
        self._schema = schema
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.name = inner.name
        self.bounded = inner.bounded
        self.replayable = inner.replayable
        self.discovers_splits = inner.discovers_splits
        self.discovery_interval_s = inner.discovery_interval_s
        self.has_dead_letters = inner.has_dead_letters
        self.batch_rows = inner.batch_rows
        self.new_split_idle_timeout_ms = inner.new_split_idle_timeout_ms

    def schema(self) -> pa.Schema:
        return self._schema

    def estimated_bytes(self) -> int | None:
        return self.inner.estimated_bytes()

    def splits(self, parallelism: int) -> list[Split]:
        start = self.start_ms
        if start is None:
            return self.inner.splits(parallelism)
        return [
            Split(s.split_id, s.payload, start if s.min_event_time_ms is None else max(s.min_event_time_ms, start))
            for s in self.inner.splits(parallelism)
        ]

    def identity(self) -> dict[str, Any]:
        return {**self.inner.identity(), "from_ms": self.start_ms, "until_ms": self.end_ms}

    def encode_payload(self, payload: Any) -> Any:
        return self.inner.encode_payload(payload)

    def decode_payload(self, data: Any) -> Any:
        return self.inner.decode_payload(data)

    def check_resume(self, positions: dict[str, Any]) -> None:
        self.inner.check_resume(positions)

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        reader = self.inner.open_split(split, position)
        return _TimeRange(reader, self.time_column, self._schema, self.start_ms, self.end_ms)

    def on_epoch_complete(self, positions: dict[str, Any]) -> None:
        self.inner.on_epoch_complete(positions)

    def __repr__(self) -> str:
        return f"TimeRangeSource({self.inner!r}, from_ms={self.start_ms}, until_ms={self.end_ms})"


def _common_schema(history: Source, live: Source, time_column: str) -> pa.Schema:
    """The columns both sources have, in the history's order and types, which live batches are cast to.

    A column only one side has (the history's Hive partition folders, say) is left out: a job that uses it
    fails at plan time, naming it.
    """
    schema = history.schema()
    if schema is None:
        raise PlanError("hybrid: the history source's schema is unknown; give the file source a schema=")
    if time_column not in schema.names:
        raise PlanError(
            f"hybrid: the history has no time column {time_column!r}; its columns: {', '.join(schema.names)}"
        )
    live_schema = live.schema()
    if live_schema is None:
        return schema
    if time_column not in live_schema.names:
        raise PlanError(
            f"hybrid: the live source {live.name} has no time column {time_column!r}; its columns: "
            f"{', '.join(live_schema.names)}"
        )
    common = pa.schema([f for f in schema if f.name in live_schema.names])
    for name in common.names:
        have, want = live_schema.field(name).type, schema.field(name).type
        if have != want and not _castable(have, want):
            raise PlanError(
                f"hybrid: column {name!r} is {want} in the history but {have} in the live source "
                f"{live.name}, and one cannot be cast to the other; give both the same type"
            )
    return common


def _castable(have: pa.DataType, want: pa.DataType) -> bool:
    try:
        pa.array([], have).cast(want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


class _TimeRange(SplitReader):
    """Keeps the rows of an inner split whose event time is in ``[start_ms, end_ms)``, in the common schema."""

    def __init__(
        self,
        inner: SplitReader,
        time_column: str,
        schema: pa.Schema,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> None:
        self.inner = inner
        self.time_column = time_column
        self.schema = schema
        self.start_ms = start_ms
        self.end_ms = end_ms

    def next_batch(self, max_rows: int) -> pa.Table | None:
        return self._keep(self.inner.next_batch(max_rows))

    def read_until(self, position: Any, max_rows: int) -> pa.Table | None:
        return self._keep(self.inner.read_until(position, max_rows))

    def _keep(self, batch: pa.Table | None) -> pa.Table | None:
        if batch is None or batch.num_rows == 0:
            return batch
        times = to_epoch_ms(batch.column(self.time_column))
        keep = None
        if self.start_ms is not None:
            keep = pc.greater_equal(times, self.start_ms)
        if self.end_ms is not None:
            before = pc.less(times, self.end_ms)
            keep = before if keep is None else pc.and_(keep, before)
        kept = batch.filter(keep) if keep is not None else batch
        missing = [name for name in self.schema.names if name not in kept.schema.names]
        if missing:
            raise PlanError(
                f"hybrid: a batch lacks the columns {', '.join(missing)} that the history has; give the live source "
                "a schema= with the history's columns"
            )
        kept = kept.select(self.schema.names)
        return kept if kept.schema.equals(self.schema) else kept.cast(self.schema)

    def position(self) -> Any:
        return self.inner.position()

    def watermark_ms(self) -> int | None:
        return self.inner.watermark_ms()

    def take_dead_letters(self) -> pa.Table | None:
        return self.inner.take_dead_letters()

    def metrics(self) -> dict[str, Any]:
        return self.inner.metrics()

    def close(self) -> None:
        self.inner.close()
