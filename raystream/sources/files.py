"""File sources: Parquet, CSV, newline-delimited JSON and text lines.

Every file source follows the same plan, on the driver, in its constructor,
so that bad input fails before a job starts:

1. **List.** Resolve each path (an fsspec URL: a file, a directory or a glob;
   ``s3://`` through s3fs, ``hdfs://`` through pyarrow's HadoopFileSystem,
   ``gs://``/``abfs://`` when gcsfs/adlfs are installed, see
   :mod:`raystream._fs`) to a sorted list of data files. Names starting with
   ``.`` or ``_`` (``_SUCCESS``, ``.crc``, ``_staging/``) are ignored below a
   directory or a glob; a missing path, or one that matches no data file,
   raises :class:`FileNotFoundError`.
2. **Hive partitions.** Each folder named ``key=value`` between the path
   given (a directory, or the part of a glob before its first wildcard) and
   a file becomes a column ``key`` with that value (URL-decoded; an empty
   value and ``__HIVE_DEFAULT_PARTITION__`` are null). A folder name without
   ``=`` is not a partition, and neither is a folder in the path given
   itself. The type is inferred over every listed file, like pyarrow
   datasets: ``int64`` when every value is an integer (``hour=03`` is 3),
   else ``string`` (``dt=2026-01-01`` stays the string ``"2026-01-01"``).
   Partition columns come after the files' columns; a file outside a folder
   that others are in gets null. ``partitioning=None`` turns this off.
3. **Prune by time.** With ``time_column``, ``start`` and ``end`` (half-open:
   ``start <= t < end``; a datetime, a ``datetime.date``, or an ISO string;
   naive means UTC), a file whose *partition time range* lies outside
   ``[start, end)`` is dropped before it is opened. The range comes from the
   partition columns in ``partition_time`` (by default ``dt`` or ``date``,
   and ``hour`` when present): a day value (``2026-01-01`` or ``20260101``)
   is that UTC day, narrowed to one hour by an ``hour`` (0-23) column; an
   hour value (``2026-01-01T03``, ``2026-01-01 03``, ``2026-01-01-03``) is
   that hour. The partitions are trusted: their rows must have event times
   in their range.
4. **Schemas.** Read each remaining file's schema (a Parquet footer, the
   first block of a CSV or JSON file) and unify them. Column sets must be
   equal; types must be equal or safely promotable (``int64`` and ``double``
   give ``double``, ``null`` and any type give that type). Anything else is
   a :class:`~raystream.errors.PlanError` that names both files and the
   column. With ``schema=``, it gives the files' columns and types instead;
   a column of it that is also a partition folder of a file comes from the
   folder (in the schema's type), and partition columns it does not name are
   appended as in step 2 (only those of files listed at plan time: to watch
   an empty folder with partition columns, name them in ``schema=``).
5. **Parquet row groups.** Row groups whose statistics on ``time_column``
   lie outside ``[start, end)`` are dropped; only footers are read.

Then, in reader actors, a split (a file, or a range of Parquet row groups)
is read batch by batch; each batch gets its partition columns, is cast to
the source's schema, and, with ``start``/``end``, loses its rows outside
``[start, end)`` (and rows with a null time), vectorized. A split's position
is a plain ``int``: the number of the split's rows already consumed from the
file (returned or filtered out), except for :class:`TextSource`, where it is
the byte offset of the first line not yet returned (so resuming a large text
file seeks instead of re-reading it).

**Event-time order.** With ``time_column``, each split's
``min_event_time_ms`` is a lower bound of its event times: the smallest
Parquet statistic of its row groups, else the start of its partition time
range, raised to ``start``. The engine deals splits in that order.

**Progress.** Each reader's :meth:`~SplitReader.metrics` (shown per split in
``Job.metrics()["splits"]``) holds ``file`` (its URL, without credentials),
``rows_read`` (rows consumed from the file), ``bytes_read`` and
``bytes_total`` (Parquet: compressed bytes of the row groups started and of
all of the split's row groups; CSV, JSON, text: bytes of the file read so far
and its size), and ``event_time_ms`` (the largest event time returned, with
``time_column``).

**Which files are opened.** :meth:`files` lists the files a source reads
after pruning. Every open of a file, at plan time or by a reader, goes
through :func:`_open_file`, so a test can count them by wrapping it.

**Watching.** With ``watch=True`` the source is unbounded: every
``poll_interval`` the engine calls :meth:`splits`, which lists the paths
again and returns one split per file (Parquet: per run of row groups) with a
stable id derived from the file's path, so files that landed since are new
splits and files already read are not read again after a restart. A file is
assumed to land atomically: written elsewhere (or under a ``.`` or ``_``
name, which is ignored) and then renamed into place, never modified after.
The schema is fixed at plan time, from the files already there or from
``schema=``; a new Parquet file must have its columns (extra ones are
ignored), and a new file's partition values must fit their column types.
"""

from __future__ import annotations

import codecs
import json
import posixpath
import re
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, TypeAlias, TypeVar
from urllib.parse import unquote

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from raystream._fs import redact, shown_url, to_arrow_fs, url_to_fs
from raystream._time import Duration, duration_ms, is_event_time_type, time_ns
from raystream.errors import PlanError, RaystreamError
from raystream.sources._csv import decode_lines, header_names
from raystream.sources._json import Decoded, Unexpected, decode_records, explain, infer_schema, utf8_valid
from raystream.sources.base import Source, Split, SplitReader, dead_letter_table

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
#: Rows taken from a file at a time when rows outside [start, end) are filtered out.
_FILTER_CHUNK_ROWS = 64 * 1024
#: Rows one ``next_batch`` may skip as outside [start, end) before it returns an
#: empty batch, so that one epoch does not scan a whole large file.
_FILTER_SCAN_ROWS = 1 << 20

_GLOB_CHARS = re.compile(r"[*?\[]")
_COMPRESSION_BY_SUFFIX = {
    ".gz": "gzip",
    ".bz2": "bz2",
    ".zst": "zstd",
    ".lz4": "lz4",
    ".br": "brotli",
}
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_INTEGER = re.compile(r"^[+-]?\d{1,18}$")
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$|^(\d{4})(\d{2})(\d{2})$")
_HOUR = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T _-](\d{2})$")
_AUTO_DAY_COLUMNS = ("dt", "date")
_AUTO_HOUR_COLUMN = "hour"
_NS_PER_MS = 1_000_000
_NS_PER_HOUR = 3_600 * 10**9
_NS_PER_DAY = 24 * _NS_PER_HOUR
_NS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_NS_PER_PARQUET_UNIT = {"milliseconds": 10**6, "microseconds": 10**3, "nanoseconds": 1}

#: pyarrow's CSV reader says this of a string column holding bytes that are not UTF-8.
_INVALID_UTF8 = "invalid UTF8"
_UTF8_HINT = "fix the file's encoding, or pass schema= with that column as pa.binary() to read its raw bytes"

#: ``errors=``: what a JSON line that does not decode does.
Errors: TypeAlias = 'Literal["dead_letter", "fail"]'
#: ``partition_time=``: ``"auto"``, ``None``, a day column, or ``[day, hour]``.
PartitionTime: TypeAlias = "str | Sequence[str] | None"
#: ``start=`` and ``end=``: a datetime, a date or an ISO string (naive means UTC).
TimeBound: TypeAlias = "datetime | date | str | pd.Timestamp | None"


# --------------------------------------------------------------------------- #
# Opening files                                                               #
# --------------------------------------------------------------------------- #


def _open_file(fs: fsspec.AbstractFileSystem, path: str) -> pa.NativeFile:
    """Open ``path`` for reading (random access, so that the bytes read can be told).

    Every open of a data file in this module, at plan time or by a reader,
    goes through here: a test counts the files opened by wrapping it.
    """
    return to_arrow_fs(fs).open_input_file(path)


def _decompressed(raw: pa.NativeFile, path: str) -> pa.NativeFile:
    """``raw``, decompressed when the file name ends in a compression suffix (``.gz``, ``.zst``...)."""
    compression = _COMPRESSION_BY_SUFFIX.get(posixpath.splitext(path)[1].lower())
    return raw if compression is None else pa.CompressedInputStream(raw, compression)


# --------------------------------------------------------------------------- #
# Resolving paths                                                             #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _File:
    """One data file, reopenable in another process.

    It holds no filesystem, so no credentials: a split's payload is stored
    in checkpoints (as JSON). The source keeps the filesystem of each root.

    Attributes:
        root: The index of the path it was found under, in the source's paths.
        path: The path inside that root's filesystem (no protocol).
        label: A short, stable name for split ids: the path relative to the
            root the user gave, or the full URL when several roots were given.
        shown: The full URL without credentials, for messages and metrics.
        size: The size in bytes when the listing reported it.
        partitions: The Hive partition folders between the root and the
            file, as ``(key, value)`` pairs; a value is ``None`` for null.
    """

    root: int
    path: str
    label: str
    shown: str
    size: int | None
    partitions: tuple[tuple[str, str | None], ...] = ()


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


