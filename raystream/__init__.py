"""raystream: one pipeline API over history and live feeds, on Ray.

Build a stream from a source, chain operators, then call a terminal::

    import raystream as rs

    counts = rs.read_text("words/").flat_map(split).key_by("word").agg(n=rs.count())
    counts.print()
"""

from raystream import datagen
from raystream.aggregates import Aggregate, count, count_distinct, max, mean, min, sum
from raystream.errors import ConfigError, JobFailedError, PlanError, RaystreamError, UserFunctionError
from raystream.outputs import Outputs
from raystream.readers import (
    Source,
    Split,
    SplitReader,
    from_arrow,
    from_pandas,
    from_source,
    hybrid,
    read_csv,
    read_json,
    read_kafka,
    read_parquet,
    read_socket,
    read_text,
)
from raystream.run_config import RunConfig
from raystream.runtime.checkpointing import read_state
from raystream.runtime.job import Job
from raystream.sinks.base import Sink, SinkContext
from raystream.stream import KeyedStream, Stream, WindowedStream, union
from raystream.windows import Session, Sliding, Tumbling

__version__ = "0.1.0"

__all__ = [
    "Aggregate",
    "ConfigError",
    "Job",
    "JobFailedError",
    "KeyedStream",
    "Outputs",
    "PlanError",
    "RaystreamError",
    "RunConfig",
    "Session",
    "Sink",
    "SinkContext",
    "Sliding",
    "Source",
    "Split",
    "SplitReader",
    "Stream",
    "Tumbling",
    "UserFunctionError",
    "WindowedStream",
    "count",
    "count_distinct",
    "datagen",
    "from_arrow",
    "from_pandas",
    "from_source",
    "hybrid",
    "max",
    "mean",
    "min",
    "read_csv",
    "read_json",
    "read_kafka",
    "read_parquet",
    "read_socket",
    "read_state",
    "read_text",
    "sum",
    "union",
]
