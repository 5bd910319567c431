"""File sources: Hive partitions, start/end pruning before any read, event-time order, progress and watching."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from test_file_sources import _read_split, check_resume_everywhere, read_all

import raystream as rs
import raystream.sources.files as files_module
from raystream.errors import PlanError
from raystream.sources.base import Source
from raystream.sources.files import CsvSource, JsonSource, ParquetSource, TextSource

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
HOURS = [0, 12]
ROWS_PER_FILE = 10
UTC = timezone.utc


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def _events(day: str, hour: int) -> pa.Table:
    """Ten events a minute apart from the start of ``day`` ``hour``."""
    base = _ms(day) + hour * 3_600_000
    ts = pa.array([base + i * 60_000 for i in range(ROWS_PER_FILE)], pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    return pa.table({"ts": ts, "v": pa.array(range(ROWS_PER_FILE), pa.int64())})


def _write(path: Path, table: pa.Table, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=3)
    elif fmt == "csv":
        pa_csv.write_csv(table, path)
    else:
        rows = [{**row, "ts": row["ts"].isoformat()} for row in table.to_pylist()]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts every file the file sources open (footers, first blocks and reads) by its path."""
    counts: Counter[str] = Counter()
    real = files_module._open_file

    def counting(fs: object, path: str) -> pa.NativeFile:
        counts[path] += 1
        return real(fs, path)  # type: ignore[arg-type]

    monkeypatch.setattr(files_module, "_open_file", counting)
    return counts


def _hive_tree(root: Path, fmt: str) -> Path:
    """``root/dt=<day>/hour=<hh>/part-0.<fmt>`` for three days and two hours each."""
    for day in DAYS:
        for hour in HOURS:
            _write(root / f"dt={day}" / f"hour={hour:02d}" / f"part-0.{fmt}", _events(day, hour), fmt)
    return root


SOURCES: dict[str, Callable[..., Source]] = {"parquet": ParquetSource, "csv": CsvSource, "json": JsonSource}


def _ts_schema() -> pa.Schema:
    return pa.schema([("ts", pa.timestamp("ms", tz="UTC")), ("v", pa.int64())])


def _make(fmt: str, path: Path, **kwargs: object) -> Source:
    if fmt == "json" and "schema" not in kwargs:
        kwargs["schema"] = _ts_schema()  # JSON has no timestamp type of its own.
    return SOURCES[fmt](str(path), **kwargs)


# --------------------------------------------------------------------------- #
# Hive partitions                                                             #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_hive_folders_are_typed_columns_in_the_plan_schema(tmp_path: Path, fmt: str) -> None:
    source = _make(fmt, _hive_tree(tmp_path, fmt))
    assert source.schema().names == ["ts", "v", "dt", "hour"]
    # hour=00/12 are integers; dt=2026-01-01 stays a string, like pyarrow datasets.
    assert source.schema().field("dt").type == pa.string()
    assert source.schema().field("hour").type == pa.int64()
    table = read_all(source, 7)
    assert table.schema == source.schema()
    assert table.num_rows == len(DAYS) * len(HOURS) * ROWS_PER_FILE
    combos = set(zip(table["dt"].to_pylist(), table["hour"].to_pylist(), strict=True))
    assert combos == {(day, hour) for day in DAYS for hour in HOURS}
    # Each row's folders match its event time: the partition columns really come from its own file.
    day_of_ts = pc.strftime(table["ts"], format="%Y-%m-%d").to_pylist()
    assert day_of_ts == table["dt"].to_pylist()


def test_text_gets_partition_columns(tmp_path: Path) -> None:
    (tmp_path / "lang=en").mkdir()
    (tmp_path / "lang=de").mkdir()
    (tmp_path / "lang=en" / "a.txt").write_text("hello\nworld\n")
    (tmp_path / "lang=de" / "a.txt").write_text("hallo\n")
    source = TextSource(str(tmp_path))
    assert source.schema() == pa.schema([("line", pa.string()), ("lang", pa.string())])
    assert read_all(source, 1).to_pydict() == {"line": ["hallo", "hello", "world"], "lang": ["de", "en", "en"]}
    check_resume_everywhere(source, 1)


