"""``RunConfig``: how to run a pipeline, validated when it is made.

It sits below the runtime, which reads it. The YAML job configs that
``raystream run`` reads are in :mod:`raystream.config`, above the API.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from raystream._time import duration_ms
from raystream.errors import ConfigError, PlanError


@dataclass(frozen=True)
class RunConfig:
    """How to run a pipeline. Every terminal accepts one.

    Attributes:
        parallelism: Reader actors, and partition actors per keyed stage.
        max_batch_rows: The most rows a reader takes per epoch. By default
            the source's choice: 400,000 for files, 100,000 for the others.
        address: A Ray cluster to join (as ``ray.init(address=...)``); when
            ``None``, ``RAY_ADDRESS`` is used if set, and otherwise a local
            Ray starts when none is running.
        max_in_flight_epochs: Epochs started but not yet complete. Readers
            wait when this many are in flight, so a slow sink slows the
            readers instead of filling memory.
        num_key_groups: Key groups that keys hash to; state is kept per key
            group, so it bounds the parallelism a job can be rescaled to.
        actor_cpus: The CPUs Ray reserves for each reader or partition actor.
        checkpoint_dir: An fsspec URL (a folder, ``s3://...``) for checkpoints.
            A job started again with the same one resumes from its last
            committed checkpoint; see :mod:`raystream.runtime.checkpointing`.
        checkpoint_every: Checkpoint every this many epochs (1 when
            neither this nor ``checkpoint_interval`` is given).
        checkpoint_interval: Or checkpoint when this much time has passed
            since the last one, such as ``"30s"``.
        checkpoints_to_keep: Committed checkpoints kept; older ones are pruned.
        checkpoint_storage_options: fsspec options (credentials) for ``checkpoint_dir``.
        checkpoint_key: A secret that signs the checkpoints (HMAC-SHA256), so
            that one altered by anyone without it is refused; by default
            ``RAYSTREAM_CHECKPOINT_KEY``. Without a key, checksums catch
            damage but not deliberate edits. Never shown in reprs or logs.
        max_recoveries: How many times a job recovers by itself from a dead
            actor, restoring its last checkpoint, before it fails.
        watermark_stall_warning: Log a warning naming the split that alone
            has held the watermark back this long (a Kafka partition that
            receives nothing, a stuck file), such as ``"1m"``; ``None``: never.
        broadcast_join_max_bytes: A ``join``'s table whose sources hold at
            most this many bytes (10 MiB by default, Spark's
            ``autoBroadcastJoinThreshold``) is sent whole to the stream's
            actors and joined there; a larger one, or one whose size its
            sources cannot tell, is hash-partitioned with the stream. 0
            turns broadcasting off.
        max_join_table_bytes: The most bytes of a ``join``'s table that one
            actor may hold (1 GiB by default); more is an error that names
            the join, not an out-of-memory kill.
    """

    parallelism: int = 2
    max_batch_rows: int | None = None
    address: str | None = None
    max_in_flight_epochs: int = 2
    num_key_groups: int = 128
    actor_cpus: float = 0.25
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    checkpoint_interval: str | None = None
    checkpoints_to_keep: int = 3
    checkpoint_storage_options: dict[str, Any] | None = None
    checkpoint_key: str | None = None
    max_recoveries: int = 3
    watermark_stall_warning: str | None = "1m"
    broadcast_join_max_bytes: int = 10 << 20
    max_join_table_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for name in ("parallelism", "max_batch_rows", "max_in_flight_epochs", "num_key_groups"):
            value = getattr(self, name)
            if value is None and name == "max_batch_rows":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"RunConfig.{name} must be a positive int, got {value!r}")
        if self.parallelism > self.num_key_groups:
            raise ConfigError(
                f"RunConfig.parallelism ({self.parallelism}) exceeds num_key_groups ({self.num_key_groups}); "
                "raise num_key_groups or lower parallelism"
            )
        if not isinstance(self.actor_cpus, (int, float)) or isinstance(self.actor_cpus, bool) or self.actor_cpus < 0:
            raise ConfigError(f"RunConfig.actor_cpus must be a number >= 0, got {self.actor_cpus!r}")
        if self.address is not None and not isinstance(self.address, str):
            raise ConfigError(f"RunConfig.address must be a string such as 'ray://head:10001', got {self.address!r}")
        if self.checkpoint_dir is not None and (not isinstance(self.checkpoint_dir, str) or not self.checkpoint_dir):
            raise ConfigError(f"RunConfig.checkpoint_dir must be a folder path or URL, got {self.checkpoint_dir!r}")
        if self.checkpoint_every is not None and self.checkpoint_interval is not None:
            raise ConfigError("RunConfig: give checkpoint_every or checkpoint_interval, not both")
        if (self.checkpoint_every is not None or self.checkpoint_interval is not None) and self.checkpoint_dir is None:
            raise ConfigError("RunConfig: checkpoint_every and checkpoint_interval need a checkpoint_dir")
        if self.checkpoint_every is not None and (
            not isinstance(self.checkpoint_every, int)
            or isinstance(self.checkpoint_every, bool)
            or self.checkpoint_every < 1
        ):
            raise ConfigError(f"RunConfig.checkpoint_every must be a positive int, got {self.checkpoint_every!r}")
        if self.checkpoint_interval is not None:
            try:
                duration_ms(self.checkpoint_interval, "RunConfig.checkpoint_interval")
            except PlanError as exc:
                raise ConfigError(str(exc)) from exc
        for name in ("checkpoints_to_keep", "max_join_table_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"RunConfig.{name} must be a positive int, got {value!r}")
        value = self.broadcast_join_max_bytes
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"RunConfig.broadcast_join_max_bytes must be an int >= 0, got {value!r}")
        if self.checkpoint_key is not None and (not isinstance(self.checkpoint_key, str) or not self.checkpoint_key):
            raise ConfigError("RunConfig.checkpoint_key must be a non-empty string (a secret), or None")
        if self.watermark_stall_warning is not None:
            try:
                duration_ms(self.watermark_stall_warning, "RunConfig.watermark_stall_warning")
            except PlanError as exc:
                raise ConfigError(str(exc)) from exc
        if not isinstance(self.max_recoveries, int) or self.max_recoveries < 0:
            raise ConfigError(f"RunConfig.max_recoveries must be an int >= 0, got {self.max_recoveries!r}")

    def __repr__(self) -> str:
        # Storage options hold credentials, and the key is a secret: never show them.
        hidden = ("checkpoint_storage_options", "checkpoint_key")
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in hidden}
        return "RunConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"
