"""The ``Job`` handle of a running pipeline, and starting Ray when needed."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any

import pandas as pd
import ray

from raystream.errors import ConfigError
from raystream.plan.logical import Node
from raystream.run_config import RunConfig
from raystream.runtime.coordinator import Coordinator
from raystream.runtime.local_ray import start_local_ray
from raystream.runtime.planner import DEAD_LETTERS, OUTPUT, OutputRequest, plan
from raystream.sinks.base import Sink
from raystream.sinks.memory import MemorySink


def ensure_ray(config: RunConfig) -> None:
    """Connect to Ray: ``config.address``, else ``RAY_ADDRESS``, else start a local instance.

    Does nothing when Ray is already initialized in this process (a notebook
    or a test may have called ``ray.init`` itself). The local instance that
    raystream starts listens on 127.0.0.1 only (see
    :mod:`raystream.runtime.local_ray`), and keeps Ray's token authentication
    unless ``RAY_AUTH_MODE`` says otherwise.
    """
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        start_local_ray(include_dashboard=False, logging_level=logging.WARNING)
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ConfigError(
            f"cannot connect to the Ray cluster at {address!r}: {exc}; check RunConfig.address or RAY_ADDRESS"
        ) from exc


_RUNNING: weakref.WeakSet[Job] = weakref.WeakSet()


def stop_all(timeout: float | None = 60.0) -> None:
    """Stop every job of this process that is still running (before ``ray.shutdown()``, say)."""
    for job in list(_RUNNING):
        if job.status() == "running":
            job.stop(timeout)


class Job:
    """A running (or finished) pipeline. Returned by ``stream.start()`` and by ``wait=False`` terminals.

    The job runs in a background thread of the driver, so a notebook or a
    script stays free while it runs.
    """

    def __init__(self, coordinator: Coordinator, sinks: dict[str, Sink]) -> None:
        self._coordinator = coordinator
        self._sinks = sinks
        self._error: BaseException | None = None
        self._status = "running"
        self._thread = threading.Thread(target=self._run, name="raystream-coordinator", daemon=True)
        _RUNNING.add(self)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._coordinator.run()
            self._status = "stopped" if self._coordinator.stop_requested else "finished"
        except BaseException as error:  # noqa: BLE001 - handed to the caller of wait()
            self._error = error
            self._status = "failed"

    @property
    def outputs(self) -> list[str]:
        """The names of the job's outputs (``["output"]`` for a job with one)."""
        return list(self._sinks)

    def results(self, name: str | None = None) -> pd.DataFrame:
        """The output that has arrived so far, as a pandas DataFrame.

        For running aggregates this is the latest value of each key. Only
        outputs that collect (``start()``, ``to_pandas``, ``Outputs.collect``)
        have results here.

        Args:
            name: The output, needed only when the job has several.
        """
        if name is None:
            if len(self._sinks) > 1:
                raise TypeError(f"results(): name one of the job's outputs: {', '.join(self._sinks)}")
            name = next(iter(self._sinks))
        sink = self._sinks.get(name)
        if sink is None:
            raise TypeError(f"results(): the job has no output {name!r}; its outputs are: {', '.join(self._sinks)}")
        if not isinstance(sink, MemorySink):
            raise TypeError(
                f"results() is for outputs that collect (start(), Outputs.collect); {name!r} writes to "
                f"{sink.name}, so read its output there"
            )
        return sink.table().to_pandas()

    def late_events(self, name: str | None = None) -> pd.DataFrame:
        """The rows that windows and joins with ``late="side"`` found late so far.

        Args:
            name: The window's or join's name (``agg(name=...)``, ``join(name=...)``), needed only
                when the pipeline has several with ``late="side"``.
        """
        windows = [tag for tag in self._coordinator.side_sinks if tag != DEAD_LETTERS]
        if not windows:
            raise TypeError("late_events(): no window or join of this job has late='side'")
        if name is None:
            if len(windows) > 1:
                raise TypeError(f"late_events(): name one of them: {', '.join(windows)}")
            name = windows[0]
        return self._side_output(name, "late_events()")

    def dead_letters(self) -> pd.DataFrame:
        """The records that could not become rows so far: one row each, the same columns for every source.

        The columns (``raystream.sources.base.DEAD_LETTER_SCHEMA``):
        ``source``, the source stage that read it (``"source"``, or
        ``"source-2"``... with several sources); ``split_id``, its split
        (``"clicks/2"`` for a Kafka partition, the file's path for a file);
        ``position``, where it is in the split (the Kafka offset, a file's
        line number from 1; null for a row refused for having no event
        time); ``raw``, the record's bytes (the row as JSON for a refused
        row); and the ``error``.

        Raises:
            TypeError: when the job can have no dead letters: no source decodes records
                (``read_kafka(format="json")``, ``read_json``, ``read_csv``) and no event time is set.
        """
        if DEAD_LETTERS not in self._coordinator.side_sinks:
            raise TypeError(
                "dead_letters(): this job keeps no dead letters (columns source, split_id, position, raw, error): "
                "none of its sources decodes records (read_kafka(format='json'), read_json and read_csv do, unless "
                "errors='fail') and it has no event time whose nulls would be refused"
            )
        return self._side_output(DEAD_LETTERS, "dead_letters()")

    def _side_output(self, tag: str, what: str) -> pd.DataFrame:
        sink = self._coordinator.side_sinks.get(tag)
        if not isinstance(sink, MemorySink):
            known = ", ".join(self._coordinator.side_sinks) or "none"
            raise TypeError(f"{what}: this job keeps no {tag!r} here (side outputs kept: {known})")
        return sink.table().to_pandas()

    def status(self) -> str:
        """``"running"``, ``"finished"``, ``"stopped"`` or ``"failed"``."""
        return self._status

    def metrics(self) -> dict[str, Any]:
        """Counters: epochs, rows read and written, rows/s, watermark, per-split progress, state rows."""
        return self._coordinator.metrics_snapshot()

    def stop(self, timeout: float | None = 60.0) -> Job:
        """Ask the job to stop after the epochs in flight, and wait for it to end."""
        self._coordinator.request_stop()
        self._thread.join(timeout)
        return self

    def wait(self, timeout: float | None = None) -> Job:
        """Block until the job ends.

        Raises:
            TimeoutError: when ``timeout`` seconds pass first.
            Exception: the job's own error, when it failed (for a user
                function, a :class:`~raystream.errors.UserFunctionError` with
                its traceback).
        """
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the job is still running after {timeout}s")
        if self._error is not None:
            raise self._error
        return self

    def __repr__(self) -> str:
        return f"Job(status={self._status!r})"


def run_pipeline(node: Node, sink: Sink, config: RunConfig | None, wait: bool) -> Job:
    """Plan ``node``, start it into ``sink`` and return its Job (after it ends when ``wait``)."""
    return run_outputs([(OUTPUT, node, sink)], config, wait)


def run_outputs(outputs: list[tuple[str, Node, Sink]], config: RunConfig | None, wait: bool) -> Job:
    """Plan a job of several outputs (name, node, sink), start it and return its Job (after it ends when ``wait``).

    The outputs share their sources (each event is read once), the epochs and the checkpoint.
    """
    config = config or RunConfig()
    if not isinstance(config, RunConfig):
        raise ConfigError(f"config must be a raystream.RunConfig, got {type(config).__name__}")
    physical = plan([OutputRequest(name, node) for name, node, _ in outputs], config)
    sinks = {name: sink for name, _, sink in outputs}
    ensure_ray(config)
    job = Job(Coordinator(physical, sinks, config), sinks)
    if wait:
        job.wait()
    return job
