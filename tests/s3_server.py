"""Pytest plugin: a real S3 API (moto's server, in memory) on 127.0.0.1 for the tests.

Loaded for every test run by ``pyproject.toml`` (``addopts = "-p kafka_broker -p s3_server"``,
``pythonpath = ["tests"]``).

Fixtures:

* ``s3_server`` (session): starts ``moto_server`` (from the ``moto[server]`` dev dependency) on a free
  loopback port, waits until it answers S3 requests, yields an :class:`S3Server`, and kills the server's
  process group at session end. While it runs, the ``AWS_*`` environment of the machine is replaced by
  test credentials and empty config files, so that nothing of the machine's AWS setup leaks in (and no
  request can reach real AWS: every client is given the server's ``endpoint_url``).
* ``s3`` (session): the same server, under a shorter name.
* ``s3_bucket`` (function): a fresh, empty bucket named after the test; its name, without ``s3://``.
  ``S3Server.new_bucket()`` makes one anywhere (a module-scoped fixture, say).

Use ``s3_server.storage_options`` as the ``storage_options=`` of raystream's readers and writers (s3fs).

If moto's server is missing or does not come up, the tests using these fixtures are skipped, or fail
when ``RAYSTREAM_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka_broker import free_loopback_port

START_TIMEOUT_S = 20.0
LOG_TAIL_CHARS = 4000
KEY = "testing"
SECRET = "testing"
REGION = "us-east-1"


def _missing_service(reason: str) -> None:
    """Same contract as ``conftest.missing_service`` (not importable from a plugin): skip, or fail in CI."""
    if os.environ.get("RAYSTREAM_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (RAYSTREAM_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def _tail(path: Path, limit: int = LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return text[-limit:] if text else "<empty>"


def _test_environment(home: Path) -> dict[str, str]:
    """``AWS_*`` variables for the tests: fixed credentials, a region, and config files that hold nothing."""
    empty = home / "aws-empty"
    empty.write_text("")
    return {
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


class S3Server:
    """A running moto S3 server, with the options s3fs needs to reach it."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.endpoint_url = f"http://127.0.0.1:{port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """``storage_options`` for s3fs (a fresh dict each time: callers may change it)."""
        return {
            "key": KEY,
            "secret": SECRET,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
        }

    def filesystem(self) -> Any:
        """An s3fs filesystem on this server, to write test data with."""
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options)

    def new_bucket(self, prefix: str = "rs") -> str:
        """Create a new, uniquely named bucket; return its name (no ``s3://``)."""
        import boto3

        name = f"{prefix[:40].lower().strip('-')}-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        )
        client.create_bucket(Bucket=name)  # us-east-1: no LocationConstraint (s3fs's mkdir would send one).
        return name

    def log_tail(self) -> str:
        return _tail(self.log_path)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Kill the server's process group (its own session): SIGTERM, then SIGKILL after 5 s."""
        if self.proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


def _command(port: int) -> list[str]:
    binary = Path(sys.executable).parent / "moto_server"
    base = [str(binary)] if binary.exists() else [sys.executable, "-m", "moto.server"]
    return [*base, "-H", "127.0.0.1", "-p", str(port)]


def _wait_ready(endpoint: str, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Poll ``GET /`` (S3 ListBuckets) until the server answers; None when ready, else a reason."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"moto_server exited with code {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{endpoint}/", timeout=1.0) as response:
                if response.status == 200 and b"ListAllMyBucketsResult" in response.read():
                    return None
                last = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    return f"no S3 answer from {endpoint} within {timeout:.0f}s ({last})"


def start_server(log_dir: Path, env: dict[str, str], attempts: int = 3) -> S3Server:
    """Start moto_server on a free loopback port; call ``_missing_service`` if that is impossible."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as exc:
        _missing_service(f"moto[server], boto3 or s3fs is not installed: {exc}")
    failures: list[str] = []
    for attempt in range(attempts):  # a new port each time: another process may grab ours in between
        port = free_loopback_port()
        cmd = _command(port)
        log_path = log_dir / f"moto-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=log_dir,
                env=env,
                start_new_session=True,
            )
        server = S3Server(port, proc, log_path)
        reason = _wait_ready(server.endpoint_url, proc, START_TIMEOUT_S)
        if reason is None:
            return server
        server.stop()
        failures.append(f"attempt {attempt + 1}: {' '.join(cmd)}: {reason}\n--- log tail ---\n{_tail(log_path)}")
        if "in use" not in _tail(log_path):
            break  # a real failure, not a race for the port: do not retry
    _missing_service("moto S3 server did not start:\n" + "\n".join(failures))
    raise AssertionError("unreachable")  # _missing_service always raises


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1, shared by the whole test session, with the machine's AWS setup hidden."""
    log_dir = Path(tempfile.mkdtemp(prefix="raystream-moto-"))
    test_env = _test_environment(log_dir)
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                patch.delenv(name)
        for name, value in test_env.items():
            patch.setenv(name, value)
        try:
            server = start_server(log_dir, dict(os.environ))
        except BaseException:  # skipped or failed: the message already holds the log tail
            shutil.rmtree(log_dir, ignore_errors=True)
            raise
        try:
            yield server
        finally:
            server.stop()
            shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3(s3_server: S3Server) -> S3Server:
    """The session's moto S3 server (the same as ``s3_server``)."""
    return s3_server


@pytest.fixture
def s3_bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh bucket named after the test (without ``s3://``)."""
    if not s3_server.alive():
        pytest.fail(f"the moto S3 server died (exit {s3_server.proc.returncode}):\n{s3_server.log_tail()}")
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:30].strip("-")
    return s3_server.new_bucket(f"rs-{stem}")
