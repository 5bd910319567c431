"""Backfill acceptance: S3 history handed over to Kafka, kills in both phases, pruned backfills, watched folders.

The job is ``jobs/page_views.py``, unchanged: only its YAML config differs between
the history, live and hybrid runs. Day 3 is both in the Parquet history (days 1-3,
on a moto S3 server) and in Kafka (days 3-4); the job switches at the start of day 3.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from job_process import run_job_process

import raystream as rs
from raystream.cli import load_job, main
from raystream.runtime.checkpoint import CheckpointStore

pytestmark = pytest.mark.usefixtures("ray_local")

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "jobs" / "page_views.py"
CLI_JOB = Path(__file__).resolve().parent / "cli_job.py"
page_views = load_job(JOB)

FIRST_DAY = date(2026, 1, 1)
EVENTS_PER_DAY = 6_000
SWITCH_AT = "2026-01-03T00:00:00"
VIEW_COLUMNS = ["page", "window_start", "views", "visitors", "revenue"]


def events(first_day: date, days: int) -> pd.DataFrame:
    tables = [page_views.generate_day(day, EVENTS_PER_DAY) for day in page_views.days(first_day, days)]
    return pa.concat_tables(tables).to_pandas()


def views_sql(frame: pd.DataFrame, start: str | None = None, end: str | None = None) -> pd.DataFrame:
    """The job's answer, from DuckDB: views, distinct visitors and revenue per page and hour, in [start, end)."""
    where = " and ".join(
        [f"ts >= timestamp '{start}'"] * (start is not None) + [f"ts < timestamp '{end}'"] * (end is not None)
    )
    query = f"""
        select page, epoch_ms(time_bucket(interval 1 hour, ts)) as window_start,
               count(*) as views, count(distinct "user") as visitors, sum(price) as revenue
        from frame {"where " + where if where else ""} group by all"""
    return comparable(duckdb.sql(query).df())


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[VIEW_COLUMNS].copy()
    if not pd.api.types.is_integer_dtype(frame["window_start"]):
        frame["window_start"] = pa.array(frame["window_start"]).cast(pa.timestamp("ms")).cast(pa.int64()).to_numpy()
    frame = frame.astype({"window_start": "int64", "views": "int64", "visitors": "int64"})
    frame["revenue"] = frame["revenue"].round(6)
    frame["page"] = frame["page"].astype(str)
    return frame.sort_values(["page", "window_start"]).reset_index(drop=True)


def output(folder: Path) -> pd.DataFrame:
    """Every row the job wrote (duplicates kept: there must be none)."""
    return comparable(pq.read_table(folder).to_pandas())


