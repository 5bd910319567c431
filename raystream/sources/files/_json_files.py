"""Newline-delimited JSON files: one object per line, decoded with the shared record decoder."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream._time import Duration
from raystream.sources._json import Decoded, Unexpected, decode_records, explain, infer_schema
from raystream.sources.base import Split, SplitReader
from raystream.sources.files._line_records import (
    Errors,
    _line_batches,
    _LineRecordReader,
    _StreamSource,
    checked_errors,
)
from raystream.sources.files._listing import PartitionTime, _File
from raystream.sources.files._source import TimeBound


class JsonSource(_StreamSource):
    """Reads newline-delimited JSON files (one object per line); a split is a file.

    Without ``schema``, each file's fields and types are inferred from its
    first block (1 MiB) at plan time, the first lines' types winning where
    lines disagree, and unified across files. With ``schema``, only its
    fields are read, with its types (other fields are ignored, a missing
    field is null). See the package docstring (:mod:`raystream.sources.files`) for partitions, pruning by time
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
        self.errors = checked_errors(self.name, errors)
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
