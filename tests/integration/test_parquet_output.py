"""write_parquet as users run it: twice into one folder, on S3, killed and resumed in each mode, idle epochs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from job_process import last_commit, run_job_process
from s3_server import S3Server
from windows_oracle import normalized, out_of_order_events, windows_sql

import raystream as rs
from raystream.sinks.base import SinkContext
from raystream.sinks.parquet import OutputFolderError, ParquetSink

pytestmark = pytest.mark.usefixtures("ray_local")

JOB = Path(__file__).resolve().parent / "checkpointed_job.py"
CONFIG = rs.RunConfig(parallelism=2, max_batch_rows=1_000)


def numbers(count: int, first: int = 0) -> pd.DataFrame:
    values = np.arange(first, first + count)
    return pd.DataFrame({"v": values, "k": values % 7})


def read(out: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    frame = pd.read_parquet(out, storage_options=storage_options)
    return frame[["v", "k"]].astype("int64").sort_values("v").reset_index(drop=True)


def oracle(*frames: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(frames).astype("int64").sort_values("v").reset_index(drop=True)


# First in the module: the S3 server then starts (hiding the machine's AWS settings) before the module's Ray.
def test_on_s3_a_second_run_is_refused_and_nothing_outside_the_prefix_is_touched(s3: S3Server, s3_bucket: str) -> None:
    options, fs = s3.storage_options, s3.filesystem()
    out = f"s3://{s3_bucket}/out"
    fs.pipe_file(f"{s3_bucket}/out-sibling/keep.parquet", b"a sibling prefix that shares the name's start")
    fs.pipe_file(f"{s3_bucket}/victim.parquet", b"outside the output")
    first = numbers(3_000)
    rs.from_pandas(first).write_parquet(out, CONFIG, storage_options=options)
    with pytest.raises(rs.PlanError, match=rf"'s3://{s3_bucket}/out' already holds the output of another job"):
        rs.from_pandas(numbers(10)).write_parquet(out, CONFIG, storage_options=options)
    pd.testing.assert_frame_equal(read(out, options), oracle(first))

    second = numbers(2_000, first=50_000)
    rs.from_pandas(second).write_parquet(out, CONFIG, storage_options=options, mode="overwrite")
    pd.testing.assert_frame_equal(read(out, options), oracle(second))
    assert fs.cat_file(f"{s3_bucket}/out-sibling/keep.parquet").startswith(b"a sibling")

    # A manifest planted under the output that points at a key outside it is refused, and nothing is deleted.
    sink = ParquetSink(out, storage_options=options, mode="append")
    sink.on_start(SinkContext(None, None, True, job_id="planted", resumed=False))
    for manifest, entry in [("planted/epoch-00000001.json", "../victim.parquet"), ("epoch-00000001.json", "x")]:
        fs.pipe_file(f"{s3_bucket}/out/_committed/{manifest}", json.dumps([entry]).encode())
    with pytest.raises(OutputFolderError, match=r"refusing the manifest 's3://.*/out/_committed/planted/epoch-0"):
        sink.on_epoch_complete(1, [sink.write(pa.table({"v": [1], "k": [1]}), 1, 0)])
    assert fs.exists(f"{s3_bucket}/victim.parquet") and fs.exists(f"{s3_bucket}/out-sibling/keep.parquet")
    pd.testing.assert_frame_equal(read(out, options), oracle(second))


def test_a_second_run_into_one_folder_is_refused_and_overwrite_or_append_choose(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    first = numbers(10_000)
    rs.from_pandas(first).write_parquet(out, CONFIG)
    with pytest.raises(rs.PlanError, match=rf"'{out}' already holds the output of another job; pass mode="):
        rs.from_pandas(first).write_parquet(out, CONFIG)
    # A job with a checkpoint_dir of its own is judged when it starts: it is not resuming this folder's job.
    checkpointed = rs.RunConfig(parallelism=2, max_batch_rows=1_000, checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(rs.PlanError, match="already holds the output of another job"):
        rs.from_pandas(first).write_parquet(out, checkpointed)
    pd.testing.assert_frame_equal(read(out), oracle(first))  # 10,000 rows, not 18,000 or 20,000

    second = numbers(4_000, first=20_000)
    rs.from_pandas(second).write_parquet(out, CONFIG, mode="overwrite")
    pd.testing.assert_frame_equal(read(out), oracle(second))

    third = numbers(3_000, first=40_000)  # the same epoch ids as the second job: the files must not collide
    rs.from_pandas(third).write_parquet(out, CONFIG, mode="append")
    pd.testing.assert_frame_equal(read(out), oracle(second, third))


def test_epochs_that_read_rows_and_output_none_write_no_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = rs.from_pandas(numbers(5_000)).filter(pc.field("v") < 0).write_parquet(str(out), CONFIG)
    assert job.metrics()["epochs_completed"] >= 3
    assert [p.name for p in out.iterdir()] == ["_jobs"]  # no _committed manifest, nothing staged


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    frame = out_of_order_events(20_000, keys=10, max_disorder_ms=2_000, seed=12)
    folder = tmp_path_factory.mktemp("events")
    for part in range(2):
        chunk = frame.iloc[part * 10_000 : (part + 1) * 10_000]
        pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), folder / f"part-{part}.parquet")
    return folder, frame


# append resumes by the same path as error (its own folder, its own files); overwrite must not clear its own output.
@pytest.mark.parametrize("mode", ["error", "overwrite"])
def test_a_killed_job_resumes_into_its_own_folder_with_the_exact_output_in_each_mode(
    events: tuple[Path, pd.DataFrame], tmp_path: Path, mode: str
) -> None:
    folder, frame = events
    expected = normalized(windows_sql(frame, rs.Tumbling("10s")))
    out, checkpoints = tmp_path / "out", tmp_path / "checkpoints"
    earlier = expected.head(5).assign(k=-1)  # another job's rows: overwrite deletes them, append keeps them
    if mode != "error":
        out.mkdir()
        pq.write_table(pa.Table.from_pandas(earlier, preserve_index=False), out / "earlier.parquet")
    args = [str(folder), str(out), str(checkpoints), "--mode", mode]

    def due() -> bool:  # a few epochs committed, so some output of this job is in the folder
        return (checkpoints / "commits").exists() and last_commit(checkpoints) >= 3

    assert not run_job_process(JOB, args, kill_when=due), "the job ended before it could be killed"
    assert list(out.glob("part-*.parquet"))
    assert run_job_process(JOB, args)
    result = normalized(pq.read_table(out).to_pandas())
    wanted = normalized(pd.concat([expected, earlier])) if mode == "append" else expected
    pd.testing.assert_frame_equal(result, wanted)
