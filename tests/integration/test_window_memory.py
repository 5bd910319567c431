"""Acceptance: over a long run, window state follows the open windows, not the history."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import raystream as rs

pytestmark = pytest.mark.usefixtures("ray_local")

EVENTS = 10_000_000
KEYS = 1_000


def test_fired_windows_are_freed_over_10m_events() -> None:
    rng = np.random.default_rng(9)
    # One event per millisecond (~2.8 hours of event time), slightly out of order.
    times = np.arange(EVENTS, dtype=np.int64) + rng.integers(-500, 500, EVENTS)
    table = pa.table({"t": times, "k": rng.integers(0, KEYS, EVENTS, dtype=np.int32)})
    stream = rs.from_arrow(table).with_watermark("t", delay="1s").key_by("k").window(rs.Tumbling("1m"))
    job = stream.agg(n=rs.count()).start(rs.RunConfig(parallelism=2, max_batch_rows=200_000)).wait()

    metrics = job.metrics()
    total_windows = KEYS * (int(times.max()) // 60_000 + 1)
    assert len(job.results()) >= total_windows - KEYS  # every key has a window in (nearly) every minute
    assert job.results()["n"].sum() == EVENTS
    # A 200k-row epoch spans ~3.3 minutes, so at most ~6 windows per key are ever open at once.
    peak = metrics["peak_state_rows"]["window"]
    assert peak <= 6 * KEYS, metrics
    assert peak < total_windows / 20
    assert metrics["state_rows"]["window"] == 0  # all fired and freed at the end
    assert metrics["late_rows"] == 0
