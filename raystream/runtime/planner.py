"""From the logical plan (what to compute) to the physical plan (how to run it).

The logical plan is a graph of nodes (:mod:`raystream.plan.logical`); the
physical plan is a graph of stages and the edges between them:

- a **source stage** is a source, read by reader actors, and the stateless
  chain fused after it (the event-time operator first, when it has one);
- a **keyed stage** is a keyed operator (an aggregate, a window, a top, a
  table join), run by partition actors, and the stateless chain fused
  after it;
- an **edge** carries a stage's output to the input of a keyed stage
  (``hash``: prepared and hash-partitioned by the key), to an output
  (``forward``), through the stateless operators of that path alone, or
  whole to a broadcast table join (``broadcast``: a small table, sent once
  to every actor that runs the join).

Planning is two passes. :func:`_build` walks the logical graph once, inputs
first, and turns each node into a vertex through the :data:`BUILDERS`
registry (one builder per node type, as Ray Data's planner maps logical
operators to physical ones). :func:`_fuse` then folds the stateless
vertices (and unions, which only merge edges) into the edges they sit on,
and moves the operators that every edge out of a stage shares into that
stage's own chain, so that they run once.

Each source has its own event time and watermark. A keyed stage sees the
smallest watermark of the sources upstream of it. A stage after a window
tells the window's rows apart by their ``window_end``, which is why the
window must fire each window once (checked when the plan is built, in
:mod:`raystream.plan.logical`); see :mod:`raystream.runtime.stateful` for
why no row is then late between stages.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pyarrow as pa

from raystream._time import END_OF_TIME_MS, START_OF_TIME_MS
from raystream.errors import PlanError
from raystream.plan.logical import (
    AsOfJoinNode,
    DeadLettersNode,
    FilterNode,
    HybridNode,
    IntervalJoinNode,
    KeyedAggNode,
    LateEventsNode,
    MapBatchesNode,
    MapRowsNode,
    Node,
    SelectNode,
    SourceNode,
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
    is_bounded,
    walk,
)
from raystream.run_config import RunConfig
from raystream.runtime.joins import BroadcastJoinOp, JoinSpec, TableJoin
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
from raystream.runtime.stream_joins import AsOfJoin, IntervalJoin, StreamJoinSpec, WindowJoin
from raystream.sources.base import Source
from raystream.windows import Session

#: The side output of a source's malformed records.
DEAD_LETTERS = "dead_letters"
#: The name of a job's output when it has one.
OUTPUT = "output"

Exchange = Literal["forward", "hash", "broadcast"]


@dataclass(frozen=True)
class EventTime:
    """How a source's watermark is made: from which column, with what delay."""

    column: str
    delay_ms: int = 0
    idle_timeout_ms: int | None = None


@dataclass(frozen=True)
class SourceStage:
    """A source, read by reader actors, and the stateless chain fused after it.

    Attributes:
        after: The source stages read to their end before this one starts:
            the tables of table joins before the streams they join, and a
            hybrid's ``history`` before its ``live`` stage.
    """

    name: str
    source: Source
    chain: tuple[StatelessOp, ...]
    event_time: EventTime | None
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyedStage:
    """A keyed operator, run by partition actors, and the stateless chain fused after it."""

    operator: KeyedOperator
    chain: tuple[StatelessOp, ...]

    @property
    def name(self) -> str:
        return self.operator.name


@dataclass(frozen=True)
class Edge:
    """Rows from stage ``producer`` to input ``input`` of keyed stage or output ``consumer``.

    ``chain`` runs on the producer's output before it is sent: the stateless
    operators of this path that other edges out of the producer do not share.
    A ``broadcast`` edge's consumer is a broadcast table join (by operator
    name), wherever the stages' chains run it: the producer is the table's
    source, whose whole output every actor running the join receives.
    """

    producer: str
    consumer: str
    exchange: Exchange
    input: int = 0
    chain: tuple[StatelessOp, ...] = ()


