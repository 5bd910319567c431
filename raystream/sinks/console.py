"""``stream.print()``: each epoch's output as a table on stdout."""

from __future__ import annotations

import sys

import pyarrow as pa

from raystream.sinks.base import Sink


class ConsoleSink(Sink):
    """Prints each epoch's output on the driver, like Spark's console sink.

    Args:
        num_rows: Rows shown per epoch; the rest are counted.
    """

    name = "print"
    on_driver = True

    def __init__(self, num_rows: int = 20) -> None:
        self.num_rows = num_rows

    def write(self, table: pa.Table, epoch_id: int, writer: int) -> None:
        shown = table.slice(0, self.num_rows).to_pandas()
        lines = [f"--- epoch {epoch_id}: {table.num_rows} rows ---", shown.to_string(index=False)]
        if table.num_rows > self.num_rows:
            lines.append(f"... {table.num_rows - self.num_rows} more rows")
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
