"""Joining two streams in event time: interval joins (regular joins are one) and window joins.

Both sides are hash-partitioned by the key into partition actors, which hold
each side's rows as one Arrow table. What the two kinds share is here: how
a side's rows are held (:class:`StreamJoinSpec`), the shape of the output,
and the rows without a match, which ``how="left"`` (left rows), ``"right"``
(right rows) and ``"outer"`` (both) emit with nulls for the other side.

**Interval joins** (``between=(lower, upper)``, and ``ttl=`` as
``(-ttl, ttl)``): a left row ``l`` and a right row ``r`` match when their
keys are equal and ``l.time + lower <= r.time <= l.time + upper``, both
bounds inclusive. Each epoch, in one partition actor:

1. The new left rows are joined with every right row held (the new ones
   included), and the held left rows with the new right rows: a hash join on
   the key (``pyarrow.Table.join``), then a vectorized filter on the times.
   Each match is emitted once, in the epoch its second row arrives.
2. The new rows join the held ones; the rows that matched are marked.
3. A row is freed once the watermark ``W`` passes the last time a row of the
   other side could still match it: a left row when ``l.time + upper < W``, a
   right row when ``r.time - lower < W``. Rows that arrive later are on time
   only at or after ``W``, so none of them could match what was freed. A
   freed row that never matched is emitted then, by an outer side, as
   Spark's outer interval joins do.

**Window joins** (``window=rs.Tumbling(...)`` or ``rs.Sliding(...)``): each
row is held in each window it belongs to. Once the watermark passes a
window's end, its rows of both sides are joined on the key, once, by
``Table.join`` with the join's ``how``, and freed; the output gets
``window_start`` and ``window_end``.

The output's event time is the left row's time (the right row's, in the
left's time column, for a right-only row). It can lag the join's watermark:
by ``max(upper, -lower, 0)`` for an interval join, by the window's size for
a window join. The stages after a join see their watermark that much later
(``KeyedOperator.output_delay_ms``), so that no row of the join is late
downstream. A row that reaches the join behind its input's watermark (an
interval join), or whose windows have all ended (a window join), is late:
counted in ``metrics()["late_rows"]``, and it matches nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream._time import to_epoch_ms
from raystream.plan.checks import check_columns
from raystream.runtime.stateful import (
    Emitted,
    KeyedOperator,
    OperatorState,
    Prepared,
    open_fixed_windows,
    split_table,
)
from raystream.windows import WINDOW_END, WINDOW_START, Sliding, Tumbling

__all__ = ["AsOfJoin", "IntervalJoin", "StreamJoinSpec", "WindowJoin"]

StreamJoinHow = Literal["inner", "left", "right", "outer"]

#: The state tables of the two sides, as checkpoints name them.
LEFT, RIGHT = "left", "right"
#: Bookkeeping columns of the held rows: a row id (unique within an actor and side), whether the row matched.
_ID, _MATCHED = "__row", "__matched"
#: The held right row's bookkeeping columns, renamed apart from the left's in the joined table.
_RIGHT_ID, _RIGHT_MATCHED = "__right_row", "__right_matched"
#: A window join's held rows: the start of the window each is held in (int64 ms).
_WINDOW = "__window_start"
#: Set on the left rows of a window join, so that the joined rows without one (right-only) can be told.
_FROM_LEFT = "__from_left"
#: Held rows are copied into one chunk once they are spread over more chunks than this.
_MAX_CHUNKS = 16
_JOIN_TYPES = {"inner": "inner", "left": "left outer", "right": "right outer", "outer": "full outer"}


@dataclass(frozen=True)
class StreamJoinSpec:
    """What a join of two streams keeps of each side and outputs.

    Attributes:
        name: The join's name (in metrics, errors and checkpoints).
        left_on: The left's key columns; the right's keys travel and are held under these names.
        right_on: The right's key columns, in the same order.
        how: ``inner``, ``left``, ``right`` or ``outer``.
        left_time: The left's time column.
        right_time: The output name of the right's time column.
        left_schema: The left's columns, as they reach the join.
        right_columns: Each right column in the output and its output name (a clash got the suffix).
            With ``on=``, the right's keys are not among them: they equal the left's.
        right_types: The types of ``right_columns``.
        coalesce_keys: ``on=``: a right-only row's keys fill the left's key columns, as SQL's ``USING`` does.
        late_side_output: The rows late at the join are its late events (a side output), not only counted.
    """

    name: str
    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    how: StreamJoinHow
    left_time: str
    right_time: str
    left_schema: pa.Schema
    right_columns: tuple[tuple[str, str], ...]
    right_types: tuple[pa.DataType, ...]
    coalesce_keys: bool
    late_side_output: bool = False

    @property
    def right_schema(self) -> pa.Schema:
        """The right's rows as the join holds them: keys under the left's names, then the output columns."""
        keys = [self.left_schema.field(k) for k in self.left_on]
        payload = [pa.field(out, kind) for (_, out), kind in zip(self.right_columns, self.right_types, strict=True)]
        return pa.schema([*keys, *payload])

    @property
    def output_schema(self) -> pa.Schema:
        """The left's columns, then the right's (but the keys, with ``on=``)."""
        payload = self.right_schema
        return pa.schema([*self.left_schema, *(payload.field(out) for _, out in self.right_columns)])

    def side_rows(self, index: int, table: pa.Table) -> tuple[pa.Table, str]:
        """A batch of input ``index`` as the join holds it, and its time column."""
        if index == 0:
            check_columns(f"join ({self.name}, left)", tuple(self.left_schema.names), table.schema)
            return table.select(self.left_schema.names), self.left_time
        names = [column for column, _ in self.right_columns]
        check_columns(f"join ({self.name}, right)", (*self.right_on, *names), table.schema)
        columns = {
            left: table.column(right).cast(self.left_schema.field(left).type)
            for left, right in zip(self.left_on, self.right_on, strict=True)
        }
        for column, output in self.right_columns:
            columns[output] = table.column(column)
        return pa.table(columns), self.right_time

    def left_only(self, rows: pa.Table) -> pa.Table:
        """Left rows that matched nothing, with nulls for the right's columns."""
        schema, left = self.output_schema, set(self.left_schema.names)
        columns = [
            rows.column(field.name) if field.name in left else pa.nulls(rows.num_rows, field.type) for field in schema
        ]
        return pa.Table.from_arrays(columns, schema=schema)

    def right_only(self, rows: pa.Table) -> pa.Table:
        """Right rows that matched nothing: the left's columns null but the keys (with ``on=``) and the time."""
        payload = {out for _, out in self.right_columns}
        columns = []
        for field in self.output_schema:
            if field.name in payload:
                columns.append(rows.column(field.name))
            elif field.name == self.left_time:
                columns.append(_as_time(rows.column(self.right_time), field.type))
            elif field.name in self.left_on and self.coalesce_keys:
                columns.append(rows.column(field.name))
            else:
                columns.append(pa.nulls(rows.num_rows, field.type))
        return pa.Table.from_arrays(columns, schema=self.output_schema)

    def state_by_input(self, left: pa.Table, right: pa.Table) -> dict[str, Any]:
        """The rows held of each side, and the oldest event time among them."""
        times = [
            pc.min(to_epoch_ms(rows.column(column))).as_py()
            for rows, column in ((left, self.left_time), (right, self.right_time))
            if rows.num_rows
        ]
        known = [t for t in times if t is not None]
        return {
            "left_rows": left.num_rows,
            "right_rows": right.num_rows,
            "oldest_time_ms": min(known) if known else None,
        }


