"""The checkpoint store: commits are whole or ignored, damage is detected and named, pruning keeps what replay needs."""

from __future__ import annotations

import json
import logging
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from raystream.errors import RaystreamError
from raystream.runtime.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointStore,
    CorruptCheckpointError,
    StateFile,
    TamperedCheckpointError,
)

FINGERPRINT = "f00d"


def state_table(epoch: int, key_group: int) -> pa.Table:
    return pa.table(
        {
            "key": pa.array([f"k{key_group}-{i}" for i in range(5)], pa.string()),
            "total": pa.array([epoch * 100 + i for i in range(5)], pa.int64()),
        }
    )


def record(epoch: int, fingerprint: str = FINGERPRINT) -> dict:
    return {"fingerprint": fingerprint, "positions": {"split-0": epoch * 10}, "watermark_ms": epoch * 1000}


def write_epoch(store: CheckpointStore, epoch: int, commit: bool = True) -> list[StateFile]:
    """Log, snapshot (two writers, a key group each, of one table) and commit an epoch, as the runtime does."""
    store.write_offsets(epoch, {"epoch": epoch, "positions": {"split-0": epoch * 10}})
    files = [store.write_state(epoch, "agg", "values", kg, [(kg, state_table(epoch, kg))]) for kg in (3, 7)]
    if commit:
        store.commit(epoch, record(epoch), files)
    return files


@pytest.fixture
def url(tmp_path: Path) -> str:
    return str(tmp_path / "ckpt")


@pytest.fixture
def store(url: str) -> CheckpointStore:
    return CheckpointStore(url)


@pytest.fixture
def memory_url() -> Iterator[str]:
    url = f"memory://raystream-ckpt-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- round trips


def test_round_trip_local(store: CheckpointStore, url: str) -> None:
    assert store.latest() is None
    assert store.read_offsets(1) is None
    files = write_epoch(store, 1, commit=False)
    assert store.read_offsets(1) == {"epoch": 1, "positions": {"split-0": 10}}
    assert store.offset_epochs() == [1]
    assert store.committed_epochs() == []

    store.commit(1, record(1), files)
    assert store.committed_epochs() == [1]
    # Restoring commit 1 replays only the epochs after it: its own offsets are no longer needed.
    assert store.offset_epochs() == []
    assert files[0].path == "state/0000000001/agg/values/part-00003.arrow"
    assert (Path(url) / files[0].path).stat().st_size == files[0].bytes
    assert files[0].rows == 5

    checkpoint = store.latest(FINGERPRINT)
    assert checkpoint == Checkpoint(epoch=1, record=record(1), state_files=tuple(files))
    for entry, kg in zip(checkpoint.state_files, (3, 7), strict=True):
        assert store.read_state(entry).equals(state_table(1, kg))
    # No temporary files are left behind.
    assert not [p for p in Path(url).rglob("*") if ".tmp-" in p.name]


def test_round_trip_memory(memory_url: str) -> None:
    store = CheckpointStore(memory_url)
    write_epoch(store, 1)
    write_epoch(store, 2)
    checkpoint = store.latest(FINGERPRINT)
    assert checkpoint is not None
    assert checkpoint.epoch == 2
    assert store.read_state(checkpoint.state_files[1]).equals(state_table(2, 7))
    store.write_offsets(3, {"epoch": 3})
    assert store.read_offsets(3) == {"epoch": 3}
    assert store.offset_epochs() == [2, 3]  # 2 follows the oldest kept commit, 1


def test_empty_state_and_rewritten_offsets(store: CheckpointStore) -> None:
    store.write_offsets(0, {"splits": ["a"]})
    store.write_offsets(0, {"splits": ["a", "b"]})
    assert store.read_offsets(0) == {"splits": ["a", "b"]}
    store.commit(0, record(0), [])
    assert store.latest() == Checkpoint(epoch=0, record=record(0), state_files=())


def test_state_file_is_json_able(store: CheckpointStore) -> None:
    entry = store.write_state(4, "agg", "values", 0, [(0, state_table(4, 0))])
    assert StateFile(**{**json.loads(json.dumps(entry.__dict__)), "key_groups": (0,)}) == entry


