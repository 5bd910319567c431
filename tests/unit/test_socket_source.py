"""SocketSource reads the exact lines a real TCP server sends, and fails clearly without one."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pyarrow as pa
import pytest

from raystream.errors import PlanError
from raystream.sources.socket import SocketSource

SCHEMA = pa.schema([("line", pa.string())])


class _Server:
    """A one-connection TCP server on 127.0.0.1 that sends ``chunks`` with pauses, then closes."""

    def __init__(self, chunks: list[bytes], pause_seconds: float = 0.05) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._chunks = chunks
        self._pause = pause_seconds
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn:
            for chunk in self._chunks:
                conn.sendall(chunk)
                time.sleep(self._pause)
        self._listener.close()

    def join(self) -> None:
        self._thread.join(timeout=5)


def _read_until_end(source: SocketSource, max_rows: int, timeout_seconds: float = 10.0) -> Iterator[pa.Table]:
    (split,) = source.splits(3)
    reader = source.open_split(split, None)
    deadline = time.monotonic() + timeout_seconds
    try:
        while time.monotonic() < deadline:
            batch = reader.next_batch(max_rows)
            if batch is None:
                return
            assert batch.schema == SCHEMA and batch.num_rows <= max_rows
            yield batch
        raise AssertionError("the reader did not end after the server closed the connection")
    finally:
        reader.close()


@pytest.mark.parametrize("max_rows", [1, 2, 1000])
def test_reads_exact_lines_across_chunks(max_rows: int) -> None:
    chunks = [b"alpha\nbe", b"ta\n", b"\n", b"gamma\r\ndel", "ta é\nlast without newline".encode()]
    server = _Server(chunks, pause_seconds=0.15)  # Longer than the reader waits (~100 ms).
    source = SocketSource("127.0.0.1", server.port)
    batches = list(_read_until_end(source, max_rows))
    server.join()
    lines = [line for b in batches for line in b.column("line").to_pylist()]
    assert lines == ["alpha", "beta", "", "gamma", "delta é", "last without newline"]
    # While the server pauses between chunks, the reader says "nothing yet" with an empty table.
    assert any(b.num_rows == 0 for b in batches)


def test_a_multibyte_character_split_across_sends() -> None:
    data = "naïve\n".encode()
    server = _Server([data[:3], data[3:]])
    source = SocketSource("127.0.0.1", server.port)
    lines = [line for b in _read_until_end(source, 10) for line in b.column("line").to_pylist()]
    server.join()
    assert lines == ["naïve"]


def test_position_counts_lines_returned() -> None:
    server = _Server([b"a\nb\nc\n"], pause_seconds=0)
    source = SocketSource("127.0.0.1", server.port)
    reader = source.open_split(source.splits(1)[0], 5)
    rows = 0
    while (batch := reader.next_batch(2)) is not None:
        rows += batch.num_rows
        assert reader.position() == 5 + rows
    reader.close()
    server.join()
    assert rows == 3


def test_contract_flags_and_split() -> None:
    source = SocketSource("localhost", 9999)
    assert (source.name, source.bounded, source.replayable) == ("read_socket", False, False)
    assert source.schema() == SCHEMA
    assert [s.split_id for s in source.splits(8)] == ["localhost:9999"]
    assert "not replayable" in (SocketSource.__doc__ or "")


def test_nothing_listening_is_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # Free once closed: nothing listens there.
    source = SocketSource("127.0.0.1", port)  # The constructor does not connect.
    reader = source.open_split(source.splits(1)[0], None)
    with pytest.raises(ConnectionError, match=rf"read_socket: cannot connect to 127\.0\.0\.1:{port}.*nc -lk {port}"):
        reader.next_batch(10)


@pytest.mark.parametrize("port", [0, 65536, -1, "9999", True])
def test_port_is_validated(port: object) -> None:
    with pytest.raises(PlanError, match="read_socket: port must be an integer from 1 to 65535"):
        SocketSource("localhost", port)  # type: ignore[arg-type]
