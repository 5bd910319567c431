"""Source functions: each returns a lazy :class:`~raystream.Stream` over a :class:`Source`, and ``hybrid``."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
import pyarrow as pa

from raystream._time import time_ns
from raystream.errors import PlanError
from raystream.plan.checks import check_time_column
from raystream.plan.logical import HybridNode, SourceNode
from raystream.sources.base import Source, Split, SplitReader
from raystream.sources.hybrid import hand_over
from raystream.stream import Stream

__all__ = [
    "Source",
    "Split",
    "SplitReader",
    "from_arrow",
    "from_pandas",
    "from_source",
    "hybrid",
    "read_csv",
    "read_json",
    "read_kafka",
    "read_parquet",
    "read_socket",
    "read_text",
]


def from_source(source: Source, time_column: str | None = None) -> Stream:
    """Wrap any :class:`Source` (a user's own, too) in a stream.

    Args:
        source: The source.
        time_column: The event-time column: a timestamp, or int64 epoch ms.
    """
    schema = source.schema()
    if time_column is not None:
        check_time_column(source.name, time_column, schema)
    return Stream(SourceNode(inputs=(), schema=schema, source=source, source_time_column=time_column))


def from_arrow(table: pa.Table, time_column: str | None = None) -> Stream:
    """A bounded stream over an in-memory Arrow table, cut into one slice per reader."""
    from raystream.sources.memory import TableSource

    if not isinstance(table, pa.Table):
        raise PlanError(f"from_arrow: expected a pyarrow.Table, got {type(table).__name__}")
    return from_source(TableSource(table, "from_arrow"), time_column)


def from_pandas(df: pd.DataFrame, time_column: str | None = None) -> Stream:
    """A bounded stream over a pandas DataFrame (its index is dropped)."""
    from raystream.sources.memory import TableSource

    if not isinstance(df, pd.DataFrame):
        raise PlanError(f"from_pandas: expected a pandas.DataFrame, got {type(df).__name__}")
    table = pa.Table.from_pandas(df, preserve_index=False)
    return from_source(TableSource(table, "from_pandas"), time_column)


def read_parquet(
    path: str | list[str],
    *,
    time_column: str | None = None,
    columns: list[str] | None = None,
    schema: pa.Schema | None = None,
    start: datetime | date | str | None = None,
    end: datetime | date | str | None = None,
    partition_time: str | list[str] | None = "auto",
    partitioning: str | None = "hive",
    watch: bool = False,
    poll_interval: str | timedelta | int = "10s",
    storage_options: dict[str, Any] | None = None,
) -> Stream:
    """Read Parquet files: a file, a folder (recursively), a glob or a list, on any fsspec URL.

    Splits are ranges of row groups, so one large file is read in parallel.
    ``key=value`` folders below the path become columns (Hive partitions).

    Args:
        path: ``data/``, ``s3://bucket/events/``, ``hdfs://namenode:8020/events``,
            ``gs://...`` or ``abfs://...`` (with gcsfs or adlfs installed), a glob, or a list.
        time_column: The event-time column: a timestamp of any unit and zone, or int64 epoch ms.
        columns: The columns to read (partition columns too), in this order; all when ``None``.
        schema: The schema instead of the files' footers (needed to watch an empty folder).
        start: Only rows with ``time_column >= start`` (a datetime, date or ISO string; naive is UTC).
            Files are pruned by their partition folders and row groups by their statistics first.
        end: Only rows with ``time_column < end``.
        partition_time: The partition folders that give a file's time range: ``"auto"``
            (``dt=`` or ``date=``, plus ``hour=``), ``None``, a column, or ``[day, hour]``.
        partitioning: ``"hive"`` (``key=value`` folders are columns) or ``None``.
        watch: Pick up files as they land (atomically, by rename); the stream is unbounded.
        poll_interval: How often to list ``path`` again when watching: ``"10s"``, ``"1m"``...
        storage_options: Passed to the fsspec filesystem (credentials, endpoint); never put in messages.
    """
    from raystream.sources.files import ParquetSource

    source = ParquetSource(
        path,
        columns=columns,
        schema=schema,
        time_column=time_column,
        start=start,
        end=end,
        partition_time=partition_time,
        partitioning=partitioning,
        watch=watch,
        poll_interval=poll_interval,
        storage_options=storage_options,
    )
    return from_source(source, time_column)


def read_csv(
    path: str | list[str],
    *,
    time_column: str | None = None,
    schema: pa.Schema | None = None,
    delimiter: str = ",",
    start: datetime | date | str | None = None,
    end: datetime | date | str | None = None,
    partition_time: str | list[str] | None = "auto",
    partitioning: str | None = "hive",
    watch: bool = False,
    poll_interval: str | timedelta | int = "10s",
    storage_options: dict[str, Any] | None = None,
    errors: str = "dead_letter",
) -> Stream:
    """Read CSV files with a header row, one row per line; blank lines are skipped. ``schema`` overrides inference.

    Bytes that are not UTF-8 in a string column are a bad line (never a
    column silently read as binary); declare the column ``pa.binary()`` in
    ``schema`` to read its raw bytes.

    ``start``, ``end``, ``partition_time``, ``partitioning``, ``watch`` and
    ``poll_interval`` work as in :func:`read_parquet` (files are pruned by
    their partition folders; there are no row groups).

    Args:
        errors: ``"dead_letter"`` (the default, like :func:`read_json` and :func:`read_kafka`): a line with
            the wrong number of fields, a value that does not fit its column's type, bytes that are not UTF-8
            in a string column, or a quote left open goes to ``stream.dead_letters()``, with the file as
            ``split_id``, its line number (from 1; the header is line 1) as ``position`` and the raw line as
            ``raw``, and the job goes on. ``"fail"``: the job fails, naming the file and line.
    """
    from raystream.sources.files import CsvSource

    source = CsvSource(
        path,
        schema=schema,
        delimiter=delimiter,
        time_column=time_column,
        start=start,
        end=end,
        partition_time=partition_time,
        partitioning=partitioning,
        watch=watch,
        poll_interval=poll_interval,
        storage_options=storage_options,
        errors=errors,  # type: ignore[arg-type]
    )
    return from_source(source, time_column)


def read_json(
    path: str | list[str],
    *,
    time_column: str | None = None,
    schema: pa.Schema | None = None,
    start: datetime | date | str | None = None,
    end: datetime | date | str | None = None,
    partition_time: str | list[str] | None = "auto",
    partitioning: str | None = "hive",
    watch: bool = False,
    poll_interval: str | timedelta | int = "10s",
    storage_options: dict[str, Any] | None = None,
    errors: str = "dead_letter",
) -> Stream:
    """Read newline-delimited JSON files: one JSON object per line, one row per line; blank lines are skipped.

    Without ``schema``, the fields and types come from each file's first
    block (1 MiB), the first lines winning where lines disagree; with it,
    only its fields are read, with its types. ``start``, ``end``,
    ``partition_time``, ``partitioning``, ``watch`` and ``poll_interval``
    work as in :func:`read_parquet` (files are pruned by their partition
    folders; there are no row groups).

    Args:
        errors: ``"dead_letter"`` (the default, like Spark's ``PERMISSIVE`` and :func:`read_kafka`): a line
            that is not one JSON object, is not valid UTF-8, or does not fit the schema (without ``schema``,
            also one with a field or a type the first block did not have) goes to ``stream.dead_letters()``,
            with the file as ``split_id``, its line number (from 1) as ``position`` and the raw line as
            ``raw``, and the job goes on. ``"fail"`` (Spark's ``FAILFAST``): the job fails, naming the file and line.
    """
    from raystream.sources.files import JsonSource

    source = JsonSource(
        path,
        schema=schema,
        time_column=time_column,
        start=start,
        end=end,
        partition_time=partition_time,
        partitioning=partitioning,
        watch=watch,
        poll_interval=poll_interval,
        storage_options=storage_options,
        errors=errors,  # type: ignore[arg-type]
    )
    return from_source(source, time_column)


def read_text(
    path: str | list[str],
    *,
    storage_options: dict[str, Any] | None = None,
    encoding: str = "utf-8",
    partitioning: str | None = "hive",
    watch: bool = False,
    poll_interval: str | timedelta | int = "10s",
) -> Stream:
    """Read text files as a stream with one ``line`` column, one row per line (then any partition columns).

    ``partitioning``, ``watch`` and ``poll_interval`` work as in :func:`read_parquet`.
    """
    from raystream.sources.files import TextSource

    source = TextSource(
        path,
        storage_options=storage_options,
        encoding=encoding,
        partitioning=partitioning,
        watch=watch,
        poll_interval=poll_interval,
    )
    return from_source(source)


def read_kafka(
    topics: str | list[str],
    bootstrap_servers: str,
    *,
    format: str = "json",  # noqa: A002 - the public name
    schema: pa.Schema | None = None,
    time_column: str | None = None,
    start: str | datetime | dict[int, int] = "earliest",
    stop: str | datetime | None = None,
    consumer_config: dict[str, Any] | None = None,
    errors: str = "dead_letter",
    on_lost_offsets: str = "fail",
    reconnect_timeout: str | timedelta | int = "1m",
    empty_partition_timeout: str | timedelta | int | None = "10s",
) -> Stream:
    """Read Kafka topics: each partition is a split, read with ``assign()``, its position the next offset.

    Needs the ``kafka`` extra (confluent-kafka). librdkafka's own log lines go to the
    ``raystream.kafka`` logger, at most one of the same text per 10 s.

    Args:
        topics: A topic or a list of topics. New partitions are picked up while the job runs.
        bootstrap_servers: ``"host:port[,host:port]"``.
        format: ``"json"``: one JSON object per record, decoded a whole batch at a time with
            ``pyarrow.json``; each record is exactly one row or one dead letter, and keeps its own
            timestamp. ``"raw"``: the columns ``key``, ``value`` (binary), ``topic``, ``partition``,
            ``offset`` and ``timestamp``.
        schema: The JSON records' schema; fields not in it are ignored. Without it, it is inferred
            once, on the driver at plan time, from the first records of the topics (up to 1,000, read
            within about a second), and every reader decodes with that one schema. The first records'
            types win: a later record whose field has another type is a dead letter naming the column
            and both types; a field the sample lacks is not read; a topic with no record yet is a
            ``PlanError`` asking for ``schema=``.
        time_column: The event-time column; ``None`` adds ``timestamp``, the Kafka record time, and uses it.
        start: ``"earliest"``, ``"latest"``, a datetime (records before it are skipped), or
            ``{partition: offset}``.
        stop: ``None`` (unbounded), ``"latest"`` (the ends when the job starts), or a datetime:
            a partition is done once it shows a record at or past that time, which is not read.
        consumer_config: librdkafka settings. A ``group.id`` here makes raystream publish its
            positions to that group after each committed epoch, for monitoring only. Credentials
            (``sasl.password``, ``ssl.key.password``...) never appear in messages, logs or reprs.
        errors: ``"dead_letter"``: records that are not one JSON object (a tombstone, an empty
            value, two values, an array), are not valid UTF-8, or do not fit ``schema`` go to
            ``stream.dead_letters()`` with the error, and the job goes on. ``"fail"``: the job fails
            with the topic, partition and offset of the record and what is wrong with it.
        on_lost_offsets: What a job does with a partition that no longer holds its position,
            because the broker lost or deleted the records (a restart without its data, a topic
            created again, retention): ``"fail"``, an error naming the partition, the position and
            the partition's offsets, both when a checkpointed job resumes and while it runs; or
            ``"earliest"``, a warning and a restart of that partition from its earliest offset
            (Kafka's ``auto.offset.reset=earliest``), without re-reading what it held after the
            checkpoint.
        reconnect_timeout: How long a running job waits for unreachable brokers, retrying with
            backoff, before it fails with an error naming them: ``"1m"``, ``"30s"``... A broker
            back within it costs nothing: reading goes on from where it was.
        empty_partition_timeout: A partition that has given no record this long after it was first
            read stops holding the watermark back, until its first record, so that windows fire
            although some partitions get no data. A record that arrives later can then be late.
            ``None``: every partition holds the watermark until its first record.

    Raises:
        KafkaError: when the brokers cannot be reached within 10 s, or a topic does not exist.
        PlanError: when ``schema`` is needed and the topics hold no JSON object to infer it from.
    """
    from raystream.sources.kafka import KafkaSource

    source = KafkaSource(
        topics,
        bootstrap_servers,
        format=format,  # type: ignore[arg-type]
        schema=schema,
        time_column=time_column,
        start=start,
        stop=stop,
        consumer_config=consumer_config,
        errors=errors,  # type: ignore[arg-type]
        on_lost_offsets=on_lost_offsets,  # type: ignore[arg-type]
        reconnect_timeout=reconnect_timeout,
        empty_partition_timeout=empty_partition_timeout,
    )
    return from_source(source, time_column if time_column is not None else "timestamp")


def read_socket(host: str, port: int) -> Stream:
    """Unbounded lines from a TCP server, as a ``line`` column: Flink's ``socketTextStream``.

    The source is **not replayable**: lines sent while the job is down are
    lost, and a restarted job does not see again what it already read. Use
    it for demos and debugging; use Kafka for input that must survive
    failures.
    """
    from raystream.sources.socket import SocketSource

    return from_source(SocketSource(host, port))


def hybrid(history: Stream, live: Stream, switch_at: datetime | date | str) -> Stream:
    """Backfill from history, then hand over to a live source at ``switch_at``, with no gap and no duplicate.

    History events before ``switch_at`` are read first; once every history
    split is done, live events at or after ``switch_at`` follow. Start the
    live source at or before ``switch_at`` (``read_kafka(start="earliest")``
    or a time safely before it): the events both sources hold are read once,
    whatever the overlap. Keyed state and open windows carry across the
    switch, and one checkpoint covers both sides.

    Args:
        history: A bounded source stream, such as ``rs.read_parquet(..., time_column="ts")``.
        live: A source stream with the same columns and time column, such as ``rs.read_kafka(...)``.
        switch_at: The hand-over time: a datetime or date (naive means UTC) or an ISO string.

    Raises:
        PlanError: when a stream is not a plain source, the time columns differ or are missing,
            the columns do not match, or the history is unbounded.
    """
    nodes = {}
    for role, stream in (("history", history), ("live", live)):
        node = getattr(stream, "node", None)
        if not isinstance(node, SourceNode):
            raise PlanError(
                f"hybrid: {role} must be a source stream, such as rs.read_parquet(...) or rs.read_kafka(...), "
                "before any operator; apply the job's operators to the stream hybrid() returns"
            )
        if node.source_time_column is None:
            raise PlanError(f"hybrid: {role} needs a time_column, the event time that switch_at is compared with")
        nodes[role] = node
    time_column = nodes["history"].source_time_column
    if nodes["live"].source_time_column != time_column:
        raise PlanError(
            f"hybrid: the time columns differ: history {time_column!r}, live "
            f"{nodes['live'].source_time_column!r}; give both sources the same time_column"
        )
    assert time_column is not None
    switch_at_ms = time_ns(switch_at, "hybrid: switch_at") // 1_000_000
    sides = hand_over(nodes["history"].source, nodes["live"].source, switch_at_ms, time_column)
    inputs = tuple(
        SourceNode(inputs=(), schema=side.schema(), source=side, source_time_column=time_column, stage_name=role)
        for role, side in (("history", sides.history), ("live", sides.live))
    )
    return Stream(HybridNode(inputs=inputs, schema=sides.history.schema(), source=sides))
