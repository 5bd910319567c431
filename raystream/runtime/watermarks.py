"""The watermark: the minimum, over the active splits, of each split's largest event time minus the delay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raystream._time import END_OF_TIME_MS, START_OF_TIME_MS
from raystream.runtime.planner import EventTime


@dataclass
class _SplitClock:
    max_event_time_ms: int | None = None
    declared_ms: int | None = None
    last_active: float = 0.0
    done: bool = False
    #: The split's smallest event time when known before reading it (Parquet statistics, partition values).
    min_event_time_ms: int | None = None
    #: Not read yet because an earlier phase is still being read; it is never idle meanwhile.
    pending: bool = False


class WatermarkTracker:
    """Tracks per-split event time and computes the job's watermark.

    A split may also declare a watermark itself (a test script does); the
    larger of the two counts. A split that has neither yet holds the
    watermark where its own events start (its ``min_event_time_ms`` minus
    the delay), or where the watermark is when that is unknown, so a slow or
    unstarted split can never make another split's events late. A finished
    split no longer counts, and a split of a later phase (see ``Split.phase``)
    counts as unstarted until its phase begins. A split silent for longer than
    the idle timeout stops counting until it yields again. The watermark
    never goes back.
    """

    def __init__(self, event_time: EventTime | None) -> None:
        self.event_time = event_time
        self.splits: dict[str, _SplitClock] = {}
        self.current = START_OF_TIME_MS

    def clocks(self) -> dict[str, Any]:
        """Per-split event-time state, JSON-able, for checkpoints."""
        return {
            split_id: [clock.max_event_time_ms, clock.declared_ms, clock.done]
            for split_id, clock in self.splits.items()
        }

    def restore(self, clocks: dict[str, Any], watermark_ms: int, now: float) -> None:
        """Resume from :meth:`clocks` and the watermark a checkpoint recorded."""
        self.current = watermark_ms
        for split_id, (max_event_time_ms, declared_ms, done) in clocks.items():
            self.splits[split_id] = _SplitClock(max_event_time_ms, declared_ms, now, done)

    def add_split(self, split_id: str, now: float, min_event_time_ms: int | None = None, pending: bool = False) -> None:
        """Start tracking a split assigned to a reader, whose events start at ``min_event_time_ms`` if known.

        A ``pending`` split waits for its phase: it is not idle until :meth:`activate`.
        """
        clock = self.splits.setdefault(split_id, _SplitClock(last_active=now))
        clock.min_event_time_ms = min_event_time_ms
        clock.pending = pending

    def activate(self, split_ids: list[str], now: float) -> None:
        """The phase of these splits has begun: from now on they may go idle."""
        for split_id in split_ids:
            clock = self.splits[split_id]
            clock.pending, clock.last_active = False, now

    def observe(self, split_id: str, progress: dict[str, Any], now: float) -> None:
        """Record what one split yielded in an epoch (a reader's progress entry for it)."""
        clock = self.splits.setdefault(split_id, _SplitClock(last_active=now))
        max_event_time_ms, rows, done = progress["max_event_time_ms"], progress["rows"], progress["done"]
        declared = progress.get("watermark_ms")
        if declared is not None:
            clock.declared_ms = declared if clock.declared_ms is None else max(clock.declared_ms, declared)
        if max_event_time_ms is not None:
            clock.max_event_time_ms = (
                max_event_time_ms
                if clock.max_event_time_ms is None
                else max(clock.max_event_time_ms, max_event_time_ms)
            )
        if rows:
            clock.last_active = now
        clock.done = clock.done or done

    def advance(self, now: float, end_of_input: bool = False) -> int:
        """Compute, remember and return the watermark after the observations so far."""
        if end_of_input:
            self.current = END_OF_TIME_MS
            return self.current
        if self.event_time is None:
            return self.current
        idle_ms = self.event_time.idle_timeout_ms
        candidates = []
        for clock in self.splits.values():
            if clock.done:
                continue
            if not clock.pending and idle_ms is not None and (now - clock.last_active) * 1000 >= idle_ms:
                continue
            seen = clock.max_event_time_ms if clock.max_event_time_ms is not None else clock.min_event_time_ms
            derived = None if seen is None else seen - self.event_time.delay_ms
            if derived is None and clock.declared_ms is None:
                return self.current
            candidates.append(max(v for v in (derived, clock.declared_ms) if v is not None))
        if candidates:
            self.current = max(self.current, min(candidates))
        return self.current
