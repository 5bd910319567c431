"""Resolving fsspec URLs to filesystems, shared by every file source and sink."""

from __future__ import annotations

from typing import Any

import fsspec
import pyarrow.fs as pafs


def url_to_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec filesystem for ``url`` and the path inside it.

    ``storage_options`` are passed to the filesystem (for s3fs: ``key``,
    ``secret``, ``client_kwargs``...). They are never logged or put in errors.
    """
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path


def to_arrow_fs(fs: fsspec.AbstractFileSystem) -> pafs.FileSystem:
    """Wrap an fsspec filesystem for pyarrow; the local one maps to pyarrow's own."""
    if _is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")
