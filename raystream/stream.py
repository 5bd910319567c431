"""The lazy, frozen pipeline plan and its API.

A :class:`Stream` wraps one node of a logical plan. Every operator returns a
new ``Stream`` whose node points at its parent's; nothing runs until a
terminal (``to_pandas``, ``write_parquet``, ``print``, ``foreach_batch``,
``start``) is called. Columns are checked when an operator is added, so an
unknown column is a :class:`~raystream.errors.PlanError` at plan time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raystream._time import Duration, duration_ms, is_event_time_type
from raystream.aggregates import Aggregate
from raystream.errors import PlanError
from raystream.plan.checks import (
    agg_output_schema,
    check_aggregates,
    check_columns,
    check_time_column,
    check_top,
    expr_output_schema,
    named_aggregates,
    schema_hint,
)
from raystream.plan.logical import (
    KEYED_NODES,
    AsOfJoinNode,
    BatchFormat,
    ColumnExpr,
    DeadLettersNode,
    FilterNode,
    IntervalJoinNode,
    JoinHow,
    KeyedAggNode,
    LateEventsNode,
    MapBatchesNode,
    MapRowsNode,
    Node,
    Predicate,
    SelectNode,
    SourceNode,
    StreamJoinHow,
    StreamJoinNode,
    TableJoinNode,
    TopNode,
    UnionNode,
    WatermarkNode,
    WindowAggNode,
    WindowJoinNode,
    WindowNode,
    WindowTopNode,
    WithColumnsNode,
    check_fires_once,
    is_bounded,
    source_nodes,
    walk,
    window_origin,
)
from raystream.windows import WINDOW_END, WINDOW_START, WINDOW_TIME_SHIFT_MS, Session, Sliding, Tumbling, Window

if TYPE_CHECKING:
    from raystream.run_config import RunConfig
    from raystream.runtime.job import Job
    from raystream.sinks.base import Sink


# -- the API -----------------------------------------------------------------------


class Stream:
    """A lazy pipeline of Arrow micro-batches. Build one with a source function such as ``rs.read_parquet``."""

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def node(self) -> Node:
        """The logical plan node this stream stands for."""
        return self._node

    @property
    def schema(self) -> pa.Schema | None:
        """The schema of the stream's batches, or ``None`` after a user function (known at run time)."""
        return self._node.schema

    @property
    def columns(self) -> list[str] | None:
        """The column names, or ``None`` when unknown until run time."""
        return None if self.schema is None else list(self.schema.names)

    def __repr__(self) -> str:
        steps = " -> ".join(type(n).__name__.removesuffix("Node") for n in walk(self._node))
        return f"Stream({steps}; columns={self.columns})"

    # -- stateless operators -----------------------------------------------

    def filter(self, predicate: Predicate) -> Stream:
        """Keep the rows for which ``predicate`` is true.

        Args:
            predicate: A ``pyarrow.compute`` expression such as
                ``pc.field("country") == "DE"``, or a function from a
                ``pyarrow.Table`` to a boolean mask (array or list).
        """
        if isinstance(predicate, pc.Expression):
            if self.schema is not None:
                try:
                    self.schema.empty_table().filter(predicate)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                    raise PlanError(
                        f"filter: cannot evaluate {predicate} over columns {', '.join(self.schema.names)}: {exc}"
                    ) from exc
        elif not callable(predicate):
            raise PlanError(f"filter: expected a pyarrow.compute expression or a function, got {predicate!r}")
        return Stream(FilterNode(inputs=(self._node,), schema=self.schema, predicate=predicate))

    def map_batches(
        self, fn: Callable[[Any], Any], batch_format: BatchFormat = "pyarrow", schema: pa.Schema | None = None
    ) -> Stream:
        """Apply ``fn`` to whole batches: the fast path for user code.

        Args:
            fn: Takes a ``pyarrow.Table`` (or a ``pandas.DataFrame`` with
                ``batch_format="pandas"``) and returns a table or frame.
            batch_format: ``"pyarrow"`` (zero-copy) or ``"pandas"``.
            schema: The schema ``fn`` returns, when known: later operators
                then check their columns at plan time instead of on the
                first batch, and windows know the time column's type.
        """
        if batch_format not in ("pyarrow", "pandas"):
            raise PlanError(f"map_batches: batch_format must be 'pyarrow' or 'pandas', got {batch_format!r}")
        if not callable(fn):
            raise PlanError(f"map_batches: expected a function, got {fn!r}")
        return Stream(
            MapBatchesNode(inputs=(self._node,), schema=schema_hint(schema), fn=fn, batch_format=batch_format)
        )

    def map(self, fn: Callable[[dict[str, Any]], dict[str, Any]], schema: pa.Schema | None = None) -> Stream:
        """Apply ``fn`` to each row, as a dict, returning a dict.

        This is the slow path: rows are converted to Python objects one by
        one. Prefer :meth:`map_batches` or :meth:`with_columns` for anything
        that sees many rows. ``schema`` is as for :meth:`map_batches`.
        """
        if not callable(fn):
            raise PlanError(f"map: expected a function, got {fn!r}")
        return Stream(MapRowsNode(inputs=(self._node,), schema=schema_hint(schema), fn=fn, flat=False))

    def flat_map(
        self, fn: Callable[[dict[str, Any]], Iterable[dict[str, Any]]], schema: pa.Schema | None = None
    ) -> Stream:
        """Apply ``fn`` to each row, as a dict, returning any number of rows.

        Like :meth:`map`, this is the slow path, one Python call per row.
        """
        if not callable(fn):
            raise PlanError(f"flat_map: expected a function, got {fn!r}")
        return Stream(MapRowsNode(inputs=(self._node,), schema=schema_hint(schema), fn=fn, flat=True))

    def select(self, *columns: str) -> Stream:
        """Keep only ``columns``, in that order."""
        if not columns:
            raise PlanError("select: name at least one column")
        check_columns("select", columns, self.schema)
        schema = None if self.schema is None else pa.schema([self.schema.field(c) for c in columns])
        return Stream(SelectNode(inputs=(self._node,), schema=schema, columns=tuple(columns)))

    def with_columns(self, **exprs: ColumnExpr) -> Stream:
        """Add or replace columns.

        Args:
            **exprs: ``name=expression``, where the expression is a
                ``pyarrow.compute`` expression (``pc.field("price") * 0.908``)
                or a function from a ``pyarrow.Table`` to an array.
        """
        if not exprs:
            raise PlanError("with_columns: name at least one column, as with_columns(total=pc.field('a') + 1)")
        for name, expr in exprs.items():
            if not isinstance(expr, pc.Expression) and not callable(expr):
                raise PlanError(f"with_columns: {name}= must be a pyarrow.compute expression or a function")
        schema: pa.Schema | None = None
        if self.schema is not None and all(isinstance(e, pc.Expression) for e in exprs.values()):
            projected = {n: pc.field(n) for n in self.schema.names if n not in exprs}
            projected.update(exprs)  # type: ignore[arg-type]
            out = expr_output_schema("with_columns", self.schema, projected)
            order = [n for n in self.schema.names] + [n for n in exprs if n not in self.schema.names]
            schema = pa.schema([out.field(n) for n in order])
        return Stream(WithColumnsNode(inputs=(self._node,), schema=schema, exprs=tuple(exprs.items())))

    def with_watermark(self, column: str, delay: Duration = "0s", idle_timeout: Duration | None = None) -> Stream:
        """Set the event-time column and how far events may arrive out of order.

        The watermark is the largest event time seen in each split, minus
        ``delay``, and then the minimum over the splits still active.

        Args:
            column: A timestamp column or an int64 of epoch milliseconds.
            delay: The allowed out-of-orderness, such as ``"5s"``.
            idle_timeout: A split that yields nothing for this long stops
                holding the watermark back, until it yields again.
        """
        check_time_column("with_watermark", column, self.schema)
        delay_ms = duration_ms(delay, "with_watermark delay")
        if delay_ms < 0:
            raise PlanError(f"with_watermark: delay must not be negative, got {delay!r}")
        idle_ms = None if idle_timeout is None else duration_ms(idle_timeout, "with_watermark idle_timeout")
        for node in walk(self._node):
            if isinstance(node, KEYED_NODES):
                raise PlanError("with_watermark: set the watermark before key_by(...), on the input events")
        return Stream(
            WatermarkNode(
                inputs=(self._node,), schema=self.schema, column=column, delay_ms=delay_ms, idle_timeout_ms=idle_ms
            )
        )

    def key_by(self, *keys: str) -> KeyedStream:
        """Partition the stream by ``keys``; rows with equal keys meet in one partition actor.

        After a window, keys that include ``window_end`` make a per-window
        stage, as ``GROUP BY window_start, window_end`` after a window does
        in Flink: its ``agg`` or ``top`` emits each key once, when the
        watermark passes its ``window_end`` (the epoch the window fired), and
        then frees it. See :class:`KeyedStream`.
        """
        if not keys:
            raise PlanError("key_by: name at least one key column")
        check_columns("key_by", keys, self.schema)
        return KeyedStream(self, tuple(keys))

    def late_events(self) -> Stream:
        """The rows a window dropped as late, as a stream that can go to any sink.

        Only for the output of ``window(..., late="side")``, or of a join of
        two streams with ``late="side"``. Running this stream runs the whole
        pipeline and writes the late rows, as they reached the window,
        instead of the windows; a join's late rows of either side are shaped
        as its rows without a match (the other side's columns null). A job started on the
        windows themselves collects its late rows too: ``Job.late_events()``.
        """
        node = self._node
        if isinstance(node, StreamJoinNode) and node.late == "side":
            # A join's late rows, of either side, are shaped as its rows without a match.
            return Stream(LateEventsNode(inputs=(node,), schema=node.schema))
        if not isinstance(node, WindowNode) or node.late != "side":
            raise PlanError(
                "late_events: only the output of key_by(...).window(w, late='side').agg(...) (or .top(...)), "
                "or of a join of two streams with late='side', has late events"
            )
        return Stream(LateEventsNode(inputs=(node,), schema=node.input.schema))

    def dead_letters(self) -> Stream:
        """The records that could not become rows, as a stream that can go to any sink.

        They are the records the source could not decode, and the rows
        without an event time. The columns are the same for every source
        (``raystream.sources.base.DEAD_LETTER_SCHEMA``): ``source``, the
        source stage that read the record (``"source"``, ``"source-2"``...);
        ``split_id``, its split (``"clicks/2"`` for a Kafka partition, the
        file's path for a file); ``position``, where it is in the split (the
        Kafka offset, a file's line number from 1, null for a row without an
        event time); ``raw``, the record's bytes (the row as JSON for a row
        without an event time); and the ``error``.
        Running this stream runs the whole pipeline and writes the dead
        letters instead of its output; a job started on the pipeline itself
        keeps them too: ``Job.dead_letters()``.
        """
        from raystream.sources.base import DEAD_LETTER_SCHEMA

        sources = [n.source for n in source_nodes(self._node)]
        has_event_time = any(
            isinstance(n, WatermarkNode) or (isinstance(n, SourceNode) and n.source_time_column is not None)
            for n in walk(self._node)
        )
        if not any(source.has_dead_letters for source in sources) and not has_event_time:
            raise PlanError(
                f"dead_letters: {', '.join(s.name for s in sources)} has no dead letters (it decodes nothing, and the "
                "stream has no event "
                "time whose nulls would be refused); read_kafka(..., format='json'), read_json(...) and "
                "read_csv(...) route malformed records there (columns source, split_id, position, raw, error), "
                "unless errors='fail'"
            )
        return Stream(DeadLettersNode(inputs=(self._node,), schema=DEAD_LETTER_SCHEMA))

    # -- several inputs --------------------------------------------------------

    def union(self, *others: Stream) -> Stream:
        """The rows of this stream and of ``others``: see :func:`union`."""
        return union(self, *others)

    def join(
        self,
        other: Stream,
        on: str | list[str] | None = None,
        *,
        how: StreamJoinHow = "inner",
        left_on: str | list[str] | None = None,
        right_on: str | list[str] | None = None,
        suffix: str = "_right",
        between: tuple[Duration, Duration] | None = None,
        window: Window | None = None,
        ttl: Duration | None = None,
        late: Literal["drop", "side"] = "drop",
        name: str = "join",
    ) -> Stream:
        """Join with a bounded table, or, with ``between``, with another stream in event time.

        **With a table** (``other`` is bounded, no ``between``): enrich each
        row with the matching rows of the table, as SQL's ``JOIN ... ON``
        does. A row per match (duplicate table keys multiply the row), null
        keys never match, and ``how="left"`` keeps the rows that match
        nothing, with nulls in the table's columns. The table's key columns
        are not repeated in the output (their values equal the stream's);
        another table column whose name the stream has too gets ``suffix``.
        The table is read to its end before the stream's first row. One whose
        sources hold at most ``RunConfig.broadcast_join_max_bytes`` is sent
        whole to the actors that run the stream and joined there; a larger
        one is hash-partitioned by the key with the stream. Either way it is
        state: in the checkpoints, and restored with the job.

        **An interval join** (``between=(lower, upper)``): a row ``l`` of this
        stream and a row ``r`` of ``other`` match when their keys are equal
        and ``l.time + lower <= r.time <= l.time + upper``, both inclusive
        (``between=("-5s", "10m")``). The upper bound may also be a time
        column of this stream, and the lower one its time column itself:
        ``between=("date_time", "expires")`` matches the bids of an auction
        while it is open, as Nexmark's q4 does; a row is then held until the
        watermark passes its upper bound, and the stages after the join see
        their watermark held back by the oldest row held. Both streams need event time. Each
        match is emitted once, when its second row arrives; ``how="left"``,
        ``"right"`` and ``"outer"`` also emit the rows that matched nothing,
        with nulls for the other side, once the watermark passes the last
        time they could match. Rows are held only until then. With ``on=``
        the keys appear once (a right-only row has its key); with
        ``left_on``/``right_on`` both sides' keys are kept. Every right
        column whose name clashes gets ``suffix``, the right's time column
        included. The output's time column is the left's: the left row's
        time, or the right row's for a right-only row. A row that reaches
        the join behind its stream's watermark is late: it is counted in
        ``metrics()["late_rows"]`` and matches nothing.

        **A regular join** (``ttl=``): the rows of both streams match on
        equal keys when their times are at most ``ttl`` apart, both ways:
        the interval join ``between=(-ttl, ttl)``. ``ttl`` is part of the
        answer, not only a memory setting, so the result is the same on
        history and live; each row is freed once the watermark is ``ttl``
        past it. Over unbounded streams only ``how="inner"`` is allowed (a
        regular outer join could never say that a row has no match).

        **A window join** (``window=rs.Tumbling("10s")`` or ``rs.Sliding``):
        the rows of both streams with the same key in the same window are
        joined, once, when the watermark passes the window's end, with any
        ``how``. The output gets ``window_start`` and ``window_end``. A row
        whose windows have all ended is late.

        Args:
            other: A bounded stream (the table), or any stream with event time for an interval join.
            on: The key column(s), named alike on both sides.
            how: ``"inner"`` or ``"left"`` with a table; also ``"right"`` and ``"outer"`` with ``between``.
            left_on: Or this stream's key column(s)...
            right_on: ... and the other's, in the same order.
            suffix: Added to an other column's name that this stream has too.
            between: ``(lower, upper)``: durations such as ``"-5s"`` and ``"10m"``, relative to this stream's time.
            window: ``rs.Tumbling(...)`` or ``rs.Sliding(...)``: a window join.
            ttl: A duration: how far apart in time two rows of a regular join may be.
            late: With two streams, ``"side"`` makes the rows late at the join its ``late_events()``;
                ``"drop"`` counts them only.
            name: The operator's name (in metrics and checkpoints).

        Raises:
            PlanError: the table is unbounded and there is no ``between``, a
                key is missing on a side or has types that cannot match, a
                column name still clashes, a stream of an interval join has
                no event time, or ``lower > upper``.
        """
        if not isinstance(other, Stream):
            raise PlanError(f"join: expected a raystream Stream to join with, got {type(other).__name__}")
        if sum(option is not None for option in (between, window, ttl)) > 1:
            raise PlanError(
                "join: give one of between= (an interval join), window= (a window join) and ttl= (a regular join), "
                "not several"
            )
        if ttl is not None:
            ttl_ms = duration_ms(ttl, "join: ttl")
            if how != "inner" and not (is_bounded(self._node) and is_bounded(other.node)):
                raise PlanError(
                    f"join: a regular join with how={how!r} over unbounded streams could never emit its rows "
                    "without a match; use how='inner', or an interval join (between=(lower, upper)), which emits "
                    "them once the watermark passes the interval"
                )
            interval = {"lower_ms": -ttl_ms, "upper_ms": ttl_ms}
            return self._stream_join(other, on, how, left_on, right_on, suffix, name, interval, late)
        if between is not None:
            if not isinstance(between, tuple) or len(between) != 2:
                raise PlanError(f"join: between= is (lower, upper), such as ('-5s', '10m'); got {between!r}")
            interval = self._interval_bounds(between)
            return self._stream_join(other, on, how, left_on, right_on, suffix, name, interval, late)
        if window is not None:
            if not isinstance(window, (Tumbling, Sliding)):
                raise PlanError(
                    f"join: window= takes rs.Tumbling(...) or rs.Sliding(...), got {window!r}; session windows do "
                    "not join"
                )
            return self._stream_join(other, on, how, left_on, right_on, suffix, name, {"window": window}, late)
        if how not in ("inner", "left"):
            raise PlanError(
                f"join: with a table, how must be 'inner' or 'left', got {how!r}; 'right' and 'outer' join two "
                "streams in event time (between=, window=)"
            )
        if not is_bounded(other.node):
            raise PlanError(
                "join: the table is unbounded (it never ends, so it can never be read before the stream); bound it "
                "(a file read without watch, read_kafka(..., stop='latest')), or join the two streams in event "
                "time: an interval join (between=(lower, upper)), a window join (window=) or a regular join (ttl=)"
            )
        left, right = _join_keys(on, left_on, right_on)
        stream_schema, table_schema = self.schema, other.schema
        _check_join_keys("the stream", "the table", left, right, stream_schema, table_schema)
        if stream_schema is None or table_schema is None:
            raise PlanError(
                "join: the table's columns are unknown until run time (it went through map or map_batches "
                "without schema=); give that step a schema"
            )
        kept = [column for column in table_schema.names if column not in right]
        output_names = _joined_names(stream_schema, kept, suffix, ("the stream", "the table"))
        payload = [pa.field(out, table_schema.field(col).type) for col, out in output_names]
        node = TableJoinNode(
            inputs=(self._node, other.node),
            schema=pa.schema([*stream_schema, *payload]),
            left_on=left,
            right_on=right,
            how=cast(JoinHow, how),
            output_names=tuple(output_names),
            name=name,
        )
        return Stream(node)

    def join_asof(
        self,
        other: Stream,
        by: str | list[str] | None = None,
        *,
        left_by: str | list[str] | None = None,
        right_by: str | list[str] | None = None,
        tolerance: Duration | None = None,
        how: Literal["inner", "left"] = "inner",
        suffix: str = "_right",
        late: Literal["drop", "side"] = "drop",
        name: str = "join_asof",
    ) -> Stream:
        """Join each row with the row of ``other`` in force at its time: the latest of its key at or before it.

        As pandas' ``merge_asof`` and Flink's ``FOR SYSTEM_TIME AS OF`` do:
        each trade with the quote in force, each event with the user's
        profile as of then, from a changelog. With ``tolerance``, the right
        row must also be at most that much older (``l.time - r.time <=
        tolerance``). When several right rows of a key share that time, the
        one read last wins, as the latest update of a changelog does. A row
        is emitted once the watermark passes its time, so that every right
        row that could apply has been read, and the answer does not depend
        on arrival order. Of ``other``, only the rows the watermark has not
        passed and the newest per key are kept. ``how="left"`` keeps the
        rows that nothing applies to, with nulls. With ``by=`` the keys
        appear once (with ``left_by``/``right_by`` both sides' are kept); a
        right column whose name clashes gets ``suffix``, its time column
        included. Both streams need event time.

        Args:
            other: The stream of versions (quotes, profiles...), with event time.
            by: The key column(s), named alike on both sides.
            left_by: Or this stream's key column(s)...
            right_by: ... and the other's, in the same order.
            tolerance: How much older than the row the right row may be, at most: a duration such as ``"1m"``.
            how: ``"inner"`` or ``"left"``.
            suffix: Added to an other column's name that this stream has too.
            late: ``"side"`` makes the rows late at the join its ``late_events()``; ``"drop"`` counts them only.
            name: The operator's name (in metrics and checkpoints).

        Raises:
            PlanError: a stream has no event time, a key is missing or of types that cannot match, ``how`` is
                neither ``"inner"`` nor ``"left"``, or ``tolerance`` is not a duration.
        """
        if not isinstance(other, Stream):
            raise PlanError(f"join_asof: expected a raystream Stream to join with, got {type(other).__name__}")
        if how not in ("inner", "left"):
            raise PlanError(f"join_asof: how must be 'inner' or 'left', got {how!r}")
        tolerance_ms = None if tolerance is None else duration_ms(tolerance, "join_asof: tolerance")
        if tolerance_ms is not None and tolerance_ms < 0:
            raise PlanError(f"join_asof: tolerance must not be negative, got {tolerance!r}")
        if by is None and (left_by is None or right_by is None):
            raise PlanError("join_asof: give the key columns: by='symbol', or left_by='symbol' and right_by='ticker'")
        return self._stream_join(
            other, by, how, left_by, right_by, suffix, name, {"tolerance_ms": tolerance_ms}, late, "join_asof"
        )

    def _interval_bounds(self, between: tuple[Duration, Duration]) -> dict[str, Any]:
        """``between=``'s bounds: durations from this stream's time, or, for the upper one, a time column of it."""
        names = self.schema.names if self.schema is not None else []
        time_column = self._node.time_column
        lower_bound, upper_bound = between
        if isinstance(lower_bound, str) and lower_bound in names:
            if lower_bound != time_column:
                raise PlanError(
                    f"join: between[0] is the column {lower_bound!r}; a lower bound that is a column must be the "
                    f"stream's time column ({time_column!r}), else give a duration from it, such as '-5s'"
                )
            lower_bound = 0  # the row's own time
        lower = _signed_duration_ms(lower_bound, "join: between[0]")
        if isinstance(upper_bound, str) and upper_bound in names:
            kind = self.schema.field(upper_bound).type if self.schema is not None else None
            if kind is None or not is_event_time_type(kind):
                raise PlanError(
                    f"join: between[1] is the column {upper_bound!r}, of type {kind}; a bound that is a column "
                    "must hold times (a timestamp, or int64 epoch milliseconds)"
                )
            return {"lower_ms": lower, "upper_ms": 0, "upper_column": upper_bound}
        upper = _signed_duration_ms(upper_bound, "join: between[1]")
        if lower > upper:
            raise PlanError(
                f"join: between=({between[0]!r}, {between[1]!r}) has its lower bound after its upper bound, so "
                "no rows could match; give (lower, upper) with lower <= upper"
            )
        return {"lower_ms": lower, "upper_ms": upper}

    def _stream_join(
        self,
        other: Stream,
        on: str | list[str] | None,
        how: StreamJoinHow,
        left_on: str | list[str] | None,
        right_on: str | list[str] | None,
        suffix: str,
        name: str,
        kind: dict[str, Any],
        late: Literal["drop", "side"] = "drop",
        what: str = "join",
    ) -> Stream:
        """A join of two streams in event time, by ``kind``: a window join (``window``), an as-of join
        (``tolerance_ms``), else an interval join (``lower_ms`` and ``upper_ms``; a regular join is one)."""
        if how not in ("inner", "left", "right", "outer"):
            raise PlanError(f"join: how must be 'inner', 'left', 'right' or 'outer', got {how!r}")
        for side, stream in (("left (this stream)", self), ("right (the other stream)", other)):
            if stream.node.time_column is None:
                raise PlanError(
                    f"{what}: the {side} has no event time, which a join of two streams compares; give its "
                    "source a time_column or call with_watermark() on it"
                )
        left, right = _join_keys(on, left_on, right_on)
        left_schema, right_schema = self.schema, other.schema
        _check_join_keys("the left stream", "the right stream", left, right, left_schema, right_schema)
        if left_schema is None or right_schema is None:
            raise PlanError(
                "join: a stream's columns are unknown until run time (it went through map or map_batches "
                "without schema=); give that step a schema"
            )
        kept = [c for c in right_schema.names if on is None or c not in right]
        right_columns = _joined_names(left_schema, kept, suffix, ("the left stream", "the right stream"))
        payload = [pa.field(out, right_schema.field(col).type) for col, out in right_columns]
        common: dict[str, Any] = {
            "inputs": (self._node, other.node),
            "left_on": left,
            "right_on": right,
            "how": how,
            "right_columns": tuple(right_columns),
            "coalesce_keys": on is not None,
            "late": late,
            "name": name,
        }
        if late not in ("drop", "side"):
            raise PlanError(f"{what}: late must be 'drop' or 'side', got {late!r}")
        if "tolerance_ms" in kind:
            return Stream(AsOfJoinNode(schema=pa.schema([*left_schema, *payload]), **common, **kind))
        if "window" not in kind:
            return Stream(IntervalJoinNode(schema=pa.schema([*left_schema, *payload]), **common, **kind))
        time_type = left_schema.field(self._node.time_column).type
        for column in (WINDOW_START, WINDOW_END):
            if column in left_schema.names or column in dict(right_columns).values():
                raise PlanError(
                    f"join: a window join adds the column {column!r}, which a stream has already; rename it first "
                    "(with_columns, select)"
                )
        schema = pa.schema([*left_schema, *payload, (WINDOW_START, time_type), (WINDOW_END, time_type)])
        return Stream(WindowJoinNode(schema=schema, **common, **kind))

    # -- terminals -----------------------------------------------------------

    def write(self, sink: Sink, config: RunConfig | None = None, wait: bool = True) -> Job:
        """Run the pipeline into any :class:`~raystream.Sink`, your own included."""
        from raystream.sinks.base import Sink

        if not isinstance(sink, Sink):
            raise PlanError(f"write: expected a raystream.Sink, got {type(sink).__name__}")
        return self._run(sink, config, wait)

    def start(self, config: RunConfig | None = None) -> Job:
        """Start the pipeline without blocking and collect its output in memory.

        Returns:
            A :class:`~raystream.Job`: ``results()`` is a pandas frame of the
            output that has arrived so far, and ``stop()``, ``wait()``,
            ``status()`` and ``metrics()`` operate the run.
        """
        from raystream.sinks.memory import MemorySink

        return self._run(MemorySink(), config, wait=False)

    def to_arrow(self, config: RunConfig | None = None) -> pa.Table:
        """Run a bounded pipeline to its end and return its output as one table."""
        from raystream.sinks.memory import MemorySink

        self._require_bounded("to_arrow")
        sink = MemorySink()
        self._run(sink, config, wait=True)
        return sink.table()

    def to_pandas(self, config: RunConfig | None = None) -> pd.DataFrame:
        """Run a bounded pipeline to its end and return its output as a pandas DataFrame."""
        return self.to_arrow(config).to_pandas()

    def write_parquet(
        self,
        path: str,
        config: RunConfig | None = None,
        partition_by: list[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        wait: bool = True,
        *,
        compression: str = "snappy",
        use_dictionary: bool | list[str] | None = None,
        mode: Literal["error", "overwrite", "append"] = "error",
    ) -> Job:
        """Write the output as Parquet files under ``path`` (any fsspec URL).

        Each epoch's files are staged under ``path/_staging`` by the actors
        that produce them, then moved into place by the driver once the
        whole epoch is written, under names made of the job id, the epoch id
        and the writer, so that a replayed epoch rewrites the same files.

        A folder that already holds files (another job's output, or files
        raystream did not write) is an error by default, as Spark's
        ``errorifexists``: two runs into one folder would otherwise mix
        their rows. A job resuming from its ``checkpoint_dir`` goes on in
        the folder it started, in every mode.

        Args:
            path: The output folder.
            config: How to run.
            partition_by: Columns to partition the folders by, Hive style
                (``country=DE/part-....parquet``).
            storage_options: fsspec options (credentials) for ``path``.
            wait: When false, return the running :class:`~raystream.Job` at once.
            compression: The codec: ``snappy`` (the default), ``zstd``, ``lz4``, ``gzip``, ``brotli`` or ``none``.
            use_dictionary: The columns to dictionary-encode: by default the
                string and binary ones; ``True`` for all (pyarrow's default),
                ``False`` for none, or a list of names. Dictionary-encoding
                numbers and times seldom makes files smaller and halves the
                writer's speed.
            mode: When ``path`` holds files: ``"error"`` (the default)
                refuses to start, ``"overwrite"`` deletes them before the
                first epoch, ``"append"`` keeps them and adds this job's
                files (named after the job, so nothing collides).

        Raises:
            PlanError: an invalid argument, or (``mode="error"``, no
                ``checkpoint_dir``) a folder that holds files.
        """
        sink = parquet_sink(self.schema, path, partition_by, storage_options, compression, use_dictionary, mode)
        if getattr(config, "checkpoint_dir", None) is None:  # no resume possible: the folder can be judged now
            sink.check_destination()
        return self._run(sink, config, wait)

    def write_kafka(
        self,
        topic: str,
        bootstrap_servers: str,
        key: str | None = None,
        format: str = "json",  # noqa: A002 - the public name
        producer_config: dict[str, Any] | None = None,
        config: RunConfig | None = None,
        wait: bool = True,
        transactional_id: str | None = None,
        reconnect_timeout: Duration = "1m",
    ) -> Job:
        """Produce each output row to ``topic``, as JSON (or the ``value`` column with ``format="raw"``).

        Records are produced in batches by the actors that make the output,
        and every delivery is confirmed before the epoch counts as done; a
        delivery error fails the epoch with the broker's message. Without a
        ``transactional_id`` this sink is at-least-once: a replayed epoch
        produces its records again. With one, each epoch is produced from
        the driver in one Kafka transaction with a marker of its epoch id,
        and a replay skips committed epochs: consumers that read with
        ``isolation.level=read_committed`` see every row once (exactly-once,
        with a ``checkpoint_dir``).

        Args:
            topic: An existing topic.
            bootstrap_servers: ``"host:port[,host:port]"``.
            key: A column whose value becomes the record key.
            format: ``"json"`` or ``"raw"``.
            producer_config: librdkafka producer settings.
            config: How to run.
            wait: When false, return the running :class:`~raystream.Job` at once.
            transactional_id: Makes the sink transactional, as above; unique per job.
            reconnect_timeout: How long an epoch waits for unreachable brokers (librdkafka keeps
                and resends its records; a transaction is made again) before the job fails with an
                error naming them: ``"1m"``, ``"30s"``...
        """
        sink = kafka_sink(
            self.schema, topic, bootstrap_servers, key, format, producer_config, transactional_id, reconnect_timeout
        )
        return self._run(sink, config, wait)

    def print(
        self, config: RunConfig | None = None, num_rows: int = 20, sort_by: list[str] | None = None, wait: bool = True
    ) -> Job:
        """Print each epoch's output as a table on the driver's stdout (like Spark's console sink).

        Args:
            config: How to run.
            num_rows: How many rows of each epoch to show.
            sort_by: Columns to sort each epoch's rows by; ``"-clicks"`` sorts descending.
            wait: When false, return the running :class:`~raystream.Job` at once.
        """
        from raystream.sinks.console import ConsoleSink

        check_columns("print sort_by", [c.removeprefix("-") for c in sort_by or []], self.schema)
        return self._run(ConsoleSink(num_rows=num_rows, sort_by=sort_by or ()), config, wait)

    def foreach_batch(
        self, fn: Callable[[pa.Table, int], None], config: RunConfig | None = None, wait: bool = True
    ) -> Job:
        """Call ``fn(table, epoch_id)`` on the driver with each epoch's whole output.

        ``epoch_id`` increases by one per epoch and is the same when an
        epoch is replayed after a failure, so ``fn`` can be made idempotent
        by keying its writes on it (for example an upsert, or a file named
        after the epoch).
        """
        from raystream.sinks.foreach import ForeachBatchSink

        if not callable(fn):
            raise PlanError(f"foreach_batch: expected a function fn(table, epoch_id), got {fn!r}")
        return self._run(ForeachBatchSink(fn), config, wait)

    def _require_bounded(self, terminal: str) -> None:
        unbounded = [n.source for n in source_nodes(self._node) if not n.source.bounded]
        if unbounded:
            raise PlanError(
                f"{terminal}: {unbounded[0].name} is unbounded, so it never ends; use start() for a running job "
                "handle, or a writing terminal with wait=False"
            )

    def _run(self, sink: Sink, config: RunConfig | None, wait: bool) -> Job:
        from raystream.runtime.job import run_pipeline

        return run_pipeline(self._node, sink, config, wait=wait)


class KeyedStream:
    """A stream partitioned by key columns, made by :meth:`Stream.key_by`.

    Its ``agg`` and ``top`` are running (a value per key over the whole
    stream), except after a window when the keys include ``window_end``:
    they are then per window. Each key of each window is emitted once, when
    the watermark passes its ``window_end``, which is the epoch in which the
    window fired, and its state is freed then. That is how to aggregate or
    rank the rows a window emitted, such as Nexmark's hot items (the
    auctions with the most bids of each sliding window, ties included)::

        import pandas as pd
        import raystream as rs

        bids = pd.DataFrame({"auction": [1, 2, 2, 3, 3], "t": [100, 200, 300, 400, 1_500]})
        counts = (
            rs.from_pandas(bids, time_column="t")
            .key_by("auction")
            .window(rs.Tumbling("1s"))
            .agg(num=rs.count())
        )
        hot = counts.key_by("window_start", "window_end").top("num")  # per window: the auctions with most bids
        assert sorted(hot.to_pandas()[["auction", "num"]].itertuples(index=False, name=None)) == [
            (2, 2),
            (3, 1),
        ]

    The window must fire once (``emit="append"``, no ``allowed_lateness``);
    it then emits each window complete in one epoch, which the next stage
    receives in that same epoch, so nothing is late between the two.
    """

    def __init__(self, stream: Stream, keys: tuple[str, ...]) -> None:
        self._stream = stream
        self.keys = keys

    def _per_window(self, operator: str) -> bool:
        """Whether ``agg``/``top`` here are per window: keyed by ``window_end`` of a window upstream."""
        origin = window_origin(self._stream.node)
        if origin is None or WINDOW_END not in self.keys:
            return False
        check_fires_once(origin, operator, ", or key by columns other than window_end for a running value")
        schema = self._stream.schema
        if schema is not None and not is_event_time_type(schema.field(WINDOW_END).type):
            raise PlanError(
                f"{operator}: window_end has type {schema.field(WINDOW_END).type}, not a time, so its windows "
                "cannot be told apart by the watermark; keep the window's own window_end column"
            )
        return True

    def window(
        self,
        window: Window,
        allowed_lateness: Duration = "0s",
        late: Literal["drop", "side"] = "drop",
        emit: Literal["append", "update"] = "append",
    ) -> WindowedStream:
        """Group each key's events into event-time windows; call ``.agg(...)`` or ``.top(...)`` on the result.

        A window fires once, when the watermark passes its end (append
        mode). An event is late when every window it belongs to has
        ``window_end + allowed_lateness <= watermark``.

        Over the output of another window, each row's event time is the
        last instant of its window (``window_end`` minus 1 ms, Flink's
        ``window_time``), so a window of windows holds the windows that end
        inside it: ``Tumbling("1m")`` over 10 s windows sums six of them.

        Args:
            window: ``rs.Tumbling(size)``, ``rs.Sliding(size, slide)`` or ``rs.Session(gap)``.
            allowed_lateness: How long after firing a window still accepts
                events; each one re-fires the window with the corrected value.
            late: ``"drop"`` counts late rows in the job's metrics;
                ``"side"`` also sends them to :meth:`Stream.late_events`.
            emit: ``"append"`` emits each window when it fires; ``"update"``
                also emits every open window's new value in each epoch
                where it changed.
        """
        if not isinstance(window, (Tumbling, Sliding, Session)):
            raise PlanError(f"window: expected rs.Tumbling, rs.Sliding or rs.Session, got {window!r}")
        if late not in ("drop", "side"):
            raise PlanError(f"window: late must be 'drop' or 'side', got {late!r}")
        if emit not in ("append", "update"):
            raise PlanError(f"window: emit must be 'append' or 'update', got {emit!r}")
        lateness_ms = duration_ms(allowed_lateness, "window allowed_lateness")
        if lateness_ms < 0:
            raise PlanError(f"window: allowed_lateness must not be negative, got {allowed_lateness!r}")
        time_column = self._stream.node.time_column
        if time_column is None:
            raise PlanError(
                "window: the stream has no event time; pass time_column= to the source, "
                "or call with_watermark(column, delay) before key_by"
            )
        schema = self._stream.schema
        if schema is None:
            raise PlanError(
                f"window: the type of time column {time_column!r} is unknown after a user function; "
                "pass schema= to map_batches, map or flat_map"
            )
        shift_ms = 0
        origin = window_origin(self._stream.node)
        if origin is not None:
            check_fires_once(origin, "window", "")
            shift_ms = WINDOW_TIME_SHIFT_MS
        return WindowedStream(self._stream, self.keys, window, time_column, lateness_ms, late, emit, shift_ms)

    def agg(
        self,
        aggregates: Mapping[str, Aggregate] | None = None,
        /,
        *,
        emit: Literal["update", "final"] | None = None,
        name: str | None = None,
        **named: Aggregate,
    ) -> Stream:
        """Running aggregates per key, such as ``agg(clicks=rs.count(), spent=rs.sum("price"))``.

        The output has the key columns, then one column per aggregate.
        After a window, keyed by ``window_end``, they are per window: each
        key is emitted once, when its window ends (see :class:`KeyedStream`).

        Args:
            aggregates: Aggregates by output name, for names that clash with
                this method's options: ``agg({"name": rs.count_distinct("name")})``.
            emit: ``"update"`` emits, every epoch, the new value of each key
                that changed (an upsert stream: later rows replace earlier
                rows of the same key); ``"final"`` emits each key once, when
                the input ends. The default is ``"final"`` for a bounded
                source and ``"update"`` for an unbounded one. Not for a
                per-window stage, which emits each key once, when its window ends.
            name: A stable operator name, used by checkpoints and metrics.
            **named: ``output_name=rs.count()`` and so on.
        """
        for option, value in (("emit", emit), ("name", name)):
            if value is not None and not isinstance(value, str):
                raise PlanError(
                    f"agg: {option}= is agg's own option, not an aggregate; to name an output {option!r}, "
                    f"pass a dict: agg({{{option!r}: {value!r}}})"
                )
        schema = self._stream.schema
        aggregates = check_aggregates(named_aggregates(aggregates, named), self.keys, schema)
        per_window = self._per_window("agg")
        emit = self._emit("agg", emit, per_window)
        out_schema = None if schema is None else agg_output_schema(schema, self.keys, aggregates)
        node = KeyedAggNode(
            inputs=(self._stream.node,),
            schema=out_schema,
            keys=self.keys,
            aggregates=tuple(aggregates.items()),
            emit=emit,
            per_window=per_window,
            name=name or "agg",
        )
        return Stream(node)

    def top(
        self,
        by: str,
        n: int = 1,
        *,
        ties: bool = True,
        descending: bool = True,
        emit: Literal["update", "final"] | None = None,
        name: str | None = None,
    ) -> Stream:
        """Keep the rows that rank within the first ``n`` of their key by ``by``: the rows holding the maximum.

        The output has the stream's own columns: whole rows, not one row per
        key. ``top("price")`` keeps each key's rows with the highest price,
        all of them when several tie (SQL's ``RANK() ... <= 1``, an argmax
        with ties). Rows whose ``by`` is null or NaN are never kept. Readers
        keep each batch's candidates before the shuffle, so only they travel.

        After a window, keyed by ``window_end``, it is per window: each
        key's rows are emitted once, when its window ends (see
        :class:`KeyedStream`). Otherwise it runs over the whole stream, and
        ``emit`` is as for :meth:`agg`: with ``"update"``, every epoch emits
        all the current rows of each key whose rows changed, which replace
        that key's earlier rows (sinks receive them appended).

        Args:
            by: The column to rank by: a number, string, boolean or time.
            n: How many ranks to keep per key.
            ties: Keep every row that ties at the last rank kept (``RANK``);
                ``False`` keeps exactly ``n`` rows (``ROW_NUMBER``), breaking
                ties by the other columns, ascending, so that the answer
                never depends on the batches.
            descending: Rank the largest values first; ``False`` for the smallest.
            emit: ``"update"`` or ``"final"``, as for :meth:`agg`; not for a per-window stage.
            name: A stable operator name, used by checkpoints and metrics.

        Raises:
            PlanError: for an unknown column, a ``by`` that is a key or has
                no order, or a bad ``n``.
        """
        schema = self._stream.schema
        spec = check_top("top", self.keys, schema, by, n, ties, descending)
        if name is not None and not isinstance(name, str):
            raise PlanError(f"top: name must be a string, got {name!r}")
        per_window = self._per_window("top")
        emit = self._emit("top", emit, per_window)
        node = TopNode(
            inputs=(self._stream.node,),
            schema=schema,
            keys=self.keys,
            top=spec,
            emit=emit,
            per_window=per_window,
            name=name or "top",
        )
        return Stream(node)

    def _emit(
        self, operator: str, emit: Literal["update", "final"] | None, per_window: bool
    ) -> Literal["update", "final"]:
        if per_window:
            if emit is not None:
                raise PlanError(
                    f"{operator}: emit= does not apply when keyed by window_end after a window: each window's keys "
                    "are emitted once, when the watermark passes their window_end; leave emit out"
                )
            return "final"
        if emit is None:
            emit = "final" if is_bounded(self._stream.node) else "update"
        if emit not in ("update", "final"):
            raise PlanError(f"{operator}: emit must be 'update' or 'final', got {emit!r}")
        return emit


class WindowedStream:
    """A keyed stream cut into event-time windows, made by :meth:`KeyedStream.window`."""

    def __init__(
        self,
        stream: Stream,
        keys: tuple[str, ...],
        window: Window,
        time_column: str,
        allowed_lateness_ms: int,
        late: Literal["drop", "side"],
        emit: Literal["append", "update"],
        time_shift_ms: int = 0,
    ) -> None:
        self._stream = stream
        self.keys = keys
        self.window = window
        self._time_column = time_column
        self._lateness_ms = allowed_lateness_ms
        self._late = late
        self._emit = emit
        self._time_shift_ms = time_shift_ms

    def _options(self, name: str) -> dict[str, Any]:
        """The fields every window node has."""
        schema = self._stream.schema
        assert schema is not None
        return {
            "inputs": (self._stream.node,),
            "keys": self.keys,
            "window": self.window,
            "window_time_column": self._time_column,
            "time_type": schema.field(self._time_column).type,
            "allowed_lateness_ms": self._lateness_ms,
            "late": self._late,
            "emit": self._emit,
            "name": name,
            "time_shift_ms": self._time_shift_ms,
        }

    def agg(
        self, aggregates: Mapping[str, Aggregate] | None = None, /, *, name: str | None = None, **named: Aggregate
    ) -> Stream:
        """Aggregates per key and window. Output: the keys, ``window_start``, ``window_end``, the aggregates.

        Args:
            aggregates: Aggregates by output name, for names that clash with ``name``.
            name: A stable operator name, used by checkpoints and metrics.
            **named: ``output_name=rs.count()`` and so on.
        """
        if name is not None and not isinstance(name, str):
            raise PlanError(
                f"agg: name= is agg's own option; to name an output 'name', pass a dict: agg({{'name': {name!r}}})"
            )
        aggregates = check_aggregates(named_aggregates(aggregates, named), self.keys, self._stream.schema)
        for out in aggregates:
            if out in (WINDOW_START, WINDOW_END):
                raise PlanError(f"agg: output name {out!r} is taken by the window bounds; choose another name")
        options = self._options(name or "window")
        schema = self._stream.schema
        assert schema is not None
        time_type = options["time_type"]
        keyed = agg_output_schema(schema, self.keys, aggregates)
        bounds = [pa.field(WINDOW_START, time_type), pa.field(WINDOW_END, time_type)]
        out_schema = pa.schema([keyed.field(k) for k in self.keys] + bounds + [keyed.field(n) for n in aggregates])
        return Stream(WindowAggNode(schema=out_schema, aggregates=tuple(aggregates.items()), **options))

    def top(
        self, by: str, n: int = 1, *, ties: bool = True, descending: bool = True, name: str | None = None
    ) -> Stream:
        """The rows that rank within the first ``n`` of their key and window by ``by``, ties included.

        Output: the stream's own columns, then ``window_start`` and
        ``window_end``, for each kept row of each window (a row of a sliding
        window may be kept in several). ``top("price")`` per 10 s window is
        Nexmark's q7, the highest bids. Options are as for
        :meth:`KeyedStream.top`; windows fire and take late rows as for
        :meth:`agg`. Tumbling and sliding windows only.

        Raises:
            PlanError: for session windows, an unknown column, a ``by`` that
                is a key or has no order, a bad ``n``, or input columns named
                ``window_start`` or ``window_end``.
        """
        if isinstance(self.window, Session):
            raise PlanError(
                "top: session windows are not supported by top; use rs.Tumbling or rs.Sliding, or rank the "
                "sessions' aggregates with .agg(...).key_by(..., 'window_end').top(...)"
            )
        schema = self._stream.schema
        spec = check_top("top", self.keys, schema, by, n, ties, descending)
        if name is not None and not isinstance(name, str):
            raise PlanError(f"top: name must be a string, got {name!r}")
        assert schema is not None
        for bound in (WINDOW_START, WINDOW_END):
            if bound in schema.names:
                raise PlanError(
                    f"top: the stream already has a column {bound!r}, which the window bounds would replace; "
                    "rename or drop it first (with_columns, select), or rank the rows of an earlier window per "
                    "window with key_by(..., 'window_end').top(...)"
                )
        options = self._options(name or "top")
        bounds = [pa.field(WINDOW_START, options["time_type"]), pa.field(WINDOW_END, options["time_type"])]
        out_schema = pa.schema([*schema, *bounds])
        return Stream(WindowTopNode(schema=out_schema, top=spec, **options))


def union(*streams: Stream) -> Stream:
    """The rows of all ``streams``, whose columns match by name and type (SQL's ``UNION ALL``).

    Each input keeps its own splits and watermark; the union's watermark is
    the smallest of theirs, so no window fires before every input has
    passed it. A bounded input that ends stops holding it back, and a union
    with an unbounded input is unbounded. Columns may come in another order:
    they are matched by name.

    Raises:
        PlanError: fewer than two streams, or columns that differ (the
            message names them and both types).
    """
    if len(streams) < 2 or not all(isinstance(s, Stream) for s in streams):
        raise PlanError("union: give two or more raystream Streams, such as rs.union(clicks, views)")
    first = streams[0].schema
    nodes = [streams[0].node]
    for index, stream in enumerate(streams[1:], start=2):
        schema = stream.schema
        if first is None or schema is None:
            raise PlanError(
                f"union: the columns of input {1 if first is None else index} are unknown until run time (a map "
                "or map_batches without schema=); give that step a schema so that the inputs can be matched"
            )
        missing, extra = set(first.names) - set(schema.names), set(schema.names) - set(first.names)
        if missing or extra:
            what = "; ".join(
                part
                for part in (
                    f"input {index} lacks {sorted(missing)}" if missing else "",
                    f"input {index} has {sorted(extra)} that input 1 lacks" if extra else "",
                )
                if part
            )
            raise PlanError(f"union: the inputs' columns differ: {what}; select or add columns so that they match")
        for field in first:
            other = schema.field(field.name).type
            if other != field.type:
                raise PlanError(
                    f"union: column {field.name!r} is {field.type} in input 1 and {other} in input {index}; cast "
                    "one of them (with_columns) so that the types match"
                )
        node = stream.node
        if schema.names != first.names:  # the same columns in another order: put them in the first's order
            node = SelectNode(inputs=(node,), schema=first, columns=tuple(first.names))
        nodes.append(node)
    return Stream(UnionNode(inputs=tuple(nodes), schema=first))


def _join_keys(
    on: str | list[str] | None, left_on: str | list[str] | None, right_on: str | list[str] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    def names(value: str | list[str]) -> tuple[str, ...]:
        return (value,) if isinstance(value, str) else tuple(value)

    if on is not None:
        if left_on is not None or right_on is not None:
            raise PlanError("join: give on=, or left_on= and right_on=, not both")
        return names(on), names(on)
    if left_on is None or right_on is None:
        raise PlanError("join: give the key columns: on='user', or left_on='user' and right_on='user_id'")
    left, right = names(left_on), names(right_on)
    if len(left) != len(right) or not left:
        raise PlanError(f"join: left_on {list(left)} and right_on {list(right)} must name as many columns")
    return left, right


def _check_join_keys(
    left_side: str,
    right_side: str,
    left: tuple[str, ...],
    right: tuple[str, ...],
    left_schema: pa.Schema | None,
    right_schema: pa.Schema | None,
) -> None:
    """The keys exist on their sides, and each pair has types that a join can compare."""
    check_columns(f"join ({left_side})", left, left_schema)
    check_columns(f"join ({right_side})", right, right_schema)
    if left_schema is None or right_schema is None:
        return
    for lk, rk in zip(left, right, strict=True):
        a, b = left_schema.field(lk).type, right_schema.field(rk).type
        if not _joinable(a, b):
            raise PlanError(
                f"join: key {lk!r} is {a} in {left_side} and {rk!r} is {b} in {right_side}, which a join does "
                "not compare; cast one side (with_columns) to the other's type"
            )


def _joined_names(
    left_schema: pa.Schema, kept: list[str], suffix: str, sides: tuple[str, str]
) -> list[tuple[str, str]]:
    """Each right column kept and its name in the output: ``suffix`` added where the left has the name."""
    taken = set(left_schema.names)
    names: list[tuple[str, str]] = []
    for column in kept:
        output = column + suffix if column in taken else column
        if output in taken:
            raise PlanError(
                f"join: {sides[1]}'s column {column!r} becomes {output!r}, which {sides[0]} has too; "
                "choose another suffix= or rename the column"
            )
        taken.add(output)
        names.append((column, output))
    return names


def _signed_duration_ms(value: Duration, what: str) -> int:
    """A duration that may be negative: ``"-5s"``, ``"10m"``, a timedelta or int milliseconds."""
    if isinstance(value, str) and value.strip().startswith("-"):
        return -duration_ms(value.strip()[1:], what)
    return duration_ms(value, what)


def _joinable(a: pa.DataType, b: pa.DataType) -> bool:
    """Whether keys of these types can be equal (the table's are cast to the stream's)."""
    if a == b:
        return True
    kinds = (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_large_string)
    strings = (pa.types.is_string, pa.types.is_large_string)
    if any(k(a) for k in strings) and any(k(b) for k in strings):
        return True
    return any(kind(a) and kind(b) for kind in kinds[:2])


def parquet_sink(
    schema: pa.Schema | None,
    path: str,
    partition_by: list[str] | None,
    storage_options: dict[str, Any] | None,
    compression: str = "snappy",
    use_dictionary: bool | list[str] | None = None,
    mode: Literal["error", "overwrite", "append"] = "error",
) -> Any:
    """A :class:`~raystream.sinks.parquet.ParquetSink` for a stream of ``schema``, its options checked."""
    from raystream.sinks.parquet import ParquetSink

    if partition_by:
        check_columns("write_parquet partition_by", partition_by, schema)
    if isinstance(use_dictionary, list):
        check_columns("write_parquet use_dictionary", use_dictionary, schema)
    return ParquetSink(
        path, partition_by, storage_options, compression=compression, use_dictionary=use_dictionary, mode=mode
    )


def kafka_sink(
    schema: pa.Schema | None,
    topic: str,
    bootstrap_servers: str,
    key: str | None = None,
    format: str = "json",  # noqa: A002 - the public name
    producer_config: dict[str, Any] | None = None,
    transactional_id: str | None = None,
    reconnect_timeout: Duration = "1m",
) -> Any:
    """A Kafka sink (transactional with a ``transactional_id``) for a stream of ``schema``, its key checked."""
    from raystream.sinks.kafka import KafkaSink, TransactionalKafkaSink

    if key is not None:
        check_columns("write_kafka key", [key], schema)
    options: dict[str, Any] = {
        "key": key,
        "format": format,
        "producer_config": producer_config,
        "reconnect_timeout": reconnect_timeout,
    }
    if transactional_id is None:
        return KafkaSink(topic, bootstrap_servers, **options)
    return TransactionalKafkaSink(topic, bootstrap_servers, transactional_id=transactional_id, **options)
