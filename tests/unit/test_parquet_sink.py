"""The Parquet sink's lifecycle without Ray: whose folder it is, what a resume keeps, and paths that stay inside.

Each test drives ``ParquetSink`` as the coordinator does (``on_start``, ``write`` per writer,
``on_epoch_complete`` in epoch order, ``on_finish``), so kills can be placed between any two calls: a
"kill" is simply a new sink object started with ``resumed=True`` and the same job id.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import raystream as rs
from raystream.config import SinkConfig, load_yaml, parse_config
from raystream.sinks.base import SinkContext
from raystream.sinks.parquet import OutputFolderError, ParquetSink


def start(out: Path, job: str, resumed: bool = False, **options: Any) -> ParquetSink:
    sink = ParquetSink(str(out), **options)
    sink.on_start(SinkContext(None, None, True, job_id=job, resumed=resumed))
    return sink


def commit(sink: ParquetSink, epoch: int, *tables: pa.Table) -> None:
    """One epoch: each table is one writer's output."""
    sink.on_epoch_complete(epoch, [sink.write(table, epoch, writer) for writer, table in enumerate(tables)])


def rows(out: Path) -> pd.DataFrame:
    """What a reader of ``out`` sees, in a fixed order."""
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    return table.to_pandas().sort_values("v").reset_index(drop=True)


def frame(*values: int) -> pd.DataFrame:
    return pd.DataFrame({"v": list(values)})


def table(*values: int) -> pa.Table:
    return pa.table({"v": pa.array(values, pa.int64())})


# -- another job's folder ----------------------------------------------------------------------------------------


def test_a_folder_with_another_jobs_output_is_refused_and_mode_chooses(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = start(out, "one")
    commit(first, 1, table(1, 2))
    first.on_finish()
    with pytest.raises(rs.PlanError, match=rf"'{out}' already holds the output of another job; pass mode='overwrite'"):
        start(out, "two")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(rs.PlanError, match=r"files raystream did not write here, such as 'notes.txt'"):
        start(tmp_path / "mine", "two")
    # A fresh run, even of a checkpointed job, is not the first one's: only a resume is.
    with pytest.raises(rs.PlanError, match="already holds"):
        start(out, "two", resumed=True)
    pd.testing.assert_frame_equal(rows(out), frame(1, 2))

    appended = start(out, "two", mode="append")
    commit(appended, 1, table(3))  # the same epoch id as the first job's, in a file of its own
    appended.on_finish()
    pd.testing.assert_frame_equal(rows(out), frame(1, 2, 3))

    replaced = start(out, "three", mode="overwrite")
    assert sorted(os.listdir(out)) == ["_jobs"]  # nothing of the earlier jobs is left, before any epoch
    commit(replaced, 1, table(4))
    pd.testing.assert_frame_equal(rows(out), frame(4))


@pytest.mark.parametrize("mode", ["error", "overwrite", "append"])
def test_an_empty_or_missing_folder_is_taken_in_every_mode(tmp_path: Path, mode: str) -> None:
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "missing"):
        sink = start(tmp_path / folder, "job", mode=mode)
        commit(sink, 1, table(1))
        sink.on_finish()
        pd.testing.assert_frame_equal(rows(tmp_path / folder), frame(1))


def test_a_file_as_the_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file")
    for mode in ("error", "overwrite", "append"):
        with pytest.raises(rs.PlanError, match="is a file; give a folder path"):
            start(tmp_path / "out", "job", mode=mode)
    assert (tmp_path / "out").read_text() == "a file"


