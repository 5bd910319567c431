"""Acceptance: read_kafka and write_kafka against a real Kafka-protocol broker (Tansu, started by a fixture)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from windows_oracle import normalized, out_of_order_events, windows_sql

import raystream as rs

pytestmark = pytest.mark.usefixtures("ray_local")

SCHEMA = pa.schema([("t", pa.int64()), ("k", pa.int64()), ("v", pa.int64())])
WINDOW = rs.Tumbling("10s")


def to_json_lines(events: pd.DataFrame) -> list[str]:
    """One JSON object per event; the column-wise dump is vectorized by pandas."""
    return events.to_json(orient="records", lines=True).splitlines()


def produce_by_partition(broker: Any, topic: str, events: pd.DataFrame, partitions: int) -> None:
    """Events dealt round-robin to partitions, in arrival (out-of-order) sequence, Kafka time = event time."""
    lines = to_json_lines(events)
    times = events["t"].tolist()
    for p in range(partitions):
        for chunk in range(p, len(lines), partitions * 5_000):  # several record batches per partition
            rows = range(chunk, min(chunk + partitions * 5_000, len(lines)), partitions)
            broker.produce(topic, [lines[i] for i in rows], partition=p, timestamps_ms=[times[i] for i in rows])


def end_markers(broker: Any, topic: str, partitions: int, at_ms: int) -> datetime:
    """A record at ``at_ms`` in every partition, so that stop=<that time> ends each one; returns the stop time."""
    for p in range(partitions):
        broker.produce(topic, [json.dumps({"t": at_ms, "k": -1, "v": 0})], partition=p, timestamps_ms=[at_ms])
    return datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc)


def windowed(stream: rs.Stream) -> pd.DataFrame:
    counts = stream.with_watermark("t", delay="5s").key_by("k").window(WINDOW)
    return counts.agg(n=rs.count(), s=rs.sum("v"), m=rs.max("v")).to_pandas(rs.RunConfig(parallelism=2))


def test_windows_over_kafka_equal_parquet_and_duckdb(kafka_broker: Any, new_topic: Any, tmp_path: Path) -> None:
    events = out_of_order_events(100_000, keys=20, max_disorder_ms=2_000, seed=4)
    topic = new_topic(partitions=4)
    produce_by_partition(kafka_broker, topic, events, 4)
    stop = end_markers(kafka_broker, topic, 4, int(events["t"].max()) + 60_000)
    pq.write_table(pa.Table.from_pandas(events, preserve_index=False), tmp_path / "events.parquet")

    from_kafka = windowed(
        rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, time_column="t", stop=stop)
    )
    from_parquet = windowed(rs.read_parquet(str(tmp_path / "events.parquet"), time_column="t"))
    expected = normalized(windows_sql(events, WINDOW))
    pd.testing.assert_frame_equal(normalized(from_kafka), expected)
    pd.testing.assert_frame_equal(normalized(from_parquet), expected)


def test_unbounded_run_sees_new_events_within_seconds_and_stops_cleanly(kafka_broker: Any, new_topic: Any) -> None:
    topic = new_topic(partitions=2)
    stream = rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, time_column="t")
    job = stream.key_by("k").agg(n=rs.count()).start(rs.RunConfig(parallelism=2, max_batch_rows=1000))
    try:
        for round_ in range(1, 4):
            produced_at = time.monotonic()
            kafka_broker.produce(topic, [json.dumps({"t": i, "k": i % 3, "v": 1}) for i in range(300)])
            while job.results().get("n", pd.Series(dtype=int)).sum() < 300 * round_:
                assert time.monotonic() - produced_at < 10, job.metrics()
                time.sleep(0.05)
        assert job.status() == "running"
    finally:
        job.stop()
    assert job.status() == "stopped"
    assert job.results().set_index("k")["n"].to_dict() == {0: 300, 1: 300, 2: 300}
    splits = job.metrics()["splits"]
    assert set(splits) == {f"{topic}/0", f"{topic}/1"}
    assert all(entry["lag"] == 0 for entry in splits.values()), splits
    assert sum(entry["rows"] for entry in splits.values()) == 900


def test_malformed_records_go_to_dead_letters_with_their_offsets(kafka_broker: Any, new_topic: Any) -> None:
    topic = new_topic(partitions=4)
    rng = np.random.default_rng(2)
    lines = to_json_lines(pd.DataFrame({"t": np.arange(4000), "k": rng.integers(0, 7, 4000), "v": np.ones(4000, int)}))
    bad = set(rng.choice(4000, 40, replace=False).tolist())  # 1%
    garbage = ['{"t": 1, "k":', "not json at all", '{"t": "yesterday", "k": 1, "v": 1}', ""]
    values = [garbage[i % len(garbage)] if i in bad else line for i, line in enumerate(lines)]
    delivered = kafka_broker.produce(topic, values, keys=[str(i) for i in range(4000)])
    where = {delivered[i]: i for i in range(4000)}
    stop = end_markers(kafka_broker, topic, 4, 4_102_444_800_000)  # 2100: after every record's produce time

    stream = rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, time_column="t", stop=stop)
    job = stream.filter(lambda t: pa.compute.not_equal(t["k"], -1)).key_by("k").agg(n=rs.count()).start()
    job.wait(120)
    letters = job.dead_letters()
    assert list(letters.columns) == ["source", "split_id", "position", "raw", "error"]
    places = [(int(s.rsplit("/", 1)[1]), o) for s, o in zip(letters["split_id"], letters["position"], strict=True)]
    assert sorted(where[place] for place in places) == sorted(bad)
    assert letters["split_id"].str.startswith(f"{topic}/").all() and letters["error"].str.len().min() > 0
    assert {bytes(v).decode() for v in letters["raw"]} <= set(garbage) and (letters["source"] == "source").all()
    good = pd.DataFrame([json.loads(line) for i, line in enumerate(lines) if i not in bad])
    assert job.results().set_index("k")["n"].sort_index().to_dict() == good.groupby("k").size().to_dict()
    assert job.metrics()["dead_letters"] == len(bad)

    # errors="fail" names the topic, the partition and the offset.
    strict = rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, stop=stop, errors="fail")
    with pytest.raises(rs.RaystreamError, match=rf"record {topic}/\d at offset \d+ cannot be decoded"):
        strict.to_pandas()


def test_dead_letters_are_a_stream_for_any_sink(kafka_broker: Any, new_topic: Any, tmp_path: Path) -> None:
    topic = new_topic(partitions=1)
    kafka_broker.produce(topic, ['{"t": 1, "k": 1, "v": 1}', "oops", '{"t": 2, "k": 1, "v": 1}'])
    stream = rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, stop="latest")
    stream.dead_letters().write_parquet(str(tmp_path / "dead"))
    letters = pq.read_table(tmp_path / "dead").to_pylist()
    assert [(r["raw"], r["split_id"], r["position"]) for r in letters] == [(b"oops", f"{topic}/0", 1)]


def test_write_kafka_round_trip_every_row_once_keyed(kafka_broker: Any, new_topic: Any) -> None:
    out = new_topic(partitions=3)
    frame = pd.DataFrame({"user": [f"u{i % 50}" for i in range(5000)], "n": np.arange(5000)})
    rs.from_pandas(frame).write_kafka(
        out, kafka_broker.bootstrap_servers, key="user", config=rs.RunConfig(max_batch_rows=700)
    )
    back = rs.read_kafka(out, kafka_broker.bootstrap_servers, format="raw", stop="latest").to_pandas()
    assert len(back) == 5000
    decoded = pd.DataFrame([json.loads(v) for v in back["value"]])
    assert sorted(decoded["n"]) == list(range(5000))  # every row once
    assert (back["key"].map(bytes.decode) == decoded["user"]).all()  # keyed as asked
    assert back.groupby("key")["partition"].nunique().max() == 1  # one key, one partition


def test_a_missing_topic_and_an_unreachable_broker_are_clear_errors(kafka_broker: Any) -> None:
    with pytest.raises(rs.RaystreamError, match="topic 'no-such-topic' not found on 127.0.0.1"):
        rs.read_kafka("no-such-topic", kafka_broker.bootstrap_servers)
    from kafka_broker import free_loopback_port

    started = time.monotonic()
    with pytest.raises(rs.RaystreamError, match=r"cannot reach Kafka at 127\.0\.0\.1:\d+ within 10s"):
        rs.read_kafka("clicks", f"127.0.0.1:{free_loopback_port()}")
    assert time.monotonic() - started < 30


class GrowingSource(rs.Source):
    """Like a topic that gains partitions while a job runs: splits() returns one more split per call."""

    name = "growing"
    bounded = False
    discovers_splits = True
    discovery_interval_s = 0.2

    def __init__(self) -> None:
        self.calls = 0

    def schema(self) -> pa.Schema:
        return pa.schema([("k", pa.int64())])

    def splits(self, parallelism: int) -> list[rs.Split]:
        self.calls += 1
        return [rs.Split(f"part-{i}", i) for i in range(min(self.calls, 3))]

    def open_split(self, split: rs.Split, position: Any) -> rs.SplitReader:
        return _OneRowReader(split.payload, position)


class _OneRowReader(rs.SplitReader):
    def __init__(self, key: int, position: Any) -> None:
        self.key, self.sent = key, bool(position)

    def next_batch(self, max_rows: int) -> pa.Table:
        if self.sent:
            time.sleep(0.01)
            return pa.table({"k": pa.array([], pa.int64())})
        self.sent = True
        return pa.table({"k": [self.key]})

    def position(self) -> bool:
        return self.sent


def test_new_splits_are_picked_up_while_running() -> None:
    """New Kafka partitions arrive as new splits. Tansu has no CreatePartitions, so a growing source stands in."""
    job = rs.from_source(GrowingSource()).key_by("k").agg(n=rs.count()).start(rs.RunConfig(parallelism=2))
    try:
        deadline = time.monotonic() + 30
        while len(job.results()) < 3:
            assert time.monotonic() < deadline, job.metrics()
            time.sleep(0.05)
    finally:
        job.stop()
    assert set(job.metrics()["splits"]) == {"part-0", "part-1", "part-2"}
    assert job.results().set_index("k")["n"].to_dict() == {0: 1, 1: 1, 2: 1}


def test_kafka_splits_are_the_topic_partitions(kafka_broker: Any, new_topic: Any) -> None:
    from raystream.sources.kafka import KafkaSource

    topic = new_topic(partitions=3)
    source = KafkaSource(topic, kafka_broker.bootstrap_servers, schema=SCHEMA)
    assert source.discovers_splits and not source.bounded
    assert [s.split_id for s in source.splits(2)] == [f"{topic}/0", f"{topic}/1", f"{topic}/2"]


def test_group_offsets_are_published_for_monitoring_only(kafka_broker: Any, new_topic: Any) -> None:
    from confluent_kafka import Consumer, TopicPartition

    topic = new_topic(partitions=2)
    kafka_broker.produce(topic, [json.dumps({"t": i, "k": 1, "v": 1}) for i in range(100)], partition=0)
    group = f"monitor-{topic}"
    rs.read_kafka(
        topic, kafka_broker.bootstrap_servers, schema=SCHEMA, stop="latest", consumer_config={"group.id": group}
    ).to_pandas()
    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap_servers, "group.id": group})
    try:
        committed = consumer.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    finally:
        consumer.close()
    assert committed[0].offset == 100


def test_demo_job_reads_kafka_with_its_live_config(
    kafka_broker: Any, new_topic: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """configs/clicks-live.yaml runs the unchanged demo job on a topic, with the same answer as in memory."""
    import yaml

    from raystream.cli import load_job, main

    root = Path(__file__).resolve().parents[2]
    clicks_job = load_job(root / "jobs" / "clicks.py")
    topic = new_topic(partitions=2)
    clicks_job.produce_clicks(kafka_broker.bootstrap_servers, topic, events=5000)
    config = yaml.safe_load((root / "configs" / "clicks-live.yaml").read_text())
    config["job"]["source"].update(topics=[topic], bootstrap_servers=kafka_broker.bootstrap_servers, stop="latest")
    config["sink"]["num_rows"] = 100
    live = tmp_path / "live.yaml"
    live.write_text(yaml.safe_dump(config))
    assert main(["run", str(root / "jobs" / "clicks.py"), "--config", str(live)]) == 0
    printed = capsys.readouterr().out

    expected = clicks_job.build(clicks_job.Config(events=5000)).to_pandas()
    for row in expected.itertuples():
        assert f"{row.user}" in printed and f" {row.clicks} " in printed


def test_readme_kafka_example_runs(kafka_broker: Any) -> None:
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (example,) = re.findall(r"```python kafka\n(.*?)```", readme, flags=re.DOTALL)
    kafka_broker.create_topic("clicks", partitions=2)
    code = example.replace('"localhost:9092"', repr(kafka_broker.bootstrap_servers))
    namespace = {"rs": rs, "pa": pa, "__name__": "__readme__"}
    exec(compile(code, "README.md", "exec"), namespace)
    # Each partition holds whole users, or none (then it stops holding the watermark after 10 s): 27 windows fire.
    results = namespace["job"].results()
    assert len(results) == 27 and set(results["clicks"]) == {20}


def test_start_positions(kafka_broker: Any, new_topic: Any) -> None:
    topic = new_topic(partitions=2)
    old = [json.dumps({"t": i, "k": 0, "v": i}) for i in range(10)]
    at = [1_000 * (i + 1) for i in range(10)]  # record i at (i + 1) s; librdkafka reads a timestamp of 0 as "now"
    kafka_broker.produce(topic, old, partition=0, timestamps_ms=at)
    kafka_broker.produce(topic, old, partition=1, timestamps_ms=at)

    def values(**options: Any) -> list[int]:
        stream = rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, stop="latest", **options)
        return sorted(stream.to_pandas()["v"].tolist())

    assert values() == sorted(list(range(10)) * 2)
    assert values(start={0: 7, 1: 9}) == [7, 8, 9, 9]  # explicit offsets per partition
    since = datetime.fromtimestamp(7, tz=timezone.utc)  # records before 7 s (values 0 to 5) are skipped
    assert values(start=since) == [6, 6, 7, 7, 8, 8, 9, 9]

    # start="latest": only what arrives after the job starts.
    stream = rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, start="latest", time_column="t")
    job = stream.key_by("k").agg(total=rs.sum("v")).start(rs.RunConfig(parallelism=1))
    try:
        deadline = time.monotonic() + 20
        while len(job.metrics()["splits"]) < 2:  # both partitions polled: "latest" is fixed
            assert time.monotonic() < deadline
            time.sleep(0.05)
        kafka_broker.produce(topic, [json.dumps({"t": 99, "k": 0, "v": 1000})], partition=1)
        while job.results().get("total", pd.Series(dtype=int)).sum() < 1000:
            assert time.monotonic() < deadline, job.metrics()
            time.sleep(0.05)
    finally:
        job.stop()
    assert job.results()["total"].tolist() == [1000]


def test_a_delivery_error_fails_the_epoch_with_the_brokers_message(kafka_broker: Any, new_topic: Any) -> None:
    topic = new_topic(partitions=1)
    frame = pd.DataFrame({"payload": ["x" * 5000]})
    with pytest.raises(rs.RaystreamError, match=r"write_kafka: 1 of 1 records to .* failed in epoch 1: .*size"):
        rs.from_pandas(frame).write_kafka(
            topic, kafka_broker.bootstrap_servers, producer_config={"message.max.bytes": 2000}
        )


def test_a_broker_gone_for_longer_than_reconnect_timeout_fails_the_job_naming_it(tmp_path: Path) -> None:
    from kafka_broker import start_broker

    broker = start_broker(tmp_path)
    try:
        topic = broker.create_topic("doomed", partitions=1)
        broker.produce(topic, [json.dumps({"t": 1, "k": 1, "v": 1})])
        stream = rs.read_kafka(topic, broker.bootstrap_servers, schema=SCHEMA, time_column="t", reconnect_timeout="2s")
        job = stream.key_by("k").agg(n=rs.count()).start(rs.RunConfig(parallelism=1))
        deadline = time.monotonic() + 20
        while len(job.results()) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        broker.stop()
    with pytest.raises(
        rs.RaystreamError,
        match=r"read_kafka: reading doomed/0: Kafka at 127\.0\.0\.1:\d+ has been unreachable for \d+s, longer than "
        r"reconnect_timeout=2s",
    ):
        job.wait(timeout=60)


def test_a_tombstone_and_a_record_of_two_values_are_dead_letters_and_times_stay_with_their_records(
    kafka_broker: Any, new_topic: Any
) -> None:
    topic = new_topic(partitions=1)
    two = '{"t": 2, "k": 2, "v": 20}{"t": 3, "k": 3, "v": 30}'
    values = ['{"t": 1, "k": 1, "v": 10}', None, two, '{"t": 4, "k": 4}']
    times = [1_000, 2_000, 3_000, 4_000]
    # ONE record batch: the tombstone used to vanish and the two values to become two rows, so the 4 rows
    # matched the 4 records and the third row took the tombstone's timestamp.
    delivered = kafka_broker.produce(topic, values, partition=0, timestamps_ms=times, keys=["a", "b", "c", "d"])
    assert [offset for _, offset in delivered] == [0, 1, 2, 3]
    job = rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, stop="latest").start()
    job.wait(60)

    good = [json.loads(values[i]) | {"timestamp": times[i]} for i in (0, 3)]  # the oracle: json, then pandas
    expected = pd.DataFrame(good, columns=[*SCHEMA.names, "timestamp"]).astype({"v": "Int64"})
    expected["timestamp"] = pd.to_datetime(expected["timestamp"], unit="ms", utc=True)
    rows = job.results().astype({"v": "Int64"})
    pd.testing.assert_frame_equal(rows.sort_values("t", ignore_index=True), expected, check_dtype=False)
    letters = job.dead_letters().sort_values("position", ignore_index=True)
    assert letters["position"].tolist() == [1, 2]
    assert letters["raw"].tolist() == [None, values[2].encode()]
    assert letters["error"][0] == "tombstone: the record has no value"
    assert "more than one JSON value" in letters["error"][1]
    assert (letters["split_id"] == f"{topic}/0").all()

    strict = rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=SCHEMA, stop="latest", errors="fail")
    with pytest.raises(rs.RaystreamError, match=rf"record {topic}/0 at offset 1 cannot be decoded.*tombstone"):
        strict.to_pandas()


def test_invalid_utf8_in_a_string_is_a_dead_letter_and_never_reaches_the_shuffle_or_parquet(
    kafka_broker: Any, new_topic: Any, tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    schema = pa.schema([("t", pa.int64()), ("user", pa.string())])
    values = [b'{"t": %d, "user": "u%d"}' % (i, i % 5) for i in range(200)]
    bad = {
        17: b'{"t": 17, "user": "caf\xe9"}',  # latin-1
        99: b'{"t": 99, "user": "\xff\xfe"}',
        150: b'{"t": 150, "user": "\\udc00"}',  # an unpaired surrogate escape
    }
    for i, value in bad.items():
        values[i] = value
    delivered = kafka_broker.produce(topic, values, keys=[str(i) for i in range(200)])
    which = {delivered[i]: i for i in range(200)}
    good = pd.DataFrame([json.loads(v) for i, v in enumerate(values) if i not in bad])

    # key_by hashes the strings: an invalid one used to fail the shuffle ("this is a raystream bug").
    stream = rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=schema, time_column="t", stop="latest")
    job = stream.key_by("user").agg(n=rs.count()).start(rs.RunConfig(parallelism=2))
    job.wait(60)
    counts = job.results().set_index("user")["n"].sort_index()
    pd.testing.assert_series_equal(counts, good.groupby("user").size().rename("n"), check_dtype=False)
    letters = job.dead_letters()
    places = [(int(s.rsplit("/", 1)[1]), o) for s, o in zip(letters["split_id"], letters["position"], strict=True)]
    assert sorted(which[place] for place in places) == sorted(bad)
    assert letters["error"].str.contains("UTF-8|surrogate").all(), letters["error"].tolist()

    # Without key_by the strings used to reach the Parquet files.
    stream.write_parquet(str(tmp_path / "out"))
    written = pq.read_table(tmp_path / "out")
    written.validate(full=True)
    assert sorted(written.column("t").to_pylist()) == sorted(good["t"])

    strict = rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=schema, stop="latest", errors="fail")
    with pytest.raises(rs.RaystreamError, match=rf"record {topic}/\d at offset \d+ cannot be decoded.*(UTF-8|surr)"):
        strict.to_pandas()


def test_inferred_schema_is_fixed_by_the_first_records_and_a_record_of_another_type_is_a_dead_letter(
    kafka_broker: Any, new_topic: Any
) -> None:
    topic = new_topic(partitions=1)
    values = [json.dumps({"t": i, "k": i % 3, "v": i}) for i in range(60)]
    values[41] = json.dumps({"t": "yesterday", "k": 1, "v": 41})  # used to fail: "Unable to merge ... int64 vs string"
    kafka_broker.produce(topic, values, partition=0)
    stream = rs.read_kafka(topic, kafka_broker.bootstrap_servers, time_column="t", stop="latest")
    assert stream.schema == SCHEMA
    job = stream.key_by("k").agg(n=rs.count(), s=rs.sum("v")).start()
    job.wait(60)
    good = pd.DataFrame([json.loads(v) for i, v in enumerate(values) if i != 41])
    expected = good.groupby("k").agg(n=("v", "size"), s=("v", "sum"))
    pd.testing.assert_frame_equal(job.results().set_index("k").sort_index(), expected, check_dtype=False)
    (letter,) = job.dead_letters().to_dict("records")
    assert letter["position"] == 41 and letter["split_id"] == f"{topic}/0"
    assert letter["error"].startswith("column 't' is string in this record but int64 in the schema")

    # Every reader decodes with the schema inferred on the driver, so a topic with no record yet has none.
    empty = new_topic(partitions=1)
    with pytest.raises(rs.PlanError, match=r"cannot infer the JSON schema.*no JSON object yet; pass schema="):
        rs.read_kafka(empty, kafka_broker.bootstrap_servers)