@dataclass(frozen=True)
class Output:
    """Where a job's rows end: a sink, fed by the edges into it.

    Attributes:
        side: When set, the output is this side output (a window's late
            rows, or ``DEAD_LETTERS``) instead of rows from edges.
    """

    name: str
    schema: pa.Schema | None
    upsert_keys: tuple[str, ...] | None
    bounded: bool
    side: str | None = None


@dataclass(frozen=True)
class PhysicalPlan:
    """What the coordinator runs: source stages, keyed stages (inputs first), the edges, the outputs."""

    sources: tuple[SourceStage, ...]
    stages: tuple[KeyedStage, ...]
    edges: tuple[Edge, ...]
    outputs: tuple[Output, ...]
    #: For each stage (source or keyed), the source stages upstream of it, itself included for a source.
    upstream: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: For each keyed stage, how far its watermark lags its sources': the output delays of the stages before it
    #: (``KeyedOperator.output_delay_ms``), summed along the slowest path.
    delays: dict[str, int] = field(default_factory=dict)
    #: For each stage, the keyed stages before it that hold their output back (``KeyedOperator.holds_output``).
    holders: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def watermark(self, stage: str, by_source: dict[str, int], floors: dict[str, int] | None = None) -> int:
        """A stage's watermark (Step 2 of the protocol in :mod:`raystream.runtime.checkpointing`).

        The smallest of its sources' (``by_source``, by source stage), less
        the stage's delay, and at most the floor of each stage before it that
        holds its output back (``floors``, by stage). Once every source has
        ended it is the end of time, so that every stage flushes.
        """
        low = min(by_source.get(source, START_OF_TIME_MS) for source in self.upstream[stage])
        if low in (START_OF_TIME_MS, END_OF_TIME_MS):
            return low
        low = max(START_OF_TIME_MS, low - self.delays.get(stage, 0))
        for holder in self.holders.get(stage, ()):
            low = min(low, (floors or {}).get(holder, START_OF_TIME_MS))
        return low

    def edges_from(self, producer: str) -> list[Edge]:
        """The edges out of ``producer`` that carry rows epoch by epoch (every kind but ``broadcast``)."""
        return [edge for edge in self.edges if edge.producer == producer and edge.exchange != "broadcast"]

    def broadcasts_from(self, producer: str) -> list[str]:
        """The broadcast table joins that source stage ``producer`` is the table of."""
        return [edge.consumer for edge in self.edges if edge.producer == producer and edge.exchange == "broadcast"]

    def edges_into(self, consumer: str) -> list[Edge]:
        """The edges into keyed stage or output ``consumer`` (every kind but ``broadcast``)."""
        return [edge for edge in self.edges if edge.consumer == consumer and edge.exchange != "broadcast"]

    def stage(self, name: str) -> KeyedStage:
        return next(stage for stage in self.stages if stage.name == name)

    def source_stage(self, name: str) -> SourceStage:
        return next(stage for stage in self.sources if stage.name == name)

    def output(self, name: str) -> Output:
        return next(output for output in self.outputs if output.name == name)

    @property
    def source(self) -> Source:
        """The source of a plan with one (tools and tests of single-source jobs)."""
        assert len(self.sources) == 1, f"the plan has {len(self.sources)} sources"
        return self.sources[0].source

    @property
    def has_dead_letters(self) -> bool:
        """Whether readers may refuse records: malformed ones (the source's), or rows without an event time."""
        return any(s.source.has_dead_letters or s.event_time is not None for s in self.sources)

    @property
    def side_outputs(self) -> list[str]:
        """Every side output the job produces: windows' late rows, then the sources' dead letters."""
        tags = [stage.name for stage in self.stages if stage.operator.late_side_output]
        return tags + ([DEAD_LETTERS] if self.has_dead_letters else [])

    @property
    def bounded(self) -> bool:
        return all(stage.source.bounded for stage in self.sources)

    def side_tags(self, stage: str) -> list[str]:
        """The side outputs stage ``stage`` returns: its window's late rows, the late rows of the windows it feeds,
        and, for a source, its dead letters."""
        tags = []
        if any(s.name == stage for s in self.stages) and self.stage(stage).operator.late_side_output:
            tags.append(stage)
        for edge in self.edges_from(stage):
            if edge.exchange == "hash" and self.stage(edge.consumer).operator.late_side_output:
                tags.append(edge.consumer)
        if any(s.name == stage for s in self.sources) and self.has_dead_letters:
            tags.append(DEAD_LETTERS)
        return list(dict.fromkeys(tags))


