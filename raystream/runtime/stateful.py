"""Keyed operators: running aggregates and event-time windows.

A keyed operator has two halves:

- ``prepare`` runs upstream of the shuffle (in a reader, or in the previous
  stage's partition actor), vectorized over a batch: it assigns windows,
  splits off late rows and pre-aggregates (the combiner). ``split`` then
  cuts its payload by the partition that owns each key.
- ``new_state()`` gives the state a partition actor keeps. Its ``process``
  merges an epoch's payloads, fires what the watermark allows and frees
  what can no longer change, so memory follows the open windows.

Both halves see the same watermark for an epoch: the one computed after the
previous epoch. An event is late when every window it belongs to has
``window_end + allowed_lateness <= watermark``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raystream._time import START_OF_TIME_MS, to_epoch_ms
from raystream.aggregates import Aggregate
from raystream.runtime.keyed import TOUCHED, KeyedAggregation, Partial
from raystream.runtime.shuffle import key_groups, partition_of_key_groups, split_by_partition
from raystream.windows import Session, Sliding, Tumbling

WINDOW_START = "window_start"
WINDOW_END = "window_end"
_ISLAND = "__island"


@dataclass
class Prepared:
    """What ``prepare`` made of a batch: the payload to shuffle and the late rows."""

    payload: Any | None
    late: pa.Table | None = None
    late_count: int = 0


@dataclass
class Emitted:
    """What a state emitted for an epoch: output rows and late rows."""

    table: pa.Table | None
    late: pa.Table | None = None
    late_count: int = 0


class OperatorState(ABC):
    """The keyed state of one partition actor for one operator."""

    @abstractmethod
    def process(self, payloads: Sequence[Any], watermark_ms: int, end_of_input: bool) -> Emitted:
        """Merge an epoch's payloads, then fire and free by ``watermark_ms``. Called once per epoch, in order."""

    @property
    @abstractmethod
    def num_rows(self) -> int:
        """Rows of state held: one per key, or per key and open window."""

    @abstractmethod
    def keys_table(self) -> pa.Table:
        """The key columns of every state row (to compute key groups)."""

    @abstractmethod
    def values(self) -> pa.Table:
        """The current value of every state row, as output rows."""

    @abstractmethod
    def snapshot(self) -> dict[str, pa.Table]:
        """The whole state as named tables, each with the operator's key columns (to cut by key group)."""

    @abstractmethod
    def restore(self, tables: dict[str, pa.Table], watermark_ms: int) -> None:
        """Replace the state by tables that :meth:`snapshot` made, maybe in other actors (rescaling).

        Args:
            tables: By name; a name may be missing when no row of it was saved.
            watermark_ms: The watermark the job had reached when they were saved.
        """


class KeyedOperator(ABC):
    """The plan of a keyed stage: what both halves need, picklable."""

    name: str
    keys: tuple[str, ...]
    late_side_output: bool = False

    @abstractmethod
    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        """Turn a batch into a shuffle payload. Runs upstream of the shuffle, once per batch."""

    @abstractmethod
    def split(self, payload: Any, num_key_groups: int, num_partitions: int) -> list[Any | None]:
        """Cut a payload by owning partition, by the hash of ``keys``; ``None`` where empty."""

    @abstractmethod
    def new_state(self) -> OperatorState:
        """A fresh state for one partition actor."""

    @property
    def upsert_keys(self) -> tuple[str, ...]:
        """The output columns that identify a row, for sinks that keep the latest row."""
        return self.keys


# -- running aggregates ----------------------------------------------------------


def split_partial(partial: Partial, keys: tuple[str, ...], num_key_groups: int, num_partitions: int) -> list[Any]:
    """Cut a partial by the partition that owns each key; ``None`` for partitions with no rows."""

    def cut(table: pa.Table) -> list[pa.Table]:
        groups = key_groups(table, keys, num_key_groups)
        return split_by_partition(
            table, partition_of_key_groups(groups, num_key_groups, num_partitions), num_partitions
        )

    tables = cut(partial.table)
    distinct = [cut(t) for t in partial.distinct]
    parts: list[Any] = []
    for p in range(num_partitions):
        part = Partial(tables[p], tuple(d[p] for d in distinct))
        parts.append(part if part.num_rows else None)
    return parts


