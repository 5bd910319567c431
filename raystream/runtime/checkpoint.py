"""The checkpoint store: a write-ahead offset log, keyed state files and commit markers.

A checkpoint lives under one fsspec URL (a local folder, ``memory://``,
``s3://``...)::

    offsets/<epoch:010d>.json                                   the write-ahead log, one record per epoch
    splits/<epoch:010d>.json                                    the splits found by then, once (JSON, never pickle)
    state/<epoch:010d>/<stage>/<table>/part-<writer:05d>.arrow  Arrow IPC files, a record batch per key group
    state/<epoch:010d>/manifest.json                            the state files of the epoch
    commits/<epoch:010d>.json                                   the commit marker, written last

Epochs are zero-padded to 10 digits, so the lexical order of the names is the
numeric order of the epochs.

The store keeps the files of the epoch and checkpoint protocol, whose one
description is in :mod:`raystream.runtime.checkpointing`: ``write_offsets``
is its step 3, ``write_state`` (called by each partition actor, in
parallel) its step 5 and ``commit`` its step 7. A state file holds one
record batch per key group, so that a checkpoint costs a few files per
actor whatever the number of key groups, and a restore with another
parallelism still reads just the key groups it owns. The commit marker
names the manifest's checksum and carries its own: the epoch is a
checkpoint only once its marker is whole, and a state directory without a
marker is a partial checkpoint, ignored. ``commit`` then prunes: it keeps
the newest ``keep`` commits, and deletes the older ones with their state,
the offsets no kept checkpoint can replay, and the state directories
crashed epochs left behind.

On restart, ``latest`` returns the newest commit that passes its checks
(marker checksum, manifest checksum, every state file present with its
size). A damaged newest commit is skipped with a warning, and the previous
one is used. ``read_state`` checks each file's SHA-256 when it is restored.

Checksums catch damage, not an attacker, who can compute them too. With a
key (``RunConfig.checkpoint_key``, or ``RAYSTREAM_CHECKPOINT_KEY`` in the
environment), commit markers and offset records carry an HMAC-SHA256
instead; the marker names the manifest's SHA-256, the manifest each state
file's and the record each splits file's, so the key covers everything.
A marker or record whose HMAC does not verify is refused with an error,
never skipped: falling back, or starting over, would double the output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import os
import re
import uuid
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.ipc

from raystream._fs import url_to_fs
from raystream.errors import RaystreamError

__all__ = [
    "KEY_VARIABLE",
    "Checkpoint",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointStore",
    "CorruptCheckpointError",
    "StateFile",
    "TamperedCheckpointError",
]

#: The environment variable that holds the key checkpoints are signed with, when no key is passed.
KEY_VARIABLE = "RAYSTREAM_CHECKPOINT_KEY"

_logger = logging.getLogger("raystream")

_OFFSETS = "offsets"
_SPLITS = "splits"
_STATE = "state"
_COMMITS = "commits"
_MANIFEST = "manifest.json"
_EPOCH_DIGITS = 10
_MAX_EPOCH = 10**_EPOCH_DIGITS - 1
_MAX_KEY_GROUP = 10**5 - 1
_EPOCH_JSON = re.compile(r"^(\d{10})\.json$")
_EPOCH_DIR = re.compile(r"^(\d{10})$")
# A PUT to these object stores is atomic, and their "rename" is a copy plus a
# delete: a temporary name would double the cost and add no safety.
_ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl"})
_COMMIT_KEYS = ("epoch", "manifest_sha256", "record")


class CheckpointError(RaystreamError):
    """The checkpoint directory cannot be used: unreadable, unwritable or malformed."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint directory was written by a different pipeline."""


class CorruptCheckpointError(CheckpointError):
    """A file of a committed checkpoint is missing, truncated or altered."""


class TamperedCheckpointError(CheckpointError):
    """A checkpoint's signature does not verify with the key: it was altered, or signed with another key."""


