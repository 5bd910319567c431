"""Physical stateless operators. A chain of them is fused into one actor.

Every operator takes a whole ``pyarrow.Table`` and returns one. User
functions run inside :func:`_call_user_function`, which turns their errors
into a :class:`UserFunctionError` that carries their own traceback, the
epoch and the split or partition.
"""

from __future__ import annotations

import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raystream._time import to_epoch_ms
from raystream.errors import UserFunctionError
from raystream.kernels.exprs import evaluate_exprs
from raystream.plan.checks import check_columns, check_time_column
from raystream.sources.base import dead_letter_table


@dataclass
class OpContext:
    """Where a chain is running, for error messages, and what it observed.

    Attributes:
        epoch: The epoch id.
        location: ``"split 'a.parquet#rg0-3'"`` or ``"partition 2 of 'agg'"``.
        max_event_time_ms: The largest event time the chain's event-time
            operator saw, or ``None``.
        split_id: The split being read, in a reader.
        source: The source stage being read, in a reader: the ``source`` of its dead letters.
        dead_letters: Rows the chain refused (no event time), as dead letters.
        null_time_rows: How many rows had no event time.
    """

    epoch: int
    location: str
    max_event_time_ms: int | None = field(default=None)
    split_id: str | None = None
    source: str | None = None
    dead_letters: list[pa.Table] = field(default_factory=list)
    null_time_rows: int = 0


