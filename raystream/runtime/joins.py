"""Joining a stream with a bounded table, as SQL joins them: ``stream.join(table, on=...)``.

A row per match (duplicate table keys multiply), null keys never match, a
left join keeps the stream rows that match nothing with nulls. The table is
read to its end before the stream's first epoch (the stream's source
stages come ``after`` the table's in the plan), and then the stream's rows are matched as they come, by
``pyarrow.Table.join``: no Python loop per row.

Two physical forms, chosen by the planner from the table's size:

- :class:`BroadcastJoinOp`: a small table is sent whole to every actor
  that runs the stream (through the object store, once) and joined there,
  in the stream's chain; no shuffle.
- :class:`TableJoin`: a large table is a keyed stage. Both sides are
  hash-partitioned by the key, and each partition actor keeps its share of
  the table as keyed state, so that it is in checkpoints and restored at any
  parallelism.

Either way the table is state: the broadcast one is saved with each
checkpoint too (:meth:`BroadcastJoinOp.snapshot`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import RaystreamError
from raystream.plan.checks import check_columns
from raystream.plan.logical import JoinHow
from raystream.runtime.operators import OpContext, StatelessOp
from raystream.runtime.stateful import Emitted, KeyedOperator, OperatorState, Prepared, split_table

#: The state table of a table join.
TABLE = "table"


class TableTooLargeError(RaystreamError):
    """A join's table does not fit in the memory it may use."""


def too_large(join: str, nbytes: int, limit: int, where: str) -> TableTooLargeError:
    return TableTooLargeError(
        f"join ({join}): the table holds {nbytes:,} bytes {where}, more than RunConfig.max_join_table_bytes="
        f"{limit:,}; raise max_join_table_bytes (the actors need that much memory), raise the parallelism to spread "
        "it, or filter and select the table down to what the join needs"
    )


def prepare_table(
    table: pa.Table,
    left_on: Sequence[str],
    right_on: Sequence[str],
    output_names: Sequence[tuple[str, str]],
    key_types: Sequence[pa.DataType] | None,
) -> pa.Table:
    """The table as the join keeps it: keys named (and typed) as the stream's, the other columns as in the output.

    Rows with a null key are dropped: they never match.
    """
    check_columns("join (table)", tuple(right_on), table.schema)
    columns: dict[str, Any] = {}
    for i, (left, right) in enumerate(zip(left_on, right_on, strict=True)):
        column = table.column(right)
        columns[left] = column.cast(key_types[i]) if key_types is not None else column
    for name, output in output_names:
        columns[output] = table.column(name)
    prepared = pa.table(columns)
    mask = None
    for left in left_on:
        valid = pc.is_valid(prepared.column(left))
        mask = valid if mask is None else pc.and_(mask, valid)
    if mask is not None and prepared.num_rows and not pc.all(mask).as_py():
        prepared = prepared.filter(mask)
    return prepared


def join_rows(
    stream: pa.Table, table: pa.Table | None, left_on: Sequence[str], how: JoinHow, payload: pa.Schema
) -> pa.Table:
    """The stream's rows joined with a prepared table (see :func:`prepare_table`), stream columns first.

    ``payload`` is the table's columns in the output (all but the keys), for
    when the table has no row.
    """
    if table is None or table.num_rows == 0:
        kept = stream if how == "left" else stream.slice(0, 0)
        for column in payload:
            kept = kept.append_column(column, pa.nulls(kept.num_rows, column.type))
        return kept
    joined = stream.join(
        table,
        keys=list(left_on),
        join_type="inner" if how == "inner" else "left outer",
        use_threads=False,
        coalesce_keys=True,
    )
    return joined.select([*stream.column_names, *payload.names])


@dataclass(frozen=True)
class JoinSpec:
    """What a table join matches and outputs, shared by its two physical forms.

    Attributes:
        name: The join's name (in metrics, errors and checkpoints).
        left_on: The stream's key columns.
        right_on: The table's, in the same order.
        how: ``inner`` or ``left``.
        output_names: Each table column kept (all but the keys) and its name in the output.
        key_types: The stream's key types, which the table's keys are cast to (``None``: unknown until run time).
        payload: The table's columns in the output, for when the table has no row.
        max_table_bytes: ``RunConfig.max_join_table_bytes``.
    """

    name: str
    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    how: JoinHow
    output_names: tuple[tuple[str, str], ...]
    key_types: tuple[pa.DataType, ...] | None
    payload: pa.Schema
    max_table_bytes: int

    def prepare(self, table: pa.Table) -> pa.Table:
        """The table's rows as the join keeps them (see :func:`prepare_table`)."""
        return prepare_table(table, self.left_on, self.right_on, self.output_names, self.key_types)

    def join(self, stream: pa.Table, table: pa.Table | None) -> pa.Table:
        """The stream's rows joined with the prepared ``table``."""
        return join_rows(stream, table, self.left_on, self.how, self.payload)

    def check_size(self, table: pa.Table, where: str) -> None:
        if table.nbytes > self.max_table_bytes:
            raise too_large(self.name, table.nbytes, self.max_table_bytes, where)


