"""Checkpoints and exactly-once recovery.

The protocol, for each epoch ``E`` of a job with a ``checkpoint_dir``:

1. Write the epoch's planned source positions first. Once the readers have
   read ``E`` and before any of its output is made, the coordinator writes
   ``offsets/E``: each split's position at the end of ``E`` and the rows it
   was allowed, and the watermark (the write-ahead offset log).
2. Run the epoch: the partition actors process it.
3. Stage the sink output under the epoch id: files under
   ``_staging/epoch-E``, nothing visible yet.
4. Snapshot each partition actor's state per key group, when a checkpoint
   is due: an Arrow IPC file per actor and state table, with a record batch
   per key group, indexed in the epoch's manifest (``state/E/...``).
5. Commit the sinks: the staged output becomes visible. Committing ``E``
   again replaces ``E``'s output, so a replayed epoch never doubles it.
6. Write ``commits/E`` last.

Recovery, when a job starts with a ``checkpoint_dir`` that has commits, or
inside a running job when an actor dies:

1. Take the newest valid commit ``C``; a partial or corrupt one is skipped
   with a warning that names it, and one from a different pipeline is
   refused.
2. Restore each partition actor's state from ``C``, for the key groups it
   owns now (the parallelism may differ).
3. Seek every split to its position at ``C``.
4. Replay each logged epoch after ``C`` exactly as logged: the same rows,
   the same watermark, the same epoch id; its output is committed again,
   idempotently.

Epochs are numbered from 1; checkpoint 0 is the job's start, which records
the splits (with what they captured, such as Kafka end offsets for
``stop="latest"``), so that even a job that dies before its first checkpoint
replays the same input.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

from raystream._time import duration_ms
from raystream.config import RunConfig
from raystream.errors import PlanError
from raystream.runtime.checkpoint import CheckpointStore, StateFile
from raystream.runtime.planner import PhysicalPlan
from raystream.sources.base import Split


def fingerprint(plan: PhysicalPlan) -> str:
    """A digest of what the state means: the source, the operators and their keys and windows.

    The parallelism is not part of it, so a job can be restored with another one.
    """
    shape = {
        "source": [plan.source.name, plan.event_time.column if plan.event_time else None],
        "reader_chain": [type(op).__name__ for op in plan.reader_chain],
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
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Recovery:
    """Where a job resumes: the checkpoint's epoch, splits, positions and state, and the epochs to replay."""

    epoch: int
    splits: list[Split]
    positions: dict[str, Any]
    done: set[str]
    watermark_ms: int
    clocks: dict[str, Any]
    state_files: list[StateFile]
    replay: list[dict[str, Any]] = field(default_factory=list)
    job_id: str | None = None


class Checkpointing:
    """The coordinator's side of the protocol above."""

    def __init__(self, plan: PhysicalPlan, config: RunConfig) -> None:
        assert config.checkpoint_dir is not None
        if not plan.source.replayable:
            raise PlanError(
                f"checkpoint_dir: {plan.source.name} is not replayable, so a restart cannot re-read what it lost; "
                "use a replayable source (files, Kafka) or run without checkpoints"
            )
        self.store = CheckpointStore(
            config.checkpoint_dir, config.checkpoint_storage_options, keep=config.checkpoints_to_keep
        )
        self.fingerprint = fingerprint(plan)
        self.stages = plan.stages
        self.every = config.checkpoint_every if config.checkpoint_interval is None else None
        if self.every is None and config.checkpoint_interval is None:
            self.every = 1
        self.interval_s = (
            None if config.checkpoint_interval is None else duration_ms(config.checkpoint_interval, "interval") / 1000
        )
        self.last_checkpoint_at = time.monotonic()

    # -- recovery ------------------------------------------------------------

    def recover(self) -> Recovery | None:
        """The newest valid checkpoint and the logged epochs after it, or ``None`` for a fresh start."""
        checkpoint = self.store.latest(self.fingerprint)
        if checkpoint is None:
            return None
        record = checkpoint.record
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
        return Recovery(
            epoch=checkpoint.epoch,
            splits=pickle.loads(base64.b64decode(record["splits"])),
            positions=record["positions"],
            done=set(record["done"]),
            watermark_ms=record["watermark_ms"],
            clocks=record["clocks"],
            state_files=list(checkpoint.state_files),
            replay=replay,
            job_id=record.get("job_id"),
        )

    # -- the protocol ----------------------------------------------------------

    def log_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """Step 1: the write-ahead log of what epoch ``epoch`` read."""
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
        splits: list[Split],
        positions: dict[str, Any],
        done: set[str],
        watermark_ms: int,
        clocks: dict[str, Any],
        state_files: list[StateFile],
        job_id: str,
    ) -> None:
        """Step 6: write ``commits/<epoch>``; the store then prunes old checkpoints."""
        record = {
            "fingerprint": self.fingerprint,
            "job_id": job_id,
            "watermark_ms": watermark_ms,
            "positions": positions,
            "done": sorted(done),
            "clocks": clocks,
            "split_ids": [s.split_id for s in splits],
            "splits": base64.b64encode(pickle.dumps(splits)).decode(),
            # The keyed operators (no user code), so that read_state can make sense of the state files.
            "operators": base64.b64encode(pickle.dumps({stage.name: stage.operator for stage in self.stages})).decode(),
        }
        self.store.commit(epoch, record, state_files)


def read_state(checkpoint_dir: str, operator: str | None = None, storage_options: dict[str, Any] | None = None) -> Any:
    """The keyed state of a job as of its last committed checkpoint, as a pandas DataFrame.

    Running aggregates show one row per key; windows show their open
    windows with ``window_start``, ``window_end`` and the values so far.

    Args:
        checkpoint_dir: The job's ``RunConfig.checkpoint_dir``.
        operator: The keyed operator's name (``agg(name=...)``); needed only
            when the job has several.
        storage_options: fsspec options for ``checkpoint_dir``.

    Raises:
        CheckpointError: when there is no valid checkpoint, or no such operator.
    """
    from raystream.runtime.checkpoint import CheckpointError

    store = CheckpointStore(checkpoint_dir, storage_options)
    checkpoint = store.latest()
    if checkpoint is None:
        raise CheckpointError(
            f"read_state: no committed checkpoint in {checkpoint_dir}; check the path, or run the job with "
            "RunConfig(checkpoint_dir=...) first"
        )
    operators = pickle.loads(base64.b64decode(checkpoint.record["operators"]))
    if not operators:
        raise CheckpointError(f"read_state: the job checkpointed in {checkpoint_dir} has no keyed state")
    if operator is None:
        if len(operators) > 1:
            raise CheckpointError(f"read_state: name one of the job's operators: {', '.join(operators)}")
        operator = next(iter(operators))
    if operator not in operators:
        raise CheckpointError(f"read_state: no operator {operator!r}; the job's operators are: {', '.join(operators)}")
    tables: dict[str, list[Any]] = {}
    for entry in checkpoint.state_files:
        if entry.stage == operator:
            tables.setdefault(entry.table, []).append(store.read_state(entry))
    state = operators[operator].new_state()
    import pyarrow as pa

    state.restore({name: pa.concat_tables(parts) for name, parts in tables.items()}, checkpoint.record["watermark_ms"])
    return state.values().to_pandas()
