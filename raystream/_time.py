"""Durations and event times, as the engine sees them: int64 milliseconds."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raystream.errors import PlanError

#: The watermark of a finished bounded source: every window fires.
END_OF_TIME_MS = 2**62
#: The watermark before any event has been seen.
START_OF_TIME_MS = -(2**62)

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)\s*$")

Duration = str | timedelta | int


def duration_ms(value: Duration, what: str) -> int:
    """Parse ``"500ms"``, ``"10s"``, ``"1m"``, ``"1h"``, ``"1d"``, a timedelta or int milliseconds.

    Raises:
        PlanError: naming ``what`` when the value is not a duration.
    """
    if isinstance(value, bool):
        raise PlanError(f"{what}: expected a duration like '10s', got {value!r}")
    if isinstance(value, timedelta):
        return int(value / timedelta(milliseconds=1))
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return int(float(match.group(1)) * _UNITS_MS[match.group(2)])
    raise PlanError(
        f"{what}: {value!r} is not a duration; use a string such as '500ms', '10s', '1m', '1h' or '1d', "
        "a datetime.timedelta, or an int of milliseconds"
    )


def is_event_time_type(kind: pa.DataType) -> bool:
    """True for the types a time column may have: any timestamp, or int64 epoch milliseconds."""
    return pa.types.is_timestamp(kind) or pa.types.is_int64(kind)


def to_epoch_ms(column: pa.ChunkedArray | pa.Array) -> pa.Array | pa.ChunkedArray:
    """Convert a time column (a timestamp of any unit and zone, or int64 ms) to int64 epoch ms."""
    kind = column.type
    if pa.types.is_int64(kind):
        return column
    if pa.types.is_timestamp(kind):
        as_ms = pc.cast(column, pa.timestamp("ms", tz=kind.tz), safe=False) if kind.unit != "ms" else column
        return pc.cast(as_ms, pa.int64())
    raise PlanError(f"time column has type {kind}; use a timestamp or an int64 of epoch milliseconds")


def datetime_to_ms(value: datetime) -> int:
    """Epoch milliseconds of a datetime; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return int(value.timestamp() * 1000)


def time_ns(value: datetime | date | str | pd.Timestamp | np.datetime64, what: str) -> int:
    """Epoch nanoseconds of a datetime, date, pandas Timestamp or ISO string; naive means UTC.

    Raises:
        PlanError: naming ``what`` (such as ``"read_parquet: start"``) when the value is not a time.
    """
    if isinstance(value, bool) or not isinstance(value, datetime | date | str | pd.Timestamp | np.datetime64):
        raise PlanError(
            f"{what}={value!r} is not a time; use a datetime or an ISO string such as '2026-01-01T00:00:00Z'"
        )
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise PlanError(
            f"{what}={value!r} is not a time ({exc}); use a datetime or an ISO string such as '2026-01-01T00:00:00Z'"
        ) from exc
    if pd.isna(stamp):
        raise PlanError(f"{what} is NaT; pass a datetime or an ISO string")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value)
