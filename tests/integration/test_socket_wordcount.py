"""Acceptance: the WordCount job over read_socket, against a real TCP server started by the test."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from raystream.cli import prepare_job

pytestmark = pytest.mark.usefixtures("ray_local")

ROOT = Path(__file__).resolve().parents[2]
LINES = [f"the quick brown fox {i % 5} jumps over the lazy dog" for i in range(2000)]


class LineServer:
    """Accepts one client, sends the lines in uneven chunks, then closes the connection."""

    def __init__(self, lines: list[str]) -> None:
        self.payload = ("\n".join(lines) + "\n").encode()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            for start in range(0, len(self.payload), 7919):  # chunks cut lines in the middle
                connection.sendall(self.payload[start : start + 7919])
                time.sleep(0.002)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def line_server() -> Iterator[LineServer]:
    server = LineServer(LINES)
    yield server
    server.close()


def test_socket_wordcount_equals_counter(line_server: LineServer, tmp_path: Path) -> None:
    config = tmp_path / "socket.yaml"
    config.write_text(
        f"job:\n  source:\n    kind: socket\n    host: 127.0.0.1\n    port: {line_server.port}\n"
        "run:\n  parallelism: 2\n  max_batch_rows: 500\n"
    )
    stream, run_config, _ = prepare_job(ROOT / "jobs" / "wordcount.py", config)
    job = stream.start(run_config)
    # The server closes the connection after the last line, which ends the socket split and the job.
    try:
        job.wait(timeout=120)
    finally:
        job.stop()
    assert job.status() == "finished"
    counts = job.results()
    expected = Counter(word for line in LINES for word in line.split())
    assert dict(zip(counts["word"], counts["count"], strict=True)) == dict(expected)
    assert job.metrics()["rows_read"] == len(LINES)