def _check_paths(name: str, urls: Any) -> list[str]:
    roots = [urls] if isinstance(urls, str) else list(urls) if isinstance(urls, list | tuple) else []
    if not roots or not all(isinstance(root, str) and root for root in roots):
        raise PlanError(f"{name}: path must be a non-empty string or a list of them, got {redact(repr(urls))}")
    return roots


def _hive_partitions(name: str, shown: str, relative: str) -> tuple[tuple[str, str | None], ...]:
    """The ``key=value`` folders of ``relative`` (a path below the root, ending with the file name)."""
    found: dict[str, str | None] = {}
    for folder in relative.split("/")[:-1]:
        key, equals, value = folder.partition("=")
        if not equals or not key:
            continue  # A folder without '=' is not a partition.
        key, value = unquote(key), unquote(value)
        if key in found:
            raise PlanError(
                f"{name}: '{shown}' is inside two partition folders named '{key}'; rename one, or pass "
                f"partitioning=None to read no columns from folder names"
            )
        found[key] = None if value in ("", _HIVE_NULL) else value
    return tuple(found.items())


def _list(
    name: str,
    urls: Sequence[str],
    filesystems: Sequence[tuple[fsspec.AbstractFileSystem, str]],
    hive: bool,
    allow_empty: bool,
) -> list[_File]:
    """List the data files of every root, in a deterministic order.

    Each root's files are sorted; roots keep the order they were given in and
    a file named twice is kept once.

    Args:
        allow_empty: A root that does not exist or holds no data file yet is
            empty instead of an error (a watched folder).

    Raises:
        FileNotFoundError: A root does not exist or matches no data file.
        PlanError: A root could not be listed.
    """
    files: list[_File] = []
    seen: set[tuple[str, str]] = set()
    for index, (url, (fs, root)) in enumerate(zip(urls, filesystems, strict=True)):
        fs.invalidate_cache()  # A cached listing (s3fs keeps one) would hide files that landed since.
        try:
            found = _list_root(name, url, fs, root)
        except FileNotFoundError:
            if allow_empty:
                continue
            raise
        except Exception as exc:  # noqa: BLE001 - filesystems raise their own types (botocore...): name the path.
            message = (
                f"{name}: cannot list '{redact(url)}' ({type(exc).__name__}: {exc}); "
                f"check the path and storage_options (credentials, region, endpoint)"
            )
            clean = redact(message, fs.storage_options)
            raise PlanError(clean) from (exc if clean == message else None)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        for path, relative, size in found:
            if (protocol, path) in seen:
                continue
            seen.add((protocol, path))
            shown = shown_url(fs, path)
            partitions = _hive_partitions(name, shown, relative) if hive else ()
            files.append(_File(index, path, relative if len(urls) == 1 else shown, shown, size, partitions))
    return files


def _list_root(name: str, url: str, fs: fsspec.AbstractFileSystem, root: str) -> list[tuple[str, str, int | None]]:
    """Return ``(path, path relative to the root, size)`` of each data file under one root."""
    shown = redact(url)
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
# Partitions and time                                                         #
# --------------------------------------------------------------------------- #


def _infer_partition_fields(files: Sequence[_File]) -> list[pa.Field]:
    """One field per partition key, in first-seen order: int64 when every value is an integer, else string."""
    values: dict[str, set[str]] = {}
    for file in files:
        for key, value in file.partitions:
            seen = values.setdefault(key, set())
            if value is not None:
                seen.add(value)
    return [
        pa.field(key, pa.int64() if seen and all(_INTEGER.match(v) for v in seen) else pa.string())
        for key, seen in values.items()
    ]


def _partition_range_ns(day: str | None, hour: str | None) -> tuple[int, int] | None:
    """``[start, end)`` in epoch ns of a day (or hour) partition value and an optional hour value.

    Returns ``None`` when the day is null. Raises ``ValueError`` when a value is not a day, an hour or 0-23.
    """
    if day is None:
        return None
    match = _HOUR.match(day)
    if match:
        year, month, dom, start_hour = match.groups()
        width = _NS_PER_HOUR
        if hour is not None:
            raise ValueError(f"'{day}' is already an hour, so the hour partition is redundant")
    else:
        match = _DAY.match(day)
        if match is None:
            raise ValueError(f"'{day}' is not a day (2026-01-01, 20260101) or an hour (2026-01-01T03)")
        year, month, dom = (g for g in match.groups() if g is not None)
        start_hour, width = "0", _NS_PER_DAY
    if int(start_hour) > 23:
        raise ValueError(f"'{day}' has an hour past 23")
    start = int(np.datetime64(f"{year}-{month}-{dom}", "D").astype("datetime64[ns]").astype(np.int64))
    start += int(start_hour) * _NS_PER_HOUR
    if hour is not None:
        if not _INTEGER.match(hour) or not 0 <= int(hour) <= 23:
            raise ValueError(f"hour '{hour}' is not 0-23")
        start, width = start + int(hour) * _NS_PER_HOUR, _NS_PER_HOUR
    return start, start + width


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


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

    def unread(self, table: pa.Table) -> None:
        """Put ``table`` (the end of the last ``take``) back in front of the stream."""
        if table.num_rows:
            self._pending = [*table.to_batches(), *self._pending]
            self._rows += table.num_rows

    def _pull(self) -> bool:
        """Append the next non-empty batch; False at the end of the stream."""
        for batch in self._batches:
            if batch.num_rows:
                self._pending.append(batch)
                self._rows += batch.num_rows
                return True
        return False


def _time_values(column: pa.ChunkedArray | pa.Array) -> tuple[pa.ChunkedArray | pa.Array, int]:
    """A time column as int64 in its own unit, and the nanoseconds in that unit (int64 columns are epoch ms)."""
    if pa.types.is_timestamp(column.type):
        return pc.cast(column, pa.int64()), _NS_PER_UNIT[column.type.unit]
    return column, _NS_PER_MS


class _Rows:
    """Turns one file's rows into the source's batches: partition columns, types, the time filter.

    Built in the reader actor, from the source and the file.
    """

    def __init__(self, source: _FileSource, file: _File) -> None:
        self.name = source.name
        self.file = file
        self.fs = source._filesystem(file)
        self.schema = source.schema()
        self.file_schema = source._file_schema(file)
        self.path_values = source._path_values(file)
        self.time_column = source._time_column
        self.bounds: tuple[int | None, int | None] | None = None
        if self.time_column is not None and (source._start_ns is not None or source._end_ns is not None):
            kind = self.schema.field(self.time_column).type
            unit_ns = _NS_PER_UNIT[kind.unit] if pa.types.is_timestamp(kind) else _NS_PER_MS
            # A value v in the column's unit is at v * unit_ns; v * unit_ns >= x  <=>  v >= ceil(x / unit_ns).
            self.bounds = tuple(  # type: ignore[assignment]
                None if bound is None else _ceil_div(bound, unit_ns) for bound in (source._start_ns, source._end_ns)
            )
        self.event_time_ms: int | None = None

    def complete(self, raw: pa.Table) -> pa.Table:
        """Add the partition columns to ``raw`` (the file's columns) and cast it to the source's schema."""
        for column, value in self.path_values.items():
            raw = raw.append_column(column, pa.repeat(value, raw.num_rows))
        return _conform(raw, self.schema)

    def mask(self, table: pa.Table) -> pa.ChunkedArray | None:
        """True for the rows inside ``[start, end)``, or ``None`` when every row is kept."""
        if self.bounds is None:
            return None
        assert self.time_column is not None
        values, _ = _time_values(table.column(self.time_column))
        low, high = self.bounds
        mask = None if low is None else pc.greater_equal(values, low)
        if high is not None:
            below = pc.less(values, high)
            mask = below if mask is None else pc.and_(mask, below)
        return mask

    def seen(self, table: pa.Table) -> None:
        """Note the largest event time of a returned batch, for metrics."""
        if self.time_column is None or not table.num_rows:
            return
        values, unit_ns = _time_values(table.column(self.time_column))
        top = pc.max(values).as_py()
        if top is not None:
            top_ms = top * unit_ns // _NS_PER_MS
            self.event_time_ms = top_ms if self.event_time_ms is None else max(self.event_time_ms, top_ms)

    def error(self, exc: BaseException, where: str, hint: str) -> RaystreamError:
        """A read error naming the file, with any credential of the filesystem removed."""
        message = f"{self.name}: cannot read '{self.file.shown}' {where}: {exc}; {hint}"
        clean = redact(message, self.fs.storage_options)
        error = RaystreamError(clean)
        error.__cause__ = exc if clean == message else None
        error.__suppress_context__ = True
        return error


