"""The Nexmark queries as raystream pipelines, the same queries in DuckDB SQL, and the check between them.

Each raystream pipeline starts from the streams of the kinds it reads
(``bid``, ``auction``, ``person``), each with event time ``date_time``, and
uses only the public API. Each SQL query reads views of the same names over
the same Parquet files. :func:`compare` checks two
outputs by their row count and an order-independent hash of their rows,
computed by DuckDB over both, with times as epoch milliseconds and floats
rounded to cents.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

import raystream as rs
from raystream.datagen import KINDS, count_events

#: How an output column is made comparable: as BIGINT, as epoch ms, as a float rounded to cents, as text.
ColumnKind = Literal["int", "time", "float", "text"]

#: Nexmark's usual watermark: event time minus 4 s.
WATERMARK_DELAY = "4s"


@dataclass(frozen=True)
class Query:
    """One Nexmark query, in raystream and in SQL.

    Attributes:
        name: ``q0``, ``q1``...
        title: What it computes, in a few words.
        inputs: The columns it reads, by kind (``bid``, ``auction``, ``person``).
        build: The raystream pipeline over a stream per kind, passed by kind.
        sql: The DuckDB query over the views ``bid``, ``auction`` and ``person``.
        output: The output columns, in order, and how to compare each.
    """

    name: str
    title: str
    inputs: dict[str, tuple[str, ...]]
    build: Callable[..., rs.Stream]
    sql: str
    output: tuple[tuple[str, ColumnKind], ...]


def _hot_items(bid: rs.Stream) -> rs.Stream:
    """q5: the bids per auction per sliding window, then per window the auctions with the most, ties included.

    Two keyed stages: the window counts, partitioned by auction; the
    per-window ``top`` keeps each window's rows with the largest ``num``,
    partitioned by window. The window's actors keep their own candidates
    before the shuffle (a row with the window's maximum has the maximum of
    any subset of its rows), and each window is ranked in the epoch it fires.
    """
    counts = (
        bid.with_watermark("date_time", delay=WATERMARK_DELAY)
        .key_by("auction")
        .window(rs.Sliding("10s", "2s"))
        .agg(num=rs.count())
    )
    return counts.key_by("window_start", "window_end").top("num")


#: q13's side input: a static table of this many keys, joined on ``auction % SIDE_INPUT_KEYS``.
SIDE_INPUT_KEYS = 10_000


def side_input() -> rs.Stream:
    """q13's bounded side input: ``key`` 0..9999 and a text ``value`` per key (Flink reads it from a file)."""
    keys = pa.array(range(SIDE_INPUT_KEYS), pa.int64())
    values = pc.binary_join_element_wise("value-", pc.cast(keys, pa.string()), "")
    return rs.from_arrow(pa.table({"key": keys, "value": values}))


def _side_input_join(bid: rs.Stream) -> rs.Stream:
    """q13: each bid joined with the side input on ``auction % 10000``.

    The table (10,000 rows, about 150 kB) is under
    ``RunConfig.broadcast_join_max_bytes``, so it is read once, broadcast
    to the readers and joined there: the bids are never shuffled.
    """
    keyed = bid.with_columns(key=pc.modulo(pc.field("auction"), SIDE_INPUT_KEYS))
    return keyed.join(side_input(), on="key").select("auction", "bidder", "price", "date_time", "value")


def _highest_bids(bid: rs.Stream) -> rs.Stream:
    """q7: the bids at the highest price of their 10 s tumbling window, found by joining the maxima back.

    The maxima come from a window over all bids (one key); each is joined with
    the bids of its price in the 10 s up to its ``window_end``, as Nexmark's
    ``B.date_time BETWEEN B1.window_end - INTERVAL '10' SECOND AND B1.window_end``:
    an interval join of the bids with the maxima, partitioned by the price.
    """
    timed = bid.with_watermark("date_time", delay=WATERMARK_DELAY)
    maxima = (
        timed.with_columns(every=pc.scalar(0))
        .key_by("every")
        .window(rs.Tumbling("10s"))
        .agg(maxprice=rs.max("price"))
        .select("maxprice", "window_end")
    )
    joined = timed.join(maxima, left_on="price", right_on="maxprice", between=("0s", "10s"))
    return joined.select("auction", "price", "bidder", "date_time", "extra")


