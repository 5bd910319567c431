"""In-memory tables as a source: ``rs.from_pandas`` and ``rs.from_arrow``."""

from __future__ import annotations

import itertools
from typing import Any

import pyarrow as pa

from raystream.sources.base import Source, Split, SplitReader


class TableSource(Source):
    """A bounded, replayable source over one in-memory Arrow table.

    The table is cut into one contiguous slice per reader. A split's position
    is the number of its rows already returned.
    """

    name = "from_arrow"

    def __init__(self, table: pa.Table, name: str = "from_arrow") -> None:
        self._table = table
        self.name = name

    def schema(self) -> pa.Schema:
        return self._table.schema

    def splits(self, parallelism: int) -> list[Split]:
        rows = self._table.num_rows
        count = max(1, min(parallelism, rows))
        bounds = [rows * i // count for i in range(count + 1)]
        return [
            Split(f"{self.name}[{start}:{end}]", self._table.slice(start, end - start))
            for start, end in itertools.pairwise(bounds)
        ]

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        return _TableSliceReader(split.payload, int(position or 0))


class _TableSliceReader(SplitReader):
    def __init__(self, table: pa.Table, offset: int) -> None:
        self._table = table
        self._offset = offset

    def next_batch(self, max_rows: int) -> pa.Table | None:
        if self._offset >= self._table.num_rows:
            return None
        batch = self._table.slice(self._offset, max_rows)
        self._offset += batch.num_rows
        return batch

    def position(self) -> int:
        return self._offset