class _RowReader(SplitReader):
    """A reader whose position is the number of the split's rows consumed from the file.

    Subclasses open the file and return its record batches (the file's
    columns, as ``file_schema`` names them), starting at a row they choose at
    or before ``start`` (Parquet starts at a row group); this class skips the
    rest, regroups the batches, adds the partition columns and filters by time.
    """

    def __init__(self, source: _FileSource, file: _File, start: int) -> None:
        self._rows = _Rows(source, file)
        self._file = file
        self._start = start
        self._consumed = start
        self._buffer: _RowBuffer | None = None
        self._closer: Any = None

    def next_batch(self, max_rows: int) -> pa.Table | None:
        """Return the next 1 to ``max_rows`` rows, or ``None`` once the split is exhausted.

        With ``start``/``end``, a batch may be empty when a long run of rows
        fell outside them (the position still moved).
        """
        _check_max_rows(max_rows)
        try:
            if self._buffer is None:
                batches, first_row = self._open(max_rows)
                self._buffer = _RowBuffer(batches)
                self._buffer.skip(self._start - first_row)
            table = self._take(self._buffer, max_rows)
        except (pa.ArrowException, OSError) as exc:
            raise self._failure(exc)  # noqa: B904 - the error sets its cause itself, unless it would show a secret
        if table is not None:
            self._rows.seen(table)
        return table

    def _failure(self, exc: BaseException) -> RaystreamError:
        """The error for a read that raised ``exc``, naming the file."""
        return self._rows.error(exc, f"after row {self._consumed} of its split", self._hint())

    def _take(self, buffer: _RowBuffer, max_rows: int) -> pa.Table | None:
        if self._rows.bounds is None:
            raw = buffer.take(max_rows)
            if raw is None:
                return None
            self._consumed += raw.num_rows
            return self._rows.complete(raw)
        scanned = 0
        while True:
            raw = buffer.take(max(max_rows, _FILTER_CHUNK_ROWS))
            if raw is None:
                return None
            table = self._rows.complete(raw)
            mask = self._rows.mask(table)
            assert mask is not None
            kept = pc.indices_nonzero(mask)
            if len(kept) > max_rows:
                # Return exactly max_rows rows; the rest of the chunk is read again next time.
                cut = kept[max_rows].as_py()
                buffer.unread(raw.slice(cut))
                table, mask = table.slice(0, cut), mask.slice(0, cut)
            self._consumed += table.num_rows
            scanned += table.num_rows
            out = table.filter(mask)
            if out.num_rows or scanned >= _FILTER_SCAN_ROWS:
                return out

    def position(self) -> int:
        """Return the number of rows of the split consumed so far (returned or filtered out)."""
        return self._consumed

    def metrics(self) -> dict[str, Any]:
        """The file, rows consumed, bytes read and the event time reached (see the module docstring)."""
        return {
            "file": self._file.shown,
            "rows_read": self._consumed,
            "bytes_read": self._bytes_read(),
            "bytes_total": self._bytes_total(),
            "event_time_ms": self._rows.event_time_ms,
        }

    def close(self) -> None:
        """Close the file, if it was opened."""
        if self._closer is not None:
            self._closer.close()
            self._closer = None
        self._buffer = None

    @abstractmethod
    def _open(self, max_rows: int) -> tuple[Iterator[pa.RecordBatch], int]:
        """Open the file; return its batches and the split row the first one starts at."""

    @abstractmethod
    def _bytes_read(self) -> int:
        """Bytes of the split read so far."""

    @abstractmethod
    def _bytes_total(self) -> int | None:
        """Bytes of the split, when known."""

    def _hint(self) -> str:
        return "check that the file is not corrupt"


# --------------------------------------------------------------------------- #
# The common source                                                           #
# --------------------------------------------------------------------------- #


class _FileSource(Source):
    """What every file source shares: listing, partitions, time pruning, watching.

    Subclasses set ``self._schema`` (with :meth:`_with_partitions` when it is
    inferred) and then call :meth:`_check_schema`.
    """

    bounded = True
    replayable = True
    # Measured on Nexmark (bench/README.md): 400k-row epochs read Parquet ~30% faster than 200k-row ones.
    batch_rows = 400_000
    #: False when the schema is known without any file (text: one ``line`` column).
    _needs_schema = True
    payload_types: tuple[type, ...] = (_File,)

    def __init__(
        self,
        path: str | list[str],
        *,
        storage_options: dict[str, Any] | None,
        explicit: pa.Schema | None = None,
        partitioning: str | None = "hive",
        time_column: str | None = None,
        start: TimeBound = None,
        end: TimeBound = None,
        partition_time: PartitionTime | str = "auto",
        watch: bool = False,
        poll_interval: Duration = "10s",
    ) -> None:
        name = self.name
        # Arguments first: nothing is listed or opened for a call that cannot work.
        self._urls = _check_paths(name, path)
        if partitioning not in ("hive", None):
            raise PlanError(f"{name}: partitioning must be 'hive' or None, got {partitioning!r}")
        if explicit is not None and not isinstance(explicit, pa.Schema):
            raise PlanError(f"{name}: schema must be a pyarrow.Schema, got {type(explicit).__name__}")
        if time_column is not None and (not isinstance(time_column, str) or not time_column):
            raise PlanError(f"{name}: time_column must be a column name, got {time_column!r}")
        if (start is not None or end is not None) and time_column is None:
            raise PlanError(
                f"{name}: start= and end= select rows by event time, so they need time_column=, the column to "
                f"compare (for example time_column='ts')"
            )
        self._hive = partitioning == "hive"
        self._explicit = explicit
        self._time_column = time_column
        self._start_ns = None if start is None else time_ns(start, f"{name}: start")
        self._end_ns = None if end is None else time_ns(end, f"{name}: end")
        if self._start_ns is not None and self._end_ns is not None and self._start_ns >= self._end_ns:
            raise PlanError(f"{name}: start={start!r} is not before end={end!r}; the range [start, end) is empty")
        self._partition_time_arg = _check_partition_time(name, partition_time, time_column)
        self._watch = bool(watch)
        if self._watch:
            interval_ms = duration_ms(poll_interval, f"{name}: poll_interval")
            if interval_ms <= 0:
                raise PlanError(f"{name}: poll_interval must be positive, got {poll_interval!r}")
            self.bounded = False
            self.discovers_splits = True
            self.discovery_interval_s = interval_ms / 1000
        self._filesystems = [url_to_fs(url, storage_options, what=name) for url in self._urls]

        listed = self._list()
        if not listed and explicit is None and self._needs_schema:
            shown = ", ".join(f"'{redact(url)}'" for url in self._urls)
            raise PlanError(
                f"{name}: watch=True on {shown}, which holds no data file yet, so the columns are unknown; pass "
                f"schema= (a pyarrow.Schema) to start watching an empty folder"
            )
        # Partition columns that schema= names take its type and come from a file's folder when it has one;
        # the others are appended with inferred types, and are null for a file outside such a folder.
        inferred = _infer_partition_fields(listed)
        explicit_names = set(explicit.names) if explicit is not None else set()
        self._partition_fields = [field for field in inferred if field.name not in explicit_names]
        self._path_always = frozenset(field.name for field in self._partition_fields)
        self._partition_time = self._resolve_partition_time(_partition_keys(listed), bool(listed))
        self._listed = listed
        self._files = [file for file in listed if self._in_range(file)]
        self._schema: pa.Schema = pa.schema([])
        if explicit is not None:
            self._schema = pa.schema([*explicit, *self._partition_fields])

    # -- the public face ---------------------------------------------------

    def schema(self) -> pa.Schema:
        """Return the schema of every batch, partition columns included; known at plan time."""
        return self._schema

    def identity(self) -> dict[str, Any]:
        """The paths (without credentials) and the time range read."""
        return {
            "source": self.name,
            "paths": [redact(url) for url in self._urls],
            "start_ns": self._start_ns,
            "end_ns": self._end_ns,
        }

    def estimated_bytes(self) -> int | None:
        """The size of the files on storage, as Spark's ``autoBroadcastJoinThreshold`` judges a table of files.

        ``None`` for a watched folder (it grows) or when the listing gave no size. Compressed Parquet is
        several times larger in memory; ``RunConfig.max_join_table_bytes`` catches a table that does not fit.
        """
        if self._watch or any(file.size is None for file in self._files):
            return None
        return sum(file.size or 0 for file in self._files)

    def files(self) -> list[str]:
        """The URLs (without credentials) of the files this source reads, after pruning by ``start``/``end``.

        For a watching source, as of the last listing (the last ``splits()`` call).
        """
        return [file.shown for file in self._files]

    def __repr__(self) -> str:
        paths = ", ".join(repr(redact(url)) for url in self._urls)
        return f"{type(self).__name__}({paths}, {len(self._files)} files)"

    # -- for subclasses and readers -----------------------------------------

    def _list(self) -> list[_File]:
        return _list(self.name, self._urls, self._filesystems, self._hive, allow_empty=self._watch)

    def _relist(self) -> list[_File]:
        """List the paths again (a watching source); return the files that are new since the last listing."""
        known = {(file.root, file.path) for file in self._listed}
        self._listed = self._list()
        self._files = [file for file in self._listed if self._in_range(file)]
        return [file for file in self._files if (file.root, file.path) not in known]

    def _filesystem(self, file: _File) -> fsspec.AbstractFileSystem:
        return self._filesystems[file.root][0]

    def _with_partitions(self, file_schema: pa.Schema) -> pa.Schema:
        """``file_schema`` followed by the partition columns; a file column named like one is an error."""
        for field in self._partition_fields:
            if field.name in file_schema.names:
                holder = next(f for f in self._listed if field.name in dict(f.partitions))
                raise PlanError(
                    f"{self.name}: column '{field.name}' is both in the files and a partition folder "
                    f"('{holder.shown}'); rename the column, or pass partitioning=None to read no columns from "
                    f"folder names"
                )
        return pa.schema([*file_schema, *self._partition_fields])

    def _path_names(self, file: _File) -> set[str]:
        """The columns of the source's schema that ``file`` takes from its path."""
        keys = {key for key, _ in file.partitions}
        return {name for name in self._schema.names if name in keys or name in self._path_always}

    def _file_schema(self, file: _File) -> pa.Schema:
        """The columns read from ``file`` itself, with the source's types."""
        from_path = self._path_names(file)
        return pa.schema([field for field in self._schema if field.name not in from_path])

    def _path_values(self, file: _File) -> dict[str, pa.Scalar]:
        """The partition columns of ``file``, as scalars of the source's types (null when it has no such folder).

        Raises:
            PlanError: A value does not fit its column's type.
        """
        values = dict(file.partitions)
        out = {}
        for name in sorted(self._path_names(file), key=self._schema.get_field_index):
            kind = self._schema.field(name).type
            value = values.get(name)
            try:
                out[name] = pa.scalar(value, pa.string()).cast(kind)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise PlanError(
                    f"{self.name}: partition folder '{name}={value}' of '{file.shown}' is not a {kind} ({exc}); "
                    f"rename the folder, or change the type of '{name}' in schema="
                ) from exc
        return out

    def _check_schema(self) -> None:
        """Check ``time_column`` against the schema, and every file's partition values against their types."""
        for file in self._files:
            self._path_values(file)
            self._range_ns(file)
        column = self._time_column
        if column is None:
            return
        if column not in self._schema.names:
            raise PlanError(
                f"{self.name}: time_column '{column}' is not a column; the source has columns: "
                f"{', '.join(self._schema.names)}"
            )
        kind = self._schema.field(column).type
        if not is_event_time_type(kind):
            raise PlanError(
                f"{self.name}: time_column '{column}' has type {kind}; use a timestamp column or an int64 of "
                f"epoch milliseconds"
            )

    def _resolve_partition_time(self, keys: Sequence[str], any_files: bool) -> tuple[str, ...]:
        """The partition columns that give a file's time range: ``(day,)`` or ``(day, hour)``, or ``()``."""
        chosen = self._partition_time_arg
        if self._time_column is None or chosen is None:
            return ()
        if chosen == "auto":
            day = next((key for key in _AUTO_DAY_COLUMNS if key in keys), None)
            if day is None:
                return ()
            return (day, _AUTO_HOUR_COLUMN) if _AUTO_HOUR_COLUMN in keys else (day,)
        assert isinstance(chosen, tuple)
        missing = [key for key in chosen if key not in keys]
        if missing and any_files:
            raise PlanError(
                f"{self.name}: partition_time names '{missing[0]}', which is not a partition folder of the files "
                f"(their partition folders: {', '.join(keys) or 'none'}); check partition_time="
            )
        return chosen

    def _range_ns(self, file: _File) -> tuple[int, int] | None:
        """The time range ``file``'s partition folders give, or ``None``."""
        if not self._partition_time:
            return None
        values = dict(file.partitions)
        day = values.get(self._partition_time[0])
        hour = values.get(self._partition_time[1]) if len(self._partition_time) > 1 else None
        try:
            return _partition_range_ns(day, hour)
        except ValueError as exc:
            raise PlanError(
                f"{self.name}: the partition folders of '{file.shown}' give no time range: {exc}; name the "
                f"day and hour folders with partition_time=, or pass partition_time=None not to use folders as time"
            ) from exc

    def _in_range(self, file: _File) -> bool:
        """False when ``file``'s partition time range lies outside ``[start, end)``."""
        if self._start_ns is None and self._end_ns is None:
            return True
        bounds = self._range_ns(file)
        if bounds is None:
            return True
        low, high = bounds
        return (self._start_ns is None or high > self._start_ns) and (self._end_ns is None or low < self._end_ns)

    def _min_event_time_ms(self, file: _File, statistics_ns: int | None) -> int | None:
        """A lower bound of a split's event times: statistics, else its partition range, raised to ``start``."""
        if self._time_column is None:
            return None
        low = statistics_ns
        if low is None:
            bounds = self._range_ns(file)
            low = None if bounds is None else bounds[0]
        if self._start_ns is not None:
            low = self._start_ns if low is None else max(low, self._start_ns)
        return None if low is None else low // _NS_PER_MS


