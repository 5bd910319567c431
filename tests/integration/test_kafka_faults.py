"""Kafka under faults, against a real broker (Tansu): restarts, lost data, empty partitions, floods of logs, secrets."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from windows_oracle import normalized, windows_sql

import raystream as rs
from raystream.sources.kafka import KafkaSource

pytestmark = pytest.mark.usefixtures("ray_local")

SCHEMA = pa.schema([("t", pa.int64()), ("k", pa.int64()), ("v", pa.int64())])
ROOT = Path(__file__).resolve().parents[2]


def events(count: int, seed: int, keys: int = 7, start_ms: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "t": start_ms + np.arange(count, dtype=np.int64) * 100,
            "k": rng.integers(0, keys, count),
            "v": rng.integers(0, 1000, count),
        }
    )


def produce(broker: Any, topic: str, frame: pd.DataFrame, partitions: int) -> None:
    """Rows dealt round-robin to the partitions, one record batch per partition."""
    lines = frame.to_json(orient="records", lines=True).splitlines()
    for p in range(partitions):
        broker.produce(topic, lines[p::partitions], partition=p)


def wait_until(condition: Callable[[], bool], job: rs.Job, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert job.status() == "running", job.metrics()
        assert time.monotonic() < deadline, job.metrics()
        time.sleep(0.1)


def read_back(broker: Any, topic: str) -> pd.DataFrame:
    """Every record of ``topic``, decoded, in a stable order."""
    raw = rs.read_kafka(topic, broker.bootstrap_servers, format="raw", stop="latest").to_pandas()
    rows = pd.DataFrame([json.loads(v) for v in raw["value"]], columns=["t", "k", "v"])
    return rows.sort_values(["t", "k", "v"]).reset_index(drop=True).astype("int64")


# --------------------------------------------------------------------------- #
# A broker that restarts                                                      #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("checkpointed", [False, True], ids=["no-checkpoint", "checkpoint"])
def test_a_broker_restart_mid_run_loses_nothing_and_fails_nothing(
    restartable_kafka_broker: Any, tmp_path: Path, checkpointed: bool
) -> None:
    """Kafka in, Kafka out, and the broker killed for 3 s in the middle: every row arrives once, the job runs on."""
    broker = restartable_kafka_broker(persistent=True)  # its topics live in S3 and survive the restart
    source, sink = broker.create_topic("in", partitions=2), broker.create_topic("out", partitions=2)
    before, after = events(1000, seed=1), events(1000, seed=2, start_ms=100_000)
    produce(broker, source, before, 2)

    config = rs.RunConfig(parallelism=2, checkpoint_dir=str(tmp_path / "ckpt") if checkpointed else None)
    stream = rs.read_kafka(
        source,
        broker.bootstrap_servers,
        schema=SCHEMA,
        time_column="t",
        consumer_config={"group.id": "restart-monitor"},  # publishing positions must not fail the job either
    )
    job = stream.write_kafka(sink, broker.bootstrap_servers, config=config, wait=False)
    try:
        wait_until(lambda: job.metrics()["rows_written"] >= 1000, job)
        broker.restart(down_s=3.0)
        produce(broker, source, after, 2)
        wait_until(lambda: job.metrics()["rows_written"] >= 2000, job)
        assert job.status() == "running"
    finally:
        job.stop()
    assert job.status() == "stopped"
    expected = pd.concat([before, after]).sort_values(["t", "k", "v"]).reset_index(drop=True).astype("int64")
    pd.testing.assert_frame_equal(read_back(broker, sink), expected)


class Ticker(rs.Source):
    """An unbounded source that yields one row per batch, forever: output for a sink whose broker goes away."""

    name = "ticker"
    bounded = False

    def schema(self) -> pa.Schema:
        return SCHEMA

    def splits(self, parallelism: int) -> list[rs.Split]:
        return [rs.Split("tick")]

    def open_split(self, split: rs.Split, position: Any) -> rs.SplitReader:
        return _TickReader(position or 0)


class _TickReader(rs.SplitReader):
    def __init__(self, position: int) -> None:
        self.n = position

    def next_batch(self, max_rows: int) -> pa.Table:
        time.sleep(0.05)
        self.n += 1
        return pa.table({"t": [self.n], "k": [1], "v": [1]}, schema=SCHEMA)

    def position(self) -> int:
        return self.n


def test_write_kafka_fails_naming_the_broker_once_it_is_gone_longer_than_reconnect_timeout(
    restartable_kafka_broker: Any,
) -> None:
    broker = restartable_kafka_broker(persistent=False)
    topic = broker.create_topic("out", partitions=1)
    job = rs.from_source(Ticker()).write_kafka(topic, broker.bootstrap_servers, reconnect_timeout="2s", wait=False)
    try:
        wait_until(lambda: job.metrics()["rows_written"] > 0, job)
    finally:
        broker.kill()
    with pytest.raises(
        rs.RaystreamError,
        match=r"write_kafka: epoch \d+ to 'out': Kafka at 127\.0\.0\.1:\d+ has been unreachable for \d+s, longer "
        r"than reconnect_timeout=2s",
    ):
        job.wait(timeout=60)


# --------------------------------------------------------------------------- #
# A checkpointed position the broker no longer holds                          #
# --------------------------------------------------------------------------- #


def test_check_resume_names_the_partition_its_offset_and_its_real_end(kafka_broker: Any, new_topic: Any) -> None:
    topic = new_topic(partitions=2)
    kafka_broker.produce(topic, [json.dumps({"t": i, "k": 0, "v": i}) for i in range(10)], partition=0)
    # One record batch of 10: this broker's high watermark says 1, so the end must be probed.
    source = KafkaSource(topic, kafka_broker.bootstrap_servers, schema=SCHEMA)
    source.check_resume({f"{topic}/0": 10, f"{topic}/1": 0})  # both are where the partitions end: fine
    source.check_resume({f"{topic}/0": 5, f"{topic}/1": None})
    with pytest.raises(
        rs.RaystreamError,
        match=rf"the checkpoint resumes {topic}/0 at offset 11, but the partition ends at offset 10; "
        rf"{topic}/1 at offset 3, but the partition ends at offset 0: .*on_lost_offsets='earliest'",
    ):
        source.check_resume({f"{topic}/0": 11, f"{topic}/1": 3})

    lenient = KafkaSource(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, on_lost_offsets="earliest")
    lenient.check_resume({f"{topic}/0": 11})
    (split,) = [s for s in lenient.splits(1) if s.split_id == f"{topic}/0"]
    reader = lenient.open_split(split, 11)
    assert reader.read_until(11, 100).num_rows == 0  # what was logged after the checkpoint is gone
    rows: list[int] = []
    deadline = time.monotonic() + 10
    while len(rows) < 10 and time.monotonic() < deadline:
        rows += reader.next_batch(100).column("v").to_pylist()
    reader.close()
    assert rows == list(range(10))  # read again from the earliest offset


def test_resuming_a_job_whose_broker_lost_its_data_is_an_error_or_starts_over_from_earliest(
    restartable_kafka_broker: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker restarts without its data (memory storage): resuming is refused, or restarts the partitions.

    Needs the coordinator to call ``Source.check_resume`` when a job resumes.
    """
    broker = restartable_kafka_broker(persistent=False)
    topic = broker.create_topic("clicks", partitions=2)
    first = events(200, seed=3)
    produce(broker, topic, first, 2)  # offsets 0..99 in each partition
    config = rs.RunConfig(parallelism=1, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1)

    def start(**options: Any) -> rs.Job:
        stream = rs.read_kafka(topic, broker.bootstrap_servers, schema=SCHEMA, time_column="t", **options)
        return stream.key_by("k").agg(n=rs.count()).start(config)

    job = start()
    try:
        wait_until(lambda: job.results().get("n", pd.Series(dtype=int)).sum() == 200, job)
    finally:
        job.stop()

    broker.restart(down_s=0.5)  # memory storage: the topic is gone
    broker.create_topic(topic, partitions=2)
    later = events(10, seed=4, start_ms=50_000)
    broker.produce(topic, later.to_json(orient="records", lines=True).splitlines(), partition=0)

    refused = start()
    with pytest.raises(
        rs.RaystreamError,
        match=rf"the checkpoint resumes {topic}/0 at offset 100, but the partition ends at offset 10; "
        rf"{topic}/1 at offset 100, but the partition ends at offset 0",
    ):
        refused.wait(timeout=60)

    expected = pd.concat([first, later]).groupby("k").size().to_dict()
    expected_updates = {k: expected[k] for k in set(later["k"])}  # the keys the later records update, in all

    def updated(job: rs.Job) -> dict[int, int]:
        return job.results().set_index("k")["n"].to_dict() if len(job.results()) else {}

    with caplog.at_level(logging.WARNING, logger="raystream"):
        job = start(on_lost_offsets="earliest")
        try:
            wait_until(lambda: updated(job) == expected_updates, job)
        finally:
            job.stop()
    assert f"the checkpoint resumes {topic}/0 at offset 100, but the partition holds offsets 0 to 10" in caplog.text
    assert updated(job) == expected_updates  # the counts restored from the checkpoint, plus the records read again


