"""Acceptance: checkpoints make the output exact through driver kills, actor kills, rescaling and bad checkpoints."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from job_process import kill_at_random_checkpoints, last_commit, run_job_process
from windows_oracle import normalized, out_of_order_events, windows_sql

import raystream as rs
import raystream.testing

pytestmark = pytest.mark.usefixtures("ray_local")

HERE = Path(__file__).resolve().parent
JOB = HERE / "checkpointed_job.py"


def written(folder: Path) -> pd.DataFrame:
    """Every row of a Parquet output, normalized for comparison (duplicates kept: they must not exist)."""
    return normalized(pq.read_table(folder).to_pandas())


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    frame = out_of_order_events(60_000, keys=10, max_disorder_ms=2_000, seed=8)
    folder = tmp_path_factory.mktemp("events")
    for part in range(3):  # three files, so there are several splits
        chunk = frame.iloc[part * 20_000 : (part + 1) * 20_000]
        pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), folder / f"part-{part}.parquet")
    return folder, frame


def run_job(args: list[str], kill_when: Callable[[], bool] | None = None) -> bool:
    """Run checkpointed_job.py with ``args``; see :func:`job_process.run_job_process`."""
    return run_job_process(JOB, args, kill_when)


def test_driver_killed_three_times_then_finished_gives_the_uninterrupted_output(
    events: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    folder, frame = events
    expected = normalized(windows_sql(frame, rs.Tumbling("10s")))
    out, checkpoints = tmp_path / "out", tmp_path / "checkpoints"
    args = [str(folder), str(out), str(checkpoints), "--delay", "0.1"]
    kill_at_random_checkpoints(JOB, args, checkpoints, seed=5)
    assert last_commit(checkpoints) > 0
    assert run_job(args)
    pd.testing.assert_frame_equal(written(out), expected)


def slowly(batch: pa.Table) -> pa.Table:
    time.sleep(0.02)
    return batch


def windowed(table: pa.Table) -> rs.Stream:
    events = rs.from_arrow(table, time_column="t").map_batches(slowly, schema=table.schema)
    windows = events.with_watermark("t", delay="5s").key_by("k").window(rs.Tumbling("10s"))
    return windows.agg(n=rs.count(), s=rs.sum("v"), m=rs.max("v"))


def test_a_killed_partition_actor_is_recovered_inside_the_job(
    events: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    _, frame = events
    table = pa.Table.from_pandas(frame, preserve_index=False)
    config = rs.RunConfig(parallelism=2, max_batch_rows=2_000, checkpoint_dir=str(tmp_path / "ck"))
    job = windowed(table).write_parquet(str(tmp_path / "out"), config, wait=False)
    deadline = time.monotonic() + 60
    while job.metrics()["epochs_completed"] < 5:
        assert time.monotonic() < deadline and job.status() == "running", job.metrics()
        time.sleep(0.05)
    ray.kill(job._coordinator.stage_actors["window"][1], no_restart=True)
    job.wait(timeout=240)
    assert job.status() == "finished"
    assert job._coordinator.recoveries == 1
    pd.testing.assert_frame_equal(written(tmp_path / "out"), normalized(windows_sql(frame, rs.Tumbling("10s"))))


def test_restoring_with_another_parallelism_gives_the_same_result(
    events: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    _, frame = events
    table = pa.Table.from_pandas(frame, preserve_index=False)
    checkpoints, out = str(tmp_path / "ck"), str(tmp_path / "out")
    for parallelism in (2, 4):  # run part of the input at each parallelism, then stop
        config = rs.RunConfig(parallelism=parallelism, max_batch_rows=2_000, checkpoint_dir=checkpoints)
        job = windowed(table).write_parquet(out, config, wait=False)
        target = job.metrics()["epochs_completed"] + 4
        while job.metrics()["epochs_completed"] < target and job.status() == "running":
            time.sleep(0.02)
        job.stop()
    windowed(table).write_parquet(out, rs.RunConfig(parallelism=1, max_batch_rows=2_000, checkpoint_dir=checkpoints))
    pd.testing.assert_frame_equal(written(tmp_path / "out"), normalized(windows_sql(frame, rs.Tumbling("10s"))))


def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(
    events: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    _, frame = events
    table = pa.Table.from_pandas(frame, preserve_index=False)
    checkpoints, out = tmp_path / "ck", str(tmp_path / "out")
    config = rs.RunConfig(parallelism=2, max_batch_rows=2_000, checkpoint_dir=str(checkpoints))
    job = windowed(table).write_parquet(out, config, wait=False)
    while job.metrics()["epochs_completed"] < 6 and job.status() == "running":
        time.sleep(0.02)
    job.stop()
    newest = sorted((checkpoints / "commits").iterdir())[-1]
    record = json.loads(newest.read_text())
    newest.write_text(json.dumps(record)[:-20])  # truncated
    with pytest.warns(RuntimeWarning, match=rf"skipping commit .*{newest.name}"):
        windowed(table).write_parquet(out, config)
    pd.testing.assert_frame_equal(written(tmp_path / "out"), normalized(windows_sql(frame, rs.Tumbling("10s"))))


def test_a_checkpoint_of_another_pipeline_is_refused(tmp_path: Path) -> None:
    table = pa.table({"t": np.arange(1000), "k": np.arange(1000) % 3, "v": np.ones(1000, dtype=np.int64)})
    config = rs.RunConfig(max_batch_rows=500, checkpoint_dir=str(tmp_path / "ck"))
    rs.from_arrow(table).key_by("k").agg(n=rs.count()).write_parquet(str(tmp_path / "a"), config)
    with pytest.raises(rs.RaystreamError, match="was written by a different pipeline"):
        rs.from_arrow(table).key_by("v").agg(n=rs.count()).write_parquet(str(tmp_path / "b"), config)


def test_a_source_that_cannot_replay_is_refused_at_once() -> None:
    with pytest.raises(rs.PlanError, match="read_socket is not replayable"):
        rs.read_socket("127.0.0.1", 9).start(rs.RunConfig(checkpoint_dir="memory://never"))


def test_read_state_and_inspect_show_the_keys_and_open_windows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raystream.cli import main

    # Key "a" has a window that can still change; key "b" only closed ones.
    events = pa.table(
        {
            "t": np.array([1_000, 2_000, 11_000, 12_000, 95_000], dtype=np.int64),
            "k": ["a", "b", "b", "a", "a"],
            "v": np.array([1, 2, 3, 4, 5], dtype=np.int64),
        }
    )
    source = rs.testing.TestSource().add_batch(events)  # unbounded: no end, so windows stay open
    stream = source.stream(time_column="t").with_watermark("t", delay="60s")
    windows = stream.key_by("k").window(rs.Tumbling("10s")).agg(n=rs.count(), total=rs.sum("v"), name="per_key")
    checkpoints = str(tmp_path / "ck")
    job = windows.start(rs.RunConfig(parallelism=2, checkpoint_dir=checkpoints))
    deadline = time.monotonic() + 60
    # One epoch reads the batch; the epochs after it read nothing and are not run (nor checkpointed).
    while job.metrics()["epochs_completed"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job.stop()

    state = rs.read_state(checkpoints).sort_values(["k", "window_start"]).reset_index(drop=True)
    # The watermark is 95 s - 60 s = 35 s: windows ending by then fired and were freed.
    assert state[["k", "window_start", "window_end", "n", "total"]].to_dict("records") == [
        {"k": "a", "window_start": 90_000, "window_end": 100_000, "n": 1, "total": 5},
    ]
    assert rs.read_state(checkpoints, operator="per_key").shape == state.shape

    assert main(["checkpoints", "inspect", checkpoints]) == 0
    printed = capsys.readouterr().out
    assert "last committed epoch:" in printed
    assert "test-0: 1" in printed  # the split's position: one step of the script read
    assert "watermark: 1970-01-01T00:00:35+00:00 (35000 ms)" in printed
    assert "per_key: 1 rows in 1 files" in printed


def test_kafka_job_resumes_from_its_checkpointed_offsets_not_the_consumer_group(
    kafka_broker: Any, new_topic: Any, tmp_path: Path
) -> None:
    from confluent_kafka import Consumer, TopicPartition

    frame = out_of_order_events(30_000, keys=10, max_disorder_ms=2_000, seed=12)
    topic = new_topic(partitions=2)
    lines = frame.to_json(orient="records", lines=True).splitlines()
    for p in range(2):
        rows = range(p, len(lines), 2)
        kafka_broker.produce(
            topic, [lines[i] for i in rows], partition=p, timestamps_ms=[int(frame["t"][i]) for i in rows]
        )
    stop_ms = int(frame["t"].max()) + 60_000
    for p in range(2):
        kafka_broker.produce(topic, ['{"t": 0, "k": -1, "v": 0}'], partition=p, timestamps_ms=[stop_ms])
    group = f"misleading-{topic}"
    out, checkpoints = tmp_path / "out", tmp_path / "checkpoints"
    args = [topic, str(out), str(checkpoints), "--kafka", kafka_broker.bootstrap_servers, "--stop-ms", str(stop_ms)]
    args += ["--group", group, "--delay", "0.1"]
    assert not run_job(args, kill_when=lambda: (checkpoints / "commits").exists() and last_commit(checkpoints) >= 3)
    # Move the group to the end of the topic: a job that trusted the group would skip what it had not read.
    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap_servers, "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, p, 15_001) for p in range(2)], asynchronous=False)
    consumer.close()
    assert run_job(args)
    pd.testing.assert_frame_equal(written(out), normalized(windows_sql(frame, rs.Tumbling("10s"))))


def read_committed(bootstrap_servers: str, topic: str, partitions: int) -> list[bytes]:
    """Every record of ``topic`` that a read_committed consumer sees."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"check-{topic}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values, ended, deadline = [], set(), time.monotonic() + 30
    while len(ended) < partitions and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.5):
            if message.error() is None:
                values.append(message.value())
            elif message.error().code() == -191:  # _PARTITION_EOF
                ended.add(message.partition())
    consumer.close()
    return values