class BroadcastJoinOp(StatelessOp):
    """A stream joined in its own chain with a small table that every actor running the chain holds whole.

    The coordinator hands the table's blocks over once it is read
    (:meth:`set_table`), before the stream's first epoch.
    """

    def __init__(self, spec: JoinSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.label = f"join({spec.name}, broadcast)"
        self.table: pa.Table | None = None

    def set_table(self, blocks: Sequence[pa.Table | None], prepared: bool = False) -> None:
        """Keep the table, from the blocks its readers made (or, ``prepared``, from a checkpoint)."""
        present = [b for b in blocks if b is not None and b.num_columns]
        if not present:
            self.table = None
            return
        table = pa.concat_tables(present, promote_options="default")
        self.spec.check_size(table, "(broadcast to every reader)")
        self.table = table if prepared else self.spec.prepare(table)

    def apply(self, table: pa.Table, ctx: OpContext) -> pa.Table:
        check_columns(f"join ({self.name})", self.spec.left_on, table.schema)
        return self.spec.join(table, self.table)


class TableJoin(KeyedOperator):
    """A stream (input 0) joined with a large table (input 1), both hash-partitioned by the key."""

    num_inputs = 2
    tables = (1,)

    def __init__(self, spec: JoinSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.keys = spec.left_on

    @property
    def upsert_keys(self) -> tuple[str, ...] | None:
        return None  # one stream row may match several table rows: the output is appended

    def prepare(self, table: pa.Table, watermark_ms: int) -> Prepared:
        return self.prepare_input(0, table, watermark_ms)

    def prepare_input(self, index: int, table: pa.Table, watermark_ms: int) -> Prepared:
        if index == 1:
            return Prepared(self.spec.prepare(table))
        check_columns(f"join ({self.name})", self.keys, table.schema)
        return Prepared(table)

    def input_keys(self, index: int) -> tuple[str, ...]:
        return self.keys if index == 0 else self.spec.right_on

    def split(self, payload: Any, num_key_groups: int, num_partitions: int) -> list[Any | None]:
        return split_table(payload, self.keys, num_key_groups, num_partitions)

    def new_state(self) -> OperatorState:
        return _TableJoinState(self)


class _TableJoinState(OperatorState):
    def __init__(self, operator: TableJoin) -> None:
        self.operator = operator
        self.table: pa.Table | None = None

    def process(self, payloads: Sequence[Any], watermark_ms: int, end_of_input: bool) -> Emitted:
        return self.process_inputs([list(payloads), []], watermark_ms, end_of_input)

    def process_inputs(self, payloads: Sequence[Sequence[Any]], watermark_ms: int, end_of_input: bool) -> Emitted:
        rows = [p for p in payloads[1] if p is not None and p.num_rows]
        if rows:
            parts = ([self.table] if self.table is not None else []) + rows
            self.table = pa.concat_tables(parts, promote_options="default")
            self.operator.spec.check_size(self.table, "in one partition actor")
        stream = [p for p in payloads[0] if p is not None and p.num_rows]
        if not stream:
            return Emitted(None)
        batch = stream[0] if len(stream) == 1 else pa.concat_tables(stream, promote_options="default")
        return Emitted(self.operator.spec.join(batch, self.table))

    @property
    def num_rows(self) -> int:
        return 0 if self.table is None else self.table.num_rows

    def keys_table(self) -> pa.Table:
        return pa.table({}) if self.table is None else self.table.select(list(self.operator.keys))

    def values(self) -> pa.Table:
        return pa.table({}) if self.table is None else self.table

    def snapshot(self) -> dict[str, pa.Table]:
        return {} if self.table is None else {TABLE: self.table}

    def restore(self, tables: dict[str, pa.Table], watermark_ms: int) -> None:
        self.table = tables.get(TABLE)