# --------------------------------------------------------------------------- #
# A partition that never receives data                                        #
# --------------------------------------------------------------------------- #


def test_empty_partition_timeout_is_the_idle_hook_of_the_source(kafka_broker: Any, new_topic: Any) -> None:
    topic = new_topic(partitions=1)
    assert KafkaSource(topic, kafka_broker.bootstrap_servers, schema=SCHEMA).new_split_idle_timeout_ms == 10_000
    other = KafkaSource(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, empty_partition_timeout="1m")
    assert other.new_split_idle_timeout_ms == 60_000
    off = KafkaSource(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, empty_partition_timeout=None)
    assert off.new_split_idle_timeout_ms is None
    with pytest.raises(rs.PlanError, match="on_lost_offsets must be 'fail' or 'earliest'"):
        KafkaSource(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, on_lost_offsets="latest")  # type: ignore[arg-type]
    with pytest.raises(rs.PlanError, match="reconnect_timeout must be positive"):
        KafkaSource(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, reconnect_timeout=0)


def test_a_live_window_job_over_a_topic_with_an_empty_partition_emits_its_windows(
    kafka_broker: Any, new_topic: Any
) -> None:
    """5 keys in a 3-partition topic, the third partition empty: windows come out, with nothing configured.

    Needs the watermark tracker to honour ``Source.new_split_idle_timeout_ms``.
    """
    topic = new_topic(partitions=3)
    window = rs.Tumbling("10s")
    frame = events(600, seed=5, keys=5)  # one minute of events
    closer = pd.DataFrame({"t": [120_000] * 2, "k": [0] * 2, "v": [0] * 2})  # one per partition: past the minute
    produce(kafka_broker, topic, pd.concat([frame, closer]), 2)
    stream = rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, time_column="t")
    windows = stream.key_by("k").window(window).agg(n=rs.count(), s=rs.sum("v"), m=rs.max("v"))
    job = windows.start(rs.RunConfig(parallelism=2))
    try:
        wait_until(lambda: len(job.results()) >= 30, job, timeout_s=90)  # 5 keys x 6 windows of the minute
    finally:
        job.stop()
    expected = normalized(windows_sql(frame, window))
    got = normalized(job.results())
    pd.testing.assert_frame_equal(got[got["window_end"] <= 60_000].reset_index(drop=True), expected)


