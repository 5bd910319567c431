"""The logical plan: what to compute, as a graph of nodes.

Each node has its ``inputs`` (a tuple of nodes): a source has none, an
operator on one stream has one, a union or a join has several. Nodes are
frozen and compared by identity, so a node used by two operators (a stream
that feeds two outputs) is one node of the graph. The planner
(:mod:`raystream.runtime.planner`) compiles the graph into stages and edges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from raystream.aggregates import Aggregate, Top
from raystream.errors import PlanError
from raystream.windows import WINDOW_END, Sliding, Tumbling, Window

if TYPE_CHECKING:
    from raystream.sources.base import Source
    from raystream.sources.hybrid import HandOver

BatchFormat = Literal["pyarrow", "pandas"]
Predicate: TypeAlias = "pc.Expression | Callable[[pa.Table], Any]"
ColumnExpr: TypeAlias = "pc.Expression | Callable[[pa.Table], Any]"


@dataclass(frozen=True, eq=False, kw_only=True)
class Node:
    """A node of the logical plan. ``schema`` is ``None`` when unknown until run time."""

    inputs: tuple[Node, ...]
    schema: pa.Schema | None = field(repr=False)

    @property
    def input(self) -> Node:
        """The one input of a node on one stream."""
        assert len(self.inputs) == 1, f"{type(self).__name__} has {len(self.inputs)} inputs"
        return self.inputs[0]

    @property
    def time_column(self) -> str | None:
        """The event-time column at this point of the plan, if any."""
        return self.inputs[0].time_column if len(self.inputs) == 1 else None


@dataclass(frozen=True, eq=False, kw_only=True)
class SourceNode(Node):
    source: Source
    source_time_column: str | None = None
    #: The name of its source stage in the physical plan, made unique there ("source", "source-2"...).
    stage_name: str = "source"

    @property
    def time_column(self) -> str | None:
        return self.source_time_column


@dataclass(frozen=True, eq=False, kw_only=True)
class FilterNode(Node):
    predicate: Predicate


@dataclass(frozen=True, eq=False, kw_only=True)
class MapBatchesNode(Node):
    fn: Callable[[Any], Any]
    batch_format: BatchFormat = "pyarrow"


@dataclass(frozen=True, eq=False, kw_only=True)
class MapRowsNode(Node):
    fn: Callable[[dict[str, Any]], Any]
    flat: bool = False


@dataclass(frozen=True, eq=False, kw_only=True)
class SelectNode(Node):
    columns: tuple[str, ...] = ()

    @property
    def time_column(self) -> str | None:
        inherited = super().time_column
        return inherited if inherited in self.columns else None


@dataclass(frozen=True, eq=False, kw_only=True)
class WithColumnsNode(Node):
    exprs: tuple[tuple[str, ColumnExpr], ...] = ()


@dataclass(frozen=True, eq=False, kw_only=True)
class WatermarkNode(Node):
    column: str = ""
    delay_ms: int = 0
    idle_timeout_ms: int | None = None

    @property
    def time_column(self) -> str | None:
        return self.column


@dataclass(frozen=True, eq=False, kw_only=True)
class KeyedAggNode(Node):
    """``key_by(...).agg(...)``: running aggregates, or per window when ``per_window`` (keyed by ``window_end``)."""

    keys: tuple[str, ...] = ()
    aggregates: tuple[tuple[str, Aggregate], ...] = ()
    emit: Literal["update", "final"] = "final"
    per_window: bool = False
    name: str = ""

    @property
    def time_column(self) -> str | None:
        return WINDOW_END if self.per_window else None


@dataclass(frozen=True, eq=False, kw_only=True)
class TopNode(Node):
    """``key_by(...).top(...)``: the rows that rank first per key, running or per window (as for agg)."""

    keys: tuple[str, ...] = ()
    top: Top
    emit: Literal["update", "final"] = "final"
    per_window: bool = False
    name: str = "top"

    @property
    def time_column(self) -> str | None:
        return WINDOW_END if self.per_window else None


@dataclass(frozen=True, eq=False, kw_only=True)
class WindowNode(Node):
    """What every ``key_by(...).window(...)`` node has. Its rows' event time is ``window_end`` minus 1 ms."""

    keys: tuple[str, ...]
    window: Window
    window_time_column: str
    time_type: pa.DataType
    allowed_lateness_ms: int = 0
    late: Literal["drop", "side"] = "drop"
    emit: Literal["append", "update"] = "append"
    name: str = "window"
    #: Added to the input's time: -1 when the input is a window's output (see :func:`window_origin`).
    time_shift_ms: int = 0

    @property
    def time_column(self) -> str | None:
        return WINDOW_END


