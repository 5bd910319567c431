"""Keyed operators as JSON, so that ``rs.read_state`` rebuilds them from a checkpoint without pickle.

A checkpoint records, for each keyed stage, what its state means: the
operator's kind, keys, aggregates, window and options (a join's
keys, columns and types). ``read_state``
rebuilds the operator from that record alone, then reads the state files
through it. Only the kinds listed here can be rebuilt, and every field is
checked, so a tampered record is an error, never code that runs.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from raystream.aggregates import Aggregate, Top
from raystream.errors import RaystreamError
from raystream.runtime.joins import JoinSpec, TableJoin
from raystream.runtime.stateful import (
    KeyedOperator,
    PerWindowAggregate,
    PerWindowTop,
    RunningAggregate,
    RunningTop,
    SessionAggregate,
    WindowAggregate,
    WindowTop,
)
from raystream.runtime.stream_joins import AsOfJoin, IntervalJoin, StreamJoinSpec, WindowJoin
from raystream.windows import Session, Sliding, Tumbling, Window

__all__ = ["OperatorSpecError", "operator_from_spec", "operator_spec"]


class OperatorSpecError(RaystreamError):
    """A checkpoint's description of an operator is not one raystream wrote."""


def operator_spec(operator: KeyedOperator) -> dict[str, Any]:
    """What :func:`operator_from_spec` needs to rebuild ``operator``, as JSON-able data."""
    spec: dict[str, Any] = {"kind": type(operator).__name__, "name": operator.name, "keys": list(operator.keys)}
    if isinstance(operator, (RunningAggregate, SessionAggregate, WindowAggregate)):
        spec["aggregates"] = [[out, agg.kind, agg.column] for out, agg in operator.aggregates]
    if isinstance(operator, (RunningTop, PerWindowTop, WindowTop)):
        top = operator.top
        spec["top"] = [top.by, top.n, top.ties, top.descending]
    if isinstance(operator, (RunningAggregate, RunningTop)) and not isinstance(operator, PerWindowAggregate):
        spec["emit"] = operator.emit
    if isinstance(operator, (SessionAggregate, WindowAggregate, WindowTop)):
        spec["window"] = _window_spec(operator.window)
        spec["time_column"] = operator.time_column
        spec["time_type"] = _schema_text(pa.schema([("t", operator.time_type)]))
        spec["allowed_lateness_ms"] = operator.allowed_lateness_ms
        spec["late"] = "side" if operator.late_side_output else "drop"
        spec["emit"] = operator.emit
        spec["time_shift_ms"] = operator.time_shift_ms
    if isinstance(operator, TableJoin):
        join = operator.spec
        spec["join"] = {
            "right_on": list(join.right_on),
            "how": join.how,
            "output_names": [list(pair) for pair in join.output_names],
            "key_types": None if join.key_types is None else _schema_text(pa.schema(_key_fields(join.key_types))),
            "payload": _schema_text(join.payload),
            "max_table_bytes": join.max_table_bytes,
        }
    if isinstance(operator, (IntervalJoin, WindowJoin, AsOfJoin)):
        sides = operator.spec
        spec["stream_join"] = {
            "right_on": list(sides.right_on),
            "how": sides.how,
            "time_columns": [sides.left_time, sides.right_time],
            "left_schema": _schema_text(sides.left_schema),
            "right_columns": [list(pair) for pair in sides.right_columns],
            "right_schema": _schema_text(sides.right_schema),
            "coalesce_keys": sides.coalesce_keys,
            "late_side_output": sides.late_side_output,
        }
    if isinstance(operator, IntervalJoin):
        spec["between_ms"] = [operator.lower_ms, operator.upper_ms]
        spec["upper_column"] = operator.upper_column
    if isinstance(operator, WindowJoin):
        spec["window"] = _window_spec(operator.window)
    if isinstance(operator, AsOfJoin):
        spec["tolerance_ms"] = operator.tolerance_ms
    return spec


def operator_from_spec(spec: Any) -> KeyedOperator:
    """Rebuild the operator that :func:`operator_spec` described.

    Raises:
        OperatorSpecError: when ``spec`` is not a description raystream wrote.
    """
    try:
        kind = spec["kind"]
        build = _BUILDERS[kind]
        name, keys = _text(spec["name"]), tuple(_text(k) for k in spec["keys"])
        return build(spec, name, keys)
    except (KeyError, TypeError, ValueError, IndexError, pa.ArrowInvalid) as exc:
        raise OperatorSpecError(
            f"a checkpoint describes a keyed operator raystream cannot rebuild ({type(exc).__name__}: {exc}); "
            "the checkpoint is damaged or was not written by raystream"
        ) from exc


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _schema_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def _schema(text: Any) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(_text(text))))


def _key_fields(types: tuple[pa.DataType, ...]) -> list[tuple[str, pa.DataType]]:
    return [(f"k{i}", t) for i, t in enumerate(types)]


def _table_join(spec: dict[str, Any], name: str, keys: tuple[str, ...]) -> TableJoin:
    join = spec["join"]
    how = join["how"]
    if how not in ("inner", "left"):
        raise ValueError(f"how={how!r}")
    key_types = None if join["key_types"] is None else tuple(_schema(join["key_types"]).types)
    output_names = tuple((_text(column), _text(output)) for column, output in join["output_names"])
    right_on = tuple(_text(k) for k in join["right_on"])
    if len(right_on) != len(keys) or (key_types is not None and len(key_types) != len(keys)):
        raise ValueError("the join's keys do not pair up")
    return TableJoin(
        JoinSpec(
            name, keys, right_on, how, output_names, key_types, _schema(join["payload"]), int(join["max_table_bytes"])
        )
    )


