"""``stream.write_parquet(path)``: Parquet files, staged per epoch, then made visible.

An output folder, as this sink lays it out::

    path/
      _jobs/<job>.json                   one marker per job that writes here (written by on_start)
      _committed/<job>/epoch-E.json      the files (relative to path) that epoch E of that job made visible
      _staging/epoch-E/writer-W/...      files being written, not visible yet
      [col=value/...]part-<job>-<E>-<W>-<i>.parquet

``<job>`` is :attr:`SinkContext.job_id`, which a checkpointed job keeps when
it resumes: that is how the sink tells its own earlier output (which a
replayed epoch replaces) from another job's. Readers skip the ``_`` entries.

Everything the sink deletes, moves or writes is checked to lie inside
``path`` after normalization (and, on a local disk, after resolving
symbolic links); the manifests are data anyone with write access to the
folder can change, so a manifest that names anything but this job's own
files of its epoch is refused, never followed.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from datetime import datetime, timezone
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from raystream._fs import _is_local, shown_url, to_arrow_fs, url_to_fs
from raystream.errors import PlanError, RaystreamError
from raystream.sinks.base import Sink, SinkContext

__all__ = ["MODES", "OutputFolderError", "ParquetSink", "check_partition_column"]

_STAGING = "_staging"
_COMMITTED = "_committed"
_JOBS = "_jobs"
_COMPRESSIONS = ("none", "snappy", "gzip", "brotli", "lz4", "zstd")
#: What to do with a folder that holds other output: Spark's errorifexists, overwrite and append.
MODES = ("error", "overwrite", "append")
Mode = Literal["error", "overwrite", "append"]
#: A job id goes into file and folder names, and comes back from a checkpoint: only plain names pass.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: How a writer names its staged files (``{i}`` counts the files of one write).
_STAGED = re.compile(r"part-(\d{8})-(\d{4})-(\d+)\.parquet")


class OutputFolderError(RaystreamError):
    """The output folder holds something the sink refuses to follow: a manifest naming paths not its own."""


def check_partition_column(name: object) -> None:
    """Refuse a ``partition_by`` column name that could not be a plain Hive folder ``name=value``.

    The name becomes the start of a folder name as is (pyarrow URL-encodes
    only the values), so a separator, ``..``, ``=`` or ``%`` in it, or a
    leading ``.`` or ``_`` (hidden from readers), would write elsewhere or
    not read back.

    Raises:
        PlanError: naming the column and what is wrong with it.
    """
    if not isinstance(name, str):
        raise PlanError(f"write_parquet partition_by: column names must be strings, got {name!r}")
    bad = [c for c in ("/", "\\", "=", "%") if c in name]
    why = (
        "it is empty"
        if not name
        else f"it holds {bad[0]!r}"
        if bad
        else "it holds '..'"
        if ".." in name
        else f"it starts with {name[0]!r}, which readers skip"
        if name[0] in "._"
        else "it holds a control character"
        if any(ord(c) < 32 for c in name)
        else None
    )
    if why is not None:
        raise PlanError(
            f"write_parquet partition_by: column {name!r} cannot name a partition folder ({why}); "
            f"partition by a copy with a plain name, such as with_columns(part=pc.field({name!r}))"
        )


class ParquetSink(Sink):
    """Writes each epoch as Parquet files under ``path``.

    The producing actors write into ``path/_staging/epoch-E/writer-W/``; when
    the whole epoch is written, the driver moves the files to ``path`` under
    the names ``part-<job>-<epoch>-<writer>-<i>.parquet`` (inside Hive-style
    folders with ``partition_by``). Readers of ``path`` skip ``_``-prefixed
    entries, so they never see staged files.

    At the start, a folder that is missing or empty is taken; so is one
    holding this job's own marker when the job resumes from a checkpoint
    (its output so far is kept, whatever the mode). A folder holding
    anything else is an error with ``mode="error"``; ``"overwrite"``
    deletes what it holds before the first epoch, and ``"append"`` keeps it
    and adds this job's files beside it (their names carry the job id, so
    they never collide). One job at a time may write a folder.

    Committing an epoch again (a replay after a failure) replaces its
    earlier files instead of adding to them: ``_committed/<job>/epoch-E.json``
    lists every file the epoch made visible, and is widened to the new files
    before any of them moves, so that a commit cut short is still cleaned up
    by the next one. An epoch with no output writes no manifest.

    Args:
        path: The output folder, any fsspec URL.
        partition_by: Hive-style folder columns.
        storage_options: fsspec options (credentials) for ``path``.
        compression: The Parquet codec: ``none``, ``snappy``, ``gzip``, ``brotli``, ``lz4`` or ``zstd``.
        use_dictionary: Which columns to dictionary-encode: ``True`` (all),
            ``False`` (none), a list of names, or ``None``: the string and
            binary columns. Dictionary-encoding numbers and times rarely
            makes a file smaller and halves the writer's speed.
        mode: ``"error"`` (the default), ``"overwrite"`` or ``"append"``: what
            to do when the folder holds files of another job, as above.

    Raises:
        PlanError: an argument is invalid: the codec, a partition column name, the mode.
    """

    name = "write_parquet"
    on_driver = False

    def __init__(
        self,
        path: str,
        partition_by: list[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        compression: str = "snappy",
        use_dictionary: bool | list[str] | None = None,
        mode: Mode = "error",
    ) -> None:
        if not isinstance(path, str) or not path:
            raise PlanError(f"write_parquet: path must be a non-empty string or URL, got {path!r}")
        if compression not in _COMPRESSIONS or (compression != "none" and not pa.Codec.is_available(compression)):
            raise PlanError(
                f"write_parquet: compression {compression!r} is not available; use one of "
                + ", ".join(c for c in _COMPRESSIONS if c == "none" or pa.Codec.is_available(c))
            )
        if not (use_dictionary is None or isinstance(use_dictionary, bool | list)):
            raise PlanError(
                f"write_parquet: use_dictionary must be True, False, a list of column names or None, "
                f"got {use_dictionary!r}"
            )
        if mode not in MODES:
            raise PlanError(
                f"write_parquet: mode must be 'error' (the default: refuse a folder holding other output), "
                f"'overwrite' or 'append', got {mode!r}"
            )
        for column in partition_by or []:
            check_partition_column(column)
        self.path = path
        self.partition_by = list(partition_by or [])
        self.compression = compression
        self.use_dictionary = use_dictionary
        self.mode = mode
        self._fs, root = url_to_fs(path, storage_options, what="write_parquet")
        self._root = posixpath.normpath(root) if root not in ("", "/") else root
        self._local = _is_local(self._fs)
        self._job = ""

    # -- the start: whose folder is it? ----------------------------------------------------------------------------

    def check_destination(self) -> None:
        """Refuse, for a job that cannot be resuming, a folder that holds anything (``mode="error"`` only).

        Called at plan time by ``write_parquet`` when the job has no
        ``checkpoint_dir``, so that the error comes before the job starts.

        Raises:
            PlanError: the folder is a file, or holds files and the mode is ``"error"``.
        """
        self._check_folder()
        entries = self._entries()
        if entries and self.mode == "error":
            raise self._taken(entries)

    def on_start(self, context: SinkContext) -> None:
        job = context.job_id or uuid.uuid4().hex
        if not _JOB_ID.fullmatch(job):
            raise OutputFolderError(
                f"write_parquet: the job id {job!r} is not a plain name, so it cannot name files; the checkpoint "
                "it comes from may have been changed by hand: start from a new checkpoint_dir"
            )
        self._job = job
        self._check_folder()
        marker = self._inside(posixpath.join(_JOBS, f"{job}.json"), "mark")
        if not (context.resumed and self._fs.exists(marker)):
            # A fresh job, or a resumed one that never got as far as its marker: nothing here is its own.
            entries = self._entries()
            if entries and self.mode == "error":
                raise self._taken(entries)
            if entries and self.mode == "overwrite":
                self._clear(entries)
            # Last: with the marker present, a resumed job keeps what is in the folder, so it must come
            # after the overwrite is complete (a kill in the middle of it redoes it).
            started = datetime.now(timezone.utc).isoformat()
            self._write_json(marker, {"job_id": job, "mode": self.mode, "started_at": started})
        self._remove_tree(_STAGING)  # what a killed run left staged; replayed epochs stage it again

    def _check_folder(self) -> None:
        self._fs.invalidate_cache()  # another process may have written since this one listed
        if self._fs.exists(self._root) and not self._fs.isdir(self._root):
            raise PlanError(f"write_parquet: {self._shown(self._root)!r} is a file; give a folder path")

    def _entries(self) -> list[str]:
        """The names of the folder's entries (one level), sorted; none when it is missing."""
        try:
            entries = self._fs.ls(self._root, detail=False)
        except FileNotFoundError:
            return []
        return sorted({posixpath.relpath(entry, self._root) for entry in entries} - {".", ""})

    def _taken(self, entries: list[str]) -> PlanError:
        if _JOBS in entries or _COMMITTED in entries:
            what = "the output of another job"
        else:
            what = f"files raystream did not write here, such as {entries[0]!r}"
        return PlanError(
            f"write_parquet: {self._shown(self._root)!r} already holds {what}; pass mode='overwrite' to replace "
            "it, mode='append' to add to it, or write to a new folder"
        )

    def _clear(self, entries: list[str]) -> None:
        """Delete the folder's entries, one by one (never the folder itself, which may be a bucket)."""
        for name in entries:
            # A symbolic link is deleted itself, never followed: fsspec's local rm unlinks links.
            self._fs.rm(self._inside(name, "delete", follow_links=False), recursive=True)

    # -- paths, always checked -------------------------------------------------------------------------------------

    def _inside(self, relative: str, action: str, follow_links: bool = True) -> str:
        """The path of ``relative`` under the output folder, checked to stay inside it.

        Raises:
            OutputFolderError: ``relative`` is absolute, leaves the folder
                after normalization, or (on a local disk, when
                ``follow_links``) resolves through a link to outside it.
        """
        path = posixpath.join(self._root, relative)
        if not _plain_relative(relative) or not self._real_inside(path, follow_links):
            raise OutputFolderError(
                f"write_parquet: refusing to {action} {relative!r}: it is not inside the output folder "
                f"{self._shown(self._root)!r}"
            )
        return path

    def _real_inside(self, path: str, follow_links: bool) -> bool:
        if not self._local:  # object stores have no links: the key prefix is the whole truth
            return True
        root = os.path.realpath(self._root)
        if follow_links:
            return os.path.realpath(path).startswith(root.rstrip(os.sep) + os.sep)
        parent = os.path.realpath(os.path.dirname(path))  # the entry itself may be a link: it is not followed
        return parent == root or parent.startswith(root.rstrip(os.sep) + os.sep)

    def _shown(self, path: str) -> str:
        return shown_url(self._fs, path)

    def _remove_tree(self, relative: str) -> None:
        path = self._inside(relative, "delete")
        if self._fs.exists(path):
            self._fs.rm(path, recursive=True)

    def _write_json(self, path: str, value: Any) -> None:
        """Write ``path`` whole or not at all: to a temporary name, then renamed."""
        self._fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self._fs.pipe_file(path + ".tmp", json.dumps(value).encode())
        self._fs.mv(path + ".tmp", path)

    # -- the epochs ------------------------------------------------------------------------------------------------

    def _staging_dir(self, epoch_id: int, writer: int) -> str:
        return posixpath.join(self._root, _STAGING, f"epoch-{epoch_id:08d}", f"writer-{writer:04d}")

    def write(self, table: pa.Table, epoch_id: int, writer: int) -> tuple[int, list[str]]:
        """Stage the table's files; return the writer and the files' paths relative to its staging folder."""
        staging = self._inside(posixpath.relpath(self._staging_dir(epoch_id, writer), self._root), "stage into")
        if self._fs.exists(staging):  # an attempt of this epoch that failed: none of it may be moved
            self._fs.rm(staging, recursive=True)
        options = self._writer_options(table.schema)
        if not self.partition_by:
            name = f"part-{epoch_id:08d}-{writer:04d}-0.parquet"
            self._fs.makedirs(staging, exist_ok=True)
            pq.write_table(table, posixpath.join(staging, name), filesystem=to_arrow_fs(self._fs), **options)
            return writer, [name]
        # Hive folders: pyarrow URL-encodes the values (its default segment_encoding="uri"), so a value holding
        # "/" or "\" stays one folder, and every folder is "<column>=..." with a checked column: never ".." or
        # hidden. The driver checks the folders again before it moves a file (_own_folders).
        ds.write_dataset(
            table,
            staging,
            format="parquet",
            file_options=ds.ParquetFileFormat().make_write_options(**options),
            filesystem=to_arrow_fs(self._fs),
            partitioning=self.partition_by,
            partitioning_flavor="hive",
            basename_template=f"part-{epoch_id:08d}-{writer:04d}-{{i}}.parquet",
            existing_data_behavior="delete_matching",
        )
        return writer, sorted(posixpath.relpath(p, staging) for p in self._fs.find(staging))

    def _writer_options(self, schema: pa.Schema) -> dict[str, Any]:
        dictionary = self.use_dictionary
        if dictionary is None:
            dictionary = [
                f.name
                for f in schema
                if f.name not in self.partition_by
                and (
                    pa.types.is_string(f.type)
                    or pa.types.is_large_string(f.type)
                    or pa.types.is_binary(f.type)
                    or pa.types.is_large_binary(f.type)
                    or pa.types.is_dictionary(f.type)
                )
            ]
        return {"compression": self.compression, "use_dictionary": dictionary}

    def _target(self, epoch_id: int, writer: int, staged: str) -> str:
        """The visible name, relative to the folder, of a file staged as ``staged`` by ``writer``."""
        folders, _, name = staged.rpartition("/")
        match = _STAGED.fullmatch(name)
        if match is None or (int(match[1]), int(match[2])) != (epoch_id, writer) or not self._own_folders(folders):
            raise OutputFolderError(
                f"write_parquet: refusing to commit {staged!r}, found in the staging folder of epoch {epoch_id}: "
                "this sink did not write it"
            )
        return posixpath.join(folders, f"part-{self._job}-{epoch_id:08d}-{writer:04d}-{match[3]}.parquet")

    def _own_folders(self, folders: str) -> bool:
        """Whether ``folders`` are the Hive folders of this sink's partition columns, in order."""
        parts = folders.split("/") if folders else []
        return len(parts) == len(self.partition_by) and all(
            part.startswith(f"{column}=") and part not in (".", "..")
            for part, column in zip(parts, self.partition_by, strict=True)
        )

    def _read_manifest(self, manifest: str, epoch_id: int) -> list[str]:
        """The files a manifest lists, each checked to be one of this job's files of ``epoch_id``.

        Raises:
            OutputFolderError: naming the manifest and its first bad entry; nothing is deleted then.
        """
        try:
            files = json.loads(self._fs.cat_file(manifest))
        except (ValueError, UnicodeDecodeError):
            files = None
        problem = "it is not a JSON list" if not isinstance(files, list) else None
        own = re.compile(rf"part-{re.escape(self._job)}-{epoch_id:08d}-\d{{4}}-\d+\.parquet")
        for entry in files if isinstance(files, list) else []:
            plain = isinstance(entry, str) and _plain_relative(entry)
            folders, _, name = entry.rpartition("/") if plain else ("", "", "")
            if not (plain and own.fullmatch(name) and self._own_folders(folders)):
                problem = f"it names {entry!r}, not a file of epoch {epoch_id} of this job inside the folder"
                break
        if problem is not None:
            raise OutputFolderError(
                f"write_parquet: refusing the manifest {self._shown(manifest)!r}: {problem}; raystream did not "
                "write it (the output folder was changed by hand?): delete it, or write to a new folder"
            )
        assert isinstance(files, list)
        return files

    def on_epoch_complete(self, epoch_id: int, results: list[Any]) -> None:
        moves = [
            (posixpath.join(self._staging_dir(epoch_id, writer), staged), self._target(epoch_id, writer, staged))
            for writer, files in results
            for staged in files
        ]
        relative = posixpath.join(_COMMITTED, self._job, f"epoch-{epoch_id:08d}.json")
        manifest = self._inside(relative, "write")
        earlier = self._read_manifest(manifest, epoch_id) if self._fs.exists(manifest) else None
        if not moves and earlier is None:
            return  # no output, none before: nothing to show, and no manifest to keep
        targets = [target for _, target in moves]
        self._write_json(manifest, sorted(set(earlier or []) | set(targets)))
        for stale in set(earlier or []) - set(targets):
            path = self._inside(stale, "delete")
            if self._fs.exists(path):
                self._fs.rm_file(path)
        folders = {self._root}
        for staged, target in moves:
            source = self._inside(posixpath.relpath(staged, self._root), "move")
            destination = self._inside(target, "write")
            folder = posixpath.dirname(destination)
            if folder not in folders:
                self._fs.makedirs(folder, exist_ok=True)
                folders.add(folder)
            self._fs.mv(source, destination)
        self._write_json(manifest, targets)
        self._remove_tree(posixpath.join(_STAGING, f"epoch-{epoch_id:08d}"))

    def on_finish(self) -> None:
        self._remove_tree(_STAGING)


def _plain_relative(path: str) -> bool:
    """Whether ``path`` is relative, normalized and stays below its folder: no ``..``, ``.``, ``//`` or ``\\``."""
    return (
        bool(path)
        and not path.startswith("/")
        and "\\" not in path
        and "\x00" not in path
        and posixpath.normpath(path) == path
        and path not in (".", "..")
        and not path.startswith("../")
    )