def test_unparsable_offsets_names_the_file(store: CheckpointStore, url: str) -> None:
    store.write_offsets(5, {"a": 1})
    (Path(url) / "offsets" / "0000000005.json").write_text('{"a": ')
    with pytest.raises(CheckpointError, match=r"offsets/0000000005\.json.*not valid JSON"):
        store.read_offsets(5)


# ---------------------------------------------------------------- protocol order


def test_uncommitted_epoch_is_not_a_checkpoint(store: CheckpointStore) -> None:
    write_epoch(store, 1)
    files = write_epoch(store, 2, commit=False)
    assert store.offset_epochs() == [2]
    checkpoint = store.latest()
    assert checkpoint is not None and checkpoint.epoch == 1

    store.commit(2, record(2), files)
    checkpoint = store.latest()
    assert checkpoint is not None and checkpoint.epoch == 2


def test_partial_checkpoint_alone_is_none(store: CheckpointStore, url: str) -> None:
    files = write_epoch(store, 1, commit=False)
    # Even a manifest without its commit marker is not a checkpoint.
    store.commit(1, record(1), files)
    (Path(url) / "commits" / "0000000001.json").unlink()
    assert store.latest() is None
    assert store.describe() == {"url": url, "latest_epoch": None, "record": {}, "state": {}, "split_ids": []}


# ---------------------------------------------------------------- damage


def assert_falls_back(store: CheckpointStore, commit_name: str, problem: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="raystream"), pytest.warns(RuntimeWarning) as record_:
        checkpoint = store.latest(FINGERPRINT)
    assert checkpoint is not None and checkpoint.epoch == 1
    messages = [str(w.message) for w in record_]
    assert len(messages) == 1
    assert commit_name in messages[0] and problem in messages[0], messages[0]
    assert messages[0] in caplog.messages


def test_missing_manifest_falls_back(store: CheckpointStore, url: str, caplog: pytest.LogCaptureFixture) -> None:
    write_epoch(store, 1)
    write_epoch(store, 2)
    (Path(url) / "state" / "0000000002" / "manifest.json").unlink()
    assert_falls_back(store, "commits/0000000002.json", "missing manifest", caplog)


def test_truncated_state_file_falls_back(store: CheckpointStore, url: str, caplog: pytest.LogCaptureFixture) -> None:
    write_epoch(store, 1)
    files = write_epoch(store, 2)
    path = Path(url) / files[1].path
    path.write_bytes(path.read_bytes()[:-10])
    assert_falls_back(store, "commits/0000000002.json", "truncated", caplog)
    with pytest.raises(CorruptCheckpointError, match=r"part-00007\.arrow is corrupt: truncated"):
        store.read_state(files[1])


def test_altered_commit_marker_falls_back(store: CheckpointStore, url: str, caplog: pytest.LogCaptureFixture) -> None:
    write_epoch(store, 1)
    write_epoch(store, 2)
    marker = Path(url) / "commits" / "0000000002.json"
    # Flip a digit of the watermark: still valid JSON, but no longer what was committed.
    text = marker.read_text()
    at = text.index('"watermark_ms": 2000') + len('"watermark_ms": ')
    flip_byte(marker, at)
    assert json.loads(marker.read_text())["record"]["watermark_ms"] == 3000
    assert_falls_back(store, "commits/0000000002.json", "checksum mismatch", caplog)


def test_truncated_commit_marker_falls_back(store: CheckpointStore, url: str, caplog: pytest.LogCaptureFixture) -> None:
    write_epoch(store, 1)
    write_epoch(store, 2)
    marker = Path(url) / "commits" / "0000000002.json"
    marker.write_bytes(marker.read_bytes()[:40])
    assert_falls_back(store, "commits/0000000002.json", "truncated", caplog)