@dataclass(frozen=True)
class StateFile:
    """One state file of a checkpoint: an entry of the epoch's manifest.

    JSON-able with ``dataclasses.asdict``.

    Attributes:
        stage: The stage that owns the state.
        table: The name of the state table within the stage.
        writer: The partition actor that wrote the file (its index in the stage).
        path: The file's path relative to the checkpoint root, with ``/`` separators.
        key_groups: The key group of each record batch of the file, in file order.
        rows: The number of rows, over all key groups.
        bytes: The size of the file in bytes.
        sha256: The hex SHA-256 of the file's bytes.
    """

    stage: str
    table: str
    writer: int
    path: str
    key_groups: tuple[int, ...]
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Checkpoint:
    """A committed checkpoint, as found by ``CheckpointStore.latest``.

    Attributes:
        epoch: The epoch the checkpoint was taken after.
        record: What the runtime passed to ``commit`` (positions, watermark,
            fingerprint...), as read back from JSON: tuples come back as lists.
        state_files: The manifest's entries, sorted by stage, table and key group.
    """

    epoch: int
    record: dict[str, Any]
    state_files: tuple[StateFile, ...]


class CheckpointStore:
    """Reads and writes the checkpoints of one pipeline under one fsspec URL.

    The store is picklable and is sent to Ray actors: it keeps the URL and the
    storage options, and recreates the filesystem lazily in each process.
    The storage options (credentials) never appear in messages or reprs.

    Only the driver calls ``write_offsets`` and ``commit``, one epoch at a
    time. ``write_state`` is called from many processes at once, each
    writer for its own key groups.

    Args:
        url: The checkpoint directory, any fsspec URL.
        storage_options: Options for the filesystem (for s3fs: ``key``,
            ``secret``, ``client_kwargs``...).
        keep: How many committed checkpoints ``commit`` keeps when it prunes.

    Raises:
        CheckpointError: ``keep`` is not an integer of at least 1, or no
            filesystem can open ``url``.
    """

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None = None, keep: int = 3, key: str | None = None
    ) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise CheckpointError(
                f"checkpoint {url}: keep={keep!r} is invalid; keep is how many checkpoints to keep, an integer >= 1"
            )
        self.url = url
        self.keep = keep
        key = key if key is not None else os.environ.get(KEY_VARIABLE) or None
        self._key: bytes | None = None if key is None else key.encode()
        self._storage_options: dict[str, Any] = dict(storage_options or {})
        self._fs_cache: tuple[fsspec.AbstractFileSystem, str] | None = None
        self._filesystem()  # fail now, not in an actor, on an unknown protocol

    def __repr__(self) -> str:
        return f"CheckpointStore({self.url!r}, keep={self.keep})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fs_cache"] = None
        state["_key"] = None  # actors write state files only, which the signed manifest covers
        return state

    # ------------------------------------------------------------------ signatures

    def _sign(self, body: Any) -> dict[str, str]:
        """The signature of a JSON body: an HMAC with the key, else a plain checksum."""
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        if self._key is None:
            return {"sha256": hashlib.sha256(canonical).hexdigest()}
        return {"hmac": hmac.new(self._key, canonical, hashlib.sha256).hexdigest()}

    def _verify(self, body: Any, signature: dict[str, Any], what: str) -> bool:
        """Whether ``signature`` is ``body``'s; False for a damaged plain checksum.

        Raises:
            TamperedCheckpointError: with a key, when the signature is not an
                HMAC of it with that key; without one, when it is signed.
        """
        expected = self._sign(body)
        if self._key is not None:
            given = signature.get("hmac")
            if not isinstance(given, str) or not hmac.compare_digest(given, expected["hmac"]):
                raise TamperedCheckpointError(
                    f"checkpoint {what}: its signature does not verify with the checkpoint key: it was altered, or "
                    f"written with another key or none; refusing it (a fallback could double the output). Use the "
                    f"key that wrote it, or a new checkpoint_dir"
                )
            return True
        if "hmac" in signature:
            raise TamperedCheckpointError(
                f"checkpoint {what}: it is signed, and no key is set to verify it; set {KEY_VARIABLE} (or "
                f"RunConfig.checkpoint_key) to the key that wrote it"
            )
        return signature.get("sha256") == expected["sha256"]

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ------------------------------------------------------------------ offsets

    def write_offsets(self, epoch: int, record: dict[str, Any]) -> None:
        """Step 3 of the protocol: log where ``epoch`` reads, before any of its output is made.

        Called by the driver once per epoch. The file appears whole or not at
        all (written under a temporary name, then renamed), and an existing
        record of the epoch is replaced.

        Args:
            epoch: The epoch.
            record: A JSON-able dict; ``read_offsets`` returns it as read back from JSON.

        Raises:
            CheckpointError: ``record`` is not JSON-able, or the file cannot be written.
        """
        _check_epoch(epoch, self.url)
        self._dumps(record, f"the offsets record of epoch {epoch}")  # a clear error for a record that is not JSON
        data = self._dumps({"record": record, "signature": self._sign(record)}, "the offsets record").encode()
        self._write_bytes(_offsets_rel(epoch), data)

    def read_offsets(self, epoch: int) -> dict[str, Any] | None:
        """Return the offsets record logged for ``epoch``, or None if there is none.

        Raises:
            CheckpointError: The file exists but is not a JSON object.
        """
        _check_epoch(epoch, self.url)
        rel = _offsets_rel(epoch)
        data = self._read_bytes(rel)
        if data is None:
            return None
        try:
            record = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"checkpoint {self._name(rel)}: the offsets record is not valid JSON ({exc}); "
                f"the file is damaged: restore it, or use a new checkpoint_dir"
            ) from exc
        if (
            not isinstance(record, dict)
            or set(record) != {"record", "signature"}
            or not isinstance(record["record"], dict)
            or not isinstance(record["signature"], dict)
        ):
            raise CheckpointError(
                f"checkpoint {self._name(rel)}: the offsets record is not one raystream wrote; "
                f"the file is damaged: restore it, or use a new checkpoint_dir"
            )
        if not self._verify(record["record"], record["signature"], self._name(rel)):
            raise CorruptCheckpointError(
                f"checkpoint {self._name(rel)}: the offsets record does not match its checksum; the file is "
                f"damaged: restore it, or use a new checkpoint_dir"
            )
        return dict(record["record"])

    def offset_epochs(self) -> list[int]:
        """Return the epochs that have an offsets record, sorted."""
        return self._list_epoch_files(_OFFSETS)

    # ------------------------------------------------------------------ splits

    def write_splits(self, epoch: int, splits: list[Any]) -> str:
        """Store the splits a job found by ``epoch`` (epoch 0: those it started with); return the file's SHA-256.

        Called by the driver when a job starts and when a source finds new
        splits, not with every commit: a commit record names the splits
        files it needs, with their checksums. The list is JSON (the sources
        encode their payloads), so reading it back can never run code.

        Raises:
            CheckpointError: ``splits`` is not JSON-able, or the file cannot be written.
        """
        _check_epoch(epoch, self.url)
        data = self._dumps(splits, f"the splits found by epoch {epoch}").encode()
        self._write_bytes(_splits_rel(epoch), data)
        return hashlib.sha256(data).hexdigest()

    def read_splits(self, epoch: int, sha256: str) -> list[Any]:
        """The splits :meth:`write_splits` stored for ``epoch``, checked against their SHA-256.

        Raises:
            CorruptCheckpointError: the file is missing, altered or not a JSON list.
        """
        _check_epoch(epoch, self.url)
        rel = _splits_rel(epoch)
        data = self._read_bytes(rel)
        problem = None
        if data is None:
            problem = "missing"
        elif hashlib.sha256(data).hexdigest() != sha256:
            problem = "checksum mismatch"
        else:
            try:
                splits = json.loads(data)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                problem = f"not valid JSON ({exc})"
            else:
                if isinstance(splits, list):
                    return splits
                problem = "not a JSON list"
        raise CorruptCheckpointError(
            f"checkpoint {self._name(rel)}, the splits the job reads, is corrupt: {problem}; every checkpoint of "
            "the job needs it: restore the file, or use a new checkpoint_dir"
        )

    # ------------------------------------------------------------------ state

    def write_state(
        self, epoch: int, stage: str, table: str, writer: int, groups: Sequence[tuple[int, pa.Table]]
    ) -> StateFile:
        """Step 5: write one writer's state of one table, a record batch per key group; return its manifest entry.

        Called by partition actors, many at once, each for its own key groups.
        The file is written whole (under a temporary name, then renamed, where
        a write is not atomic by itself); the entry's size and SHA-256 are
        those of the bytes written.

        Args:
            epoch: The epoch being checkpointed.
            stage: The stage that owns the state (a name without ``/``).
            table: The state table's name within the stage (a name without ``/``).
            writer: The index of the partition actor writing, which names the file.
            groups: ``(key_group, rows)`` pairs, each key group (0 to 99999) once, all with the same schema.

        Returns:
            The entry to pass, with the others of the epoch, to ``commit``.

        Raises:
            CheckpointError: A name or number is invalid, or the file cannot be written.
        """
        _check_epoch(epoch, self.url)
        _check_name("stage", stage, self.url)
        _check_name("table", table, self.url)
        _check_int("writer", writer, _MAX_KEY_GROUP, self.url)
        if not groups:
            raise CheckpointError(
                f"checkpoint {self.url}: no key groups to write for {stage}/{table}; skip a table without rows"
            )
        for key_group, _ in groups:
            _check_int("key_group", key_group, _MAX_KEY_GROUP, self.url)
        key_groups = tuple(int(key_group) for key_group, _ in groups)
        if len(set(key_groups)) != len(key_groups):
            raise CheckpointError(
                f"checkpoint {self.url}: a key group is given twice for {stage}/{table}; pass each key group once"
            )
        sink = io.BytesIO()
        schema = groups[0][1].schema
        with pyarrow.ipc.new_file(sink, schema) as out:
            for _, data in groups:
                # One batch per key group: the reader finds a key group's rows by batch index.
                out.write_batch(data.combine_chunks().to_batches()[0] if data.num_rows else _empty_batch(schema))
        payload = sink.getvalue()
        rel = f"{_epoch_dir_rel(epoch)}/{stage}/{table}/part-{writer:05d}.arrow"
        self._write_bytes(rel, payload)
        return StateFile(
            stage=stage,
            table=table,
            writer=writer,
            path=rel,
            key_groups=key_groups,
            rows=sum(data.num_rows for _, data in groups),
            bytes=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
        )

    def read_state(self, entry: StateFile, key_groups: Collection[int] | None = None) -> pa.Table:
        """Read one state file back, checking its size, SHA-256 and row count.

        Args:
            entry: An entry of a ``Checkpoint``'s ``state_files``.
            key_groups: Keep only these key groups' rows; ``None`` keeps all.

        Returns:
            The rows that ``write_state`` wrote, of the chosen key groups.

        Raises:
            CorruptCheckpointError: The file is missing, truncated or altered.
        """
        rel = entry.path
        if not _is_safe_rel(rel):
            raise CorruptCheckpointError(
                f"checkpoint {self.url}: state file path {rel!r} escapes the checkpoint directory; "
                f"the manifest is damaged: {self._fallback_hint(None)}"
            )
        data = self._read_bytes(rel)
        problem = None
        if data is None:
            problem = "missing"
        elif len(data) != entry.bytes:
            problem = f"truncated or resized ({len(data)} bytes, expected {entry.bytes})"
        elif (digest := hashlib.sha256(data).hexdigest()) != entry.sha256:
            problem = f"checksum mismatch (sha256 {digest}, expected {entry.sha256})"
        if problem is None and data is not None:
            try:
                reader = pyarrow.ipc.open_file(pa.BufferReader(data))
                batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            except (pa.ArrowInvalid, OSError) as exc:
                problem = f"not a readable Arrow IPC file ({exc})"
            else:
                rows = sum(batch.num_rows for batch in batches)
                if len(batches) != len(entry.key_groups):
                    problem = f"holds {len(batches)} key groups, expected {len(entry.key_groups)}"
                elif rows != entry.rows:
                    problem = f"holds {rows} rows, expected {entry.rows}"
                else:
                    wanted = [
                        b
                        for b, g in zip(batches, entry.key_groups, strict=True)
                        if key_groups is None or g in key_groups
                    ]
                    return pa.Table.from_batches(wanted, reader.schema)
        raise CorruptCheckpointError(
            f"checkpoint state file {self._name(rel)} is corrupt: {problem}; "
            f"{self._fallback_hint(_epoch_of_state_rel(rel))}"
        )

    # ------------------------------------------------------------------ commit

    def commit(self, epoch: int, record: dict[str, Any], state_files: list[StateFile]) -> None:
        """Step 7 of the protocol: commit ``epoch``, writing its manifest, then its commit marker, then prune.

        Called by the driver once per epoch, after every ``write_state`` of
        the epoch has returned. The epoch is a checkpoint as soon as the
        marker is written; pruning follows (see the module docstring):

        - commits older than the newest ``keep`` (counting only epochs up to
          ``epoch``) are deleted, marker first, then their state;
        - ``offsets/<e>`` is deleted for every ``e`` up to the oldest kept
          commit's epoch: the runtime replays only the epochs after a commit;
        - state directories older than ``epoch`` without a kept commit
          (partial checkpoints of crashed runs) are deleted.

        Commits newer than ``epoch`` (left by a run whose newest commits were
        damaged) are left alone: this run rewrites them as it gets there.

        Args:
            epoch: The epoch to commit.
            record: A JSON-able dict (positions, watermark, ``fingerprint``...).
            state_files: The entries ``write_state`` returned for this epoch.

        Raises:
            CheckpointError: ``record`` is not JSON-able, an entry is not a
                state file of this epoch or is repeated, or a file cannot be
                written.
        """
        _check_epoch(epoch, self.url)
        prefix = _epoch_dir_rel(epoch) + "/"
        seen: set[tuple[str, str, int]] = set()
        for entry in state_files:
            if not isinstance(entry, StateFile) or not entry.path.startswith(prefix) or not _is_safe_rel(entry.path):
                raise CheckpointError(
                    f"checkpoint {self.url}: cannot commit epoch {epoch} with state file {entry!r}: "
                    f"only the StateFile entries that write_state returned for epoch {epoch} belong in it"
                )
            for key_group in entry.key_groups:
                ident = (entry.stage, entry.table, key_group)
                if ident in seen:
                    raise CheckpointError(
                        f"checkpoint {self.url}: cannot commit epoch {epoch}: key group {key_group} of "
                        f"{entry.stage}/{entry.table} is listed twice; pass each write_state entry once"
                    )
                seen.add(ident)
        entries = sorted(state_files, key=lambda e: (e.stage, e.table, e.writer))
        self._dumps(record, f"the commit record of epoch {epoch}")  # fail before writing anything
        manifest = self._dumps([dataclasses.asdict(e) for e in entries], f"the manifest of epoch {epoch}").encode()
        self._write_bytes(_manifest_rel(epoch), manifest)
        body = {"epoch": epoch, "record": record, "manifest_sha256": hashlib.sha256(manifest).hexdigest()}
        marker = {**body, **self._sign(body)}
        self._write_bytes(_commit_rel(epoch), self._dumps(marker, "the commit marker").encode())
        self._prune(epoch)

    def _prune(self, epoch: int) -> None:
        """Delete what no kept checkpoint needs, after ``epoch`` was committed."""
        committed = [e for e in self.committed_epochs() if e <= epoch]
        if not committed:  # a listing that does not show the marker yet: prune next time
            return
        kept = set(committed[-self.keep :])
        oldest_kept = min(kept)
        # Markers go first: a crash midway leaves state without a marker, which
        # is ignored and pruned later, never a marker without its state.
        for e in committed:
            if e not in kept:
                self._remove(_commit_rel(e))
        for e in self._list_epoch_dirs():
            if e < epoch and e not in kept:
                self._remove(_epoch_dir_rel(e), recursive=True)
        for e in self.offset_epochs():
            if e <= oldest_kept:
                self._remove(_offsets_rel(e))

    def committed_epochs(self) -> list[int]:
        """Return the epochs that have a commit marker, sorted, without checking them."""
        return self._list_epoch_files(_COMMITS)

    # ------------------------------------------------------------------ restore

    def latest(self, fingerprint: str | None = None, skip: Collection[int] = ()) -> Checkpoint | None:
        """Return the newest valid committed checkpoint, or None if there is none.

        Called by the driver when a job starts. A commit is valid when its
        marker parses and matches its own checksum, its manifest exists and
        matches the marker's ``manifest_sha256``, and every state file exists
        with the recorded size (contents are hashed later, by ``read_state``).
        A state directory without a marker is never a checkpoint.

        An invalid commit is skipped, with a warning (``warnings`` and the
        ``raystream`` logger) naming its marker file and what is wrong, and
        the previous one is tried.

        Args:
            fingerprint: The fingerprint of the pipeline about to run. When
                given, it must equal the ``"fingerprint"`` of the checkpoint's
                record.
            skip: Epochs not to consider: their checkpoint turned out corrupt
                when its state files were read.

        Returns:
            The newest valid checkpoint, or None.

        Raises:
            CheckpointMismatchError: ``fingerprint`` differs from the checkpoint's.
        """
        for epoch in reversed(self.committed_epochs()):
            if epoch in skip:
                continue
            checkpoint, problem = self._load_commit(epoch)
            if checkpoint is None:
                message = (
                    f"checkpoint {self.url}: skipping commit {self._name(_commit_rel(epoch))} (epoch {epoch}): "
                    f"{problem}; falling back to the previous checkpoint"
                )
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                _logger.warning("%s", message)
                continue
            found = checkpoint.record.get("fingerprint")
            if fingerprint is not None and found != fingerprint:
                raise CheckpointMismatchError(
                    f"checkpoint {self.url} (epoch {epoch}) was written by a different pipeline "
                    f"(fingerprint {found}, this pipeline {fingerprint}): restoring its state and positions "
                    f"into this pipeline would give wrong results; use a new checkpoint_dir, "
                    f"or run the pipeline that wrote it"
                )
            return checkpoint
        return None

    def _load_commit(self, epoch: int) -> tuple[Checkpoint | None, str]:
        """Load and check the commit of ``epoch``; return it, or None and what is wrong."""
        data = self._read_bytes(_commit_rel(epoch))
        if data is None:
            return None, "the commit marker disappeared while being read"
        if not data:
            return None, "truncated (empty file)"
        try:
            marker = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"truncated or not valid JSON ({exc})"
        if not isinstance(marker, dict) or not any(isinstance(marker.get(k), str) for k in ("sha256", "hmac")):
            return None, "malformed: not a commit marker (no sha256)"
        signature = {k: marker.pop(k) for k in ("sha256", "hmac") if k in marker}
        if not self._verify(marker, signature, self._name(_commit_rel(epoch))):
            return None, "checksum mismatch: the commit marker was altered or damaged"
        if sorted(marker) != sorted(_COMMIT_KEYS) or not isinstance(marker["record"], dict):
            return None, f"malformed: expected the keys {', '.join(_COMMIT_KEYS)}, sha256"
        if marker["epoch"] != epoch:
            return None, f"the marker is of epoch {marker['epoch']!r}, not {epoch}"
        manifest_rel = _manifest_rel(epoch)
        manifest = self._read_bytes(manifest_rel)
        if manifest is None:
            return None, f"missing manifest {manifest_rel}"
        if hashlib.sha256(manifest).hexdigest() != marker["manifest_sha256"]:
            return None, f"checksum mismatch of manifest {manifest_rel}"
        try:
            entries = tuple(_state_file_from_json(item) for item in json.loads(manifest))
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            return None, f"malformed manifest {manifest_rel} ({exc})"
        prefix = _epoch_dir_rel(epoch) + "/"
        sizes = self._file_sizes(_epoch_dir_rel(epoch))
        for entry in entries:
            if not entry.path.startswith(prefix) or not _is_safe_rel(entry.path):
                return None, f"manifest {manifest_rel} lists {entry.path!r}, outside {prefix}"
            size = sizes.get(entry.path)
            if size is None:
                size = self._size(entry.path)  # the listing may name paths differently: ask for the file itself
            if size is None:
                return None, f"missing state file {entry.path}"
            if size != entry.bytes:
                return None, f"state file {entry.path} is truncated or resized ({size} bytes, expected {entry.bytes})"
        return Checkpoint(epoch=epoch, record=marker["record"], state_files=entries), ""

    def describe(self) -> dict[str, Any]:
        """Summarize the newest valid checkpoint, for ``raystream checkpoints inspect``.

        The fingerprint is not checked. Invalid newer commits are skipped with
        warnings, as in ``latest``.

        Returns:
            ``{"url", "latest_epoch", "record", "state", "split_ids"}``, where
            ``state`` maps each stage to ``{"files", "rows", "bytes"}`` and
            ``split_ids`` lists the splits of the stored split lists. Without
            a checkpoint, ``latest_epoch`` is None and the rest is empty.

        Raises:
            CorruptCheckpointError: a stored split list is damaged.
        """
        checkpoint = self.latest()
        if checkpoint is None:
            return {"url": self.url, "latest_epoch": None, "record": {}, "state": {}, "split_ids": []}
        found: list[tuple[str, str]] = []  # (source stage, split id)
        stored = checkpoint.record.get("splits")
        for epoch, sha256 in sorted(stored.items() if isinstance(stored, dict) else []):
            for entry in self.read_splits(int(epoch), str(sha256)):
                split = entry.get("split") if isinstance(entry, dict) else None
                stage = str(entry.get("source")) if isinstance(entry, dict) else "?"
                found.append((stage, str(split.get("split_id")) if isinstance(split, dict) else "?"))
        # Split ids carry their source stage's name when the job has several sources, as the coordinator's do.
        several = len({stage for stage, _ in found}) > 1
        split_ids = [f"{stage}/{split_id}" if several else split_id for stage, split_id in found]
        state: dict[str, dict[str, int]] = {}
        for entry in checkpoint.state_files:
            totals = state.setdefault(entry.stage, {"files": 0, "rows": 0, "bytes": 0})
            totals["files"] += 1
            totals["rows"] += entry.rows
            totals["bytes"] += entry.bytes
        return {
            "url": self.url,
            "latest_epoch": checkpoint.epoch,
            "record": checkpoint.record,
            "state": state,
            "split_ids": split_ids,
        }

    # ------------------------------------------------------------------ filesystem

    def _filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        if self._fs_cache is None:
            try:
                fs, root = url_to_fs(self.url, self._storage_options)
            except (ImportError, ValueError, TypeError) as exc:
                raise CheckpointError(
                    f"checkpoint {self.url}: cannot open the checkpoint directory ({type(exc).__name__}: {exc}); "
                    f"use a local path or an fsspec URL whose filesystem is installed (s3:// needs s3fs)"
                ) from exc
            self._fs_cache = (fs, root.rstrip("/"))
        return self._fs_cache

    def _abs(self, rel: str) -> str:
        return f"{self._filesystem()[1]}/{rel}"

    def _name(self, rel: str) -> str:
        """The file's name for messages: the URL as given, plus the relative path."""
        return f"{self.url.rstrip('/')}/{rel}"

    def _fallback_hint(self, epoch: int | None) -> str:
        marker = f"commits/{epoch:0{_EPOCH_DIGITS}d}.json" if epoch is not None else "the newest commit marker"
        return (
            f"restore the file, or delete {self._name(marker)} to restart from the previous checkpoint, "
            f"or use a new checkpoint_dir"
        )

    def _dumps(self, obj: Any, what: str) -> str:
        try:
            return json.dumps(obj, sort_keys=True, indent=1)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {self.url}: {what} is not JSON-able ({exc}); "
                f"records must hold only dicts with string keys, lists, strings, numbers, booleans and None"
            ) from exc

    def _write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file: readers see the old file or the new one, never a part."""
        fs, _ = self._filesystem()
        path = self._abs(rel)
        parent, _, name = path.rpartition("/")
        try:
            fs.makedirs(parent, exist_ok=True)
            if _protocol(fs) in _ATOMIC_PUT_PROTOCOLS:
                fs.pipe_file(path, data)
                return
            # The leading dot keeps temporary files out of the epoch listings.
            tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
            try:
                fs.pipe_file(tmp, data)
                fs.mv(tmp, path)
            except BaseException:
                self._remove_abs(tmp)
                raise
        except OSError as exc:
            raise CheckpointError(
                f"checkpoint {self._name(rel)}: cannot write the file ({type(exc).__name__}: {exc}); "
                f"check that checkpoint_dir is a writable directory"
            ) from exc

    def _read_bytes(self, rel: str) -> bytes | None:
        """Return the file's bytes, or None if it does not exist."""
        fs, _ = self._filesystem()
        try:
            data: bytes = fs.cat_file(self._abs(rel))
        except FileNotFoundError:
            return None
        except IsADirectoryError as exc:
            raise CheckpointError(
                f"checkpoint {self._name(rel)}: is a directory, not a file; "
                f"the checkpoint directory is damaged or is not a checkpoint: use a new checkpoint_dir"
            ) from exc
        return data

    def _size(self, rel: str) -> int | None:
        fs, _ = self._filesystem()
        try:
            info = fs.info(self._abs(rel))
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type") == "file" else None

    def _file_sizes(self, rel_dir: str) -> dict[str, int]:
        """Map the relative path of every file under ``rel_dir`` to its size, in one listing."""
        fs, root = self._filesystem()
        path = self._abs(rel_dir)
        fs.invalidate_cache(path)
        try:
            found = fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        prefix = root + "/"
        return {
            name[len(prefix) :]: int(info["size"])
            for name, info in found.items()
            if name.startswith(prefix) and info.get("type") == "file"
        }

    def _list_names(self, rel_dir: str) -> list[str]:
        fs, _ = self._filesystem()
        path = self._abs(rel_dir)
        fs.invalidate_cache(path)
        try:
            names = fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        except NotADirectoryError as exc:
            raise CheckpointError(
                f"checkpoint {self._name(rel_dir)}: is a file, not a directory; "
                f"{self.url} is not a checkpoint directory: use a new checkpoint_dir"
            ) from exc
        return [str(name).rstrip("/").rpartition("/")[2] for name in names]

    def _list_epoch_files(self, rel_dir: str) -> list[int]:
        return sorted(int(m.group(1)) for name in self._list_names(rel_dir) if (m := _EPOCH_JSON.match(name)))

    def _list_epoch_dirs(self) -> list[int]:
        return sorted(int(m.group(1)) for name in self._list_names(_STATE) if (m := _EPOCH_DIR.match(name)))

    def _remove(self, rel: str, recursive: bool = False) -> None:
        self._remove_abs(self._abs(rel), recursive)

    def _remove_abs(self, path: str, recursive: bool = False) -> None:
        fs, _ = self._filesystem()
        # Already gone is fine: another prune, or a crash between a write and its rename.
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path, recursive=recursive)


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def _check_epoch(epoch: int, url: str) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= _MAX_EPOCH:
        raise CheckpointError(f"checkpoint {url}: epoch={epoch!r} is invalid; it must be an integer 0..{_MAX_EPOCH}")


