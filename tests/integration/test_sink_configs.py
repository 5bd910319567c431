"""YAML sinks through ``raystream run``: kind kafka to the test broker, and the parquet sink's mode."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from raystream.cli import main

pytestmark = pytest.mark.usefixtures("ray_local")

ROOT = Path(__file__).resolve().parents[2]
WORDCOUNT = ROOT / "jobs" / "wordcount.py"
WORDS = ROOT / "jobs" / "data" / "words.txt"


def expected_counts() -> pd.DataFrame:
    """The job's answer from pandas: each word of the text file and how often it occurs."""
    words = [w for line in WORDS.read_text().splitlines() for w in re.split(r"[^a-z0-9']+", line.lower()) if w]
    counts = Counter(words)
    return pd.DataFrame({"word": list(counts), "count": list(counts.values())}).pipe(sort)


def sort(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["word", "count"]].astype({"count": "int64"}).sort_values("word").reset_index(drop=True)


def config(path: Path, sink: dict[str, Any]) -> Path:
    data = {"job": {"source": {"kind": "text", "path": str(WORDS)}}, "run": {"parallelism": 2}, "sink": sink}
    path.write_text(yaml.safe_dump(data))
    return path


def consume(bootstrap_servers: str, topic: str) -> list[Any]:
    """Every record of a one-partition topic: (key, JSON value)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": f"check-{topic}", "enable.partition.eof": True}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    records, ended, deadline = [], False, time.monotonic() + 30
    while not ended and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.5):
            if message.error() is None:
                records.append((message.key(), json.loads(message.value())))
            ended = ended or (message.error() is not None and message.error().code() == -191)  # _PARTITION_EOF
    consumer.close()
    return records


def test_a_yaml_kafka_sink_produces_the_jobs_output(kafka_broker: Any, new_topic: Any, tmp_path: Path) -> None:
    topic = new_topic(partitions=1)
    sink = {"kind": "kafka", "topic": topic, "bootstrap_servers": kafka_broker.bootstrap_servers, "key": "word"}
    assert main(["run", str(WORDCOUNT), "--config", str(config(tmp_path / "kafka.yaml", sink))]) == 0
    records = consume(kafka_broker.bootstrap_servers, topic)
    assert all(key == value["word"].encode() for key, value in records)
    pd.testing.assert_frame_equal(sort(pd.DataFrame([value for _, value in records])), expected_counts())


def test_a_yaml_parquet_sink_refuses_a_second_run_unless_its_mode_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    command = ["run", str(WORDCOUNT), "--config"]
    assert main([*command, str(config(tmp_path / "a.yaml", {"kind": "parquet", "path": str(out)}))]) == 0
    assert main([*command, str(config(tmp_path / "b.yaml", {"kind": "parquet", "path": str(out)}))]) == 2
    refused = f"raystream: error: write_parquet: '{out}' already holds the output of another job"
    assert refused in capsys.readouterr().err
    pd.testing.assert_frame_equal(sort(pd.read_parquet(out)), expected_counts())
    overwrite = config(tmp_path / "c.yaml", {"kind": "parquet", "path": str(out), "mode": "overwrite"})
    assert main([*command, str(overwrite)]) == 0
    pd.testing.assert_frame_equal(sort(pd.read_parquet(out)), expected_counts())


def test_a_yaml_with_sinks_writes_the_jobs_stream_into_each(kafka_broker: Any, new_topic: Any, tmp_path: Path) -> None:
    topic, out = new_topic(partitions=1), tmp_path / "counts"
    sinks = {
        "to_kafka": {"kind": "kafka", "topic": topic, "bootstrap_servers": kafka_broker.bootstrap_servers},
        "to_files": {"kind": "parquet", "path": str(out)},
    }
    data = {"job": {"source": {"kind": "text", "path": str(WORDS)}}, "run": {"parallelism": 2}, "sinks": sinks}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(data))
    assert main(["run", str(WORDCOUNT), "--config", str(tmp_path / "two.yaml")]) == 0
    records = consume(kafka_broker.bootstrap_servers, topic)
    pd.testing.assert_frame_equal(sort(pd.DataFrame([value for _, value in records])), expected_counts())
    pd.testing.assert_frame_equal(sort(pd.read_parquet(out)), expected_counts())


def test_a_job_that_builds_two_outputs_writes_each_into_its_named_sink(tmp_path: Path) -> None:
    job = tmp_path / "two_outputs.py"
    job.write_text(
        f"import sys\nsys.path.insert(0, {str(WORDCOUNT.parent)!r})\n"
        "import raystream as rs\nimport pyarrow.compute as pc\nfrom wordcount import Config, split_words\n\n\n"
        "def build(config: Config) -> dict[str, rs.Stream]:\n"
        "    words = config.source.build().map_batches(split_words)\n"
        "    long_words = words.filter(pc.greater(pc.utf8_length(pc.field('word')), 6))\n"
        "    return {'counts': words.key_by('word').agg(count=rs.count()), 'long_words': long_words}\n"
    )
    sinks = {name: {"kind": "parquet", "path": str(tmp_path / name)} for name in ("counts", "long_words")}
    data = {"job": {"source": {"kind": "text", "path": str(WORDS)}}, "run": {"parallelism": 2}, "sinks": sinks}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(data))
    assert main(["run", str(job), "--config", str(tmp_path / "two.yaml")]) == 0
    pd.testing.assert_frame_equal(sort(pd.read_parquet(tmp_path / "counts")), expected_counts())
    counts = expected_counts()
    expected = counts.loc[counts["word"].str.len() > 6].set_index("word")["count"].to_dict()
    long_words = pd.read_parquet(tmp_path / "long_words")["word"]
    assert Counter(long_words) == expected
