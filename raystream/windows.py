"""Event-time windows a user names in ``keyed.window(rs.Tumbling("1m"))``.

Windows are half-open intervals ``[window_start, window_end)`` of event time,
in milliseconds since the epoch (output columns keep the time column's type).

A window's output rows have event time too: the last instant of their window,
``window_end`` minus 1 ms (Flink's ``window_time``). So a window over windows
puts each of them in the window that holds it, and a stage keyed by
``window_end`` after a window can fire each window once the watermark passes
its end.
"""

from __future__ import annotations

from dataclasses import dataclass

from raystream._time import Duration, duration_ms
from raystream.errors import PlanError

#: The output columns that hold a window's bounds.
WINDOW_START = "window_start"
WINDOW_END = "window_end"
#: The event time of a window's output rows, relative to ``window_end``: the window's last millisecond.
WINDOW_TIME_SHIFT_MS = -1


def _positive(value: Duration, what: str) -> int:
    ms = duration_ms(value, what)
    if ms <= 0:
        raise PlanError(f"{what} must be positive, got {value!r}")
    return ms


@dataclass(frozen=True, init=False)
class Tumbling:
    """Fixed, non-overlapping windows aligned to the epoch: ``start = floor(t / size) * size``.

    Args:
        size: The window length, such as ``"10s"`` or ``timedelta(minutes=1)``.
    """

    size_ms: int

    def __init__(self, size: Duration) -> None:
        object.__setattr__(self, "size_ms", _positive(size, "Tumbling size"))


@dataclass(frozen=True, init=False)
class Sliding:
    """Overlapping windows of ``size``, one starting every ``slide``, aligned to the epoch.

    Each event belongs to ``size / slide`` windows (rounded up when ``slide``
    does not divide ``size``).

    Args:
        size: The window length.
        slide: The distance between window starts; at most ``size``.
    """

    size_ms: int
    slide_ms: int

    def __init__(self, size: Duration, slide: Duration) -> None:
        size_ms = _positive(size, "Sliding size")
        slide_ms = _positive(slide, "Sliding slide")
        if slide_ms > size_ms:
            raise PlanError(f"Sliding slide ({slide!r}) must not exceed size ({size!r}); use Tumbling for gaps")
        object.__setattr__(self, "size_ms", size_ms)
        object.__setattr__(self, "slide_ms", slide_ms)


@dataclass(frozen=True, init=False)
class Session:
    """Per-key sessions: events whose ``[t, t + gap)`` intervals overlap or touch share a window.

    A session's window runs from its first event to its last event plus
    ``gap``. Sessions merge whatever the order of arrival, also across epochs.

    Args:
        gap: The inactivity that closes a session.
    """

    gap_ms: int

    def __init__(self, gap: Duration) -> None:
        object.__setattr__(self, "gap_ms", _positive(gap, "Session gap"))


Window = Tumbling | Sliding | Session