_Operator = TypeVar("_Operator", bound="_ShufflesPartials")


class _PartialState(OperatorState, Generic[_Operator]):
    """A state that is one :class:`Partial` keyed by the operator's keys (and maybe the window)."""

    operator: _Operator
    state: Partial | None

    @property
    def num_rows(self) -> int:
        return 0 if self.state is None else self.state.num_rows

    def keys_table(self) -> pa.Table:
        return pa.table({}) if self.state is None else self.state.table.select(list(self.operator.keys))

    def snapshot(self) -> dict[str, pa.Table]:
        if self.state is None:
            return {}
        tables = {"partials": self.state.table}
        tables.update({f"distinct-{i}": t for i, t in enumerate(self.state.distinct)})
        return tables

    def restore(self, tables: dict[str, pa.Table], watermark_ms: int) -> None:
        if "partials" not in tables:
            self.state = None
        else:
            count = len(self.operator.aggregation.distinct_aggregates)
            self.state = Partial(tables["partials"], tuple(tables[f"distinct-{i}"] for i in range(count)))


class _ShufflesPartials(KeyedOperator):
    """Operators whose upstream half pre-aggregates: the payload is a Partial, split by key."""

    aggregation: KeyedAggregation

    def split(self, payload: Any, num_key_groups: int, num_partitions: int) -> list[Any | None]:
        return split_partial(payload, self.keys, num_key_groups, num_partitions)


class RunningAggregate(_ShufflesPartials):
    """``key_by(...).agg(...)``: one running value per key."""

    def __init__(
        self, name: str, keys: tuple[str, ...], aggregates: Sequence[tuple[str, Aggregate]], emit: str
    ) -> None:
        self.name = name
        self.keys = keys
        self.aggregates = tuple(aggregates)
        self.emit = emit
        self.aggregation = KeyedAggregation(keys, aggregates)

    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        return Prepared(self.aggregation.partial(table))

    def new_state(self) -> OperatorState:
        return _RunningState(self)


class _RunningState(_PartialState["RunningAggregate"]):
    def __init__(self, operator: RunningAggregate) -> None:
        self.operator = operator
        self.state: Partial | None = None

    def process(self, payloads: Sequence[Any], watermark_ms: int, end_of_input: bool) -> Emitted:
        aggregation = self.operator.aggregation
        emitted: pa.Table | None = None
        if payloads:
            previous = [] if self.state is None else [self.state]
            merged = aggregation.merge([*previous, *payloads], track_touched_from=len(previous))
            if self.operator.emit == "update":
                emitted = aggregation.finalize(merged, only_touched=True)
            self.state = aggregation.strip_touched(merged)
        if end_of_input and self.operator.emit == "final" and self.state is not None:
            emitted = aggregation.finalize(self.state)
        return Emitted(emitted)

    def values(self) -> pa.Table:
        return pa.table({}) if self.state is None else self.operator.aggregation.finalize(self.state)


# -- windows -----------------------------------------------------------------------


