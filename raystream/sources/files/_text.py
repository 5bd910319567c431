"""Text files as lines; the position is a byte offset, so a resumed reader seeks."""

from __future__ import annotations

import codecs
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream._time import Duration
from raystream.errors import PlanError, RaystreamError
from raystream.sources.base import Split, SplitReader

# _opening.open_file is looked up at each call, never imported by name: a test that wraps the package's
# _open_file wraps it too (see _Package in the package), and sees every open.
from raystream.sources.files import _opening
from raystream.sources.files._listing import _File
from raystream.sources.files._rows import _check_max_rows, _decompressed, _Rows
from raystream.sources.files._source import _FileSource

#: Bytes read at a time by the text reader.
_TEXT_BLOCK_BYTES = 8 << 20


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
        self._raw = _opening.open_file(self._rows.fs, self._file.path)
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
