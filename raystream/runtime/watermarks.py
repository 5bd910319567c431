"""The watermark: the minimum, over the active splits, of each split's largest event time minus the delay."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from raystream._time import END_OF_TIME_MS, START_OF_TIME_MS
from raystream.runtime.planner import EventTime

_log = logging.getLogger("raystream")
#: A split whose event time leaps this far past the rest (the other splits, or its own before) is reported:
#: one wrong timestamp far in the future (year 9999) makes every later row late.
EVENT_TIME_LEAP_MS = 24 * 3600 * 1000


@dataclass
class _SplitClock:
    max_event_time_ms: int | None = None
    declared_ms: int | None = None
    last_active: float = 0.0
    done: bool = False
    #: The split's smallest event time when known before reading it (Parquet statistics, partition values).
    min_event_time_ms: int | None = None
    #: Not read yet because its stage waits for others to end (``SourceStage.after``); never idle meanwhile.
    pending: bool = False
    #: When a reader first polled the split (a split queued behind others is not polled yet).
    polled_at: float | None = None
    #: When this split last held the watermark back alone, and whether that was reported.
    holding_since: float | None = None
    reported_holding: bool = False


class WatermarkTracker:
    """Tracks per-split event time and computes the job's watermark.

    A split may also declare a watermark itself (a test script does); the
    larger of the two counts. A split that has neither yet holds the
    watermark where its own events start (its ``min_event_time_ms`` minus
    the delay), or where the watermark is when that is unknown, so a slow or
    unstarted split can never make another split's events late. A finished
    split no longer counts, and the splits of a stage that waits for others
    (``SourceStage.after``) count as unstarted until it starts. A split silent for longer than
    the idle timeout stops counting until it yields again. The watermark
    never goes back.
    """

    def __init__(self, event_time: EventTime | None, new_split_idle_timeout_ms: int | None = None) -> None:
        self.event_time = event_time
        #: A split polled this long without showing an event time stops counting (see ``Source``).
        self.new_split_idle_timeout_ms = new_split_idle_timeout_ms
        self.splits: dict[str, _SplitClock] = {}
        self.current = START_OF_TIME_MS
        #: The split whose event time the watermark waits for, if one alone holds it back.
        self.held_by: str | None = None

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

        A ``pending`` split waits for its stage to start: it is not idle until :meth:`start`.
        """
        clock = self.splits.setdefault(split_id, _SplitClock(last_active=now))
        clock.min_event_time_ms = min_event_time_ms
        clock.pending = pending

    def start(self, now: float) -> None:
        """The stage starts reading its pending splits: from now on they may go idle."""
        for clock in self.splits.values():
            if clock.pending:
                clock.pending, clock.last_active = False, now

    def observe(self, split_id: str, progress: dict[str, Any], now: float) -> None:
        """Record what one split yielded in an epoch (a reader's progress entry for it)."""
        clock = self.splits.setdefault(split_id, _SplitClock(last_active=now))
        if clock.polled_at is None:
            clock.polled_at = now
        max_event_time_ms, rows, done = progress["max_event_time_ms"], progress["rows"], progress["done"]
        declared = progress.get("watermark_ms")
        if declared is not None:
            clock.declared_ms = declared if clock.declared_ms is None else max(clock.declared_ms, declared)
        if max_event_time_ms is not None:
            self._check_leap(split_id, clock, max_event_time_ms)
            clock.max_event_time_ms = (
                max_event_time_ms
                if clock.max_event_time_ms is None
                else max(clock.max_event_time_ms, max_event_time_ms)
            )
        if rows:
            clock.last_active = now
        clock.done = clock.done or done

    def split_watermark(self, split_id: str) -> int | None:
        """One split's own watermark: its largest event time minus the delay (or what it declared), or None."""
        clock = self.splits.get(split_id)
        if clock is None or self.event_time is None:
            return None
        derived = None if clock.max_event_time_ms is None else clock.max_event_time_ms - self.event_time.delay_ms
        values = [v for v in (derived, clock.declared_ms) if v is not None]
        return max(values) if values else None

    def advance(self, now: float, end_of_input: bool = False) -> int:
        """Compute, remember and return the watermark after the observations so far."""
        if end_of_input:
            self.current = END_OF_TIME_MS
            self.held_by = None
            return self.current
        if self.event_time is None:
            return self.current
        candidates: dict[str, int | None] = {}
        for split_id, clock in self.splits.items():
            if clock.done or self._idle(clock, now):
                continue
            seen = clock.max_event_time_ms if clock.max_event_time_ms is not None else clock.min_event_time_ms
            derived = None if seen is None else seen - self.event_time.delay_ms
            known = [v for v in (derived, clock.declared_ms) if v is not None]
            candidates[split_id] = max(known) if known else None
        self._note_holder(candidates, now)
        if candidates and None not in candidates.values():
            self.current = max(self.current, min(v for v in candidates.values() if v is not None))
        return self.current

    def _idle(self, clock: _SplitClock, now: float) -> bool:
        """Whether a split stops holding the watermark: silent past the idle timeout, or never started."""
        if clock.pending:
            return False
        silent_ms = (now - clock.last_active) * 1000
        assert self.event_time is not None
        idle_ms = self.event_time.idle_timeout_ms
        if idle_ms is not None and silent_ms >= idle_ms:
            return True
        # A split polled for that long without a single event (a partition that receives nothing). One that
        # waits behind other splits of its reader is not polled, so an unread file never counts as idle.
        timeout_ms = self.new_split_idle_timeout_ms
        if timeout_ms is None or clock.polled_at is None:
            return False
        never_seen = clock.max_event_time_ms is None and clock.declared_ms is None
        return never_seen and (now - clock.polled_at) * 1000 >= timeout_ms

    def _note_holder(self, candidates: dict[str, int | None], now: float) -> None:
        """Remember which split alone holds the watermark back, and since when."""
        if len(candidates) < 2:
            self.held_by = None
            return
        lowest = min(candidates, key=lambda s: (candidates[s] is not None, candidates[s] or 0))
        low = candidates[lowest]
        alone = all(v is not None and (low is None or v > low) for s, v in candidates.items() if s != lowest)
        holder = lowest if alone else None
        if holder != self.held_by:
            for split_id, clock in self.splits.items():
                if split_id != holder:
                    clock.holding_since, clock.reported_holding = None, False
            if holder is not None:
                self.splits[holder].holding_since = now
            self.held_by = holder

    def stalled(self, now: float, after_s: float) -> list[tuple[str, float, int | None]]:
        """The split that has held the watermark back alone for ``after_s`` seconds, once per stall.

        Returns:
            ``(split id, seconds held, its watermark or None before its first event)``, or nothing.
        """
        if self.held_by is None:
            return []
        clock = self.splits[self.held_by]
        if clock.holding_since is None or clock.reported_holding or now - clock.holding_since < after_s:
            return []
        clock.reported_holding = True
        return [(self.held_by, now - clock.holding_since, self.split_watermark(self.held_by))]

    def _check_leap(self, split_id: str, clock: _SplitClock, max_event_time_ms: int) -> None:
        """Warn when a split's event time leaps far past its own and every other split's."""
        others = [c.max_event_time_ms for s, c in self.splits.items() if s != split_id and c.max_event_time_ms]
        before = [v for v in (clock.max_event_time_ms, *others) if v is not None]
        if not before or max_event_time_ms - max(before) < EVENT_TIME_LEAP_MS:
            return
        _log.warning(
            "split %r: event time leapt to %s, %.1f days past every event seen before (%s): if that time is "
            "wrong, every later row will be late; drop impossible times with a filter before with_watermark() "
            "(see the README's Event time section)",
            split_id,
            _iso(max_event_time_ms),
            (max_event_time_ms - max(before)) / 86_400_000,
            _iso(max(before)),
        )


def _iso(ms: int) -> str:
    from datetime import datetime, timezone

    try:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms"
