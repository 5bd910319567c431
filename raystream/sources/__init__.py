"""Source functions: each returns a lazy :class:`~raystream.Stream` over a :class:`Source`."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from raystream.errors import PlanError
from raystream.sources.base import Source, Split, SplitReader
from raystream.stream import SourceNode, Stream, check_time_column

__all__ = [
    "Source",
    "Split",
    "SplitReader",
    "from_arrow",
    "from_pandas",
    "from_source",
    "read_csv",
    "read_json",
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
    return Stream(SourceNode(parent=None, schema=schema, source=source, source_time_column=time_column))


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
    storage_options: dict[str, Any] | None = None,
) -> Stream:
    """Read Parquet files: a file, a folder (recursively), a glob or a list, on any fsspec URL.

    Splits are ranges of row groups, so one large file is read in parallel.
    """
    from raystream.sources.files import ParquetSource

    return from_source(ParquetSource(path, columns=columns, storage_options=storage_options), time_column)


def read_csv(
    path: str | list[str],
    *,
    time_column: str | None = None,
    schema: pa.Schema | None = None,
    delimiter: str = ",",
    storage_options: dict[str, Any] | None = None,
) -> Stream:
    """Read CSV files with a header row. ``schema`` overrides type inference."""
    from raystream.sources.files import CsvSource

    source = CsvSource(path, schema=schema, delimiter=delimiter, storage_options=storage_options)
    return from_source(source, time_column)


def read_json(
    path: str | list[str],
    *,
    time_column: str | None = None,
    schema: pa.Schema | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Stream:
    """Read newline-delimited JSON files. ``schema`` overrides type inference."""
    from raystream.sources.files import JsonSource

    return from_source(JsonSource(path, schema=schema, storage_options=storage_options), time_column)


def read_text(path: str | list[str], *, storage_options: dict[str, Any] | None = None) -> Stream:
    """Read text files as a stream with one ``line`` column, one row per line."""
    from raystream.sources.files import TextSource

    return from_source(TextSource(path, storage_options=storage_options))


def read_socket(host: str, port: int) -> Stream:
    """Unbounded lines from a TCP server, as a ``line`` column: Flink's ``socketTextStream``.

    The source is **not replayable**: lines sent while the job is down are
    lost, and a restarted job does not see again what it already read. Use
    it for demos and debugging; use Kafka for input that must survive
    failures.
    """
    from raystream.sources.socket import SocketSource

    return from_source(SocketSource(host, port))
