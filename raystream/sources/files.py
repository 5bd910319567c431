"""File sources: Parquet, CSV, newline-delimited JSON and text lines.

Every file source follows the same plan, on the driver, in its constructor:

1. Resolve each path (an fsspec URL: a file, a directory or a glob) to a
   sorted list of data files. Names starting with ``.`` or ``_``
   (``_SUCCESS``, ``.crc``, ``_staging/``) are ignored below a directory or
   a glob; a missing path, or one that matches no data file, raises
   :class:`FileNotFoundError`.
2. Read each file's schema (a Parquet footer, the first block of a CSV or
   JSON file) and unify them. Column sets must be equal; types must be
   equal or safely promotable (``int64`` and ``double`` give ``double``,
   ``null`` and any type give that type). Anything else is a
   :class:`~raystream.errors.PlanError` that names both files and the column.

Then, in reader actors, a split (a file, or a range of Parquet row groups)
is read batch by batch; each batch is cast to the unified schema. A split's
position is a plain ``int``: the number of rows already returned from the
split, except for :class:`TextSource`, where it is the byte offset of the
first line not yet returned (so resuming a large text file seeks instead of
re-reading it).
"""

from __future__ import annotations

import codecs
import posixpath
import re
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.fs as pafs
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from raystream._fs import to_arrow_fs, url_to_fs
from raystream.errors import PlanError, RaystreamError
from raystream.sources.base import Source, Split, SplitReader

__all__ = ["CsvSource", "JsonSource", "ParquetSource", "TextSource"]

_T = TypeVar("_T")
_R = TypeVar("_R")

#: How many files are inspected at once at plan time (footers, first blocks);
#: on object stores each inspection is a round trip, so they overlap.
_PLAN_THREADS = 16
#: Bytes of a CSV or JSON file parsed to infer its schema, and the block size
#: of the streaming readers.
_INFER_BLOCK_BYTES = 1 << 20
#: Bytes read at a time by the text reader.
_TEXT_BLOCK_BYTES = 8 << 20
#: Rows decoded at a time from a Parquet row group.
_PARQUET_BATCH_ROWS = 64 * 1024

_GLOB_CHARS = re.compile(r"[*?\[]")
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@]*@")
_COMPRESSION_BY_SUFFIX = {
    ".gz": "gzip",
    ".bz2": "bz2",
    ".zst": "zstd",
    ".lz4": "lz4",
    ".br": "brotli",
}


# --------------------------------------------------------------------------- #
# Resolving paths                                                             #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _File:
    """One data file, reopenable in another process.

    Attributes:
        fs: The fsspec filesystem; it pickles with its storage options, so a
            reader actor reopens the file with the same credentials.
        path: The path inside ``fs`` (no protocol).
        label: A short, stable name for split ids: the path relative to the
            root the user gave, or the full URL when several roots were given.
        shown: The full URL without credentials, for error messages.
        size: The size in bytes when the listing reported it.
    """

    fs: fsspec.AbstractFileSystem
    path: str
    label: str
    shown: str
    size: int | None


def _redact(url: str) -> str:
    """Drop ``user:password@`` from a URL before it goes into a message."""
    return _URL_CREDENTIALS.sub("***@", url)


