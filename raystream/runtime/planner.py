"""From the logical plan (what to compute) to the physical plan (how to run it).

Stateless operators between the source and the first ``key_by`` are fused
into the reader actors. Each keyed operator becomes a stage of partition
actors, and the stateless operators after it are fused into that stage.

Every stage sees the job's one watermark. A stage after a window tells the
window's rows apart by their ``window_end``, which is why the window must
fire each window once (checked when the plan is built, in
:mod:`raystream.plan.logical`); see :mod:`raystream.runtime.stateful` for why no
row is then late between stages.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raystream.plan.logical import (
    KEYED_NODES,
    DeadLettersNode,
    FilterNode,
    KeyedAggNode,
    LateEventsNode,
    MapBatchesNode,
    MapRowsNode,
    Node,
    SelectNode,
    SourceNode,
    TopNode,
    WatermarkNode,
    WindowAggNode,
    WindowNode,
    WindowTopNode,
    WithColumnsNode,
    walk,
)
from raystream.runtime.operators import (
    EventTimeOp,
    FilterOp,
    MapBatchesOp,
    MapRowsOp,
    SelectOp,
    StatelessOp,
    WithColumnsOp,
)
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
from raystream.sources.base import Source
from raystream.windows import Session


@dataclass(frozen=True)
class EventTime:
    """How the watermark is made: from which column, with what delay."""

    column: str
    delay_ms: int = 0
    idle_timeout_ms: int | None = None


@dataclass(frozen=True)
class KeyedStage:
    """A keyed operator, run by partition actors, and the stateless chain fused after it."""

    operator: KeyedOperator
    chain: tuple[StatelessOp, ...]

    @property
    def name(self) -> str:
        return self.operator.name


@dataclass(frozen=True)
class PhysicalPlan:
    """What the coordinator runs.

    Attributes:
        output_side: When set, the job's output is this side output (a
            window's name for its late rows, or ``DEAD_LETTERS``), and the
            pipeline's own output is discarded.
    """

    source: Source
    reader_chain: tuple[StatelessOp, ...]
    event_time: EventTime | None
    stages: tuple[KeyedStage, ...]
    output_schema: pa.Schema | None
    upsert_keys: tuple[str, ...] | None
    output_side: str | None = None

    @property
    def side_outputs(self) -> list[str]:
        """Every side output the job produces: windows' late rows, then the source's dead letters."""
        tags = [stage.name for stage in self.stages if stage.operator.late_side_output]
        return tags + ([DEAD_LETTERS] if self.has_dead_letters else [])

    @property
    def has_dead_letters(self) -> bool:
        """Whether readers may refuse records: malformed ones (the source's), or rows without an event time."""
        return self.source.has_dead_letters or self.event_time is not None


#: The side output of a source's malformed records.
DEAD_LETTERS = "dead_letters"

_STATELESS: dict[type, Callable[[Any], StatelessOp]] = {
    FilterNode: lambda n: FilterOp(n.predicate),
    MapBatchesNode: lambda n: MapBatchesOp(n.fn, n.batch_format),
    MapRowsNode: lambda n: MapRowsOp(n.fn, n.flat),
    SelectNode: lambda n: SelectOp(n.columns),
    WithColumnsNode: lambda n: WithColumnsOp(n.exprs),
}


def plan(node: Node) -> PhysicalPlan:
    """Compile the logical plan that ends at ``node``."""
    output_side = DEAD_LETTERS if isinstance(node, DeadLettersNode) else None
    late_parent = node.input if isinstance(node, LateEventsNode) else None
    nodes = [n for n in walk(node) if not isinstance(n, (LateEventsNode, DeadLettersNode))]
    head = nodes[0]
    assert isinstance(head, SourceNode)
    chain: list[StatelessOp] = []
    stages: list[KeyedStage] = []
    event_time: EventTime | None = None
    if head.source_time_column is not None and not any(isinstance(n, WatermarkNode) for n in nodes):
        event_time = EventTime(head.source_time_column)
        chain.append(EventTimeOp(head.source_time_column))
    reader_chain: list[StatelessOp] | None = None
    pending: KeyedOperator | None = None
    names: set[str] = {DEAD_LETTERS}
    for current in nodes[1:]:
        if isinstance(current, WatermarkNode):
            event_time = EventTime(current.column, current.delay_ms, current.idle_timeout_ms)
            chain.append(EventTimeOp(current.column))
        elif isinstance(current, KEYED_NODES):
            if pending is None:
                reader_chain = chain
            else:
                stages.append(KeyedStage(pending, tuple(chain)))
            pending, chain = _keyed_operator(current, names), []
            if current is late_parent:
                output_side = pending.name
        else:
            chain.append(_STATELESS[type(current)](current))
    if pending is None:
        reader_chain = chain
    else:
        stages.append(KeyedStage(pending, tuple(chain)))
    assert reader_chain is not None
    _register_user_modules(node)
    return PhysicalPlan(
        source=head.source,
        reader_chain=tuple(reader_chain),
        event_time=event_time,
        stages=tuple(stages),
        output_schema=node.schema,
        upsert_keys=None if output_side else _upsert_keys(stages),
        output_side=output_side,
    )


def _keyed_operator(node: Node, names: set[str]) -> KeyedOperator:
    """The physical operator of a keyed node, with a name unique in the plan ("window", "window-2"...)."""
    assert isinstance(node, KEYED_NODES)
    name = node.name
    suffix = 2
    while name in names:
        name, suffix = f"{node.name}-{suffix}", suffix + 1
    names.add(name)
    if isinstance(node, KeyedAggNode):
        if node.per_window:
            return PerWindowAggregate(name, node.keys, node.aggregates)
        return RunningAggregate(name, node.keys, node.aggregates, node.emit)
    if isinstance(node, TopNode):
        if node.per_window:
            return PerWindowTop(name, node.keys, node.top)
        return RunningTop(name, node.keys, node.top, node.emit)
    assert isinstance(node, WindowNode)
    options: dict[str, Any] = {
        "name": name,
        "keys": node.keys,
        "time_column": node.window_time_column,
        "time_type": node.time_type,
        "allowed_lateness_ms": node.allowed_lateness_ms,
        "late": node.late,
        "emit": node.emit,
        "time_shift_ms": node.time_shift_ms,
    }
    if isinstance(node, WindowTopNode):
        assert not isinstance(node.window, Session)  # refused when the plan was built
        return WindowTop(node.window, node.top, **options)
    assert isinstance(node, WindowAggNode)
    if isinstance(node.window, Session):
        return SessionAggregate(node.window, aggregates=node.aggregates, **options)
    return WindowAggregate(node.window, aggregates=node.aggregates, **options)


def _upsert_keys(stages: list[KeyedStage]) -> tuple[str, ...] | None:
    """The output's upsert keys: those of a final keyed stage with no operator after it."""
    if not stages or stages[-1].chain:
        return None
    return stages[-1].operator.upsert_keys


def _register_user_modules(node: Node) -> None:
    """Pickle user functions by value when their module cannot be imported by Ray workers.

    Functions defined in a job file run by ``raystream run``, a test module
    or a notebook live in modules that worker processes cannot import by
    name, so they travel by value instead.
    """
    from ray import cloudpickle

    site = tuple(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    for current in walk(node):
        for value in vars(current).values():
            for module_name in _defining_modules(value):
                module = sys.modules.get(module_name)
                path = getattr(module, "__file__", None)
                if module is None or module_name == "__main__" or path is None:
                    continue
                if module_name.split(".")[0] == "raystream" or path.startswith(site):
                    continue
                cloudpickle.register_pickle_by_value(module)


def _defining_modules(value: Any) -> list[str]:
    """The modules that define ``value``: a function's own, or an object's class's."""
    if isinstance(value, tuple):
        return [name for item in value for name in _defining_modules(item)]
    if isinstance(value, (str, int, float, bool, type(None), pa.Schema, Node)):
        return []
    if callable(value) and hasattr(value, "__module__"):
        return [value.__module__ or ""]
    return [type(value).__module__]