def test_partition_rules(tmp_path: Path) -> None:
    table = pa.table({"x": [1, 2]})
    # A folder without '=' is not a partition; values are URL-decoded; empty and the Hive null are null.
    for folder, name in [
        ("raw/k=a%2Fb/n=1", "p.parquet"),
        ("k=plain/n=-7", "p.parquet"),
        ("k=/n=__HIVE_DEFAULT_PARTITION__", "p.parquet"),
    ]:
        (tmp_path / folder).mkdir(parents=True)
        pq.write_table(table, tmp_path / folder / name)
    source = ParquetSource(str(tmp_path))
    assert source.schema() == pa.schema([("x", pa.int64()), ("k", pa.string()), ("n", pa.int64())])
    got = read_all(source).to_pydict()
    assert sorted(zip(got["k"], got["n"], strict=True), key=str) == sorted(
        [(None, None), (None, None), ("a/b", 1), ("a/b", 1), ("plain", -7), ("plain", -7)], key=str
    )
    # A folder inside the path given is not a partition of that path.
    inside = ParquetSource(str(tmp_path / "k=plain"))
    assert inside.schema().names == ["x", "n"]
    # A single file named directly has no partition columns.
    single = ParquetSource(str(tmp_path / "k=plain" / "n=-7" / "p.parquet"))
    assert single.schema().names == ["x"]


def test_partition_type_is_inferred_over_every_file(tmp_path: Path) -> None:
    for value in ["1", "02", "x3"]:
        (tmp_path / f"id={value}").mkdir()
        pq.write_table(pa.table({"x": [1]}), tmp_path / f"id={value}" / "p.parquet")
    source = ParquetSource(str(tmp_path))
    assert source.schema().field("id").type == pa.string()  # One value is not an integer: all are strings.
    assert sorted(read_all(source)["id"].to_pylist()) == ["02", "1", "x3"]


def test_partition_conflicts_and_explicit_types(tmp_path: Path) -> None:
    (tmp_path / "x=5").mkdir()
    pq.write_table(pa.table({"x": [1], "y": [2]}), tmp_path / "x=5" / "p.parquet")
    with pytest.raises(PlanError, match=r"column 'x' is both in the files and a partition folder.*partitioning=None"):
        ParquetSource(str(tmp_path))
    assert read_all(ParquetSource(str(tmp_path), partitioning=None)).to_pydict() == {"x": [1], "y": [2]}
    # With schema=, a column that is a folder comes from the folder, in the schema's type.
    schema = pa.schema([("y", pa.int32()), ("x", pa.string())])
    assert read_all(ParquetSource(str(tmp_path), schema=schema)).to_pydict() == {"y": [2], "x": ["5"]}
    bad = pa.schema([("y", pa.int64()), ("x", pa.timestamp("s"))])
    with pytest.raises(PlanError, match=r"partition folder 'x=5' of '.*p\.parquet' is not a timestamp"):
        ParquetSource(str(tmp_path), schema=bad)
    # Parquet columns= may name partition columns.
    assert read_all(ParquetSource(str(tmp_path), partitioning="hive", columns=["y"])).to_pydict() == {"y": [2]}
    with pytest.raises(PlanError, match=r"partitioning must be 'hive' or None"):
        ParquetSource(str(tmp_path), partitioning="directory")


def test_csv_schema_with_partition_columns(tmp_path: Path) -> None:
    (tmp_path / "country=DE").mkdir()
    (tmp_path / "country=DE" / "a.csv").write_text("user,price\nada,1.5\n")
    schema = pa.schema([("user", pa.string()), ("price", pa.float32()), ("country", pa.string())])
    source = CsvSource(str(tmp_path), schema=schema)
    assert read_all(source).to_pydict() == {"user": ["ada"], "price": [1.5], "country": ["DE"]}


# --------------------------------------------------------------------------- #
# start= / end=                                                               #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_partition_pruned_backfill_opens_only_the_files_of_its_range(
    tmp_path: Path, fmt: str, opened: Counter[str]
) -> None:
    root = _hive_tree(tmp_path, fmt)
    source = _make(fmt, root, time_column="ts", start="2026-01-02T12:05:00", end=datetime(2026, 1, 3, 0, 2))
    in_range = [f"dt=2026-01-02/hour=12/part-0.{fmt}", f"dt=2026-01-03/hour=00/part-0.{fmt}"]
    # Plan time opened only the files in range (footers, first blocks), not the four others.
    assert sorted(Path(p).relative_to(root).as_posix() for p in opened) == in_range
    assert [Path(f).relative_to(root).as_posix() for f in source.files()] == in_range  # type: ignore[attr-defined]
    opened.clear()
    table = read_all(source, 4)
    assert sorted(Path(p).relative_to(root).as_posix() for p in opened) == in_range
    # Half-open: 12:05 and 00:01 are in, 00:02 is out.
    got = [t.strftime("%m-%d %H:%M") for t in table["ts"].to_pylist()]
    assert got == [f"01-02 12:0{m}" for m in range(5, 10)] + ["01-03 00:00", "01-03 00:01"]