def write_config(path: Path, source: dict[str, Any], out: Path, **run: Any) -> Path:
    config = {
        "job": {"source": source},
        "run": {"parallelism": 2, "max_batch_rows": 2_000, **run},
        "sink": {"kind": "parquet", "path": str(out)},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def kafka_source(bootstrap_servers: str, topic: str) -> dict[str, Any]:
    schema = {"ts": "timestamp[ms]", "user": "string", "page": "string", "price": "double"}
    return {
        "kind": "kafka",
        "topics": [topic],
        "bootstrap_servers": bootstrap_servers,
        "time_column": "ts",
        "schema": schema,
        "start": "earliest",
        "stop": "latest",
    }


def produce_days(broker: Any, topic: str, first_day: date, days: int) -> None:
    """The days' page views, keyed by user, in several record batches per partition."""
    for day in page_views.days(first_day, days):
        lines, users, times = page_views.kafka_records(page_views.generate_day(day, EVENTS_PER_DAY))
        for chunk in range(0, len(lines), 2_000):
            part = slice(chunk, chunk + 2_000)
            broker.produce(topic, lines[part], keys=users[part], timestamps_ms=times[part])


@pytest.fixture(scope="module")
def history(s3: Any) -> tuple[str, dict[str, Any]]:
    """Days 1-3 on the S3 server, one Hive folder per day (dt=...), in small row groups (many splits)."""
    bucket = s3.new_bucket()
    fs = s3.filesystem()
    for day in page_views.days(FIRST_DAY, 3):
        with fs.open(f"{bucket}/page_views/dt={day.isoformat()}/part-0.parquet", "wb") as out:
            pq.write_table(page_views.generate_day(day, EVENTS_PER_DAY), out, row_group_size=1_000)
    return f"s3://{bucket}/page_views", s3.storage_options


@pytest.fixture(scope="module")
def live(kafka_broker: Any) -> str:
    """Days 3-4 in a two-partition topic: day 3 overlaps the history."""
    topic = kafka_broker.create_topic(f"rs-page-views-{uuid.uuid4().hex[:8]}", partitions=2)
    produce_days(kafka_broker, topic, date(2026, 1, 3), 2)
    return topic


def hybrid_source(history: tuple[str, dict[str, Any]], bootstrap_servers: str, topic: str) -> dict[str, Any]:
    path, storage_options = history
    return {
        "kind": "hybrid",
        "switch_at": SWITCH_AT,
        "history": {"kind": "parquet", "path": path, "time_column": "ts", "storage_options": storage_options},
        "live": kafka_source(bootstrap_servers, topic),
    }


def test_hybrid_from_s3_to_kafka_equals_the_whole_history_in_duckdb(
    history: tuple[str, dict[str, Any]], live: str, kafka_broker: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    source = hybrid_source(history, kafka_broker.bootstrap_servers, live)
    config = write_config(tmp_path / "hybrid.yaml", source, out, checkpoint_dir=str(tmp_path / "checkpoints"))
    assert main(["run", str(JOB), "--config", str(config)]) == 0
    expected = views_sql(events(FIRST_DAY, 4))
    result = output(out)
    # Around the switch: the last history hour and the first live hour are there, each once.
    switch_ms = int(datetime.fromisoformat(SWITCH_AT).replace(tzinfo=timezone.utc).timestamp() * 1000)
    assert {switch_ms - 3_600_000, switch_ms} <= set(result["window_start"])
    pd.testing.assert_frame_equal(result, expected)


def test_hybrid_killed_during_history_and_after_the_switch_still_gives_the_exact_output(
    history: tuple[str, dict[str, Any]], live: str, kafka_broker: Any, tmp_path: Path
) -> None:
    out, checkpoints = tmp_path / "out", tmp_path / "checkpoints"
    source = hybrid_source(history, kafka_broker.bootstrap_servers, live)
    config = write_config(
        tmp_path / "hybrid.yaml", source, out, checkpoint_dir=str(checkpoints), checkpoint_every=1, max_batch_rows=500
    )
    args = [str(JOB), str(config)]

    def phase() -> str:
        """Where the last committed checkpoint is: "none", "history" (part read), or "live" (history done)."""
        if not (checkpoints / "commits").exists():
            return "none"
        summary = CheckpointStore(str(checkpoints)).describe()
        if summary["latest_epoch"] is None:
            return "none"
        record = summary["record"]
        history_ids = [s for s in summary["split_ids"] if s.startswith("history/")]
        if all(s in record["done"] for s in history_ids):
            return "live" if any(s.startswith("live/") for s in record["positions"]) else "switching"
        started = [s for s in history_ids if s in record["positions"] or s in record["done"]]
        return "history" if started else "none"

    assert not run_job_process(CLI_JOB, args, kill_when=lambda: phase() == "history"), "the history ended too soon"
    assert phase() == "history"
    assert not run_job_process(CLI_JOB, args, kill_when=lambda: phase() == "live"), "the job ended too soon"
    assert run_job_process(CLI_JOB, args)
    pd.testing.assert_frame_equal(output(out), views_sql(events(FIRST_DAY, 4)))


@pytest.fixture
def local_history(tmp_path: Path) -> Path:
    """Days 1-5 in Hive folders; days 1 and 5 hold garbage, so opening them would fail the job."""
    folder = tmp_path / "history"
    written = page_views.write_history(str(folder), FIRST_DAY, 5, EVENTS_PER_DAY)
    for path in (written[0], written[-1]):
        Path(path).write_bytes(b"not parquet: a pruned backfill must never open this file")
    return folder


def test_pruned_backfill_reads_only_the_files_of_its_range_and_shows_progress(
    local_history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    source = {"kind": "parquet", "path": str(local_history), "time_column": "ts"}
    config = write_config(tmp_path / "backfill.yaml", source, out)
    command = ["backfill", str(JOB), "--config", str(config), "--from", "2026-01-02", "--to", "2026-01-04"]
    assert main(command) == 0
    progress = capsys.readouterr().err
    # Two files (days 2 and 3) were read, and the progress shows files, rows, bytes, event time and ETA.
    assert "backfill 100%  files 2/2  rows 12,000" in progress, progress
    assert "event time end" in progress and "ETA done" in progress
    expected = views_sql(events(FIRST_DAY, 5), "2026-01-02", "2026-01-04")
    pd.testing.assert_frame_equal(output(out), expected)


def test_backfill_needs_a_file_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "live.yaml", kafka_source("localhost:1", "t"), tmp_path / "out")
    assert main(["backfill", str(JOB), "--config", str(config), "--from", "2026-01-02", "--to", "2026-01-03"]) == 2
    assert "is not a file source or a hybrid with a file history" in capsys.readouterr().err


def land(folder: Path, name: str, table: pa.Table) -> None:
    """Land a file atomically: write it under a hidden name, then rename it into place."""
    hidden = folder / f".{name}.tmp"
    pq.write_table(table, hidden)
    os.replace(hidden, folder / name)


def test_watched_folder_reads_each_landed_file_once_across_a_restart(tmp_path: Path) -> None:
    folder, out, checkpoints = tmp_path / "landing", tmp_path / "out", tmp_path / "checkpoints"
    folder.mkdir()
    files = {f"views-{i}.parquet": page_views.generate_day(date(2026, 1, 1 + i), 1_000) for i in range(4)}
    names = list(files)
    land(folder, names[0], files[names[0]])
    config = rs.RunConfig(parallelism=2, checkpoint_dir=str(checkpoints), checkpoint_every=1)

    def start() -> rs.Job:
        stream = rs.read_parquet(str(folder), time_column="ts", watch=True, poll_interval="200ms")
        return stream.write_parquet(str(out), config, wait=False)

    def wait_for_rows(rows: int) -> None:
        deadline = time.monotonic() + 60
        while not out.exists() or pq.read_table(out).num_rows < rows:
            assert time.monotonic() < deadline, f"the output did not reach {rows} rows"
            time.sleep(0.1)

    job = start()
    for landed, name in enumerate(names[1:3], start=2):  # two files land while it runs
        land(folder, name, files[name])
        wait_for_rows(1_000 * landed)
    job.stop()
    job = start()  # the restart resumes with the file list of its checkpoint
    land(folder, names[3], files[names[3]])  # the third lands after the restart
    wait_for_rows(4_000)
    job.stop()
    result = pq.read_table(out).to_pandas()
    expected = pa.concat_tables(files.values()).to_pandas()
    assert len(result) == 4_000
    key = ["ts", "user", "page"]
    pd.testing.assert_frame_equal(
        result[expected.columns].sort_values(key).reset_index(drop=True),
        expected.sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )
