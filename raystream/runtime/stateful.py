"""Keyed operators: running aggregates, event-time windows, per-window stages and top rows.

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

Stages after a window see the same epochs: in epoch ``E``, with watermark
``W(E)``, a window that fires only once (``emit="append"``, no allowed
lateness) emits exactly the windows with ``W(E-1) < window_end <= W(E)``.
Its partition actor prepares them for the next stage with ``W(E-1)``, by
which none of them is late, and the next stage processes them in the same
epoch with ``W(E)``, having received every window that ends by ``W(E)``
from every actor. So a per-window stage (keyed by ``window_end``) fires a
window in the epoch its first stage did, and a window over windows (whose
rows have event time ``window_end - 1`` ms) fires when it ends.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raystream._time import START_OF_TIME_MS, to_epoch_ms
from raystream.aggregates import Aggregate, Top
from raystream.kernels.hashing import key_groups, partition_of_key_groups, split_by_partition
from raystream.kernels.keyed import TOUCHED, KeyedAggregation, KeyedTop, Partial, same_as_previous
from raystream.plan.checks import check_top
from raystream.windows import WINDOW_END, WINDOW_START, Session, Sliding, Tumbling

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

    def process_inputs(self, payloads: Sequence[Sequence[Any]], watermark_ms: int, end_of_input: bool) -> Emitted:
        """As :meth:`process`, with the payloads of each input apart (operators of several inputs override it)."""
        return self.process(payloads[0], watermark_ms, end_of_input)

    @property
    @abstractmethod
    def num_rows(self) -> int:
        """Rows of state held: one per key, or per key and open window."""

    def output_hold_ms(self) -> int | None:
        """The oldest event time the state could still emit, for an operator that ``holds_output`` (else ``None``).

        Rows it emits later are at or after the smaller of this and the watermark it had: the stages after it
        see their watermark held back to that (see ``PhysicalPlan.watermark``).
        """
        return None

    def state_by_input(self) -> dict[str, Any]:
        """For an operator of two inputs: the rows held of each (``left_rows``...) and ``oldest_time_ms``."""
        return {}

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
    #: How many inputs the operator has (a table join has two: the stream and the table).
    num_inputs: int = 1
    #: The inputs read to their end before the others start (a table join's table).
    tables: tuple[int, ...] = ()
    #: How far the event times of its output can lag its watermark: the stages after it see their
    #: watermark that much later, so that none of its rows is late there (an interval join's interval).
    output_delay_ms: int = 0
    #: Whether its output may lag its watermark by more than any fixed delay (an interval join whose upper bound
    #: is a column): its partition actors then report ``OperatorState.output_hold_ms`` each epoch.
    holds_output: bool = False

    @abstractmethod
    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        """Turn a batch into a shuffle payload. Runs upstream of the shuffle, once per batch."""

    def prepare_input(self, index: int, table: pa.Table, watermark_ms: int) -> Prepared:
        """:meth:`prepare` for a batch of input ``index``."""
        return self.prepare(table, watermark_ms)

    def input_keys(self, index: int) -> tuple[str, ...]:
        """The key columns a batch of input ``index`` must have."""
        return self.keys

    @abstractmethod
    def split(self, payload: Any, num_key_groups: int, num_partitions: int) -> list[Any | None]:
        """Cut a payload by owning partition, by the hash of ``keys``; ``None`` where empty."""

    @abstractmethod
    def new_state(self) -> OperatorState:
        """A fresh state for one partition actor."""

    @property
    def upsert_keys(self) -> tuple[str, ...] | None:
        """The output columns that identify a row, for sinks that keep the latest row; ``None``: append only."""
        return self.keys


def split_table(table: pa.Table, keys: tuple[str, ...], num_key_groups: int, num_partitions: int) -> list[Any]:
    """Cut rows by the partition that owns each key; ``None`` for partitions with no rows."""
    groups = key_groups(table, keys, num_key_groups)
    parts = split_by_partition(table, partition_of_key_groups(groups, num_key_groups, num_partitions), num_partitions)
    return [part if part.num_rows else None for part in parts]


def _late_by_window_end(table: pa.Table, watermark_ms: int) -> tuple[pa.Table, int]:
    """Drop the rows of windows that ended by the watermark (or have no end); count them.

    With windows that fire once, none is late (see the module docstring):
    only a user function between the stages can make one.
    """
    ends = to_epoch_ms(table.column(WINDOW_END))
    on_time = pc.fill_null(pc.greater(ends, watermark_ms), False)
    late = table.num_rows - pc.sum(on_time).as_py() if table.num_rows else 0
    return (table.filter(on_time) if late else table), late


def _window_end_ms(table: pa.Table) -> np.ndarray:
    return np.asarray(to_epoch_ms(table.column(WINDOW_END)).fill_null(0), dtype=np.int64)


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
        time_column: str,
        time_type: pa.DataType,
        allowed_lateness_ms: int,
        late: Literal["drop", "side"],
        emit: Literal["append", "update"],
        aggregates: Sequence[tuple[str, Aggregate]] = (),
        time_shift_ms: int = 0,
    ) -> None:
        self.name = name
        self.keys = keys
        self.aggregates = tuple(aggregates)
        self.time_column = time_column
        self.time_type = time_type
        self.allowed_lateness_ms = allowed_lateness_ms
        self.late_side_output = late == "side"
        self.emit = emit
        #: Added to the time column: -1 over a window's output, whose rows' time is their window's last ms.
        self.time_shift_ms = time_shift_ms

    @property
    def upsert_keys(self) -> tuple[str, ...] | None:
        return (*self.keys, WINDOW_START, WINDOW_END)

    def event_times(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray | None]:
        """Event times in ms (nulls as 0) and the mask of rows that have one (``None``: every row)."""
        times = to_epoch_ms(table.column(self.time_column))
        valid = None
        if times.null_count:
            valid = np.asarray(pc.is_valid(times))
            times = times.fill_null(0)
        millis = np.asarray(times, dtype=np.int64)
        return (millis + self.time_shift_ms if self.time_shift_ms else millis), valid

    def late_rows(self, table: pa.Table, late_mask: np.ndarray | None) -> tuple[pa.Table | None, int]:
        count = 0 if late_mask is None else int(late_mask.sum())
        if count == 0:
            return None, 0
        return (table.filter(pa.array(late_mask)) if self.late_side_output else None), count

    def output(self, finalized: pa.Table, starts: np.ndarray, ends: np.ndarray) -> pa.Table:
        """Shape output rows: the keys, window_start, window_end (in the time column's type), the aggregates."""
        columns: dict[str, Any] = {key: finalized.column(key) for key in self.keys}
        columns[WINDOW_START] = self.as_time(starts)
        columns[WINDOW_END] = self.as_time(ends)
        for name, _ in self.aggregates:
            columns[name] = finalized.column(name)
        return pa.table(columns)

    def as_time(self, values: np.ndarray) -> pa.Array:
        """Epoch milliseconds as the time column's type."""
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


class _FixedWindows(_WindowedOperator):
    """Tumbling and sliding windows: each event's windows are known from its time alone.

    Time is cut into panes of ``gcd(size, slide)`` ms: the events of a pane
    belong to exactly the same windows, so a sliding window's aggregates are
    computed per pane first and then copied into the pane's windows, instead
    of copying every event into each of its ``size / slide`` windows.
    """

    def __init__(self, window: Tumbling | Sliding, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window = window
        self.size_ms = window.size_ms
        self.slide_ms = window.slide_ms if isinstance(window, Sliding) else window.size_ms
        self.windows_per_event = -(-self.size_ms // self.slide_ms)
        self.pane_ms = math.gcd(self.size_ms, self.slide_ms)

    def open_windows(
        self, times: np.ndarray, valid: np.ndarray | None, watermark_ms: int, latest_only: bool = False
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        """The windows, still open by the watermark, that each time (ms) belongs to.

        Args:
            times: Event times, or pane starts.
            valid: Which times are set (``None``: all).
            watermark_ms: Windows that ended by it, plus the allowed lateness, are closed.
            latest_only: Give each time its last window only (the one that starts last).

        Returns:
            For each (time, open window) pair, the index of the time (``None``
            when that is every time once, in order) and the window's start; then
            the mask of times with no open window (``None``: none), the late ones.
        """
        return open_fixed_windows(
            times, valid, watermark_ms, self.size_ms, self.slide_ms, self.allowed_lateness_ms, latest_only
        )

    def assign(self, table: pa.Table, columns: Sequence[str], watermark_ms: int) -> tuple[pa.Table, Prepared]:
        """One row per event and open window it belongs to: ``columns`` and ``window_start`` (int64 ms).

        Returns:
            Those rows, and a :class:`Prepared` with the late rows (its payload is left unset).
        """
        times, valid = self.event_times(table)
        rows, starts, late_mask = self.open_windows(times, valid, watermark_ms)
        late, late_count = self.late_rows(table, late_mask)
        return _with_window_start(table.select(list(columns)), rows, starts), Prepared(None, late, late_count)

    def assign_panes(self, table: pa.Table, columns: Sequence[str], watermark_ms: int) -> tuple[pa.Table, Prepared]:
        """One row per event with an open window: ``columns`` and, as ``window_start``, the start of its pane.

        Returns:
            Those rows, and a :class:`Prepared` with the late rows (its payload is left unset).
        """
        times, valid = self.event_times(table)
        rows, _, late_mask = self.open_windows(times, valid, watermark_ms, latest_only=True)
        panes = np.floor_divide(times, self.pane_ms) * self.pane_ms
        late, late_count = self.late_rows(table, late_mask)
        tagged = _with_window_start(table.select(list(columns)), rows, panes if rows is None else panes[rows])
        return tagged, Prepared(None, late, late_count)

    def panes_to_windows(self, table: pa.Table, watermark_ms: int) -> pa.Table:
        """Copy each row of a table keyed by pane (in ``window_start``) into each open window of its pane."""
        panes = np.asarray(table.column(WINDOW_START), dtype=np.int64)
        rows, starts, _ = self.open_windows(panes, None, watermark_ms)
        return _with_window_start(table.drop_columns([WINDOW_START]), rows, starts)


def open_fixed_windows(
    times: np.ndarray,
    valid: np.ndarray | None,
    watermark_ms: int,
    size_ms: int,
    slide_ms: int,
    allowed_lateness_ms: int = 0,
    latest_only: bool = False,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """The tumbling or sliding windows, still open by the watermark, that each time (ms) belongs to.

    See :meth:`_FixedWindows.open_windows`, which this computes, vectorized.
    """
    windows_per_event = -(-size_ms // slide_ms)
    last_start = np.floor_divide(times, slide_ms) * slide_ms
    if latest_only or windows_per_event == 1:
        # The last window of a time closes last: the time is late when that one is closed.
        on_time = last_start + size_ms + allowed_lateness_ms > watermark_ms
        if valid is not None:
            on_time &= valid
        if on_time.all():
            return None, last_start, None
        rows = np.flatnonzero(on_time)
        return rows, last_start[rows], ~on_time
    starts = last_start[:, None] - slide_ms * np.arange(windows_per_event)[None, :]
    ends = starts + size_ms
    keep = (ends > times[:, None]) & (ends + allowed_lateness_ms > watermark_ms)
    if valid is not None:
        keep &= valid[:, None]
    rows = np.nonzero(keep)[0]
    late = np.bincount(rows, minlength=len(times)) == 0
    return rows, starts[keep], late if late.any() else None


def _with_window_start(table: pa.Table, rows: np.ndarray | None, starts: np.ndarray) -> pa.Table:
    """``table``'s rows ``rows`` (``None``: all, in order) with the column ``window_start`` set to ``starts``."""
    picked = table if rows is None else table.take(pa.array(rows))
    return picked.append_column(WINDOW_START, pa.array(starts, pa.int64()))


class WindowAggregate(_FixedWindows, _ShufflesPartials):
    """Tumbling and sliding windows of aggregates: readers pre-aggregate per key and window.

    A sliding window's rows are aggregated per pane, and the pane partials
    copied into their windows and merged.
    """

    def __init__(self, window: Tumbling | Sliding, **kwargs: Any) -> None:
        super().__init__(window, **kwargs)
        self.aggregation = KeyedAggregation((*self.keys, WINDOW_START), self.aggregates)

    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        columns = list(dict.fromkeys([*self.keys, *(a.column for _, a in self.aggregates if a.column is not None)]))
        if self.windows_per_event == 1:
            windowed, prepared = self.assign(table, columns, watermark_ms)
            prepared.payload = self.aggregation.partial(windowed)
            return prepared
        panes, prepared = self.assign_panes(table, columns, watermark_ms)
        by_pane = self.aggregation.partial(panes)
        by_window = Partial(
            self.panes_to_windows(by_pane.table, watermark_ms),
            tuple(self.panes_to_windows(t, watermark_ms) for t in by_pane.distinct),
        )
        prepared.payload = self.aggregation.merge([by_window])
        return prepared

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
        return split_table(payload, self.keys, num_key_groups, num_partitions)

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
            assert times is not None
            row_island = island[offsets[-2] : offsets[-1]]
            late_mask = late_island[row_island] if valid is None else late_island[row_island] | ~valid
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
        key_change[1:] = ~same_as_previous(keys.take(pa.array(order)))
    group = np.cumsum(key_change) - 1
    reach = pd.Series(ends).groupby(group).cummax().to_numpy()
    previous_reach = np.concatenate(([np.iinfo(np.int64).min], reach[:-1]))
    new_island = key_change | (starts > previous_reach)
    labels = np.empty(n, dtype=np.int64)
    labels[order] = np.cumsum(new_island) - 1
    return labels


# -- per-window stages: keyed by the window_end of an earlier window ----------------------------------------------


class PerWindowAggregate(RunningAggregate):
    """``key_by(..., "window_end", ...).agg(...)`` after a window: aggregates per key of each window.

    Each key is emitted once, when the watermark passes its ``window_end``
    (the epoch its window fired upstream), and then freed.
    """

    def __init__(self, name: str, keys: tuple[str, ...], aggregates: Sequence[tuple[str, Aggregate]]) -> None:
        super().__init__(name, keys, aggregates, emit="append")
        self.time_column = WINDOW_END

    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        on_time, late_count = _late_by_window_end(table, watermark_ms)
        return Prepared(self.aggregation.partial(on_time), late_count=late_count)

    def new_state(self) -> OperatorState:
        return _PerWindowAggState(self)


class _PerWindowAggState(_PartialState["PerWindowAggregate"]):
    def __init__(self, operator: PerWindowAggregate) -> None:
        self.operator = operator
        self.state: Partial | None = None

    def process(self, payloads: Sequence[Any], watermark_ms: int, end_of_input: bool) -> Emitted:
        aggregation = self.operator.aggregation
        parts = ([] if self.state is None else [self.state]) + list(payloads)
        if not parts:
            return Emitted(None)
        merged = aggregation.merge(parts) if len(parts) > 1 else parts[0]
        cuts = [_cut_by_window_end(t, watermark_ms) for t in (merged.table, *merged.distinct)]
        due, still_open = Partial(cuts[0][0], tuple(c[0] for c in cuts[1:])), cuts[0][1]
        emitted = aggregation.finalize(due) if due.num_rows else None
        self.state = Partial(still_open, tuple(c[1] for c in cuts[1:])) if still_open.num_rows else None
        return Emitted(emitted)

    def values(self) -> pa.Table:
        return pa.table({}) if self.state is None else self.operator.aggregation.finalize(self.state)


def _cut_by_window_end(table: pa.Table, watermark_ms: int) -> tuple[pa.Table, pa.Table]:
    """The rows whose window ended by the watermark, and the others."""
    due = _window_end_ms(table) <= watermark_ms
    return table.filter(pa.array(due)), table.filter(pa.array(~due))


# -- top rows ----------------------------------------------------------------------------------------------------


class _TopOperator(KeyedOperator):
    """Operators that keep whole rows: the candidates of :class:`KeyedTop`, shuffled by key as tables.

    Their output may hold several rows per key (ties, ``n > 1``), so it is
    an append stream: no upsert keys.
    """

    ranking: KeyedTop
    top: Top

    @property
    def upsert_keys(self) -> tuple[str, ...] | None:
        return None

    def check(self, table: pa.Table) -> None:
        """The checks of plan time, for the output of a user function (its schema is known only now)."""
        top = self.top
        check_top(f"top {self.name!r}", self.keys, table.schema, top.by, top.n, top.ties, top.descending)

    def split(self, payload: Any, num_key_groups: int, num_partitions: int) -> list[Any | None]:
        return split_table(payload, self.keys, num_key_groups, num_partitions)

    def new_state(self) -> OperatorState:
        return _TopState(self)

    @abstractmethod
    def fire(
        self, rows: pa.Table, changed: np.ndarray, previous_ms: int, watermark_ms: int, end_of_input: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Which candidate rows to emit and which to keep, after an epoch's merge.

        Args:
            rows: Every candidate, sorted by key.
            changed: Per row, whether its key's candidates changed this epoch.
            previous_ms: The watermark of the previous epoch.
            watermark_ms: This epoch's watermark.
            end_of_input: Whether the input has ended.
        """

    def output_rows(self, rows: pa.Table) -> pa.Table:
        """Candidate rows as output rows."""
        return rows


class RunningTop(_TopOperator):
    """``key_by(...).top(...)``: the rows that rank first per key, over the whole stream."""

    def __init__(self, name: str, keys: tuple[str, ...], top: Top, emit: str) -> None:
        self.name = name
        self.keys = keys
        self.top = top
        self.emit = emit
        self.ranking = KeyedTop(keys, top)

    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        self.check(table)
        return Prepared(self.ranking.reduce(table))

    def fire(
        self, rows: pa.Table, changed: np.ndarray, previous_ms: int, watermark_ms: int, end_of_input: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        emit = changed if self.emit == "update" else np.full(rows.num_rows, end_of_input and self.emit == "final")
        return emit, np.ones(rows.num_rows, dtype=bool)


class PerWindowTop(_TopOperator):
    """``key_by(..., "window_end", ...).top(...)`` after a window: the rows that rank first per key of each window.

    Each key's rows are emitted once, when the watermark passes its
    ``window_end``, and then freed.
    """

    def __init__(self, name: str, keys: tuple[str, ...], top: Top) -> None:
        self.name = name
        self.keys = keys
        self.top = top
        self.emit = "append"
        self.time_column = WINDOW_END
        self.ranking = KeyedTop(keys, top)

    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        self.check(table)
        on_time, late_count = _late_by_window_end(table, watermark_ms)
        return Prepared(self.ranking.reduce(on_time), late_count=late_count)

    def fire(
        self, rows: pa.Table, changed: np.ndarray, previous_ms: int, watermark_ms: int, end_of_input: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        due = _window_end_ms(rows) <= watermark_ms
        return due, ~due


class WindowTop(_FixedWindows, _TopOperator):
    """``key_by(...).window(w).top(...)``: the rows that rank first per key and tumbling or sliding window.

    Readers copy each row into each of its windows and keep the candidates
    per key and window; the output is the rows, then ``window_start`` and
    ``window_end``.
    """

    def __init__(self, window: Tumbling | Sliding, top: Top, **kwargs: Any) -> None:
        super().__init__(window, **kwargs)
        self.top = top
        self.ranking = KeyedTop((*self.keys, WINDOW_START), top)

    @property
    def upsert_keys(self) -> tuple[str, ...] | None:
        return None

    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        self.check(table)
        expanded, prepared = self.assign(table, table.column_names, watermark_ms)
        prepared.payload = self.ranking.reduce(expanded) if expanded.num_rows else None
        return prepared

    def fire(
        self, rows: pa.Table, changed: np.ndarray, previous_ms: int, watermark_ms: int, end_of_input: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        ends = np.asarray(rows.column(WINDOW_START), dtype=np.int64) + self.size_ms
        return self.due_mask(ends, changed, previous_ms, watermark_ms), ends + self.allowed_lateness_ms > watermark_ms

    def output_rows(self, rows: pa.Table) -> pa.Table:
        starts = np.asarray(rows.column(WINDOW_START), dtype=np.int64)
        index = rows.schema.get_field_index(WINDOW_START)
        bounded = rows.set_column(index, WINDOW_START, self.as_time(starts))
        return bounded.append_column(WINDOW_END, self.as_time(starts + self.size_ms))


class _TopState(OperatorState):
    """The candidate rows of a top operator, one table keyed by the operator's keys (and window)."""

    def __init__(self, operator: _TopOperator) -> None:
        self.operator = operator
        self.rows: pa.Table | None = None
        self.watermark_ms = START_OF_TIME_MS

    def process(self, payloads: Sequence[Any], watermark_ms: int, end_of_input: bool) -> Emitted:
        op = self.operator
        previous_ms, self.watermark_ms = self.watermark_ms, watermark_ms
        payloads = [p for p in payloads if p.num_rows]
        if self.rows is None and not payloads:
            return Emitted(None)
        if payloads:
            rows, changed = op.ranking.merge(self.rows, payloads)
        else:
            assert self.rows is not None
            rows, changed = self.rows, np.zeros(self.rows.num_rows, dtype=bool)
        emit, keep = op.fire(rows, changed, previous_ms, watermark_ms, end_of_input)
        emitted = op.output_rows(rows.filter(pa.array(emit))) if emit.any() else None
        kept = rows if keep.all() else rows.filter(pa.array(keep))
        self.rows = kept if kept.num_rows else None
        return Emitted(emitted)

    @property
    def num_rows(self) -> int:
        return 0 if self.rows is None else self.rows.num_rows

    def keys_table(self) -> pa.Table:
        return pa.table({}) if self.rows is None else self.rows.select(list(self.operator.keys))

    def values(self) -> pa.Table:
        return pa.table({}) if self.rows is None else self.operator.output_rows(self.rows)

    def snapshot(self) -> dict[str, pa.Table]:
        return {} if self.rows is None else {"rows": self.rows}

    def restore(self, tables: dict[str, pa.Table], watermark_ms: int) -> None:
        self.rows = tables.get("rows")
        self.watermark_ms = watermark_ms