def _shown(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return path if "file" in protocols else _redact(fs.unstrip_protocol(path))


def _is_hidden(relative: str) -> bool:
    """True when any component of ``relative`` starts with ``.`` or ``_``."""
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def _glob_base(pattern: str) -> str:
    """The directory part of ``pattern`` before its first glob character."""
    match = _GLOB_CHARS.search(pattern)
    prefix = pattern if match is None else pattern[: match.start()]
    return prefix.rsplit("/", 1)[0] if "/" in prefix else ""


def _relative(path: str, base: str) -> str:
    base = base.rstrip("/")
    return path[len(base) + 1 :] if base and path.startswith(base + "/") else path.lstrip("/")


def _resolve(name: str, urls: str | Sequence[str], storage_options: dict[str, Any] | None) -> list[_File]:
    """Expand ``urls`` into the data files they name, in a deterministic order.

    Each root's files are sorted; roots keep the order they were given in and
    a file named twice is kept once.

    Raises:
        FileNotFoundError: A root does not exist or matches no data file.
        PlanError: ``urls`` is empty or a root could not be listed.
    """
    roots = [urls] if isinstance(urls, str) else list(urls)
    if not roots or not all(isinstance(root, str) and root for root in roots):
        raise PlanError(f"{name}: path must be a non-empty string or a list of them, got {urls!r}")
    files: list[_File] = []
    seen: set[tuple[str, str]] = set()
    for url in roots:
        fs, root = url_to_fs(url, storage_options)
        try:
            found = _list_root(name, url, fs, root)
        except FileNotFoundError:
            raise
        except Exception as exc:  # Filesystems raise their own types (botocore, gcsfs...): name the path.
            raise PlanError(
                f"{name}: cannot list '{_redact(url)}' ({type(exc).__name__}: {exc}); "
                f"check the path and storage_options (credentials, region, endpoint)"
            ) from exc
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        for path, relative, size in found:
            if (protocol, path) in seen:
                continue
            seen.add((protocol, path))
            shown = _shown(fs, path)
            files.append(_File(fs, path, relative if len(roots) == 1 else shown, shown, size))
    return files


def _list_root(name: str, url: str, fs: fsspec.AbstractFileSystem, root: str) -> list[tuple[str, str, int | None]]:
    """Return ``(path, path relative to the root, size)`` of each data file under one root."""
    shown = _redact(url)
    try:
        info = fs.info(root)
    except FileNotFoundError:
        info = None
    if info is not None and info.get("type") != "directory":
        return [(root, posixpath.basename(root), info.get("size"))]
    if info is not None:
        found = _data_files_below(fs, root)
        if not found:
            raise FileNotFoundError(
                f"{name}: directory '{shown}' contains no data file (names starting with '.' or '_' "
                f"are ignored); check the path"
            )
        return found
    if _GLOB_CHARS.search(root):
        base = _glob_base(root)
        found = []
        for path, entry in sorted(fs.glob(root, detail=True).items()):
            if _is_hidden(_relative(path, base)):
                continue
            if entry.get("type") == "directory":
                found.extend((sub, _relative(sub, base), size) for sub, _, size in _data_files_below(fs, path))
            else:
                found.append((path, _relative(path, base), entry.get("size")))
        if not found:
            raise FileNotFoundError(
                f"{name}: glob '{shown}' matches no data file (names starting with '.' or '_' are "
                f"ignored); check the pattern or storage_options"
            )
        return found
    raise FileNotFoundError(f"{name}: path '{shown}' does not exist; check the path or storage_options")


def _data_files_below(fs: fsspec.AbstractFileSystem, root: str) -> list[tuple[str, str, int | None]]:
    entries = fs.find(root, detail=True)
    found = []
    for path, entry in sorted(entries.items()):
        relative = _relative(path, root)
        if entry.get("type") != "directory" and not _is_hidden(relative):
            found.append((path, relative, entry.get("size")))
    return found


def _plan_map(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """``[fn(x) for x in items]``, overlapped on threads; the first error in order is raised."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(_PLAN_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


# --------------------------------------------------------------------------- #
# Schemas                                                                     #
# --------------------------------------------------------------------------- #


def _unify(name: str, schemas: Sequence[tuple[_File, pa.Schema]], fix: str) -> pa.Schema:
    """Unify the files' schemas under the policy in the module docstring.

    Args:
        name: The source name, for messages.
        schemas: Each file with its schema, in file order.
        fix: How the user can fix a conflict, appended to messages.

    Returns:
        The unified schema, in the first file's column order, without metadata.

    Raises:
        PlanError: Column sets differ, a file has a duplicate column, or two
            types cannot be promoted safely.
    """
    for file, schema in schemas:
        duplicates = sorted({n for n in schema.names if schema.names.count(n) > 1})
        if duplicates:
            raise PlanError(f"{name}: '{file.shown}' has more than one column named '{duplicates[0]}'; rename it")
    first_file, unified = schemas[0]
    unified = unified.remove_metadata()
    # Which file gave each column its current type, to name it in conflicts.
    origin = dict.fromkeys(unified.names, first_file)
    for file, schema in schemas[1:]:
        for column in unified.names:
            if column not in schema.names:
                raise PlanError(
                    f"{name}: schema of '{file.shown}' conflicts with '{first_file.shown}': column '{column}' "
                    f"is missing from '{file.shown}'; make the files agree{fix}"
                )
        for column in schema.names:
            if column not in unified.names:
                raise PlanError(
                    f"{name}: schema of '{file.shown}' conflicts with '{first_file.shown}': column '{column}' "
                    f"is only in '{file.shown}'; make the files agree{fix}"
                )
        for field in schema:
            current = unified.field(field.name)
            if current.type.equals(field.type):
                continue
            try:
                merged = pa.unify_schemas(
                    [pa.schema([current]), pa.schema([field.with_metadata(None)])], promote_options="permissive"
                )
            except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
                raise PlanError(
                    f"{name}: schema of '{file.shown}' conflicts with '{origin[field.name].shown}': column "
                    f"'{field.name}' is {field.type} in '{file.shown}' and {current.type} in "
                    f"'{origin[field.name].shown}'; make the files agree{fix}"
                ) from exc
            unified = unified.set(unified.get_field_index(field.name), merged.field(0))
            if not merged.field(0).type.equals(current.type):
                origin[field.name] = file
    # A promotion is only useful if every file's batches can be cast to it;
    # casting an empty table checks that now rather than in the middle of a job.
    checked: list[pa.Schema] = []
    for file, schema in schemas:
        if any(schema.equals(s) for s in checked):
            continue
        try:
            schema.empty_table().select(unified.names).cast(unified)
        except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise PlanError(
                f"{name}: columns of '{file.shown}' cannot be converted to the unified schema ({exc}); make "
                f"the files agree{fix}"
            ) from exc
        checked.append(schema)
    return unified


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Reorder and cast ``table`` to ``schema`` (a no-op when it already matches)."""
    if table.schema.names != schema.names:
        table = table.select(schema.names)
    if not table.schema.equals(schema, check_metadata=True):
        table = table.cast(schema)
    return table


# --------------------------------------------------------------------------- #
# Readers                                                                     #
# --------------------------------------------------------------------------- #


def _check_max_rows(max_rows: int) -> None:
    if max_rows < 1:
        raise ValueError(f"next_batch: max_rows must be at least 1, got {max_rows}")


class _RowBuffer:
    """Regroups a stream of record batches into tables of a requested size.

    Readers decode in whatever batch sizes the format gives; callers ask for
    ``max_rows`` at a time. Slicing and concatenating are zero-copy.
    """

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._batches = batches
        self._pending: list[pa.RecordBatch] = []
        self._rows = 0

    def skip(self, rows: int) -> None:
        """Drop the next ``rows`` rows (fewer if the stream ends first)."""
        while rows > 0:
            if not self._pending and not self._pull():
                return
            head = self._pending[0]
            if head.num_rows <= rows:
                self._pending.pop(0)
                self._rows -= head.num_rows
                rows -= head.num_rows
            else:
                self._pending[0] = head.slice(rows)
                self._rows -= rows
                rows = 0

    def take(self, max_rows: int) -> pa.Table | None:
        """Return the next 1 to ``max_rows`` rows as one table, or ``None`` at the end."""
        while self._rows < max_rows and self._pull():
            pass
        if self._rows == 0:
            return None
        table = pa.Table.from_batches(self._pending)
        rest = table.slice(max_rows)
        self._pending = rest.to_batches()
        self._rows = rest.num_rows
        return table.slice(0, max_rows)

    def _pull(self) -> bool:
        """Append the next non-empty batch; False at the end of the stream."""
        for batch in self._batches:
            if batch.num_rows:
                self._pending.append(batch)
                self._rows += batch.num_rows
                return True
        return False


class _RowReader(SplitReader):
    """A reader whose position is the number of rows returned from the split.

    Subclasses open the file and return its record batches, starting at a
    row they choose at or before ``start`` (Parquet starts at a row group);
    this class skips the rest and regroups the batches.
    """

    def __init__(self, name: str, file: _File, schema: pa.Schema, start: int) -> None:
        self._name = name
        self._file = file
        self._schema = schema
        self._start = start
        self._returned = start
        self._buffer: _RowBuffer | None = None
        self._closer: Any = None

    def next_batch(self, max_rows: int) -> pa.Table | None:
        """Return the next 1 to ``max_rows`` rows, or ``None`` once the split is exhausted."""
        _check_max_rows(max_rows)
        try:
            if self._buffer is None:
                batches, first_row = self._open(max_rows)
                self._buffer = _RowBuffer(batches)
                self._buffer.skip(self._start - first_row)
            table = self._buffer.take(max_rows)
            if table is None:
                return None
            table = _conform(table, self._schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise RaystreamError(
                f"{self._name}: cannot read '{self._file.shown}' after row {self._returned} of its split: "
                f"{exc}; {self._hint()}"
            ) from exc
        self._returned += table.num_rows
        return table

    def position(self) -> int:
        """Return the number of rows of the split returned so far."""
        return self._returned

    def close(self) -> None:
        """Close the file, if it was opened."""
        if self._closer is not None:
            self._closer.close()
            self._closer = None
        self._buffer = None

    @abstractmethod
    def _open(self, max_rows: int) -> tuple[Iterator[pa.RecordBatch], int]:
        """Open the file; return its batches and the split row the first one starts at."""

    def _hint(self) -> str:
        return "check that the file is not corrupt"

    def _arrow_fs(self) -> pafs.FileSystem:
        return to_arrow_fs(self._file.fs)


# --------------------------------------------------------------------------- #
# The common source                                                           #
# --------------------------------------------------------------------------- #


class _FileSource(Source):
    """What every file source shares: resolved files, a unified schema, splits per file."""

    bounded = True
    replayable = True

    def __init__(self, path: str | list[str], storage_options: dict[str, Any] | None) -> None:
        self._files = _resolve(self.name, path, storage_options)
        self._schema: pa.Schema = pa.schema([])

    def schema(self) -> pa.Schema:
        """Return the unified schema of every batch; known at plan time."""
        return self._schema

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._files)} files)"