def _partition_keys(files: Sequence[_File]) -> list[str]:
    return list(dict.fromkeys(key for file in files for key, _ in file.partitions))


def _check_partition_time(name: str, value: Any, time_column: str | None) -> tuple[str, ...] | str | None:
    if value is None or value == "auto":
        return value  # type: ignore[no-any-return]
    names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list | tuple) else None
    if not names or len(names) > 2 or not all(isinstance(n, str) and n for n in names):
        raise PlanError(
            f"{name}: partition_time must be 'auto', None, a partition column (the day) or a list of two (the "
            f"day and the hour), got {value!r}"
        )
    if time_column is None:
        raise PlanError(f"{name}: partition_time= maps folders to event time, so it needs time_column=")
    return names


# --------------------------------------------------------------------------- #
# Parquet                                                                     #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Footer:
    """What a Parquet footer tells at plan time.

    Attributes:
        schema: The file's columns.
        rows: Rows of each row group.
        bytes: Compressed bytes of each row group (all its column chunks).
        time_min_ns: Each row group's smallest ``time_column`` value in epoch
            ns from its statistics, or ``None`` when unknown.
        time_max_ns: Likewise, the largest.
    """

    schema: pa.Schema
    rows: tuple[int, ...]
    bytes: tuple[int, ...]
    time_min_ns: tuple[int | None, ...]
    time_max_ns: tuple[int | None, ...]


@dataclass(frozen=True)
class _RowGroups:
    """A Parquet split: row groups ``start`` to ``stop`` (excluded) of one file."""

    file: _File
    start: int
    stop: int
    #: Rows of each row group of the range, to skip whole groups on resume.
    rows: tuple[int, ...]
    #: Compressed bytes of each row group of the range, for progress metrics.
    bytes: tuple[int, ...] = ()


def _time_statistics(
    metadata: pq.FileMetaData, column: str | None
) -> tuple[tuple[int | None, ...], tuple[int | None, ...]]:
    """Each row group's min and max of ``column`` in epoch ns, from the footer's statistics.

    The raw statistics are int64 in the unit of the column's Parquet logical
    type (which may differ from the Arrow type it is read as: pyarrow stores
    ``timestamp[s]`` as milliseconds). A timestamp column with or without a
    time zone stores UTC-normalized or wall-clock values, which is what the
    engine compares too. Other physical types (INT96) have no usable
    statistics; their row groups are never pruned.
    """
    count = metadata.num_row_groups
    unknown: tuple[tuple[int | None, ...], tuple[int | None, ...]] = ((None,) * count, (None,) * count)
    if column is None:
        return unknown
    index = next((j for j in range(metadata.num_columns) if metadata.schema.column(j).path == column), None)
    if index is None:
        return unknown
    described = metadata.schema.column(index)
    if described.physical_type != "INT64":
        return unknown
    logical = json.loads(described.logical_type.to_json())
    kind = logical.get("Type")
    if kind == "Timestamp":
        unit_ns = _NS_PER_PARQUET_UNIT.get(logical.get("timeUnit"))
    elif kind == "None" or (kind == "Int" and logical.get("isSigned", True)):
        unit_ns = _NS_PER_MS  # An int64 time column holds epoch milliseconds.
    else:
        unit_ns = None
    if unit_ns is None:
        return unknown
    mins: list[int | None] = []
    maxs: list[int | None] = []
    for i in range(count):
        statistics = metadata.row_group(i).column(index).statistics
        if statistics is None or not statistics.has_min_max:
            mins.append(None)
            maxs.append(None)
        else:
            mins.append(int(statistics.min_raw) * unit_ns)
            maxs.append(int(statistics.max_raw) * unit_ns)
    return tuple(mins), tuple(maxs)