def _check_name(kind: str, name: str, url: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise CheckpointError(
            f"checkpoint {url}: {kind} name {name!r} cannot name a directory; "
            f"use a non-empty name without '/' or '\\' that does not start with '.'"
        )


def _is_safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and all(part not in ("", ".", "..") for part in parts)


def _epoch_dir_rel(epoch: int) -> str:
    return f"{_STATE}/{epoch:0{_EPOCH_DIGITS}d}"


def _splits_rel(epoch: int) -> str:
    return f"{_SPLITS}/{epoch:0{_EPOCH_DIGITS}d}.json"


def _offsets_rel(epoch: int) -> str:
    return f"{_OFFSETS}/{epoch:0{_EPOCH_DIGITS}d}.json"


def _manifest_rel(epoch: int) -> str:
    return f"{_epoch_dir_rel(epoch)}/{_MANIFEST}"


def _commit_rel(epoch: int) -> str:
    return f"{_COMMITS}/{epoch:0{_EPOCH_DIGITS}d}.json"


def _epoch_of_state_rel(rel: str) -> int | None:
    parts = rel.split("/")
    if len(parts) > 1 and parts[0] == _STATE and _EPOCH_DIR.match(parts[1]):
        return int(parts[1])
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(kind: str, value: Any, largest: int, url: str) -> None:
    if not _is_int(value) or not 0 <= value <= largest:
        raise CheckpointError(f"checkpoint {url}: {kind}={value!r} is invalid; it must be an integer 0..{largest}")


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


def _state_file_from_json(item: Any) -> StateFile:
    """Build a manifest entry from its JSON form, checking every field's type."""
    fields = {f.name: f.type for f in dataclasses.fields(StateFile)}
    if not isinstance(item, dict) or set(item) != set(fields):
        raise ValueError(f"an entry is not a state file: {item!r}")
    for name, kind in fields.items():
        value = item[name]
        if kind == "str":
            ok = isinstance(value, str)
        elif kind == "int":
            ok = _is_int(value)
        else:  # the key groups: a JSON list of ints
            ok = isinstance(value, list) and all(_is_int(v) for v in value)
        if not ok:
            raise ValueError(f"field {name!r} of an entry is {value!r}, expected {kind}")
    return StateFile(**{**item, "key_groups": tuple(item["key_groups"])})