@dataclass(frozen=True, eq=False, kw_only=True)
class WindowAggNode(WindowNode):
    aggregates: tuple[tuple[str, Aggregate], ...]


@dataclass(frozen=True, eq=False, kw_only=True)
class WindowTopNode(WindowNode):
    top: Top
    name: str = "top"


#: The nodes that become a keyed stage of partition actors.
KEYED_NODES = (KeyedAggNode, TopNode, WindowNode)


@dataclass(frozen=True, eq=False, kw_only=True)
class LateEventsNode(Node):
    """The late rows of the window or join that is its input, instead of its output."""

    @property
    def time_column(self) -> str | None:
        if isinstance(self.input, WindowNode):
            return self.input.window_time_column
        return self.input.time_column  # a join's: its late rows are shaped as its rows without a match


@dataclass(frozen=True, eq=False, kw_only=True)
class DeadLettersNode(Node):
    """The records the source could not decode, instead of the pipeline's output."""


@dataclass(frozen=True, eq=False, kw_only=True)
class UnionNode(Node):
    """The rows of all its inputs, whose columns match by name and type (``rs.union``)."""

    @property
    def time_column(self) -> str | None:
        columns = {node.time_column for node in self.inputs}
        return columns.pop() if len(columns) == 1 else None


@dataclass(frozen=True, eq=False, kw_only=True)
class HybridNode(UnionNode):
    """``rs.hybrid``: input 0, the history before the switch, is read to its end; then input 1, live from it on.

    The inputs are the source nodes of ``source``'s two sides, whose stages
    are named ``history`` and ``live``.
    """

    source: HandOver


JoinHow = Literal["inner", "left"]


@dataclass(frozen=True, eq=False, kw_only=True)
class TableJoinNode(Node):
    """A stream (input 0) joined with a bounded table (input 1) on equal keys, as SQL joins them.

    ``output_names`` maps each table column kept to its name in the output
    (a clash with a stream column gets the suffix); the table's key columns
    are dropped, as their values equal the stream's.
    """

    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    how: JoinHow
    output_names: tuple[tuple[str, str], ...]
    name: str = "join"

    @property
    def time_column(self) -> str | None:
        return self.inputs[0].time_column


StreamJoinHow = Literal["inner", "left", "right", "outer"]


@dataclass(frozen=True, eq=False, kw_only=True)
class StreamJoinNode(Node):
    """Two streams (inputs 0 and 1) joined on equal keys in event time: what both kinds share.

    ``right_columns`` maps each right column kept to its output name (a clash
    got the suffix); with ``coalesce_keys`` (``on=``) the right's keys are
    not among them, as their values equal the left's.
    """

    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    how: StreamJoinHow
    right_columns: tuple[tuple[str, str], ...]
    coalesce_keys: bool
    #: ``"side"``: the rows late at the join are its late events (``late_events()``); ``"drop"``: counted only.
    late: Literal["drop", "side"] = "drop"
    name: str = "join"

    @property
    def time_column(self) -> str | None:
        return self.inputs[0].time_column