def _average_winning_price(auction: rs.Stream, bid: rs.Stream) -> rs.Stream:
    """q4: the average winning price per category, the winning price being an auction's highest bid while open.

    An interval join of the auctions with their bids from ``date_time`` to
    ``expires`` (a bound that is a column), partitioned by the auction; then
    the maximum per auction, and the mean of those per category.
    """
    bids = auction.join(bid, left_on="id", right_on="auction", between=("date_time", "expires"))
    winning = bids.key_by("id", "category").agg(final=rs.max("price"))
    return winning.key_by("category").agg(average=rs.mean("final"))


def _winning_bids(auction: rs.Stream, bid: rs.Stream) -> rs.Stream:
    """q9: each auction's winning bid: its highest while open, the earliest of a price first (``ROW_NUMBER``).

    q4's interval join, then ``top`` per auction without ties, which breaks
    them by the columns that follow ``price``: the bid's time, then its bidder.
    """
    bids = auction.join(bid, left_on="id", right_on="auction", between=("date_time", "expires"))
    ranked = bids.select("id", "price", "date_time_right", "bidder", "category")
    return ranked.key_by("id").top("price", ties=False).select("id", "category", "price", "bidder", "date_time_right")


#: q3's states, and the category its auctions are in.
LOCAL_STATES = ("OR", "ID", "CA")
LOCAL_CATEGORY = 10


def _local_item_suggestion(auction: rs.Stream, person: rs.Stream) -> rs.Stream:
    """q3: the auctions of category 10 joined with their sellers, when these live in OR, ID or CA.

    Both inputs are bounded here, so the regular join needs no ``ttl``: the
    persons are the table, and the planner broadcasts them to the readers of
    the auctions or partitions both by the key, by their size.
    """
    local = person.filter(pc.is_in(pc.field("state"), pa.array(LOCAL_STATES)))
    auctions = auction.filter(pc.field("category") == LOCAL_CATEGORY)
    return auctions.join(local, left_on="seller", right_on="id").select("name", "city", "state", "id")


def _new_users(person: rs.Stream, auction: rs.Stream) -> rs.Stream:
    """q8: the persons who opened an auction in the 10 s tumbling window they joined in, once per window.

    A window join of persons and auctions on id = seller, then one row per
    person and window (a seller may open several auctions in one window).
    """
    joined = person.join(auction, left_on="id", right_on="seller", window=rs.Tumbling("10s"))
    return joined.key_by("id", "window_start").agg({"name": rs.min("name")}).select("id", "name", "window_start")


