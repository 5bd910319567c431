"""Nexmark smoke test: every query through raystream equals DuckDB, and the generator and source replay exactly.

100k events (92k bids). No timing is asserted: the figures live in bench/README.md.
"""

from __future__ import annotations

import doctest
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.json as pajson
import pytest

import raystream as rs
from bench.nexmark.generate import json_lines, produce_kafka, write_parquet
from bench.nexmark.queries import QUERIES, SIDE_INPUT_KEYS, compare, events_read, input_views, run_duckdb, run_raystream
from raystream.datagen import KINDS, SCHEMAS, NexmarkGenerator, NexmarkSource, count_events

EVENTS = 100_000
SEED = 7
CONFIG = rs.RunConfig(parallelism=2, max_batch_rows=10_000)
GENERATOR = NexmarkGenerator(seed=SEED)


def by_content(table: pa.Table) -> pa.Table:
    """Rows in a canonical order: the bids' columns identify a row."""
    return table.sort_by([(name, "ascending") for name in ("date_time", "auction", "bidder", "price", "extra")])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_parquet(tmp_path_factory.mktemp("nexmark"), EVENTS, kinds=rs.datagen.KINDS, seed=SEED))


@pytest.fixture(scope="module")
def con(data_dir: str) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    input_views(connection, data_dir)
    yield connection
    connection.close()


