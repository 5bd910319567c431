"""Generated data sources, for benchmarks, demos and tests: ``rs.datagen.nexmark(...)``.

Example:
    >>> import raystream as rs
    >>> bids = rs.datagen.nexmark(events=10_000, seed=1)
    >>> bids.columns
    ['auction', 'bidder', 'price', 'channel', 'url', 'date_time', 'extra']
"""

from __future__ import annotations

from datetime import datetime

from raystream._time import datetime_to_ms
from raystream.datagen._nexmark import (
    DEFAULT_BASE_TIME_MS,
    DEFAULT_RATE,
    KINDS,
    SCHEMAS,
    Kind,
    NexmarkGenerator,
    NexmarkSource,
    count_events,
    events_for,
)
from raystream.errors import PlanError
from raystream.readers import from_source
from raystream.stream import Stream

__all__ = [
    "DEFAULT_BASE_TIME_MS",
    "DEFAULT_RATE",
    "KINDS",
    "SCHEMAS",
    "Kind",
    "NexmarkGenerator",
    "NexmarkSource",
    "count_events",
    "events_for",
    "nexmark",
]


def nexmark(
    events: int | None = None,
    *,
    kind: Kind = "bid",
    rate: float = DEFAULT_RATE,
    unbounded: bool = False,
    splits: int | None = None,
    seed: int = 0,
    base_time: datetime | int | None = None,
    block_events: int = 10_000,
) -> Stream:
    """A stream of Nexmark events of one kind, with ``date_time`` as its event time.

    Events are numbered ``0 .. events - 1``; ``e % 50`` makes each a person,
    an auction or a bid (1 : 3 : 46), and its event time is
    ``base_time + e * (1e6 / rate) / 1000`` ms. Only the events of ``kind``
    are emitted. Each event depends on ``seed`` and its number alone, so the
    stream is the same at any parallelism and replays exactly from any
    position after a failure.

    Args:
        events: How many events to number (of all kinds: about 92% are bids).
            Required unless ``unbounded``.
        kind: ``"bid"`` (auction, bidder, price, channel, url, date_time,
            extra), ``"auction"`` or ``"person"``.
        rate: Events per second of event time; when ``unbounded``, also the
            wall-clock pace.
        unbounded: Emit each event once the wall clock reaches its event time,
            forever, or until ``events`` events when given. The stream is then
            unbounded: running aggregates emit updates, and ``to_pandas`` is
            refused.
        splits: How many splits to cut the events into (blocks of
            ``block_events`` dealt round-robin); the job's parallelism when ``None``.
        seed: Selects the random draws.
        base_time: The event time of event 0, a datetime (naive means UTC) or
            epoch ms. By default 2026-01-01T00:00:00Z when bounded, and the
            time of this call when unbounded. Pass it explicitly to replay
            an unbounded job from a checkpoint with another driver.
        block_events: Events per block dealt to the splits.

    Returns:
        A lazy :class:`~raystream.Stream`; add ``with_watermark("date_time", delay="4s")``
        for the usual Nexmark watermark.

    Raises:
        PlanError: An argument is out of range.
    """
    if isinstance(base_time, datetime):
        base_ms = datetime_to_ms(base_time)
    elif base_time is None:
        base_ms = DEFAULT_BASE_TIME_MS if not unbounded else int(_now_ms())
    elif isinstance(base_time, int) and not isinstance(base_time, bool):
        base_ms = base_time
    else:
        raise PlanError(f"nexmark: base_time must be a datetime or epoch milliseconds, got {base_time!r}")
    generator = NexmarkGenerator(seed=seed, rate=rate, base_time_ms=base_ms)
    source = NexmarkSource(kind, events, generator, unbounded=unbounded, num_splits=splits, block_events=block_events)
    return from_source(source, time_column="date_time")


def _now_ms() -> float:
    import time

    return time.time() * 1000
