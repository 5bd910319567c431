"""Clicks per user over a clickstream: the ``make demo`` job.

With no ``source`` in its config it generates a clickstream in memory, so it
runs anywhere with nothing to set up::

    raystream run jobs/clicks.py --config configs/demo.yaml

The same job serves a live Kafka topic with ``configs/clicks-live.yaml``;
fill the topic with generated clicks first::

    python jobs/clicks.py --bootstrap-servers localhost:9092 --topic clicks --events 100000
    raystream run jobs/clicks.py --config configs/clicks-live.yaml
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.compute as pc

import raystream as rs
from raystream.config import SourceConfig

PAGES = np.array(["/", "/search", "/item", "/cart", "/checkout", "/help"])
COUNTRIES = np.array(["DE", "FR", "US", "JP", "BR"])


@dataclass(frozen=True)
class Config:
    """The job's settings.

    Attributes:
        source: Where clicks come from; when absent, ``events`` clicks by
            ``users`` users are generated.
        events: How many clicks to generate.
        users: How many distinct users to generate.
        seed: The generator's seed, so that a run can be repeated.
    """

    source: SourceConfig | None = None
    events: int = 200_000
    users: int = 20
    seed: int = 7


def generate_clicks(events: int, users: int, seed: int = 7) -> pd.DataFrame:
    """A clickstream: ``ts`` (timestamp), ``user``, ``page``, ``country``, ``price``.

    Users are skewed (a few click a lot), and a click on ``/checkout`` carries a price.
    """
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, users + 1)
    user_ids = rng.choice(users, size=events, p=weights / weights.sum())
    pages = rng.choice(PAGES, size=events)
    start = np.datetime64("2026-01-01T00:00:00", "ms")
    return pd.DataFrame(
        {
            "ts": start + np.sort(rng.integers(0, 3_600_000, size=events)).astype("timedelta64[ms]"),
            "user": np.char.add("user-", user_ids.astype(str)),
            "page": pages,
            "country": COUNTRIES[user_ids % len(COUNTRIES)],
            "price": np.where(pages == "/checkout", np.round(rng.gamma(2.0, 20.0, size=events), 2), 0.0),
        }
    )


def build(config: Config) -> rs.Stream:
    """Clicks, distinct pages and money spent per user."""
    if config.source is not None:
        clicks = config.source.build()
    else:
        clicks = rs.from_pandas(generate_clicks(config.events, config.users, config.seed), time_column="ts")
    return (
        clicks.filter(pc.field("page") != "/help")
        .key_by("user", "country")
        .agg(clicks=rs.count(), pages=rs.count_distinct("page"), spent=rs.sum("price"))
    )


def produce_clicks(bootstrap_servers: str, topic: str, events: int, users: int = 20, seed: int = 7) -> None:
    """Produce a generated clickstream to Kafka as JSON, with each click's time as the record time."""
    from confluent_kafka import Producer

    clicks = generate_clicks(events, users, seed)
    lines = clicks.to_json(orient="records", lines=True, date_format="iso", date_unit="ms").splitlines()
    times_ms = clicks["ts"].to_numpy().astype("datetime64[ms]").astype("int64")
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 20})
    for line, user, at in zip(lines, clicks["user"], times_ms, strict=True):
        while True:
            try:
                producer.produce(topic, value=line.encode(), key=user.encode(), timestamp=int(at))
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Produce generated clicks to a Kafka topic.")
    parser.add_argument("--bootstrap-servers", default="localhost:9092")
    parser.add_argument("--topic", default="clicks")
    parser.add_argument("--events", type=int, default=100_000)
    arguments = parser.parse_args()
    produce_clicks(arguments.bootstrap_servers, arguments.topic, arguments.events)
