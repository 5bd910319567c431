"""Checkpoints and exactly-once recovery.

The epoch and checkpoint protocol. This list is its one description: the
code that runs a step is marked ``# Step N`` (``# Recovery step N``), and
every other description points here. For each epoch ``E`` of a job:

0. Record the splits (with a ``checkpoint_dir``). When the job starts, and
   whenever a source finds new splits, store them once (``splits/E``, JSON,
   per source stage): commits name these files instead of carrying the
   split list each time.
1. Read. Every reader with splits left reads up to ``max_batch_rows`` rows,
   runs its source stage's fused stateless chain (a broadcast table join
   included) and, before a keyed stage, pre-aggregates and hash-partitions
   its output. It returns metadata (positions, largest event time per split)
   and its output per edge through the object store.
2. Watermarks. The coordinator reads the readers' metadata only. Each
   source's watermark comes from its own splits (+infinity once all are
   done); a stage's is the minimum over the sources upstream of it, less
   the output delays of the stages before it (an interval join's interval),
   and at most the *floor* of each stage before it whose output may lag by
   more (a join held by a column): the smaller of its watermark and the
   oldest time it held, after the last epoch it completed. An epoch
   that read nothing, moved no position and no watermark is not an epoch:
   no stage runs, nothing is logged or committed, and its number goes to the
   next one, so an idle job writes no file.
3. Log (with a ``checkpoint_dir``). Before any of ``E``'s output is made,
   write ``offsets/E``: each split's position at the end of ``E``, the rows
   it was allowed, each source's watermark and the floors (the write-ahead
   offset log).
4. Process and stage. The partition actors of each keyed stage process
   ``E`` with the stage's watermark, and every sink stages ``E``'s output
   under the epoch id (files under ``_staging/epoch-E``, an open Kafka
   transaction), nothing visible yet. Up to ``max_in_flight_epochs`` epochs
   are in flight: the oldest is completed (steps 5 to 7) while the readers
   read the next.
5. Snapshot, when a checkpoint is due: each partition actor writes its
   state, an Arrow IPC file per actor and state table with a record batch
   per key group (``state/E/...``), and one reader of each broadcast table
   join writes the table; the coordinator waits until they are durable.
6. Commit the sinks: the staged output becomes visible. Committing ``E``
   again replaces ``E``'s output, so a replayed epoch never doubles it.
7. Commit the checkpoint: write the manifest of ``E``'s state files, then
   ``commits/E`` last, naming the manifest's checksum; the record holds the
   positions, the watermarks and the floors. The commit of the
   epoch that ends every bounded input records that the job is complete.
   Checkpoints older than the newest ``checkpoints_to_keep`` are then pruned.

Recovery, when a job starts with a ``checkpoint_dir`` that has commits, or
inside a running job when an actor dies:

1. Take the newest valid commit ``C``; a partial or corrupt one (its marker,
   manifest or one of its state files) is skipped with a warning that names
   it, and the previous one is used. One from a different pipeline or of
   other sources is refused, naming the difference. A complete job is not
   run again: it logs that it is complete and emits nothing.
2. Restore each partition actor's state from ``C``, for the key groups it
   owns now (the parallelism, and even the number of key groups, may
   differ), and each broadcast table into the readers that join with it.
3. Seek every split to its position at ``C``, after the source checked that
   it can resume there (a Kafka partition that lost its data).
4. Replay each logged epoch after ``C`` exactly as logged: the same rows,
   the same watermarks, the same epoch id; its output is committed again,
   idempotently.

Epochs are numbered from 1; checkpoint 0 is the job's start, which records
the splits (with what they captured, such as Kafka end offsets for
``stop="latest"``), so that even a job that dies before its first checkpoint
replays the same input.

Nothing in a checkpoint is pickled: records are JSON, state is Arrow IPC,
and split payloads and operators are rebuilt from JSON by the sources and
by :mod:`raystream.runtime.operator_specs`, so that reading a checkpoint
folder someone else can write never runs their code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from raystream._jsonable import JsonableError
from raystream._time import duration_ms
from raystream.errors import PlanError, RaystreamError
from raystream.run_config import RunConfig
from raystream.runtime.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointStore,
    CorruptCheckpointError,
    StateFile,
)
from raystream.runtime.operator_specs import operator_from_spec, operator_spec
from raystream.runtime.planner import PhysicalPlan
from raystream.sources.base import Source, Split

_log = logging.getLogger("raystream")
#: The layout of the commit record; a checkpoint of another layout is refused, never guessed at.
FORMAT = 4
#: The commit record's fields that recovery reads, and their JSON types.
_RECORD_FIELDS: dict[str, type] = {
    "job_id": str,
    "complete": bool,
    "num_key_groups": int,
    "watermark_ms": int,
    "watermarks": dict,
    "floors": dict,
    "broadcast_ready": list,
    "positions": dict,
    "done": list,
    "clocks": dict,
    "splits": dict,
}


def plan_shape(plan: PhysicalPlan) -> dict[str, Any]:
    """What the state means: the sources, the operators and their keys and windows, the edges, as JSON.

    User functions count by their kind only, so that a fixed function body
    (how users ship fixes, as in Flink) resumes; the parallelism does not
    count either, so that a job can be restored with another one.
    """
    return {
        "sources": [
            {
                "name": stage.name,
                "source": stage.source.name,
                "event_time": stage.event_time.column if stage.event_time else None,
                "chain": [type(op).__name__ for op in stage.chain],
            }
            for stage in plan.sources
        ],
        "stages": [
            {
                "operator": type(stage.operator).__name__,
                "name": stage.name,
                "keys": list(stage.operator.keys),
                **{
                    attr: repr(getattr(stage.operator, attr))
                    for attr in ("aggregates", "top", "window", "allowed_lateness_ms", "emit", "time_column")
                    if hasattr(stage.operator, attr)
                },
                "chain": [type(op).__name__ for op in stage.chain],
            }
            for stage in plan.stages
        ],
        "edges": [
            [edge.producer, edge.consumer, edge.exchange, edge.input, [type(op).__name__ for op in edge.chain]]
            for edge in plan.edges
        ],
    }


def fingerprint(plan: PhysicalPlan) -> str:
    """A digest of :func:`plan_shape`."""
    return hashlib.sha256(json.dumps(plan_shape(plan), sort_keys=True).encode()).hexdigest()[:16]


def _difference(checkpointed: Any, running: Any, path: str = "") -> str | None:
    """The first place where two JSON values differ, as ``where: was -> now``, or None."""
    if isinstance(checkpointed, dict) and isinstance(running, dict):
        for key in sorted(set(checkpointed) | set(running)):
            found = _difference(checkpointed.get(key), running.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return None
    if isinstance(checkpointed, list) and isinstance(running, list) and len(checkpointed) == len(running):
        for i, (a, b) in enumerate(zip(checkpointed, running, strict=True)):
            found = _difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if checkpointed != running:
        return f"{path or 'the pipeline'}: {json.dumps(checkpointed)} in the checkpoint, {json.dumps(running)} now"
    return None


@dataclass
class Recovery:
    """Where a job resumes: the checkpoint's epoch, splits, positions and state, and the epochs to replay."""

    epoch: int
    #: By source stage.
    splits: dict[str, list[Split]]
    positions: dict[str, Any]
    done: set[str]
    #: By source stage.
    watermarks: dict[str, int]
    #: By stage that holds its output back (see Step 2).
    floors: dict[str, int]
    clocks: dict[str, Any]
    #: The broadcast joins whose table the checkpoint holds.
    broadcast_ready: set[str]
    state_files: list[StateFile]
    job_id: str
    #: The job ended: its bounded input was read to the end and its last output committed.
    complete: bool
    #: The key groups the state was saved under (the running job's may differ).
    num_key_groups: int
    replay: list[dict[str, Any]] = field(default_factory=list)


