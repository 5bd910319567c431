"""Checkpoints are safe to resume from, run again, share and damage.

- A job whose checkpoint says it completed emits nothing more when run again,
  also after a kill right after its last commit.
- A resume under another ``num_key_groups`` keeps every key; one with other
  sources is refused, naming the difference.
- Nothing in a checkpoint is unpickled: a planted payload never runs, through
  ``read_state``, ``raystream checkpoints inspect`` or a resume.
- A state file with flipped bytes makes the job resume from the checkpoint before.
- An exhausted ``max_recoveries`` says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from job_process import last_commit, run_job_process
from windows_oracle import normalized, out_of_order_events, windows_sql

import raystream as rs
from raystream.runtime.checkpointing import Checkpointing

pytestmark = pytest.mark.usefixtures("ray_local")

HERE = Path(__file__).resolve().parent
TABLE = pa.table({"k": np.arange(10_000) % 100, "v": np.arange(10_000, dtype=np.int64)})
COUNTS = pd.DataFrame({"k": np.arange(100), "n": np.full(100, 100)})


def counts(folder: Path) -> pd.DataFrame:
    return pq.read_table(folder).to_pandas().sort_values("k").reset_index(drop=True)


def stop_after(job: rs.Job, epochs: int) -> None:
    """Stop a running job once it has completed ``epochs`` epochs (it must not have ended)."""
    deadline = time.monotonic() + 120
    while job.metrics()["epochs_completed"] < epochs:
        assert job.status() == "running" and time.monotonic() < deadline, job.metrics()
        time.sleep(0.01)
    job.stop()


def slowly(batch: pa.Table) -> pa.Table:
    time.sleep(0.02)
    return batch


# -- a completed job ----------------------------------------------------------------------------------------------


def test_a_completed_job_run_again_emits_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = rs.RunConfig(max_batch_rows=1_000, checkpoint_dir=str(tmp_path / "ck"))
    per_key = rs.from_arrow(TABLE).key_by("k").agg(n=rs.count())
    per_key.write_parquet(str(tmp_path / "out"), config)
    pd.testing.assert_frame_equal(counts(tmp_path / "out"), COUNTS, check_dtype=False)
    with caplog.at_level(logging.WARNING, logger="raystream"):
        per_key.write_parquet(str(tmp_path / "out"), config)
    assert "already complete" in caplog.text
    pd.testing.assert_frame_equal(counts(tmp_path / "out"), COUNTS, check_dtype=False)  # 100 rows, not 200

    top = rs.from_arrow(TABLE).key_by("k").top("v")
    top_config = rs.RunConfig(max_batch_rows=1_000, checkpoint_dir=str(tmp_path / "ck-top"))
    assert len(top.to_pandas(top_config)) == 100
    assert len(top.to_pandas(top_config)) == 0

    calls: list[tuple[int, int]] = []
    foreach_config = rs.RunConfig(max_batch_rows=1_000, checkpoint_dir=str(tmp_path / "ck-foreach"))
    rs.from_arrow(TABLE).foreach_batch(lambda t, e: calls.append((e, t.num_rows)), foreach_config)
    assert sum(rows for _, rows in calls) == TABLE.num_rows
    first = list(calls)
    rs.from_arrow(TABLE).foreach_batch(lambda t, e: calls.append((e, t.num_rows)), foreach_config)
    assert calls == first


def test_a_job_killed_after_its_last_commit_emits_nothing_more(tmp_path: Path) -> None:
    frame = out_of_order_events(20_000, keys=10, max_disorder_ms=2_000, seed=3)
    folder = tmp_path / "events"
    folder.mkdir()
    for part in range(2):
        chunk = frame.iloc[part * 10_000 : (part + 1) * 10_000]
        pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), folder / f"part-{part}.parquet")
    out, checkpoints = tmp_path / "out", tmp_path / "ck"
    args = [str(folder), str(out), str(checkpoints), "--delay", "0.01", "--hold-after", "30"]

    def completed() -> bool:
        newest = last_commit(checkpoints)
        if newest < 1:
            return False
        marker = checkpoints / "commits" / f"{newest:010d}.json"
        try:
            return bool(json.loads(marker.read_text())["record"]["complete"])
        except (OSError, ValueError):
            return False

    assert not run_job_process(HERE / "checkpointed_job.py", args, kill_when=completed)
    assert run_job_process(HERE / "checkpointed_job.py", args[:-2])
    pd.testing.assert_frame_equal(
        normalized(pq.read_table(out).to_pandas()), normalized(windows_sql(frame, rs.Tumbling("10s")))
    )


def test_a_completed_job_with_its_checkpoint_and_output_on_s3_is_not_run_again(s3: Any) -> None:
    bucket = s3.new_bucket()
    options = s3.storage_options
    config = rs.RunConfig(max_batch_rows=2_000, checkpoint_dir=f"s3://{bucket}/ck", checkpoint_storage_options=options)
    per_key = rs.from_arrow(TABLE).key_by("k").agg(n=rs.count())
    for _ in range(2):
        per_key.write_parquet(f"s3://{bucket}/out", config, storage_options=options)
    written = pq.read_table(f"{bucket}/out", filesystem=s3.filesystem()).to_pandas()
    pd.testing.assert_frame_equal(written.sort_values("k").reset_index(drop=True), COUNTS, check_dtype=False)


# -- what a resume accepts ----------------------------------------------------------------------------------------


def test_a_resume_under_another_number_of_key_groups_keeps_every_key(tmp_path: Path) -> None:
    stream = rs.from_arrow(TABLE).map_batches(slowly, schema=TABLE.schema).key_by("k").agg(n=rs.count())
    checkpoints, out = str(tmp_path / "ck"), str(tmp_path / "out")
    config = rs.RunConfig(parallelism=2, max_batch_rows=500, checkpoint_dir=checkpoints, num_key_groups=128)
    stop_after(stream.write_parquet(out, config, wait=False), 6)
    assert rs.read_state(checkpoints)["n"].sum() >= 3_000
    # Fewer key groups than before, and another parallelism: every key keeps its count.
    resumed = rs.RunConfig(parallelism=3, max_batch_rows=500, checkpoint_dir=checkpoints, num_key_groups=16)
    stream.write_parquet(out, resumed)
    pd.testing.assert_frame_equal(counts(tmp_path / "out"), COUNTS, check_dtype=False)


def test_a_resume_reading_other_paths_is_refused_naming_them(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        pq.write_table(TABLE, tmp_path / name / "part-0.parquet")
    config = rs.RunConfig(max_batch_rows=1_000, checkpoint_dir=str(tmp_path / "ck"))
    stream = rs.read_parquet(str(tmp_path / "a")).map_batches(slowly, schema=TABLE.schema)
    stop_after(stream.key_by("k").agg(n=rs.count()).start(config), 2)
    other = rs.read_parquet(str(tmp_path / "b")).map_batches(slowly, schema=TABLE.schema)
    with pytest.raises(rs.RaystreamError, match=r"reading other input \(paths\[0\]: .*/a.* in the checkpoint, .*/b"):
        other.key_by("k").agg(n=rs.count()).to_pandas(config)


def test_a_resume_reading_other_topics_is_refused_naming_them(
    kafka_broker: Any, new_topic: Any, tmp_path: Path
) -> None:
    first, second = new_topic(partitions=1), new_topic(partitions=1)
    schema = pa.schema([("k", pa.int64())])
    for topic in (first, second):
        kafka_broker.produce(topic, [json.dumps({"k": i}).encode() for i in range(10)])
    config = rs.RunConfig(checkpoint_dir=str(tmp_path / "ck"))

    def per_key(topic: str) -> rs.Stream:
        source = rs.read_kafka(topic, kafka_broker.bootstrap_servers, schema=schema, stop="latest")
        return source.key_by("k").agg(n=rs.count())

    assert len(per_key(first).to_pandas(config)) == 10
    with pytest.raises(rs.RaystreamError, match=rf"topics\[0\]: \"{first}\" in the checkpoint, \"{second}\" now"):
        per_key(second).to_pandas(config)


def test_a_resume_into_another_pipeline_names_what_changed(tmp_path: Path) -> None:
    config = rs.RunConfig(max_batch_rows=5_000, checkpoint_dir=str(tmp_path / "ck"))
    stop_after(rs.from_arrow(TABLE).map_batches(slowly).key_by("k").agg(n=rs.count()).start(config), 1)
    with pytest.raises(rs.RaystreamError, match=r"stages\[0\]\.keys\[0\]: \"k\" in the checkpoint, \"v\" now"):
        rs.from_arrow(TABLE).map_batches(slowly).key_by("v").agg(n=rs.count()).to_pandas(config)


# -- nothing is unpickled ------------------------------------------------------------------------------------------


class _Payload:
    """Writes a file when unpickled: the proof that a checkpoint ran code."""

    def __init__(self, proof: str) -> None:
        self.proof = proof

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (Path(self.proof), "pwned"))


def _plant(commit: Path, proof: Path) -> None:
    """Put a pickled payload where the old layout kept pickles, and re-sign the marker as anyone can."""
    marker = json.loads(commit.read_text())
    evil = base64.b64encode(pickle.dumps(_Payload(str(proof)))).decode()
    marker["record"]["splits"] = evil
    marker["record"]["operators"] = evil
    del marker["sha256"]
    canonical = json.dumps(marker, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    marker["sha256"] = hashlib.sha256(canonical.encode()).hexdigest()
    commit.write_text(json.dumps(marker))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_planted_pickle_in_a_checkpoint_never_runs(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from raystream.cli import main

    proof = tmp_path / "pwned"
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        checkpoint_dir, options = f"s3://{s3.new_bucket()}/ck", s3.storage_options
        fs = s3.filesystem()
    else:
        checkpoint_dir, options, fs = str(tmp_path / "ck"), None, None
    config = rs.RunConfig(max_batch_rows=2_000, checkpoint_dir=checkpoint_dir, checkpoint_storage_options=options)
    stream = rs.from_arrow(TABLE).map_batches(slowly, schema=TABLE.schema).key_by("k").agg(n=rs.count())
    stop_after(stream.start(config), 2)
    if fs is None:
        commit = sorted((tmp_path / "ck" / "commits").glob("*.json"))[-1]
        _plant(commit, proof)
    else:
        local = tmp_path / "commit.json"
        name = sorted(fs.ls(checkpoint_dir.removeprefix("s3://") + "/commits"))[-1]
        fs.get(name, str(local))
        _plant(local, proof)
        fs.put(str(local), name)

    with pytest.raises(rs.RaystreamError, match="not a dict|cannot rebuild|layout"):
        rs.read_state(checkpoint_dir, storage_options=options)
    with pytest.raises(rs.RaystreamError, match="splits"):
        stream.to_pandas(config)
    if fs is None:  # the CLI takes a folder without storage options
        main(["checkpoints", "inspect", checkpoint_dir])
    assert not proof.exists()


# -- damaged state -------------------------------------------------------------------------------------------------


def test_a_state_file_with_flipped_bytes_resumes_from_the_checkpoint_before(tmp_path: Path) -> None:
    frame = out_of_order_events(30_000, keys=10, max_disorder_ms=2_000, seed=4)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    events = rs.from_arrow(table, time_column="t").map_batches(slowly, schema=table.schema)
    windows = events.with_watermark("t", delay="5s").key_by("k").window(rs.Tumbling("10s"))
    stream = windows.agg(n=rs.count(), s=rs.sum("v"), m=rs.max("v"))
    checkpoints, out = tmp_path / "ck", str(tmp_path / "out")
    config = rs.RunConfig(parallelism=2, max_batch_rows=2_000, checkpoint_dir=str(checkpoints))
    stop_after(stream.write_parquet(out, config, wait=False), 6)
    newest = last_commit(checkpoints)
    state = sorted((checkpoints / "state" / f"{newest:010d}").rglob("*.arrow"))[0]
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only its checksum tells
    state.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=rf"skipping checkpoint {newest}.*checksum mismatch"):
        stream.write_parquet(out, config)
    pd.testing.assert_frame_equal(
        normalized(pq.read_table(out).to_pandas()), normalized(windows_sql(frame, rs.Tumbling("10s")))
    )


def test_read_state_skips_a_checkpoint_with_flipped_bytes(tmp_path: Path) -> None:
    checkpoints = tmp_path / "ck"
    config = rs.RunConfig(max_batch_rows=1_000, checkpoint_dir=str(checkpoints))
    stream = rs.from_arrow(TABLE).map_batches(slowly, schema=TABLE.schema).key_by("k").agg(n=rs.count())
    stop_after(stream.start(config), 4)
    newest = last_commit(checkpoints)
    before = rs.read_state(str(checkpoints))["n"].sum()
    for state in (checkpoints / "state" / f"{newest:010d}").rglob("*.arrow"):
        data = bytearray(state.read_bytes())
        data[-10] ^= 0xFF
        state.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=f"skipping the checkpoint of epoch {newest}"):
        older = rs.read_state(str(checkpoints))["n"].sum()
    assert 0 < older < before


# -- recoveries ----------------------------------------------------------------------------------------------------


def test_exhausted_recoveries_say_so_not_to_add_a_checkpoint_dir(tmp_path: Path) -> None:
    config = rs.RunConfig(max_batch_rows=500, checkpoint_dir=str(tmp_path / "ck"), max_recoveries=0)
    stream = rs.from_arrow(TABLE).map_batches(slowly, schema=TABLE.schema).key_by("k").agg(n=rs.count())
    job = stream.start(config)
    deadline = time.monotonic() + 60
    while job.metrics()["epochs_completed"] < 2:
        assert time.monotonic() < deadline and job.status() == "running"
        time.sleep(0.01)
    ray.kill(next(iter(job._coordinator.stage_actors.values()))[0], no_restart=True)
    with pytest.raises(rs.JobFailedError) as failure:
        job.wait(timeout=120)
    message = str(failure.value)
    assert "recovered from its last checkpoint 0 times (RunConfig.max_recoveries=0)" in message
    assert "give the job a RunConfig(checkpoint_dir" not in message.split(": a raystream actor died")[0]


def test_checkpoint_commits_do_not_repeat_the_split_list(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(200):
        pq.write_table(TABLE.slice(i * 50, 50), folder / f"part-{i:04d}.parquet")
    checkpoints = tmp_path / "ck"
    config = rs.RunConfig(max_batch_rows=2_000, checkpoint_dir=str(checkpoints))
    real_commit = Checkpointing.commit
    sizes: list[int] = []

    def measured(self: Checkpointing, epoch: int, *args: Any) -> None:
        real_commit(self, epoch, *args)
        sizes.append((checkpoints / "commits" / f"{epoch:010d}.json").stat().st_size)

    Checkpointing.commit = measured  # type: ignore[method-assign]
    try:
        result = rs.read_parquet(str(folder)).key_by("k").agg(n=rs.count()).to_pandas(config)
    finally:
        Checkpointing.commit = real_commit  # type: ignore[method-assign]
    assert result["n"].sum() == TABLE.num_rows
    splits = sorted((checkpoints / "splits").glob("*.json"))
    assert len(splits) == 1 and splits[0].stat().st_size > 20_000  # the 200 files, stored once
    assert max(sizes) < splits[0].stat().st_size
