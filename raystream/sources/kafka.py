"""``rs.read_kafka``: Kafka topics, partition by partition, with positions owned by raystream.

Each partition is a split, read with ``assign()`` (never a consumer-group
subscription); its position is the next offset to read. Nothing here trusts
the broker's high watermark or ``offsets_for_times`` for correctness (some
brokers, such as Tansu with memory storage, answer both loosely; see
DEVELOPERS.md):

- ``stop="latest"`` probes each partition's real last offset when the job
  starts, by reading its tail, instead of believing the high watermark.
- ``stop=<datetime>`` ends a partition once it has seen a record at or past
  that time.
- ``start=<datetime>`` uses ``offsets_for_times`` only as a place to begin
  (any offset at or before the right one is fine) and drops records older
  than the start time.

A lost broker is waited for (``reconnect_timeout``), a checkpointed offset
that the partition no longer holds is an error or a restart from the
earliest offset (``on_lost_offsets``), and a partition that has received
nothing stops holding the watermark back after ``empty_partition_timeout``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream._kafka import (
    DEFAULT_RECONNECT_TIMEOUT,
    Outage,
    client_config,
    is_transport_error,
    reconnect_timeout_s,
    redact,
    retry_transport,
    shown_config,
    unreachable_message,
)
from raystream._time import Duration, datetime_to_ms, duration_ms
from raystream.errors import PlanError, RaystreamError
from raystream.sources._json import Decoded, decode_records, infer_schema
from raystream.sources.base import Source, Split, SplitReader, dead_letter_table

__all__ = ["RAW_SCHEMA", "KafkaError", "KafkaSource"]

Format = Literal["json", "raw"]
Errors = Literal["dead_letter", "fail"]
LostOffsets = Literal["fail", "earliest"]

_CONNECT_TIMEOUT_S = 10.0
_POLL_TIMEOUT_S = 0.1
_TAIL_PROBE_TIMEOUT_S = 1.0
_TIMESTAMP = pa.timestamp("ms", tz="UTC")
#: How long a partition that has given no record stops holding the watermark back, unless read_kafka says otherwise.
DEFAULT_EMPTY_PARTITION_TIMEOUT = "10s"
#: How long publishing group offsets (for monitoring) may hold up an epoch.
_COMMIT_WAIT_S = 2.0

_log = logging.getLogger("raystream")

RAW_SCHEMA = pa.schema(
    [
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", _TIMESTAMP),
    ]
)


class KafkaError(RaystreamError):
    """Kafka could not be reached, a topic is missing, or a record cannot be read."""


@dataclass(frozen=True)
class _Partition:
    """What a reader needs to open one partition (a split's payload)."""

    topic: str
    partition: int
    start_offset: int | None  # None: from the earliest offset
    start_ms: int | None  # drop records older than this
    stop_offset: int | None  # stop="latest": the offset after the last record at job start
    stop_ms: int | None  # stop=<datetime>: done at the first record at or past this time


def _consumer(bootstrap_servers: str, extra: dict[str, Any] | None, what: str = "read_kafka") -> Any:
    from confluent_kafka import Consumer, KafkaException

    config = client_config(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "raystream-reader",  # required by librdkafka; assign() never joins the group
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "socket.connection.setup.timeout.ms": int(_CONNECT_TIMEOUT_S * 1000),
            # Prefetch deeply: with librdkafka's default (100k) a consumer fetched ~140k records/s from
            # the test broker, with 1M ~650k/s (bench/kafka_throughput.py). The queue stays capped by
            # queued.max.messages.kbytes (64 MiB by default).
            "queued.min.messages": 1_000_000,
            "fetch.wait.max.ms": 100,
        },
        extra,
    )
    try:
        return Consumer(config)
    except (KafkaException, TypeError, ValueError) as exc:
        raise PlanError(f"{what}: consumer_config is not valid: {redact(str(exc), config)}") from None