def test_parquet_row_groups_are_pruned_by_statistics_before_reading(tmp_path: Path, opened: Counter[str]) -> None:
    ts = pa.array(range(0, 100_000, 1000), pa.int64())  # 100 rows, one per second, as epoch ms.
    pq.write_table(pa.table({"ts": ts, "v": range(100)}), tmp_path / "a.parquet", row_group_size=10)
    source = ParquetSource(
        str(tmp_path), time_column="ts", start=datetime(1970, 1, 1, 0, 0, 25), end="1970-01-01T00:00:41"
    )
    (split,) = source.splits(1)
    assert split.split_id == "a.parquet#rg2-4"  # Rows 20-49: only the groups that overlap [25 s, 41 s).
    assert split.min_event_time_ms == 25_000
    assert sum(opened.values()) == 1  # The footer.
    assert read_all(source)["v"].to_pylist() == list(range(25, 41))
    # A gap in the kept groups splits the run: an int64 column of epoch ms that is not sorted.
    shuffled = pa.array([*range(0, 10), *range(1000, 1010), *range(20, 30)], pa.int64())
    pq.write_table(pa.table({"ts": shuffled}), tmp_path / "a.parquet", row_group_size=10)
    gap = ParquetSource(str(tmp_path), time_column="ts", start=datetime(1970, 1, 1), end="1970-01-01T00:00:00.500")
    assert [s.split_id for s in gap.splits(1)] == ["a.parquet#rg0-0", "a.parquet#rg2-2"]


@pytest.mark.parametrize(
    "kind",
    [
        pa.timestamp("s"),
        pa.timestamp("ms", tz="Europe/Berlin"),
        pa.timestamp("us", tz="UTC"),
        pa.timestamp("ns"),
        pa.int64(),
    ],
)
def test_time_column_of_any_unit_and_zone_compares_in_utc(tmp_path: Path, kind: pa.DataType) -> None:
    seconds = list(range(0, 60))  # 00:00:00 .. 00:00:59 UTC on 2026-01-01
    base = _ms("2026-01-01")
    ms = pa.array([base + s * 1000 for s in seconds], pa.int64())
    column = ms if pa.types.is_int64(kind) else ms.cast(pa.timestamp("ms", tz="UTC")).cast(kind)
    pq.write_table(pa.table({"ts": column, "s": seconds}), tmp_path / "a.parquet", row_group_size=7)
    start = datetime(2026, 1, 1, 1, 0, 10, tzinfo=timezone(timedelta(hours=1)))  # 00:00:10 UTC
    source = ParquetSource(str(tmp_path), time_column="ts", start=start, end="2026-01-01T00:00:20.000001Z")
    assert read_all(source, 3)["s"].to_pylist() == list(range(10, 21))
    assert min(s.min_event_time_ms for s in source.splits(1)) == base + 10_000  # type: ignore[type-var]
    check_resume_everywhere(source, 3)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_filtered_reads_resume_exactly(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_module, "_FILTER_CHUNK_ROWS", 4)
    ts = pa.array([_ms("2026-01-01") + (i % 7) * 1000 for i in range(40)], pa.int64())  # In and out of range, mixed.
    _write(tmp_path / f"a.{fmt}", pa.table({"ts": ts, "i": range(40)}), "parquet" if fmt == "parquet" else fmt)
    source = _make(fmt, tmp_path, time_column="ts", start="2026-01-01T00:00:02", end="2026-01-01T00:00:05")
    expected = [i for i in range(40) if 2 <= i % 7 < 5]
    for max_rows in (1, 2, 5, 100):
        assert read_all(source, max_rows)["i"].to_pylist() == expected
        check_resume_everywhere(source, max_rows)


