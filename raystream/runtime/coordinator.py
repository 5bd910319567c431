"""The coordinator: drives epochs, computes watermarks, completes epochs in order.

It runs on the driver, in the thread of a :class:`~raystream.Job`. It moves
object refs and small metadata dicts only: every ``ray.get`` it makes goes
through :meth:`Coordinator._get_metadata`, on the metadata refs that actors
return first. Rows flow from reader actors to partition actors (and to
distributed sinks) through the Ray object store without passing here.

It runs the epoch and checkpoint protocol, whose one description (the
numbered steps, and recovery) is in :mod:`raystream.runtime.checkpointing`;
the code of each step here is marked ``# Step N``.

Readers and the first keyed stage tell late rows by the same watermark: the
one computed after the previous epoch.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from raystream._time import START_OF_TIME_MS, duration_ms
from raystream.errors import ConfigError, JobFailedError, RaystreamError
from raystream.run_config import RunConfig
from raystream.runtime.actors import Layout, PartitionActor, ReaderActor, Route
from raystream.runtime.checkpoint import CorruptCheckpointError
from raystream.runtime.checkpointing import Checkpointing, Recovery
from raystream.runtime.joins import BroadcastJoinOp
from raystream.runtime.planner import PhysicalPlan
from raystream.runtime.sink_runner import SideOutputRouter, SinkRunner
from raystream.runtime.watermarks import WatermarkTracker
from raystream.sinks.base import Sink, SinkContext
from raystream.sinks.memory import MemorySink
from raystream.sources.base import Split

_log = logging.getLogger("raystream")
_ACTOR_START_TIMEOUT_S = 120.0
#: How long the loop pauses after an epoch of an unbounded source read nothing; it doubles while the source
#: stays idle, up to the maximum, so that an idle job does not log (and checkpoint) a hundred empty epochs a second.
_IDLE_SLEEP_S = 0.01
_MAX_IDLE_SLEEP_S = 0.16
#: How long a recovery keeps trying to start the job's actors again: a node that died takes Ray some seconds
#: to declare dead, and actors placed on it meanwhile die at once.
_RECOVERY_START_TIMEOUT_S = 120.0


@dataclass
class _Checkpoint:
    """What a checkpoint after an epoch records besides the state: taken when the epoch was read."""

    positions: dict[str, Any]
    done: set[str]
    watermarks: dict[str, int]
    floors: dict[str, int]
    clocks: dict[str, Any]
    snapshot_refs: list[ray.ObjectRef]


@dataclass
class _EpochInFlight:
    epoch: int
    meta_refs: list[ray.ObjectRef]
    #: For each output, the refs of its rows for a driver-side sink.
    output_refs: dict[str, list[ray.ObjectRef]]
    side_refs: list[ray.ObjectRef]
    reader_metas: list[dict[str, Any]]
    started: float
    checkpoint: _Checkpoint | None = None
    #: The epoch that ends a bounded input: its checkpoint records the job as complete.
    end_of_input: bool = False
    #: Each keyed stage's watermark in this epoch (a stage that holds its output back makes its floor from it).
    stage_watermarks: dict[str, int] = field(default_factory=dict)


def _merged_state_by_input(held: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``state_by_input`` of a stage's partition actors as one: rows summed, the oldest time the smallest."""
    merged: dict[str, Any] = {}
    for entry in held:
        for name, value in entry.items():
            if name == "oldest_time_ms":
                known = [v for v in (merged.get(name), value) if v is not None]
                merged[name] = min(known) if known else None
            else:
                merged[name] = merged.get(name, 0) + value
    return merged


class ActorDiedError(JobFailedError):
    """A reader or partition actor died (its node failed, or it was killed)."""


@dataclass
class Metrics:
    """Counters of a running job, read through ``Job.metrics()``."""

    epochs_completed: int = 0
    rows_read: int = 0
    rows_written: int = 0
    late_rows: int = 0
    null_time_rows: int = 0
    dead_letters: int = 0
    watermark_ms: int | None = None
    watermark_held_by: str | None = None
    last_epoch_seconds: float = 0.0
    coordinator_seconds: float = 0.0
    startup_seconds: float = 0.0
    run_seconds: float = 0.0
    started_at: float = field(default_factory=time.time)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    splits_total: int = 0
    splits_done: int = 0
    state_rows: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, dict[str, int]] = field(default_factory=dict)
    peak_state_rows: dict[str, int] = field(default_factory=dict)
    #: For a stage of two inputs (a join): the rows it holds of each input, and the oldest event time held.
    state_by_input: dict[str, dict[str, Any]] = field(default_factory=dict)
    actor_nodes: dict[str, str] = field(default_factory=dict)
    busy_seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.time() - self.started_at, 1e-9)
        return {
            "epochs_completed": self.epochs_completed,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_read_per_second": self.rows_read / elapsed,
            "late_rows": self.late_rows,
            "null_time_rows": self.null_time_rows,
            "dead_letters": self.dead_letters,
            "watermark_ms": self.watermark_ms,
            "watermark_held_by": self.watermark_held_by,
            "last_epoch_seconds": self.last_epoch_seconds,
            "coordinator_ms_per_epoch": 1000 * self.coordinator_seconds / max(self.epochs_completed, 1),
            "startup_seconds": self.startup_seconds,
            "run_seconds": self.run_seconds,
            "splits": {k: dict(v) for k, v in self.splits.items()},
            "splits_total": self.splits_total,
            "splits_done": self.splits_done,
            "state_rows": dict(self.state_rows),
            "outputs": {name: dict(counts) for name, counts in self.outputs.items()},
            "peak_state_rows": dict(self.peak_state_rows),
            "state_by_input": {name: dict(held) for name, held in self.state_by_input.items()},
            "busy_seconds": dict(self.busy_seconds),
            "cpu_seconds": dict(self.cpu_seconds),
            "actor_nodes": dict(self.actor_nodes),
        }