def _list_partitions(
    consumer: Any, topics: list[str], bootstrap_servers: str, retried: bool = False
) -> dict[str, list[int]]:
    """Each topic's partitions; a missing topic is an error, and so are unreachable brokers unless ``retried``."""
    from confluent_kafka import KafkaException

    try:
        metadata = consumer.list_topics(timeout=_CONNECT_TIMEOUT_S)
    except KafkaException as exc:
        if retried:  # the caller waits for the brokers (retry_transport)
            raise
        raise KafkaError(
            f"read_kafka: cannot reach Kafka at {bootstrap_servers} within {_CONNECT_TIMEOUT_S:g}s ({exc}); "
            "check bootstrap_servers and that the broker is up"
        ) from exc
    partitions = {}
    for topic in topics:
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            known = ", ".join(sorted(t for t in metadata.topics if not t.startswith("__"))) or "(none)"
            raise KafkaError(
                f"read_kafka: topic {topic!r} not found on {bootstrap_servers}; create it or check the name "
                f"(topics there: {known})"
            )
        partitions[topic] = sorted(found.partitions)
    return partitions


def _offset_ranges(consumer: Any, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
    """The earliest offset and the offset after the last record of each partition, now.

    The end does not trust the high watermark: the partition is read from one
    before it until nothing more comes, since a broker that reports the base
    offset of the last record batch still returns that whole batch.
    """
    from confluent_kafka import TopicPartition

    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    probe: list[Any] = []
    for topic, partition in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=_CONNECT_TIMEOUT_S)
        ranges[(topic, partition)] = (max(0, low), max(0, low, high))
        if high > low:
            probe.append(TopicPartition(topic, partition, max(low, high - 1)))
    if probe:
        consumer.assign(probe)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < _TAIL_PROBE_TIMEOUT_S:
            messages = consumer.consume(num_messages=10_000, timeout=_POLL_TIMEOUT_S)
            for message in messages:
                if message.error() is None:
                    key = (message.topic(), message.partition())
                    low, end = ranges[key]
                    ranges[key] = (low, max(end, message.offset() + 1))
            if messages:
                quiet_since = time.monotonic()
        consumer.unassign()
    return ranges