@dataclass(frozen=True, eq=False, kw_only=True)
class IntervalJoinNode(StreamJoinNode):
    """Rows match where ``l.time + lower_ms <= r.time <= l.time + upper_ms`` (a regular join: ``(-ttl, ttl)``)."""

    lower_ms: int
    upper_ms: int
    #: When set, the upper bound is this time column of the left (absolute), not ``l.time + upper_ms``.
    upper_column: str | None = None


@dataclass(frozen=True, eq=False, kw_only=True)
class WindowJoinNode(StreamJoinNode):
    """Rows match within each tumbling or sliding window, joined once when it fires."""

    window: Tumbling | Sliding


@dataclass(frozen=True, eq=False, kw_only=True)
class AsOfJoinNode(StreamJoinNode):
    """Each left row with the right row of its key whose time is the latest at or before its own."""

    tolerance_ms: int | None


def walk(node: Node) -> list[Node]:
    """Every node that ``node`` depends on, and ``node``, each once, inputs before the nodes that use them."""
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(node, False)]
    while stack:
        current, expanded = stack.pop()
        if expanded:
            order.append(current)
            continue
        if id(current) in seen:
            continue
        seen.add(id(current))
        stack.append((current, True))
        stack.extend((child, False) for child in reversed(current.inputs) if id(child) not in seen)
    return order


def source_nodes(node: Node) -> list[SourceNode]:
    """The sources ``node`` reads, in the order they first appear."""
    return [n for n in walk(node) if isinstance(n, SourceNode)]


def is_bounded(node: Node) -> bool:
    """Whether the stream at ``node`` ends: all its sources do (a table join's table always does)."""
    if isinstance(node, SourceNode):
        return node.source.bounded
    if isinstance(node, TableJoinNode):
        return is_bounded(node.inputs[0])
    return all(is_bounded(child) for child in node.inputs)


def window_origin(node: Node) -> WindowNode | KeyedAggNode | TopNode | None:
    """The window whose output the rows of ``node`` are, when their event time is still its ``window_end``.

    That is the nearest keyed node upstream, through stateless operators
    that kept the ``window_end`` column: a window, or a per-window stage
    (whose rows keep their window's ``window_end``). ``None`` for anything
    else, such as a source whose time column happens to be named
    ``window_end``.
    """
    if node.time_column != WINDOW_END:
        return None
    current: Node = node
    while True:
        if isinstance(current, WindowNode):
            return current
        if isinstance(current, (KeyedAggNode, TopNode)):
            return current if current.per_window else None
        if isinstance(current, (SourceNode, WatermarkNode, LateEventsNode, DeadLettersNode)):
            return None
        if isinstance(current, UnionNode):
            return _union_window_origin(current)
        current = current.inputs[0]
    return None


def _union_window_origin(node: UnionNode) -> WindowNode | KeyedAggNode | TopNode | None:
    """A union of windows' outputs is a window's output too (all of them, or none: refused otherwise)."""
    origins = [window_origin(child) for child in node.inputs]
    if all(origin is None for origin in origins):
        return None
    if any(origin is None for origin in origins):
        raise PlanError(
            "union: some inputs are the output of a window (their event time is window_end) and others are not, "
            "so their rows' times mean different things; window each input, or rename window_end in the others"
        )
    return origins[0]


def check_fires_once(origin: Node, operator: str, otherwise: str) -> None:
    """A stage on a window's output needs each window once: a second copy would count twice."""
    if not isinstance(origin, WindowNode) or (origin.emit == "append" and origin.allowed_lateness_ms == 0):
        return
    reason = "emit='update'" if origin.emit != "append" else f"allowed_lateness={origin.allowed_lateness_ms}ms"
    raise PlanError(
        f"{operator}: the window {origin.name!r} may emit a window more than once ({reason}), and a stage on its "
        f"windows would then count it twice; give that window emit='append' and allowed_lateness='0s'{otherwise}"
    )
