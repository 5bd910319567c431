"""What a job says about its event time: null times, a stuck watermark, a leap, and an idle job writing nothing."""

from __future__ import annotations

import io
import logging
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raystream as rs
from raystream.testing import ListSink, TestSource

pytestmark = pytest.mark.usefixtures("ray_local")

T0 = datetime(2026, 3, 1, 12, 0, 0)
ONE = rs.RunConfig(parallelism=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_rows_without_an_event_time_are_dead_letters_not_late_rows() -> None:
    times = [at(1), None, at(2), None, at(12)]
    frame = pd.DataFrame({"user": list("abcde"), "ts": pd.array(times, dtype="datetime64[ms]")})
    windows = rs.from_pandas(frame, time_column="ts").key_by("user").window(rs.Tumbling("10s")).agg(n=rs.count())
    job = windows.start(ONE)
    job.wait(60)
    metrics = job.metrics()
    assert metrics["null_time_rows"] == 2 and metrics["late_rows"] == 0
    assert sorted(job.results()["user"]) == ["a", "c", "e"]
    letters = job.dead_letters()
    assert sorted(letters["error"]) == ["no event time: column 'ts' is null"] * 2
    rows = pd.read_json(io.StringIO("\n".join(v.decode() for v in letters["raw"])), lines=True)
    assert sorted(rows["user"]) == ["b", "d"]
    assert set(letters["split_id"]) <= {s for s in metrics["splits"]}
    assert (letters["source"] == "source").all() and letters["position"].isna().all()  # no line of their own

    # The dead letters are a stream for any sink too.
    assert len(windows.dead_letters().to_pandas(ONE)) == 2


def test_the_watermark_is_none_until_there_is_one_and_each_split_shows_its_own() -> None:
    source = TestSource(splits=2).add_batch([{"ts": at(5), "user": "a"}], split=0)
    source.pause(0.5, split=0)
    stream = source.stream(time_column="ts").with_watermark("ts", delay="1s")
    job = stream.key_by("user").window(rs.Tumbling("10s")).agg(n=rs.count()).start(ONE)
    try:
        deadline = time.monotonic() + 30
        while job.metrics()["epochs_completed"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        metrics = job.metrics()
        assert metrics["watermark_ms"] is None  # split 1 has shown nothing: there is no watermark yet
        assert metrics["watermark_held_by"] == "test-1"
        assert metrics["splits"]["test-0"]["watermark_ms"] == int(at(4).timestamp() * 1000)
        assert metrics["splits"]["test-1"]["watermark_ms"] is None
    finally:
        job.stop()


def test_a_split_that_holds_the_watermark_back_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    source = TestSource(splits=2)
    for second in range(0, 40, 5):
        source.add_batch([{"ts": at(second), "user": "a"}], split=0).pause(0.1, split=0)
    stream = source.stream(time_column="ts")
    config = rs.RunConfig(parallelism=1, watermark_stall_warning="500ms")
    with caplog.at_level(logging.WARNING, logger="raystream"):
        job = stream.key_by("user").window(rs.Tumbling("10s")).agg(n=rs.count()).start(config)
        try:
            deadline = time.monotonic() + 30
            while "held the watermark back" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.05)
        finally:
            job.stop()
    assert "split 'test-1' has held the watermark back" in caplog.text
    assert "has produced no event yet" in caplog.text


class _QuietSplits(TestSource):
    """A TestSource whose splits that never produce stop holding the watermark, as Kafka partitions do."""

    new_split_idle_timeout_ms = 300


def test_a_split_that_never_produces_does_not_hold_windows_back_when_the_source_says_so() -> None:
    def emitted(source: TestSource, want: int) -> list[float]:
        for second in range(0, 40, 5):
            source.add_batch([{"ts": at(second), "user": "a"}], split=0).pause(0.1, split=0)
        sink = ListSink()
        stream = source.stream(time_column="ts").key_by("user").window(rs.Tumbling("10s")).agg(n=rs.count())
        job = stream.write(sink, ONE, wait=False)
        try:
            # Wait for the windows the quiet source lets through, not for a fixed time: on a loaded machine the
            # epochs come slower. Every event has been read once rows_read reaches 8; two more seconds let the
            # held-back source show that it emits nothing even then.
            deadline = time.monotonic() + 30
            while len(sink.rows()) < want or job.metrics()["rows_read"] < 8:
                assert time.monotonic() < deadline, (sink.rows(), job.metrics())
                time.sleep(0.05)
            time.sleep(2)
        finally:
            job.stop()
        return sorted((row["window_start"] - T0).total_seconds() for row in sink.rows())

    assert emitted(TestSource(splits=2), want=0) == []
    assert emitted(_QuietSplits(splits=2), want=3) == [0.0, 10.0, 20.0]


def test_a_leap_to_the_year_9999_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    ts = pd.array([at(1), at(2), datetime(9999, 12, 31), at(3)], dtype="datetime64[ms]")
    frame = pd.DataFrame({"ts": ts, "user": ["a"] * 4})
    source = TestSource().add_batch(frame.iloc[:2]).add_batch(frame.iloc[2:3]).add_batch(frame.iloc[3:]).end()
    with caplog.at_level(logging.WARNING, logger="raystream"):
        job = source.stream(time_column="ts").key_by("user").window(rs.Tumbling("10s")).agg(n=rs.count()).start()
        job.wait(60)
    assert "split 'test-0': event time leapt to 9999-12-31" in caplog.text
    assert job.metrics()["late_rows"] == 1  # what the warning is about: at(3) came after the leap


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_an_idle_job_writes_no_file(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    table = pa.table({"k": np.arange(1_000) % 10, "v": np.ones(1_000, dtype=np.int64)})
    for i in range(100):
        pq.write_table(table.slice(i * 10, 10), landing / f"part-{i:03d}.parquet")
    checkpoints, out = tmp_path / "ck", tmp_path / "out"
    config = rs.RunConfig(parallelism=2, checkpoint_dir=str(checkpoints))
    stream = rs.read_parquet(str(landing), watch=True, poll_interval="1s").filter(pa.compute.field("v") > 0)
    job = stream.write_parquet(str(out), config, wait=False)
    try:
        deadline = time.monotonic() + 60
        while job.metrics()["rows_read"] < table.num_rows:
            assert time.monotonic() < deadline and job.status() == "running", job.metrics()
            time.sleep(0.1)
        time.sleep(2)  # the epochs in flight complete
        before = {**_files(checkpoints), **{f"out/{k}": v for k, v in _files(out).items()}}
        epochs = job.metrics()["epochs_completed"]
        time.sleep(float(os.environ.get("RAYSTREAM_IDLE_TEST_SECONDS", "10")))  # 60 checks a full idle minute
        after = {**_files(checkpoints), **{f"out/{k}": v for k, v in _files(out).items()}}
        assert job.status() == "running"
        assert job.metrics()["epochs_completed"] == epochs
    finally:
        job.stop()
    assert after == before
    assert pq.read_table(out).num_rows == table.num_rows