class Checkpointing:
    """The coordinator's side of the protocol above."""

    def __init__(self, plan: PhysicalPlan, config: RunConfig) -> None:
        assert config.checkpoint_dir is not None
        for stage in plan.sources:
            if not stage.source.replayable:
                raise PlanError(
                    f"checkpoint_dir: {stage.source.name} is not replayable, so a restart cannot re-read what it "
                    "lost; use a replayable source (files, Kafka) or run without checkpoints"
                )
        self.store = CheckpointStore(
            config.checkpoint_dir,
            config.checkpoint_storage_options,
            keep=config.checkpoints_to_keep,
            key=config.checkpoint_key,
        )
        self.sources: dict[str, Source] = {stage.name: stage.source for stage in plan.sources}
        self.shape = plan_shape(plan)
        self.fingerprint = fingerprint(plan)
        self.num_key_groups = config.num_key_groups
        self.operators = {stage.name: operator_spec(stage.operator) for stage in plan.stages}
        self.every = config.checkpoint_every if config.checkpoint_interval is None else None
        if self.every is None and config.checkpoint_interval is None:
            self.every = 1
        self.interval_s = (
            None if config.checkpoint_interval is None else duration_ms(config.checkpoint_interval, "interval") / 1000
        )
        self.last_checkpoint_at = time.monotonic()
        #: The splits files written so far (epoch -> SHA-256), which every later commit names.
        self.splits_files: dict[str, str] = {}

    # -- recovery ------------------------------------------------------------

    def recover(self, skip: Collection[int] = ()) -> Recovery | None:
        """Recovery step 1: the newest valid checkpoint and the logged epochs after it, or ``None``.

        Args:
            skip: Epochs whose checkpoint turned out corrupt while restoring: use an older one.

        Raises:
            CheckpointMismatchError: the checkpoint is of another pipeline or other sources.
            CheckpointError: the checkpoint is of another layout, or its splits cannot be read.
        """
        checkpoint = self.store.latest(skip=skip)
        if checkpoint is None:
            return None
        record = checkpoint.record
        self._check_same_job(checkpoint)
        replay: list[dict[str, Any]] = []
        for epoch in self.store.offset_epochs():
            if epoch <= checkpoint.epoch:
                continue
            if epoch != checkpoint.epoch + len(replay) + 1:
                break  # a gap: nothing after it can be replayed in order
            logged = self.store.read_offsets(epoch)
            if logged is None:
                break
            replay.append(logged)
        self.splits_files = dict(record["splits"])
        return Recovery(
            epoch=checkpoint.epoch,
            splits=self._read_splits(),
            positions=record["positions"],
            done=set(record["done"]),
            watermarks=record["watermarks"],
            floors=record["floors"],
            clocks=record["clocks"],
            broadcast_ready=set(record["broadcast_ready"]),
            state_files=list(checkpoint.state_files),
            job_id=record["job_id"],
            complete=bool(record["complete"]),
            num_key_groups=record["num_key_groups"],
            replay=replay,
        )

    def _check_same_job(self, checkpoint: Checkpoint) -> None:
        record, where = checkpoint.record, f"checkpoint {self.store.url} (epoch {checkpoint.epoch})"
        if record.get("format") != FORMAT:
            raise CheckpointError(
                f"{where} has layout {record.get('format', 1)!r}, and this raystream reads layout {FORMAT} only "
                "(earlier layouts pickled their splits, which is unsafe to read); use a new checkpoint_dir, or "
                "finish the job with the raystream that wrote it"
            )
        for key, kind in _RECORD_FIELDS.items():
            if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool) != (kind is bool):
                raise CorruptCheckpointError(
                    f"{where}: the commit record's {key!r} is {str(record.get(key))[:60]!r}, not a "
                    f"{kind.__name__}; the checkpoint is damaged or was not written by raystream: use a new "
                    "checkpoint_dir"
                )
        if record.get("fingerprint") != self.fingerprint:
            found = _difference(record.get("plan"), self.shape) or "its fingerprint"
            raise CheckpointMismatchError(
                f"{where} was written by a different pipeline ({found}): restoring its state and positions into "
                "this pipeline would give wrong results; use a new checkpoint_dir, or run the pipeline that wrote it"
            )
        saved, running = record.get("sources"), self._identities()
        if isinstance(saved, dict) and len(running) == 1 and list(saved) == list(running):
            saved, running = saved[next(iter(running))], next(iter(running.values()))  # name no stage: there is one
        other_input = _difference(saved, running)
        if other_input is not None:
            raise CheckpointMismatchError(
                f"{where} was written by a job reading other input ({other_input}): its positions do not fit this "
                "source; use a new checkpoint_dir, or read what the checkpointed job read"
            )

    def _identities(self) -> dict[str, Any]:
        return {name: source.identity() for name, source in self.sources.items()}

    def _read_splits(self) -> dict[str, list[Split]]:
        splits: dict[str, list[Split]] = {name: [] for name in self.sources}
        for epoch, sha256 in sorted(self.splits_files.items()):
            for data in self.store.read_splits(int(epoch), sha256):
                stage = data.get("source") if isinstance(data, dict) else None
                source = self.sources.get(stage) if isinstance(stage, str) else None
                try:
                    if source is None:
                        raise JsonableError(f"no source stage {stage!r} in this job")
                    splits[str(stage)].append(source.decode_split(data["split"]))
                except JsonableError as exc:
                    raise CorruptCheckpointError(
                        f"checkpoint {self.store.url}: the stored splits of epoch {int(epoch)} do not fit "
                        f"{source.name if source else stage!r} ({exc}); the checkpoint is damaged or was written "
                        "by another source: use a new checkpoint_dir"
                    ) from exc
        return splits

    # -- the protocol ----------------------------------------------------------

    def record_splits(self, epoch: int, stage: str, splits: list[Split]) -> None:
        """Step 0: store the splits of source stage ``stage`` found by ``epoch`` (all of them at the start), once."""
        source = self.sources[stage]
        try:
            encoded = [{"source": stage, "split": source.encode_split(split)} for split in splits]
        except JsonableError as exc:
            raise CheckpointError(
                f"checkpoint_dir: {exc}; a checkpoint stores every split as JSON, so override "
                f"{type(source).__name__}.encode_payload and decode_payload (see raystream.Source)"
            ) from exc
        key = f"{epoch:010d}"
        if key in self.splits_files:  # another source's splits found by the same epoch: one file for both
            encoded = [*self.store.read_splits(epoch, self.splits_files[key]), *encoded]
        self.splits_files[key] = self.store.write_splits(epoch, encoded)

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """Step 3: the write-ahead log of what epoch ``epoch`` read."""
        self.store.write_offsets(epoch, {"epoch": epoch, **record})

    def due(self, epoch: int, end_of_input: bool) -> bool:
        """Whether epoch ``epoch`` ends with a checkpoint (always the last one of a bounded input)."""
        if end_of_input:
            return True
        if self.every is not None:
            return epoch % self.every == 0
        assert self.interval_s is not None
        if time.monotonic() - self.last_checkpoint_at >= self.interval_s:
            self.last_checkpoint_at = time.monotonic()
            return True
        return False

    def commit(
        self,
        epoch: int,
        positions: dict[str, Any],
        done: set[str],
        watermarks: dict[str, int],
        floors: dict[str, int],
        clocks: dict[str, Any],
        state_files: list[StateFile],
        job_id: str,
        broadcast_ready: set[str],
        complete: bool = False,
    ) -> None:
        """Step 7: the manifest and ``commits/<epoch>``, last; the store then prunes old checkpoints."""
        record = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "plan": self.shape,
            "sources": self._identities(),
            "num_key_groups": self.num_key_groups,
            "job_id": job_id,
            "complete": complete,
            # The smallest of the sources' watermarks (read_state's), and each source's own.
            "watermark_ms": min(watermarks.values()),
            "watermarks": watermarks,
            "floors": floors,
            "broadcast_ready": sorted(broadcast_ready),
            # A finished split needs no position: it is never read again.
            "positions": {split_id: p for split_id, p in positions.items() if split_id not in done},
            "done": sorted(done),
            "clocks": clocks,
            "splits": dict(self.splits_files),
            # What the keyed state means, so that read_state can make sense of the state files (JSON, no code).
            "operators": self.operators,
        }
        self.store.commit(epoch, record, state_files)


