"""``stream.write_kafka(topic, ...)``: batched produce, every delivery confirmed before the epoch is done.

A broker that goes away is waited for: librdkafka keeps the records and
sends them again once it is back (the idempotent producer drops the
duplicates), for up to ``reconnect_timeout``; only then does the epoch fail,
naming the brokers and how long they were unreachable.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raystream._kafka import (
    DEFAULT_RECONNECT_TIMEOUT,
    Outage,
    client_config,
    is_transport_error,
    reconnect_timeout_s,
    redact,
    shown_config,
    unreachable_message,
)
from raystream._time import Duration
from raystream.errors import PlanError, RaystreamError
from raystream.sinks.base import Sink, SinkContext

_CONNECT_TIMEOUT_S = 10.0
#: librdkafka's default transaction.timeout.ms; raised to the reconnect timeout when that is longer.
_TRANSACTION_TIMEOUT_MS = 60_000
_BACKOFF_MAX_S = 5.0


class KafkaDeliveryError(RaystreamError):
    """A record could not be delivered to Kafka; the epoch fails."""


class KafkaSink(Sink):
    """Produces each row as one record, from the actors that make the output.

    ``write`` returns only once the broker has acknowledged every record of
    the batch (``flush``); a delivery error fails the epoch with the
    broker's message. A replayed epoch produces its records again, so this
    sink is at-least-once; :class:`TransactionalKafkaSink` is exactly-once.

    Args:
        topic: The topic to write.
        bootstrap_servers: ``"host:port[,host:port]"``.
        key: A column whose value (as UTF-8 text, or bytes) becomes the record key.
        format: ``"json"``: each row as a JSON object. ``"raw"``: the ``value`` column
            (binary or string) as is.
        producer_config: librdkafka settings.
        reconnect_timeout: How long a delivery waits for unreachable brokers (librdkafka's
            ``message.timeout.ms``, unless ``producer_config`` sets it) before the epoch fails.
    """

    name = "write_kafka"
    on_driver = False

    def __init__(
        self,
        topic: str,
        bootstrap_servers: str,
        key: str | None = None,
        format: str = "json",  # noqa: A002 - the public name
        producer_config: dict[str, Any] | None = None,
        reconnect_timeout: Duration = DEFAULT_RECONNECT_TIMEOUT,
    ) -> None:
        if format not in ("json", "raw"):
            raise PlanError(f"write_kafka: format must be 'json' or 'raw', got {format!r}")
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.key = key
        self.format = format
        self.producer_config = dict(producer_config or {})
        self.reconnect_timeout_s = reconnect_timeout_s(reconnect_timeout, "write_kafka")
        message_timeout_ms = self.producer_config.get("message.timeout.ms", int(self.reconnect_timeout_s * 1000))
        #: How long a record may wait for its broker: flush() waits a little longer, so librdkafka says why first.
        self.delivery_timeout_s = int(message_timeout_ms) / 1000
        self._producer: Any = None
        self._outage = Outage()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_producer"] = None  # each process opens its own producer
        state["_outage"] = Outage()
        return state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(topic={self.topic!r}, bootstrap_servers={self.bootstrap_servers!r}, "
            f"producer_config={shown_config(self.producer_config)!r})"
        )

    def _redact(self, text: str) -> str:
        return redact(text, self.producer_config)

    def on_start(self, context: SinkContext) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        config = client_config({"bootstrap.servers": self.bootstrap_servers}, _admin_settings(self.producer_config))
        admin = AdminClient(config)
        try:
            topics = admin.list_topics(timeout=_CONNECT_TIMEOUT_S).topics
        except KafkaException as exc:
            raise RaystreamError(
                f"write_kafka: cannot reach Kafka at {self.bootstrap_servers} within {_CONNECT_TIMEOUT_S:g}s "
                f"({self._redact(str(exc))}); check bootstrap_servers and that the broker is up"
            ) from None
        if self.topic not in topics or topics[self.topic].error is not None:
            raise RaystreamError(
                f"write_kafka: topic {self.topic!r} not found on {self.bootstrap_servers}; create it first"
            )
        if context.schema is not None:
            if self.key is not None and self.key not in context.schema.names:
                raise PlanError(
                    f"write_kafka: unknown key column {self.key!r}; the stream has columns: "
                    f"{', '.join(context.schema.names)}"
                )
            if self.format == "raw" and "value" not in context.schema.names:
                raise PlanError("write_kafka: format='raw' needs a 'value' column (binary or string)")

    def _settings(self) -> dict[str, Any]:
        """The producer's settings: a lost broker is waited for as long as ``reconnect_timeout``."""

        def on_error(error: Any) -> None:  # served by poll() and flush(), in the writing thread
            if is_transport_error(error):
                self._outage.failed(self._redact(str(error)))

        return client_config(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "linger.ms": 5,
                "message.timeout.ms": int(self.delivery_timeout_s * 1000),
                "error_cb": on_error,
            },
            self.producer_config,
        )

    def _open(self) -> Any:
        from confluent_kafka import Producer

        return Producer(self._settings() | {"enable.idempotence": self.producer_config.get("enable.idempotence", True)})

    def _flush_timeout_s(self) -> float:
        return self.delivery_timeout_s + 5.0

    def write(self, table: pa.Table, epoch_id: int, writer: int) -> int:
        if self._producer is None:
            self._producer = self._open()
        values = self._values(table)
        keys = self._keys(table)
        started = time.monotonic()
        failures = _produce(self._producer, self.topic, values, keys)
        remaining = self._producer.flush(self._flush_timeout_s())
        if remaining:
            failures.append(f"{remaining} records still unacknowledged after {self._flush_timeout_s():g}s")
        if failures:
            if all("timed out" in f.lower() or "unacknowledged" in f for f in failures):
                since = started if self._outage.since is None else min(started, self._outage.since)
                raise KafkaDeliveryError(
                    unreachable_message(
                        f"write_kafka: epoch {epoch_id} to {self.topic!r}",
                        self.bootstrap_servers,
                        time.monotonic() - since,
                        self.reconnect_timeout_s,
                        f"{len(failures)} of {len(values)} records undelivered: {self._outage.error or failures[0]}",
                    )
                )
            raise KafkaDeliveryError(
                f"write_kafka: {len(failures)} of {len(values)} records to {self.topic!r} failed in epoch "
                f"{epoch_id}: {self._redact(failures[0])}; check the topic and producer_config (message.max.bytes, "
                "acks, credentials)"
            )
        self._outage.cleared()
        return len(values)

    def _values(self, table: pa.Table) -> list[bytes]:
        if self.format == "raw":
            column = table.column("value")
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                column = pc.cast(column, pa.binary())
            return column.to_pylist()
        frame = table.to_pandas()
        text = frame.to_json(orient="records", lines=True, date_format="iso", date_unit="ms")
        return [line.encode() for line in text.splitlines()]

    def _keys(self, table: pa.Table) -> list[bytes | None] | None:
        if self.key is None:
            return None
        column = table.column(self.key)
        if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
            column = pc.cast(pc.cast(column, pa.string()), pa.binary())
        return column.to_pylist()

    def on_finish(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._flush_timeout_s())


