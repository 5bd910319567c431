"""``stream.foreach_batch(fn)``: user code called with each epoch's output."""

from __future__ import annotations

import traceback
from collections.abc import Callable

import pyarrow as pa

from raystream.errors import UserFunctionError
from raystream.sinks.base import Sink


class ForeachBatchSink(Sink):
    """Calls ``fn(table, epoch_id)`` on the driver once per epoch with output.

    The same epoch id comes back when an epoch is replayed after a failure,
    so ``fn`` can be idempotent by keying its effects on it.
    """

    name = "foreach_batch"
    on_driver = True

    def __init__(self, fn: Callable[[pa.Table, int], None]) -> None:
        self.fn = fn

    def write(self, table: pa.Table, epoch_id: int, writer: int) -> None:
        try:
            self.fn(table, epoch_id)
        except Exception as exc:
            raise UserFunctionError(
                f"foreach_batch function {getattr(self.fn, '__qualname__', self.fn)!r} raised in epoch {epoch_id}:\n"
                f"{traceback.format_exc()}"
            ) from exc
