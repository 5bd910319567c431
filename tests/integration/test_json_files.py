"""Acceptance: bad lines of JSON and CSV files are dead letters of a running job, never in the shuffle or Parquet."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raystream as rs

pytestmark = pytest.mark.usefixtures("ray_local")

SCHEMA = pa.schema([("t", pa.int64()), ("user", pa.string())])


def test_bad_lines_of_json_files_are_dead_letters_and_the_job_goes_on(tmp_path: Path) -> None:
    lines = [b'{"t": %d, "user": "u%d"}' % (i, i % 7) for i in range(3000)]
    bad = {
        10: b'{"t": 10, "user": "caf\xe9"}',  # latin-1: used to reach the shuffle's hashing and fail the job
        1234: b'{"t": 1234, "user": "u1"}{"t": 1235, "user": "u2"}',
        2999: b'{"t": "late", "user": "u3"}',
    }
    for i, line in bad.items():
        lines[i] = line
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.json").write_bytes(b"\n".join(lines[:2000]) + b"\n")
    (tmp_path / "in" / "b.json").write_bytes(b"\n".join(lines[2000:]) + b"\n")
    good = pd.DataFrame([json.loads(line) for i, line in enumerate(lines) if i not in bad])
    where = {10: ("a.json", 11), 1234: ("a.json", 1235), 2999: ("b.json", 1000)}  # split, line

    stream = rs.read_json(str(tmp_path / "in"), schema=SCHEMA)
    job = stream.key_by("user").agg(n=rs.count()).start(rs.RunConfig(parallelism=2, max_batch_rows=500))
    job.wait(120)
    counts = job.results().set_index("user")["n"].sort_index()
    pd.testing.assert_series_equal(counts, good.groupby("user").size().rename("n"), check_dtype=False)
    letters = job.dead_letters().sort_values(["split_id", "position"], ignore_index=True)
    assert list(letters.columns) == ["source", "split_id", "position", "raw", "error"]
    assert list(zip(letters["split_id"], letters["position"], strict=True)) == [where[i] for i in sorted(bad)]
    assert letters["raw"].tolist() == [bad[i] for i in sorted(bad)]
    assert letters["error"][0].startswith("not valid UTF-8") and (letters["source"] == "source").all()
    assert job.metrics()["dead_letters"] == len(bad)

    # Without key_by the strings used to reach the Parquet files; the dead letters are a stream too.
    stream.write_parquet(str(tmp_path / "out"))
    written = pq.read_table(tmp_path / "out")
    written.validate(full=True)
    assert sorted(written.column("t").to_pylist()) == sorted(good["t"])
    again = stream.dead_letters().to_pandas().sort_values(["split_id", "position"], ignore_index=True)
    pd.testing.assert_frame_equal(again[letters.columns], letters, check_dtype=False)

    strict = rs.read_json(str(tmp_path / "in" / "a.json"), schema=SCHEMA, errors="fail")
    with pytest.raises(rs.RaystreamError, match=r"read_json: line 11 of '.*a\.json' cannot be decoded.*UTF-8"):
        strict.to_pandas()
    with pytest.raises(rs.PlanError, match=r"read_json has no dead letters.*unless errors='fail'"):
        strict.dead_letters()


def test_bad_lines_of_csv_files_are_dead_letters_and_the_good_rows_are_what_pandas_reads(tmp_path: Path) -> None:
    lines = [b"%d,u%d,%d.5" % (i, i % 7, i) for i in range(3000)]
    bad = {
        10: b"10,caf\xe9,10.5",  # latin-1
        1234: b"1234,u2",  # a field short
        1500: b'1500,"u3,1500.5',  # a quote left open: it must not swallow the lines after it
        2999: b"late,u3,2999.5",  # another type
    }
    for i, line in bad.items():
        lines[i] = line
    (tmp_path / "in").mkdir()
    header = b"t,user,price"
    (tmp_path / "in" / "a.csv").write_bytes(b"\n".join([header, *lines[:2000]]) + b"\n")
    (tmp_path / "in" / "b.csv").write_bytes(b"\n".join([header, *lines[2000:]]) + b"\n")
    good = [line for i, line in enumerate(lines) if i not in bad]
    oracle = pd.read_csv(io.BytesIO(b"\n".join([header, *good])))
    where = {10: ("a.csv", 12), 1234: ("a.csv", 1236), 1500: ("a.csv", 1502), 2999: ("b.csv", 1001)}  # header: 1

    schema = pa.schema([("t", pa.int64()), ("user", pa.string()), ("price", pa.float64())])
    stream = rs.read_csv(str(tmp_path / "in"), schema=schema)
    job = stream.start(rs.RunConfig(parallelism=2, max_batch_rows=500))
    job.wait(120)
    rows = job.results().sort_values("t", ignore_index=True)
    pd.testing.assert_frame_equal(rows, oracle, check_dtype=False)
    letters = job.dead_letters().sort_values(["split_id", "position"], ignore_index=True)
    assert list(zip(letters["split_id"], letters["position"], strict=True)) == [where[i] for i in sorted(bad)]
    assert letters["raw"].tolist() == [bad[i] for i in sorted(bad)]
    assert (letters["source"] == "source").all() and job.metrics()["dead_letters"] == len(bad)

    # errors="fail" fails at plan time when the first block (1 MiB) already holds a bad line.
    with pytest.raises(rs.PlanError, match=r"read_csv: cannot parse '.*b\.csv'.*invalid value 'late'"):
        rs.read_csv(str(tmp_path / "in" / "b.csv"), schema=schema, errors="fail")
