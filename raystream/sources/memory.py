"""In-memory tables as a source: ``rs.from_pandas`` and ``rs.from_arrow``."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from raystream.sources.base import Source, Split, SplitReader


class TableSource(Source):
    """A bounded, replayable source over one in-memory Arrow table.

    The table is cut into blocks of ``block_rows`` rows, dealt round-robin to
    one split per reader: split ``i`` holds blocks ``i``, ``i + n``,
    ``i + 2n``... So readers move through the table together, and when its
    rows are (roughly) in time order, no reader runs far ahead of the
    watermark and window state stays small. A split's position is the number
    of its rows already returned.
    """

    name = "from_arrow"

    def __init__(self, table: pa.Table, name: str = "from_arrow", block_rows: int = 16_384) -> None:
        self._table = table
        self.name = name
        self.block_rows = block_rows

    def schema(self) -> pa.Schema:
        return self._table.schema

    def estimated_bytes(self) -> int | None:
        return int(self._table.nbytes)

    def splits(self, parallelism: int) -> list[Split]:
        blocks = max(1, -(-self._table.num_rows // self.block_rows))
        count = max(1, min(parallelism, blocks))
        # A split is named by its blocks only: the table travels once, with the source.
        return [Split(f"{self.name}[{i}/{count}]", (i, count)) for i in range(count)]

    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        first, step = split.payload
        blocks = max(1, -(-self._table.num_rows // self.block_rows))
        # Zero-copy: a table whose chunks are slices of the original.
        dealt = [self._table.slice(b * self.block_rows, self.block_rows) for b in range(first, blocks, step)]
        return _TableSliceReader(pa.concat_tables(dealt), int(position or 0))


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
