"""``stream.write_kafka(topic, ...)``: batched produce, every delivery confirmed before the epoch is done."""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import PlanError, RaystreamError
from raystream.sinks.base import Sink, SinkContext

_FLUSH_TIMEOUT_S = 60.0


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
    ) -> None:
        if format not in ("json", "raw"):
            raise PlanError(f"write_kafka: format must be 'json' or 'raw', got {format!r}")
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.key = key
        self.format = format
        self.producer_config = dict(producer_config or {})
        self._producer: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_producer"] = None  # each process opens its own producer
        return state

    def on_start(self, context: SinkContext) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, **_admin_settings(self.producer_config)})
        try:
            topics = admin.list_topics(timeout=10).topics
        except KafkaException as exc:
            raise RaystreamError(
                f"write_kafka: cannot reach Kafka at {self.bootstrap_servers} within 10s ({exc}); "
                "check bootstrap_servers and that the broker is up"
            ) from exc
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

    def _open(self) -> Any:
        from confluent_kafka import Producer

        config = {"bootstrap.servers": self.bootstrap_servers, "linger.ms": 5, "enable.idempotence": True}
        config.update(self.producer_config)
        return Producer(config)

    def write(self, table: pa.Table, epoch_id: int, writer: int) -> int:
        if self._producer is None:
            self._producer = self._open()
        values = self._values(table)
        keys = self._keys(table)
        failures = _produce(self._producer, self.topic, values, keys)
        remaining = self._producer.flush(_FLUSH_TIMEOUT_S)
        if remaining:
            failures.append(f"{remaining} records still unacknowledged after {_FLUSH_TIMEOUT_S:g}s")
        if failures:
            raise KafkaDeliveryError(
                f"write_kafka: {len(failures)} of {len(values)} records to {self.topic!r} failed in epoch "
                f"{epoch_id}: {failures[0]}; check the topic and producer_config (message.max.bytes, acks, "
                "credentials)"
            )
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
            self._producer.flush(_FLUSH_TIMEOUT_S)


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
            except BufferError:  # the local queue is full: let deliveries drain, then retry
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

    def _open(self) -> Any:
        from confluent_kafka import Producer

        config = {
            "bootstrap.servers": self.bootstrap_servers,
            "linger.ms": 5,
            "transactional.id": self.transactional_id,
        }
        config.update(self.producer_config)
        return Producer(config)

    def on_start(self, context: SinkContext) -> None:
        from confluent_kafka import Consumer, TopicPartition

        super().on_start(context)
        self._producer = self._open()
        # Fences an earlier producer with this id and aborts the transaction it left open.
        self._producer.init_transactions(_FLUSH_TIMEOUT_S)
        marker = Consumer({"bootstrap.servers": self.bootstrap_servers, "group.id": self.marker_group})
        try:
            (position,) = marker.committed([TopicPartition(self.topic, 0)], timeout=_FLUSH_TIMEOUT_S)
            self.committed_epoch = max(0, position.offset)
            self._group_metadata = marker.consumer_group_metadata()
        finally:
            marker.close()

    def write(self, table: pa.Table, epoch_id: int, writer: int) -> int:
        from confluent_kafka import KafkaException, TopicPartition

        if epoch_id <= self.committed_epoch:
            return 0  # a replay of an epoch whose transaction committed: its records are there already
        values, keys = self._values(table), self._keys(table)
        producer = self._producer
        producer.begin_transaction()
        failures = _produce(producer, self.topic, values, keys)
        try:
            if failures:
                raise KafkaDeliveryError(failures[0])
            producer.send_offsets_to_transaction(
                [TopicPartition(self.topic, 0, epoch_id)], self._group_metadata, _FLUSH_TIMEOUT_S
            )
            producer.commit_transaction(_FLUSH_TIMEOUT_S)
        except (KafkaException, KafkaDeliveryError) as exc:
            producer.abort_transaction(_FLUSH_TIMEOUT_S)
            raise KafkaDeliveryError(
                f"write_kafka: the transaction of epoch {epoch_id} to {self.topic!r} failed and was aborted: {exc}"
            ) from exc
        self.committed_epoch = epoch_id
        return len(values)


def _admin_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The connection settings of a producer config that an AdminClient accepts too."""
    prefixes = ("security.", "sasl.", "ssl.", "socket.", "client.id")
    return {k: v for k, v in config.items() if k.startswith(prefixes)}
