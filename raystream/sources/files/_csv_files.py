"""CSV files with a header row, parsed a batch of lines at a time by ``pyarrow.csv``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from raystream._time import Duration
from raystream.errors import PlanError
from raystream.sources._csv import decode_lines, header_names
from raystream.sources._json import Decoded, utf8_valid
from raystream.sources.base import Split, SplitReader

# _opening.open_file is looked up at each call, never imported by name: a test that wraps the package's
# _open_file wraps it too (see _Package in the package), and sees every open.
from raystream.sources.files import _opening
from raystream.sources.files._line_records import (
    Errors,
    _line_batches,
    _LineRecordReader,
    _StreamSource,
    checked_errors,
)
from raystream.sources.files._listing import PartitionTime, _File
from raystream.sources.files._rows import _decompressed
from raystream.sources.files._source import TimeBound

#: pyarrow's CSV reader says this of a string column holding bytes that are not UTF-8.
_INVALID_UTF8 = "invalid UTF8"
_UTF8_HINT = "fix the file's encoding, or pass schema= with that column as pa.binary() to read its raw bytes"


class CsvSource(_StreamSource):
    """Reads CSV files with a header row; a split is a file.

    Without ``schema``, each file's column types are inferred from its first
    block (1 MiB) at plan time and unified across files. With ``schema``, only
    its columns are read, with its types; every file's header must have them
    (but for those a file's partition folders give). See the package docstring (:mod:`raystream.sources.files`)
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
        self._delimiter = delimiter
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


def _blank(lines: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which lines are empty or only ``\\r`` (the lines ``pyarrow.csv`` skips)."""
    return pc.fill_null(pc.match_substring_regex(lines, r"^\r?$"), False).to_numpy(zero_copy_only=False)


def _first_invalid_utf8_line(fs: fsspec.AbstractFileSystem, file: _File, block_bytes: int) -> int | None:
    """The number (from 1) of the first line of ``file`` that is not valid UTF-8, or ``None``.

    Only called to explain a failure, so it reads the file again from its start.
    """
    seen = 0
    with _opening.open_file(fs, file.path) as raw:
        for batch in _line_batches(_decompressed(raw, file.path), block_bytes):
            valid = utf8_valid(batch.column(0))
            if valid is not None:
                return seen + int(np.flatnonzero(~valid)[0]) + 1
            seen += batch.num_rows
    return None