def test_start_end_errors_at_construction(tmp_path: Path) -> None:
    _hive_tree(tmp_path, "parquet")
    with pytest.raises(PlanError, match=r"read_parquet: start= and end= .* need time_column="):
        ParquetSource(str(tmp_path), start="2026-01-01")
    with pytest.raises(PlanError, match=r"read_csv: start= and end= .* need time_column="):
        rs.read_csv(str(tmp_path / "nope"), end="2026-01-01")  # Refused before the path is even listed.
    with pytest.raises(PlanError, match=r"start='2026-01-02' is not before end='2026-01-01'"):
        ParquetSource(str(tmp_path), time_column="ts", start="2026-01-02", end="2026-01-01")
    with pytest.raises(PlanError, match=r"start='yesterday' is not a time"):
        ParquetSource(str(tmp_path), time_column="ts", start="yesterday")
    with pytest.raises(PlanError, match=r"time_column 'when' is not a column; the source has columns: ts, v, dt"):
        ParquetSource(str(tmp_path), time_column="when", start=date(2026, 1, 1))
    with pytest.raises(PlanError, match=r"time_column 'dt' has type string; use a timestamp"):
        ParquetSource(str(tmp_path), time_column="dt")
    with pytest.raises(PlanError, match=r"partition_time= .* needs time_column="):
        ParquetSource(str(tmp_path), partition_time="dt")
    with pytest.raises(PlanError, match=r"partition_time names 'day', which is not a partition folder"):
        ParquetSource(str(tmp_path), time_column="ts", partition_time="day")


def test_partition_time_rules(tmp_path: Path, opened: Counter[str]) -> None:
    for folder in ["date=20260101", "date=20260102", "date=2026-01-03T05"]:
        (tmp_path / folder).mkdir()
        pq.write_table(pa.table({"ts": pa.array([_ms("2026-01-01")], pa.int64())}), tmp_path / folder / "p.parquet")
    source = ParquetSource(str(tmp_path), time_column="ts", start="2026-01-02T12:00", end="2026-01-03T05:30")
    # 20260101 (a day) is out; 20260102 overlaps; 2026-01-03T05 (an hour) overlaps. Rows are still filtered by value.
    assert sorted(Path(f).parent.name for f in source.files()) == ["date=2026-01-03T05", "date=20260102"]
    assert read_all(source).num_rows == 0
    assert ParquetSource(str(tmp_path), time_column="ts", start="2026-01-02", partition_time=None).files() != []
    (tmp_path / "date=soon").mkdir()
    pq.write_table(pa.table({"ts": pa.array([1], pa.int64())}), tmp_path / "date=soon" / "p.parquet")
    with pytest.raises(
        PlanError, match=r"partition folders of '.*date=soon.*' give no time range.*partition_time=None"
    ):
        ParquetSource(str(tmp_path), time_column="ts", start="2026-01-02")


def test_min_event_time_comes_from_statistics_then_partitions(tmp_path: Path) -> None:
    for fmt in ("parquet", "csv"):
        _hive_tree(tmp_path / fmt, fmt)
    parquet = ParquetSource(str(tmp_path / "parquet"), time_column="ts", target_split_rows=3)
    by_id = {s.split_id: s.min_event_time_ms for s in parquet.splits(1)}
    assert by_id["dt=2026-01-01/hour=00/part-0.parquet#rg1-1"] == _ms("2026-01-01T00:03")  # Row group statistics.
    csv = CsvSource(str(tmp_path / "csv"), time_column="ts")
    by_id = {s.split_id: s.min_event_time_ms for s in csv.splits(1)}
    assert by_id["dt=2026-01-02/hour=12/part-0.csv"] == _ms("2026-01-02T12:00")  # The partition's hour.
    started = CsvSource(str(tmp_path / "csv"), time_column="ts", start="2026-01-02T12:30")
    assert min(s.min_event_time_ms for s in started.splits(1)) == _ms("2026-01-02T12:30")  # type: ignore[type-var]
    assert all(s.min_event_time_ms is None for s in CsvSource(str(tmp_path / "csv")).splits(1))


def test_metrics_report_file_rows_bytes_and_event_time(tmp_path: Path) -> None:
    _hive_tree(tmp_path, "parquet")
    source = ParquetSource(str(tmp_path / "dt=2026-01-01" / "hour=00"), time_column="ts")
    (split,) = source.splits(1)
    reader = source.open_split(split, None)
    assert reader.metrics()["bytes_read"] == 0
    reader.next_batch(4)
    progress = reader.metrics()
    assert progress["file"].endswith("hour=00/part-0.parquet")
    assert progress["rows_read"] == 4 and 0 < progress["bytes_read"] < progress["bytes_total"]
    assert progress["event_time_ms"] == _ms("2026-01-01T00:03")
    assert "rows" not in progress  # The engine owns "rows" (rows per epoch).
    while reader.next_batch(4) is not None:
        pass
    reader.close()
    assert reader.metrics()["bytes_read"] == reader.metrics()["bytes_total"]

    (tmp_path / "a.csv").write_text("x\n1\n2\n")
    csv = CsvSource(str(tmp_path / "a.csv"))
    reader = csv.open_split(csv.splits(1)[0], None)
    _ = reader.next_batch(10), reader.next_batch(10)
    reader.close()
    assert reader.metrics() == {
        "file": str(tmp_path / "a.csv"),
        "rows_read": 2,
        "bytes_read": 6,
        "bytes_total": 6,
        "event_time_ms": None,
    }


