"""``stream.write_parquet(path)``: Parquet files, staged per epoch, then made visible."""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from raystream._fs import to_arrow_fs, url_to_fs
from raystream.errors import PlanError
from raystream.sinks.base import Sink, SinkContext

_STAGING = "_staging"
_COMMITTED = "_committed"
_COMPRESSIONS = ("none", "snappy", "gzip", "brotli", "lz4", "zstd")


class ParquetSink(Sink):
    """Writes each epoch as Parquet files under ``path``.

    The producing actors write into ``path/_staging/epoch-E/writer-W/``; when
    the whole epoch is written, the driver moves the files to ``path`` under
    the names ``part-<epoch>-<writer>-<i>.parquet`` (inside Hive-style
    folders with ``partition_by``). Readers of ``path`` skip ``_``-prefixed
    entries, so they never see staged files.

    Committing an epoch again (a replay after a failure) replaces its
    earlier files instead of adding to them: ``_committed/epoch-E.json``
    lists every file an epoch made visible, and is widened to the new files
    before any of them moves, so that a commit cut short is still cleaned
    up by the next one.

    Args:
        path: The output folder, any fsspec URL.
        partition_by: Hive-style folder columns.
        storage_options: fsspec options (credentials) for ``path``.
        compression: The Parquet codec: ``none``, ``snappy``, ``gzip``, ``brotli``, ``lz4`` or ``zstd``.
        use_dictionary: Which columns to dictionary-encode: ``True`` (all),
            ``False`` (none), a list of names, or ``None``: the string and
            binary columns. Dictionary-encoding numbers and times rarely
            makes a file smaller and halves the writer's speed.
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
        self.path = path
        self.partition_by = list(partition_by or [])
        self.compression = compression
        self.use_dictionary = use_dictionary
        self._fs, self._root = url_to_fs(path, storage_options)

    def on_start(self, context: SinkContext) -> None:
        if self._fs.exists(self._root) and not self._fs.isdir(self._root):
            raise PlanError(f"write_parquet: {self.path!r} is a file; give a folder path")
        self._fs.makedirs(self._root, exist_ok=True)

    def _staging_dir(self, epoch_id: int, writer: int) -> str:
        return posixpath.join(self._root, _STAGING, f"epoch-{epoch_id:08d}", f"writer-{writer:04d}")

    def write(self, table: pa.Table, epoch_id: int, writer: int) -> tuple[str, list[str]]:
        """Stage the table's files; return the staging folder and the files in it."""
        staging = self._staging_dir(epoch_id, writer)
        options = self._writer_options(table.schema)
        if not self.partition_by:
            path = posixpath.join(staging, f"part-{epoch_id:08d}-{writer:04d}-0.parquet")
            self._fs.makedirs(staging, exist_ok=True)
            pq.write_table(table, path, filesystem=to_arrow_fs(self._fs), **options)
            return staging, [path]
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
        return staging, sorted(self._fs.find(staging))

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

    def on_epoch_complete(self, epoch_id: int, results: list[Any]) -> None:
        moves = [
            (staged, posixpath.join(self._root, posixpath.relpath(staged, staging)))
            for staging, files in results
            for staged in files
        ]
        manifest = posixpath.join(self._root, _COMMITTED, f"epoch-{epoch_id:08d}.json")
        earlier = json.loads(self._fs.cat_file(manifest)) if self._fs.exists(manifest) else []
        targets = [target for _, target in moves]
        self._write_manifest(manifest, sorted(set(earlier) | set(targets)))
        for stale in set(earlier) - set(targets):
            if self._fs.exists(stale):
                self._fs.rm(stale)
        folders = {self._root}
        for staged, target in moves:
            folder = posixpath.dirname(target)
            if folder not in folders:
                self._fs.makedirs(folder, exist_ok=True)
                folders.add(folder)
            self._fs.mv(staged, target)
        self._write_manifest(manifest, targets)
        epoch_dir = posixpath.join(self._root, _STAGING, f"epoch-{epoch_id:08d}")
        if self._fs.exists(epoch_dir):
            self._fs.rm(epoch_dir, recursive=True)

    def _write_manifest(self, path: str, files: list[str]) -> None:
        self._fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self._fs.pipe_file(path + ".tmp", json.dumps(files).encode())
        self._fs.mv(path + ".tmp", path)

    def on_finish(self) -> None:
        staging_root = posixpath.join(self._root, _STAGING)
        if self._fs.exists(staging_root):
            self._fs.rm(staging_root, recursive=True)
