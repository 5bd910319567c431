"""Deterministic sources and sinks for testing pipelines, yours included.

In the spirit of Beam's ``TestStream``: a :class:`TestSource` is a script of
steps, and each step is one epoch of the job, so out-of-order data, late
data and watermark moves happen exactly where the test puts them::

    from datetime import datetime
    import raystream as rs
    from raystream.testing import ListSink, TestSource

    source = (
        TestSource()
        .add_batch([{"user": "a", "ts": datetime(2026, 1, 1, 0, 0, 5)}])
        .advance_watermark(datetime(2026, 1, 1, 0, 0, 10))
        .add_batch([{"user": "a", "ts": datetime(2026, 1, 1, 0, 0, 7)}])  # late: its window fired
        .end()
    )
    windows = source.stream(time_column="ts").key_by("user").window(rs.Tumbling("10s"), late="side")
    counts = windows.agg(n=rs.count())
    sink = ListSink()
    job = counts.write(sink)
    assert sink.rows() == [
        {"user": "a", "window_start": datetime(2026, 1, 1), "window_end": datetime(2026, 1, 1, 0, 0, 10), "n": 1}
    ]
    assert len(job.late_events()) == 1
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import pandas as pd
import pyarrow as pa

from raystream._time import datetime_to_ms
from raystream.errors import PlanError
from raystream.sinks.base import Sink
from raystream.sources.base import Source, Split, SplitReader
from raystream.stream import Stream

Rows: TypeAlias = "list[dict[str, Any]] | pd.DataFrame | pa.Table"


@dataclass(frozen=True)
class _Step:
    kind: str  # "batch", "watermark" or "pause"
    table: pa.Table | None = None
    watermark_ms: int | None = None
    seconds: float = 0.0


class TestSource(Source):
    """A scripted, replayable source: batches, watermark moves and pauses, in order, per split.

    Args:
        splits: How many splits (like Kafka partitions) the source has. Each
            step goes to one split, 0 by default; splits are read side by side.
    """

    __test__ = False  # not a pytest test class
    name = "TestSource"

    def __init__(self, splits: int = 1) -> None:
        if splits < 1:
            raise PlanError(f"TestSource: splits must be at least 1, got {splits}")
        self._steps: list[list[_Step]] = [[] for _ in range(splits)]
        self._ended = False
        self._schema: pa.Schema | None = None

    @property
    def bounded(self) -> bool:  # type: ignore[override]
        return self._ended

    def add_batch(self, rows: Rows, split: int = 0) -> TestSource:
        """Append one batch of rows to ``split``: read as one epoch's input."""
        table = _as_table(rows)
        if self._schema is None:
            self._schema = table.schema
        elif table.schema != self._schema:
            try:
                table = table.select(self._schema.names).cast(self._schema)
            except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise PlanError(f"TestSource.add_batch: rows do not fit the first batch's schema: {exc}") from exc
        self._split(split).append(_Step("batch", table=table))
        return self

    def advance_watermark(self, to: datetime | int, split: int | None = None) -> TestSource:
        """Declare that no event before ``to`` will come any more, in ``split`` or in every split."""
        watermark_ms = datetime_to_ms(to) if isinstance(to, datetime) else int(to)
        for index in range(len(self._steps)) if split is None else [split]:
            self._split(index).append(_Step("watermark", watermark_ms=watermark_ms))
        return self

    def pause(self, seconds: float, split: int = 0) -> TestSource:
        """Let ``split`` yield nothing for ``seconds`` of wall-clock time (to exercise idle timeouts)."""
        self._split(split).append(_Step("pause", seconds=seconds))
        return self

    def end(self) -> TestSource:
        """End every split after its last step: the source is then bounded and the job ends."""
        self._ended = True
        return self

    def stream(self, time_column: str | None = None) -> Stream:
        """A stream over this script."""
        from raystream.readers import from_source

        return from_source(self, time_column)

    def _split(self, index: int) -> list[_Step]:
        if not 0 <= index < len(self._steps):
            raise PlanError(f"TestSource: split {index} does not exist; the source has {len(self._steps)}")
        return self._steps[index]

    def schema(self) -> pa.Schema | None:
        return self._schema

    def splits(self, parallelism: int) -> list[Split]:
        # The payload is the split's number: its steps travel with the source, and checkpoints store the number.
        return [Split(f"test-{i}", i) for i in range(len(self._steps))]

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        return _ScriptReader(tuple(self._steps[split.payload]), self._ended, self._schema, int(position or 0))


class _ScriptReader(SplitReader):
    def __init__(self, steps: tuple[_Step, ...], ended: bool, schema: pa.Schema | None, position: int) -> None:
        self.steps = steps
        self.ended = ended
        self.schema = schema
        self.next_step = position
        self.declared: int | None = None
        for step in steps[:position]:
            if step.kind == "watermark":
                self.declared = step.watermark_ms

    def next_batch(self, max_rows: int) -> pa.Table | None:
        if self.next_step >= len(self.steps):
            if self.ended:
                return None
            time.sleep(0.01)
            return self.schema.empty_table() if self.schema is not None else pa.table({})
        step = self.steps[self.next_step]
        self.next_step += 1
        if step.kind == "batch":
            assert step.table is not None
            return step.table
        if step.kind == "watermark":
            self.declared = step.watermark_ms
        else:
            time.sleep(step.seconds)
        return self.schema.empty_table() if self.schema is not None else pa.table({})

    def position(self) -> int:
        return self.next_step

    def watermark_ms(self) -> int | None:
        return self.declared


class ListSink(Sink):
    """Collects every epoch's output on the driver, in order, for assertions."""

    name = "ListSink"
    on_driver = True

    def __init__(self) -> None:
        self.batches: list[tuple[int, pa.Table]] = []

    def write(self, table: pa.Table, epoch_id: int, writer: int) -> None:
        self.batches.append((epoch_id, table))

    def table(self) -> pa.Table:
        """Every row written, in order, as one table."""
        tables = [t for _, t in self.batches]
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

    def rows(self) -> list[dict[str, Any]]:
        """Every row written, in order, as dicts."""
        return self.table().to_pylist()

    def to_pandas(self) -> pd.DataFrame:
        return self.table().to_pandas()

    def epochs(self) -> list[int]:
        """The epoch id of each write, in order."""
        return [epoch for epoch, _ in self.batches]


def _as_table(rows: Rows) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pd.DataFrame):
        return pa.Table.from_pandas(rows, preserve_index=False)
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        return pa.Table.from_pylist(rows)
    raise PlanError("TestSource.add_batch: rows must be a non-empty list of dicts, a DataFrame or a pyarrow.Table")