def _stream_join_spec(spec: dict[str, Any], name: str, keys: tuple[str, ...]) -> StreamJoinSpec:
    join = spec["stream_join"]
    how = join["how"]
    if how not in ("inner", "left", "right", "outer"):
        raise ValueError(f"how={how!r}")
    left_time, right_time = (_text(column) for column in join["time_columns"])
    right_columns = tuple((_text(column), _text(output)) for column, output in join["right_columns"])
    right_on = tuple(_text(k) for k in join["right_on"])
    right_schema = _schema(join["right_schema"])
    if len(right_on) != len(keys) or right_schema.names != [*keys, *(out for _, out in right_columns)]:
        raise ValueError("the join's keys and columns do not pair up")
    return StreamJoinSpec(
        name=name,
        left_on=keys,
        right_on=right_on,
        how=how,
        left_time=left_time,
        right_time=right_time,
        left_schema=_schema(join["left_schema"]),
        right_columns=right_columns,
        right_types=tuple(right_schema.types[len(keys) :]),
        coalesce_keys=bool(join["coalesce_keys"]),
        late_side_output=bool(join["late_side_output"]),
    )


def _interval_join(spec: dict[str, Any], name: str, keys: tuple[str, ...]) -> IntervalJoin:
    lower, upper = (int(bound) for bound in spec["between_ms"])
    upper_column = None if spec["upper_column"] is None else _text(spec["upper_column"])
    return IntervalJoin(_stream_join_spec(spec, name, keys), lower, upper, upper_column)


def _window_spec(window: Window) -> dict[str, Any]:
    if isinstance(window, Tumbling):
        return {"kind": "tumbling", "size_ms": window.size_ms}
    if isinstance(window, Sliding):
        return {"kind": "sliding", "size_ms": window.size_ms, "slide_ms": window.slide_ms}
    return {"kind": "session", "gap_ms": window.gap_ms}


def _window(spec: dict[str, Any]) -> Window:
    kind = spec["kind"]
    if kind == "tumbling":
        return Tumbling(int(spec["size_ms"]))
    if kind == "sliding":
        return Sliding(int(spec["size_ms"]), int(spec["slide_ms"]))
    if kind == "session":
        return Session(int(spec["gap_ms"]))
    raise ValueError(f"unknown window kind {kind!r}")


def _aggregates(spec: dict[str, Any]) -> tuple[tuple[str, Aggregate], ...]:
    return tuple((_text(out), Aggregate(kind, column)) for out, kind, column in spec["aggregates"])


def _top(spec: dict[str, Any]) -> Top:
    by, n, ties, descending = spec["top"]
    return Top(_text(by), int(n), bool(ties), bool(descending))


def _window_options(spec: dict[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    schema = _schema(spec["time_type"])
    late, emit = spec["late"], spec["emit"]
    if late not in ("drop", "side") or emit not in ("append", "update"):
        raise ValueError(f"late={late!r}, emit={emit!r}")
    return {
        "name": name,
        "keys": keys,
        "time_column": _text(spec["time_column"]),
        "time_type": schema.field("t").type,
        "allowed_lateness_ms": int(spec["allowed_lateness_ms"]),
        "late": late,
        "emit": emit,
        "time_shift_ms": int(spec["time_shift_ms"]),
    }


def _running_emit(spec: dict[str, Any]) -> str:
    emit = spec["emit"]
    if emit not in ("update", "final"):
        raise ValueError(f"emit={emit!r}")
    return str(emit)


def _fixed_window(spec: dict[str, Any]) -> Tumbling | Sliding:
    window = _window(spec["window"])
    if isinstance(window, Session):
        raise ValueError("a session window where a tumbling or sliding one belongs")
    return window


def _session_window(spec: dict[str, Any]) -> Session:
    window = _window(spec["window"])
    if not isinstance(window, Session):
        raise ValueError("a fixed window where a session window belongs")
    return window


_Builder = Callable[[dict[str, Any], str, tuple[str, ...]], KeyedOperator]
_BUILDERS: dict[str, _Builder] = {
    "RunningAggregate": lambda s, n, k: RunningAggregate(n, k, _aggregates(s), _running_emit(s)),
    "PerWindowAggregate": lambda s, n, k: PerWindowAggregate(n, k, _aggregates(s)),
    "RunningTop": lambda s, n, k: RunningTop(n, k, _top(s), _running_emit(s)),
    "PerWindowTop": lambda s, n, k: PerWindowTop(n, k, _top(s)),
    "WindowAggregate": lambda s, n, k: WindowAggregate(
        _fixed_window(s), aggregates=_aggregates(s), **_window_options(s, n, k)
    ),
    "SessionAggregate": lambda s, n, k: SessionAggregate(
        _session_window(s), aggregates=_aggregates(s), **_window_options(s, n, k)
    ),
    "WindowTop": lambda s, n, k: WindowTop(_fixed_window(s), _top(s), **_window_options(s, n, k)),
    "TableJoin": _table_join,
    "IntervalJoin": _interval_join,
    "WindowJoin": lambda s, n, k: WindowJoin(_stream_join_spec(s, n, k), _fixed_window(s)),
    "AsOfJoin": lambda s, n, k: AsOfJoin(
        _stream_join_spec(s, n, k), None if s["tolerance_ms"] is None else int(s["tolerance_ms"])
    ),
}