# --------------------------------------------------------------------------- #
# librdkafka's logs                                                           #
# --------------------------------------------------------------------------- #


def test_an_unreachable_broker_is_one_log_line_not_hundreds() -> None:
    from kafka_broker import free_loopback_port

    script = f"import raystream as rs; rs.read_kafka('clicks', '127.0.0.1:{free_loopback_port()}')"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 1
    assert "cannot reach Kafka at 127.0.0.1:" in done.stderr
    refused = [line for line in done.stderr.splitlines() if "Connection refused" in line]
    assert 1 <= len(refused) <= 2, done.stderr[-3000:]  # ~200 attempts in 10 s, shown once


def test_librdkafka_messages_reach_the_raystream_logger(caplog: pytest.LogCaptureFixture) -> None:
    from confluent_kafka import KafkaException
    from kafka_broker import free_loopback_port

    from raystream.sources.kafka import _consumer

    with caplog.at_level(logging.INFO, logger="raystream"):
        consumer = _consumer(f"127.0.0.1:{free_loopback_port()}", None)
        with pytest.raises(KafkaException):
            consumer.list_topics(timeout=2)
        consumer.close()
    refused = [r for r in caplog.records if r.name == "raystream.kafka" and "Connection refused" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]


# --------------------------------------------------------------------------- #
# Credentials                                                                 #
# --------------------------------------------------------------------------- #