# --------------------------------------------------------------------------- #
# Parquet                                                                     #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _RowGroups:
    """A Parquet split: row groups ``start`` to ``stop`` (excluded) of one file."""

    file: _File
    start: int
    stop: int
    #: Rows of each row group of the range, to skip whole groups on resume.
    rows: tuple[int, ...]


class ParquetSource(_FileSource):
    """Reads Parquet files; a split is a run of row groups of one file.

    Every file's footer is read at plan time: it gives the schema and the row
    groups. Row groups are grouped into splits of at most about
    ``target_split_rows`` rows (a larger row group is a split of its own).

    Args:
        path: An fsspec URL (``data/``, ``s3://bucket/events/``,
            ``data/*.parquet``) or a list of them. A directory is read
            recursively; names starting with ``.`` or ``_`` are ignored.
        columns: The columns to read, in this order; all when ``None``.
        storage_options: Passed to the fsspec filesystem (credentials...).
            They are never put in messages.
        target_split_rows: The most rows a split of several row groups has.

    Raises:
        FileNotFoundError: A path does not exist or holds no data file.
        PlanError: A file is not Parquet, lacks a column of ``columns``, or
            the files' schemas conflict.

    Example:
        >>> source = ParquetSource("s3://bucket/clicks/", columns=["user", "ts"])  # doctest: +SKIP
    """

    name = "read_parquet"

    def __init__(
        self,
        path: str | list[str],
        *,
        columns: list[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        target_split_rows: int = 1_000_000,
    ) -> None:
        if target_split_rows < 1:
            raise PlanError(f"{self.name}: target_split_rows must be at least 1, got {target_split_rows}")
        if columns is not None and (isinstance(columns, str) or len(set(columns)) != len(columns)):
            raise PlanError(f"{self.name}: columns must be a list of distinct names, got {columns!r}")
        super().__init__(path, storage_options)
        self._columns = list(columns) if columns is not None else None
        self._target_split_rows = target_split_rows
        footers = _plan_map(self._read_footer, self._files)
        schemas = []
        for file, (schema, _) in zip(self._files, footers, strict=True):
            if self._columns is not None:
                missing = [c for c in self._columns if c not in schema.names]
                if missing:
                    raise PlanError(
                        f"{self.name}: column '{missing[0]}' is not in '{file.shown}' (its columns: "
                        f"{', '.join(schema.names)}); check columns="
                    )
                schema = pa.schema([schema.field(c) for c in self._columns], metadata=schema.metadata)
            schemas.append((file, schema))
        self._schema = _unify(self.name, schemas, ", or leave the column out with columns=")
        self._row_groups = [rows for _, rows in footers]

    def _read_footer(self, file: _File) -> tuple[pa.Schema, tuple[int, ...]]:
        try:
            with to_arrow_fs(file.fs).open_input_file(file.path) as handle:
                metadata = pq.ParquetFile(handle).metadata
                schema = metadata.schema.to_arrow_schema()
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise PlanError(
                f"{self.name}: cannot read the Parquet footer of '{file.shown}' ({exc}); check that it is a "
                f"Parquet file, or move it out of the input"
            ) from exc
        rows = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
        return schema, rows

    def splits(self, parallelism: int) -> list[Split]:
        """Return one split per run of row groups of about ``target_split_rows`` rows, file by file."""
        splits = []
        for file, group_rows in zip(self._files, self._row_groups, strict=True):
            start, total = 0, 0
            for index, rows in enumerate(group_rows):
                if index > start and total + rows > self._target_split_rows:
                    splits.append(self._split(file, start, index, group_rows))
                    start, total = index, 0
                total += rows
            if group_rows:
                splits.append(self._split(file, start, len(group_rows), group_rows))
        return splits

    @staticmethod
    def _split(file: _File, start: int, stop: int, group_rows: tuple[int, ...]) -> Split:
        payload = _RowGroups(file, start, stop, group_rows[start:stop])
        return Split(f"{file.label}#rg{start}-{stop - 1}", payload, None)

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        """Open a run of row groups; ``position`` is the number of its rows already returned."""
        return _ParquetReader(self.name, split.payload, self._schema, int(position or 0))


class _ParquetReader(_RowReader):
    def __init__(self, name: str, groups: _RowGroups, schema: pa.Schema, start: int) -> None:
        super().__init__(name, groups.file, schema, start)
        self._groups = groups

    def _open(self, max_rows: int) -> tuple[Iterator[pa.RecordBatch], int]:
        # Whole row groups before the position are skipped by their metadata row count.
        ends = np.cumsum(self._groups.rows)
        skipped = int(np.searchsorted(ends, self._start, side="right"))
        first_row = int(ends[skipped - 1]) if skipped else 0
        groups = list(range(self._groups.start + skipped, self._groups.stop))
        if not groups:  # Resumed at the end of the split: nothing to open.
            return iter(()), first_row
        handle = self._arrow_fs().open_input_file(self._file.path)
        self._closer = handle
        batches = pq.ParquetFile(handle).iter_batches(
            batch_size=min(max(max_rows, 1024), _PARQUET_BATCH_ROWS),
            row_groups=groups,
            columns=self._schema.names,
        )
        return batches, first_row


# --------------------------------------------------------------------------- #
# CSV and JSON                                                                #
# --------------------------------------------------------------------------- #


class _StreamSource(_FileSource):
    """A format parsed by a pyarrow streaming reader; one split per file."""

    #: Bytes parsed to infer a file's schema, and the streaming block size.
    _block_bytes = _INFER_BLOCK_BYTES

    def __init__(self, path: str | list[str], schema: pa.Schema | None, storage_options: dict[str, Any] | None) -> None:
        if schema is not None and not isinstance(schema, pa.Schema):
            raise PlanError(f"{self.name}: schema must be a pyarrow.Schema, got {type(schema).__name__}")
        super().__init__(path, storage_options)
        self._explicit = schema
        inferred = _plan_map(self._inspect, self._files)
        # An empty file has no rows and no schema; it gets no split.
        self._readable = [file for file, schema in zip(self._files, inferred, strict=True) if schema is not None]
        schemas = [(f, s) for f, s in zip(self._files, inferred, strict=True) if s is not None]
        if schema is not None:
            self._schema = schema
        elif schemas:
            self._schema = _unify(self.name, schemas, " or pass schema=")
        else:
            raise PlanError(
                f"{self.name}: every file of {_redact(repr(path))} is empty, so the columns are unknown; "
                f"pass schema= to read them as an empty stream"
            )

    def _inspect(self, file: _File) -> pa.Schema | None:
        """Open ``file`` and parse its first block; return its schema, or ``None`` when empty."""
        if file.size == 0:
            return None
        try:
            with to_arrow_fs(file.fs).open_input_stream(file.path) as stream:
                reader = self._open_reader(stream, self._explicit)
                if reader is None:
                    return None
                return reader.schema
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise PlanError(f"{self.name}: cannot parse '{file.shown}' ({exc}); {self._parse_hint()}") from exc

    @abstractmethod
    def _open_reader(self, stream: pa.NativeFile, schema: pa.Schema | None) -> Any:
        """Return a pyarrow streaming reader over ``stream``, or ``None`` when it holds no record."""

    @abstractmethod
    def _parse_hint(self) -> str:
        """How to fix a file that does not parse, for error messages."""

    def splits(self, parallelism: int) -> list[Split]:
        """Return one split per non-empty file."""
        return [Split(file.label, file, None) for file in self._readable]

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        """Open a file; ``position`` is the number of its rows already returned."""
        return _StreamReader(self, split.payload, int(position or 0))


class _StreamReader(_RowReader):
    def __init__(self, source: _StreamSource, file: _File, start: int) -> None:
        super().__init__(source.name, file, source.schema(), start)
        self._source = source

    def _open(self, max_rows: int) -> tuple[Iterator[pa.RecordBatch], int]:
        stream = self._arrow_fs().open_input_stream(self._file.path)
        self._closer = stream
        # Parse every file with the unified schema, so that all files give the same types.
        reader = self._source._open_reader(stream, self._schema)
        return (iter(()) if reader is None else iter(reader)), 0

    def _hint(self) -> str:
        return self._source._parse_hint()


class CsvSource(_StreamSource):
    """Reads CSV files with a header row; a split is a file.

    Without ``schema``, each file's column types are inferred from its first
    block (1 MiB) at plan time and unified across files. A later value that
    does not fit the inferred type (``1.5`` in an ``int64`` column) fails the
    read: pass ``schema`` to be sure. With ``schema``, only its columns are
    read, with its types; every file's header must have them.

    Args:
        path: An fsspec URL (file, directory or glob) or a list of them.
            ``.gz``, ``.bz2``, ``.zst``... files are decompressed.
        schema: The columns to read and their types, instead of inference.
        delimiter: The field delimiter, one character.
        storage_options: Passed to the fsspec filesystem; never put in messages.

    Raises:
        FileNotFoundError: A path does not exist or holds no data file.
        PlanError: A file cannot be parsed, lacks a column of ``schema``, or
            the files' schemas conflict.
    """

    name = "read_csv"

    def __init__(
        self,
        path: str | list[str],
        *,
        schema: pa.Schema | None = None,
        delimiter: str = ",",
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise PlanError(f"{self.name}: delimiter must be a single character, got {delimiter!r}")
        self._delimiter = delimiter
        super().__init__(path, schema, storage_options)

    def _open_reader(self, stream: pa.NativeFile, schema: pa.Schema | None) -> Any:
        convert = pa_csv.ConvertOptions()
        if schema is not None:
            convert = pa_csv.ConvertOptions(
                column_types={field.name: field.type for field in schema}, include_columns=schema.names
            )
        return pa_csv.open_csv(
            stream,
            read_options=pa_csv.ReadOptions(block_size=self._block_bytes),
            parse_options=pa_csv.ParseOptions(delimiter=self._delimiter),
            convert_options=convert,
        )

    def _parse_hint(self) -> str:
        return "check the delimiter and the header row, or pass schema= with the column types"


class JsonSource(_StreamSource):
    """Reads newline-delimited JSON files (one object per line); a split is a file.

    Without ``schema``, each file's fields and types are inferred from its
    first block (1 MiB) at plan time and unified across files; a field or a
    type that first appears later in a file fails the read. With ``schema``,
    only its fields are read, with its types (other fields are ignored, a
    missing field is null).

    Args:
        path: An fsspec URL (file, directory or glob) or a list of them.
        schema: The fields to read and their types, instead of inference.
        storage_options: Passed to the fsspec filesystem; never put in messages.

    Raises:
        FileNotFoundError: A path does not exist or holds no data file.
        PlanError: A file is not JSON lines, or the files' schemas conflict.
    """

    name = "read_json"

    def __init__(
        self,
        path: str | list[str],
        *,
        schema: pa.Schema | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(path, schema, storage_options)

    def _open_reader(self, stream: pa.NativeFile, schema: pa.Schema | None) -> Any:
        parse = pa_json.ParseOptions()
        if schema is not None:
            behavior = "ignore" if self._explicit is not None else "error"
            parse = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior=behavior)
        try:
            return pa_json.open_json(
                stream, read_options=pa_json.ReadOptions(block_size=self._block_bytes), parse_options=parse
            )
        except pa.ArrowInvalid as exc:
            # pyarrow refuses a file with no record (empty or only whitespace)
            # rather than giving an empty stream; for us it is a file with no rows.
            if "Empty JSON stream" in str(exc):
                return None
            raise

    def _parse_hint(self) -> str:
        return "check that it holds one JSON object per line, or pass schema= with the field types"


# --------------------------------------------------------------------------- #
# Text                                                                        #
# --------------------------------------------------------------------------- #


def _check_encoding(name: str, encoding: str) -> str:
    """Return the codec's canonical name; refuse codecs where a newline is not the byte 0x0A."""
    try:
        canonical = codecs.lookup(encoding).name
    except (LookupError, TypeError) as exc:
        raise PlanError(f"{name}: unknown encoding {encoding!r}; use a Python codec name such as 'utf-8'") from exc
    two, one = "\n\n".encode(canonical), "\n".encode(canonical)
    if len(two) - len(one) != 1 or not two.endswith(b"\n"):
        raise PlanError(
            f"{name}: encoding {encoding!r} is not supported: lines are split on the byte 0x0A, which it does "
            f"not use for a newline; convert the files to utf-8"
        )
    return canonical


class TextSource(_FileSource):
    """Reads text files as lines: one column ``line`` (string), one row per line.

    A line ends at ``\\n``; the newline and a ``\\r`` before it are dropped.
    A last line without a newline is still a line; an empty file has no rows.
    A split is a file, and its position is the byte offset of the first line
    not yet returned, so a resumed reader seeks there (compressed files are
    re-read up to it).

    Args:
        path: An fsspec URL (file, directory or glob) or a list of them.
            ``.gz``, ``.bz2``, ``.zst``... files are decompressed.
        storage_options: Passed to the fsspec filesystem; never put in messages.
        encoding: A Python codec in which a newline is the byte ``0x0A``
            (``utf-8``, ``latin-1``, ``cp1252``...; not ``utf-16``).

    Raises:
        FileNotFoundError: A path does not exist or holds no data file.
        PlanError: The encoding is unknown or unsupported.
    """

    name = "read_text"
    #: Bytes read at a time.
    _block_bytes = _TEXT_BLOCK_BYTES

    def __init__(
        self, path: str | list[str], *, storage_options: dict[str, Any] | None = None, encoding: str = "utf-8"
    ) -> None:
        self._encoding = _check_encoding(self.name, encoding)
        super().__init__(path, storage_options)
        self._schema = pa.schema([pa.field("line", pa.string())])

    def splits(self, parallelism: int) -> list[Split]:
        """Return one split per non-empty file."""
        return [Split(file.label, file, None) for file in self._files if file.size != 0]

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        """Open a file; ``position`` is the byte offset of the first line not yet returned."""
        return _TextReader(self.name, split.payload, self._encoding, self._block_bytes, int(position or 0))


class _TextReader(SplitReader):
    """Splits byte blocks into lines with Arrow kernels; the position is a byte offset."""

    def __init__(self, name: str, file: _File, encoding: str, block_bytes: int, offset: int) -> None:
        self._name = name
        self._file = file
        self._encoding = encoding
        self._block_bytes = block_bytes
        self._offset = offset  # Byte offset just after the last line returned.
        self._stream: pa.NativeFile | None = None
        self._read_offset = offset  # Byte offset of the start of ``_carry``.
        self._carry = b""  # The partial last line of the blocks read so far.
        self._eof = False
        self._lines: list[pa.Array] = []
        self._ends: list[np.ndarray] = []  # Byte offset just after each buffered line.
        self._buffered = 0

    def next_batch(self, max_rows: int) -> pa.Table | None:
        """Return the next 1 to ``max_rows`` lines, or ``None`` at the end of the file."""
        _check_max_rows(max_rows)
        if self._stream is None and not self._eof:
            self._stream = self._open()
        while self._buffered < max_rows and not self._eof:
            self._read_block()
        if self._buffered == 0:
            return None
        lines = pa.chunked_array(self._lines, pa.string())
        # Concatenate only when a block was added: slicing below keeps a view, so
        # many small batches from one block copy nothing.
        ends = np.concatenate(self._ends) if len(self._ends) > 1 else self._ends[0]
        count = min(max_rows, self._buffered)
        self._lines = lines.slice(count).chunks
        self._ends = [ends[count:]]
        self._buffered -= count
        self._offset = int(ends[count - 1])
        return pa.table({"line": lines.slice(0, count)})

    def position(self) -> int:
        """Return the byte offset of the first line not yet returned."""
        return self._offset

    def close(self) -> None:
        """Close the file, if it was opened."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _open(self) -> pa.NativeFile:
        arrow_fs = to_arrow_fs(self._file.fs)
        suffix = posixpath.splitext(self._file.path)[1].lower()
        compression = _COMPRESSION_BY_SUFFIX.get(suffix)
        if compression is None:
            handle = arrow_fs.open_input_file(self._file.path)
            handle.seek(self._offset)
            return handle
        stream = arrow_fs.open_input_stream(self._file.path, compression=compression)
        remaining = self._offset
        while remaining > 0:  # A compressed stream cannot seek: decompress up to the offset.
            skipped = len(stream.read(min(remaining, self._block_bytes)))
            if skipped == 0:
                break
            remaining -= skipped
        return stream

    def _read_block(self) -> None:
        """Read one block; buffer the complete lines it ends, carry the partial last one."""
        assert self._stream is not None
        block = self._stream.read(self._block_bytes)
        if not block:
            self._eof = True
            if self._carry:
                self._buffer_lines(self._carry, final=True)
                self._carry = b""
            return
        data = self._carry + block if self._carry else block
        last_newline = data.rfind(b"\n")
        if last_newline < 0:
            self._carry = data
            return
        self._carry = data[last_newline + 1 :]
        self._buffer_lines(data[:last_newline], final=False)

    def _buffer_lines(self, data: bytes, final: bool) -> None:
        """Buffer the lines of ``data``: lines separated by ``\\n``, the last one not followed by it."""
        raw = pc.list_flatten(pc.split_pattern(pa.array([data], pa.binary()), b"\n"))
        # Each line took its bytes plus a newline, except a final line without one.
        sizes = pc.binary_length(raw).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        if final:
            sizes[-1] -= 1
        ends = self._read_offset + np.cumsum(sizes)
        self._read_offset = int(ends[-1])
        lines = self._decode(raw, data, ends[0] - sizes[0])
        if pc.any(pc.ends_with(lines, "\r")).as_py():
            lines = pc.replace_substring_regex(lines, pattern="\r$", replacement="")
        self._lines.append(lines)
        self._ends.append(ends)
        self._buffered += len(lines)

    def _decode(self, raw: pa.Array, data: bytes, start: int) -> pa.Array:
        """Return ``raw`` (binary lines) as strings, from ``data`` that starts at byte ``start``."""
        try:
            if self._encoding == "utf-8":
                return raw.cast(pa.string())  # Validates the UTF-8.
            text = data.decode(self._encoding).encode("utf-8")
            return pc.list_flatten(pc.split_pattern(pa.array([text], pa.binary()), b"\n")).cast(pa.string())
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise RaystreamError(
                f"{self._name}: '{self._file.shown}' is not valid {self._encoding} in the lines from byte "
                f"{start} ({exc}); pass the file's encoding="
            ) from exc