def test_flipped_byte_in_state_file_fails_read_state(store: CheckpointStore, url: str) -> None:
    files = write_epoch(store, 1)
    flip_byte(Path(url) / files[0].path, files[0].bytes // 2)
    # Same size, so latest() (which does not hash) still returns the commit; read_state catches it.
    checkpoint = store.latest(FINGERPRINT)
    assert checkpoint is not None and checkpoint.epoch == 1
    with pytest.raises(CorruptCheckpointError, match=r"part-00003\.arrow is corrupt: checksum mismatch") as info:
        store.read_state(checkpoint.state_files[0])
    assert url in str(info.value) and "commits/0000000001.json" in str(info.value)
    assert store.read_state(checkpoint.state_files[1]).equals(state_table(1, 7))


def test_missing_state_file_fails_read_state(store: CheckpointStore, url: str) -> None:
    files = write_epoch(store, 1)
    (Path(url) / files[0].path).unlink()
    with pytest.raises(CorruptCheckpointError, match=r"part-00003\.arrow is corrupt: missing"):
        store.read_state(files[0])


def test_only_commit_damaged_gives_none_with_warning(store: CheckpointStore, url: str) -> None:
    write_epoch(store, 1)
    (Path(url) / "state" / "0000000001" / "manifest.json").unlink()
    with pytest.warns(RuntimeWarning, match="missing manifest"):
        assert store.latest() is None


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_mismatch_is_refused(store: CheckpointStore, url: str) -> None:
    write_epoch(store, 1)
    with pytest.raises(CheckpointMismatchError) as info:
        store.latest("beef")
    message = str(info.value)
    assert message.startswith(
        f"checkpoint {url} (epoch 1) was written by a different pipeline "
        f"(fingerprint {FINGERPRINT}, this pipeline beef)"
    )
    assert "use a new checkpoint_dir, or run the pipeline that wrote it" in message
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, RaystreamError)
    # Without a fingerprint (inspection), it loads.
    assert store.latest() is not None


def test_missing_fingerprint_is_refused(store: CheckpointStore) -> None:
    store.commit(1, {"positions": {}}, [])
    with pytest.raises(CheckpointMismatchError, match="fingerprint None, this pipeline beef"):
        store.latest("beef")


# ---------------------------------------------------------------- pruning


def test_pruning_keeps_newest_commits_and_replayable_offsets(url: str) -> None:
    store = CheckpointStore(url, keep=2)
    for epoch in range(1, 5):
        write_epoch(store, epoch)
    # A crash left the state of epoch 5 without a commit, and logged epoch 6.
    write_epoch(store, 5, commit=False)
    store.write_offsets(6, {"epoch": 6})
    assert store.committed_epochs() == [3, 4]
    assert sorted(p.name for p in (Path(url) / "state").iterdir()) == ["0000000003", "0000000004", "0000000005"]
    # Offsets after the oldest kept commit (3) stay: replay from commit 3 needs 4, 5, 6.
    assert store.offset_epochs() == [4, 5, 6]

    store.write_state(1, "agg", "values", 0, [(0, state_table(1, 0))])  # a stale partial checkpoint
    write_epoch(store, 7)
    assert store.committed_epochs() == [4, 7]
    # Epoch 5 (no commit, older than 7) and the stale epoch 1 are gone; 3 was pruned.
    assert sorted(p.name for p in (Path(url) / "state").iterdir()) == ["0000000004", "0000000007"]
    assert store.offset_epochs() == [5, 6, 7]
    checkpoint = store.latest(FINGERPRINT)
    assert checkpoint is not None and checkpoint.epoch == 7


