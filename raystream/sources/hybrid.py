"""The hand-over from history to live: files before ``switch_at``, then Kafka from ``switch_at`` on.

A :class:`HybridSource` is one source with two phases (see ``Split.phase``):

1. Phase 0 reads the history source's splits and keeps the events before
   ``switch_at``.
2. Phase 1 starts once every history split is done. It reads the live
   source's splits and keeps the events at or after ``switch_at``.

Every event time belongs to exactly one side of ``switch_at``, so the events
both sources hold (Kafka's retention reaching back before ``switch_at``) are
read once. The live source must still hold the events from ``switch_at`` on
(its retention must reach back to it): those before its oldest record are
in neither source. No live split is read before the history is done, and a live split
holds the watermark at ``switch_at`` minus the delay until it starts, so
keyed state and open windows carry across the switch and no live event is
late because of it. The splits of both phases, with their positions, are in
every checkpoint: a job killed in either phase resumes where it was.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raystream._time import to_epoch_ms
from raystream.errors import PlanError
from raystream.sources.base import Source, Split, SplitReader

_HISTORY = "history"
_LIVE = "live"


class HybridSource(Source):
    """History from a bounded source before ``switch_at``, live events from another source after it.

    See :func:`raystream.hybrid`.
    """

    name = "hybrid"

    def __init__(self, history: Source, live: Source, switch_at_ms: int, time_column: str) -> None:
        if not history.bounded:
            raise PlanError(
                f"hybrid: the history source {history.name} is unbounded; history must end, so give it a bounded "
                "file source (without watch=True)"
            )
        self.history = history
        self.live = live
        self.switch_at_ms = switch_at_ms
        self.time_column = time_column
        self.bounded = live.bounded
        self.replayable = history.replayable and live.replayable
        self.discovers_splits = live.discovers_splits
        self.discovery_interval_s = live.discovery_interval_s
        self.has_dead_letters = history.has_dead_letters or live.has_dead_letters
        # History files are polled only once they start, and then produce: the rule concerns live splits.
        self.new_split_idle_timeout_ms = live.new_split_idle_timeout_ms
        self._schema = _common_schema(history, live, time_column)
        self._history_splits: list[Split] | None = None

    def schema(self) -> pa.Schema:
        return self._schema

    def splits(self, parallelism: int) -> list[Split]:
        if self._history_splits is None:  # listed once: discovery asks again for new live splits only
            self._history_splits = [
                Split(f"{_HISTORY}/{s.split_id}", (_HISTORY, s), s.min_event_time_ms, phase=0)
                for s in self.history.splits(parallelism)
            ]
        live = [
            # Every live event kept is at or after switch_at: the split holds the watermark there until it starts.
            Split(
                f"{_LIVE}/{s.split_id}",
                (_LIVE, s),
                max(s.min_event_time_ms or self.switch_at_ms, self.switch_at_ms),
                phase=1,
            )
            for s in self.live.splits(parallelism)
        ]
        return self._history_splits + live

    def identity(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "history": self.history.identity(),
            "live": self.live.identity(),
            "switch_at_ms": self.switch_at_ms,
        }

    def encode_payload(self, payload: Any) -> Any:
        side, inner = payload
        return {"side": side, "split": (self.history if side == _HISTORY else self.live).encode_split(inner)}

    def decode_payload(self, data: Any) -> Any:
        from raystream._jsonable import JsonableError

        side = data.get("side") if isinstance(data, dict) else None
        if side not in (_HISTORY, _LIVE) or set(data) != {"side", "split"}:
            raise JsonableError(f"{self.name}: {str(data)[:80]!r} is not a stored split")
        return side, (self.history if side == _HISTORY else self.live).decode_split(data["split"])

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        side, inner = split.payload
        if side == _HISTORY:
            reader = self.history.open_split(inner, position)
            return _TimeRange(reader, self.time_column, self._schema, end_ms=self.switch_at_ms)
        reader = self.live.open_split(inner, position)
        return _TimeRange(reader, self.time_column, self._schema, start_ms=self.switch_at_ms)

    def on_epoch_complete(self, positions: dict[str, Any]) -> None:
        prefix = f"{_LIVE}/"
        self.live.on_epoch_complete({k[len(prefix) :]: v for k, v in positions.items() if k.startswith(prefix)})

    def __repr__(self) -> str:
        return f"HybridSource(history={self.history!r}, live={self.live!r}, switch_at_ms={self.switch_at_ms})"


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
