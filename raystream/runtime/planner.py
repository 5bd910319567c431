"""From the logical plan (what to compute) to the physical plan (how to run it).

Stateless operators between the source and the first ``key_by`` are fused
into the reader actors. Each keyed operator becomes a stage of partition
actors, and the stateless operators after it are fused into that stage.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raystream.runtime.keyed import KeyedAggregation
from raystream.runtime.operators import (
    EventTimeOp,
    FilterOp,
    MapBatchesOp,
    MapRowsOp,
    SelectOp,
    StatelessOp,
    WithColumnsOp,
)
from raystream.sources.base import Source
from raystream.stream import (
    FilterNode,
    KeyedAggNode,
    MapBatchesNode,
    MapRowsNode,
    Node,
    SelectNode,
    SourceNode,
    WatermarkNode,
    WithColumnsNode,
    plan_nodes,
)


@dataclass(frozen=True)
class EventTime:
    """How the watermark is made: from which column, with what delay."""

    column: str
    delay_ms: int = 0
    idle_timeout_ms: int | None = None


@dataclass(frozen=True)
class KeyedStage:
    """A keyed operator, run by partition actors, and the stateless chain fused after it."""

    name: str
    keys: tuple[str, ...]
    aggregation: KeyedAggregation
    emit: str
    chain: tuple[StatelessOp, ...]


@dataclass(frozen=True)
class PhysicalPlan:
    """What the coordinator runs."""

    source: Source
    reader_chain: tuple[StatelessOp, ...]
    event_time: EventTime | None
    stages: tuple[KeyedStage, ...]
    output_schema: pa.Schema | None
    upsert_keys: tuple[str, ...] | None


_STATELESS: dict[type, Callable[[Any], StatelessOp]] = {
    FilterNode: lambda n: FilterOp(n.predicate),
    MapBatchesNode: lambda n: MapBatchesOp(n.fn, n.batch_format),
    MapRowsNode: lambda n: MapRowsOp(n.fn, n.flat),
    SelectNode: lambda n: SelectOp(n.columns),
    WithColumnsNode: lambda n: WithColumnsOp(n.exprs),
}


def plan(node: Node) -> PhysicalPlan:
    """Compile the logical plan that ends at ``node``."""
    nodes = plan_nodes(node)
    head = nodes[0]
    assert isinstance(head, SourceNode)
    chain: list[StatelessOp] = []
    stages: list[KeyedStage] = []
    event_time: EventTime | None = None
    if head.source_time_column is not None and not any(isinstance(n, WatermarkNode) for n in nodes):
        event_time = EventTime(head.source_time_column)
        chain.append(EventTimeOp(head.source_time_column))
    reader_chain: list[StatelessOp] | None = None
    pending: KeyedAggNode | None = None
    for current in nodes[1:]:
        if isinstance(current, WatermarkNode):
            event_time = EventTime(current.column, current.delay_ms, current.idle_timeout_ms)
            chain.append(EventTimeOp(current.column))
        elif isinstance(current, KeyedAggNode):
            if pending is None:
                reader_chain = chain
            else:
                stages.append(_stage(pending, chain))
            pending, chain = current, []
        else:
            chain.append(_STATELESS[type(current)](current))
    if pending is None:
        reader_chain = chain
    else:
        stages.append(_stage(pending, chain))
    assert reader_chain is not None
    _register_user_modules(node)
    return PhysicalPlan(
        source=head.source,
        reader_chain=tuple(reader_chain),
        event_time=event_time,
        stages=tuple(stages),
        output_schema=node.schema,
        upsert_keys=_upsert_keys(stages),
    )


def _stage(node: KeyedAggNode, chain: list[StatelessOp]) -> KeyedStage:
    return KeyedStage(node.name, node.keys, KeyedAggregation(node.keys, node.aggregates), node.emit, tuple(chain))


def _upsert_keys(stages: list[KeyedStage]) -> tuple[str, ...] | None:
    """The output's upsert keys: those of a final keyed stage with no operator after it."""
    if not stages or stages[-1].chain:
        return None
    return stages[-1].keys


def _register_user_modules(node: Node) -> None:
    """Pickle user functions by value when their module cannot be imported by Ray workers.

    Functions defined in a job file run by ``raystream run``, a test module
    or a notebook live in modules that worker processes cannot import by
    name, so they travel by value instead.
    """
    from ray import cloudpickle

    site = tuple(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))
    for current in plan_nodes(node):
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
