"""CSV and newline-delimited JSON: files read a line at a time, each line one row or one dead letter."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, Literal, TypeAlias

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from raystream._fs import redact
from raystream._time import Duration
from raystream.errors import PlanError, RaystreamError

# The opener and the filter chunk are looked up on the package at each call, never imported by name:
# a test replaces them there (monkeypatch.setattr(files, "_open_file", ...)) to see every open.
from raystream.sources import files as package
from raystream.sources._csv import decode_lines, header_names
from raystream.sources._json import Decoded, Unexpected, decode_records, explain, infer_schema, utf8_valid
from raystream.sources.base import Split, SplitReader, dead_letter_table
from raystream.sources.files._listing import PartitionTime, _File, _plan_map
from raystream.sources.files._rows import _FILTER_SCAN_ROWS, _decompressed, _RowBuffer, _RowReader
from raystream.sources.files._source import TimeBound, _FileSource, _unify

#: Bytes of a CSV or JSON file parsed to infer its schema, and the block size
#: of the streaming readers.
_INFER_BLOCK_BYTES = 1 << 20
#: pyarrow's CSV reader says this of a string column holding bytes that are not UTF-8.
_INVALID_UTF8 = "invalid UTF8"
_UTF8_HINT = "fix the file's encoding, or pass schema= with that column as pa.binary() to read its raw bytes"
#: ``errors=``: what a JSON line that does not decode does.
Errors: TypeAlias = 'Literal["dead_letter", "fail"]'


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
            with package._open_file(fs, file.path) as raw:
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
        self._raw = package._open_file(self._rows.fs, self._file.path)
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
            chunk = buffer.take(self._chunk_rows(max_rows))
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
    with package._open_file(fs, file.path) as raw:
        for batch in _line_batches(_decompressed(raw, file.path), block_bytes):
            valid = utf8_valid(batch.column(0))
            if valid is not None:
                return seen + int(np.flatnonzero(~valid)[0]) + 1
            seen += batch.num_rows
    return None