QUERIES: dict[str, Query] = {
    query.name: query
    for query in [
        Query(
            "q0",
            "pass-through",
            {"bid": ("auction", "bidder", "price", "date_time", "extra")},
            lambda bid: bid.select("auction", "bidder", "price", "date_time", "extra"),
            "SELECT auction, bidder, price, date_time, extra FROM bid",
            (("auction", "int"), ("bidder", "int"), ("price", "int"), ("date_time", "time"), ("extra", "text")),
        ),
        Query(
            "q1",
            "price * 0.908",
            {"bid": ("auction", "bidder", "price", "date_time", "extra")},
            lambda bid: bid.with_columns(price=pc.field("price") * 0.908).select(
                "auction", "bidder", "price", "date_time", "extra"
            ),
            "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid",
            (("auction", "int"), ("bidder", "int"), ("price", "float"), ("date_time", "time"), ("extra", "text")),
        ),
        Query(
            "q2",
            "auction % 123 == 0",
            {"bid": ("auction", "price")},
            lambda bid: bid.filter(pc.modulo(pc.field("auction"), 123) == 0).select("auction", "price"),
            "SELECT auction, price FROM bid WHERE auction % 123 = 0",
            (("auction", "int"), ("price", "int")),
        ),
        Query(
            "q5",
            "hot items, 10 s windows sliding by 2 s",
            {"bid": ("auction", "date_time")},
            _hot_items,
            """
            WITH counts AS (
                SELECT auction, window_start, count(*) AS num
                FROM (
                    SELECT auction, epoch_ms(date_time) AS t, (epoch_ms(date_time) // 2000 - j) * 2000 AS window_start
                    FROM bid, range(0, 5) AS r(j)
                )
                WHERE window_start + 10000 > t
                GROUP BY auction, window_start
            )
            SELECT auction, epoch_ms(window_start) AS window_start, epoch_ms(window_start + 10000) AS window_end, num
            FROM counts
            QUALIFY num = max(num) OVER (PARTITION BY window_start)
            """,
            (("auction", "int"), ("window_start", "time"), ("window_end", "time"), ("num", "int")),
        ),
        Query(
            "w1",
            "price * 0.908 over the four bid columns of the reference figures",
            {"bid": ("auction", "bidder", "price", "date_time")},
            lambda bid: bid.with_columns(price=pc.field("price") * 0.908),
            "SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid",
            (("auction", "int"), ("bidder", "int"), ("price", "float"), ("date_time", "time")),
        ),
        Query(
            "w2",
            "count and max(price) per auction, 10 s tumbling windows",
            {"bid": ("auction", "price", "date_time")},
            lambda bid: (
                bid.with_watermark("date_time", delay=WATERMARK_DELAY)
                .key_by("auction")
                .window(rs.Tumbling("10s"))
                .agg(num=rs.count(), max_price=rs.max("price"))
            ),
            """
            SELECT auction, epoch_ms(window_start) AS window_start, epoch_ms(window_start + 10000) AS window_end,
                   count(*) AS num, max(price) AS max_price
            FROM (SELECT auction, price, epoch_ms(date_time) // 10000 * 10000 AS window_start FROM bid)
            GROUP BY auction, window_start
            """,
            (
                ("auction", "int"),
                ("window_start", "time"),
                ("window_end", "time"),
                ("num", "int"),
                ("max_price", "int"),
            ),
        ),
        Query(
            "q13",
            "bids joined with a bounded side input on auction % 10000",
            {"bid": ("auction", "bidder", "price", "date_time")},
            _side_input_join,
            f"""
            SELECT auction, bidder, price, date_time, s.value
            FROM bid JOIN (SELECT range AS key, 'value-' || range AS value FROM range({SIDE_INPUT_KEYS})) AS s
                ON auction % {SIDE_INPUT_KEYS} = s.key
            """,
            (("auction", "int"), ("bidder", "int"), ("price", "int"), ("date_time", "time"), ("value", "text")),
        ),
        Query(
            "q4",
            "average winning price per category: auctions joined with their bids while open",
            {"auction": ("id", "category", "date_time", "expires"), "bid": ("auction", "price", "date_time")},
            _average_winning_price,
            """
            SELECT category, avg(final) AS average FROM (
                SELECT A.id, A.category, max(B.price) AS final
                FROM auction AS A JOIN bid AS B ON A.id = B.auction
                WHERE B.date_time BETWEEN A.date_time AND A.expires
                GROUP BY A.id, A.category
            ) GROUP BY category
            """,
            (("category", "int"), ("average", "float")),
        ),
        Query(
            "q9",
            "winning bids: each auction's highest bid while open",
            {"auction": ("id", "category", "date_time", "expires"), "bid": ("auction", "bidder", "price", "date_time")},
            _winning_bids,
            """
            SELECT A.id, A.category, B.price, B.bidder, B.date_time AS date_time_right
            FROM auction AS A JOIN bid AS B ON A.id = B.auction
            WHERE B.date_time BETWEEN A.date_time AND A.expires
            QUALIFY row_number() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time, B.bidder) = 1
            """,
            (("id", "int"), ("category", "int"), ("price", "int"), ("bidder", "int"), ("date_time_right", "time")),
        ),
        Query(
            "q7",
            "highest bid: the bids at the maximum price of each 10 s window, by an interval join",
            {"bid": ("auction", "bidder", "price", "date_time", "extra")},
            _highest_bids,
            """
            SELECT B.auction, B.price, B.bidder, B.date_time, B.extra
            FROM bid AS B JOIN (
                SELECT max(price) AS maxprice, epoch_ms(date_time) // 10000 * 10000 + 10000 AS window_end
                FROM bid GROUP BY window_end
            ) AS B1 ON B.price = B1.maxprice
            WHERE epoch_ms(B.date_time) BETWEEN B1.window_end - 10000 AND B1.window_end
            """,
            (("auction", "int"), ("price", "int"), ("bidder", "int"), ("date_time", "time"), ("extra", "text")),
        ),
        Query(
            "q3",
            "local item suggestion: auctions of category 10 joined with their sellers in OR, ID and CA",
            {"auction": ("id", "seller", "category"), "person": ("id", "name", "city", "state")},
            _local_item_suggestion,
            f"""
            SELECT P.name, P.city, P.state, A.id
            FROM auction AS A JOIN person AS P ON A.seller = P.id
            WHERE A.category = {LOCAL_CATEGORY} AND P.state IN {LOCAL_STATES}
            """,
            (("name", "text"), ("city", "text"), ("state", "text"), ("id", "int")),
        ),
        Query(
            "q8",
            "new users: persons who opened an auction in the 10 s window they joined in",
            {"person": ("id", "name", "date_time"), "auction": ("seller", "date_time")},
            _new_users,
            """
            SELECT P.id, P.name, epoch_ms(P.starttime) AS window_start
            FROM (SELECT id, name, epoch_ms(date_time) // 10000 * 10000 AS starttime FROM person
                  GROUP BY id, name, starttime) P
            JOIN (SELECT seller, epoch_ms(date_time) // 10000 * 10000 AS starttime FROM auction
                  GROUP BY seller, starttime) A
            ON P.id = A.seller AND P.starttime = A.starttime
            """,
            (("id", "int"), ("name", "text"), ("window_start", "time")),
        ),
    ]
}