def test_pruning_ignores_damaged_commits_newer_than_the_committed_epoch(
    store: CheckpointStore, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(url, keep=1)
    write_epoch(store, 1)
    write_epoch(store, 2)
    (Path(url) / "state" / "0000000002" / "manifest.json").unlink()
    with pytest.warns(RuntimeWarning, match="missing manifest"):
        assert store.latest() is None  # keep=1 pruned epoch 1 already
    # A run restarting from scratch commits epoch 1 again: the damaged newer commit 2 must not count as kept.
    write_epoch(store, 1)
    assert store.committed_epochs() == [1, 2]
    with pytest.warns(RuntimeWarning, match="missing manifest"):
        checkpoint = store.latest(FINGERPRINT)
    assert checkpoint is not None and checkpoint.epoch == 1


def test_keep_must_be_positive(url: str) -> None:
    with pytest.raises(CheckpointError, match=r"keep=0 is invalid.*>= 1"):
        CheckpointStore(url, keep=0)


# ---------------------------------------------------------------- pickling, errors, describe


@pytest.mark.parametrize("use_memory", [False, True])
def test_store_pickles(url: str, memory_url: str, use_memory: bool) -> None:
    store = CheckpointStore(memory_url if use_memory else url, keep=2)
    write_epoch(store, 1)
    store.latest()  # the filesystem is created and cached
    clone = pickle.loads(pickle.dumps(store))
    assert clone.url == store.url and clone.keep == 2
    files = write_epoch(clone, 2)
    checkpoint = store.latest(FINGERPRINT)
    assert checkpoint is not None and checkpoint.epoch == 2
    assert clone.read_state(files[0]).equals(state_table(2, 3))


def test_storage_options_stay_secret(memory_url: str) -> None:
    store = CheckpointStore(memory_url, storage_options={"secret": "hunter2"})
    assert "hunter2" not in repr(store) and memory_url in repr(store)
    with pytest.raises(CheckpointError) as info:
        CheckpointStore("nosuchprotocol://bucket/ckpt", storage_options={"secret": "hunter2"})
    assert "nosuchprotocol://bucket/ckpt" in str(info.value) and "hunter2" not in str(info.value)


def test_bad_names_are_refused(store: CheckpointStore) -> None:
    with pytest.raises(CheckpointError, match="stage name 'a/b'"):
        store.write_state(1, "a/b", "values", 0, [(0, state_table(1, 0))])
    with pytest.raises(CheckpointError, match="writer=-1"):
        store.write_state(1, "agg", "values", -1, [(0, state_table(1, 0))])
    with pytest.raises(CheckpointError, match="key_group=-1"):
        store.write_state(1, "agg", "values", 0, [(-1, state_table(1, 0))])
    with pytest.raises(CheckpointError, match="given twice"):
        store.write_state(1, "agg", "values", 0, [(2, state_table(1, 0)), (2, state_table(1, 0))])
    with pytest.raises(CheckpointError, match="epoch=-1"):
        store.write_offsets(-1, {})


def test_commit_refuses_foreign_entries_and_unjsonable_records(store: CheckpointStore) -> None:
    old = store.write_state(1, "agg", "values", 0, [(0, state_table(1, 0))])
    with pytest.raises(CheckpointError, match="only the StateFile entries that write_state returned for epoch 2"):
        store.commit(2, record(2), [old])
    with pytest.raises(CheckpointError, match="listed twice"):
        store.commit(1, record(1), [old, old])
    with pytest.raises(CheckpointError, match="commit record of epoch 1 is not JSON-able"):
        store.commit(1, {"positions": object()}, [old])
    assert store.committed_epochs() == []


def test_a_file_is_not_a_checkpoint_dir(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    store = CheckpointStore(str(path))
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        store.latest()
    with pytest.raises(CheckpointError, match="cannot write"):
        store.write_offsets(1, {})


def test_describe(store: CheckpointStore, url: str) -> None:
    assert store.describe() == {"url": url, "latest_epoch": None, "record": {}, "state": {}, "split_ids": []}
    files = write_epoch(store, 1)
    files.append(store.write_state(2, "window", "open", 0, [(0, state_table(2, 0).slice(0, 2))]))
    files = [f for f in files if f.path.startswith("state/0000000002")] + [
        store.write_state(2, "agg", "values", kg, [(kg, state_table(2, kg))]) for kg in (3, 7)
    ]
    store.commit(2, record(2), files)
    described = store.describe()
    agg_bytes = sum(f.bytes for f in files if f.stage == "agg")
    assert described == {
        "url": url,
        "split_ids": [],
        "latest_epoch": 2,
        "record": record(2),
        "state": {
            "agg": {"files": 2, "rows": 10, "bytes": agg_bytes},
            "window": {"files": 1, "rows": 2, "bytes": files[0].bytes},
        },
    }
    json.dumps(described)


def test_one_file_holds_a_writers_key_groups_and_reads_back_any_subset(store: CheckpointStore) -> None:
    """A writer's key groups share one file (a record batch each): a rescaled restore reads only its own."""
    groups = [(kg, state_table(1, kg)) for kg in (3, 7, 9)] + [(11, state_table(1, 11).slice(0, 0))]
    entry = store.write_state(1, "agg", "values", 0, groups)
    assert entry.key_groups == (3, 7, 9, 11) and entry.rows == 15
    store.commit(1, record(1), [entry])
    checkpoint = store.latest(FINGERPRINT)
    assert checkpoint is not None and checkpoint.state_files == (entry,)
    assert store.read_state(entry, {7, 11}).equals(state_table(1, 7))
    assert store.read_state(entry, {9, 3}).equals(pa.concat_tables([state_table(1, 3), state_table(1, 9)]))
    assert store.read_state(entry).num_rows == 15
    assert store.read_state(entry, {42}).num_rows == 0


# ---------------------------------------------------------------- signing with a key


def test_a_signed_checkpoint_reads_back_with_its_key_and_hides_the_key(url: str) -> None:
    signed = CheckpointStore(url, key="s3cr3t-key")
    write_epoch(signed, 1)
    checkpoint = signed.latest()
    assert checkpoint is not None and checkpoint.epoch == 1
    signed.write_offsets(2, {"epoch": 2})
    assert signed.read_offsets(2) == {"epoch": 2}
    assert "s3cr3t" not in repr(signed) and b"s3cr3t" not in pickle.dumps(signed)
    marker = json.loads((Path(url) / "commits" / "0000000001.json").read_text())
    assert "hmac" in marker and "sha256" not in marker


def test_a_checkpoint_altered_without_the_key_is_refused_not_skipped(url: str) -> None:
    signed = CheckpointStore(url, key="s3cr3t-key")
    write_epoch(signed, 1)
    write_epoch(signed, 2)
    # An attacker who can write the folder, but has no key, changes the record and recomputes a checksum.
    path = Path(url) / "commits" / "0000000002.json"
    marker = json.loads(path.read_text())
    marker["record"]["positions"] = {"split-0": 0}
    del marker["hmac"]
    unkeyed = CheckpointStore(url)
    marker.update(unkeyed._sign({k: marker[k] for k in ("epoch", "record", "manifest_sha256")}))
    path.write_text(json.dumps(marker))
    with pytest.raises(TamperedCheckpointError, match="does not verify with the checkpoint key"):
        signed.latest()
    with pytest.raises(TamperedCheckpointError, match="does not verify"):
        CheckpointStore(url, key="another-key").latest()


def test_an_altered_offsets_record_is_refused_with_a_key_and_named_without(url: str) -> None:
    signed = CheckpointStore(url, key="s3cr3t-key")
    write_epoch(signed, 1, commit=False)
    path = Path(url) / "offsets" / "0000000001.json"
    logged = json.loads(path.read_text())
    logged["record"]["positions"] = {"split-0": 999}
    path.write_text(json.dumps(logged))
    with pytest.raises(TamperedCheckpointError):
        signed.read_offsets(1)
    unsigned = CheckpointStore(str(Path(url).parent / "plain"))
    write_epoch(unsigned, 1, commit=False)
    plain = Path(url).parent / "plain" / "offsets" / "0000000001.json"
    logged = json.loads(plain.read_text())
    logged["record"]["positions"] = {"split-0": 999}
    plain.write_text(json.dumps(logged))
    with pytest.raises(CorruptCheckpointError, match="does not match its checksum"):
        unsigned.read_offsets(1)


def test_a_signed_checkpoint_needs_the_key_to_be_read(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    write_epoch(CheckpointStore(url, key="s3cr3t-key"), 1)
    monkeypatch.delenv("RAYSTREAM_CHECKPOINT_KEY", raising=False)
    with pytest.raises(TamperedCheckpointError, match="set RAYSTREAM_CHECKPOINT_KEY"):
        CheckpointStore(url).latest()
    monkeypatch.setenv("RAYSTREAM_CHECKPOINT_KEY", "s3cr3t-key")
    checkpoint = CheckpointStore(url).latest()
    assert checkpoint is not None and checkpoint.epoch == 1