# -- resumes, with a kill placed between any two steps ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["error", "overwrite", "append"])
def test_a_resumed_job_keeps_its_own_output_in_every_mode(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out"
    if mode != "error":  # an earlier job's output, which overwrite deletes and append keeps
        earlier = start(out, "earlier")
        commit(earlier, 1, table(100))
        earlier.on_finish()
    sink = start(out, "job", mode=mode)
    commit(sink, 1, table(1, 2))
    commit(sink, 2, table(3))
    # Killed here, after epoch 2's commit and before its checkpoint: epoch 2 is replayed, epoch 1 is not.
    resumed = start(out, "job", resumed=True, mode=mode)
    commit(resumed, 2, table(3))
    commit(resumed, 3, table(4))
    resumed.on_finish()
    kept = (100,) if mode == "append" else ()
    pd.testing.assert_frame_equal(rows(out), frame(1, 2, 3, 4, *kept))


def test_a_job_killed_before_its_marker_is_judged_again_when_it_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    earlier = start(out, "earlier")
    commit(earlier, 1, table(100, 101))
    # Killed in the middle of an overwrite: part of the earlier output is deleted, no marker yet.
    files = sorted(p for p in out.glob("*.parquet"))
    assert files
    files[0].unlink()
    with pytest.raises(rs.PlanError, match="already holds"):
        start(out, "job", resumed=True)  # with mode="error" the folder is still someone else's
    resumed = start(out, "job", resumed=True, mode="overwrite")
    commit(resumed, 1, table(1))
    pd.testing.assert_frame_equal(rows(out), frame(1))


def test_a_commit_cut_short_is_finished_by_the_replay_without_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = start(out, "job", partition_by=["k"])
    two_writers = [pa.table({"v": [1, 2], "k": ["a", "b"]}), pa.table({"v": [3], "k": ["c"]})]
    results = [sink.write(t, 1, w) for w, t in enumerate(two_writers)]
    # Killed in the middle of the commit: the manifest is widened and one file moved, then the process died.
    staged = out / "_staging" / "epoch-00000001" / "writer-0000" / "k=a" / "part-00000001-0000-0.parquet"
    manifest = out / "_committed" / "job" / "epoch-00000001.json"
    manifest.parent.mkdir(parents=True)
    targets = sorted(f"{d}part-job-00000001-{w:04d}-0.parquet" for d, w in (("k=a/", 0), ("k=b/", 0), ("k=c/", 1)))
    manifest.write_text(json.dumps(targets))
    (out / "k=a").mkdir()
    staged.rename(out / "k=a" / "part-job-00000001-0000-0.parquet")
    del results
    # The replay runs with one writer, so its files have other names: the earlier ones must go.
    resumed = start(out, "job", resumed=True, partition_by=["k"])
    commit(resumed, 1, pa.table({"v": [1, 2, 3], "k": ["a", "b", "c"]}))
    resumed.on_finish()
    result = rows(out)
    pd.testing.assert_frame_equal(result[["v"]], frame(1, 2, 3))
    assert result["k"].astype(str).tolist() == ["a", "b", "c"]
    assert json.loads(manifest.read_text()) == sorted(
        f"k={k}/part-job-00000001-0000-0.parquet" for k in ("a", "b", "c")
    )


def test_an_epoch_without_output_writes_no_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = start(out, "job")
    for epoch in range(1, 6):
        sink.on_epoch_complete(epoch, [])
    commit(sink, 6, table(1))
    sink.on_finish()
    assert [p.name for p in (out / "_committed" / "job").iterdir()] == ["epoch-00000006.json"]


# -- paths that leave the folder ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        "{victim}",  # absolute
        "../victim.parquet",
        "k/../../victim.parquet",
        "./../victim.parquet",
        "part-job-00000001-0000-0.parquet/../../victim.parquet",
        "notes.txt",  # inside, but not a file of this job and epoch
        "part-other-00000001-0000-0.parquet",
        7,
        {"path": "../victim.parquet"},
    ],
)
def test_a_planted_manifest_deletes_nothing_and_is_refused(tmp_path: Path, entry: Any) -> None:
    victim = tmp_path / "victim.parquet"
    pq.write_table(table(7), victim)
    out = tmp_path / "out"
    sink = start(out, "job")
    (out / "notes.txt").write_text("keep")
    entry = entry.format(victim=victim) if isinstance(entry, str) else entry
    # The manifest of the epoch about to commit, and where raystream kept manifests before (no job in the name).
    for manifest in (out / "_committed" / "job" / "epoch-00000001.json", out / "_committed" / "epoch-00000001.json"):
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps([entry]))
    with pytest.raises(OutputFolderError, match=r"refusing the manifest '.*/_committed/job/epoch-00000001.json'"):
        commit(sink, 1, table(1))
    assert victim.exists() and (out / "notes.txt").read_text() == "keep"


def test_a_link_planted_in_the_folder_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "part-job-00000001-0000-0.parquet"
    pq.write_table(table(7), victim)
    out = tmp_path / "out"
    sink = start(out, "job", partition_by=["k"])
    (out / "k=a").symlink_to(elsewhere)  # a lexically fine manifest entry that resolves outside
    manifest = out / "_committed" / "job" / "epoch-00000001.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps(["k=a/part-job-00000001-0000-0.parquet"]))
    with pytest.raises(OutputFolderError, match=r"refusing to delete 'k=a/part-job-00000001-0000-0.parquet'"):
        commit(sink, 1, pa.table({"v": [1], "k": ["b"]}))
    with pytest.raises(OutputFolderError, match=r"refusing to write 'k=a/part-job-00000002-0000-0.parquet'"):
        commit(sink, 2, pa.table({"v": [1], "k": ["a"]}))  # nor is a file moved through it
    assert victim.exists() and sorted(p.name for p in elsewhere.iterdir()) == [victim.name]
    # An overwrite deletes the link itself, not what it points to.
    start(out, "other", mode="overwrite")
    assert victim.exists() and not (out / "k=a").exists()