@dataclass(frozen=True)
class OutputRequest:
    """An output the user asked for: the node whose rows it gets, under a name."""

    name: str
    node: Node


# -- pass 1: a vertex per logical node -------------------------------------------------------


@dataclass(eq=False)
class _Vertex:
    """A node of the physical graph before fusion.

    ``kind`` is ``source``, ``keyed``, ``stateless`` (one operator, fused
    away in pass 2) or ``union`` (merges its inputs' edges, fused away too).
    An ``ordered`` union reads its inputs one after the other (a hybrid).
    """

    kind: Literal["source", "keyed", "stateless", "union"]
    inputs: list[_Vertex]
    source: SourceNode | None = None
    operator: KeyedOperator | None = None
    op: StatelessOp | None = None
    node: Node | None = None
    ordered: bool = False


@dataclass
class _Context:
    config: RunConfig
    names: set[str] = field(default_factory=lambda: {DEAD_LETTERS})
    #: Table joins to broadcast: operator name -> the table's vertex.
    broadcasts: dict[str, _Vertex] = field(default_factory=dict)

    def unique(self, name: str) -> str:
        """A stage name unique in the plan ("window", "window-2"...)."""
        candidate, suffix = name, 2
        while candidate in self.names:
            candidate, suffix = f"{name}-{suffix}", suffix + 1
        self.names.add(candidate)
        return candidate


_Builder = Callable[[Any, list[_Vertex], _Context], _Vertex]
#: Logical node type -> the builder of its vertex.
BUILDERS: dict[type[Node], _Builder] = {}


def builds(*types: type[Node]) -> Callable[[_Builder], _Builder]:
    def register(builder: _Builder) -> _Builder:
        for node_type in types:
            BUILDERS[node_type] = builder
        return builder

    return register


def _stateless(op: StatelessOp, inputs: list[_Vertex], node: Node) -> _Vertex:
    return _Vertex("stateless", inputs, op=op, node=node)


