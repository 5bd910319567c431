"""The row reader that Parquet, CSV and JSON share: a position that counts rows, batches regrouped, time filtering."""

from __future__ import annotations

import posixpath
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raystream._fs import redact
from raystream.errors import RaystreamError
from raystream.sources.base import SplitReader

# _FILTER_CHUNK_ROWS is looked up on the package at each call, never imported by name: a test replaces it
# there (monkeypatch.setattr(files, "_FILTER_CHUNK_ROWS", 4)) to filter in small chunks.
from raystream.sources.files import _opening
from raystream.sources.files._listing import _File
from raystream.sources.files._source import _NS_PER_MS, _FileSource

#: Rows one ``next_batch`` may skip as outside [start, end) before it returns an
#: empty batch, so that one epoch does not scan a whole large file.
_FILTER_SCAN_ROWS = 1 << 20
#: Not pa.Codec.detect(path): it knows these suffixes but '.br' (checked on pyarrow 26).
_COMPRESSION_BY_SUFFIX = {
    ".gz": "gzip",
    ".bz2": "bz2",
    ".zst": "zstd",
    ".lz4": "lz4",
    ".br": "brotli",
}
_NS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def _decompressed(raw: pa.NativeFile, path: str) -> pa.NativeFile:
    """``raw``, decompressed when the file name ends in a compression suffix (``.gz``, ``.zst``...)."""
    compression = _COMPRESSION_BY_SUFFIX.get(posixpath.splitext(path)[1].lower())
    return raw if compression is None else pa.CompressedInputStream(raw, compression)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Reorder and cast ``table`` to ``schema`` (a no-op when it already matches)."""
    if table.schema.names != schema.names:
        table = table.select(schema.names)
    if not table.schema.equals(schema, check_metadata=True):
        table = table.cast(schema)
    return table


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
            raw = buffer.take(self._chunk_rows(max_rows))
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

    def _chunk_rows(self, max_rows: int) -> int:
        """Rows to take from the file for a batch of ``max_rows``: more when rows outside [start, end) are dropped."""
        return max_rows if self._rows.bounds is None else max(max_rows, _opening.FILTER_CHUNK_ROWS)

    def position(self) -> int:
        """Return the number of rows of the split consumed so far (returned or filtered out)."""
        return self._consumed

    def metrics(self) -> dict[str, Any]:
        """The file, rows consumed, bytes read and the event time reached (see the package docstring)."""
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
