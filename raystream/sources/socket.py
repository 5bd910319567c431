"""A source of text lines read from a TCP server, like Flink's ``socketTextStream``."""

from __future__ import annotations

import codecs
import selectors
import socket
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import PlanError, RaystreamError
from raystream.sources.base import Source, Split, SplitReader

__all__ = ["SocketSource"]

_SCHEMA = pa.schema([pa.field("line", pa.string())])
#: How long ``next_batch`` waits for data when it has no line to return.
_WAIT_SECONDS = 0.1
#: How long connecting may take before it fails.
_CONNECT_TIMEOUT_SECONDS = 5.0
#: Bytes read by one ``recv``, and at most by one ``next_batch`` (a fast
#: sender must not keep a reader from returning).
_RECV_BYTES = 1 << 16
_MAX_BYTES_PER_CALL = 16 << 20


class SocketSource(Source):
    """Reads newline-terminated text lines from a TCP server: one column ``line``.

    The reader connects as a client to ``host:port`` and yields one row per
    line, without the ``\\n`` (and without a ``\\r`` before it). Bytes that are
    not valid in ``encoding`` become U+FFFD. When the server closes the
    connection, the last line (even without a newline) is returned and the
    split ends, so the job ends.

    **This source is not replayable.** The server keeps nothing: lines sent
    while the job is down or restarting are lost, and a job restored from a
    checkpoint does not see again the lines read since that checkpoint. Use it
    for demos and tests (``nc -lk 9999``); use Kafka for input that must
    survive a restart.

    Args:
        host: The server's host name or IP address.
        port: The server's TCP port, from 1 to 65535.
        encoding: The Python codec of the text, in which a newline is ``\\n``.

    Raises:
        PlanError: ``host``, ``port`` or ``encoding`` is invalid. Nothing is
            checked over the network here: the server may start later.

    Example:
        >>> source = SocketSource("localhost", 9999)
        >>> source.splits(1)[0].split_id
        'localhost:9999'
    """

    name = "read_socket"
    bounded = False
    replayable = False

    def __init__(self, host: str, port: int, *, encoding: str = "utf-8") -> None:
        if not isinstance(host, str) or not host:
            raise PlanError(f"{self.name}: host must be a non-empty string, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise PlanError(f"{self.name}: port must be an integer from 1 to 65535, got {port!r}")
        try:
            codecs.getincrementaldecoder(encoding)
        except (LookupError, TypeError) as exc:
            raise PlanError(
                f"{self.name}: unknown encoding {encoding!r}; use a Python codec name such as 'utf-8'"
            ) from exc
        self._host = host
        self._port = port
        self._encoding = encoding

    def schema(self) -> pa.Schema:
        """Return ``line: string``."""
        return _SCHEMA

    def splits(self, parallelism: int) -> list[Split]:
        """Return the single split ``"host:port"``: one connection, read by one reader."""
        return [Split(f"{self._host}:{self._port}", (self._host, self._port), None)]

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        """Return a reader that connects on its first batch.

        ``position`` only sets the line count that :meth:`SplitReader.position`
        continues from: the lines before it cannot be read again.
        """
        host, port = split.payload
        return _SocketReader(self.name, host, port, self._encoding, int(position or 0))

    def __repr__(self) -> str:
        return f"SocketSource({self._host!r}, {self._port})"


class _SocketReader(SplitReader):
    """Reads lines from one TCP connection; the position is the number of lines returned."""

    def __init__(self, name: str, host: str, port: int, encoding: str, lines_returned: int) -> None:
        self._name = name
        self._host = host
        self._port = port
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._returned = lines_returned
        self._socket: socket.socket | None = None
        # A selector (epoll on Linux), not select(): it also works for descriptors above 1023.
        self._selector: selectors.BaseSelector | None = None
        self._partial = ""  # Text after the last newline received.
        self._eof = False
        self._lines: pa.Array = pa.array([], pa.string())

    def next_batch(self, max_rows: int) -> pa.Table | None:
        """Return up to ``max_rows`` complete lines received so far.

        Waits up to ~100 ms for data when no line is buffered.

        Returns:
            The lines; an empty table when none arrived in time; ``None``
            once the server closed the connection and every line was returned.

        Raises:
            ConnectionError: The server cannot be reached, or reset the connection.
        """
        if max_rows < 1:
            raise ValueError(f"next_batch: max_rows must be at least 1, got {max_rows}")
        if self._socket is None and not self._eof:
            self._socket = self._connect()
        if len(self._lines) < max_rows and not self._eof:
            self._receive(0.0 if len(self._lines) else _WAIT_SECONDS)
        if len(self._lines) == 0:
            return None if self._eof else _SCHEMA.empty_table()
        count = min(max_rows, len(self._lines))
        batch, self._lines = self._lines.slice(0, count), self._lines.slice(count)
        self._returned += count
        return pa.table([batch], schema=_SCHEMA)

    def position(self) -> int:
        """Return the number of lines returned so far; informational, it cannot be replayed."""
        return self._returned

    def close(self) -> None:
        """Close the connection."""
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self._host, self._port), timeout=_CONNECT_TIMEOUT_SECONDS)
        except OSError as exc:
            raise ConnectionError(
                f"{self._name}: cannot connect to {self._host}:{self._port} ({exc}); start a server there first, "
                f"for example `nc -lk {self._port}`, or check host and port"
            ) from exc
        sock.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        return sock

    def _receive(self, wait_seconds: float) -> None:
        """Wait up to ``wait_seconds`` for data, then buffer the lines of every byte available."""
        assert self._socket is not None and self._selector is not None
        if not self._selector.select(wait_seconds):
            return
        chunks: list[bytes] = []
        received = 0
        while received < _MAX_BYTES_PER_CALL:
            try:
                chunk = self._socket.recv(_RECV_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:
                raise ConnectionError(
                    f"{self._name}: the connection to {self._host}:{self._port} failed ({exc}); lines the server "
                    f"sent after the last batch are lost, since this source is not replayable"
                ) from exc
            if not chunk:
                self._eof = True
                break
            chunks.append(chunk)
            received += len(chunk)
        self._buffer(b"".join(chunks))

    def _buffer(self, data: bytes) -> None:
        """Split the decoded text into lines; keep the partial tail until its newline (or the end)."""
        try:
            text = self._partial + self._decoder.decode(data, final=self._eof)
        except UnicodeDecodeError as exc:  # Only if a codec ignores errors="replace".
            raise RaystreamError(f"{self._name}: cannot decode text from {self._host}:{self._port}: {exc}") from exc
        parts = text.split("\n")
        self._partial = parts.pop()
        if self._eof and self._partial:
            parts.append(self._partial)
            self._partial = ""
        if not parts:
            return
        lines = pa.array(parts, pa.string())
        if pc.any(pc.ends_with(lines, "\r")).as_py():
            lines = pc.replace_substring_regex(lines, pattern="\r$", replacement="")
        self._lines = pa.concat_arrays([self._lines, lines]) if len(self._lines) else lines