# -- the queries ------------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("name", list(QUERIES))
def test_query_equals_duckdb(name: str, data_dir: str, con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    query = QUERIES[name]
    metrics = run_raystream(query, data_dir, str(tmp_path / "raystream"), CONFIG)
    run_duckdb(con, query, str(tmp_path / "duckdb.parquet"))
    check = compare(con, query, str(tmp_path / "raystream"), str(tmp_path / "duckdb.parquet"))
    assert check["rows"] > 0
    assert check["equal"], check
    side_input = SIDE_INPUT_KEYS if name == "q13" else 0  # q13 reads its table too, once
    assert metrics["rows_read"] == events_read(query, EVENTS) + side_input
    assert metrics["late_rows"] == 0
    # Where the time went, per layer: the readers, then each keyed stage by name.
    stages = {
        "w2": {"window"},
        "q5": {"window", "top"},
        "q4": {"join", "agg", "agg-2"},
        "q9": {"join", "top"},
        "q7": {"window", "join"},
        "q8": {"join", "agg"},
    }
    layers = stages.get(name, set())
    assert set(metrics["busy_seconds"]) == set(metrics["cpu_seconds"]) == {"readers", *layers}
    assert all(seconds > 0 for seconds in metrics["busy_seconds"].values())


@pytest.mark.usefixtures("ray_local")
def test_the_profiler_shows_where_a_readers_time_goes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.nexmark import profile

    monkeypatch.setattr("sys.argv", ["profile", "--query", "w2", "--events", str(EVENTS), "--seed", str(SEED)])
    profile.main()
    out = capsys.readouterr().out
    assert "w2: one of 2 readers, " in out and "bids per CPU second" in out
    assert "_group_by" in out  # the reader's pre-aggregation, among the functions listed


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("name", ["q5", "w2"])
def test_windowed_query_on_the_datagen_source_equals_duckdb(
    name: str, con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    query = QUERIES[name]
    bids = rs.datagen.nexmark(events=EVENTS, seed=SEED, splits=3, block_events=4_000)
    run_raystream(query, {"bid": bids}, str(tmp_path / "raystream"), CONFIG)
    run_duckdb(con, query, str(tmp_path / "duckdb.parquet"))
    assert compare(con, query, str(tmp_path / "raystream"), str(tmp_path / "duckdb.parquet"))["equal"]


@pytest.mark.usefixtures("ray_local")
def test_the_source_reads_every_event_once_at_any_parallelism() -> None:
    expected = by_content(GENERATOR.table("bid", 0, EVENTS))
    for parallelism in (1, 3):
        config = rs.RunConfig(parallelism=parallelism, max_batch_rows=7_000)
        out = rs.datagen.nexmark(events=EVENTS, seed=SEED, block_events=3_000).to_arrow(config)
        assert by_content(out).equals(expected)


# -- the generator -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_generating_a_range_equals_slicing_the_full_range(kind: str) -> None:
    full = GENERATOR.table(kind, 0, EVENTS)  # type: ignore[arg-type]
    assert full.schema == SCHEMAS[kind]
    assert full.num_rows == count_events(kind, 0, EVENTS)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    for start, stop in [(0, 1), (49, 51), (12_345, 12_346), *np.sort(rng.integers(0, EVENTS, (5, 2))).tolist()]:
        part = GENERATOR.table(kind, start, stop)  # type: ignore[arg-type]
        before = count_events(kind, 0, start)  # type: ignore[arg-type]
        assert part.equals(full.slice(before, count_events(kind, start, stop))), (start, stop)  # type: ignore[arg-type]
    assert not NexmarkGenerator(seed=SEED + 1).table(kind, 0, 1_000).equals(full.slice(0, full.num_rows // 100))  # type: ignore[arg-type]


def test_bids_follow_the_nexmark_distributions() -> None:
    table = GENERATOR.table("bid", 0, EVENTS)
    bids = table.to_pandas()
    assert bids["auction"].min() >= 1000 and bids["bidder"].min() >= 1000
    assert 0.72 < (bids["auction"] % 2 == 0).mean() < 0.78  # the hot half of the bids, and half of the others
    assert bids["price"].min() >= 100 and bids["price"].max() <= 100_000_000
    extra = bids["extra"].str.len().mean() + 32
    assert 95 < extra < 105  # a bid is padded to about 100 bytes
    times = table.column("date_time").cast(pa.int64()).to_numpy()
    events = np.flatnonzero(np.arange(EVENTS) % 50 >= 4)
    assert (times == GENERATOR.base_time_ms + events // 10).all()  # base + e * 100 us, in ms


def test_the_docstring_examples_run() -> None:
    import raystream.datagen
    import raystream.datagen._nexmark

    for module in (raystream.datagen, raystream.datagen._nexmark):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_json_lines_read_back_as_the_same_table() -> None:
    for kind in KINDS:
        table = GENERATOR.table(kind, 0, 5_000)  # type: ignore[arg-type]
        text = "\n".join(json_lines(table).to_pylist()).encode()
        options = pajson.ParseOptions(explicit_schema=SCHEMAS[kind])
        assert pajson.read_json(io.BytesIO(text), parse_options=options).equals(table)


# -- the source's contract ---------------------------------------------------------------------


def read_all(source: NexmarkSource, split: rs.Split, max_rows: int) -> list[tuple[int, pa.Table]]:
    reader = source.open_split(split, None)
    batches = []
    while (batch := reader.next_batch(max_rows)) is not None:
        assert batch.num_rows <= max_rows
        batches.append((reader.position(), batch))
    return batches


def test_the_source_is_replayable_by_offset() -> None:
    source = NexmarkSource("bid", EVENTS, GENERATOR, num_splits=3, block_events=1_000)
    splits = source.splits(parallelism=2)
    assert len(splits) == 3
    everything = []
    for split in splits:
        batches = read_all(source, split, max_rows=777)
        everything += [batch for _, batch in batches]
        middle = len(batches) // 2
        position = batches[middle][0]
        # Opened again at a position, a split goes on with exactly the rows that came after it.
        resumed = read_all(source, split, 777)[middle + 1 :]
        again = source.open_split(split, position)
        rest = []
        while (batch := again.next_batch(777)) is not None:
            rest.append(batch)
        assert pa.concat_tables(rest).equals(pa.concat_tables([b for _, b in resumed]))
        # A replayed epoch re-reads exactly up to the logged position.
        replay = source.open_split(split, batches[middle - 1][0])
        replayed = replay.read_until(position, 777)
        assert replayed is not None and replayed.equals(batches[middle][1])
        assert replay.position() == position
    assert by_content(pa.concat_tables(everything)).equals(by_content(GENERATOR.table("bid", 0, EVENTS)))


def test_an_unbounded_source_emits_only_events_whose_time_has_come() -> None:
    start_ms = int(time.time() * 1000) - 2_000  # two seconds of events are due at once, then 1,000 per second
    generator = NexmarkGenerator(seed=SEED, rate=1_000, base_time_ms=start_ms)
    source = NexmarkSource("bid", None, generator, unbounded=True, num_splits=2, block_events=100)
    assert not source.bounded
    split = source.splits(parallelism=2)[0]
    reader = source.open_split(split, None)
    first = reader.next_batch(100_000)
    assert first is not None and 0 < first.num_rows < 2_000
    deadline = time.time() + 5
    later = reader.next_batch(100_000)
    while later is not None and later.num_rows == 0 and time.time() < deadline:
        later = reader.next_batch(100_000)
    now_ms = time.time() * 1000
    assert later is not None and later.num_rows > 0
    for batch in (first, later):
        times = batch.column("date_time").cast(pa.int64()).to_numpy()
        assert times.max() <= now_ms
    # Whatever the clock did, the rows up to a position are the same when replayed.
    replay = source.open_split(split, None).read_until(reader.position(), 100_000)
    assert replay is not None and replay.equals(pa.concat_tables([first, later]))


@pytest.mark.usefixtures("ray_local")
def test_an_unbounded_job_runs_at_the_rate() -> None:
    began = time.perf_counter()
    job = rs.datagen.nexmark(events=20_000, unbounded=True, rate=10_000, seed=SEED).start(CONFIG)
    job.wait(60)
    assert time.perf_counter() - began > 1.5  # 20k events take 2 s of wall clock at 10k/s
    assert len(job.results()) == count_events("bid", 0, 20_000)


def test_plan_errors_name_the_argument() -> None:
    with pytest.raises(rs.PlanError, match="events=N"):
        rs.datagen.nexmark()
    with pytest.raises(rs.PlanError, match="kind must be one of"):
        rs.datagen.nexmark(10, kind="bids")  # type: ignore[arg-type]
    with pytest.raises(rs.PlanError, match="rate must be a positive"):
        rs.datagen.nexmark(10, rate=0)


# -- Kafka ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_local")
def test_bids_produced_to_kafka_read_back(kafka_broker: object, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=2)
    servers = kafka_broker.bootstrap_servers  # type: ignore[attr-defined]
    assert produce_kafka(topic, servers, 10_000, seed=SEED) == count_events("bid", 0, 10_000)
    stream = rs.read_kafka(topic, servers, schema=SCHEMAS["bid"], time_column="date_time", stop="latest")
    assert by_content(stream.to_arrow(CONFIG)).equals(by_content(GENERATOR.table("bid", 0, 10_000)))