class ParquetSource(_FileSource):
    """Reads Parquet files; a split is a run of row groups of one file.

    Every remaining file's footer is read at plan time: it gives the schema,
    the row groups and their statistics. Row groups are grouped into splits of
    at most about ``target_split_rows`` rows (a larger row group is a split
    of its own). See the module docstring for partitions, pruning by time and
    watching.

    Args:
        path: An fsspec URL (``data/``, ``s3://bucket/events/``,
            ``hdfs://namenode:8020/events``, ``data/*.parquet``) or a list of
            them. A directory is read recursively; names starting with ``.``
            or ``_`` are ignored.
        columns: The columns to read (partition columns too), in this order;
            all when ``None``.
        schema: The source's schema instead of the footers' (needed to watch
            an empty folder); files are cast to it. Not with ``columns``.
        time_column: The event-time column (a timestamp of any unit and
            zone, or int64 epoch ms), for ``start``/``end`` and event-time order.
        start: Read only rows with ``time_column >= start`` (datetime, date
            or ISO string; naive is UTC).
        end: Read only rows with ``time_column < end``.
        partition_time: The partition columns that give a file's time range:
            ``"auto"`` (``dt`` or ``date``, plus ``hour``), ``None`` (none), a
            column name (a day or hour value) or ``[day, hour]``.
        partitioning: ``"hive"`` reads ``key=value`` folders as columns; ``None`` does not.
        watch: Pick up files as they land (an unbounded source).
        poll_interval: How often to list the paths when watching (``"10s"``).
        storage_options: Passed to the fsspec filesystem (credentials...).
            They are never put in messages.
        target_split_rows: The most rows a split of several row groups has.

    Raises:
        FileNotFoundError: A path does not exist or holds no data file.
        PlanError: A file is not Parquet, lacks a column of ``columns``, or
            the files' schemas conflict; an argument is invalid.

    Example:
        >>> source = ParquetSource("s3://bucket/clicks/", columns=["user", "ts"])  # doctest: +SKIP
    """

    name = "read_parquet"
    payload_types: tuple[type, ...] = (_File, _RowGroups)

    def __init__(
        self,
        path: str | list[str],
        *,
        columns: list[str] | None = None,
        schema: pa.Schema | None = None,
        time_column: str | None = None,
        start: TimeBound = None,
        end: TimeBound = None,
        partition_time: PartitionTime = "auto",
        partitioning: str | None = "hive",
        watch: bool = False,
        poll_interval: Duration = "10s",
        storage_options: dict[str, Any] | None = None,
        target_split_rows: int = 1_000_000,
    ) -> None:
        if target_split_rows < 1:
            raise PlanError(f"{self.name}: target_split_rows must be at least 1, got {target_split_rows}")
        if columns is not None and (isinstance(columns, str) or len(set(columns)) != len(columns)):
            raise PlanError(f"{self.name}: columns must be a list of distinct names, got {columns!r}")
        if columns is not None and schema is not None:
            raise PlanError(f"{self.name}: pass columns= or schema=, not both; schema= names the columns to read")
        self._columns = list(columns) if columns is not None else None
        self._target_split_rows = target_split_rows
        self._footers: dict[tuple[int, str], _Footer] = {}
        super().__init__(
            path,
            storage_options=storage_options,
            explicit=schema,
            partitioning=partitioning,
            time_column=time_column,
            start=start,
            end=end,
            partition_time=partition_time,
            watch=watch,
            poll_interval=poll_interval,
        )
        # Only the files left after pruning are opened; the first listed one when none is left, for the schema.
        inspected = self._files or self._listed[:1]
        footers = _plan_map(self._read_footer, inspected)
        if schema is None:
            self._schema = self._infer_schema(inspected, footers)
        self._check_schema()
        for file, footer in zip(inspected, footers, strict=True):
            self._check_fits(file, footer)

    def _infer_schema(self, files: Sequence[_File], footers: Sequence[_Footer]) -> pa.Schema:
        from_path = self._path_always
        schemas = []
        for file, footer in zip(files, footers, strict=True):
            schema = footer.schema
            if self._columns is not None:
                wanted = [c for c in self._columns if c not in from_path]
                missing = [c for c in wanted if c not in schema.names]
                if missing:
                    raise PlanError(
                        f"{self.name}: column '{missing[0]}' is not in '{file.shown}' (its columns: "
                        f"{', '.join([*schema.names, *sorted(from_path)])}); check columns="
                    )
                schema = pa.schema([schema.field(c) for c in wanted], metadata=schema.metadata)
            schemas.append((file, schema))
        unified = self._with_partitions(_unify(self.name, schemas, ", or leave the column out with columns="))
        if self._columns is None:
            return unified
        return pa.schema([unified.field(c) for c in self._columns])

    def _read_footer(self, file: _File) -> _Footer:
        key = (file.root, file.path)
        cached = self._footers.get(key)
        if cached is not None:
            return cached
        fs = self._filesystem(file)
        try:
            with _open_file(fs, file.path) as handle:
                metadata = pq.ParquetFile(handle).metadata
                schema = metadata.schema.to_arrow_schema()
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as exc:
            message = (
                f"{self.name}: cannot read the Parquet footer of '{file.shown}' ({exc}); check that it is a "
                f"Parquet file, or move it out of the input"
            )
            clean = redact(message, fs.storage_options)
            raise PlanError(clean) from (exc if clean == message else None)
        groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
        mins, maxs = _time_statistics(metadata, self._time_column)
        footer = _Footer(
            schema,
            tuple(group.num_rows for group in groups),
            tuple(sum(group.column(j).total_compressed_size for j in range(group.num_columns)) for group in groups),
            mins,
            maxs,
        )
        self._footers[key] = footer
        return footer

    def _check_fits(self, file: _File, footer: _Footer) -> None:
        """Check that ``file`` has every column the source reads from it, in a type that casts to the source's."""
        needed = self._file_schema(file)
        missing = [name for name in needed.names if name not in footer.schema.names]
        if missing:
            raise PlanError(
                f"{self.name}: column '{missing[0]}' is not in '{file.shown}' (its columns: "
                f"{', '.join(footer.schema.names)}); make the file agree with the source's schema, or pass schema="
            )
        try:
            footer.schema.empty_table().select(needed.names).cast(needed)
        except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise PlanError(
                f"{self.name}: columns of '{file.shown}' cannot be converted to the source's schema ({exc}); make "
                f"the file agree, or pass schema="
            ) from exc

    def splits(self, parallelism: int) -> list[Split]:
        """Return one split per run of row groups of about ``target_split_rows`` rows, file by file.

        Row groups outside ``[start, end)`` by their statistics are left out,
        so a run never spans a pruned group. A watching source lists its
        paths again first and reads the footers of the files that are new.
        """
        if self._watch:
            new = self._relist()
            for file, footer in zip(new, _plan_map(self._read_footer, new), strict=True):
                self._check_fits(file, footer)
                self._path_values(file)
        splits = []
        for file in self._files:
            splits.extend(self._file_splits(file, self._footers[(file.root, file.path)]))
        return splits

    def _file_splits(self, file: _File, footer: _Footer) -> list[Split]:
        kept = [i for i in range(len(footer.rows)) if self._group_in_range(footer, i)]
        splits: list[Split] = []
        run: list[int] = []
        for index in [*kept, None]:
            if run and (index is None or index != run[-1] + 1):
                splits.extend(self._cut(file, footer, run[0], run[-1] + 1))
                run = []
            if index is not None:
                run.append(index)
        return splits

    def _cut(self, file: _File, footer: _Footer, first: int, stop: int) -> list[Split]:
        """Cut row groups ``first`` to ``stop`` into splits of about ``target_split_rows`` rows."""
        splits = []
        start, total = first, 0
        for index in range(first, stop):
            rows = footer.rows[index]
            if index > start and total + rows > self._target_split_rows:
                splits.append(self._split(file, footer, start, index))
                start, total = index, 0
            total += rows
        splits.append(self._split(file, footer, start, stop))
        return splits

    def _split(self, file: _File, footer: _Footer, start: int, stop: int) -> Split:
        mins = footer.time_min_ns[start:stop]
        lowest = min(m for m in mins if m is not None) if all(m is not None for m in mins) else None
        payload = _RowGroups(file, start, stop, footer.rows[start:stop], footer.bytes[start:stop])
        return Split(f"{file.label}#rg{start}-{stop - 1}", payload, self._min_event_time_ms(file, lowest))

    def _group_in_range(self, footer: _Footer, index: int) -> bool:
        low, high = footer.time_min_ns[index], footer.time_max_ns[index]
        if low is None or high is None:
            return True
        return (self._start_ns is None or high >= self._start_ns) and (self._end_ns is None or low < self._end_ns)

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        """Open a run of row groups; ``position`` is the number of its rows already consumed."""
        return _ParquetReader(self, split.payload, int(position or 0))


class _ParquetReader(_RowReader):
    def __init__(self, source: ParquetSource, groups: _RowGroups, start: int) -> None:
        super().__init__(source, groups.file, start)
        self._groups = groups

    def _open(self, max_rows: int) -> tuple[Iterator[pa.RecordBatch], int]:
        # Whole row groups before the position are skipped by their metadata row count.
        ends = np.cumsum(self._groups.rows)
        skipped = int(np.searchsorted(ends, self._start, side="right"))
        first_row = int(ends[skipped - 1]) if skipped else 0
        groups = list(range(self._groups.start + skipped, self._groups.stop))
        if not groups:  # Resumed at the end of the split: nothing to open.
            return iter(()), first_row
        handle = _open_file(self._rows.fs, self._file.path)
        self._closer = handle
        batches = pq.ParquetFile(handle).iter_batches(
            batch_size=min(max(max_rows, 1024), _PARQUET_BATCH_ROWS),
            row_groups=groups,
            columns=self._rows.file_schema.names,
        )
        return batches, first_row

    def _bytes_read(self) -> int:
        """Compressed bytes of the row groups of which a row was consumed."""
        rows = self._groups.rows
        starts = np.cumsum((0, *rows[:-1])) if rows else np.zeros(0, np.int64)
        started = int(np.searchsorted(starts, self._consumed, side="left"))
        return int(sum(self._groups.bytes[:started]))

    def _bytes_total(self) -> int | None:
        return int(sum(self._groups.bytes)) if self._groups.bytes else None


