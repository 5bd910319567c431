"""The coordinator: drives epochs, computes watermarks, completes epochs in order.

It runs on the driver, in the thread of a :class:`~raystream.Job`. It moves
object refs and small metadata dicts only: every ``ray.get`` it makes goes
through :meth:`Coordinator._get_metadata`, on the metadata refs that actors
return first. Rows flow from reader actors to partition actors (and to
distributed sinks) through the Ray object store without passing here.

One epoch:

1. Every reader with splits left reads up to ``max_batch_rows`` rows (by
   default the source's ``batch_rows``), runs the fused stateless chain and,
   before a keyed stage, pre-aggregates and hash-partitions its output; it
   returns metadata plus one ref per partition.
2. The coordinator reads the readers' metadata (positions, largest event
   time per split) and computes the watermark; once every split is done (a
   bounded source read to its end, a closed socket) it is +infinity. With
   a ``checkpoint_dir`` it now logs what the epoch read (see
   :mod:`raystream.runtime.checkpointing` for the whole protocol).
3. It hands the partition refs of each keyed stage to that stage's actors,
   with the watermark, without waiting for them.
4. Up to ``max_in_flight_epochs`` epochs are in flight; the oldest is then
   completed: its metadata is read, the state snapshot (if one is due) is
   durable, the sink makes the output visible, and the checkpoint commits.
   Side outputs (late rows, dead letters) are delivered then too. An epoch
   is completed while the readers read the next one (step 1), so that the
   readers do not wait for the driver's commit.

An epoch in which no reader read a row or moved a position, and the
watermark stayed where it was, is dropped: no stage runs, nothing is logged
or committed, and its number is used by the next epoch. An idle job writes
nothing.

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
from raystream.runtime.actors import Downstream, PartitionActor, ReaderActor
from raystream.runtime.checkpoint import CorruptCheckpointError
from raystream.runtime.checkpointing import Checkpointing, Recovery
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
    watermark_ms: int
    clocks: dict[str, Any]
    snapshot_refs: list[ray.ObjectRef]


@dataclass
class _EpochInFlight:
    epoch: int
    meta_refs: list[ray.ObjectRef]
    output_refs: list[ray.ObjectRef]
    side_refs: list[ray.ObjectRef]
    reader_metas: list[dict[str, Any]]
    started: float
    checkpoint: _Checkpoint | None = None
    #: The epoch that ends a bounded input: its checkpoint records the job as complete.
    end_of_input: bool = False


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
    peak_state_rows: dict[str, int] = field(default_factory=dict)
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
            "peak_state_rows": dict(self.peak_state_rows),
            "busy_seconds": dict(self.busy_seconds),
            "cpu_seconds": dict(self.cpu_seconds),
            "actor_nodes": dict(self.actor_nodes),
        }


def _refs(result: Any) -> list[ray.ObjectRef]:
    return [result] if isinstance(result, ray.ObjectRef) else list(result)


class Coordinator:
    """Runs one physical plan into one sink until the source ends or ``stop`` is called."""

    def __init__(self, plan: PhysicalPlan, sink: Sink, config: RunConfig) -> None:
        self.plan = plan
        self.sink = sink
        self.config = config
        self.metrics = Metrics()
        self.readers: list[Any] = []
        self.stage_actors: list[list[Any]] = []
        self.watermarks = self._new_tracker()
        # Each side output (late rows, dead letters) is the job's output, or kept for the Job to show.
        self.side_sinks: dict[str, Sink] = {
            tag: sink if tag == plan.output_side else MemorySink() for tag in plan.side_outputs
        }
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._blocked_seconds = 0.0
        self._last_discovery = time.monotonic()
        self.checkpointing = Checkpointing(plan, config) if config.checkpoint_dir is not None else None
        self.splits: list[Split] = []
        self._corrupt_epochs: set[int] = set()
        self._restoring: int | None = None
        self.positions: dict[str, Any] = {}
        self.done_splits: set[str] = set()
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
        runners = [SinkRunner(self.sink)] if self.plan.output_side is None else []
        runners += side_runners.values()
        try:
            started = time.perf_counter()
            first_epoch, replay = self._start_actors()
            self.metrics.startup_seconds = time.perf_counter() - started
            for runner in runners:
                upsert = self.plan.upsert_keys if runner.sink is self.sink else None
                runner.start(
                    SinkContext(self.plan.output_schema, upsert, self.plan.source.bounded, self.job_id, self.resumed)
                )
            started = time.perf_counter()
            main = runners[0] if self.plan.output_side is None else None
            while not self.already_complete:
                try:
                    self._loop(main, SideOutputRouter(side_runners), first_epoch, replay)
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
            for runner in runners:
                runner.finish()
            self.metrics.run_seconds = time.perf_counter() - started
        except BaseException as error:
            for runner in runners:
                runner.fail(error)
            raise
        finally:
            self._kill_actors()

    # -- set-up ----------------------------------------------------------------

    def _downstream(self, stage_index: int) -> Downstream:
        """Where the output of layer ``stage_index`` goes (-1: the readers)."""
        stages = self.plan.stages
        if stage_index + 1 < len(stages):
            return Downstream(
                operator=stages[stage_index + 1].operator,
                num_partitions=self.config.parallelism,
                num_key_groups=self.config.num_key_groups,
            )
        if self.plan.output_side is not None:
            return Downstream(discard=True)
        return Downstream(sink=None if self.sink.on_driver else self.sink)

    def _side_slot(self, stage_index: int) -> bool:
        """Whether layer ``stage_index`` (-1: the readers) returns side outputs.

        Readers return the source's dead letters; any layer returns the late
        rows of its own window and of the window it feeds.
        """
        stages = self.plan.stages
        own = stage_index >= 0 and stages[stage_index].operator.late_side_output
        feeding = stage_index + 1 < len(stages) and stages[stage_index + 1].operator.late_side_output
        dead_letters = stage_index == -1 and self.plan.has_dead_letters
        return own or feeding or dead_letters

    def _num_returns(self, stage_index: int) -> int:
        return 1 + self._downstream(stage_index).num_outputs + int(self._side_slot(stage_index))

    def _new_tracker(self) -> WatermarkTracker:
        return WatermarkTracker(self.plan.event_time, self.plan.source.new_split_idle_timeout_ms)

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
            except CorruptCheckpointError as error:  # recovery step 1: fall back to the previous checkpoint
                if self._restoring is None:  # the record itself is damaged or tampered with: refuse it
                    raise
                message = f"skipping checkpoint {self._restoring}, whose state cannot be read: {error}"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                _log.warning("%s", message)
                self._corrupt_epochs.add(self._restoring)
                self._kill_actors()

    def _start_actors_once(self) -> tuple[int, list[dict[str, Any]]]:
        config = self.config
        source = self.plan.source
        self._restoring = None
        recovery = self._recover() if self.checkpointing is not None else None
        self._restoring = None if recovery is None else recovery.epoch
        now = time.monotonic()
        if recovery is not None and recovery.complete:
            _log.warning(
                "the job checkpointed in %s is already complete (its input was read to the end and its last output "
                "committed at epoch %d): it emits nothing more; use a new checkpoint_dir to run it again",
                self.config.checkpoint_dir,
                recovery.epoch,
            )
            self.already_complete, self.job_id, self.resumed = True, recovery.job_id, True
            return recovery.epoch + 1, []
        if recovery is not None:
            # Recovery step 3, checked first: the source can resume at the positions (a topic that lost data).
            source.check_resume({s: p for s, p in recovery.positions.items() if s not in recovery.done})
            self.splits, self.positions, self.done_splits = (
                recovery.splits,
                dict(recovery.positions),
                set(recovery.done),
            )
            self.watermarks = self._new_tracker()
            self.watermarks.restore(recovery.clocks, recovery.watermark_ms, now)
            self.job_id, self.resumed = recovery.job_id, True
            _log.info("resuming from checkpoint %d; replaying %d logged epochs", recovery.epoch, len(recovery.replay))
        else:
            self.splits, self.positions, self.done_splits = source.splits(config.parallelism), {}, set()
            self.watermarks = self._new_tracker()
        splits = self.splits
        num_readers = max(1, min(config.parallelism, len(splits))) if source.bounded else config.parallelism
        num_actors = num_readers + config.parallelism * len(self.plan.stages)
        available = ray.cluster_resources().get("CPU", 0.0)
        if num_actors * config.actor_cpus > available:
            raise ConfigError(
                f"RunConfig: {num_actors} actors at actor_cpus={config.actor_cpus} need "
                f"{num_actors * config.actor_cpus:g} CPUs but the Ray cluster has {available:g}; "
                "lower actor_cpus or parallelism, or add nodes"
            )
        options = {"num_cpus": config.actor_cpus, "scheduling_strategy": "SPREAD", "max_restarts": 0}
        reader_class = ray.remote(ReaderActor).options(**options)
        shared_source = ray.put(source)  # one copy in the object store for all readers (an in-memory table, say)
        self.readers = [
            reader_class.remote(i, shared_source, self.plan.reader_chain, self._downstream(-1), self._side_slot(-1))
            for i in range(num_readers)
        ]
        partition_class = ray.remote(PartitionActor).options(**options)
        self.stage_actors = [
            [
                partition_class.remote(
                    stage, p, config.parallelism, config.num_key_groups, self._downstream(s), self._side_slot(s)
                )
                for p in range(config.parallelism)
            ]
            for s, stage in enumerate(self.plan.stages)
        ]
        ready = self._assign(splits, first=0)
        ready += [actor.ping.remote() for layer in self.stage_actors for actor in layer]
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
        if recovery is not None:  # recovery step 2
            saved = recovery.num_key_groups
            self._get_metadata(
                [
                    actor.restore.remote(store, recovery.state_files, recovery.watermark_ms, saved)
                    for layer in self.stage_actors
                    for actor in layer
                ]
            )
            return recovery.epoch + 1, recovery.replay
        # Checkpoint 0: the splits as they are now (protocol step 0), so a replay reads the same input.
        self.checkpointing.record_splits(0, splits)
        self.checkpointing.commit(0, {}, set(), self.watermarks.current, self.watermarks.clocks(), [], self.job_id)
        return 1, []

    def _assign(self, splits: list[Split], first: int) -> list[ray.ObjectRef]:
        """Deal splits round-robin to the readers, at their known positions (or from their start).

        Splits whose smallest event time is known are dealt in event-time
        order, so that readers, each reading its splits one after another,
        move through history together and the watermark advances smoothly.

        Args:
            splits: The splits to hand out.
            first: The index of ``splits[0]`` in ``self.splits``, so that new splits continue the deal.
        """
        ordered = sorted(splits, key=lambda s: (s.phase, s.min_event_time_ms is None, s.min_event_time_ms or 0))
        assignments: list[list[Any]] = [[] for _ in self.readers]
        unread = [split for split in ordered if split.split_id not in self.done_splits]  # a checkpoint's done splits
        for i, split in enumerate(unread):
            position = self.positions.get(split.split_id)
            assignments[(first + i) % len(self.readers)].append((split, position))
        now = time.monotonic()
        phase = self._phase()
        for split in unread:
            self.watermarks.add_split(split.split_id, now, split.min_event_time_ms, pending=split.phase > phase)
        return [reader.assign.remote(chunk) for reader, chunk in zip(self.readers, assignments, strict=True) if chunk]

    def _phase(self) -> int:
        """The phase being read: the earliest one with a split not done (see ``Split.phase``)."""
        return min((s.phase for s in self.splits if s.split_id not in self.done_splits), default=0)

    def _discover_splits(self, epoch: int) -> None:
        """Pick up splits that appeared since the job started (new partitions of a topic), before ``epoch``."""
        source = self.plan.source
        if source.bounded or not source.discovers_splits:
            return
        if time.monotonic() - self._last_discovery < source.discovery_interval_s:
            return
        self._last_discovery = time.monotonic()
        known = {split.split_id for split in self.splits}
        try:
            listed = source.splits(self.config.parallelism)
        except RaystreamError as error:
            # Discovery is best effort: the splits already assigned go on (and report a lost broker or store
            # themselves); new ones are looked for again at the next interval.
            _log.warning("%s: looking for new splits failed, will retry: %s", source.name, error)
            return
        new = [s for s in listed if s.split_id not in known]
        if new:
            if self.checkpointing is not None:  # protocol step 0, for the splits found now
                self.checkpointing.record_splits(epoch, new)
            first = len(self.splits)
            self.splits = [*self.splits, *new]
            self._get_metadata(self._assign(new, first))

    def _kill_actors(self) -> None:
        for actor in [*self.readers, *(a for layer in self.stage_actors for a in layer)]:
            ray.kill(actor, no_restart=True)

    # -- the epoch loop --------------------------------------------------------

    def _loop(
        self, runner: SinkRunner | None, side_router: SideOutputRouter, epoch: int, replay: list[dict[str, Any]]
    ) -> None:
        config = self.config
        bounded = self.plan.source.bounded
        active = list(range(len(self.readers)))
        in_flight: deque[_EpochInFlight] = deque()
        to_replay = deque(replay)
        idle_sleep = _IDLE_SLEEP_S
        batch_rows = config.max_batch_rows or self.plan.source.batch_rows
        unsaved = False  # whether the last epoch that ran ended without a checkpoint
        while active and not self._stop.is_set():
            self._discover_splits(epoch)
            loop_started = time.perf_counter()
            blocked_before = self._blocked_seconds
            logged = to_replay.popleft() if to_replay else None
            previous_watermark = logged["watermark_before"] if logged else self.watermarks.current
            phase = self._phase()
            calls = {
                i: _refs(
                    self.readers[i]
                    .run_epoch.options(num_returns=self._num_returns(-1))
                    .remote(epoch, batch_rows, previous_watermark, phase, logged["splits"] if logged else None)
                )
                for i in active
            }
            # While the readers read, complete the epochs before: their stages ran during the previous read.
            while in_flight and len(in_flight) >= config.max_in_flight_epochs - 1:
                self._complete(in_flight.popleft(), runner, side_router)
            reader_metas = self._get_metadata([calls[i][0] for i in active])
            now = time.monotonic()
            rows = 0
            # Whether anything happened that an idle epoch would not show: a position moved, a split ended,
            # a dead letter needs delivering.
            moved = False
            read: dict[str, dict[str, Any]] = {}
            for meta in reader_metas:
                rows += meta["rows_in"]
                moved = moved or meta["dead_letters"] > 0 or meta["null_time_rows"] > 0
                for split_id, progress in meta["splits"].items():
                    self.watermarks.observe(split_id, progress, now)
                    read[split_id] = {"position": progress["position"], "budget": progress["budget"]}
                    ended = progress["done"] and split_id not in self.done_splits
                    moved = moved or ended or self.positions.get(split_id) != progress["position"]
                    self.positions[split_id] = progress["position"]
                    if progress["done"]:
                        self.done_splits.add(split_id)
                if meta["done"]:
                    active.remove(meta["index"])
            end_of_input = not active
            if self._phase() > phase:  # the next phase's splits start now: only from now may they go idle
                self.watermarks.activate([s.split_id for s in self.splits if s.phase == self._phase()], now)
            if logged is not None:
                watermark = self.watermarks.current = logged["watermark"]
            else:
                watermark = self.watermarks.advance(now, end_of_input)
                self._warn_if_stalled(now)
            checkpoint_due = self.checkpointing is not None and self.checkpointing.due(epoch, end_of_input)
            idle = logged is None and rows == 0 and not moved and not end_of_input and watermark == previous_watermark
            if idle and not (checkpoint_due and unsaved):
                # An idle epoch (protocol step 1): nothing to run, log or commit; its number goes to the next one.
                # Once a checkpoint falls due, one empty epoch saves what the epochs before it left unsaved.
                while in_flight:
                    self._complete(in_flight.popleft(), runner, side_router)
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
                if logged is None:  # step 1 of the protocol: log what this epoch read before it makes output
                    self.checkpointing.log_epoch(
                        epoch, {"watermark_before": previous_watermark, "watermark": watermark, "splits": read}
                    )
                if checkpoint_due:
                    checkpoint = _Checkpoint(
                        dict(self.positions), set(self.done_splits), watermark, self.watermarks.clocks(), []
                    )
            side_refs = [c[-1] for c in calls.values()] if self._side_slot(-1) else []
            layer = [c[1 : 1 + self._downstream(-1).num_outputs] for c in calls.values()]
            meta_refs: list[ray.ObjectRef] = []
            for s, actors in enumerate(self.stage_actors):
                stage_calls = [
                    _refs(
                        actor.process.options(num_returns=self._num_returns(s)).remote(
                            epoch, watermark, end_of_input, *[outputs[p] for outputs in layer]
                        )
                    )
                    for p, actor in enumerate(actors)
                ]
                meta_refs += [c[0] for c in stage_calls]
                if self._side_slot(s):
                    side_refs += [c[-1] for c in stage_calls]
                layer = [c[1 : 1 + self._downstream(s).num_outputs] for c in stage_calls]
                if checkpoint is not None:  # actor calls run in order: this sees the state right after the epoch
                    assert self.checkpointing is not None
                    store = self.checkpointing.store
                    checkpoint.snapshot_refs += [actor.snapshot.remote(epoch, store) for actor in actors]
            output_refs = [outputs[0] for outputs in layer if outputs]
            unsaved = checkpoint is None
            in_flight.append(
                _EpochInFlight(
                    epoch, meta_refs, output_refs, side_refs, reader_metas, loop_started, checkpoint, end_of_input
                )
            )
            with self._lock:
                self.metrics.rows_read += rows
                self.metrics.watermark_ms = None if watermark <= START_OF_TIME_MS else watermark
                self.metrics.watermark_held_by = self.watermarks.held_by
            while in_flight and (len(in_flight) >= config.max_in_flight_epochs or end_of_input):
                self._complete(in_flight.popleft(), runner, side_router)
            epoch += 1
            self.metrics.coordinator_seconds += (time.perf_counter() - loop_started) - (
                self._blocked_seconds - blocked_before
            )
            if not bounded and rows == 0:
                time.sleep(idle_sleep)
                idle_sleep = min(2 * idle_sleep, _MAX_IDLE_SLEEP_S)
            else:
                idle_sleep = _IDLE_SLEEP_S
        while in_flight:
            self._complete(in_flight.popleft(), runner, side_router)

    def _warn_if_stalled(self, now: float) -> None:
        """Say which split holds the watermark back, once it has done so for ``watermark_stall_warning``."""
        if self.stall_warning_s is None:
            return
        for split_id, held_s, value in self.watermarks.stalled(now, self.stall_warning_s):
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
                entry = metrics.splits.setdefault(split_id, {"rows": 0})
                entry["rows"] += progress["rows"]
                entry.update({k: v for k, v in progress.items() if k not in ("rows", "max_event_time_ms")})
                entry["watermark_ms"] = self.watermarks.split_watermark(split_id)
                seconds = max(time.time() - metrics.started_at, 1e-9)
                entry["rows_per_second"] = entry["rows"] / seconds

    def _complete(self, epoch: _EpochInFlight, runner: SinkRunner | None, side_router: SideOutputRouter) -> None:
        metas = self._get_metadata(epoch.meta_refs) if epoch.meta_refs else []
        final_layer = metas[-self.config.parallelism :] if self.stage_actors else epoch.reader_metas
        results = [m["sink_result"] for m in final_layer if m["sink_result"] is not None]
        state_files = []
        if epoch.checkpoint is not None:  # step 4 of the protocol: the state snapshot is durable
            state_files = [f for files in self._get_metadata(epoch.checkpoint.snapshot_refs) for f in files]
        # Step 5: commit the sinks (idempotently: a replayed epoch replaces its own output).
        written = runner.complete_epoch(epoch.epoch, epoch.output_refs, results) if runner is not None else 0
        side_router.complete_epoch(epoch.epoch, epoch.side_refs)
        if epoch.checkpoint is not None:  # step 6: commits/<epoch>, last
            assert self.checkpointing is not None
            point = epoch.checkpoint
            self.checkpointing.commit(
                epoch.epoch,
                point.positions,
                point.done,
                point.watermark_ms,
                point.clocks,
                state_files,
                self.job_id,
                epoch.end_of_input,
            )
        with self._lock:
            metrics = self.metrics
            metrics.epochs_completed += 1
            metrics.rows_written += written or sum(m["rows_out"] for m in final_layer)
            metrics.late_rows += sum(m["late_count"] for m in [*epoch.reader_metas, *metas])
            metrics.last_epoch_seconds = time.perf_counter() - epoch.started
            metrics.null_time_rows += sum(m["null_time_rows"] for m in epoch.reader_metas)
            self._record_splits(epoch.reader_metas)
            for meta in [*epoch.reader_metas, *metas]:
                metrics.actor_nodes[meta["actor"]] = meta["node_id"]
            metrics.dead_letters += sum(m["dead_letters"] for m in epoch.reader_metas)
            for stage in self.plan.stages:
                rows = sum(m["state_rows"] for m in metas if m.get("stage") == stage.name)
                metrics.state_rows[stage.name] = rows
                metrics.peak_state_rows[stage.name] = max(rows, metrics.peak_state_rows.get(stage.name, 0))
            for meta in [*epoch.reader_metas, *metas]:
                layer = meta.get("stage", "readers")
                metrics.busy_seconds[layer] = metrics.busy_seconds.get(layer, 0.0) + meta["seconds"]
                metrics.cpu_seconds[layer] = metrics.cpu_seconds.get(layer, 0.0) + meta["cpu_seconds"]
            metrics.splits_total, metrics.splits_done = len(self.splits), len(self.done_splits)
            positions = {split_id: entry["position"] for split_id, entry in metrics.splits.items()}
        # This epoch's output is committed: the source may now publish positions, for information.
        self.plan.source.on_epoch_complete(positions)

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
