"""Parquet: footers at plan time, splits of row groups pruned by their statistics, the row-group reader."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raystream._fs import redact
from raystream._time import Duration
from raystream.errors import PlanError
from raystream.sources.base import Split, SplitReader

# _opening.open_file is looked up at each call, never imported by name: a test that wraps the package's
# _open_file wraps it too (see _Package in the package), and sees every open.
from raystream.sources.files import _opening
from raystream.sources.files._listing import PartitionTime, _File, _plan_map
from raystream.sources.files._rows import _RowReader
from raystream.sources.files._source import _NS_PER_MS, TimeBound, _FileSource, _unify

#: Rows decoded at a time from a Parquet row group.
_PARQUET_BATCH_ROWS = 64 * 1024
_NS_PER_PARQUET_UNIT = {"milliseconds": 10**6, "microseconds": 10**3, "nanoseconds": 1}


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


# Not split_by_row_group(filter=): it keeps the same row groups, but reads 240 footers 2.5-3x slower (pyarrow 26).
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
    of its own). See the package docstring (:mod:`raystream.sources.files`) for partitions, pruning by time and
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
            with _opening.open_file(fs, file.path) as handle:
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
        handle = _opening.open_file(self._rows.fs, self._file.path)
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