# --------------------------------------------------------------------------- #
# CSV and JSON                                                                #
# --------------------------------------------------------------------------- #


class _StreamSource(_FileSource):
    """A format parsed by a pyarrow streaming reader; one split per file."""

    #: Bytes parsed to infer a file's schema, and the streaming block size.
    _block_bytes = _INFER_BLOCK_BYTES

    def __init__(
        self,
        path: str | list[str],
        *,
        schema: pa.Schema | None,
        storage_options: dict[str, Any] | None,
        time_column: str | None,
        start: TimeBound,
        end: TimeBound,
        partition_time: PartitionTime,
        partitioning: str | None,
        watch: bool,
        poll_interval: Duration,
    ) -> None:
        super().__init__(
            path,
            storage_options=storage_options,
            explicit=schema,
            partitioning=partitioning,
            time_column=time_column,
            start=start,
            end=end,
            partition_time=partition_time,
            watch=watch,
            poll_interval=poll_interval,
        )
        # Only the files left after pruning are opened; the first listed one when none is left, for the schema.
        inspected = self._files or self._listed[:1]
        inferred = _plan_map(self._inspect, inspected)
        kept = {(file.root, file.path) for file in self._files}
        # An empty file has no rows and no schema; it gets no split.
        self._readable = [
            file
            for file, found in zip(inspected, inferred, strict=True)
            if found is not None and (file.root, file.path) in kept
        ]
        if schema is None:
            schemas = [(f, s) for f, s in zip(inspected, inferred, strict=True) if s is not None]
            if not schemas:
                shown = ", ".join(f"'{redact(url)}'" for url in self._urls)
                raise PlanError(
                    f"{self.name}: every file of {shown} is empty, so the columns are unknown; "
                    f"pass schema= to read them as an empty stream"
                )
            self._schema = self._with_partitions(_unify(self.name, schemas, " or pass schema="))
        self._check_schema()

    def _inspect(self, file: _File) -> pa.Schema | None:
        """Open ``file`` and parse its first block; return its schema, or ``None`` when empty."""
        if file.size == 0:
            return None
        fs = self._filesystem(file)
        try:
            with _open_file(fs, file.path) as raw:
                expected = self._file_schema(file) if self._explicit is not None else None
                return self._sniff(_decompressed(raw, file.path), expected, file)
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise self._plan_error(file, f"cannot parse '{file.shown}' ({exc}); {self._parse_hint()}", exc) from None

    def _plan_error(self, file: _File, message: str, cause: BaseException | None = None) -> PlanError:
        """``message`` about ``file`` as a PlanError, without any credential of its filesystem."""
        message = f"{self.name}: {message}"
        clean = redact(message, self._filesystem(file).storage_options)
        error = PlanError(clean)
        error.__cause__ = cause if clean == message else None
        error.__suppress_context__ = True
        return error

    @abstractmethod
    def _sniff(self, stream: pa.NativeFile, schema: pa.Schema | None, file: _File) -> pa.Schema | None:
        """The schema of ``file`` (``stream``) from its first block, or ``None`` when it holds no record.

        ``schema`` is the file's columns from ``schema=``, or ``None`` to infer them.
        """

    @abstractmethod
    def _parse_hint(self) -> str:
        """How to fix a file that does not parse, for error messages."""

    def splits(self, parallelism: int) -> list[Split]:
        """Return one split per non-empty file; a watching source lists its paths again first."""
        if self._watch:
            for file in self._relist():
                self._path_values(file)
            files = [file for file in self._files if file.size != 0]
        else:
            files = self._readable
        return [Split(file.label, file, self._min_event_time_ms(file, None)) for file in files]


class _StreamReader(_RowReader):
    """A reader of one whole file, streamed (CSV, JSON lines)."""

    def __init__(self, source: _StreamSource, file: _File, start: int) -> None:
        super().__init__(source, file, start)
        self._source = source
        self._raw: pa.NativeFile | None = None
        self._bytes = 0

    def _stream(self) -> pa.NativeFile:
        """Open the file (decompressed), to be closed by :meth:`close`."""
        self._raw = _open_file(self._rows.fs, self._file.path)
        stream = _decompressed(self._raw, self._file.path)
        self._closer = stream
        return stream

    def _bytes_read(self) -> int:
        """Bytes of the file read so far (compressed bytes for a compressed file)."""
        if self._raw is not None and not self._raw.closed:  # The parser reads ahead a block at a time.
            self._bytes = self._raw.tell()
        return self._bytes

    def _bytes_total(self) -> int | None:
        return self._file.size

    def close(self) -> None:
        """Close the file, if it was opened."""
        self._bytes_read()
        super().close()
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def _hint(self) -> str:
        return self._source._parse_hint()


class _LineRecordReader(_StreamReader):
    """Reads a file a line at a time into rows, each line one row or one dead letter (CSV, JSON lines).

    Its buffer holds the raw lines, so its position counts the lines consumed
    after any header (blank ones and dead letters too), and a dead letter
    knows its line.
    """

    def __init__(self, source: _StreamSource, file: _File, start: int, errors: Errors) -> None:
        super().__init__(source, file, start)
        self._errors = errors
        #: Lines of the file before the first that the position counts: a CSV file's header and blank lines before.
        self._header_lines = 0
        self._dead: list[pa.Table] = []

    @abstractmethod
    def _decode(self, lines: pa.ChunkedArray) -> Decoded:
        """Each of ``lines`` as one row or one dead letter (see :func:`decode_records`)."""

    @abstractmethod
    def _what(self) -> str:
        """What a good line is, for errors: ``"a JSON object matching the schema"``."""

    def _take(self, buffer: _RowBuffer, max_rows: int) -> pa.Table | None:
        scanned = 0
        while True:
            chunk = buffer.take(max_rows if self._rows.bounds is None else max(max_rows, _FILTER_CHUNK_ROWS))
            if chunk is None:
                return None
            lines = chunk.column(0)
            decoded = self._decode(lines)
            table = self._rows.complete(decoded.rows)
            used = chunk.num_rows
            mask = self._rows.mask(table)
            if mask is not None:
                kept = pc.indices_nonzero(mask)
                if len(kept) > max_rows:
                    # Return exactly max_rows rows; the lines from the next kept row on are read again next time.
                    row = kept[max_rows].as_py()
                    used = int(decoded.good[row])
                    buffer.unread(chunk.slice(used))
                    table, mask = table.slice(0, row), mask.slice(0, row)
                table = table.filter(mask)
            self._reject(lines, decoded, used)
            self._consumed += used
            scanned += used
            if table.num_rows or scanned >= _FILTER_SCAN_ROWS:
                return table

    def _reject(self, lines: pa.ChunkedArray, decoded: Decoded, used: int) -> None:
        """Keep (or fail on) the dead letters among the first ``used`` lines, numbered from the lines consumed."""
        count = int(np.searchsorted(decoded.bad, used))
        if count == 0:
            return
        bad = decoded.bad[:count]
        first_line = self._header_lines + self._consumed + 1  # the number, from 1, of the chunk's first line
        if self._errors == "fail":
            message = (
                f"{self._source.name}: line {first_line + int(bad[0])} of '{self._file.shown}' cannot be "
                f"decoded as {self._what()}: {decoded.errors[0]}; fix the file, or pass "
                "errors='dead_letter' to route such lines to stream.dead_letters()"
            )
            raise RaystreamError(redact(message, self._rows.fs.storage_options))
        self._dead.append(
            dead_letter_table(
                self._source.name,
                self._file.label,  # the split id
                raw=lines.take(pa.array(bad)),
                error=decoded.errors[:count],
                position=first_line + bad,
            )
        )

    def take_dead_letters(self) -> pa.Table | None:
        if not self._dead:
            return None
        letters, self._dead = pa.concat_tables(self._dead), []
        return letters


