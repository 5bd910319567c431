"""``stream.print()``: each epoch's output as a table on stdout."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pyarrow as pa

from raystream.sinks.base import Sink


class ConsoleSink(Sink):
    """Prints each epoch's output on the driver, like Spark's console sink.

    Args:
        num_rows: Rows shown per epoch; the rest are counted.
        sort_by: Columns to sort each epoch's rows by before showing them;
            a leading ``-`` sorts that column in descending order.
    """

    name = "print"
    on_driver = True

    def __init__(self, num_rows: int = 20, sort_by: Sequence[str] = ()) -> None:
        self.num_rows = num_rows
        self.sort_keys = [(c[1:], "descending") if c.startswith("-") else (c, "ascending") for c in sort_by]

    def write(self, table: pa.Table, epoch_id: int, writer: int) -> None:
        if self.sort_keys:
            table = table.sort_by(self.sort_keys)
        shown = table.slice(0, self.num_rows).to_pandas()
        lines = [f"--- epoch {epoch_id}: {table.num_rows} rows ---", shown.to_string(index=False)]
        if table.num_rows > self.num_rows:
            lines.append(f"... {table.num_rows - self.num_rows} more rows")
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