def _produce(producer: Any, topic: str, values: list[bytes], keys: list[bytes | None] | None) -> list[str]:
    """Hand every record to the producer; returns the errors of those it refused or could not deliver.

    Deliveries are confirmed by the caller's ``flush`` (or ``commit_transaction``).
    """
    from confluent_kafka import KafkaException

    failures: list[str] = []
    lock = threading.Lock()

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            with lock:
                failures.append(str(error))

    # The Producer API takes one record per call; the values were encoded for the whole batch at once.
    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, value=value, key=keys[i] if keys else None, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full (or the broker is away): let deliveries drain, then retry
                producer.poll(0.1)
            except KafkaException as exc:  # refused before sending, such as a record over message.max.bytes
                failures.append(str(exc.args[0]) if exc.args else str(exc))
                break
    return failures


class TransactionalKafkaSink(KafkaSink):
    """``write_kafka(..., transactional_id=...)``: exactly-once output through Kafka transactions.

    Each epoch is produced from the driver in one transaction, together
    with a marker: the epoch id, committed as the offset of the consumer
    group ``raystream-epochs.<transactional_id>`` on partition 0 of the
    topic, which commits or aborts with the records. An epoch replayed
    after a failure whose marker says it was committed is not produced
    again, so a consumer reading with ``isolation.level=read_committed``
    sees every row once.

    A transaction that fails because the brokers are unreachable is aborted
    and made again, with backoff, for up to ``reconnect_timeout``.
    """

    on_driver = True

    def __init__(self, *args: Any, transactional_id: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not transactional_id:
            raise PlanError("write_kafka: transactional_id must be a non-empty string")
        self.transactional_id = transactional_id
        self.marker_group = f"raystream-epochs.{transactional_id}"
        self.committed_epoch = 0
        self._group_metadata: Any = None
        self._needs_init = False

    def _open(self) -> Any:
        from confluent_kafka import Producer

        settings = self._settings()
        settings["transactional.id"] = self.transactional_id
        # librdkafka requires message.timeout.ms <= transaction.timeout.ms.
        settings.setdefault("transaction.timeout.ms", max(_TRANSACTION_TIMEOUT_MS, int(self.delivery_timeout_s * 1000)))
        return Producer(settings)

    def on_start(self, context: SinkContext) -> None:
        from confluent_kafka import Consumer, TopicPartition

        super().on_start(context)
        self._producer = self._open()
        # Fences an earlier producer with this id and aborts the transaction it left open.
        self._producer.init_transactions(self._flush_timeout_s())
        marker = Consumer(
            client_config(
                {"bootstrap.servers": self.bootstrap_servers, "group.id": self.marker_group},
                _admin_settings(self.producer_config),
            )
        )
        try:
            (position,) = marker.committed([TopicPartition(self.topic, 0)], timeout=self._flush_timeout_s())
            self.committed_epoch = max(0, position.offset)
            self._group_metadata = marker.consumer_group_metadata()
        finally:
            marker.close()

    def write(self, table: pa.Table, epoch_id: int, writer: int) -> int:
        from confluent_kafka import KafkaException

        if epoch_id <= self.committed_epoch:
            return 0  # a replay of an epoch whose transaction committed: its records are there already
        values, keys = self._values(table), self._keys(table)
        deadline = time.monotonic() + self.reconnect_timeout_s
        started, delay = time.monotonic(), 0.1
        while True:
            try:
                self._transaction(epoch_id, values, keys, deadline)
                break
            except (KafkaException, KafkaDeliveryError) as exc:
                cause = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
                detail = self._redact(str(cause if cause is not None else exc))
                transient = is_transport_error(cause) or "timed out" in detail.lower()
                self._abort()
                waited = time.monotonic() - started
                if not transient or time.monotonic() + delay > deadline:
                    if transient:
                        detail = unreachable_message(
                            "write_kafka", self.bootstrap_servers, waited, self.reconnect_timeout_s, detail
                        )
                    raise KafkaDeliveryError(
                        f"write_kafka: the transaction of epoch {epoch_id} to {self.topic!r} failed and was aborted: "
                        f"{detail}"
                    ) from None
                time.sleep(delay)  # the brokers are away: make the whole transaction again once they are back
                delay = min(delay * 2, _BACKOFF_MAX_S)
        self._outage.cleared()
        self.committed_epoch = epoch_id
        return len(values)

    def _transaction(
        self, epoch_id: int, values: list[bytes], keys: list[bytes | None] | None, deadline: float
    ) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        if self._needs_init:  # a producer made again after a failed abort
            self._producer.init_transactions(self._flush_timeout_s())
            self._needs_init = False
        producer = self._producer
        producer.begin_transaction()
        failures = _produce(producer, self.topic, values, keys)
        if failures:
            raise KafkaDeliveryError(failures[0])
        producer.send_offsets_to_transaction(
            [TopicPartition(self.topic, 0, epoch_id)], self._group_metadata, self._flush_timeout_s()
        )
        delay = 0.1
        while True:
            try:
                producer.commit_transaction(self._flush_timeout_s())
                return
            except KafkaException as exc:
                cause = exc.args[0] if exc.args else None
                # librdkafka's rule: a retriable commit error is cured by committing again (the commit may have
                # gone through already); anything else aborts the transaction, in write().
                if cause is None or not cause.retriable() or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)

    def _abort(self) -> None:
        """Abort the open transaction, if any; a producer that cannot abort is made again (fencing the old one)."""
        from confluent_kafka import KafkaException

        try:
            self._producer.abort_transaction(self._flush_timeout_s())
        except KafkaException as exc:
            cause = exc.args[0] if exc.args else None
            if cause is not None and cause.code() == cause._STATE:
                return  # no transaction was open
            self._producer = self._open()
            self._needs_init = True


def _admin_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The connection settings of a producer config that an AdminClient accepts too."""
    prefixes = ("security.", "sasl.", "ssl.", "socket.", "client.id")
    return {k: v for k, v in config.items() if k.startswith(prefixes)}