class CsvSource(_StreamSource):
    """Reads CSV files with a header row; a split is a file.

    Without ``schema``, each file's column types are inferred from its first
    block (1 MiB) at plan time and unified across files. With ``schema``, only
    its columns are read, with its types; every file's header must have them
    (but for those a file's partition folders give). See the module docstring
    for partitions, pruning by time and watching.

    The header is the first line that is not blank. After it, each line is
    one row or one dead letter; blank lines are skipped, and a field cannot
    hold a newline. A line with too few or too many fields, a value that
    does not fit its column's type (``1.5`` in an ``int64`` column; without
    ``schema``, a type the first block did not have), bytes that are not
    UTF-8 in a string column, or a quote left open on its line is a dead
    letter: ``stream.dead_letters()`` gets the raw line as ``raw``, the file
    as ``split_id``, its line number from 1 (the header is line 1) as
    ``position`` and the error, and the read goes on (Spark's
    ``PERMISSIVE``, without a row of nulls). ``errors="fail"`` fails the read
    at the first such line instead, naming the file and the line, and fails
    at plan time when the first block already holds one (Spark's
    ``FAILFAST``). Lines are parsed a whole batch at a time with
    ``pyarrow.csv``; only a batch that fails is bisected to its bad lines. A
    split's position is the number of lines after the header consumed.

    Args:
        path: An fsspec URL (file, directory or glob) or a list of them.
            ``.gz``, ``.bz2``, ``.zst``... files are decompressed.
        schema: The columns to read and their types, instead of inference.
        delimiter: The field delimiter, one character.
        time_column: The event-time column, for ``start``/``end`` and event-time order.
        start: Read only rows with ``time_column >= start``.
        end: Read only rows with ``time_column < end``.
        partition_time: The partition columns that give a file's time range (see :class:`ParquetSource`).
        partitioning: ``"hive"`` reads ``key=value`` folders as columns; ``None`` does not.
        watch: Pick up files as they land (an unbounded source).
        poll_interval: How often to list the paths when watching.
        storage_options: Passed to the fsspec filesystem; never put in messages.
        errors: ``"dead_letter"`` or ``"fail"``, for lines that do not parse (see above).

    Raises:
        FileNotFoundError: A path does not exist or holds no data file.
        PlanError: A file cannot be parsed, lacks a column of ``schema``, or
            the files' schemas conflict; an argument is invalid.
    """

    name = "read_csv"

    def __init__(
        self,
        path: str | list[str],
        *,
        schema: pa.Schema | None = None,
        delimiter: str = ",",
        time_column: str | None = None,
        start: TimeBound = None,
        end: TimeBound = None,
        partition_time: PartitionTime = "auto",
        partitioning: str | None = "hive",
        watch: bool = False,
        poll_interval: Duration = "10s",
        storage_options: dict[str, Any] | None = None,
        errors: Errors = "dead_letter",
    ) -> None:
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise PlanError(f"{self.name}: delimiter must be a single character, got {delimiter!r}")
        if errors not in ("dead_letter", "fail"):
            raise PlanError(f"{self.name}: errors must be 'dead_letter' or 'fail', got {errors!r}")
        self._delimiter = delimiter
        self.errors = errors
        self.has_dead_letters = errors == "dead_letter"
        super().__init__(
            path,
            schema=schema,
            storage_options=storage_options,
            time_column=time_column,
            start=start,
            end=end,
            partition_time=partition_time,
            partitioning=partitioning,
            watch=watch,
            poll_interval=poll_interval,
        )

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        """Open a file; ``position`` is the number of its lines after the header already consumed."""
        return _CsvReader(self, split.payload, int(position or 0))

    def _sniff(self, stream: pa.NativeFile, schema: pa.Schema | None, file: _File) -> pa.Schema | None:
        if self.errors == "dead_letter":
            # The first block gives the header and the types only: its bad lines are the readers' dead letters.
            found = self._open_reader(stream, None, skip_invalid=True, include=schema).schema
            if schema is not None:
                return schema
            # pyarrow infers binary for a column holding bytes that are not UTF-8: such lines are dead letters.
            return pa.schema([f.with_type(pa.string()) if pa.types.is_binary(f.type) else f for f in found])
        try:
            found = self._open_reader(stream, schema).schema
        except pa.ArrowInvalid as exc:
            if _INVALID_UTF8 not in str(exc):
                raise
            raise self._not_utf8(file, None, exc) from None
        # pyarrow infers binary for a column holding bytes that are not UTF-8: that is a broken file, not data.
        binary = [field.name for field in found if schema is None and pa.types.is_binary(field.type)]
        if binary:
            raise self._not_utf8(file, binary[0], None)
        return found

    def _not_utf8(self, file: _File, column: str | None, cause: BaseException | None) -> PlanError:
        line = _first_invalid_utf8_line(self._filesystem(file), file, self._block_bytes)
        where = f"column '{column}' " if column is not None else ""
        return self._plan_error(file, f"'{file.shown}' is not valid UTF-8: {where}at line {line}; {_UTF8_HINT}", cause)

    def _open_reader(
        self,
        stream: pa.NativeFile,
        schema: pa.Schema | None,
        *,
        skip_invalid: bool = False,
        include: pa.Schema | None = None,
    ) -> Any:
        """A ``pyarrow.csv`` streaming reader of ``stream``, with ``schema``'s columns and types (or inferred ones).

        ``skip_invalid`` passes over rows of the wrong field count, and ``include`` keeps only its columns
        (with inferred types): for reading the header and inferring types only.
        """
        convert = pa_csv.ConvertOptions()
        if schema is not None:
            convert = pa_csv.ConvertOptions(
                column_types={field.name: field.type for field in schema}, include_columns=schema.names
            )
        elif include is not None:
            convert = pa_csv.ConvertOptions(include_columns=include.names)
        parse = pa_csv.ParseOptions(delimiter=self._delimiter)
        if skip_invalid:
            parse = pa_csv.ParseOptions(delimiter=self._delimiter, invalid_row_handler=_skip_row)
        return pa_csv.open_csv(
            stream,
            read_options=pa_csv.ReadOptions(block_size=self._block_bytes),
            parse_options=parse,
            convert_options=convert,
        )

    def _parse_hint(self) -> str:
        return "check the delimiter and the header row, or pass schema= with the column types"


def _skip_row(row: Any) -> str:
    """``pyarrow.csv``'s answer to a row of the wrong field count, while inferring types: pass over it."""
    return "skip"


