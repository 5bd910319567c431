"""Plan-time checks of columns and types, shared by the API and the operators that check again at run time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raystream._time import is_event_time_type
from raystream.aggregates import Aggregate, Top
from raystream.errors import PlanError
from raystream.kernels.exprs import evaluate_exprs
from raystream.kernels.keyed import KeyedAggregation, orderable


def check_columns(operator: str, names: Iterable[str], schema: pa.Schema | None) -> None:
    """Raise a PlanError naming the first of ``names`` that ``schema`` lacks.

    Does nothing when ``schema`` is ``None`` (a user function's output, known
    only at run time, where the same check runs on the first batch).
    """
    if schema is None:
        return
    for name in names:
        if name not in schema.names:
            raise PlanError(
                f"{operator}: unknown column {name!r}; the stream has columns: {', '.join(schema.names) or '(none)'}"
            )


def check_time_column(operator: str, column: str, schema: pa.Schema | None) -> None:
    """Check that ``column`` exists and holds timestamps or int64 epoch milliseconds."""
    check_columns(operator, [column], schema)
    if schema is not None and not is_event_time_type(schema.field(column).type):
        raise PlanError(
            f"{operator}: time column {column!r} has type {schema.field(column).type}; "
            "use a timestamp column or an int64 of epoch milliseconds (cast it with with_columns)"
        )


def expr_output_schema(operator: str, schema: pa.Schema | None, exprs: Mapping[str, pc.Expression]) -> pa.Schema:
    assert schema is not None
    try:
        return evaluate_exprs(schema.empty_table(), exprs).schema
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise PlanError(
            f"{operator}: cannot evaluate {', '.join(map(str, exprs.values()))} over columns "
            f"{', '.join(schema.names)}: {exc}"
        ) from exc


def check_top(
    operator: str, keys: tuple[str, ...], schema: pa.Schema | None, by: Any, n: Any, ties: Any, descending: Any
) -> Top:
    """Check the arguments of ``top`` against the stream's schema.

    Without a schema (after a user function) the column checks run again on
    the first batch, in the actor that ranks it.

    Raises:
        PlanError: naming the argument or column, and how to fix it.
    """
    if not isinstance(by, str):
        raise PlanError(f"{operator}: by= must be the name of the column to rank by, got {by!r}")
    check_columns(f"{operator} by", [by], schema)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PlanError(f"{operator}: n must be a positive int, how many ranks to keep per key; got {n!r}")
    for option, value in (("ties", ties), ("descending", descending)):
        if not isinstance(value, bool):
            raise PlanError(f"{operator}: {option} must be True or False, got {value!r}")
    if by in keys:
        raise PlanError(
            f"{operator}: by={by!r} is a key column, so all the rows of a key would tie; rank by another column"
        )
    if schema is not None:
        kind = schema.field(by).type
        if not orderable(kind):
            raise PlanError(
                f"{operator}: by={by!r} has type {kind}, which has no order; "
                "rank by a number, string, boolean or time column"
            )
        for key in keys:
            if not orderable(schema.field(key).type):
                raise PlanError(
                    f"{operator}: key column {key!r} has type {schema.field(key).type}, which top cannot sort; "
                    "key by numbers, strings, booleans or times (convert it with with_columns)"
                )
        if not ties:
            for other in schema:
                if other.name not in (*keys, by) and not orderable(other.type):
                    raise PlanError(
                        f"{operator}: ties=False breaks ties by the other columns, and {other.name!r} has type "
                        f"{other.type}, which cannot be sorted; drop it with select(...), or keep ties with ties=True"
                    )
    return Top(by, n, ties, descending)


def named_aggregates(aggregates: Any, named: dict[str, Aggregate]) -> dict[str, Aggregate]:
    """``agg``'s positional mapping and keyword aggregates, as one dict; an unnamed aggregate is an error."""
    if aggregates is None:
        return dict(named)
    if isinstance(aggregates, Aggregate):
        raise PlanError(f"agg: name each aggregate, as agg(n={aggregates!r}): the output column needs a name")
    if not isinstance(aggregates, Mapping):
        raise PlanError(
            f"agg: expected aggregates by name, as agg(n=rs.count()) or agg({{'n': rs.count()}}), "
            f"got {type(aggregates).__name__}"
        )
    return {**aggregates, **named}


def check_aggregates(
    aggregates: dict[str, Aggregate], keys: tuple[str, ...], schema: pa.Schema | None
) -> dict[str, Aggregate]:
    if not aggregates:
        raise PlanError("agg: name at least one aggregate, as agg(n=rs.count())")
    for out, agg in aggregates.items():
        if not isinstance(agg, Aggregate):
            raise PlanError(f"agg: {out}= must be an aggregate such as rs.count() or rs.sum('price'), got {agg!r}")
        if out in keys:
            raise PlanError(f"agg: output name {out!r} is also a key column; choose another name")
        if agg.column is not None:
            check_columns(f"agg {out}={agg!r}", [agg.column], schema)
    return aggregates


def schema_hint(schema: pa.Schema | None) -> pa.Schema | None:
    if schema is not None and not isinstance(schema, pa.Schema):
        raise PlanError(f"schema= must be a pyarrow.Schema, got {type(schema).__name__}")
    return schema


def agg_output_schema(schema: pa.Schema, keys: tuple[str, ...], aggregates: Mapping[str, Aggregate]) -> pa.Schema:
    aggregation = KeyedAggregation(keys, list(aggregates.items()))
    try:
        return aggregation.finalize(aggregation.partial(schema.empty_table())).schema
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise PlanError(f"agg: {exc}; check the aggregates' column types") from exc