class _WindowedOperator(KeyedOperator):
    """What tumbling, sliding and session aggregates share: time, lateness and output shape."""

    def __init__(
        self,
        name: str,
        keys: tuple[str, ...],
        aggregates: Sequence[tuple[str, Aggregate]],
        time_column: str,
        time_type: pa.DataType,
        allowed_lateness_ms: int,
        late: Literal["drop", "side"],
        emit: Literal["append", "update"],
    ) -> None:
        self.name = name
        self.keys = keys
        self.aggregates = tuple(aggregates)
        self.time_column = time_column
        self.time_type = time_type
        self.allowed_lateness_ms = allowed_lateness_ms
        self.late_side_output = late == "side"
        self.emit = emit

    @property
    def upsert_keys(self) -> tuple[str, ...]:
        return (*self.keys, WINDOW_START, WINDOW_END)

    def event_times(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Event times in ms (nulls as 0) and the mask of rows that have one."""
        times = to_epoch_ms(table.column(self.time_column))
        valid = np.asarray(pc.is_valid(times))
        return np.asarray(times.fill_null(0), dtype=np.int64), valid

    def late_rows(self, table: pa.Table, late_mask: np.ndarray) -> tuple[pa.Table | None, int]:
        count = int(late_mask.sum())
        if count == 0:
            return None, 0
        return (table.filter(pa.array(late_mask)) if self.late_side_output else None), count

    def output(self, finalized: pa.Table, starts: np.ndarray, ends: np.ndarray) -> pa.Table:
        """Shape output rows: the keys, window_start, window_end (in the time column's type), the aggregates."""
        columns: dict[str, Any] = {key: finalized.column(key) for key in self.keys}
        columns[WINDOW_START] = self._as_time(starts)
        columns[WINDOW_END] = self._as_time(ends)
        for name, _ in self.aggregates:
            columns[name] = finalized.column(name)
        return pa.table(columns)

    def _as_time(self, values: np.ndarray) -> pa.Array:
        millis = pa.array(values, pa.int64())
        if pa.types.is_timestamp(self.time_type):
            return pc.cast(millis.cast(pa.timestamp("ms", tz=self.time_type.tz)), self.time_type)
        return millis

    def due_mask(self, ends: np.ndarray, touched: np.ndarray, previous_ms: int, watermark_ms: int) -> np.ndarray:
        """Rows to emit: windows the watermark just passed, fired windows a late row changed, and (update) open ones."""
        due = (ends <= watermark_ms) & ((ends > previous_ms) | touched)
        if self.emit == "update":
            due |= touched & (ends > watermark_ms)
        return due


class WindowAggregate(_WindowedOperator, _ShufflesPartials):
    """Tumbling and sliding windows: windows are known from each event alone, so readers pre-aggregate."""

    def __init__(self, window: Tumbling | Sliding, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window = window
        self.size_ms = window.size_ms
        self.slide_ms = window.slide_ms if isinstance(window, Sliding) else window.size_ms
        self.aggregation = KeyedAggregation((*self.keys, WINDOW_START), self.aggregates)

    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        times, valid = self.event_times(table)
        per_event = -(-self.size_ms // self.slide_ms)
        last_start = np.floor_divide(times, self.slide_ms) * self.slide_ms
        starts = last_start[:, None] - self.slide_ms * np.arange(per_event)[None, :]
        keep = (starts + self.size_ms > times[:, None]) & valid[:, None]
        keep &= starts + self.size_ms + self.allowed_lateness_ms > watermark_ms
        rows = np.nonzero(keep)[0]
        window_starts = starts[keep]
        late_mask = np.bincount(rows, minlength=table.num_rows) == 0
        late, late_count = self.late_rows(table, late_mask)
        columns = list(dict.fromkeys([*self.keys, *(a.column for _, a in self.aggregates if a.column is not None)]))
        expanded = table.select(columns).take(pa.array(rows)).append_column(WINDOW_START, pa.array(window_starts))
        return Prepared(self.aggregation.partial(expanded), late, late_count)

    def new_state(self) -> OperatorState:
        return _WindowState(self)


class _WindowState(_PartialState["WindowAggregate"]):
    def __init__(self, operator: WindowAggregate) -> None:
        self.operator = operator
        self.state: Partial | None = None
        self.watermark_ms = START_OF_TIME_MS

    def restore(self, tables: dict[str, pa.Table], watermark_ms: int) -> None:
        super().restore(tables, watermark_ms)
        self.watermark_ms = watermark_ms

    def process(self, payloads: Sequence[Any], watermark_ms: int, end_of_input: bool) -> Emitted:
        op = self.operator
        previous_ms, self.watermark_ms = self.watermark_ms, watermark_ms
        parts = ([] if self.state is None else [self.state]) + list(payloads)
        if not parts:
            return Emitted(None)
        merged = op.aggregation.merge(parts, track_touched_from=0 if self.state is None else 1)
        finalized = op.aggregation.finalize(merged)
        starts = np.asarray(finalized.column(WINDOW_START), dtype=np.int64)
        ends = starts + op.size_ms
        touched = np.asarray(finalized.column(TOUCHED), dtype=bool)
        due = op.due_mask(ends, touched, previous_ms, watermark_ms)
        emitted = None
        if due.any():
            chosen = finalized.filter(pa.array(due))
            emitted = op.output(chosen, starts[due], ends[due])
        self.state = self._without_closed(op.aggregation.strip_touched(merged), watermark_ms)
        return Emitted(emitted)

    def _without_closed(self, partial: Partial, watermark_ms: int) -> Partial:
        """Free the windows whose lateness has passed: no row can change them any more."""
        horizon = watermark_ms - self.operator.size_ms - self.operator.allowed_lateness_ms

        def still_open(table: pa.Table) -> pa.Table:
            return table.filter(pc.greater(table.column(WINDOW_START), horizon))

        return Partial(still_open(partial.table), tuple(still_open(t) for t in partial.distinct))

    def values(self) -> pa.Table:
        if self.state is None:
            return pa.table({})
        finalized = self.operator.aggregation.finalize(self.state)
        starts = np.asarray(finalized.column(WINDOW_START), dtype=np.int64)
        return self.operator.output(finalized, starts, starts + self.operator.size_ms)


class SessionAggregate(_WindowedOperator):
    """Session windows: merging depends on the state, so raw rows are shuffled and merged in the partition."""

    def __init__(self, window: Session, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window = window
        self.gap_ms = window.gap_ms
        self.aggregation = KeyedAggregation((*self.keys, _ISLAND), self.aggregates)

    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        return Prepared(table)

    def split(self, payload: Any, num_key_groups: int, num_partitions: int) -> list[Any | None]:
        groups = key_groups(payload, self.keys, num_key_groups)
        parts = split_by_partition(
            payload, partition_of_key_groups(groups, num_key_groups, num_partitions), num_partitions
        )
        return [part if part.num_rows else None for part in parts]

    def new_state(self) -> OperatorState:
        return _SessionState(self)


class _SessionState(OperatorState):
    """Sessions as partial aggregates with their interval: keys, window_start, window_end, partials."""

    def __init__(self, operator: SessionAggregate) -> None:
        self.operator = operator
        self.sessions: pa.Table | None = None  # keys, window_start, window_end, partial columns
        self.distinct: tuple[pa.Table, ...] = ()  # keys, window_start, window_end, __value
        self.watermark_ms = START_OF_TIME_MS

    def process(self, payloads: Sequence[Any], watermark_ms: int, end_of_input: bool) -> Emitted:
        op = self.operator
        keys = list(op.keys)
        previous_ms, self.watermark_ms = self.watermark_ms, watermark_ms
        rows = pa.concat_tables(payloads, promote_options="default") if payloads else None
        if rows is None and self.sessions is None:
            return Emitted(None)

        # Every interval: the state's sessions (and their distinct values), then one per new row.
        pieces: list[pa.Table] = []
        state_parts = [] if self.sessions is None else [self.sessions, *self.distinct]
        for part in state_parts:
            pieces.append(self._intervals(part, keys, part.column(WINDOW_START), part.column(WINDOW_END), True))
        times = valid = None
        if rows is not None:
            times, valid = op.event_times(rows)
            pieces.append(self._intervals(rows, keys, times, times + op.gap_ms, False))
        intervals = pa.concat_tables(pieces, promote_options="default")
        island = _islands(intervals.select(keys), intervals)
        island_start, island_end = _island_bounds(island, intervals)
        from_state = np.asarray(intervals.column("__from_state"), dtype=bool)
        has_state = np.zeros(len(island_start), dtype=bool)
        np.logical_or.at(has_state, island, from_state)
        late_island = ~has_state & (island_end + op.allowed_lateness_ms <= previous_ms)

        # Split the new rows: late ones (their session closed before they came) and on-time ones.
        offsets = np.cumsum([0] + [p.num_rows for p in pieces])
        parts: list[Partial] = []
        if self.sessions is not None:
            parts.append(self._state_partial(island, offsets))
        late, late_count = None, 0
        if rows is not None:
            assert times is not None and valid is not None
            row_island = island[offsets[-2] : offsets[-1]]
            late_mask = late_island[row_island] | ~valid
            late, late_count = op.late_rows(rows, late_mask)
            on_time = rows.filter(pa.array(~late_mask)).append_column(_ISLAND, pa.array(row_island[~late_mask]))
            parts.append(op.aggregation.partial(on_time))
        merged = op.aggregation.merge(parts, track_touched_from=1 if self.sessions is not None else 0)
        finalized = op.aggregation.finalize(merged)
        ids = np.asarray(finalized.column(_ISLAND), dtype=np.int64)
        touched = np.asarray(finalized.column(TOUCHED), dtype=bool)
        due = op.due_mask(island_end[ids], touched, previous_ms, watermark_ms)
        emitted = None
        if due.any():
            emitted = op.output(finalized.filter(pa.array(due)), island_start[ids[due]], island_end[ids[due]])
        self._keep_open(op.aggregation.strip_touched(merged), island_start, island_end, watermark_ms)
        return Emitted(emitted, late, late_count)

    @staticmethod
    def _intervals(table: pa.Table, keys: list[str], starts: Any, ends: Any, from_state: bool) -> pa.Table:
        columns = {key: table.column(key) for key in keys}
        columns[WINDOW_START] = pa.array(np.asarray(starts, dtype=np.int64))
        columns[WINDOW_END] = pa.array(np.asarray(ends, dtype=np.int64))
        columns["__from_state"] = pa.repeat(pa.scalar(from_state), table.num_rows)
        return pa.table(columns)

    def _state_partial(self, island: np.ndarray, offsets: np.ndarray) -> Partial:
        """The state's sessions and distinct values, relabelled with the island each now belongs to."""
        assert self.sessions is not None
        tables = [self.sessions, *self.distinct]
        relabelled = [
            t.drop_columns([WINDOW_START, WINDOW_END]).append_column(
                _ISLAND, pa.array(island[offsets[i] : offsets[i + 1]])
            )
            for i, t in enumerate(tables)
        ]
        keys = [*self.operator.keys, _ISLAND]
        main = relabelled[0].select(keys + [c for c in relabelled[0].column_names if c not in keys])
        distinct = tuple(t.select([*keys, "__value"]) for t in relabelled[1:])
        return Partial(main, distinct)

    def _keep_open(self, merged: Partial, island_start: np.ndarray, island_end: np.ndarray, watermark_ms: int) -> None:
        """Keep the sessions that can still change, with their interval instead of the island id."""
        horizon = watermark_ms - self.operator.allowed_lateness_ms

        def open_with_interval(table: pa.Table) -> pa.Table:
            ids = np.asarray(table.column(_ISLAND), dtype=np.int64)
            keep = island_end[ids] > horizon
            kept = table.filter(pa.array(keep)).drop_columns([_ISLAND])
            kept = kept.append_column(WINDOW_START, pa.array(island_start[ids[keep]]))
            return kept.append_column(WINDOW_END, pa.array(island_end[ids[keep]]))

        self.sessions = open_with_interval(merged.table)
        self.distinct = tuple(open_with_interval(t) for t in merged.distinct)

    @property
    def num_rows(self) -> int:
        return 0 if self.sessions is None else self.sessions.num_rows

    def keys_table(self) -> pa.Table:
        return pa.table({}) if self.sessions is None else self.sessions.select(list(self.operator.keys))

    def snapshot(self) -> dict[str, pa.Table]:
        if self.sessions is None:
            return {}
        return {"sessions": self.sessions, **{f"distinct-{i}": t for i, t in enumerate(self.distinct)}}

    def restore(self, tables: dict[str, pa.Table], watermark_ms: int) -> None:
        self.watermark_ms = watermark_ms
        if "sessions" not in tables:
            self.sessions, self.distinct = None, ()
            return
        count = len(self.operator.aggregation.distinct_aggregates)
        self.sessions = tables["sessions"]
        self.distinct = tuple(tables[f"distinct-{i}"] for i in range(count))

    def values(self) -> pa.Table:
        if self.sessions is None:
            return pa.table({})
        keys = list(self.operator.keys)
        # State sessions never overlap, so each distinct value's interval is exactly its session's.
        pieces = [
            self._intervals(p, keys, p.column(WINDOW_START), p.column(WINDOW_END), True)
            for p in [self.sessions, *self.distinct]
        ]
        intervals = pa.concat_tables(pieces)
        island = _islands(intervals.select(keys), intervals)
        island_start, island_end = _island_bounds(island, intervals)
        partial = self._state_partial(island, np.cumsum([0] + [p.num_rows for p in pieces]))
        finalized = self.operator.aggregation.finalize(partial)
        ids = np.asarray(finalized.column(_ISLAND), dtype=np.int64)
        return self.operator.output(finalized, island_start[ids], island_end[ids])


def _island_bounds(island: np.ndarray, intervals: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Each island's start (the smallest start) and end (the largest end)."""
    count = int(island.max()) + 1 if len(island) else 0
    island_start = np.full(count, np.iinfo(np.int64).max)
    np.minimum.at(island_start, island, np.asarray(intervals.column(WINDOW_START), dtype=np.int64))
    island_end = np.full(count, np.iinfo(np.int64).min)
    np.maximum.at(island_end, island, np.asarray(intervals.column(WINDOW_END), dtype=np.int64))
    return island_start, island_end


def _same_as_previous(keys: pa.Table) -> np.ndarray:
    """For sorted rows 1..n-1: true where every key equals the previous row's (nulls equal nulls)."""
    n = keys.num_rows
    same = np.ones(n - 1, dtype=bool)
    for column in keys.columns:
        current, previous = column.slice(1), column.slice(0, n - 1)
        equal = pc.fill_null(pc.equal(current, previous), False)
        both_null = pc.and_(pc.is_null(current), pc.is_null(previous))
        same &= np.asarray(pc.or_(equal, both_null), dtype=bool)
    return same


def _islands(keys: pa.Table, intervals: pa.Table) -> np.ndarray:
    """Label each interval with its island: per key, intervals that overlap or touch, transitively.

    Sorted by key then start, an interval opens a new island when its key
    changes or it starts after every earlier interval of its key has ended.
    """
    n = intervals.num_rows
    if n == 0:
        return np.empty(0, dtype=np.int64)
    sort_keys = [(k, "ascending") for k in keys.column_names] + [(WINDOW_START, "ascending")]
    order = np.asarray(pc.sort_indices(intervals, sort_keys=sort_keys))
    starts = np.asarray(intervals.column(WINDOW_START), dtype=np.int64)[order]
    ends = np.asarray(intervals.column(WINDOW_END), dtype=np.int64)[order]
    key_change = np.ones(n, dtype=bool)
    if n > 1:
        key_change[1:] = ~_same_as_previous(keys.take(pa.array(order)))
    group = np.cumsum(key_change) - 1
    reach = pd.Series(ends).groupby(group).cummax().to_numpy()
    previous_reach = np.concatenate(([np.iinfo(np.int64).min], reach[:-1]))
    new_island = key_change | (starts > previous_reach)
    labels = np.empty(n, dtype=np.int64)
    labels[order] = np.cumsum(new_island) - 1
    return labels