def test_a_checkpoints_job_id_that_is_not_a_plain_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputFolderError, match="job id '../../x' is not a plain name"):
        start(tmp_path / "out", "../../x", resumed=True)
    assert not (tmp_path / "out").exists() and sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("name", ["../../../../x", "a/b", "a\\b", "a=b", "..", ".hidden", "_x", "", "p%q", "a\nb"])
def test_partition_columns_that_cannot_be_a_plain_folder_are_refused_at_plan_time(tmp_path: Path, name: str) -> None:
    stream = rs.from_pandas(pd.DataFrame({name: ["a"], "v": [1]}))
    with pytest.raises(rs.PlanError, match=r"write_parquet partition_by: column .* cannot name a partition folder"):
        stream.write_parquet(str(tmp_path / "out"), partition_by=[name])
    assert sorted(os.listdir(tmp_path)) == []


def test_nasty_partition_values_stay_inside_as_plain_folders_and_read_back(tmp_path: Path) -> None:
    values = ["a/b", "..", "../../x", "/abs", "=", "a=b", ".hidden", "_u", "", "%2F", "x\\y", ".", "%", "ü", "?#"]
    out = tmp_path / "deep" / "out"
    sink = start(out, "job", partition_by=["k"])
    commit(sink, 1, pa.table({"v": range(len(values)), "k": values}))
    sink.on_finish()
    assert sorted(os.listdir(tmp_path)) == ["deep"] and sorted(os.listdir(tmp_path / "deep")) == ["out"]
    for folder, dirs, _ in os.walk(out):
        assert os.path.realpath(folder).startswith(str(out))
        if Path(folder) == out:
            dirs[:] = [d for d in dirs if not d.startswith("_")]  # raystream's own
            assert all(d.startswith("k=") for d in dirs)
    back = rows(out)
    pd.testing.assert_frame_equal(back[["v"]], pd.DataFrame({"v": range(len(values))}))
    assert back["k"].astype(str).tolist() == values


# -- YAML sinks ---------------------------------------------------------------------------------------------------


def test_yaml_sinks_are_validated_per_kind() -> None:
    sink = parse_config(SinkConfig, {"kind": "kafka", "topic": "out", "key": "word", "format": "raw"}, "sink")
    assert (sink.topic, sink.key, sink.format, sink.bootstrap_servers) == ("out", "word", "raw", "localhost:9092")
    assert parse_config(SinkConfig, {"kind": "parquet", "path": "o", "mode": "append"}, "sink").mode == "append"
    cases = [
        ({"kind": "kafka"}, "'sink.topic' is required for sink kind 'kafka'"),
        ({"kind": "kafka", "topic": "t", "format": "avro"}, "'sink.format' must be one of 'json', 'raw'"),
        ({"kind": "kafka", "topic": "t", "path": "out"}, "'sink.path' is for sink kind 'parquet', not 'kafka'"),
        ({"kind": "print", "topic": "t"}, "'sink.topic' is for sink kind 'kafka', not 'print'"),
        ({"kind": "parquet"}, "'sink.path' is required for sink kind 'parquet'"),
        ({"kind": "parquet", "path": "o", "mode": "merge"}, "'sink.mode' must be one of 'error', 'overwrite'"),
        ({"kind": "parquet", "path": "o", "producer_config": {"acks": "all"}}, "'sink.producer_config' is for"),
    ]
    for data, message in cases:
        with pytest.raises(rs.ConfigError, match=message):
            parse_config(SinkConfig, data, "sink")
    secret = {"kind": "kafka", "topic": "t", "producer_config": {"sasl.password": "hunter2-secret"}}
    assert "hunter2" not in repr(parse_config(SinkConfig, secret, "sink"))


def test_every_config_parses_and_the_page_views_configs_write_folders_of_their_own() -> None:
    configs = Path(__file__).resolve().parents[2] / "configs"
    sinks = {path.stem: parse_config(SinkConfig, load_yaml(path).get("sink"), "sink") for path in configs.iterdir()}
    page_views = [sinks[name].path for name in ("backfill", "live", "hybrid")]
    assert all(page_views) and len(set(page_views)) == 3, page_views