def _tail_offsets(consumer: Any, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The offset after the last record of each partition, now, without trusting the high watermark."""
    return {key: end for key, (_, end) in _offset_ranges(consumer, partitions).items()}


class KafkaSource(Source):
    """Kafka topics as an unbounded source, or a bounded one with ``stop=``. See :func:`raystream.read_kafka`."""

    name = "read_kafka"
    replayable = True
    discovers_splits = True
    payload_types: tuple[type, ...] = (_Partition,)

    def __init__(
        self,
        topics: str | list[str],
        bootstrap_servers: str,
        *,
        format: Format = "json",  # noqa: A002 - the public name
        schema: pa.Schema | None = None,
        time_column: str | None = None,
        start: str | datetime | dict[int, int] = "earliest",
        stop: str | datetime | None = None,
        consumer_config: dict[str, Any] | None = None,
        errors: Errors = "dead_letter",
        on_lost_offsets: LostOffsets = "fail",
        reconnect_timeout: Duration = DEFAULT_RECONNECT_TIMEOUT,
        empty_partition_timeout: Duration | None = DEFAULT_EMPTY_PARTITION_TIMEOUT,
    ) -> None:
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            raise PlanError(f"read_kafka: topics must be a topic name or a list of them, got {topics!r}")
        if format not in ("json", "raw"):
            raise PlanError(f"read_kafka: format must be 'json' or 'raw', got {format!r}")
        if errors not in ("dead_letter", "fail"):
            raise PlanError(f"read_kafka: errors must be 'dead_letter' or 'fail', got {errors!r}")
        if on_lost_offsets not in ("fail", "earliest"):
            raise PlanError(f"read_kafka: on_lost_offsets must be 'fail' or 'earliest', got {on_lost_offsets!r}")
        if format == "raw" and schema is not None:
            raise PlanError("read_kafka: schema= is for format='json'; format='raw' has fixed columns")
        if not (start in ("earliest", "latest") or isinstance(start, (datetime, dict))):
            raise PlanError(
                f"read_kafka: start must be 'earliest', 'latest', a datetime or {{partition: offset}}, got {start!r}"
            )
        if not (stop is None or stop == "latest" or isinstance(stop, datetime)):
            raise PlanError(f"read_kafka: stop must be None, 'latest' or a datetime, got {stop!r}")
        self.bootstrap_servers = bootstrap_servers
        self.format = format
        self.time_column = time_column
        self.start = start
        self.stop = stop
        self.consumer_config = dict(consumer_config or {})
        self.errors = errors
        self.on_lost_offsets = on_lost_offsets
        self.reconnect_timeout_s = reconnect_timeout_s(reconnect_timeout, "read_kafka")
        # The engine's hook (see Source): a partition that gives no record stops holding the watermark back.
        self.new_split_idle_timeout_ms = (
            None
            if empty_partition_timeout is None
            else duration_ms(empty_partition_timeout, "read_kafka: empty_partition_timeout")
        )
        self.bounded = stop is not None
        self.has_dead_letters = format == "json" and errors == "dead_letter"
        #: Splits that check_resume sent back to their earliest offset: (checkpointed offset, earliest, end).
        self._restarted: dict[str, tuple[int, int, int]] = {}
        self._listed = False
        consumer = self._new_consumer()
        try:
            _list_partitions(consumer, self.topics, bootstrap_servers)
        finally:
            consumer.close()
        if format == "json" and schema is None:
            schema = self._sample_schema()
            if schema is None:
                raise PlanError(
                    f"read_kafka: cannot infer the JSON schema of {', '.join(map(repr, self.topics))}: the topics hold "
                    "no JSON object yet; pass schema= (a pyarrow.Schema)"
                )
        self._record_schema = schema if format == "json" else RAW_SCHEMA
        if format == "json" and schema is not None and time_column is None and "timestamp" in schema.names:
            raise PlanError(
                "read_kafka: the JSON schema has a 'timestamp' field, which clashes with the Kafka record "
                "timestamp column added when time_column=None; pass time_column='timestamp' to use the field"
            )
        self._stop_offsets: dict[tuple[str, int], int] | None = None

    def _new_consumer(self, extra: dict[str, Any] | None = None) -> Any:
        return _consumer(self.bootstrap_servers, {**self.consumer_config, **(extra or {})})

    def _retrying(self, what: str, call: Any) -> Any:
        """``call()``, retried while the brokers are unreachable, for up to ``reconnect_timeout``."""
        return retry_transport(
            call,
            what=f"read_kafka: {what}",
            bootstrap_servers=self.bootstrap_servers,
            timeout_s=self.reconnect_timeout_s,
            error=KafkaError,
            config=self.consumer_config,
        )

    def __repr__(self) -> str:
        return (
            f"KafkaSource(topics={self.topics!r}, bootstrap_servers={self.bootstrap_servers!r}, "
            f"format={self.format!r}, consumer_config={shown_config(self.consumer_config)!r})"
        )

    def _sample_schema(self, records: int = 1000) -> pa.Schema | None:
        """Infer a JSON schema from the first records of the topics, or ``None`` when none is a JSON object.

        Every later batch, in every reader, is decoded with this schema, so
        that batches agree (see :func:`raystream.sources._json.infer_schema`:
        the first records' types win); pass ``schema=`` to be exact, since a
        field missing from the sample is not read.
        """
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        consumer = self._new_consumer()
        try:
            partitions = _list_partitions(consumer, self.topics, self.bootstrap_servers)
            consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, ps in partitions.items() for p in ps])
            values: list[bytes | None] = []
            deadline = time.monotonic() + _TAIL_PROBE_TIMEOUT_S
            while len(values) < records and time.monotonic() < deadline:
                values += [
                    m.value()
                    for m in consumer.consume(num_messages=records, timeout=_POLL_TIMEOUT_S)
                    if m.error() is None
                ]
        finally:
            consumer.close()
        return infer_schema(pa.array(values[:records], pa.binary()))

    def schema(self) -> pa.Schema | None:
        if self._record_schema is None:
            return None
        if self.format == "json" and self.time_column is None:
            return self._record_schema.append(pa.field("timestamp", _TIMESTAMP))
        return self._record_schema

    def identity(self) -> dict[str, Any]:
        """The topics read (not the brokers: a cluster may move)."""
        return {"source": self.name, "topics": sorted(self.topics)}

    def splits(self, parallelism: int) -> list[Split]:
        """The topics' partitions. When the job starts, a broker that is down is waited for (``reconnect_timeout``).

        Later calls look for new partitions, once each: the engine asks again
        at its next interval.
        """
        from confluent_kafka import KafkaException

        if not self._listed:
            splits = self._retrying("listing the partitions", self._splits)
            self._listed = True
            return splits
        try:
            return self._splits()
        except KafkaException as exc:
            raise KafkaError(
                f"read_kafka: cannot list the partitions on {self.bootstrap_servers}: "
                f"{redact(str(exc), self.consumer_config)}"
            ) from None

    def _splits(self) -> list[Split]:
        """The splits, now; an unreachable broker raises ``KafkaException``, for the caller to wait or not."""
        consumer = self._new_consumer()
        try:
            partitions = [
                (topic, p)
                for topic, ps in _list_partitions(consumer, self.topics, self.bootstrap_servers, retried=True).items()
                for p in ps
            ]
            if self.stop == "latest" and self._stop_offsets is None:
                # Captured once, when the job starts: later splits() calls keep the same end.
                self._stop_offsets = _tail_offsets(consumer, partitions)
            start_ends = _tail_offsets(consumer, partitions) if self.start == "latest" else {}
            start_hints = self._start_hints(consumer, partitions) if isinstance(self.start, datetime) else {}
        finally:
            consumer.close()
        splits = []
        for topic, partition in partitions:
            start_offset: int | None = None
            if self.start == "latest":
                start_offset = start_ends[(topic, partition)]
            elif isinstance(self.start, dict):
                start_offset = self.start.get(partition)
            elif isinstance(self.start, datetime):
                start_offset = start_hints.get((topic, partition))
            payload = _Partition(
                topic=topic,
                partition=partition,
                start_offset=start_offset,
                start_ms=datetime_to_ms(self.start) if isinstance(self.start, datetime) else None,
                stop_offset=None if self._stop_offsets is None else self._stop_offsets.get((topic, partition), 0),
                stop_ms=datetime_to_ms(self.stop) if isinstance(self.stop, datetime) else None,
            )
            splits.append(Split(f"{topic}/{partition}", payload))
        return splits

    def _start_hints(self, consumer: Any, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Where to begin reading for start=<datetime>: offsets_for_times, used as a lower bound only."""
        from confluent_kafka import TopicPartition

        assert isinstance(self.start, datetime)
        wanted = [TopicPartition(t, p, datetime_to_ms(self.start)) for t, p in partitions]
        found = consumer.offsets_for_times(wanted, timeout=_CONNECT_TIMEOUT_S)
        # Records before the start time are dropped by the reader, so an early offset costs time, never data.
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    def check_resume(self, positions: dict[str, Any]) -> None:
        """Refuse to resume a partition at an offset it no longer holds, or restart it from its earliest offset.

        A broker that lost its data (a restart with memory storage, a topic
        deleted and created again) answers a fetch past its end with
        nothing, so without this check the job would wait forever with a lag
        of 0. An offset before the earliest one (deleted by retention) is
        treated the same way. The partition's end is probed by reading its
        tail, not taken from the high watermark.

        Raises:
            KafkaError: with ``on_lost_offsets="fail"``, naming each such
                partition, its checkpointed offset and the offsets it holds.
        """
        wanted: dict[tuple[str, int], tuple[str, int]] = {}
        for split_id, offset in positions.items():
            topic, _, number = str(split_id).rpartition("/")
            if isinstance(offset, int) and topic in self.topics and number.isdigit():
                wanted[(topic, int(number))] = (split_id, offset)
        if not wanted:
            return

        def probe() -> tuple[dict[str, list[int]], dict[tuple[str, int], tuple[int, int]]]:
            consumer = self._new_consumer()
            try:
                existing = _list_partitions(consumer, self.topics, self.bootstrap_servers, retried=True)
                present = [key for key in wanted if key[1] in existing.get(key[0], [])]
                return existing, _offset_ranges(consumer, present)
            finally:
                consumer.close()

        existing, ranges = self._retrying("checking the checkpointed offsets", probe)
        lost: list[str] = []
        for (topic, partition), (split_id, offset) in sorted(wanted.items()):
            if partition not in existing.get(topic, []):
                raise KafkaError(
                    f"read_kafka: the checkpoint resumes {topic}/{partition} at offset {offset}, but the topic has "
                    f"no partition {partition} any more (partitions: {existing.get(topic)}); the topic was created "
                    "again with fewer partitions: start over with a new checkpoint_dir"
                )
            low, end = ranges[(topic, partition)]
            if low <= offset <= end:
                continue
            if self.on_lost_offsets == "earliest":
                self._restarted[split_id] = (offset, low, end)
                _log.warning(
                    "read_kafka: the checkpoint resumes %s/%d at offset %d, but the partition holds offsets %d to %d; "
                    "restarting it from its earliest offset, %d (on_lost_offsets='earliest'): what it held after "
                    "the checkpoint is not read again",
                    topic,
                    partition,
                    offset,
                    low,
                    end,
                    low,
                )
                continue
            lost.append(
                f"{topic}/{partition} at offset {offset}, but the partition "
                + (f"ends at offset {end}" if offset > end else f"starts at offset {low}")
            )
        if lost:
            raise KafkaError(
                f"read_kafka: the checkpoint resumes {'; '.join(lost)}: the broker lost or deleted those records "
                "(a broker restarted without its data, a topic created again, retention). Pass "
                "on_lost_offsets='earliest' to restart such partitions from their earliest offset, or start over "
                "with a new checkpoint_dir"
            )

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        if split.split_id in self._restarted:  # check_resume found the checkpointed offset gone
            return _PartitionReader(self, split.payload, None, restarted=True)
        return _PartitionReader(self, split.payload, position)

    def on_epoch_complete(self, positions: dict[str, Any]) -> None:
        """Publish positions as the consumer group's offsets, when ``group.id`` is configured.

        Only for monitoring (lag in standard Kafka tools): raystream resumes
        from its own positions and never reads these back. A commit that
        fails (the broker is down) is logged, never raised, and holds up the
        epoch for at most a few seconds.
        """
        if "group.id" not in self.consumer_config:
            return
        from confluent_kafka import TopicPartition

        offsets = []
        for split_id, offset in positions.items():
            topic, _, partition = split_id.rpartition("/")
            if offset is not None and topic in self.topics:
                offsets.append(TopicPartition(topic, int(partition), offset))
        if not offsets:
            return
        try:
            if getattr(self, "_committer", None) is None:
                self._committer = _GroupOffsets(self)
            self._committer.publish(offsets)
        except Exception as exc:  # noqa: BLE001 - information only: the job goes on without it
            _log.warning(
                "read_kafka: publishing positions to the group %r failed: %s",
                self.consumer_config["group.id"],
                redact(str(exc), self.consumer_config),
            )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_committer", None)  # a live consumer stays on the driver
        return state


class _GroupOffsets:
    """Commits positions as a consumer group's offsets without blocking: the job never waits on a down broker.

    A synchronous commit waits about 45 s for a broker that is gone; this
    one commits asynchronously, waits up to :data:`_COMMIT_WAIT_S` for the
    answer, and skips an epoch while an earlier commit is still unanswered
    (the next one carries newer offsets anyway).
    """

    def __init__(self, source: KafkaSource) -> None:
        self.group = source.consumer_config["group.id"]
        self.config = source.consumer_config
        self.pending = False
        self.failing = False
        self.consumer = source._new_consumer({"on_commit": self._answered})

    def _answered(self, error: Any, partitions: list[Any]) -> None:
        self.pending = False
        failed = error or next((tp.error for tp in partitions or [] if tp.error is not None), None)
        if failed is not None:
            if not self.failing:  # once per run of failures, not once per epoch
                _log.warning(
                    "read_kafka: publishing positions to the group %r failed (%s); raystream keeps its own "
                    "positions, so reading goes on: monitoring tools show an old lag until it works again",
                    self.group,
                    redact(str(failed), self.config),
                )
            self.failing = True
        elif self.failing:
            _log.info("read_kafka: publishing positions to the group %r works again", self.group)
            self.failing = False

    def publish(self, offsets: list[Any]) -> None:
        self.consumer.poll(0)  # hear an earlier commit's answer
        if self.pending:
            return
        self.pending = True
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except Exception:
            self.pending = False
            raise
        deadline = time.monotonic() + _COMMIT_WAIT_S
        while self.pending and time.monotonic() < deadline:
            self.consumer.poll(0.05)


class _PartitionReader(SplitReader):
    """Reads one partition with its own consumer, assigned at the split's position.

    A lost broker is not an error until it has been gone for the source's
    ``reconnect_timeout``: librdkafka reconnects by itself and goes on from
    the offset it had reached, and meanwhile each batch is empty.
    """

    def __init__(
        self, source: KafkaSource, partition: _Partition, position: int | None, restarted: bool = False
    ) -> None:
        self.source = source
        self.partition = partition
        self.next_offset = position if position is not None else partition.start_offset
        #: check_resume sent this partition back to its earliest offset: the logged epochs cannot be re-read.
        self.restarted = restarted
        if restarted:
            self.next_offset = None
        self.done = False
        self.dead: list[pa.Table] = []
        self.outage = Outage()
        self.fatal: str | None = None
        self.high_watermark: int | None = None
        self._consumer: Any = None

    @property
    def _name(self) -> str:
        return f"{self.partition.topic}/{self.partition.partition}"

    def _open(self) -> Any:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        def on_error(error: Any) -> None:
            # Called from consume(), in this thread. Lost connections are waited out; librdkafka reconnects.
            if error.fatal():
                self.fatal = redact(str(error), self.source.consumer_config)
            elif is_transport_error(error):
                self.outage.failed(redact(str(error), self.source.consumer_config))

        settings: dict[str, Any] = {"error_cb": on_error}
        if self.source.on_lost_offsets == "fail":
            # A fetch outside the partition's offsets (records lost or deleted while the job runs) is an error
            # instead of a silent jump back to the earliest offset.
            settings["auto.offset.reset"] = "error"
        consumer = self.source._new_consumer(settings)
        offset = OFFSET_BEGINNING if self.next_offset is None else self.next_offset
        consumer.assign([TopicPartition(self.partition.topic, self.partition.partition, offset)])
        return consumer

    def next_batch(self, max_rows: int) -> pa.Table | None:
        return self._next(max_rows, until=None)

    def _next(self, max_rows: int, until: int | None) -> pa.Table | None:
        """Read at most ``max_rows`` records, and none at or past offset ``until``."""
        from confluent_kafka import TopicPartition

        part = self.partition
        if self.done or (part.stop_offset is not None and (self.next_offset or 0) >= part.stop_offset):
            self.done = True
            return None
        if self._consumer is None:
            self._consumer = self._open()
        messages = self._consumer.consume(num_messages=max(1, min(max_rows, 100_000)), timeout=_POLL_TIMEOUT_S)
        if self.fatal is not None:
            raise KafkaError(
                f"read_kafka: Kafka at {self.source.bootstrap_servers} failed while reading {self._name}: {self.fatal}"
            )
        errors = [m.error() for m in messages if m.error() is not None]
        if errors:
            messages = [m for m in messages if m.error() is None]
            self._on_fetch_errors(errors)
        if messages:
            self.outage.cleared()
        else:
            self._check_outage()
        # confluent-kafka hands over one Message object per record; reading their fields is the one
        # per-record loop a Kafka source cannot avoid. Decoding below is vectorized.
        offsets = np.fromiter((m.offset() for m in messages), dtype=np.int64, count=len(messages))
        timestamps = np.fromiter((m.timestamp()[1] for m in messages), dtype=np.int64, count=len(messages))
        keep = len(messages)
        limits = [o for o in (part.stop_offset, until) if o is not None]
        if limits:
            keep = int(np.count_nonzero(offsets < min(limits)))
        if part.stop_ms is not None:
            past = np.flatnonzero(timestamps[:keep] >= part.stop_ms)
            if past.size:
                keep, self.done = int(past[0]), True
        if keep < len(messages):
            self.next_offset = int(offsets[keep])  # the first record not emitted
            if not self.done:  # records past a replay limit come again in the next epoch
                self._consumer.seek(TopicPartition(part.topic, part.partition, self.next_offset))
        elif messages:
            self.next_offset = int(offsets[-1]) + 1
        if part.stop_offset is not None and (self.next_offset or 0) >= part.stop_offset:
            self.done = True
        raw = pa.table(
            {
                "key": pa.array([m.key() for m in messages[:keep]], pa.binary()),
                "value": pa.array([m.value() for m in messages[:keep]], pa.binary()),
                "topic": pa.repeat(pa.scalar(part.topic, pa.string()), keep),
                "partition": pa.repeat(pa.scalar(part.partition, pa.int32()), keep),
                "offset": pa.array(offsets[:keep]),
                "timestamp": pa.array(timestamps[:keep]).cast(_TIMESTAMP),
            }
        )
        if part.start_ms is not None and raw.num_rows:
            raw = raw.filter(pc.greater_equal(raw.column("timestamp").cast(pa.int64()), part.start_ms))
        self._update_lag()
        if self.source.format == "raw":
            return raw
        return self._decode_json(raw)

    def _on_fetch_errors(self, errors: list[Any]) -> None:
        """Errors that come as messages: a lost connection is waited out, an offset out of range is named."""
        from confluent_kafka import KafkaError as ClientError

        for error in errors:
            text = redact(str(error), self.source.consumer_config)
            if error.code() in (ClientError._AUTO_OFFSET_RESET, ClientError.OFFSET_OUT_OF_RANGE):
                raise KafkaError(
                    f"read_kafka: {self._name} no longer holds offset {self.next_offset} ({text}): the broker lost "
                    "or deleted those records (a restart without its data, retention); pass "
                    "on_lost_offsets='earliest' to go on from the earliest offset instead"
                )
            if not is_transport_error(error):
                raise KafkaError(f"read_kafka: error reading {self._name}: {text}")
            self.outage.failed(text)

    def _check_outage(self) -> None:
        """Fail once the brokers have been gone for longer than ``reconnect_timeout``, and not before.

        librdkafka says when a connection is lost, not when it is back; an
        idle partition shows nothing either way. So at the deadline the
        brokers are asked once, directly, before giving up.
        """
        timeout_s = self.source.reconnect_timeout_s
        if self.outage.since is None or self.outage.seconds() < timeout_s:
            return
        from confluent_kafka import KafkaException

        try:
            self._consumer.list_topics(self.partition.topic, timeout=min(_CONNECT_TIMEOUT_S, timeout_s))
        except KafkaException:
            raise KafkaError(
                unreachable_message(
                    f"read_kafka: reading {self._name}",
                    self.source.bootstrap_servers,
                    self.outage.seconds(),
                    timeout_s,
                    self.outage.error or "no answer",
                )
            ) from None
        self.outage.cleared()  # the brokers answer: the partition is only idle

    def read_until(self, position: Any, max_rows: int) -> pa.Table | None:
        """Re-read exactly the records before offset ``position``, however the broker batches them."""
        if self.restarted:
            # check_resume found the records after the checkpoint gone (on_lost_offsets="earliest"): nothing can be
            # re-read, and the partition is read again from its earliest offset by next_batch.
            return self._empty()
        if position is None or (self.next_offset is not None and self.next_offset >= position):
            return None if self.done else self._empty()
        tables = []
        while self.next_offset is None or self.next_offset < position:
            batch = self._next(position - (self.next_offset or 0), until=position)
            if batch is None:
                break
            tables.append(batch)
        if self.next_offset != position:
            raise KafkaError(
                f"read_kafka: replaying {self.partition.topic}/{self.partition.partition} stopped at offset "
                f"{self.next_offset}, not at the logged {position}; records were probably deleted by retention: "
                "raise the topic's retention, or start over with a new checkpoint_dir"
            )
        return pa.concat_tables(tables, promote_options="default") if tables else self._empty()

    def _empty(self) -> pa.Table:
        schema = self.source.schema()
        return schema.empty_table() if schema is not None else pa.table({})

    def _decode_json(self, raw: pa.Table) -> pa.Table:
        """One row per record that decodes, one dead letter per other record; each keeps its own timestamp."""
        schema = self.source._record_schema
        assert schema is not None  # inferred at plan time, or the source refused to be built
        decoded = decode_records(raw.column("value"), schema)
        if len(decoded.bad):
            self._reject(raw, decoded)
        rows = decoded.rows
        if self.source.time_column is None:
            rows = rows.append_column("timestamp", raw.column("timestamp").take(pa.array(decoded.good)))
        return rows

    def _reject(self, raw: pa.Table, decoded: Decoded) -> None:
        part = self.partition
        if self.source.errors == "fail":
            offset = raw.column("offset")[int(decoded.bad[0])].as_py()
            raise KafkaError(
                f"read_kafka: record {part.topic}/{part.partition} at offset {offset} cannot be decoded as a JSON "
                f"object matching the schema: {decoded.errors[0]}; fix the producer, or pass errors='dead_letter' "
                "to route such records to stream.dead_letters()"
            )
        rejected = raw.take(pa.array(decoded.bad))
        self.dead.append(
            dead_letter_table(
                self.source.name,
                self._name,  # the split id: topic/partition
                raw=rejected.column("value"),
                error=decoded.errors,
                position=rejected.column("offset"),
            )
        )

    def take_dead_letters(self) -> pa.Table | None:
        if not self.dead:
            return None
        letters, self.dead = pa.concat_tables(self.dead), []
        return letters

    def _update_lag(self) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        if self.next_offset is None and self.outage.since is None:
            # Reading "from the earliest" of a partition that gave nothing yet: that is its low watermark.
            tp = TopicPartition(self.partition.topic, self.partition.partition)
            try:
                low, _ = self._consumer.get_watermark_offsets(tp, timeout=_CONNECT_TIMEOUT_S)
            except KafkaException as exc:
                cause = exc.args[0] if exc.args else None
                if not is_transport_error(cause):
                    raise KafkaError(
                        f"read_kafka: error reading {self._name}: {redact(str(exc), self.source.consumer_config)}"
                    ) from None
                self.outage.failed(redact(str(cause), self.source.consumer_config))  # asked again once it is back
                low = -1
            if low >= 0:
                self.next_offset = low
        try:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.partition.topic, self.partition.partition), cached=True
            )
            self.high_watermark = high if high >= 0 else None
        except Exception:  # noqa: BLE001 - lag is information only; reading goes on without it
            self.high_watermark = None

    def metrics(self) -> dict[str, Any]:
        lag = None
        if self.high_watermark is not None and self.next_offset is not None:
            lag = max(0, self.high_watermark - self.next_offset)
        return {"lag": lag, "high_watermark": self.high_watermark}

    def position(self) -> int | None:
        return self.next_offset

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
