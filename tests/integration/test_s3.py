"""Real jobs over S3 (a moto server): Hive-partitioned Parquet, CSV and JSON, start/end pruning, write_parquet."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from s3_server import S3Server

import raystream as rs
import raystream.sources.files as files_module
from raystream.runtime.checkpoint import CheckpointStore
from raystream.sources.files import ParquetSource

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
COUNTRIES = ["DE", "FR"]
ROWS = 20
CONFIG = rs.RunConfig(parallelism=2, max_batch_rows=7)


@pytest.fixture(scope="module")
def ray_s3(s3_server: S3Server, ray_local: None) -> S3Server:
    """The S3 server, started (with the machine's AWS environment hidden) before the module's Ray."""
    return s3_server


def _events(day: str, country: str) -> pd.DataFrame:
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    return pd.DataFrame(
        {
            "ts": pd.date_range(start, periods=ROWS, freq="1h"),  # 00:00 .. 19:00 of the day, UTC
            "user": [f"u{i % 3}" for i in range(ROWS)],
            "price": [float(i) for i in range(ROWS)],
        }
    )


def _expected() -> pd.DataFrame:
    frames = [_events(day, c).assign(dt=day, country=c) for day in DAYS for c in COUNTRIES]
    return pd.concat(frames, ignore_index=True)


def _upload(server: S3Server, bucket: str, fmt: str) -> str:
    """``s3://bucket/events-<fmt>/dt=<day>/country=<c>/part-0.<fmt>``; returns the folder URL."""
    fs = server.filesystem()
    for day in DAYS:
        for country in COUNTRIES:
            table = pa.Table.from_pandas(_events(day, country), preserve_index=False)
            with fs.open(f"{bucket}/events-{fmt}/dt={day}/country={country}/part-0.{fmt}", "wb") as f:
                if fmt == "parquet":
                    pq.write_table(table, f, row_group_size=6)
                elif fmt == "csv":
                    pa_csv.write_csv(table, f)
                else:
                    rows = [{**row, "ts": row["ts"].isoformat()} for row in table.to_pylist()]
                    f.write("".join(json.dumps(row) + "\n" for row in rows).encode())
    fs.touch(f"{bucket}/events-{fmt}/_SUCCESS")
    return f"s3://{bucket}/events-{fmt}/"


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["dt", "country", "ts"]).reset_index(drop=True)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_read_hive_partitioned_files_from_s3(ray_s3: S3Server, s3_bucket: str, fmt: str) -> None:
    url = _upload(ray_s3, s3_bucket, fmt)
    options = ray_s3.storage_options
    if fmt == "parquet":
        stream = rs.read_parquet(url, storage_options=options)
    elif fmt == "csv":
        stream = rs.read_csv(url, storage_options=options)
    else:
        schema = pa.schema([("ts", pa.timestamp("ns", tz="UTC")), ("user", pa.string()), ("price", pa.float64())])
        stream = rs.read_json(url, schema=schema, storage_options=options)
    assert stream.schema.names == ["ts", "user", "price", "dt", "country"]
    got = _sorted(stream.to_pandas(CONFIG))
    expected = _sorted(_expected())
    assert got["ts"].dt.tz is not None
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_start_end_backfill_over_s3_reads_only_its_files(
    ray_s3: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _upload(ray_s3, s3_bucket, "parquet")
    opened: Counter[str] = Counter()
    real = files_module._open_file

    def counting(fs: Any, path: str) -> pa.NativeFile:
        opened[path] += 1
        return real(fs, path)

    monkeypatch.setattr(files_module, "_open_file", counting)  # Plan-time opens happen here, on the driver.
    stream = rs.read_parquet(
        url, time_column="ts", start="2026-01-02T05:00", end="2026-01-02T09:30", storage_options=ray_s3.storage_options
    )
    in_range = {f"{s3_bucket}/events-parquet/dt=2026-01-02/country={c}/part-0.parquet" for c in COUNTRIES}
    assert set(opened) == in_range  # Only the footers of the day in range; the other days were never opened.
    source = stream.node.source  # type: ignore[attr-defined]
    assert isinstance(source, ParquetSource)
    assert {f.removeprefix("s3://") for f in source.files()} == in_range
    # Row groups of 6 hours: 00-05 and 06-11 overlap [05:00, 09:30); 12-17 and 18-19 are pruned by statistics.
    assert sorted(s.split_id for s in source.splits(1)) == [
        "dt=2026-01-02/country=DE/part-0.parquet#rg0-1",
        "dt=2026-01-02/country=FR/part-0.parquet#rg0-1",
    ]

    job = stream.start(CONFIG)
    job.wait()
    got = job.results()
    assert sorted(got["ts"].dt.strftime("%d %H:%M").tolist()) == sorted(
        f"02 {h:02d}:00" for h in range(5, 10) for _ in COUNTRIES
    )
    splits = job.metrics()["splits"]
    assert {entry["file"].removeprefix("s3://") for entry in splits.values()} == in_range
    assert all(entry["bytes_read"] > 0 and entry["done"] for entry in splits.values())
    assert sum(entry["rows_read"] for entry in splits.values()) == 2 * 12  # Two row groups of 6 rows per file.


def test_write_parquet_to_s3_and_read_it_back(ray_s3: S3Server, s3_bucket: str) -> None:
    options = ray_s3.storage_options
    df = _expected().drop(columns=["dt"])
    out = f"s3://{s3_bucket}/out"
    rs.from_pandas(df).write_parquet(out, CONFIG, partition_by=["country"], storage_options=options)
    fs = ray_s3.filesystem()
    written = fs.find(f"{s3_bucket}/out")
    assert any("/country=DE/" in path for path in written) and not any("_staging" in path for path in written)
    back = rs.read_parquet(out, storage_options=options).to_pandas(CONFIG)
    assert back.columns.tolist() == ["ts", "user", "price", "country"]  # country comes back from its folders.
    key = ["country", "ts"]
    expected = df.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(back.sort_values(key).reset_index(drop=True), expected, check_dtype=False)


def test_watching_an_s3_prefix_sees_new_objects(ray_s3: S3Server, s3_bucket: str) -> None:
    fs = ray_s3.filesystem()
    table = pa.Table.from_pandas(_events("2026-01-01", "DE"), preserve_index=False)
    with fs.open(f"{s3_bucket}/live/dt=2026-01-01/a.parquet", "wb") as f:
        pq.write_table(table, f)
    source = ParquetSource(
        f"s3://{s3_bucket}/live/", time_column="ts", watch=True, storage_options=ray_s3.storage_options
    )
    first = [s.split_id for s in source.splits(1)]
    assert first == ["dt=2026-01-01/a.parquet#rg0-0"]
    with fs.open(f"{s3_bucket}/live/dt=2026-01-02/b.parquet", "wb") as f:  # An S3 PUT is atomic.
        pq.write_table(table, f)
    assert [s.split_id for s in source.splits(1)] == [*first, "dt=2026-01-02/b.parquet#rg0-0"]


def test_missing_bucket_is_named_without_credentials(ray_s3: S3Server) -> None:
    options = {**ray_s3.storage_options, "secret": "not-the-real-s3cr3t"}
    with pytest.raises(FileNotFoundError, match=r"read_parquet: path 's3://no-such-bucket-rs/x' does not exist") as e:
        rs.read_parquet("s3://no-such-bucket-rs/x", storage_options=options)
    assert "not-the-real-s3cr3t" not in str(e.value) and "not-the-real-s3cr3t" not in repr(e.value)


def test_credentials_appear_in_no_checkpoint_output_metric_repr_or_log(
    ray_s3: S3Server, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    # moto takes any secret, so a recognizable one shows wherever it would leak.
    secret = "s3cr3t-" + "never-shown-77"  # Not one literal: tracebacks quote the raising line.
    options = {**ray_s3.storage_options, "secret": secret}
    folder = _upload(ray_s3, s3_bucket, "parquet")
    config = rs.RunConfig(
        parallelism=2,
        max_batch_rows=7,
        checkpoint_dir=f"s3://{s3_bucket}/ck",
        checkpoint_storage_options=options,
    )
    stream = rs.read_parquet(folder, storage_options=options).key_by("user").agg(n=rs.count())
    out = f"s3://{s3_bucket}/agg"
    with caplog.at_level("DEBUG"):
        job = stream.write_parquet(out, config, storage_options=options, wait=False)
        job.wait()
        described = CheckpointStore(f"s3://{s3_bucket}/ck", storage_options=options).describe()
    counts = rs.read_parquet(out, storage_options=options).to_pandas().set_index("user")["n"].sort_index()
    assert counts.to_dict() == _expected().groupby("user").size().to_dict()
    fs = ray_s3.filesystem()
    written = fs.find(s3_bucket)
    assert any("/ck/" in path for path in written) and any("/agg/" in path for path in written)
    for path in written:  # every checkpoint record, split list, state file, manifest and output file
        assert secret.encode() not in fs.cat_file(path), path
    views = [repr(stream), repr(config), repr(job), json.dumps(job.metrics(), default=str), str(described), caplog.text]
    for view in views:
        assert secret not in view