class _CsvReader(_LineRecordReader):
    """Reads a CSV file a batch of lines at a time with :func:`decode_lines`, after its header line."""

    def __init__(self, source: CsvSource, file: _File, start: int) -> None:
        super().__init__(source, file, start, source.errors)
        self._csv = source
        self._names: list[str] = []

    def _open(self, max_rows: int) -> tuple[Iterator[pa.RecordBatch], int]:
        return self._after_header(_line_batches(self._stream(), self._csv._block_bytes)), 0

    def _after_header(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The lines after the header, which is the first line that is not blank (as for ``pyarrow.csv``)."""
        for batch in batches:
            lines = batch.column(0)
            filled = np.flatnonzero(~_blank(lines))
            if not len(filled):
                self._header_lines += batch.num_rows
                continue
            first = int(filled[0])
            self._header_lines += first + 1
            self._names = header_names(lines[first].as_py(), self._csv._delimiter)
            yield batch.slice(first + 1)
            break
        yield from batches

    def _decode(self, lines: pa.ChunkedArray) -> Decoded:
        # Every file is parsed with the source's column types, so that all files give the same types.
        return decode_lines(lines, self._names, self._rows.file_schema, self._csv._delimiter)

    def _what(self) -> str:
        return "a row of the columns " + ", ".join(self._rows.file_schema.names)


class JsonSource(_StreamSource):
    """Reads newline-delimited JSON files (one object per line); a split is a file.

    Without ``schema``, each file's fields and types are inferred from its
    first block (1 MiB) at plan time, the first lines' types winning where
    lines disagree, and unified across files. With ``schema``, only its
    fields are read, with its types (other fields are ignored, a missing
    field is null). See the module docstring for partitions, pruning by time
    and watching.

    Each line is one row or one dead letter; blank lines are skipped. A line
    that is not one JSON object (not JSON, two values, an array), is not
    valid UTF-8, or does not fit the schema (a string in an ``int64`` field;
    without ``schema``, also a field or a type that the first block did not
    have) is a dead letter: ``stream.dead_letters()`` gets the raw line as
    ``raw``, the file as ``split_id``, its line number from 1 as
    ``position``, and the error, and the read goes on. That is the default, like Spark's
    ``PERMISSIVE`` mode and :func:`raystream.read_kafka`, except that the
    line is not half-read into a row of nulls. ``errors="fail"`` fails the
    read at the first such line instead, naming the file and the line (Spark's
    ``FAILFAST``). A split's position is the number of lines consumed.

    Args:
        path: An fsspec URL (file, directory or glob) or a list of them.
        schema: The fields to read and their types, instead of inference.
        time_column: The event-time column, for ``start``/``end`` and event-time order.
        start: Read only rows with ``time_column >= start``.
        end: Read only rows with ``time_column < end``.
        partition_time: The partition columns that give a file's time range (see :class:`ParquetSource`).
        partitioning: ``"hive"`` reads ``key=value`` folders as columns; ``None`` does not.
        watch: Pick up files as they land (an unbounded source).
        poll_interval: How often to list the paths when watching.
        storage_options: Passed to the fsspec filesystem; never put in messages.
        errors: ``"dead_letter"`` or ``"fail"``, for lines that do not decode (see above).

    Raises:
        FileNotFoundError: A path does not exist or holds no data file.
        PlanError: Without ``schema``, a file's first block holds no JSON
            object to infer its fields from, or the files' schemas conflict;
            an argument is invalid.
    """

    name = "read_json"

    def __init__(
        self,
        path: str | list[str],
        *,
        schema: pa.Schema | None = None,
        time_column: str | None = None,
        start: TimeBound = None,
        end: TimeBound = None,
        partition_time: PartitionTime = "auto",
        partitioning: str | None = "hive",
        watch: bool = False,
        poll_interval: Duration = "10s",
        storage_options: dict[str, Any] | None = None,
        errors: Errors = "dead_letter",
    ) -> None:
        if errors not in ("dead_letter", "fail"):
            raise PlanError(f"{self.name}: errors must be 'dead_letter' or 'fail', got {errors!r}")
        self.errors = errors
        self.has_dead_letters = errors == "dead_letter"
        super().__init__(
            path,
            schema=schema,
            storage_options=storage_options,
            time_column=time_column,
            start=start,
            end=end,
            partition_time=partition_time,
            partitioning=partitioning,
            watch=watch,
            poll_interval=poll_interval,
        )

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        """Open a file; ``position`` is the number of its lines already consumed."""
        return _JsonReader(self, split.payload, int(position or 0))

    def _sniff(self, stream: pa.NativeFile, schema: pa.Schema | None, file: _File) -> pa.Schema | None:
        before = 0  # lines of the blocks before, all blank
        for lines in _line_batches(stream, self._block_bytes):  # the first block with a line that is not blank
            values = lines.column(0)
            blank = pc.match_substring_regex(values, r"^[ \t\r\n]*$").to_numpy(zero_copy_only=False)
            if not blank.all():
                break
            before += len(values)
        else:
            return None  # no record, no rows: the file gets no split
        if schema is not None:
            return schema
        # Null fields stay, typed null: another file may give them a type (see _unify).
        inferred = infer_schema(values, drop_null=False)
        if inferred is None:
            first = int(np.flatnonzero(~blank)[0])
            raise self._plan_error(
                file,
                f"cannot parse '{file.shown}': none of its first {before + len(values)} lines is a JSON object with "
                f"a field (line {before + first + 1}: {explain(values[first].as_py())}); {self._parse_hint()}",
            )
        return inferred

    def _parse_hint(self) -> str:
        return "check that it holds one JSON object per line, or pass schema= with the field types"


class _JsonReader(_LineRecordReader):
    """Reads a JSON lines file with the shared record decoder."""

    def __init__(self, source: JsonSource, file: _File, start: int) -> None:
        super().__init__(source, file, start, source.errors)
        self._json = source
        # An inferred schema is the first block's: a field it lacks is an error, not silently dropped.
        self._unexpected: Unexpected = "ignore" if source._explicit is not None else "error"

    def _open(self, max_rows: int) -> tuple[Iterator[pa.RecordBatch], int]:
        return _line_batches(self._stream(), self._json._block_bytes), 0

    def _decode(self, lines: pa.ChunkedArray) -> Decoded:
        return decode_records(lines, self._rows.file_schema, unexpected=self._unexpected, skip_blank=True)

    def _what(self) -> str:
        return "a JSON object matching the schema"


def _blank(lines: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which lines are empty or only ``\\r`` (the lines ``pyarrow.csv`` skips)."""
    return pc.fill_null(pc.match_substring_regex(lines, r"^\r?$"), False).to_numpy(zero_copy_only=False)


def _line_batches(stream: pa.NativeFile, block_bytes: int) -> Iterator[pa.RecordBatch]:
    """The lines of ``stream``, without their ``\\n``, as batches of one binary column, a block at a time.

    A last line without a newline is a line too; a line longer than a block
    is gathered over as many blocks as it takes.
    """
    carry: list[bytes] = []
    while True:
        block = stream.read(block_bytes)
        if not block:
            if carry:
                yield pa.record_batch([pa.array([b"".join(carry)], pa.binary())], names=["line"])
            return
        last = block.rfind(b"\n")
        if last < 0:
            carry.append(block)
            continue
        data = b"".join([*carry, block[:last]]) if carry else block[:last]
        carry = [block[last + 1 :]] if last + 1 < len(block) else []
        lines = pc.list_flatten(pc.split_pattern(pa.array([data], pa.binary()), b"\n"))
        yield pa.record_batch([lines], names=["line"])


def _first_invalid_utf8_line(fs: fsspec.AbstractFileSystem, file: _File, block_bytes: int) -> int | None:
    """The number (from 1) of the first line of ``file`` that is not valid UTF-8, or ``None``.

    Only called to explain a failure, so it reads the file again from its start.
    """
    seen = 0
    with _open_file(fs, file.path) as raw:
        for batch in _line_batches(_decompressed(raw, file.path), block_bytes):
            valid = utf8_valid(batch.column(0))
            if valid is not None:
                return seen + int(np.flatnonzero(~valid)[0]) + 1
            seen += batch.num_rows
    return None


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
    """Reads text files as lines: a column ``line`` (string), one row per line, then any partition columns.

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
        partitioning: ``"hive"`` reads ``key=value`` folders as columns; ``None`` does not.
        watch: Pick up files as they land (an unbounded source).
        poll_interval: How often to list the paths when watching.

    Raises:
        FileNotFoundError: A path does not exist or holds no data file.
        PlanError: The encoding is unknown or unsupported.
    """

    name = "read_text"
    _needs_schema = False
    #: Bytes read at a time.
    _block_bytes = _TEXT_BLOCK_BYTES

    def __init__(
        self,
        path: str | list[str],
        *,
        storage_options: dict[str, Any] | None = None,
        encoding: str = "utf-8",
        partitioning: str | None = "hive",
        watch: bool = False,
        poll_interval: Duration = "10s",
    ) -> None:
        self._encoding = _check_encoding(self.name, encoding)
        super().__init__(
            path,
            storage_options=storage_options,
            partitioning=partitioning,
            watch=watch,
            poll_interval=poll_interval,
        )
        self._schema = self._with_partitions(pa.schema([pa.field("line", pa.string())]))
        self._check_schema()

    def splits(self, parallelism: int) -> list[Split]:
        """Return one split per non-empty file; a watching source lists its paths again first."""
        if self._watch:
            for file in self._relist():
                self._path_values(file)
        return [Split(file.label, file, None) for file in self._files if file.size != 0]

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        """Open a file; ``position`` is the byte offset of the first line not yet returned."""
        return _TextReader(self, split.payload, int(position or 0))


class _TextReader(SplitReader):
    """Splits byte blocks into lines with Arrow kernels; the position is a byte offset."""

    def __init__(self, source: TextSource, file: _File, offset: int) -> None:
        self._rows = _Rows(source, file)
        self._name = source.name
        self._file = file
        self._encoding = source._encoding
        self._block_bytes = source._block_bytes
        self._offset = offset  # Byte offset just after the last line returned.
        self._stream: pa.NativeFile | None = None
        self._raw: pa.NativeFile | None = None  # The file as opened; ``_stream`` decompresses it, if need be.
        self._raw_bytes = 0
        self._lines_returned = 0
        self._read_offset = offset  # Byte offset of the start of ``_carry``.
        self._carry = b""  # The partial last line of the blocks read so far.
        self._eof = False
        self._lines: list[pa.Array] = []
        self._ends: list[np.ndarray] = []  # Byte offset just after each buffered line.
        self._buffered = 0

    def next_batch(self, max_rows: int) -> pa.Table | None:
        """Return the next 1 to ``max_rows`` lines, or ``None`` at the end of the file."""
        _check_max_rows(max_rows)
        try:
            if self._stream is None and not self._eof:
                self._stream = self._open()
            while self._buffered < max_rows and not self._eof:
                self._read_block()
        except (pa.ArrowException, OSError) as exc:
            raise self._rows.error(exc, f"from byte {self._read_offset}", "check that the file is readable")  # noqa: B904
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
        self._lines_returned += count
        return self._rows.complete(pa.table({"line": lines.slice(0, count)}))

    def position(self) -> int:
        """Return the byte offset of the first line not yet returned."""
        return self._offset

    def metrics(self) -> dict[str, Any]:
        """The file, lines returned and bytes read (compressed bytes for a compressed file)."""
        return {
            "file": self._file.shown,
            "rows_read": self._lines_returned,
            "bytes_read": self._bytes_read(),
            "bytes_total": self._file.size,
        }

    def close(self) -> None:
        """Close the file, if it was opened."""
        self._bytes_read()
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def _bytes_read(self) -> int:
        if self._raw is not None and not self._raw.closed:
            self._raw_bytes = self._raw.tell()
        return self._raw_bytes

    def _open(self) -> pa.NativeFile:
        self._raw = _open_file(self._rows.fs, self._file.path)
        stream = _decompressed(self._raw, self._file.path)
        if stream is self._raw:
            stream.seek(self._offset)
            return stream
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