def _call_user_function(label: str, ctx: OpContext, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise UserFunctionError(
            f"{label} raised in epoch {ctx.epoch}, {ctx.location}:\n{traceback.format_exc()}"
        ) from exc


def _name_of(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class StatelessOp(ABC):
    """One vectorized table -> table step of a fused chain."""

    label: str

    @abstractmethod
    def apply(self, table: pa.Table, ctx: OpContext) -> pa.Table:
        """Transform one batch. Called once per batch, never with an empty table."""


class FilterOp(StatelessOp):
    def __init__(self, predicate: Any) -> None:
        self.predicate = predicate
        self.label = (
            f"filter({predicate})" if isinstance(predicate, pc.Expression) else f"filter({_name_of(predicate)})"
        )

    def apply(self, table: pa.Table, ctx: OpContext) -> pa.Table:
        if isinstance(self.predicate, pc.Expression):
            return table.filter(self.predicate)
        mask = _call_user_function(self.label, ctx, self.predicate, table)
        mask = mask if isinstance(mask, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(mask, dtype=bool))
        if len(mask) != table.num_rows or not pa.types.is_boolean(mask.type):
            raise UserFunctionError(
                f"{self.label} must return a boolean mask of {table.num_rows} values in epoch {ctx.epoch}, "
                f"{ctx.location}; it returned {len(mask)} values of type {mask.type}"
            )
        return table.filter(mask)


class MapBatchesOp(StatelessOp):
    def __init__(self, fn: Callable[[Any], Any], batch_format: str) -> None:
        self.fn = fn
        self.batch_format = batch_format
        self.label = f"map_batches({_name_of(fn)})"

    def apply(self, table: pa.Table, ctx: OpContext) -> pa.Table:
        batch: Any = table.to_pandas() if self.batch_format == "pandas" else table
        result = _call_user_function(self.label, ctx, self.fn, batch)
        return _as_table(result, self.label, ctx)


class MapRowsOp(StatelessOp):
    """``map`` and ``flat_map``. The slow path: a Python call per row, by definition of the API."""

    def __init__(self, fn: Callable[[dict[str, Any]], Any], flat: bool) -> None:
        self.fn = fn
        self.flat = flat
        self.label = f"{'flat_map' if flat else 'map'}({_name_of(fn)})"

    def apply(self, table: pa.Table, ctx: OpContext) -> pa.Table:
        def run(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            # A loop per row is what map/flat_map promise; map_batches is the vectorized path.
            if self.flat:
                return [out for row in rows for out in self.fn(row)]
            return [self.fn(row) for row in rows]

        results = _call_user_function(self.label, ctx, run, table.to_pylist())
        if not results:
            return pa.table({})
        try:
            return pa.Table.from_pylist(results)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise UserFunctionError(
                f"{self.label} must return dicts of column -> value with consistent types "
                f"(epoch {ctx.epoch}, {ctx.location}): {exc}"
            ) from exc


class SelectOp(StatelessOp):
    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.label = f"select({', '.join(self.columns)})"

    def apply(self, table: pa.Table, ctx: OpContext) -> pa.Table:
        check_columns("select", self.columns, table.schema)
        return table.select(self.columns)


class WithColumnsOp(StatelessOp):
    def __init__(self, exprs: Sequence[tuple[str, Any]]) -> None:
        self.exprs = list(exprs)
        self.label = f"with_columns({', '.join(name for name, _ in self.exprs)})"

    def apply(self, table: pa.Table, ctx: OpContext) -> pa.Table:
        expressions = {name: e for name, e in self.exprs if isinstance(e, pc.Expression)}
        computed: dict[str, Any] = {}
        if expressions:
            computed.update(zip(expressions, evaluate_exprs(table, expressions).columns, strict=True))
        for name, fn in self.exprs:
            if name not in expressions:
                value = _call_user_function(f"with_columns {name}={_name_of(fn)}", ctx, fn, table)
                value = value if isinstance(value, (pa.Array, pa.ChunkedArray)) else pa.array(value)
                if len(value) != table.num_rows:
                    raise UserFunctionError(
                        f"with_columns {name}= must return {table.num_rows} values, returned {len(value)} "
                        f"(epoch {ctx.epoch}, {ctx.location})"
                    )
                computed[name] = value
        for name, _ in self.exprs:
            index = table.schema.get_field_index(name)
            if index >= 0:
                table = table.set_column(index, name, computed[name])
            else:
                table = table.append_column(name, computed[name])
        return table


class EventTimeOp(StatelessOp):
    """Records the largest event time of each batch, for the watermark. Passes rows through."""

    def __init__(self, column: str, delay_ms: int = 0, idle_timeout_ms: int | None = None) -> None:
        self.column = column
        #: How the source's watermark follows this column (``with_watermark``'s options).
        self.delay_ms = delay_ms
        self.idle_timeout_ms = idle_timeout_ms
        self.label = f"event time({column})"

    def apply(self, table: pa.Table, ctx: OpContext) -> pa.Table:
        check_time_column("with_watermark", self.column, table.schema)
        times = table.column(self.column)
        if times.null_count:
            # A row without an event time belongs to no window and moves no watermark: it is a dead letter,
            # counted apart from late rows.
            missing = pc.is_null(times)
            refused = table.filter(missing)
            ctx.null_time_rows += refused.num_rows
            # A decoded row has no place of its own in the split any more: its position is null.
            ctx.dead_letters.append(
                dead_letter_table(
                    ctx.source or "source",
                    ctx.split_id,
                    raw=rows_as_json(refused),
                    error=f"no event time: column {self.column!r} is null",
                )
            )
            table = table.filter(pc.invert(missing))
            if table.num_rows == 0:
                return table
        largest = pc.max(to_epoch_ms(table.column(self.column))).as_py()
        if largest is not None:
            ctx.max_event_time_ms = largest if ctx.max_event_time_ms is None else max(ctx.max_event_time_ms, largest)
        return table


def rows_as_json(table: pa.Table) -> list[bytes]:
    """Each row as a JSON object (times as ISO text), for dead letters of rows that were already decoded."""
    text = table.to_pandas().to_json(orient="records", lines=True, date_format="iso", date_unit="ms")
    return [line.encode() for line in text.splitlines()]


def run_chain(ops: Sequence[StatelessOp], table: pa.Table, ctx: OpContext) -> pa.Table:
    """Apply ``ops`` in order; stop early once no row is left."""
    for op in ops:
        if table.num_rows == 0:
            break
        table = op.apply(table, ctx)
    return table


def _as_table(result: Any, label: str, ctx: OpContext) -> pa.Table:
    if isinstance(result, pa.Table):
        return result
    if isinstance(result, pa.RecordBatch):
        return pa.Table.from_batches([result])
    if isinstance(result, pd.DataFrame):
        return pa.Table.from_pandas(result, preserve_index=False)
    if isinstance(result, dict):
        return pa.table(result)
    raise UserFunctionError(
        f"{label} must return a pyarrow.Table or a pandas.DataFrame; it returned {type(result).__name__} "
        f"in epoch {ctx.epoch}, {ctx.location}"
    )