def read_state(
    checkpoint_dir: str,
    operator: str | None = None,
    storage_options: dict[str, Any] | None = None,
    key: str | None = None,
) -> Any:
    """The keyed state of a job as of its last committed checkpoint, as a pandas DataFrame.

    Running aggregates show one row per key; windows show their open
    windows with ``window_start``, ``window_end`` and the values so far. A
    checkpoint whose state files are corrupt is skipped with a warning, and
    the previous one is read, as a resuming job does. Nothing in the folder
    is unpickled.

    Args:
        checkpoint_dir: The job's ``RunConfig.checkpoint_dir``.
        operator: The keyed operator's name (``agg(name=...)``); needed only
            when the job has several.
        storage_options: fsspec options for ``checkpoint_dir``.
        key: The key the checkpoints are signed with (``RunConfig.checkpoint_key``);
            by default ``RAYSTREAM_CHECKPOINT_KEY``.

    Raises:
        CheckpointError: when there is no valid checkpoint, or no such operator.
    """
    import pyarrow as pa

    store = CheckpointStore(checkpoint_dir, storage_options, key=key)
    skip: set[int] = set()
    while True:
        checkpoint = store.latest(skip=skip)
        if checkpoint is None:
            raise CheckpointError(
                f"read_state: no committed checkpoint in {store.url}; check the path, or run the job with "
                "RunConfig(checkpoint_dir=...) first"
            )
        operators = checkpoint.record.get("operators")
        if checkpoint.record.get("format") != FORMAT or not isinstance(operators, dict):
            raise CheckpointError(
                f"read_state: the checkpoint in {store.url} (epoch {checkpoint.epoch}) has another layout than "
                f"this raystream's ({FORMAT}); read it with the raystream that wrote it"
            )
        if not operators:
            raise CheckpointError(f"read_state: the job checkpointed in {store.url} has no keyed state")
        if operator is None and len(operators) > 1:
            raise CheckpointError(f"read_state: name one of the job's operators: {', '.join(operators)}")
        name = operator if operator is not None else next(iter(operators))
        if name not in operators:
            raise CheckpointError(
                f"read_state: no operator {operator!r}; the job's operators are: {', '.join(operators)}"
            )
        try:
            tables: dict[str, list[Any]] = {}
            for entry in checkpoint.state_files:
                if entry.stage == name:
                    tables.setdefault(entry.table, []).append(store.read_state(entry))
        except CorruptCheckpointError as error:
            message = f"read_state: skipping the checkpoint of epoch {checkpoint.epoch}: {error}"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            _log.warning("%s", message)
            skip.add(checkpoint.epoch)
            continue
        try:
            state = operator_from_spec(operators[name]).new_state()
        except RaystreamError as exc:
            raise CheckpointError(f"read_state: {store.url}: {exc}") from exc
        state.restore(
            {name: pa.concat_tables(parts) for name, parts in tables.items()}, checkpoint.record["watermark_ms"]
        )
        return state.values().to_pandas()
