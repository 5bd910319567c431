"""Files read a line at a time into rows, each line one row or one dead letter: what CSV and JSON lines share."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, Literal, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream._fs import redact
from raystream._time import Duration
from raystream.errors import PlanError, RaystreamError
from raystream.sources._json import Decoded
from raystream.sources.base import Split, dead_letter_table

# _opening.open_file is looked up at each call, never imported by name: a test that wraps the package's
# _open_file wraps it too (see _Package in the package), and sees every open.
from raystream.sources.files import _opening
from raystream.sources.files._listing import PartitionTime, _File, _plan_map
from raystream.sources.files._rows import _FILTER_SCAN_ROWS, _decompressed, _RowBuffer, _RowReader
from raystream.sources.files._source import TimeBound, _FileSource, _unify

#: Bytes of a CSV or JSON file parsed to infer its schema, and the block size
#: of the streaming readers.
_INFER_BLOCK_BYTES = 1 << 20
#: ``errors=``: what a line that does not decode does.
Errors: TypeAlias = 'Literal["dead_letter", "fail"]'


def checked_errors(name: str, errors: Any) -> Errors:
    """``errors=`` of a CSV or JSON source, checked: ``"dead_letter"`` or ``"fail"``.

    Raises:
        PlanError: naming the source and the two values it takes.
    """
    if errors not in ("dead_letter", "fail"):
        raise PlanError(f"{name}: errors must be 'dead_letter' or 'fail', got {errors!r}")
    return errors  # type: ignore[no-any-return]


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
            with _opening.open_file(fs, file.path) as raw:
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
        self._raw = _opening.open_file(self._rows.fs, self._file.path)
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
