"""Several outputs in one job: ``rs.Outputs``, after Flink's StatementSet.

Alerts to Kafka and per-minute aggregates to Parquet, say, from the same
events::

    outputs = rs.Outputs()
    outputs.write_kafka(alerts, "alerts", brokers, transactional_id="alerts-1", name="alerts")
    outputs.write_parquet(per_minute, "s3://bucket/per-minute", name="per_minute")
    job = outputs.run(rs.RunConfig(checkpoint_dir="..."))

The outputs share their sources (each event is read once, even when both
streams start from it), the epochs and the checkpoint; each sink keeps its
own guarantee, so an exactly-once sink stays exactly-once after a crash.
``Job.results(name)`` and ``Job.metrics()["outputs"][name]`` report per
output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from raystream.errors import PlanError
from raystream.plan.checks import check_columns
from raystream.stream import Stream, kafka_sink, parquet_sink

if TYPE_CHECKING:
    from raystream.run_config import RunConfig
    from raystream.runtime.job import Job
    from raystream.sinks.base import Sink


class Outputs:
    """The outputs of one job, each a stream into a sink under a name; run them together with :meth:`run`."""

    def __init__(self) -> None:
        self._outputs: list[tuple[str, Stream, Sink]] = []

    def __repr__(self) -> str:
        return "Outputs(" + ", ".join(f"{name}={sink.name}" for name, _, sink in self._outputs) + ")"

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self._outputs]

    def write(self, stream: Stream, sink: Sink, name: str | None = None) -> Outputs:
        """Add an output: ``stream`` into any :class:`~raystream.Sink` (named ``output-1``, ``output-2``...)."""
        from raystream.sinks.base import Sink

        if not isinstance(stream, Stream):
            raise PlanError(f"Outputs.write: expected a raystream Stream, got {type(stream).__name__}")
        if not isinstance(sink, Sink):
            raise PlanError(f"Outputs.write: expected a raystream.Sink, got {type(sink).__name__}")
        name = name if name is not None else f"output-{len(self._outputs) + 1}"
        if not isinstance(name, str) or not name or name in self.names:
            raise PlanError(f"Outputs: the output name {name!r} is taken or empty; give each output its own name")
        if any(existing is sink for _, _, existing in self._outputs):
            raise PlanError(f"Outputs: the sink of {name!r} is already another output's; give each output a sink")
        self._outputs.append((name, stream, sink))
        return self

    def write_parquet(
        self,
        stream: Stream,
        path: str,
        name: str | None = None,
        partition_by: list[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> Outputs:
        """Add a Parquet output, with :meth:`Stream.write_parquet`'s options (``compression``, ``mode``...)."""
        return self.write(stream, parquet_sink(stream.schema, path, partition_by, storage_options, **options), name)

    def write_kafka(
        self, stream: Stream, topic: str, bootstrap_servers: str, name: str | None = None, **options: Any
    ) -> Outputs:
        """Add a Kafka output, with :meth:`Stream.write_kafka`'s options (``key``, ``transactional_id``...)."""
        return self.write(stream, kafka_sink(stream.schema, topic, bootstrap_servers, **options), name)

    def collect(self, stream: Stream, name: str | None = None) -> Outputs:
        """Add an output kept in memory, read with ``Job.results(name)``."""
        from raystream.sinks.memory import MemorySink

        return self.write(stream, MemorySink(), name)

    def print(
        self, stream: Stream, name: str | None = None, num_rows: int = 20, sort_by: list[str] | None = None
    ) -> Outputs:
        """Add an output printed on the driver's stdout, each epoch as a table, as :meth:`Stream.print` does."""
        from raystream.sinks.console import ConsoleSink

        check_columns("print sort_by", [c.removeprefix("-") for c in sort_by or []], stream.schema)
        return self.write(stream, ConsoleSink(num_rows=num_rows, sort_by=sort_by or ()), name)

    def foreach_batch(self, stream: Stream, fn: Any, name: str | None = None) -> Outputs:
        """Add an output that calls ``fn(table, epoch_id)`` on the driver with each epoch's rows."""
        from raystream.sinks.foreach import ForeachBatchSink

        return self.write(stream, ForeachBatchSink(fn), name)

    def run(self, config: RunConfig | None = None, wait: bool = True) -> Job:
        """Run every output in one job; returns its :class:`~raystream.Job` (once it ends, when ``wait``)."""
        from raystream.runtime.job import run_outputs

        if not self._outputs:
            raise PlanError("Outputs.run: add an output first (write, write_parquet, write_kafka, collect)")
        if getattr(config, "checkpoint_dir", None) is None:  # no resume possible: folders can be judged now
            for _, _, sink in self._outputs:
                check = getattr(sink, "check_destination", None)
                if check is not None:
                    check()
        return run_outputs([(name, stream.node, sink) for name, stream, sink in self._outputs], config, wait)

    def start(self, config: RunConfig | None = None) -> Job:
        """Run every output in one job, without waiting for it to end."""
        return self.run(config, wait=False)