def _refs(result: Any) -> list[ray.ObjectRef]:
    return [result] if isinstance(result, ray.ObjectRef) else list(result)


class Coordinator:
    """Runs one physical plan into its sinks (one per output) until the sources end or ``stop`` is called."""

    def __init__(self, plan: PhysicalPlan, sinks: dict[str, Sink], config: RunConfig) -> None:
        self.plan = plan
        self.sinks = sinks
        self.config = config
        self.metrics = Metrics()
        self.readers: dict[str, list[Any]] = {}
        self.stage_actors: dict[str, list[Any]] = {}
        self.layouts = {stage: self._layout(stage) for stage in self._stage_names()}
        #: Split ids carry their source stage's name ("source-2/part-0.parquet") when there are several sources.
        self.qualified = len(plan.sources) > 1
        self.trackers = self._new_trackers()
        # Each side output (late rows, dead letters) is an output of the job, or kept for the Job to show.
        side_of = {output.side: output.name for output in plan.outputs if output.side is not None}
        self.side_sinks: dict[str, Sink] = {
            tag: sinks[side_of[tag]] if tag in side_of else MemorySink() for tag in plan.side_outputs
        }
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._blocked_seconds = 0.0
        self._last_discovery = dict.fromkeys((s.name for s in plan.sources), time.monotonic())
        self.checkpointing = Checkpointing(plan, config) if config.checkpoint_dir is not None else None
        self.splits: dict[str, list[Split]] = {s.name: [] for s in plan.sources}
        #: The source stages that wait, unread, for the stages in their ``after`` to end.
        self.waiting: set[str] = set()
        #: The floor of each stage that holds its output back, after the last epoch it completed (Step 2).
        self.floors: dict[str, int] = {}
        self._corrupt_epochs: set[int] = set()
        self._restoring: int | None = None
        #: By qualified split id.
        self.positions: dict[str, Any] = {}
        self.done_splits: set[str] = set()
        #: Broadcast joins whose table has been handed to the actors that join.
        self.broadcast_ready: set[str] = set()
        self._broadcast_blocks: dict[str, list[ray.ObjectRef]] = {}
        self.recoveries = 0
        #: Names this run; a job resumed from a checkpoint keeps the id of the run that wrote it.
        self.job_id = uuid.uuid4().hex
        self.resumed = False
        #: The job's checkpoint says it already ran to its end: this run does nothing.
        self.already_complete = False
        self.stall_warning_s = (
            None
            if config.watermark_stall_warning is None
            else duration_ms(config.watermark_stall_warning, "RunConfig.watermark_stall_warning") / 1000
        )

    # -- the public face, used by Job ----------------------------------------

    def request_stop(self) -> None:
        """Finish the epochs in flight, then end the job without firing the rest."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def metrics_snapshot(self) -> dict[str, Any]:
        """A consistent copy of the metrics, safe to read from any thread."""
        with self._lock:
            return self.metrics.snapshot()

    def run(self) -> None:
        """Run the job to its end. Raises the job's error, if any."""
        side_runners = {tag: SinkRunner(sink) for tag, sink in self.side_sinks.items()}
        runners = {o.name: SinkRunner(self.sinks[o.name]) for o in self.plan.outputs if o.side is None}
        everything = [*runners.values(), *side_runners.values()]
        try:
            started = time.perf_counter()
            first_epoch, replay = self._start_actors()
            self.metrics.startup_seconds = time.perf_counter() - started
            side_schemas = {o.side: o for o in self.plan.outputs if o.side is not None}
            for name, runner in runners.items():
                output = self.plan.output(name)
                runner.start(SinkContext(output.schema, output.upsert_keys, output.bounded, self.job_id, self.resumed))
            for tag, runner in side_runners.items():
                side = side_schemas.get(tag)
                schema, bounded = (side.schema, side.bounded) if side is not None else (None, self.plan.bounded)
                runner.start(SinkContext(schema, None, bounded, self.job_id, self.resumed))
            started = time.perf_counter()
            while not self.already_complete:
                try:
                    self._loop(runners, SideOutputRouter(side_runners), first_epoch, replay)
                    break
                except ActorDiedError as error:
                    if self.checkpointing is None:
                        raise
                    if self.recoveries >= self.config.max_recoveries:
                        raise ActorDiedError(
                            f"the job recovered from its last checkpoint {self.recoveries} times "
                            f"(RunConfig.max_recoveries={self.config.max_recoveries}) and an actor died again: "
                            f"{error}; check the nodes' memory and health (ray status), or raise max_recoveries"
                        ) from error
                    self.recoveries += 1
                    _log.warning(
                        "recovering from the last checkpoint (%d of %d): %s",
                        self.recoveries,
                        self.config.max_recoveries,
                        error,
                    )
                    first_epoch, replay = self._restart_actors()
            for runner in everything:
                runner.finish()
            self.metrics.run_seconds = time.perf_counter() - started
        except BaseException as error:
            for runner in everything:
                runner.fail(error)
            raise
        finally:
            self._kill_actors()

    # -- set-up ----------------------------------------------------------------

    def _stage_names(self) -> list[str]:
        return [s.name for s in self.plan.sources] + [s.name for s in self.plan.stages]

    def _layout(self, stage: str) -> Layout:
        """What an epoch call of ``stage`` returns: a route per out-edge, then its side outputs."""
        plan, config = self.plan, self.config
        routes = []
        for edge in plan.edges_from(stage):
            index = plan.edges.index(edge)
            if edge.exchange == "hash":
                operator = plan.stage(edge.consumer).operator
                routes.append(Route(index, edge.chain, operator, edge.input, config.parallelism, config.num_key_groups))
                continue
            sink = self.sinks[edge.consumer]
            # Each producer of an output writes as writers of its own: a stage has at most `parallelism` actors.
            ordinal = plan.edges_into(edge.consumer).index(edge)
            routes.append(
                Route(
                    index,
                    edge.chain,
                    output=edge.consumer,
                    sink=None if sink.on_driver else sink,
                    writer_offset=ordinal * config.parallelism,
                )
            )
        broadcast = bool(plan.broadcasts_from(stage))
        return Layout(tuple(routes), sides=bool(plan.side_tags(stage)), broadcast=broadcast)

    def _new_trackers(self) -> dict[str, WatermarkTracker]:
        return {s.name: WatermarkTracker(s.event_time, s.source.new_split_idle_timeout_ms) for s in self.plan.sources}

    def _qualify(self, stage: str, split_id: str) -> str:
        return f"{stage}/{split_id}" if self.qualified else split_id

    def _own(self, stage: str, by_split: dict[str, Any]) -> dict[str, Any]:
        """The entries of ``stage``'s splits in a dict keyed by qualified split id, by their own ids."""
        if not self.qualified:
            return dict(by_split)
        prefix = f"{stage}/"
        return {key[len(prefix) :]: value for key, value in by_split.items() if key.startswith(prefix)}

    def stage_watermark(self, stage: str) -> int:
        """A stage's watermark: the smallest of the sources upstream of it, less its delay (see ``plan.delays``)."""
        return self.plan.watermark(stage, self._watermarks(), self.floors)

    def _restart_actors(self) -> tuple[int, list[dict[str, Any]]]:
        """Kill the job's actors and start them again from the last checkpoint.

        Actors placed on a node that is dying die at once, until Ray has
        declared the node dead; starting is retried, with backoff, for a
        while, so that the job moves to the nodes that are alive.
        """
        deadline = time.monotonic() + _RECOVERY_START_TIMEOUT_S
        pause = 0.5
        while True:
            self._kill_actors()
            try:
                return self._start_actors()
            except ActorDiedError as error:
                if time.monotonic() + pause > deadline:
                    raise
                _log.warning("the job's actors died while starting again, retrying in %.1fs: %s", pause, error)
                time.sleep(pause)
                pause = min(2 * pause, 8.0)

    def _recover(self) -> Recovery | None:
        """The checkpoint to resume from, skipping those whose state turns out corrupt (see ``_start_actors``)."""
        assert self.checkpointing is not None
        return self.checkpointing.recover(self._corrupt_epochs)

    def _start_actors(self) -> tuple[int, list[dict[str, Any]]]:
        """Start the actors, restored from the last checkpoint if there is one.

        Returns:
            The first epoch to run, and the logged epochs to replay first.
        """
        while True:
            try:
                return self._start_actors_once()
            except CorruptCheckpointError as error:  # Recovery step 1: fall back to the previous checkpoint
                if self._restoring is None:  # the record itself is damaged or tampered with: refuse it
                    raise
                message = f"skipping checkpoint {self._restoring}, whose state cannot be read: {error}"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                _log.warning("%s", message)
                self._corrupt_epochs.add(self._restoring)
                self._kill_actors()

    def _start_actors_once(self) -> tuple[int, list[dict[str, Any]]]:
        config, plan = self.config, self.plan
        self._restoring = None
        recovery = self._recover() if self.checkpointing is not None else None
        self._restoring = None if recovery is None else recovery.epoch
        now = time.monotonic()
        self._broadcast_blocks = {}
        self.broadcast_ready = set()
        if recovery is not None and recovery.complete:
            _log.warning(
                "the job checkpointed in %s is already complete (its input was read to the end and its last output "
                "committed at epoch %d): it emits nothing more; use a new checkpoint_dir to run it again",
                self.config.checkpoint_dir,
                recovery.epoch,
            )
            self.already_complete, self.job_id, self.resumed = True, recovery.job_id, True
            return recovery.epoch + 1, []
        self.trackers = self._new_trackers()
        self.floors = dict(recovery.floors) if recovery is not None else {}
        # Readers that resume with nothing left say so in their first epoch; until then, the stages after them wait.
        self.waiting = {stage.name for stage in plan.sources if stage.after}
        if recovery is not None:
            # Recovery step 3, checked first: each source can resume at its positions (a topic that lost data).
            for stage in plan.sources:
                positions = self._own(stage.name, recovery.positions)
                done = set(self._own(stage.name, dict.fromkeys(recovery.done)))
                stage.source.check_resume({s: p for s, p in positions.items() if s not in done})
            self.splits = {s.name: recovery.splits.get(s.name, []) for s in plan.sources}
            self.positions, self.done_splits = dict(recovery.positions), set(recovery.done)
            for name, tracker in self.trackers.items():
                clocks = {k: v for k, v in recovery.clocks.items() if k in self._qualified_ids(name)}
                tracker.restore(clocks, recovery.watermarks.get(name, START_OF_TIME_MS), now)
            self.broadcast_ready = set(recovery.broadcast_ready)
            self.job_id, self.resumed = recovery.job_id, True
            _log.info("resuming from checkpoint %d; replaying %d logged epochs", recovery.epoch, len(recovery.replay))
        else:
            self.splits = {s.name: s.source.splits(config.parallelism) for s in plan.sources}
            self.positions, self.done_splits = {}, set()
        num_readers = {
            s.name: max(1, min(config.parallelism, len(self.splits[s.name])))
            if s.source.bounded
            else config.parallelism
            for s in plan.sources
        }
        num_actors = sum(num_readers.values()) + config.parallelism * len(plan.stages)
        available = ray.cluster_resources().get("CPU", 0.0)
        if num_actors * config.actor_cpus > available:
            raise ConfigError(
                f"RunConfig: {num_actors} actors at actor_cpus={config.actor_cpus} need "
                f"{num_actors * config.actor_cpus:g} CPUs but the Ray cluster has {available:g}; "
                "lower actor_cpus or parallelism, or add nodes"
            )
        options = {"num_cpus": config.actor_cpus, "scheduling_strategy": "SPREAD", "max_restarts": 0}
        reader_class = ray.remote(ReaderActor).options(**options)
        self.readers = {}
        for stage in plan.sources:
            shared_source = ray.put(stage.source)  # one copy in the object store for all readers (a table, say)
            self.readers[stage.name] = [
                reader_class.remote(i, stage.name, shared_source, stage.chain, self.layouts[stage.name])
                for i in range(num_readers[stage.name])
            ]
        partition_class = ray.remote(PartitionActor).options(**options)
        self.stage_actors = {
            stage.name: [
                partition_class.remote(stage, p, config.parallelism, config.num_key_groups, self.layouts[stage.name])
                for p in range(config.parallelism)
            ]
            for stage in plan.stages
        }
        ready = [ref for stage in plan.sources for ref in self._assign(stage.name, self.splits[stage.name], 0)]
        ready += [actor.ping.remote() for actors in self.stage_actors.values() for actor in actors]
        try:
            self._get_metadata(ready, timeout=_ACTOR_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as exc:
            raise JobFailedError(
                f"the job's {num_actors} actors did not start within {_ACTOR_START_TIMEOUT_S:g}s; "
                "check that the Ray cluster has room for them (ray status)"
            ) from exc
        if self.checkpointing is None:
            return 1, []
        store = self.checkpointing.store
        if recovery is not None:  # Recovery step 2
            saved = recovery.num_key_groups
            refs = [
                actor.restore.remote(store, recovery.state_files, self._saved_watermark(stage, recovery), saved)
                for stage, actors in self.stage_actors.items()
                for actor in actors
            ]
            refs += [
                actor.restore_broadcast.remote(store, recovery.state_files)
                for join in self.broadcast_ready
                for actor in self._broadcast_holders(join)
            ]
            self._get_metadata(refs)
            return recovery.epoch + 1, recovery.replay
        # Step 0, at the start: checkpoint 0 records the splits as they are now, so a replay reads the same input.
        for stage in plan.sources:
            self.checkpointing.record_splits(0, stage.name, self.splits[stage.name])
        self.checkpointing.commit(0, {}, set(), self._watermarks(), {}, self._clocks(), [], self.job_id, set())
        return 1, []

    def _saved_watermark(self, stage: str, recovery: Recovery) -> int:
        return self.plan.watermark(stage, recovery.watermarks, recovery.floors)

    def _qualified_ids(self, stage: str) -> set[str]:
        return {self._qualify(stage, split.split_id) for split in self.splits[stage]}

    def _watermarks(self) -> dict[str, int]:
        return {name: tracker.current for name, tracker in self.trackers.items()}

    def _clocks(self) -> dict[str, Any]:
        return {k: v for tracker in self.trackers.values() for k, v in tracker.clocks().items()}

    def _broadcast_holders(self, join: str) -> list[Any]:
        """The actors whose chains run broadcast join ``join``."""

        def runs(chains: list[tuple[Any, ...]]) -> bool:
            return any(isinstance(op, BroadcastJoinOp) and op.name == join for chain in chains for op in chain)

        holders: list[Any] = []
        for stage in self.plan.sources:
            if runs([stage.chain, *(e.chain for e in self.plan.edges_from(stage.name))]):
                holders += self.readers[stage.name]
        for keyed in self.plan.stages:
            if runs([keyed.chain, *(e.chain for e in self.plan.edges_from(keyed.name))]):
                holders += self.stage_actors[keyed.name]
        return holders

    def _assign(self, stage: str, splits: list[Split], first: int) -> list[ray.ObjectRef]:
        """Deal a source stage's splits round-robin to its readers, at their known positions (or from their start).

        Splits whose smallest event time is known are dealt in event-time
        order, so that readers, each reading its splits one after another,
        move through history together and the watermark advances smoothly.

        Args:
            splits: The splits to hand out.
            first: The index of ``splits[0]`` among the stage's splits, so that new splits continue the deal.
        """
        readers = self.readers[stage]
        ordered = sorted(splits, key=lambda s: (s.min_event_time_ms is None, s.min_event_time_ms or 0))
        assignments: list[list[Any]] = [[] for _ in readers]
        unread = [s for s in ordered if self._qualify(stage, s.split_id) not in self.done_splits]
        for i, split in enumerate(unread):
            position = self.positions.get(self._qualify(stage, split.split_id))
            assignments[(first + i) % len(readers)].append((split, position))
        now = time.monotonic()
        for split in unread:
            qualified = self._qualify(stage, split.split_id)
            self.trackers[stage].add_split(qualified, now, split.min_event_time_ms, pending=stage in self.waiting)
        return [reader.assign.remote(chunk) for reader, chunk in zip(readers, assignments, strict=True) if chunk]

    def _start_waiting(self, active: set[tuple[str, int]], now: float) -> None:
        """Start the source stages whose ``after`` stages have all ended: they read from the next epoch on."""
        running = {stage for stage, _ in active}
        for stage in sorted(self.waiting):
            if running.isdisjoint(self.plan.source_stage(stage).after):
                self.waiting.discard(stage)
                self.trackers[stage].start(now)

    def _discover_splits(self, epoch: int) -> None:
        """Pick up splits that appeared since the job started (new partitions of a topic), before ``epoch``."""
        for stage in self.plan.sources:
            source = stage.source
            if source.bounded or not source.discovers_splits:
                continue
            if time.monotonic() - self._last_discovery[stage.name] < source.discovery_interval_s:
                continue
            self._last_discovery[stage.name] = time.monotonic()
            known = {split.split_id for split in self.splits[stage.name]}
            try:
                listed = source.splits(self.config.parallelism)
            except RaystreamError as error:
                # Discovery is best effort: the splits already assigned go on (and report a lost broker or store
                # themselves); new ones are looked for again at the next interval.
                _log.warning("%s: looking for new splits failed, will retry: %s", source.name, error)
                continue
            new = [s for s in listed if s.split_id not in known]
            if new:
                if self.checkpointing is not None:  # Step 0, for the splits found now
                    self.checkpointing.record_splits(epoch, stage.name, new)
                first = len(self.splits[stage.name])
                self.splits[stage.name] = [*self.splits[stage.name], *new]
                self._get_metadata(self._assign(stage.name, new, first))

    def _kill_actors(self) -> None:
        actors = [a for group in [*self.readers.values(), *self.stage_actors.values()] for a in group]
        for actor in actors:
            ray.kill(actor, no_restart=True)

    # -- the epoch loop --------------------------------------------------------

    def _edge_watermarks(self, producer: str, watermarks: dict[str, int]) -> dict[int, int]:
        """For each out-edge of ``producer``, its consumer's watermark (from ``watermarks`` by stage)."""
        return {
            self.plan.edges.index(edge): watermarks.get(edge.consumer, START_OF_TIME_MS)
            for edge in self.plan.edges_from(producer)
        }

    def _loop(
        self,
        runners: dict[str, SinkRunner],
        side_router: SideOutputRouter,
        epoch: int,
        replay: list[dict[str, Any]],
    ) -> None:
        config, plan = self.config, self.plan
        active = {(stage, i) for stage, readers in self.readers.items() for i in range(len(readers))}
        in_flight: deque[_EpochInFlight] = deque()
        to_replay = deque(replay)
        idle_sleep = _IDLE_SLEEP_S
        unsaved = False  # whether the last epoch that ran ended without a checkpoint
        while active and not self._stop.is_set():
            self._discover_splits(epoch)
            loop_started = time.perf_counter()
            blocked_before = self._blocked_seconds
            logged = to_replay.popleft() if to_replay else None
            before = logged["watermarks_before"] if logged else self._watermarks()
            floors = logged["floors"] if logged else dict(self.floors)  # fixed for the epoch, logged with it
            before_by_stage = {name: plan.watermark(name, before, floors) for name in self._stage_names()}
            calls = self._read(epoch, active, logged, before_by_stage)
            # While the readers read, complete the epochs before: their stages ran during the previous read.
            while in_flight and len(in_flight) >= config.max_in_flight_epochs - 1:
                self._complete(in_flight.popleft(), runners, side_router)
            # Step 2: the watermarks, from the readers' metadata.
            keys = list(calls)
            reader_metas = self._get_metadata([calls[key][0] for key in keys])
            now = time.monotonic()
            rows, moved, read = self._observe(reader_metas, active, now)
            sources_done = {s.name for s in plan.sources if not any(stage == s.name for stage, _ in active)}
            end_of_input = not active
            self._start_waiting(active, now)
            if logged is not None:
                for name, value in logged["watermarks"].items():
                    self.trackers[name].current = value
            else:
                for name, tracker in self.trackers.items():
                    tracker.advance(now, name in sources_done)
                self._warn_if_stalled(now)
            watermarks = self._watermarks()
            checkpoint_due = (
                self.checkpointing is not None
                and self._broadcasts_settled()
                and self.checkpointing.due(epoch, end_of_input)
            )
            # A floor that rose since the epoch began (an epoch before it completed) is news too: it may fire windows.
            news = moved or end_of_input or watermarks != before or floors != self.floors
            idle = logged is None and rows == 0 and not news
            if idle and not (checkpoint_due and unsaved):
                # An idle epoch (step 2): nothing to run, log or commit; its number goes to the next one.
                # Once a checkpoint falls due, one empty epoch saves what the epochs before it left unsaved.
                while in_flight:
                    self._complete(in_flight.popleft(), runners, side_router)
                with self._lock:
                    self._record_splits(reader_metas)
                self.metrics.coordinator_seconds += (time.perf_counter() - loop_started) - (
                    self._blocked_seconds - blocked_before
                )
                time.sleep(idle_sleep)
                idle_sleep = min(2 * idle_sleep, _MAX_IDLE_SLEEP_S)
                continue
            checkpoint = None
            if self.checkpointing is not None:
                if logged is None:  # Step 3: log what this epoch read before it makes output
                    self.checkpointing.log_epoch(
                        epoch, {"watermarks_before": before, "watermarks": watermarks, "floors": floors, "splits": read}
                    )
                if checkpoint_due:
                    checkpoint = _Checkpoint(
                        dict(self.positions), set(self.done_splits), watermarks, floors, self._clocks(), []
                    )
            # The refs each actor returned, by producer stage, in actor order.
            returned: dict[str, list[list[ray.ObjectRef]]] = {}
            for key in keys:
                returned.setdefault(key[0], []).append(calls[key])
            side_refs = [
                self.layouts[stage].side_ref(refs)
                for stage, groups in returned.items()
                if self.layouts[stage].sides
                for refs in groups
            ]
            self._gather_broadcasts(returned, sources_done)
            stage_watermarks = {keyed.name: plan.watermark(keyed.name, watermarks, floors) for keyed in plan.stages}
            meta_refs, stage_side_refs = self._process(
                epoch, returned, stage_watermarks, before_by_stage, sources_done, checkpoint
            )
            side_refs += stage_side_refs
            output_refs = self._output_refs(returned)
            unsaved = checkpoint is None
            in_flight.append(
                _EpochInFlight(
                    epoch,
                    meta_refs,
                    output_refs,
                    side_refs,
                    reader_metas,
                    loop_started,
                    checkpoint,
                    end_of_input,
                    stage_watermarks,
                )
            )
            with self._lock:
                self.metrics.rows_read += rows
                low = min(watermarks.values()) if watermarks else START_OF_TIME_MS
                self.metrics.watermark_ms = None if low <= START_OF_TIME_MS else low
                self.metrics.watermark_held_by = next(
                    (t.held_by for t in self.trackers.values() if t.held_by is not None and t.current == low), None
                )
            while in_flight and (len(in_flight) >= config.max_in_flight_epochs or end_of_input):
                self._complete(in_flight.popleft(), runners, side_router)
            epoch += 1
            self.metrics.coordinator_seconds += (time.perf_counter() - loop_started) - (
                self._blocked_seconds - blocked_before
            )
            if not plan.bounded and rows == 0:
                time.sleep(idle_sleep)
                idle_sleep = min(2 * idle_sleep, _MAX_IDLE_SLEEP_S)
            else:
                idle_sleep = _IDLE_SLEEP_S
        while in_flight:
            self._complete(in_flight.popleft(), runners, side_router)

    def _read(
        self,
        epoch: int,
        active: set[tuple[str, int]],
        logged: dict[str, Any] | None,
        before_by_stage: dict[str, int],
    ) -> dict[tuple[str, int], list[ray.ObjectRef]]:
        """Step 1: start the epoch call of every active reader (Recovery step 4: a logged epoch's exact reads)."""
        calls: dict[tuple[str, int], list[ray.ObjectRef]] = {}
        for stage, i in sorted(active):
            if logged is None and stage in self.waiting:
                continue  # a table before the streams it joins, a hybrid's history before live: read to their end
            source = self.plan.source_stage(stage).source
            calls[(stage, i)] = _refs(
                self.readers[stage][i]
                .run_epoch.options(num_returns=self.layouts[stage].num_returns)
                .remote(
                    epoch,
                    self.config.max_batch_rows or source.batch_rows,
                    self._edge_watermarks(stage, before_by_stage),
                    self._own(stage, logged["splits"]) if logged else None,
                )
            )
        return calls

    def _observe(
        self, reader_metas: list[dict[str, Any]], active: set[tuple[str, int]], now: float
    ) -> tuple[int, bool, dict[str, dict[str, Any]]]:
        """Step 2, first half: take in what the readers read (positions, event times, ended splits and readers).

        Returns:
            The rows read; whether anything happened that an idle epoch would not show (a position moved, a
            split ended, a dead letter needs delivering); and each split's position and budget, for the log.
        """
        rows, moved = 0, False
        read: dict[str, dict[str, Any]] = {}
        for meta in reader_metas:
            stage = meta["stage"]
            rows += meta["rows_in"]
            moved = moved or meta["dead_letters"] > 0 or meta["null_time_rows"] > 0
            for split_id, progress in meta["splits"].items():
                qualified = self._qualify(stage, split_id)
                self.trackers[stage].observe(qualified, progress, now)
                read[qualified] = {"position": progress["position"], "budget": progress["budget"]}
                ended = progress["done"] and qualified not in self.done_splits
                moved = moved or ended or self.positions.get(qualified) != progress["position"]
                self.positions[qualified] = progress["position"]
                if progress["done"]:
                    self.done_splits.add(qualified)
            if meta["done"]:
                active.discard((stage, meta["index"]))
        return rows, moved, read

    def _process(
        self,
        epoch: int,
        returned: dict[str, list[list[ray.ObjectRef]]],
        stage_watermarks: dict[str, int],
        before_by_stage: dict[str, int],
        sources_done: set[str],
        checkpoint: _Checkpoint | None,
    ) -> tuple[list[ray.ObjectRef], list[ray.ObjectRef]]:
        """Steps 4 and 5: start each keyed stage's epoch calls (inputs first) and, when due, its snapshot.

        ``returned`` holds the refs each actor returned, by producer stage; the keyed stages' are added.

        Returns:
            The keyed stages' metadata refs, and their side-output refs.
        """
        plan = self.plan
        meta_refs: list[ray.ObjectRef] = []
        side_refs: list[ray.ObjectRef] = []
        for keyed in plan.stages:  # Step 4: the keyed stages process the epoch, without waiting
            watermark = stage_watermarks[keyed.name]
            edges_in = plan.edges_into(keyed.name)
            num_inputs = keyed.operator.num_inputs
            stage_end = all(s in sources_done for s in plan.upstream[keyed.name])
            stage_calls = []
            for p, actor in enumerate(self.stage_actors[keyed.name]):
                per_input: list[list[ray.ObjectRef]] = [[] for _ in range(num_inputs)]
                for edge in edges_in:
                    index = plan.edges.index(edge)
                    layout = self.layouts[edge.producer]
                    for refs in returned.get(edge.producer, []):
                        per_input[edge.input].append(layout.parts(refs, index)[p])
                stage_calls.append(
                    _refs(
                        actor.process.options(num_returns=self.layouts[keyed.name].num_returns).remote(
                            epoch,
                            watermark,
                            stage_end,
                            self._edge_watermarks(keyed.name, before_by_stage),
                            tuple(len(refs) for refs in per_input),
                            *[ref for refs in per_input for ref in refs],
                        )
                    )
                )
            returned[keyed.name] = stage_calls
            meta_refs += [c[0] for c in stage_calls]
            if self.layouts[keyed.name].sides:
                side_refs += [self.layouts[keyed.name].side_ref(c) for c in stage_calls]
            if checkpoint is not None:  # Step 5; calls run in order, so this sees the state right after the epoch
                assert self.checkpointing is not None
                store = self.checkpointing.store
                checkpoint.snapshot_refs += [a.snapshot.remote(epoch, store) for a in self.stage_actors[keyed.name]]
        if checkpoint is not None:
            assert self.checkpointing is not None
            for join in sorted(self.broadcast_ready):  # Step 5: the broadcast tables are state too, one copy each
                holder = self._broadcast_holders(join)[0]
                checkpoint.snapshot_refs.append(holder.snapshot_broadcast.remote(epoch, self.checkpointing.store, join))
        return meta_refs, side_refs

    def _output_refs(self, returned: dict[str, list[list[ray.ObjectRef]]]) -> dict[str, list[ray.ObjectRef]]:
        """For each output whose rows come to the driver, the refs of this epoch's rows."""
        output_refs: dict[str, list[ray.ObjectRef]] = {}
        for output in self.plan.outputs:
            for edge in self.plan.edges_into(output.name):
                index = self.plan.edges.index(edge)
                for refs in returned.get(edge.producer, []):
                    output_refs.setdefault(output.name, []).extend(self.layouts[edge.producer].parts(refs, index))
        return output_refs

    def _broadcasts_settled(self) -> bool:
        """Whether every broadcast table has been read and handed over (no checkpoint is taken before)."""
        return all(e.consumer in self.broadcast_ready for e in self.plan.edges if e.exchange == "broadcast")

    def _gather_broadcasts(self, returned: dict[str, list[list[ray.ObjectRef]]], sources_done: set[str]) -> None:
        """Collect the blocks of broadcast tables; once a table's source has ended, hand it to its joins."""
        for stage in self.plan.sources:
            for join in self.plan.broadcasts_from(stage.name):
                if join in self.broadcast_ready:
                    continue
                layout = self.layouts[stage.name]
                blocks = self._broadcast_blocks.setdefault(join, [])
                blocks += [layout.table_ref(refs) for refs in returned.get(stage.name, [])]
                if stage.name in sources_done:
                    holders = self._broadcast_holders(join)
                    self._get_metadata([actor.set_broadcast.remote(join, blocks) for actor in holders])
                    self.broadcast_ready.add(join)
                    del self._broadcast_blocks[join]

    def _warn_if_stalled(self, now: float) -> None:
        """Say which split holds the watermark back, once it has done so for ``watermark_stall_warning``."""
        if self.stall_warning_s is None:
            return
        stalled = [row for tracker in self.trackers.values() for row in tracker.stalled(now, self.stall_warning_s)]
        for split_id, held_s, value in stalled:
            seen = "has produced no event yet" if value is None else f"is at {value} ms"
            _log.warning(
                "split %r has held the watermark back for %.0fs: it %s while the other splits are ahead, so no "
                "window can fire; if it is idle (a partition that receives nothing), give with_watermark(..., "
                "idle_timeout=...), or check its producer",
                split_id,
                held_s,
                seen,
            )

    def _record_splits(self, reader_metas: list[dict[str, Any]]) -> None:
        """Per-split metrics from the readers' progress (called under the lock)."""
        metrics = self.metrics
        for meta in reader_metas:
            for split_id, progress in meta["splits"].items():
                qualified = self._qualify(meta["stage"], split_id)
                entry = metrics.splits.setdefault(qualified, {"rows": 0})
                entry["rows"] += progress["rows"]
                entry.update({k: v for k, v in progress.items() if k not in ("rows", "max_event_time_ms")})
                entry["watermark_ms"] = self.trackers[meta["stage"]].split_watermark(qualified)
                seconds = max(time.time() - metrics.started_at, 1e-9)
                entry["rows_per_second"] = entry["rows"] / seconds

    def _complete(self, epoch: _EpochInFlight, runners: dict[str, SinkRunner], side_router: SideOutputRouter) -> None:
        metas = self._get_metadata(epoch.meta_refs) if epoch.meta_refs else []
        everyone = [*epoch.reader_metas, *metas]
        state_files = []
        if epoch.checkpoint is not None:  # Step 5: the state snapshot is durable
            state_files = [f for files in self._get_metadata(epoch.checkpoint.snapshot_refs) for f in files]
        # Step 6: commit the sinks (idempotently: a replayed epoch replaces its own output).
        written: dict[str, int] = {}
        for name, runner in runners.items():
            sent = [meta["outputs"][name] for meta in everyone if name in meta["outputs"]]
            results = [result for entry in sent for result in entry["results"]]
            on_driver = runner.complete_epoch(epoch.epoch, epoch.output_refs.get(name, []), results)
            written[name] = on_driver or sum(entry["rows"] for entry in sent)
        side_router.complete_epoch(epoch.epoch, epoch.side_refs)
        if epoch.checkpoint is not None:  # Step 7: commits/<epoch>, last
            assert self.checkpointing is not None
            point = epoch.checkpoint
            self.checkpointing.commit(
                epoch.epoch,
                point.positions,
                point.done,
                point.watermarks,
                point.floors,
                point.clocks,
                state_files,
                self.job_id,
                self.broadcast_ready,
                epoch.end_of_input,
            )
        with self._lock:
            metrics = self.metrics
            metrics.epochs_completed += 1
            metrics.rows_written += sum(written.values())
            for name, rows in written.items():
                counts = metrics.outputs.setdefault(name, {"rows_written": 0})
                counts["rows_written"] += rows
            metrics.late_rows += sum(m["late_count"] for m in everyone)
            metrics.last_epoch_seconds = time.perf_counter() - epoch.started
            metrics.null_time_rows += sum(m["null_time_rows"] for m in epoch.reader_metas)
            self._record_splits(epoch.reader_metas)
            for meta in everyone:
                metrics.actor_nodes[meta["actor"]] = meta["node_id"]
            metrics.dead_letters += sum(m["dead_letters"] for m in epoch.reader_metas)
            for stage in self.plan.stages:
                if stage.operator.holds_output:  # Step 2's floor, for the epochs after this one
                    holds = [m["output_hold_ms"] for m in metas if m.get("stage") == stage.name]
                    floor = min([epoch.stage_watermarks[stage.name], *(h for h in holds if h is not None)])
                    self.floors[stage.name] = max(self.floors.get(stage.name, START_OF_TIME_MS), floor)
                rows = sum(m["state_rows"] for m in metas if m.get("stage") == stage.name)
                metrics.state_rows[stage.name] = rows
                metrics.peak_state_rows[stage.name] = max(rows, metrics.peak_state_rows.get(stage.name, 0))
                sides = [m["state_by_input"] for m in metas if m.get("stage") == stage.name and m["state_by_input"]]
                if sides:
                    metrics.state_by_input[stage.name] = _merged_state_by_input(sides)
            for meta in everyone:
                layer = meta["stage"] if meta["kind"] == "partition" else "readers"
                metrics.busy_seconds[layer] = metrics.busy_seconds.get(layer, 0.0) + meta["seconds"]
                metrics.cpu_seconds[layer] = metrics.cpu_seconds.get(layer, 0.0) + meta["cpu_seconds"]
            metrics.splits_total = sum(len(splits) for splits in self.splits.values())
            metrics.splits_done = len(self.done_splits)
            positions = {split_id: entry["position"] for split_id, entry in metrics.splits.items()}
        # This epoch's output is committed: the sources may now publish positions, for information.
        for source_stage in self.plan.sources:
            source_stage.source.on_epoch_complete(self._own(source_stage.name, positions))

    def _get_metadata(self, refs: Sequence[ray.ObjectRef], timeout: float | None = None) -> list[Any]:
        """Fetch actor metadata (never rows), turning actor errors into clear job errors."""
        waited = time.perf_counter()
        try:
            return ray.get(list(refs), timeout=timeout)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RaystreamError):
                raise cause from None
            raise JobFailedError(
                f"a raystream actor failed: {exc}; unless the traceback shows your own code, this is a raystream "
                "bug: please report it with this message"
            ) from exc
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            raise ActorDiedError(
                f"a raystream actor died: {exc}; give the job a RunConfig(checkpoint_dir=...) to recover by itself, "
                "and check the node's memory and health (ray status)"
            ) from exc
        finally:
            self._blocked_seconds += time.perf_counter() - waited
