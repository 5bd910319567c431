"""The common file source: arguments, listing, partition columns, time pruning, schema unification."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, TypeAlias

import fsspec
import pandas as pd
import pyarrow as pa

from raystream._fs import redact, url_to_fs
from raystream._time import Duration, duration_ms, is_event_time_type, time_ns
from raystream.errors import PlanError
from raystream.sources.base import Source
from raystream.sources.files._listing import (
    _AUTO_DAY_COLUMNS,
    _AUTO_HOUR_COLUMN,
    PartitionTime,
    _check_partition_time,
    _check_paths,
    _File,
    _infer_partition_fields,
    _list,
    _partition_keys,
    _partition_range_ns,
)

_NS_PER_MS = 1_000_000
#: ``start=`` and ``end=``: a datetime, a date or an ISO string (naive means UTC).
TimeBound: TypeAlias = "datetime | date | str | pd.Timestamp | None"


def _unify(name: str, schemas: Sequence[tuple[_File, pa.Schema]], fix: str) -> pa.Schema:
    """Unify the files' schemas under the policy of step 4 in the package docstring.

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