# -- running a query ---------------------------------------------------------------------


def input_stream(data: str, kind: str, query: Query) -> rs.Stream:
    """The events of ``kind`` under ``data/<kind>`` as a stream of the columns ``query`` reads.

    Its event time is ``date_time`` when the query reads it.
    """
    columns = query.inputs[kind]
    time_column = "date_time" if "date_time" in columns else None
    return rs.read_parquet(f"{data}/{kind}", columns=list(columns), time_column=time_column)


def run_raystream(query: Query, data: str | dict[str, rs.Stream], out: str, config: rs.RunConfig) -> dict[str, Any]:
    """Run ``query`` over its inputs (a dataset folder, or a stream per kind) into Parquet files under ``out``.

    Returns:
        The job's metrics (``run_seconds``, ``startup_seconds``, ``rows_read``...).
    """
    streams = {kind: input_stream(data, kind, query) for kind in query.inputs} if isinstance(data, str) else data
    return query.build(**streams).write_parquet(out, config).metrics()


def input_views(con: duckdb.DuckDBPyConnection, data: str, kinds: Sequence[str] = KINDS) -> None:
    """Make ``bid``, ``auction`` and ``person`` views over the Parquet files under ``data/<kind>``."""
    for kind in kinds:
        folder = _sql_text(f"{data}/{kind}")
        con.execute(f"CREATE OR REPLACE VIEW {kind} AS SELECT * FROM read_parquet('{folder}/**/*.parquet')")


def events_read(query: Query, events: int) -> int:
    """How many of the events ``0 .. events - 1`` are of the kinds ``query`` reads."""
    return sum(count_events(kind, 0, events) for kind in query.inputs)


def run_duckdb(con: duckdb.DuckDBPyConnection, query: Query, out_file: str) -> None:
    """Run ``query``'s SQL over the views ``bid``, ``auction`` and ``person`` into one Parquet file."""
    con.execute(f"COPY ({query.sql}) TO '{_sql_text(out_file)}' (FORMAT parquet)")


def fingerprint(con: duckdb.DuckDBPyConnection, query: Query, files: list[str]) -> tuple[int, int]:
    """The row count and the sum of the rows' hashes of Parquet ``files`` holding ``query``'s output."""
    if not files:
        return 0, 0
    listed = ", ".join(f"'{_sql_text(f)}'" for f in files)
    normalized = ", ".join(_normalized(name, kind) for name, kind in query.output)
    rows, total = con.execute(
        f"SELECT count(*), coalesce(sum(hash({normalized})), 0) FROM read_parquet([{listed}])"
    ).fetchone()  # type: ignore[misc]
    return int(rows), int(total)


def compare(con: duckdb.DuckDBPyConnection, query: Query, raystream_out: str, duckdb_out: str) -> dict[str, Any]:
    """Compare raystream's output folder with DuckDB's output file: equal row counts and row hashes."""
    ours = fingerprint(con, query, sorted(glob.glob(os.path.join(raystream_out, "*.parquet"))))
    theirs = fingerprint(con, query, [duckdb_out] if os.path.exists(duckdb_out) else [])
    return {"rows": ours[0], "duckdb_rows": theirs[0], "hash": str(ours[1]), "equal": ours == theirs}


def _normalized(name: str, kind: ColumnKind) -> str:
    column = f'"{name}"'
    if kind == "int":
        return f"{column}::BIGINT"
    if kind == "time":
        return f"epoch_ms({column}::TIMESTAMP)"
    if kind == "float":
        return f"round({column}::DOUBLE, 2)"
    return f"{column}::VARCHAR"


def _sql_text(value: str) -> str:
    return value.replace("'", "''")