@builds(SourceNode)
def _build_source(node: SourceNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    return _Vertex("source", [], source=node, node=node)


@builds(FilterNode)
def _build_filter(node: FilterNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    return _stateless(FilterOp(node.predicate), inputs, node)


@builds(MapBatchesNode)
def _build_map_batches(node: MapBatchesNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    return _stateless(MapBatchesOp(node.fn, node.batch_format), inputs, node)


@builds(MapRowsNode)
def _build_map_rows(node: MapRowsNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    return _stateless(MapRowsOp(node.fn, node.flat), inputs, node)


@builds(SelectNode)
def _build_select(node: SelectNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    return _stateless(SelectOp(node.columns), inputs, node)


@builds(WithColumnsNode)
def _build_with_columns(node: WithColumnsNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    return _stateless(WithColumnsOp(node.exprs), inputs, node)


@builds(WatermarkNode)
def _build_watermark(node: WatermarkNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    return _stateless(EventTimeOp(node.column, node.delay_ms, node.idle_timeout_ms), inputs, node)


@builds(UnionNode)
def _build_union(node: UnionNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    return _Vertex("union", inputs, node=node)


@builds(HybridNode)
def _build_hybrid(node: HybridNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    return _Vertex("union", inputs, node=node, ordered=True)


def _stream_join_spec(node: StreamJoinNode, ctx: _Context) -> StreamJoinSpec:
    left, right = node.inputs
    assert left.schema is not None and right.schema is not None and left.time_column and right.time_column
    right_time = dict(node.right_columns).get(right.time_column)
    if right_time is None:
        raise PlanError(
            f"join ({node.name}): the right stream's time column {right.time_column!r} is one of its keys; "
            "join on other columns, or give the right stream another time column"
        )
    return StreamJoinSpec(
        name=ctx.unique(node.name),
        left_on=node.left_on,
        right_on=node.right_on,
        how=node.how,
        left_time=left.time_column,
        right_time=right_time,
        left_schema=left.schema,
        right_columns=node.right_columns,
        right_types=tuple(right.schema.field(column).type for column, _ in node.right_columns),
        coalesce_keys=node.coalesce_keys,
        late_side_output=node.late == "side",
    )


@builds(IntervalJoinNode)
def _build_interval_join(node: IntervalJoinNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    operator = IntervalJoin(_stream_join_spec(node, ctx), node.lower_ms, node.upper_ms, node.upper_column)
    return _Vertex("keyed", inputs, operator=operator, node=node)


@builds(AsOfJoinNode)
def _build_asof_join(node: AsOfJoinNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    operator = AsOfJoin(_stream_join_spec(node, ctx), node.tolerance_ms)
    return _Vertex("keyed", inputs, operator=operator, node=node)


@builds(WindowJoinNode)
def _build_window_join(node: WindowJoinNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    operator = WindowJoin(_stream_join_spec(node, ctx), node.window)
    return _Vertex("keyed", inputs, operator=operator, node=node)


@builds(KeyedAggNode)
def _build_keyed_agg(node: KeyedAggNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    name = ctx.unique(node.name)
    operator: KeyedOperator
    if node.per_window:
        operator = PerWindowAggregate(name, node.keys, node.aggregates)
    else:
        operator = RunningAggregate(name, node.keys, node.aggregates, node.emit)
    return _Vertex("keyed", inputs, operator=operator, node=node)


@builds(TopNode)
def _build_top(node: TopNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    name = ctx.unique(node.name)
    operator: KeyedOperator
    if node.per_window:
        operator = PerWindowTop(name, node.keys, node.top)
    else:
        operator = RunningTop(name, node.keys, node.top, node.emit)
    return _Vertex("keyed", inputs, operator=operator, node=node)


@builds(WindowAggNode, WindowTopNode)
def _build_window(node: WindowNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    options: dict[str, Any] = {
        "name": ctx.unique(node.name),
        "keys": node.keys,
        "time_column": node.window_time_column,
        "time_type": node.time_type,
        "allowed_lateness_ms": node.allowed_lateness_ms,
        "late": node.late,
        "emit": node.emit,
        "time_shift_ms": node.time_shift_ms,
    }
    operator: KeyedOperator
    if isinstance(node, WindowTopNode):
        assert not isinstance(node.window, Session)  # refused when the plan was built
        operator = WindowTop(node.window, node.top, **options)
    elif isinstance(node.window, Session):
        assert isinstance(node, WindowAggNode)
        operator = SessionAggregate(node.window, aggregates=node.aggregates, **options)
    else:
        assert isinstance(node, WindowAggNode)
        operator = WindowAggregate(node.window, aggregates=node.aggregates, **options)
    return _Vertex("keyed", inputs, operator=operator, node=node)


@builds(TableJoinNode)
def _build_table_join(node: TableJoinNode, inputs: list[_Vertex], ctx: _Context) -> _Vertex:
    """A small table is broadcast and joined where the stream is; a large one is a keyed stage."""
    name = ctx.unique(node.name)
    stream, table = node.inputs[0].schema, node.inputs[1].schema
    key_types = None if stream is None else tuple(stream.field(k).type for k in node.left_on)
    payload = pa.schema(
        [(output, pa.null() if table is None else table.field(column).type) for column, output in node.output_names]
    )
    spec = JoinSpec(
        name,
        node.left_on,
        node.right_on,
        node.how,
        node.output_names,
        key_types,
        payload,
        ctx.config.max_join_table_bytes,
    )
    estimate = _estimated_bytes(node.inputs[1])
    if estimate is not None and estimate <= ctx.config.broadcast_join_max_bytes:
        ctx.broadcasts[name] = inputs[1]
        return _stateless(BroadcastJoinOp(spec), [inputs[0]], node)
    return _Vertex("keyed", inputs, operator=TableJoin(spec), node=node)


def _estimated_bytes(node: Node) -> int | None:
    """What a bounded table's sources say they hold, in bytes (``None``: they cannot tell)."""
    sizes = [n.source.estimated_bytes() for n in walk(node) if isinstance(n, SourceNode)]
    return None if any(size is None for size in sizes) else sum(s for s in sizes if s is not None)


def _build(requests: Sequence[OutputRequest], ctx: _Context) -> dict[int, _Vertex]:
    """Pass 1: one vertex per logical node, inputs before the nodes that use them."""
    vertices: dict[int, _Vertex] = {}
    for request in requests:
        for node in walk(request.node):
            if id(node) in vertices or isinstance(node, (LateEventsNode, DeadLettersNode)):
                continue
            builder = BUILDERS.get(type(node))
            if builder is None:
                raise PlanError(f"the planner has no builder for {type(node).__name__}; this is a raystream bug")
            vertices[id(node)] = builder(node, [vertices[id(child)] for child in node.inputs], ctx)
    return vertices


# -- pass 2: fusion ------------------------------------------------------------------------


def _paths(vertex: _Vertex) -> list[tuple[_Vertex, tuple[StatelessOp, ...]]]:
    """The stages (sources, keyed) whose rows reach ``vertex``, each with the stateless ops on the way."""
    if vertex.kind in ("source", "keyed"):
        return [(vertex, ())]
    if vertex.kind == "union":
        return [path for child in vertex.inputs for path in _paths(child)]
    assert vertex.op is not None
    return [(producer, (*chain, vertex.op)) for producer, chain in _paths(vertex.inputs[0])]


@dataclass
class _Fused:
    sources: list[SourceStage]
    stages: list[KeyedStage]
    edges: list[Edge]
    #: The stage name of each source and keyed vertex, by the vertex's id.
    names: dict[int, str]


def _fuse(
    vertices: dict[int, _Vertex], requests: Sequence[OutputRequest], ctx: _Context
) -> tuple[_Fused, dict[str, str]]:
    """Pass 2: edges through the stateless vertices, and each stage's shared prefix fused into the stage.

    Returns the fused graph, and for each output request the side output it is, if any.
    """
    names: dict[int, str] = {}
    for vertex in vertices.values():
        if vertex.kind == "source":
            assert vertex.source is not None
            names[id(vertex)] = ctx.unique(vertex.source.stage_name)
        elif vertex.kind == "keyed":
            assert vertex.operator is not None
            names[id(vertex)] = vertex.operator.name
    raw: list[tuple[_Vertex, str, Exchange, int, tuple[StatelessOp, ...]]] = []
    for vertex in vertices.values():
        if vertex.kind != "keyed":
            continue
        for index, child in enumerate(vertex.inputs):
            for producer, chain in _paths(child):
                raw.append((producer, names[id(vertex)], "hash", index, chain))
    sides: dict[str, str] = {}
    for request in requests:
        node = request.node
        if isinstance(node, DeadLettersNode):
            sides[request.name] = DEAD_LETTERS
            continue
        if isinstance(node, LateEventsNode):
            late_of = vertices[id(node.input)]
            assert late_of.operator is not None
            sides[request.name] = late_of.operator.name
            continue
        for producer, chain in _paths(vertices[id(node)]):
            raw.append((producer, request.name, "forward", 0, chain))
    broadcast_sources: dict[str, tuple[str, tuple[StatelessOp, ...]]] = {}
    for join, table in ctx.broadcasts.items():
        for producer, chain in _paths(table):
            name = names[id(producer)]
            if producer.kind != "source" or name in broadcast_sources or any(e[0] is producer for e in raw):
                raise PlanError(
                    f"join ({join}): a broadcast table must come from sources of its own, through stateless "
                    "operators only; give this table a source that nothing else reads"
                )
            broadcast_sources[name] = (join, chain)

    sources: list[SourceStage] = []
    stages: list[KeyedStage] = []
    edges: list[Edge] = []
    for vertex in vertices.values():
        if vertex.kind not in ("source", "keyed"):
            continue
        name = names[id(vertex)]
        out = [edge for edge in raw if edge[0] is vertex]
        prefix = _common_prefix([edge[4] for edge in out]) if out else ()
        if name in broadcast_sources:  # a broadcast table's rows go whole to its join, not on edges
            prefix = broadcast_sources[name][1]
        for _, consumer, exchange, index, chain in out:
            rest = chain[len(prefix) :]
            if any(isinstance(op, EventTimeOp) for op in rest):
                raise PlanError(
                    f"with_watermark: the stream of {name!r} is used by several operators before with_watermark; "
                    "call with_watermark once, right after the source, before the stream is shared"
                )
            edges.append(Edge(name, consumer, exchange, index, rest))
        if vertex.kind == "source":
            assert vertex.source is not None
            sources.append(_source_stage(name, vertex.source, prefix))
            if name in broadcast_sources:
                edges.append(Edge(name, broadcast_sources[name][0], "broadcast"))
        else:
            assert vertex.operator is not None
            if any(isinstance(op, EventTimeOp) for op in prefix):
                raise PlanError(
                    f"with_watermark: the stream after {name!r} cannot get a new watermark; a keyed operator's "
                    "rows keep the event time of their input (window_end for a window)"
                )
            stages.append(KeyedStage(vertex.operator, prefix))
    return _Fused(sources, stages, edges, names), sides


def _source_stage(name: str, node: SourceNode, chain: tuple[StatelessOp, ...]) -> SourceStage:
    """A source stage; its event time is the last ``with_watermark`` fused into it, else the source's time column."""
    marks = [op for op in chain if isinstance(op, EventTimeOp)]
    if marks:
        mark = marks[-1]
        event_time = EventTime(mark.column, mark.delay_ms, mark.idle_timeout_ms)
        return SourceStage(name, node.source, chain, event_time)
    if node.source_time_column is not None:
        chain = (EventTimeOp(node.source_time_column), *chain)
        return SourceStage(name, node.source, chain, EventTime(node.source_time_column))
    return SourceStage(name, node.source, chain, None)


def _common_prefix(chains: list[tuple[StatelessOp, ...]]) -> tuple[StatelessOp, ...]:
    """The operators (the same objects) that every chain starts with."""
    prefix: list[StatelessOp] = []
    for ops in zip(*chains, strict=False):
        if any(op is not ops[0] for op in ops):
            break
        prefix.append(ops[0])
    return tuple(prefix)


# -- the plan --------------------------------------------------------------------------------


def plan(outputs: Sequence[OutputRequest] | Node, config: RunConfig | None = None) -> PhysicalPlan:
    """Compile the logical plan that ends at the outputs (or at one node, the output ``"output"``)."""
    requests = [OutputRequest(OUTPUT, outputs)] if isinstance(outputs, Node) else list(outputs)
    # Stages and outputs share one namespace (an edge names its consumer): outputs keep the names asked for.
    ctx = _Context(config or RunConfig(), names={DEAD_LETTERS, *(request.name for request in requests)})
    vertices = _build(requests, ctx)
    fused, sides = _fuse(vertices, requests, ctx)
    sources = _ordered(fused, vertices)
    upstream = _upstream(sources, fused)
    delays = _delays(fused)
    holders = _holders(fused)
    planned = [
        Output(
            name=request.name,
            schema=request.node.schema,
            upsert_keys=None if request.name in sides else _upsert_keys(request.name, fused),
            bounded=is_bounded(request.node),
            side=sides.get(request.name),
        )
        for request in requests
    ]
    for request in requests:
        _register_user_modules(request.node)
    return PhysicalPlan(
        tuple(sources), tuple(fused.stages), tuple(fused.edges), tuple(planned), upstream, delays, holders
    )


def _ordered(fused: _Fused, vertices: dict[int, _Vertex]) -> list[SourceStage]:
    """The source stages, each with the stages read to their end before it starts (``SourceStage.after``).

    A table join's table (a broadcast table's sources, or every source
    upstream of a partitioned join's ``tables`` input) is read before the other
    sources. An ordered union (a hybrid) reads the sources of each input
    after those of the inputs before it.
    """
    tables: set[str] = {edge.producer for edge in fused.edges if edge.exchange == "broadcast"}
    tables_of = {stage.name: stage.operator.tables for stage in fused.stages}
    table_stages = {e.producer for e in fused.edges if e.exchange == "hash" and e.input in tables_of[e.consumer]}
    changed = True
    while changed:  # every stage upstream of a table input is part of the table
        changed = False
        for edge in fused.edges:
            if edge.consumer in table_stages and edge.producer not in table_stages:
                table_stages.add(edge.producer)
                changed = True
    tables |= {s.name for s in fused.sources if s.name in table_stages}
    after = {s.name: set() if s.name in tables else set(tables) for s in fused.sources}
    for vertex in vertices.values():
        if vertex.kind != "union" or not vertex.ordered:
            continue
        earlier: set[str] = set()
        for child in vertex.inputs:
            stages = {fused.names[id(producer)] for producer, _ in _paths(child) if producer.kind == "source"}
            for name in stages:
                after[name] |= earlier
            earlier |= stages
    return [replace(s, after=tuple(sorted(after[s.name]))) for s in fused.sources]


def _upstream(sources: list[SourceStage], fused: _Fused) -> dict[str, tuple[str, ...]]:
    found: dict[str, set[str]] = {s.name: {s.name} for s in sources}
    for stage in fused.stages:  # stages come inputs first
        found[stage.name] = set()
        for edge in fused.edges:
            if edge.consumer == stage.name:
                found[stage.name] |= found[edge.producer]
    return {name: tuple(sorted(names)) for name, names in found.items()}


def _delays(fused: _Fused) -> dict[str, int]:
    """Each keyed stage's watermark delay: the largest, over its inputs, of the producer's plus its output delay."""
    delays: dict[str, int] = {}
    own = {stage.name: stage.operator.output_delay_ms for stage in fused.stages}  # sources lag by nothing
    for stage in fused.stages:  # stages come inputs first
        into = [e.producer for e in fused.edges if e.consumer == stage.name and e.exchange != "broadcast"]
        delays[stage.name] = max((delays.get(p, 0) + own.get(p, 0) for p in into), default=0)
    return delays


def _holders(fused: _Fused) -> dict[str, tuple[str, ...]]:
    """For each keyed stage, the stages before it whose output may lag by more than a delay (their floors count)."""
    found: dict[str, set[str]] = {}
    holds = {stage.name for stage in fused.stages if stage.operator.holds_output}
    for stage in fused.stages:  # stages come inputs first
        found[stage.name] = set()
        for edge in fused.edges:
            if edge.consumer == stage.name and edge.exchange != "broadcast" and edge.producer in found:
                found[stage.name] |= found[edge.producer] | ({edge.producer} & holds)
    return {name: tuple(sorted(names)) for name, names in found.items() if names}


def _upsert_keys(output: str, fused: _Fused) -> tuple[str, ...] | None:
    """An output's upsert keys: those of the one keyed stage that feeds it directly, with no operator after it."""
    into = [edge for edge in fused.edges if edge.consumer == output and edge.exchange != "broadcast"]
    if len(into) != 1 or into[0].chain:
        return None
    stage = next((s for s in fused.stages if s.name == into[0].producer), None)
    if stage is None or stage.chain:
        return None
    return stage.operator.upsert_keys


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