def test_transactional_kafka_sink_has_no_duplicates_after_a_crash_and_restart(
    kafka_broker: Any, new_topic: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raystream.runtime.checkpointing import Checkpointing

    table = pa.table({"t": np.arange(20_000, dtype=np.int64), "k": np.arange(20_000) % 7, "v": np.arange(20_000)})
    out = new_topic(partitions=2)
    config = rs.RunConfig(parallelism=2, max_batch_rows=1_000, checkpoint_dir=str(tmp_path / "ck"))

    def run() -> None:
        rs.from_arrow(table).with_columns(w=pa.compute.field("v") * 2).write_kafka(
            out, kafka_broker.bootstrap_servers, config=config, transactional_id=f"tx-{out}"
        )

    # Crash right after epoch 4's transaction committed and before its checkpoint: the worst moment.
    real_commit = Checkpointing.commit

    def crash_at_4(self: Checkpointing, epoch: int, *args: Any) -> None:
        if epoch == 4:
            raise KeyboardInterrupt("the driver dies here")
        real_commit(self, epoch, *args)

    monkeypatch.setattr(Checkpointing, "commit", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.undo()
    run()  # restarts from checkpoint 3 and replays epoch 4, whose transaction is already committed

    rows = [json.loads(v)["v"] for v in read_committed(kafka_broker.bootstrap_servers, out, 2)]
    assert len(rows) == 20_000 and sorted(rows) == list(range(20_000))


def test_checkpoint_interval_and_pruning(tmp_path: Path) -> None:
    table = pa.table({"k": np.arange(20_000) % 5, "v": np.ones(20_000, dtype=np.int64)})
    hourly = rs.RunConfig(max_batch_rows=1_000, checkpoint_dir=str(tmp_path / "hourly"), checkpoint_interval="1h")
    job = rs.from_arrow(table).key_by("k").agg(n=rs.count()).write_parquet(str(tmp_path / "a"), hourly)
    last = job.metrics()["epochs_completed"]  # epochs are numbered from 1
    assert last > 5
    # Within the hour only the start (0) and the end of the input are checkpointed.
    assert [int(p.stem) for p in sorted((tmp_path / "hourly" / "commits").glob("*.json"))] == [0, last]

    every = rs.RunConfig(max_batch_rows=1_000, checkpoint_dir=str(tmp_path / "every"), checkpoints_to_keep=2)
    rs.from_arrow(table).key_by("k").agg(n=rs.count()).write_parquet(str(tmp_path / "b"), every)
    assert [int(p.stem) for p in sorted((tmp_path / "every" / "commits").glob("*.json"))] == [last - 1, last]
    assert rs.read_state(str(tmp_path / "every"))["n"].sum() == 20_000