# Not literals in one piece: a traceback quotes the line that raised.
SECRETS = {
    "sasl.password": "kafka-" + "pw-0451",
    "ssl.key.password": "key-" + "pw-7782",
    "sasl.oauthbearer.client.secret": "oauth-" + "s3cr3t-99",
}


def assert_no_secret(text: str | bytes) -> None:
    found = [s for s in SECRETS.values() if (s.encode() if isinstance(text, bytes) else s) in text]
    assert not found, text[-2000:]


def test_kafka_credentials_appear_in_no_error_log_repr_metric_or_checkpoint(
    kafka_broker: Any,
    new_topic: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from kafka_broker import free_loopback_port

    from raystream._kafka import KAFKA_LOG

    source_topic, sink_topic = new_topic(partitions=2), new_topic(partitions=1)
    produce(kafka_broker, source_topic, events(100, seed=6), 2)
    consumer_config = {**SECRETS, "group.id": f"secrets-{source_topic}"}
    checkpoints = tmp_path / "ckpt"
    with caplog.at_level(logging.DEBUG, logger="raystream"):
        stream = rs.read_kafka(
            source_topic, kafka_broker.bootstrap_servers, schema=SCHEMA, stop="latest", consumer_config=consumer_config
        )
        job = stream.write_kafka(
            sink_topic,
            kafka_broker.bootstrap_servers,
            producer_config=dict(SECRETS),
            config=rs.RunConfig(checkpoint_dir=str(checkpoints)),
        )
        texts = [repr(stream._node.source), repr(job.metrics()), str(job.metrics())]  # type: ignore[attr-defined]
        from raystream.sinks.kafka import KafkaSink

        texts.append(repr(KafkaSink(sink_topic, kafka_broker.bootstrap_servers, producer_config=dict(SECRETS))))
        with pytest.raises(rs.RaystreamError) as unreachable:
            rs.read_kafka("x", f"127.0.0.1:{free_loopback_port()}", consumer_config=consumer_config)
        with pytest.raises(rs.PlanError, match="consumer_config is not valid") as invalid:
            rs.read_kafka("x", kafka_broker.bootstrap_servers, consumer_config={**SECRETS, "socket.timeout.ms": "x"})
        KAFKA_LOG.error("a careless line quoting %s", SECRETS["sasl.password"])  # masked by the logger's filter
    assert "***" in repr(stream._node.source)  # type: ignore[attr-defined]
    assert len(read_back(kafka_broker, sink_topic)) == 100
    texts += [str(unreachable.value), repr(unreachable.value), str(invalid.value), caplog.text]
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        assert_no_secret(text)
    assert "a careless line quoting ***" in caplog.text
    captured = capfd.readouterr()
    assert_no_secret(captured.out + captured.err)
    for path in checkpoints.rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_bytes())