# --------------------------------------------------------------------------- #
# Watching                                                                    #
# --------------------------------------------------------------------------- #


def _land(folder: Path, name: str, table: pa.Table, fmt: str) -> None:
    """Write a file elsewhere (a hidden name) and rename it into place, as a producer should."""
    hidden = folder / f".{name}.tmp"
    _write(hidden, table, fmt)
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    hidden.rename(target)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_watching_source_picks_up_landed_files_with_stable_ids(tmp_path: Path, fmt: str) -> None:
    _land(tmp_path, f"dt=2026-01-01/a.{fmt}", _events("2026-01-01", 0), fmt)
    source = _make(fmt, tmp_path, time_column="ts", watch=True, poll_interval="250ms")
    assert not source.bounded and source.discovers_splits and source.discovery_interval_s == 0.25
    first = source.splits(2)
    assert [s.split_id for s in first] == ([f"dt=2026-01-01/a.{fmt}" + ("#rg0-3" if fmt == "parquet" else "")])
    assert source.splits(2) == first  # Nothing new: the same splits.

    (tmp_path / "dt=2026-01-02").mkdir()
    (tmp_path / "dt=2026-01-02" / f"_b.{fmt}").write_text("being written")  # Hidden: ignored.
    _land(tmp_path, f"dt=2026-01-02/b.{fmt}", _events("2026-01-02", 0), fmt)
    second = source.splits(2)
    assert second[: len(first)] == first  # Old ids stay, with the same payloads.
    new = second[len(first) :]
    assert [s.split_id.split("#")[0] for s in new] == [f"dt=2026-01-02/b.{fmt}"]
    assert new[0].min_event_time_ms == _ms("2026-01-02")
    rows = pa.concat_tables([b for s in new for b in _read_split(source, s, 100)])
    assert rows["dt"].to_pylist() == ["2026-01-02"] * ROWS_PER_FILE
    pickle.loads(pickle.dumps(source))  # Goes to reader actors.


def test_watching_an_empty_folder_needs_a_schema(tmp_path: Path) -> None:
    (tmp_path / "_SUCCESS").write_text("")
    with pytest.raises(PlanError, match=r"read_parquet: watch=True on '.*', which holds no data file yet.*schema="):
        ParquetSource(str(tmp_path), watch=True)
    with pytest.raises(PlanError, match=r"read_csv: watch=True on .*schema="):
        rs.read_csv(str(tmp_path / "not-yet"), watch=True)
    source = ParquetSource(str(tmp_path / "not-yet"), schema=_ts_schema(), time_column="ts", watch=True)
    assert source.splits(1) == []
    _land(tmp_path / "not-yet", "dt=2026-01-01/a.parquet", _events("2026-01-01", 0), "parquet")
    (split,) = source.splits(1)
    # dt is not in schema=, so it is not read; the partition still orders the split.
    assert pa.concat_tables(_read_split(source, split, 100)).schema == _ts_schema()
    text = TextSource(str(tmp_path / "lines"), watch=True, poll_interval=timedelta(seconds=2))
    assert text.splits(1) == [] and text.discovery_interval_s == 2
    with pytest.raises(PlanError, match=r"poll_interval: 'often' is not a duration"):
        ParquetSource(str(tmp_path / "not-yet"), schema=_ts_schema(), watch=True, poll_interval="often")


def test_watched_parquet_file_that_does_not_fit_is_named(tmp_path: Path) -> None:
    _land(tmp_path, "a.parquet", _events("2026-01-01", 0), "parquet")
    source = ParquetSource(str(tmp_path), watch=True)
    _land(tmp_path, "b.parquet", pa.table({"other": [1]}), "parquet")
    with pytest.raises(PlanError, match=r"column 'ts' is not in '.*b\.parquet'"):
        source.splits(1)


def test_source_functions_pass_the_new_arguments(tmp_path: Path) -> None:
    _hive_tree(tmp_path, "parquet")
    stream = rs.read_parquet(str(tmp_path), time_column="ts", start="2026-01-03", columns=["ts", "dt"])
    source = stream.node.source  # type: ignore[attr-defined]
    assert isinstance(source, ParquetSource)
    assert source.schema().names == ["ts", "dt"]
    assert len(source.files()) == 2
    assert all(s.min_event_time_ms is not None for s in source.splits(1))