class _StreamJoin(KeyedOperator):
    """What the stream joins share as operators: two inputs, both hash-partitioned by the key."""

    num_inputs = 2

    def __init__(self, spec: StreamJoinSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.keys = spec.left_on
        self.late_side_output = spec.late_side_output

    @property
    def upsert_keys(self) -> tuple[str, ...] | None:
        return None  # a row per match: the output is appended

    def input_keys(self, index: int) -> tuple[str, ...]:
        return self.spec.left_on if index == 0 else self.spec.right_on

    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        return self.prepare_input(0, table, watermark_ms)

    def split(self, payload: Any, num_key_groups: int, num_partitions: int) -> list[Any | None]:
        return split_table(payload, self.keys, num_key_groups, num_partitions)

    def late(self, index: int, rows: pa.Table) -> pa.Table | None:
        """Late rows of input ``index`` as the join's late events, shaped as its rows without a match."""
        if not self.late_side_output or rows.num_rows == 0:
            return None
        return self.spec.left_only(rows) if index == 0 else self.spec.right_only(rows)

    def _on_time(self, index: int, table: pa.Table, watermark_ms: int) -> Prepared:
        """The rows at or after the watermark, held as they are; the others late."""
        rows, time = self.spec.side_rows(index, table)
        on_time = pc.fill_null(pc.greater_equal(to_epoch_ms(rows.column(time)), watermark_ms), False)
        kept = rows.filter(on_time)
        late = rows.num_rows - kept.num_rows
        late_rows = self.late(index, rows.filter(pc.invert(on_time))) if late else None
        return Prepared(kept if kept.num_rows else None, late=late_rows, late_count=late)


class _TwoSides(OperatorState):
    """What the states of the stream joins share: the held rows of each side, ``left`` and ``right``."""

    spec: StreamJoinSpec
    left: pa.Table
    right: pa.Table

    def process(self, payloads: Sequence[Any], watermark_ms: int, end_of_input: bool) -> Emitted:
        return self.process_inputs([list(payloads), []], watermark_ms, end_of_input)

    @property
    def num_rows(self) -> int:
        return self.left.num_rows + self.right.num_rows

    def state_by_input(self) -> dict[str, Any]:
        return self.spec.state_by_input(self.left, self.right)

    def keys_table(self) -> pa.Table:
        keys = list(self.spec.left_on)
        return _concat([self.left.select(keys), self.right.select(keys)])

    def values(self) -> pa.Table:
        """The rows held, each shaped as a row without a match (the bookkeeping columns left out)."""
        return _concat([self.spec.left_only(self.left), self.spec.right_only(self.right)])


# -- interval joins -------------------------------------------------------------------------------


class IntervalJoin(_StreamJoin):
    """Two streams joined on equal keys where ``l.time + lower <= r.time <= l.time + upper``."""

    def __init__(self, spec: StreamJoinSpec, lower_ms: int, upper_ms: int, upper_column: str | None = None) -> None:
        super().__init__(spec)
        self.lower_ms = lower_ms
        self.upper_ms = upper_ms
        self.upper_column = upper_column
        # A match's time is its left row's, up to `upper` before the right row that completes it; a right-only
        # row's is its own, freed up to `-lower` after the watermark passed it. A left row held until a column
        # says may be any age: the join then reports the oldest it holds instead (OperatorState.output_hold_ms).
        self.output_delay_ms = max(-lower_ms, 0) if upper_column else max(upper_ms, -lower_ms, 0)
        self.holds_output = upper_column is not None

    def upper_ms_of(self, rows: pa.Table, left_ms: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
        """Each left row's upper bound in epoch ms: its time plus ``upper_ms``, or its ``upper_column``."""
        if self.upper_column is None:
            return pc.add(left_ms, self.upper_ms)
        return to_epoch_ms(rows.column(self.upper_column))

    def prepare_input(self, index: int, table: pa.Table, watermark_ms: int) -> Prepared:
        return self._on_time(index, table, watermark_ms)

    def new_state(self) -> OperatorState:
        return _IntervalJoinState(self)


class _IntervalJoinState(_TwoSides):
    """One partition actor's held rows of both sides, each with a row id and whether it matched."""

    def __init__(self, operator: IntervalJoin) -> None:
        self.operator = operator
        self.spec = operator.spec
        self.left = _held(self.spec.left_schema.empty_table(), 0)
        self.right = _held(self.spec.right_schema.empty_table(), 0)
        self.next_id = 0

    def process_inputs(self, payloads: Sequence[Sequence[Any]], watermark_ms: int, end_of_input: bool) -> Emitted:
        spec, lower = self.spec, self.operator.lower_ms
        new_left = self._take(payloads[0], spec.left_schema)
        new_right = self._take(payloads[1], spec.right_schema)
        outputs: list[pa.Table] = []
        matched_left: list[pa.Array] = []
        matched_right: list[pa.Array] = []
        # 1. New left rows against every right row; held left rows against the new right rows.
        everything_right = _concat([self.right, new_right])
        for left, right in ((new_left, everything_right), (self.left, new_right)):
            if left.num_rows and right.num_rows:
                pairs = self._match(left, right)
                if pairs.num_rows:
                    outputs.append(pairs.select(spec.output_schema.names))
                    matched_left.append(pairs.column(_ID).combine_chunks())
                    matched_right.append(pairs.column(_RIGHT_ID).combine_chunks())
        # 2. Hold the new rows; mark what matched, on the sides whose unmatched rows are emitted.
        keeps_left, keeps_right = spec.how in ("left", "outer"), spec.how in ("right", "outer")
        self.left = _concat([self.left, new_left])
        self.left = _mark(self.left, matched_left) if keeps_left else self.left
        self.right = _mark(everything_right, matched_right) if keeps_right else everything_right
        # 3. Free what the watermark passed; emit the unmatched rows of the outer sides.
        left_ms = to_epoch_ms(self.left.column(spec.left_time))
        free_left = pc.fill_null(pc.less(self.operator.upper_ms_of(self.left, left_ms), watermark_ms), True)
        free_right = pc.less(pc.subtract(to_epoch_ms(self.right.column(spec.right_time)), lower), watermark_ms)
        if keeps_left:
            outputs.append(spec.left_only(self.left.filter(pc.and_(free_left, pc.invert(self.left[_MATCHED])))))
        if keeps_right:
            outputs.append(spec.right_only(self.right.filter(pc.and_(free_right, pc.invert(self.right[_MATCHED])))))
        self.left = _free(self.left, free_left)
        self.right = _free(self.right, free_right)
        return _emitted(outputs)

    def _take(self, payloads: Sequence[Any], schema: pa.Schema) -> pa.Table:
        """This epoch's rows of one side, with fresh row ids, not matched yet."""
        present = [p for p in payloads if p is not None and p.num_rows]
        rows = _concat(present) if present else schema.empty_table()
        held = _held(rows, self.next_id)
        self.next_id += rows.num_rows
        return held

    def _match(self, left: pa.Table, right: pa.Table) -> pa.Table:
        """The pairs of equal keys whose times fall in the interval (nulls never match)."""
        spec = self.spec
        right = right.rename_columns(
            [{_ID: _RIGHT_ID, _MATCHED: _RIGHT_MATCHED}.get(name, name) for name in right.column_names]
        )
        pairs = left.join(right, keys=list(spec.left_on), join_type="inner", use_threads=False, coalesce_keys=True)
        if pairs.num_rows == 0:
            return pairs
        left_ms = to_epoch_ms(pairs.column(spec.left_time))
        right_ms = to_epoch_ms(pairs.column(spec.right_time))
        within = pc.and_(
            pc.greater_equal(right_ms, pc.add(left_ms, self.operator.lower_ms)),
            pc.less_equal(right_ms, self.operator.upper_ms_of(pairs, left_ms)),
        )
        return pairs.filter(within)

    def output_hold_ms(self) -> int | None:
        if not self.operator.holds_output or self.left.num_rows == 0:
            return None
        oldest = pc.min(to_epoch_ms(self.left.column(self.spec.left_time))).as_py()
        return None if oldest is None else int(oldest)

    def snapshot(self) -> dict[str, pa.Table]:
        return {LEFT: self.left.drop_columns([_ID]), RIGHT: self.right.drop_columns([_ID])}

    def restore(self, tables: dict[str, pa.Table], watermark_ms: int) -> None:
        """Take back the held rows of both sides, with new row ids (they are unique within an actor only)."""
        left = tables.get(LEFT)
        right = tables.get(RIGHT)
        self.next_id = 0
        if left is not None:
            self.left = _with_ids(left, 0)
            self.next_id = left.num_rows
        if right is not None:
            self.right = _with_ids(right, self.next_id)
            self.next_id += right.num_rows


# -- window joins ---------------------------------------------------------------------------------


class WindowJoin(_StreamJoin):
    """Two streams joined on equal keys within each tumbling or sliding window, once, when the window fires."""

    def __init__(self, spec: StreamJoinSpec, window: Tumbling | Sliding) -> None:
        super().__init__(spec)
        self.window = window
        self.size_ms = window.size_ms
        self.slide_ms = window.slide_ms if isinstance(window, Sliding) else window.size_ms
        self.output_delay_ms = self.size_ms  # a window's rows come out once it ended: its start, or later

    @property
    def output_schema(self) -> pa.Schema:
        time_type = self.spec.left_schema.field(self.spec.left_time).type
        return pa.schema([*self.spec.output_schema, (WINDOW_START, time_type), (WINDOW_END, time_type)])

    def prepare_input(self, index: int, table: pa.Table, watermark_ms: int) -> Prepared:
        """Each row once per window it belongs to that is still open, with the window's start; the rest is late."""
        rows, time = self.spec.side_rows(index, table)
        times = to_epoch_ms(rows.column(time))
        valid = None
        if times.null_count:
            valid = np.asarray(pc.is_valid(times))
            times = times.fill_null(0)
        picked, starts, late = open_fixed_windows(
            np.asarray(times, dtype=np.int64), valid, watermark_ms, self.size_ms, self.slide_ms
        )
        held = rows if picked is None else rows.take(pa.array(picked))
        held = held.append_column(_WINDOW, pa.array(starts, pa.int64()))
        late_rows = None if late is None else self.late(index, rows.filter(pa.array(late)))
        late_count = 0 if late is None else int(late.sum())
        return Prepared(held if held.num_rows else None, late=late_rows, late_count=late_count)

    def late(self, index: int, rows: pa.Table) -> pa.Table | None:
        shaped = super().late(index, rows)
        if shaped is None:
            return None
        kind = self.output_schema.field(WINDOW_START).type
        return shaped.append_column(WINDOW_START, pa.nulls(shaped.num_rows, kind)).append_column(
            WINDOW_END, pa.nulls(shaped.num_rows, kind)
        )

    def new_state(self) -> OperatorState:
        return _WindowJoinState(self)


class _WindowJoinState(_TwoSides):
    """One partition actor's held rows of both sides, each once per window it belongs to."""

    def __init__(self, operator: WindowJoin) -> None:
        self.operator = operator
        self.spec = operator.spec
        self.left = _in_windows(self.spec.left_schema.empty_table())
        self.right = _in_windows(self.spec.right_schema.empty_table())

    def process_inputs(self, payloads: Sequence[Sequence[Any]], watermark_ms: int, end_of_input: bool) -> Emitted:
        self.left = _concat([self.left, *(p for p in payloads[0] if p is not None and p.num_rows)])
        self.right = _concat([self.right, *(p for p in payloads[1] if p is not None and p.num_rows)])
        size = self.operator.size_ms
        fired_left = pc.less_equal(pc.add(self.left.column(_WINDOW), size), watermark_ms)
        fired_right = pc.less_equal(pc.add(self.right.column(_WINDOW), size), watermark_ms)
        left, right = self.left.filter(fired_left), self.right.filter(fired_right)
        self.left = _compact(self.left.filter(pc.invert(fired_left)))
        self.right = _compact(self.right.filter(pc.invert(fired_right)))
        if left.num_rows == 0 and right.num_rows == 0:
            return Emitted(None)
        return Emitted(self._join(left, right))

    def _join(self, left: pa.Table, right: pa.Table) -> pa.Table:
        """The rows of fired windows of both sides, joined on the key and the window with the join's ``how``."""
        spec = self.spec
        left = left.append_column(_FROM_LEFT, pa.array(np.ones(left.num_rows, dtype=bool)))
        joined = left.join(
            right,
            keys=[*spec.left_on, _WINDOW],
            join_type=_JOIN_TYPES[spec.how],
            use_threads=False,
            coalesce_keys=True,
        )
        right_only = pc.is_null(joined.column(_FROM_LEFT))
        if spec.how in ("right", "outer") and joined.num_rows and pc.any(right_only).as_py():
            time_type = spec.left_schema.field(spec.left_time).type
            fixed = {
                spec.left_time: pc.if_else(
                    right_only, _as_time(joined.column(spec.right_time), time_type), joined.column(spec.left_time)
                )
            }
            if not spec.coalesce_keys:  # with left_on/right_on, a right-only row has no left key, as in SQL
                for key in spec.left_on:
                    column = joined.column(key)
                    fixed[key] = pc.if_else(right_only, pa.nulls(len(column), column.type), column)
            for name, column in fixed.items():
                joined = joined.set_column(joined.schema.get_field_index(name), name, column)
        schema = self.operator.output_schema
        starts = joined.column(_WINDOW)
        ends = pc.add(starts, self.operator.size_ms)
        time_type = schema.field(WINDOW_START).type
        columns = [joined.column(name) for name in spec.output_schema.names]
        columns += [_as_time(starts, time_type), _as_time(ends, time_type)]
        return pa.Table.from_arrays(columns, schema=schema)

    def snapshot(self) -> dict[str, pa.Table]:
        return {LEFT: self.left, RIGHT: self.right}

    def restore(self, tables: dict[str, pa.Table], watermark_ms: int) -> None:
        self.left = tables.get(LEFT, self.left)
        self.right = tables.get(RIGHT, self.right)


# -- as-of joins ---------------------------------------------------------------------------------


class AsOfJoin(_StreamJoin):
    """Each left row with the right row of its key whose time is the latest at or before its own.

    A left row waits until the watermark passes its time, so that every right
    row that could apply has arrived; then it is matched and emitted (or, with
    ``how="left"``, emitted with nulls when nothing applies). Of the right
    rows, a partition actor keeps those the watermark has not passed and, per
    key, the newest one it has: the only ones a waiting or later left row can
    still need.
    """

    def __init__(self, spec: StreamJoinSpec, tolerance_ms: int | None) -> None:
        super().__init__(spec)
        self.tolerance_ms = tolerance_ms
        # No output delay: a left row leaves in the first epoch whose watermark passed it, so its time is at or
        # after the watermark of the epoch before, which is what the stages after it were given.

    def prepare_input(self, index: int, table: pa.Table, watermark_ms: int) -> Prepared:
        return self._on_time(index, table, watermark_ms)

    def new_state(self) -> OperatorState:
        return _AsOfJoinState(self)


class _AsOfJoinState(_TwoSides):
    """The left rows that wait for the watermark, and the right rows that may still apply, in arrival order."""

    def __init__(self, operator: AsOfJoin) -> None:
        self.operator = operator
        self.spec = operator.spec
        self.left = self.spec.left_schema.empty_table()
        self.right = _with_ids(self.spec.right_schema.empty_table(), 0)
        self.next_id = 0

    def process_inputs(self, payloads: Sequence[Sequence[Any]], watermark_ms: int, end_of_input: bool) -> Emitted:
        spec = self.spec
        self.left = _concat([self.left, *(p for p in payloads[0] if p is not None and p.num_rows)])
        arrived = [p for p in payloads[1] if p is not None and p.num_rows]
        if arrived:
            rows = _concat(arrived)
            self.right = _concat([self.right, _with_ids(rows, self.next_id)])
            self.next_id += rows.num_rows
        due = pc.less(to_epoch_ms(self.left.column(spec.left_time)), watermark_ms)
        ready = self.left.filter(due)
        self.left = _compact(self.left.filter(pc.invert(due)))
        output = self._match(ready) if ready.num_rows else None
        self.right = self._still_needed(watermark_ms)
        return Emitted(output if output is not None and output.num_rows else None)

    def _match(self, left: pa.Table) -> pa.Table:
        """``left`` with the columns of its right row: the latest of its key at or before its time, within tolerance.

        The rows of both sides are sorted together by key, time, side (right
        first) and arrival; a left row's match is then the last right row
        before it in its key's run, found by a running maximum: no loop.
        """
        spec = self.spec
        keys = list(spec.left_on)
        right = self.right
        if right.num_rows == 0:
            return spec.left_only(left if spec.how == "left" else left.slice(0, 0))
        left_ms = np.asarray(to_epoch_ms(left.column(spec.left_time)).fill_null(0), dtype=np.int64)
        right_ms = np.asarray(to_epoch_ms(right.column(spec.right_time)).fill_null(0), dtype=np.int64)
        both = pa.table(
            {
                **{
                    k: pa.chunked_array([*left.column(k).chunks, *right.column(k).chunks], left.schema.field(k).type)
                    for k in keys
                },
                "__ms": np.concatenate([left_ms, right_ms]),
                "__left": np.concatenate([np.ones(left.num_rows, bool), np.zeros(right.num_rows, bool)]),
                "__order": np.concatenate(
                    [np.arange(left.num_rows, dtype=np.int64), np.asarray(right.column(_ID), dtype=np.int64)]
                ),
            }
        )
        order = pc.sort_indices(
            both,
            sort_keys=[
                *((k, "ascending") for k in keys),
                ("__ms", "ascending"),
                ("__left", "ascending"),
                ("__order", "ascending"),
            ],
        )
        ordered = both.take(order)
        n = ordered.num_rows
        new_key = np.zeros(n, dtype=bool)
        new_key[0:1] = True
        valid = np.ones(n, dtype=bool)
        for k in keys:
            column = ordered.column(k).combine_chunks()
            valid &= np.asarray(column.is_valid())
            if n > 1:
                differs = pc.fill_null(pc.not_equal(column.slice(1), column.slice(0, n - 1)), True)
                new_key[1:] |= np.asarray(differs)
        is_left = np.asarray(ordered.column("__left"))
        positions = np.arange(n)
        run_start = np.maximum.accumulate(np.where(new_key, positions, 0))
        last_right = np.maximum.accumulate(np.where(~is_left, positions, -1))
        found = (last_right >= run_start) & valid
        times = np.asarray(ordered.column("__ms"))
        if self.operator.tolerance_ms is not None:
            found &= times - times[np.maximum(last_right, 0)] <= self.operator.tolerance_ms
        at = np.flatnonzero(is_left)
        left_index = np.asarray(ordered.column("__order"))[at]
        matched = found[at]
        right_position = np.asarray(order)[np.maximum(last_right[at], 0)] - left.num_rows
        rows = left.take(pa.array(left_index))
        payload = right.take(pa.array(np.where(matched, right_position, 0)))
        if spec.how == "inner":
            rows, payload = rows.filter(pa.array(matched)), payload.filter(pa.array(matched))
            matched = np.ones(rows.num_rows, dtype=bool)
        columns = [rows.column(name) for name in spec.left_schema.names]
        unmatched = pa.array(~matched)
        for _, name in spec.right_columns:
            column = payload.column(name)
            columns.append(
                column if matched.all() else pc.if_else(unmatched, pa.nulls(len(column), column.type), column)
            )
        return pa.Table.from_arrays(columns, schema=spec.output_schema)

    def _still_needed(self, watermark_ms: int) -> pa.Table:
        """The right rows a left row can still need: those at or after the watermark, and the newest per key before.

        With a tolerance, one older than the watermark less the tolerance can match nothing more.
        """
        right = self.right
        if right.num_rows == 0:
            return right
        spec = self.spec
        keys = list(spec.left_on)
        ms = pc.fill_null(to_epoch_ms(right.column(spec.right_time)), 0)
        right = right.append_column("__ms", ms)
        right = right.take(
            pc.sort_indices(right, [*((k, "ascending") for k in keys), ("__ms", "ascending"), (_ID, "ascending")])
        )
        n = right.num_rows
        times = np.asarray(right.column("__ms"), dtype=np.int64)
        before = times < watermark_ms
        last_of_key = np.ones(n, dtype=bool)
        for k in keys:
            column = right.column(k).combine_chunks()
            if n > 1:
                same = pc.fill_null(pc.equal(column.slice(1), column.slice(0, n - 1)), False)
                last_of_key[:-1] &= ~np.asarray(same)
        # The newest row before the watermark is the last of its key, or the last before a row after it.
        newest_before = before & (last_of_key | np.append(~before[1:], True))
        keep = ~before | newest_before
        if self.operator.tolerance_ms is not None:
            keep &= times >= watermark_ms - self.operator.tolerance_ms
        kept = right.filter(pa.array(keep)).drop_columns(["__ms"])
        # Ids follow the order of arrival again, from 0, so that they stay small.
        self.next_id = kept.num_rows
        return _compact(
            kept.set_column(kept.schema.get_field_index(_ID), _ID, pa.array(np.arange(kept.num_rows, dtype=np.int64)))
        )

    def snapshot(self) -> dict[str, pa.Table]:
        return {LEFT: self.left, RIGHT: self.right}

    def restore(self, tables: dict[str, pa.Table], watermark_ms: int) -> None:
        """Take back the held rows; the right rows' order of arrival is kept by their ids."""
        self.left = tables.get(LEFT, self.left)
        right = tables.get(RIGHT)
        if right is not None:
            right = right.take(pc.sort_indices(right, [(_ID, "ascending")]))
            ids = pa.array(np.arange(right.num_rows, dtype=np.int64))
            self.right = right.set_column(right.schema.get_field_index(_ID), _ID, ids)
            self.next_id = right.num_rows


# -- helpers --------------------------------------------------------------------------------------


def _emitted(outputs: list[pa.Table]) -> Emitted:
    present = [t for t in outputs if t.num_rows]
    if not present:
        return Emitted(None)
    return Emitted(present[0] if len(present) == 1 else pa.concat_tables(present))


def _held(rows: pa.Table, first_id: int) -> pa.Table:
    """``rows`` as an interval join holds them: with row ids from ``first_id`` and not matched."""
    return _with_ids(rows.append_column(_MATCHED, pa.array(np.zeros(rows.num_rows, dtype=bool))), first_id)


def _with_ids(rows: pa.Table, first_id: int) -> pa.Table:
    ids = pa.array(np.arange(first_id, first_id + rows.num_rows, dtype=np.int64))
    return rows.append_column(_ID, ids)


def _in_windows(rows: pa.Table) -> pa.Table:
    """``rows`` as a window join holds them: with the start of their window."""
    return rows.append_column(_WINDOW, pa.array(np.zeros(rows.num_rows, dtype=np.int64)))


def _mark(rows: pa.Table, matched: list[pa.Array]) -> pa.Table:
    """``rows`` with the rows whose id is in ``matched`` marked as matched."""
    if not matched or rows.num_rows == 0:
        return rows
    ids = pa.concat_arrays(matched)
    flags = pc.or_(rows.column(_MATCHED), pc.is_in(rows.column(_ID), value_set=ids))
    return rows.set_column(rows.schema.get_field_index(_MATCHED), _MATCHED, flags)


def _free(rows: pa.Table, freed: pa.ChunkedArray | pa.Array) -> pa.Table:
    """``rows`` but the ``freed`` ones; the same table, not a copy, when none is (most epochs, for long intervals)."""
    if rows.num_rows == 0 or not pc.any(freed).as_py():
        return rows
    return _compact(rows.filter(pc.invert(freed)))


def _compact(rows: pa.Table) -> pa.Table:
    """``rows`` in one chunk once they are in many: each epoch adds a chunk, and filters keep them apart."""
    return rows.combine_chunks() if rows.num_columns and rows.column(0).num_chunks > _MAX_CHUNKS else rows


def _as_time(column: pa.ChunkedArray | pa.Array, kind: pa.DataType) -> pa.ChunkedArray | pa.Array:
    """A time column (a timestamp or int64 ms) as type ``kind`` (the left's time type)."""
    if column.type == kind:
        return column
    millis = to_epoch_ms(column)
    if pa.types.is_int64(kind):
        return millis
    return pc.cast(pc.cast(millis, pa.timestamp("ms", tz=getattr(kind, "tz", None))), kind)


def _concat(tables: Sequence[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_columns]
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default")
