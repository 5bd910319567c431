"""The progress display of ``raystream backfill``: files, rows, bytes, event time reached and ETA.

On a terminal it is a live ``rich`` progress bar. Otherwise (a scheduled job,
a log file) it prints a plain line every few seconds, so that logs show
progress too.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from typing import Any, TextIO

from raystream._time import END_OF_TIME_MS

_PLAIN_EVERY_S = 5.0


class BackfillProgress:
    """Shows how far a backfill over event times ``[start_ms, end_ms)`` has come, from ``Job.metrics()``."""

    def __init__(self, start_ms: int, end_ms: int, out: TextIO | None = None) -> None:
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.out = out if out is not None else sys.stderr
        self.started = time.monotonic()
        self._last_plain = 0.0
        self._bar: Any = None
        if self.out.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("backfill"), BarColumn(), TextColumn("{task.description}"), console=Console(file=self.out)
            )
            self._task = self._bar.add_task("", total=1.0)
            self._bar.start()

    def update(self, metrics: dict[str, Any]) -> None:
        """Show the job's progress now (called every half second or so)."""
        fraction, line = self.describe(metrics)
        if self._bar is not None:
            self._bar.update(self._task, completed=fraction, description=line)
        elif time.monotonic() - self._last_plain >= _PLAIN_EVERY_S:
            self._last_plain = time.monotonic()
            print(f"backfill {fraction:4.0%}  {line}", file=self.out, flush=True)

    def close(self, metrics: dict[str, Any]) -> None:
        """Show the final state and release the terminal."""
        fraction, line = self.describe(metrics)
        if self._bar is not None:
            self._bar.update(self._task, completed=fraction, description=line)
            self._bar.stop()
        else:
            print(f"backfill {fraction:4.0%}  {line}", file=self.out, flush=True)

    def describe(self, metrics: dict[str, Any]) -> tuple[float, str]:
        """The fraction done and one line: files, rows, bytes, event time reached, ETA."""
        total, done = metrics.get("splits_total", 0), metrics.get("splits_done", 0)
        splits = metrics.get("splits", {})
        read = sum(entry.get("bytes_read", 0) for entry in splits.values())
        reached = metrics.get("watermark_ms")
        finished = reached is not None and reached >= END_OF_TIME_MS
        if finished:
            fraction = 1.0
        elif reached is not None and self.start_ms < reached:
            fraction = min(1.0, (reached - self.start_ms) / (self.end_ms - self.start_ms))
        else:
            fraction = done / total if total else 0.0
        elapsed = time.monotonic() - self.started
        eta = "done" if fraction >= 1 else ("?" if fraction <= 0 else f"{elapsed * (1 - fraction) / fraction:.0f}s")
        time_text = "end" if finished else _format_time(reached if reached and reached > self.start_ms else None)
        line = (
            f"files {done}/{total}  rows {metrics.get('rows_read', 0):,}  {_format_bytes(read)}  "
            f"event time {time_text}  ETA {eta}"
        )
        return fraction, line


def _format_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"
