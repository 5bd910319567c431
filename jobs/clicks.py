"""Clicks per user over a clickstream: the ``make demo`` job.

With no ``source`` in its config it generates a clickstream in memory, so it
runs anywhere with nothing to set up::

    raystream run jobs/clicks.py --config configs/demo.yaml
"""

from __future__ import annotations

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
