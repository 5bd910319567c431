"""``stream.write_parquet(path)``: Parquet files, staged per epoch, then made visible."""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from raystream._fs import to_arrow_fs, url_to_fs
from raystream.errors import PlanError
from raystream.sinks.base import Sink, SinkContext

_STAGING = "_staging"


class ParquetSink(Sink):
    """Writes each epoch as Parquet files under ``path``.

    The producing actors write into ``path/_staging/epoch-E/writer-W/``; when
    the whole epoch is written, the driver moves the files to ``path`` under
    the names ``part-<epoch>-<writer>-<i>.parquet`` (inside Hive-style
    folders with ``partition_by``). Readers of ``path`` skip ``_``-prefixed
    entries, so they never see a half-written epoch's files, and a replayed
    epoch rewrites the same names instead of adding files.
    """

    name = "write_parquet"
    on_driver = False

    def __init__(
        self, path: str, partition_by: list[str] | None = None, storage_options: dict[str, Any] | None = None
    ) -> None:
        if not isinstance(path, str) or not path:
            raise PlanError(f"write_parquet: path must be a non-empty string or URL, got {path!r}")
        self.path = path
        self.partition_by = list(partition_by or [])
        self._fs, self._root = url_to_fs(path, storage_options)

    def on_start(self, context: SinkContext) -> None:
        if self._fs.exists(self._root) and not self._fs.isdir(self._root):
            raise PlanError(f"write_parquet: {self.path!r} is a file; give a folder path")
        self._fs.makedirs(self._root, exist_ok=True)

    def _staging_dir(self, epoch_id: int, writer: int) -> str:
        return posixpath.join(self._root, _STAGING, f"epoch-{epoch_id:08d}", f"writer-{writer:04d}")

    def write(self, table: pa.Table, epoch_id: int, writer: int) -> str:
        staging = self._staging_dir(epoch_id, writer)
        ds.write_dataset(
            table,
            staging,
            format="parquet",
            filesystem=to_arrow_fs(self._fs),
            partitioning=self.partition_by or None,
            partitioning_flavor="hive" if self.partition_by else None,
            basename_template=f"part-{epoch_id:08d}-{writer:04d}-{{i}}.parquet",
            existing_data_behavior="delete_matching",
        )
        return staging

    def on_epoch_complete(self, epoch_id: int, results: list[Any]) -> None:
        for staging in results:
            for staged in sorted(self._fs.find(staging)):
                target = posixpath.join(self._root, posixpath.relpath(staged, staging))
                self._fs.makedirs(posixpath.dirname(target), exist_ok=True)
                self._fs.mv(staged, target)
        epoch_dir = posixpath.join(self._root, _STAGING, f"epoch-{epoch_id:08d}")
        if self._fs.exists(epoch_dir):
            self._fs.rm(epoch_dir, recursive=True)

    def on_finish(self) -> None:
        staging_root = posixpath.join(self._root, _STAGING)
        if self._fs.exists(staging_root):
            self._fs.rm(staging_root, recursive=True)
