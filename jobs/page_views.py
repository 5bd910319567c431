"""Page views, visitors and revenue per page per hour: one job for history, live and the hand-over.

The job file never changes; its config picks the source:

- ``configs/backfill.yaml``: Parquet history, partitioned by day (``dt=2026-01-01/``);
- ``configs/live.yaml``: a Kafka topic;
- ``configs/hybrid.yaml``: the history up to ``switch_at``, then Kafka from there on.

Make some history and live data first (the days overlap on purpose: day 3 is in both)::

    python jobs/page_views.py history --out data/page_views --first-day 2026-01-01 --days 3
    python jobs/page_views.py live --bootstrap-servers localhost:9092 --topic page_views \\
        --first-day 2026-01-03 --days 2
    raystream backfill jobs/page_views.py --config configs/backfill.yaml --from 2026-01-01 --to 2026-01-03
    raystream run jobs/page_views.py --config configs/hybrid.yaml

Each config writes a folder of its own (``out/page_views-backfill``, ``-live``, ``-hybrid``):
``write_parquet`` refuses a folder that another job wrote, unless the sink's ``mode`` says
``overwrite`` or ``append``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import raystream as rs
from raystream.config import SourceConfig

PAGES = np.array(["/", "/search", "/item", "/cart", "/checkout", "/help"])
SCHEMA = pa.schema([("ts", pa.timestamp("ms")), ("user", pa.string()), ("page", pa.string()), ("price", pa.float64())])


@dataclass(frozen=True)
class Config:
    """The job's settings.

    Attributes:
        source: Where page views come from (history files, Kafka, or a hybrid of both).
        window: The window size, such as ``1h``.
        delay: How late, in event time, a page view may arrive and still count.
    """

    source: SourceConfig
    window: str = "1h"
    delay: str = "1m"


def build(config: Config) -> rs.Stream:
    """Views, distinct visitors and revenue per page and window."""
    return (
        config.source.build()
        .with_watermark("ts", delay=config.delay)
        .key_by("page")
        .window(rs.Tumbling(config.window))
        .agg(views=rs.count(), visitors=rs.count_distinct("user"), revenue=rs.sum("price"))
    )


def generate_day(day: date, events: int = 20_000, users: int = 500) -> pa.Table:
    """One day of page views, the same every time for the same day (so history and Kafka agree on overlaps)."""
    rng = np.random.default_rng(day.toordinal())
    start = np.datetime64(day.isoformat(), "ms")
    pages = rng.choice(PAGES, size=events)
    return pa.table(
        {
            "ts": start + np.sort(rng.integers(0, 86_400_000, size=events)).astype("timedelta64[ms]"),
            "user": np.char.add("user-", rng.integers(0, users, size=events).astype(str)),
            "page": pages,
            "price": np.where(pages == "/checkout", np.round(rng.gamma(2.0, 20.0, size=events), 2), 0.0),
        },
        schema=SCHEMA,
    )


def days(first_day: date, count: int) -> list[date]:
    return [first_day + timedelta(days=i) for i in range(count)]


def write_history(out: str, first_day: date, count: int, events_per_day: int = 20_000) -> list[str]:
    """Write each day to ``out/dt=YYYY-MM-DD/part-0.parquet``; return the files written."""
    written = []
    for day in days(first_day, count):
        folder = Path(out) / f"dt={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "part-0.parquet"
        pq.write_table(generate_day(day, events_per_day), path, row_group_size=5_000)
        written.append(str(path))
    return written


def kafka_records(table: pa.Table) -> tuple[list[str], list[str], list[int]]:
    """Page views as Kafka records: JSON values, the user as key, the view's time (epoch ms) as record time."""
    frame = table.to_pandas()
    lines = frame.to_json(orient="records", lines=True, date_format="iso", date_unit="ms").splitlines()
    return lines, frame["user"].tolist(), table.column("ts").cast(pa.int64()).to_pylist()


def produce_live(bootstrap_servers: str, topic: str, first_day: date, count: int, events_per_day: int = 20_000) -> int:
    """Produce the days to Kafka, one record per page view (see ``kafka_records``)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 20})
    produced = 0
    for day in days(first_day, count):
        lines, users, times_ms = kafka_records(generate_day(day, events_per_day))
        # confluent-kafka produces one record per call: this loop is the client's interface, not a hot path.
        for line, user, at in zip(lines, users, times_ms, strict=True):
            while True:
                try:
                    producer.produce(topic, value=line.encode(), key=user.encode(), timestamp=at)
                    break
                except BufferError:
                    producer.poll(0.1)
        produced += len(lines)
    producer.flush(60)
    return produced


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Generate page views: Parquet history or a Kafka topic.")
    commands = parser.add_subparsers(dest="command", required=True)
    history = commands.add_parser("history", help="write days of page views to Parquet, one folder per day")
    history.add_argument("--out", default="data/page_views")
    live = commands.add_parser("live", help="produce days of page views to a Kafka topic")
    live.add_argument("--bootstrap-servers", default="localhost:9092")
    live.add_argument("--topic", default="page_views")
    for command in (history, live):
        command.add_argument("--first-day", type=date.fromisoformat, default=date(2026, 1, 1))
        command.add_argument("--days", type=int, default=3)
        command.add_argument("--events-per-day", type=int, default=20_000)
    arguments = parser.parse_args()
    if arguments.command == "history":
        files = write_history(arguments.out, arguments.first_day, arguments.days, arguments.events_per_day)
        print(f"wrote {len(files)} files under {arguments.out}")
    else:
        count = produce_live(
            arguments.bootstrap_servers, arguments.topic, arguments.first_day, arguments.days, arguments.events_per_day
        )
        print(f"produced {count} page views to {arguments.topic}")
