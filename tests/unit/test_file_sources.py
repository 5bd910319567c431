"""File sources read every row exactly once, resume exactly, and fail early with clear errors."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from raystream.errors import PlanError, RaystreamError
from raystream.sources.base import Source, Split
from raystream.sources.files import CsvSource, JsonSource, ParquetSource, TextSource

ROWS = 53


@pytest.fixture
def table() -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(ROWS), pa.int64()),
            "price": pa.array([i * 0.5 for i in range(ROWS)], pa.float64()),
            "name": pa.array([f"item-{i}" if i % 5 else None for i in range(ROWS)], pa.string()),
        }
    )


@pytest.fixture
def memory_root() -> Iterator[str]:
    root = f"memory://raystream-test-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root.removeprefix("memory:/")):
        fs.rm(root.removeprefix("memory:/"), recursive=True)


@pytest.fixture
def csv_table(table: pa.Table) -> pa.Table:
    """``table`` as CSV gives it back: pyarrow reads an empty CSV field as an empty string, not null."""
    return table.set_column(2, "name", pc.fill_null(table["name"], ""))


# --------------------------------------------------------------------------- #
# Helpers                                                                     #
# --------------------------------------------------------------------------- #


def _read_split(source: Source, split: Split, max_rows: int, position: object = None) -> list[pa.Table]:
    reader = source.open_split(split, position)
    batches = []
    try:
        while (batch := reader.next_batch(max_rows)) is not None:
            assert 0 < batch.num_rows <= max_rows
            assert batch.schema == source.schema()
            batches.append(batch)
    finally:
        reader.close()
    return batches


def read_all(source: Source, max_rows: int = 1000) -> pa.Table:
    """Read every split of ``source`` in order, as a real reader actor would."""
    schema = source.schema()
    assert schema is not None
    batches = [b for split in source.splits(4) for b in _read_split(source, split, max_rows)]
    return pa.concat_tables(batches) if batches else schema.empty_table()


def check_resume_everywhere(source: Source, max_rows: int) -> None:
    """Stop after every batch of every split, reopen at the position: no row is lost or doubled."""
    for split in source.splits(4):
        expected = _read_split(source, split, max_rows)
        whole = pa.concat_tables(expected)
        for stop_after in range(len(expected) + 1):
            reader = source.open_split(split, None)
            head = [reader.next_batch(max_rows) for _ in range(stop_after)]
            position = pickle.loads(pickle.dumps(reader.position()))
            reader.close()
            tail = _read_split(source, split, max_rows, position)
            parts = [t for t in head + tail if t is not None]
            assert pa.concat_tables(parts).equals(whole), (split.split_id, stop_after, position)


def write_csv(path: Path, table: pa.Table, delimiter: str = ",") -> None:
    pa_csv.write_csv(table, path, write_options=pa_csv.WriteOptions(delimiter=delimiter))


def write_ndjson(path: Path, table: pa.Table) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))


# --------------------------------------------------------------------------- #
# Parquet                                                                     #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("max_rows", [1, 7, 1000])
def test_parquet_reads_every_row_and_resumes_everywhere(tmp_path: Path, table: pa.Table, max_rows: int) -> None:
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=10)
    source = ParquetSource(str(tmp_path / "a.parquet"), target_split_rows=25)
    assert source.name == "read_parquet" and source.bounded and source.replayable
    assert source.schema() == table.schema
    assert read_all(source, max_rows).equals(table)
    check_resume_everywhere(source, max_rows)


def test_parquet_splits_group_row_groups(tmp_path: Path, table: pa.Table) -> None:
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=10)  # Row groups of 10, 10, 10, 10, 10, 3.
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=ROWS)  # One row group over the target.
    source = ParquetSource(str(tmp_path), target_split_rows=25)
    splits = source.splits(4)
    assert [s.split_id for s in splits] == [
        "a.parquet#rg0-1",
        "a.parquet#rg2-3",
        "a.parquet#rg4-5",
        "big.parquet#rg0-0",
    ]
    assert all(s.min_event_time_ms is None for s in splits)
    assert read_all(source).equals(pa.concat_tables([table, table]))


def test_parquet_max_rows_spans_row_groups_and_batches(tmp_path: Path, table: pa.Table) -> None:
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=4)
    source = ParquetSource(str(tmp_path / "a.parquet"))
    (split,) = source.splits(1)
    assert [b.num_rows for b in _read_split(source, split, 50)] == [50, 3]


def test_parquet_columns_select_and_order(tmp_path: Path, table: pa.Table) -> None:
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=10)
    source = ParquetSource(str(tmp_path), columns=["name", "id"])
    assert source.schema().names == ["name", "id"]
    assert read_all(source, 7).equals(table.select(["name", "id"]))
    with pytest.raises(PlanError, match=r"column 'nope' is not in '.*a\.parquet'.*columns="):
        ParquetSource(str(tmp_path), columns=["nope"])


def test_directories_globs_and_lists_skip_hidden_files(tmp_path: Path, table: pa.Table) -> None:
    (tmp_path / "data" / "day=2").mkdir(parents=True)
    (tmp_path / "data" / "_staging").mkdir()
    (tmp_path / "data" / ".hidden").mkdir()
    pq.write_table(table.slice(0, 20), tmp_path / "data" / "part-0.parquet")
    pq.write_table(table.slice(20), tmp_path / "data" / "day=2" / "part-1.parquet")
    for junk in ["_SUCCESS", ".part-0.parquet.crc", "_staging/part-9.parquet", ".hidden/part-8.parquet"]:
        (tmp_path / "data" / junk).write_bytes(b"not parquet")

    # A Hive folder below the path given is a column; a file outside it gets null.
    day = pa.array([None] * 20 + [2] * (ROWS - 20), pa.int64())
    by_dir = ParquetSource(str(tmp_path / "data") + "/")
    assert [s.split_id for s in by_dir.splits(1)] == ["day=2/part-1.parquet#rg0-0", "part-0.parquet#rg0-0"]
    assert read_all(by_dir).sort_by("id").equals(table.append_column("day", day))
    without_folders = ParquetSource(str(tmp_path / "data") + "/", partitioning=None)
    assert read_all(without_folders).sort_by("id").equals(table)

    by_glob = ParquetSource(str(tmp_path / "data" / "*.parquet"))
    assert read_all(by_glob).equals(table.slice(0, 20))
    by_deep_glob = ParquetSource(str(tmp_path / "data" / "day=*"))
    assert read_all(by_deep_glob).equals(table.slice(20).append_column("day", day.slice(20)))

    by_list = ParquetSource([str(tmp_path / "data" / "part-0.parquet"), str(tmp_path / "data" / "day=2")])
    assert read_all(by_list).equals(table)
    ids = [s.split_id for s in by_list.splits(1)]
    assert len(set(ids)) == 2 and ids[0].endswith("data/part-0.parquet#rg0-0")


def test_file_url_and_pickled_source(tmp_path: Path, table: pa.Table) -> None:
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=10)
    source = pickle.loads(pickle.dumps(ParquetSource(f"file://{tmp_path}")))
    split = pickle.loads(pickle.dumps(source.splits(1)[0]))
    assert pa.concat_tables(_read_split(source, split, 1000)).equals(table)


def test_missing_paths_name_the_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "clicks") + "/"
    with pytest.raises(FileNotFoundError, match=r"read_parquet: path '.*clicks/' does not exist; check the path"):
        ParquetSource(missing)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_SUCCESS").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"read_csv: directory '.*empty' contains no data file"):
        CsvSource(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"read_json: glob '.*\*\.json' matches no data file"):
        JsonSource(str(tmp_path / "*.json"))
    (tmp_path / "a.txt").write_text("a\n")
    with pytest.raises(FileNotFoundError, match=r"read_text: path '.*nope\.txt' does not exist"):
        TextSource([str(tmp_path / "a.txt"), str(tmp_path / "nope.txt")])


def test_credentials_stay_out_of_messages(memory_root: str) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        ParquetSource(f"{memory_root}/nope/", storage_options={"secret_token": "hunter2"})
    assert "nope/" in str(caught.value) and "hunter2" not in str(caught.value)


def test_parquet_conflicting_schemas_name_both_files(tmp_path: Path, table: pa.Table) -> None:
    pq.write_table(table, tmp_path / "a.parquet")
    pq.write_table(table.set_column(1, "price", table["price"].cast(pa.string())), tmp_path / "b.parquet")
    with pytest.raises(PlanError) as caught:
        ParquetSource(str(tmp_path))
    message = str(caught.value)
    assert message.startswith("read_parquet: schema of '")
    assert "b.parquet' conflicts with '" in message and "a.parquet'" in message
    assert "column 'price' is string in" in message and "double in" in message


def test_parquet_missing_column_and_unifiable_types(tmp_path: Path, table: pa.Table) -> None:
    pq.write_table(table, tmp_path / "a.parquet")
    pq.write_table(table.drop_columns(["name"]), tmp_path / "b.parquet")
    with pytest.raises(PlanError, match=r"column 'name' is missing from '.*b\.parquet'"):
        ParquetSource(str(tmp_path))
    # int32 and int64 unify to int64; column order may differ (the first file's wins).
    (tmp_path / "b.parquet").unlink()
    narrow = table.select(["name", "price", "id"]).set_column(2, "id", table["id"].cast(pa.int32()))
    pq.write_table(narrow, tmp_path / "b.parquet")
    source = ParquetSource(str(tmp_path))
    assert source.schema() == table.schema
    assert read_all(source).equals(pa.concat_tables([table, table]))


def test_parquet_unreadable_file_is_named(tmp_path: Path, table: pa.Table) -> None:
    pq.write_table(table, tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(PlanError, match=r"read_parquet: cannot read the Parquet footer of '.*b\.parquet'") as caught:
        ParquetSource(str(tmp_path))
    assert caught.value.__cause__ is not None


def test_memory_filesystem(memory_root: str, table: pa.Table, csv_table: pa.Table) -> None:
    fs = fsspec.filesystem("memory")
    base = memory_root.removeprefix("memory:/")
    with fs.open(f"{base}/t/a.parquet", "wb") as f:
        pq.write_table(table, f, row_group_size=20)
    with fs.open(f"{base}/c/a.csv", "wb") as f:
        pa_csv.write_csv(table, f)
    with fs.open(f"{base}/x/a.txt", "wb") as f:
        f.write(b"one\ntwo\n")
    source = pickle.loads(pickle.dumps(ParquetSource(f"{memory_root}/t/")))
    assert read_all(source, 7).equals(table)
    assert read_all(CsvSource(f"{memory_root}/c/*.csv")).equals(csv_table)
    assert read_all(TextSource(f"{memory_root}/x")).column("line").to_pylist() == ["one", "two"]


# --------------------------------------------------------------------------- #
# CSV                                                                         #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("max_rows", [1, 7, 1000])
def test_csv_reads_every_row_and_resumes_everywhere(
    tmp_path: Path, csv_table: pa.Table, max_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = csv_table
    write_csv(tmp_path / "a.csv", table)
    write_csv(tmp_path / "b.csv", table.slice(10))
    monkeypatch.setattr(CsvSource, "_block_bytes", 256)  # Several blocks per file.
    source = CsvSource(str(tmp_path))
    assert source.name == "read_csv"
    assert source.schema() == table.schema
    assert [s.split_id for s in source.splits(4)] == ["a.csv", "b.csv"]
    assert read_all(source, max_rows).equals(pa.concat_tables([table, table.slice(10)]))
    check_resume_everywhere(source, max_rows)


def test_csv_int_and_double_unify(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y\n1,a\n2,b\n")
    (tmp_path / "b.csv").write_text("y,x\nc,2.5\n")
    (tmp_path / "c.csv").write_text("x,y\n,d\n")  # An all-null column unifies with any type.
    source = CsvSource(str(tmp_path))
    assert source.schema() == pa.schema([("x", pa.float64()), ("y", pa.string())])
    assert read_all(source).to_pydict() == {"x": [1.0, 2.0, 2.5, None], "y": ["a", "b", "c", "d"]}


def test_csv_conflict_and_schema_override(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y\n1,a\n")
    (tmp_path / "b.csv").write_text("x,y\nhello,b\n")
    with pytest.raises(PlanError) as caught:
        CsvSource(str(tmp_path))
    message = str(caught.value)
    assert "'" + str(tmp_path / "b.csv") + "' conflicts with '" + str(tmp_path / "a.csv") + "'" in message
    assert "column 'x' is string in" in message and "or pass schema=" in message
    source = CsvSource(str(tmp_path), schema=pa.schema([("y", pa.string()), ("x", pa.string())]))
    assert read_all(source).to_pydict() == {"y": ["a", "b"], "x": ["1", "hello"]}
    with pytest.raises(PlanError, match=r"read_csv: cannot parse '.*a\.csv'.*'z'"):
        CsvSource(str(tmp_path), schema=pa.schema([("z", pa.string())]))


def test_csv_delimiter_compression_and_empty_files(tmp_path: Path, csv_table: pa.Table) -> None:
    table = csv_table
    write_csv(tmp_path / "a.csv", table, delimiter=";")
    with gzip.open(tmp_path / "b.csv.gz", "wb") as f:
        f.write((tmp_path / "a.csv").read_bytes())
    (tmp_path / "c.csv").write_bytes(b"")
    source = CsvSource(str(tmp_path), delimiter=";")
    assert [s.split_id for s in source.splits(1)] == ["a.csv", "b.csv.gz"]
    assert read_all(source, 7).equals(pa.concat_tables([table, table]))


def test_only_empty_files_need_a_schema(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"")
    (tmp_path / "b.json").write_text("\n\n")
    with pytest.raises(PlanError, match=r"read_csv: every file of '.*' is empty.*pass schema="):
        CsvSource(str(tmp_path / "a.csv"))
    with pytest.raises(PlanError, match=r"read_json: every file of '.*' is empty.*pass schema="):
        JsonSource(str(tmp_path / "b.json"))
    schema = pa.schema([("x", pa.int64())])
    assert read_all(CsvSource(str(tmp_path / "a.csv"), schema=schema)) == schema.empty_table()
    assert read_all(JsonSource(str(tmp_path / "b.json"), schema=schema)) == schema.empty_table()


def test_csv_bad_value_after_inference_is_a_dead_letter_or_names_the_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.csv").write_text("x\n" + "1\n" * 200 + "oops\n2\n")
    monkeypatch.setattr(CsvSource, "_block_bytes", 64)
    source = CsvSource(str(tmp_path))
    assert source.schema() == pa.schema([("x", pa.int64())]) and source.has_dead_letters
    rows, letters = read_with_dead_letters(source, 1000)
    assert rows.column("x").to_pylist() == [1] * 200 + [2]
    assert [(r["position"], r["raw"], r["split_id"]) for r in letters] == [(202, b"oops", "a.csv")]
    assert letters[0]["error"] == "column 'x': CSV conversion error to int64: invalid value 'oops'"
    strict = CsvSource(str(tmp_path), errors="fail")
    assert not strict.has_dead_letters
    with pytest.raises(RaystreamError, match=r"read_csv: line 202 of '.*a\.csv' cannot be decoded .*'oops'"):
        read_all(strict)
    with pytest.raises(PlanError, match=r"read_csv: errors must be 'dead_letter' or 'fail', got 'skip'"):
        CsvSource(str(tmp_path), errors="skip")  # type: ignore[arg-type]


# Line by line, after the header (line 1): which lines of BAD_CSV are rows (from 2), and the others' errors.
BAD_CSV = [
    b"id,t,name",
    b"1,1000,a",
    b"",  # blank: skipped
    b"2,2000",  # a field short
    b"3,3000,c,extra",  # a field too many
    b"four,4000,d",  # another type
    b"5,5000,caf\xc3\xa9\r",  # CRLF
    b"6,6000,bad \xff byte",  # not UTF-8
    b'7,7000,"open',  # a quote left open
    b'8,8000,"quoted, with a comma"',
    b"\r",  # blank too
    b"9,,",  # nulls
    b'10,10000,"say ""hi"""',
]
BAD_CSV_ERRORS = {
    4: "expected 3 columns, got 2",
    5: "expected 3 columns, got 4",
    6: "column 'id': CSV conversion error to int64: invalid value 'four'",
    8: "not valid UTF-8: byte 0xff",
    9: "a quoted field is not closed on its line",
}
CSV_SCHEMA = pa.schema([("id", pa.int64()), ("t", pa.int64()), ("name", pa.string())])


@pytest.mark.parametrize("schema", [None, CSV_SCHEMA])
@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("max_rows", [1, 2, 1000])
def test_csv_bad_lines_are_dead_letters_with_their_line_numbers_and_resume_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_rows: int, bounded: bool, schema: pa.Schema | None
) -> None:
    (tmp_path / "a.csv").write_bytes(b"\n".join(BAD_CSV) + b"\n")
    monkeypatch.setattr(CsvSource, "_block_bytes", 40)  # several blocks, some lines longer than one
    window = {"time_column": "t", "start": "1970-01-01T00:00:02", "end": "1970-01-01T00:00:09.5"} if bounded else {}
    source = CsvSource(str(tmp_path / "a.csv"), schema=schema, **window)
    if schema is None:  # inferred from the first block, whose bad lines do not stop it
        assert source.schema() == pa.schema([("id", pa.int64()), ("t", pa.int64()), ("name", pa.string())])
    rows, letters = read_with_dead_letters(source, max_rows)

    # The oracle: pandas reads the lines that are rows.
    good = [line for i, line in enumerate(BAD_CSV[1:], 2) if line.strip() and i not in BAD_CSV_ERRORS]
    # pyarrow reads an empty string field as "", an empty number as null.
    text = io.BytesIO(b"\n".join([BAD_CSV[0], *good]))
    expected = pd.read_csv(text, keep_default_na=False, na_values={"id": [""], "t": [""]})
    if bounded:
        expected = expected[(expected["t"] >= 2000) & (expected["t"] < 9500)]
    frame = rows.to_pandas()
    pd.testing.assert_frame_equal(frame, expected.reset_index(drop=True), check_dtype=False)
    rows.validate(full=True)
    assert [r["position"] for r in letters] == list(BAD_CSV_ERRORS)
    assert [r["raw"] for r in letters] == [BAD_CSV[i - 1] for i in BAD_CSV_ERRORS]
    for letter, error in zip(letters, BAD_CSV_ERRORS.values(), strict=True):
        assert letter["error"].startswith(error), letter
        assert letter["split_id"] == "a.csv" and letter["source"] == "read_csv"

    # Stopped after any batch and reopened at its position: no row and no dead letter lost or doubled.
    reader = source.open_split(source.splits(1)[0], None)
    head, head_letters = [], []
    while True:
        position = reader.position()
        tail, tail_letters = read_with_dead_letters(source, max_rows, position)
        both = pa.concat_tables([*head, tail], promote_options="default")
        assert both.equals(rows) and head_letters + tail_letters == letters, position
        batch = reader.next_batch(max_rows)
        head_letters += (reader.take_dead_letters() or pa.table({})).to_pylist()
        if batch is None:
            break
        head.append(batch)
    assert reader.position() == len(BAD_CSV) - 1  # lines consumed after the header
    reader.close()


# --------------------------------------------------------------------------- #
# JSON                                                                        #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("max_rows", [1, 7, 1000])
def test_json_reads_every_row_and_resumes_everywhere(
    tmp_path: Path, table: pa.Table, max_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_ndjson(tmp_path / "a.json", table)
    (tmp_path / "empty.json").write_text("\n")
    monkeypatch.setattr(JsonSource, "_block_bytes", 512)
    source = JsonSource(str(tmp_path))
    assert source.name == "read_json"
    assert source.schema() == table.schema
    assert [s.split_id for s in source.splits(1)] == ["a.json"]
    assert read_all(source, max_rows).equals(table)
    check_resume_everywhere(source, max_rows)


def test_json_unify_conflict_and_schema(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"x": 1, "y": "a"}\n{"x": 2, "y": null}\n')
    (tmp_path / "b.json").write_text('{"y": "c", "x": 2.5}\n')
    source = JsonSource(str(tmp_path))
    assert source.schema() == pa.schema([("x", pa.float64()), ("y", pa.string())])
    assert read_all(source).to_pydict() == {"x": [1.0, 2.0, 2.5], "y": ["a", None, "c"]}

    (tmp_path / "c.json").write_text('{"x": "three", "y": "d"}\n')
    # The conflict names the file that gave the column its current type (double, from b.json).
    with pytest.raises(
        PlanError, match=r"c\.json' conflicts with '.*b\.json': column 'x' is string in '.*' and double"
    ):
        JsonSource(str(tmp_path))
    schema = pa.schema([("y", pa.string())])
    assert read_all(JsonSource(str(tmp_path), schema=schema)).to_pydict() == {"y": ["a", None, "c", "d"]}

    (tmp_path / "d.json").write_text("not json\n")
    with pytest.raises(PlanError, match=r"read_json: cannot parse '.*d\.json'"):
        JsonSource(str(tmp_path / "d.json"))


def test_json_field_appearing_after_the_first_block_is_a_dead_letter_or_names_the_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.json").write_text('{"x": 1}\n' * 100 + '{"x": 2, "late": true}\n{"x": 3}\n')
    monkeypatch.setattr(JsonSource, "_block_bytes", 64)
    source = JsonSource(str(tmp_path))
    assert source.schema().names == ["x"] and source.has_dead_letters
    rows, letters = read_with_dead_letters(source, 1000)
    assert rows.column("x").to_pylist() == [1] * 100 + [3]
    assert [(r["position"], r["raw"], r["split_id"]) for r in letters] == [(101, b'{"x": 2, "late": true}', "a.json")]
    assert letters[0]["error"].startswith("field 'late' is not in the schema")
    strict = JsonSource(str(tmp_path), errors="fail")
    assert not strict.has_dead_letters
    with pytest.raises(RaystreamError, match=r"read_json: line 101 of '.*a\.json' cannot be decoded.*'late'"):
        read_all(strict)


# Line by line: which lines of BAD_JSON are rows (from 1), and the others' errors.
BAD_JSON = [
    b'{"id": 1, "t": 1000, "name": "a"}',
    b"",  # blank: skipped
    b"not json",
    b'{"id": 2, "t": 2000}{"id": 3, "t": 3000}',  # two values in one line
    b'{"id": 4, "t": 4000, "name": "bad \xff byte"}',  # not UTF-8
    b'{"id": "five", "t": 5000}',  # another type
    b"[6]",
    b'{"id": 7, "t": 7000, "name": "caf\xc3\xa9"}\r',
    b"   ",
    b'{"id": 8, "t": 8000, "name": null}',
    b'{"id": 9, "t": 9000, "name": "\\ud800"}',  # an unpaired surrogate escape
    b'{"id": 10, "t": 10000, "name": "z"}',
]
BAD_JSON_ERRORS = {
    3: "not JSON",
    4: "the record holds more than one JSON value",
    5: "not valid UTF-8",
    6: "column 'id' is string in this record but int64 in the schema",
    7: "the record is an array, not a JSON object",
    11: "column 'name'",
}
JSON_SCHEMA = pa.schema([("id", pa.int64()), ("t", pa.int64()), ("name", pa.string())])


def read_with_dead_letters(source: Source, max_rows: int, position: object = None) -> tuple[pa.Table, list[dict]]:
    """Read a one-file source's split to its end, as a reader actor does: a batch, then its dead letters."""
    (split,) = source.splits(1)
    reader = source.open_split(split, position)
    batches, letters = [], []
    while (batch := reader.next_batch(max_rows)) is not None:
        assert batch.num_rows <= max_rows
        batches.append(batch)
        if (taken := reader.take_dead_letters()) is not None:
            letters += taken.to_pylist()
    if (taken := reader.take_dead_letters()) is not None:
        letters += taken.to_pylist()
    reader.close()
    return pa.concat_tables(batches, promote_options="default") if batches else source.schema().empty_table(), letters


@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("max_rows", [1, 2, 1000])
def test_json_bad_lines_are_dead_letters_with_their_line_numbers_and_resume_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_rows: int, bounded: bool
) -> None:
    (tmp_path / "a.json").write_bytes(b"\n".join(BAD_JSON) + b"\n")
    monkeypatch.setattr(JsonSource, "_block_bytes", 48)  # several blocks, some lines longer than one
    window = {"time_column": "t", "start": "1970-01-01T00:00:02", "end": "1970-01-01T00:00:09.5"} if bounded else {}
    source = JsonSource(str(tmp_path / "a.json"), schema=JSON_SCHEMA, **window)
    rows, letters = read_with_dead_letters(source, max_rows)

    # The oracle: Python's json on the lines that are rows, then pandas for the time window.
    good = [json.loads(line) for i, line in enumerate(BAD_JSON, 1) if line.strip() and i not in BAD_JSON_ERRORS]
    expected = pd.DataFrame(good, columns=JSON_SCHEMA.names)
    if bounded:
        expected = expected[(expected["t"] >= 2000) & (expected["t"] < 9500)]
    pd.testing.assert_frame_equal(rows.to_pandas(), expected.reset_index(drop=True), check_dtype=False)
    rows.validate(full=True)
    assert [r["position"] for r in letters] == list(BAD_JSON_ERRORS)
    assert [r["raw"] for r in letters] == [BAD_JSON[i - 1] for i in BAD_JSON_ERRORS]
    for letter, error in zip(letters, BAD_JSON_ERRORS.values(), strict=True):
        assert letter["error"].startswith(error) and letter["split_id"] == "a.json" and letter["source"] == "read_json"

    # Stopped after any batch and reopened at its position: no row and no dead letter lost or doubled.
    reader = source.open_split(source.splits(1)[0], None)
    head, head_letters = [], []
    while True:
        position = reader.position()
        tail, tail_letters = read_with_dead_letters(source, max_rows, position)
        both = pa.concat_tables([*head, tail], promote_options="default")
        assert both.equals(rows) and head_letters + tail_letters == letters, position
        batch = reader.next_batch(max_rows)
        head_letters += (reader.take_dead_letters() or pa.table({})).to_pylist()
        if batch is None:
            break
        head.append(batch)
    assert reader.position() == len(BAD_JSON)  # lines consumed
    reader.close()


def test_json_bad_lines_in_the_first_block_do_not_stop_inference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.json").write_bytes(b'oops\n{"x": 1, "y": null}\n{"x": "one"}\n{"x": 2, "y": "b"}\n')
    (tmp_path / "b.json").write_bytes(b"\n" * 100 + b'{"x": 3, "y": "c"}\n')  # blank blocks first
    monkeypatch.setattr(JsonSource, "_block_bytes", 64)
    source = JsonSource(str(tmp_path))
    assert source.schema() == pa.schema([("x", pa.int64()), ("y", pa.string())])
    assert read_all(source).to_pydict() == {"x": [1, 2, 3], "y": [None, "b", "c"]}
    (tmp_path / "c.json").write_bytes(b"[1]\n\xff\n")
    with pytest.raises(PlanError, match=r"cannot parse '.*c\.json': .*\(line 1: the record is an array"):
        JsonSource(str(tmp_path / "c.json"))


def test_csv_bytes_that_are_not_utf8_are_dead_letters_or_name_the_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In the first block the column used to become binary without a word; later, the error named a row.
    (tmp_path / "a.csv").write_bytes(b"x,y\n1,a\n2,caf\xe9\n3,c\n")
    source = CsvSource(str(tmp_path / "a.csv"))  # a string column, whose line 3 is a dead letter
    assert source.schema() == pa.schema([("x", pa.int64()), ("y", pa.string())])
    rows, letters = read_with_dead_letters(source, 1000)
    assert rows.to_pydict() == {"x": [1, 3], "y": ["a", "c"]}
    assert [(r["position"], r["raw"]) for r in letters] == [(3, b"2,caf\xe9")]
    assert letters[0]["error"].startswith("not valid UTF-8: byte 0xe9 at position 5")
    with pytest.raises(PlanError, match=r"read_csv: '.*a\.csv' is not valid UTF-8: column 'y' at line 3; .*binary"):
        CsvSource(str(tmp_path / "a.csv"), errors="fail")
    raw = pa.schema([("x", pa.int64()), ("y", pa.binary())])
    assert read_all(CsvSource(str(tmp_path / "a.csv"), schema=raw)).column("y").to_pylist() == [b"a", b"caf\xe9", b"c"]
    with pytest.raises(PlanError, match=r"read_csv: '.*a\.csv' is not valid UTF-8: at line 3"):
        CsvSource(str(tmp_path / "a.csv"), schema=pa.schema([("x", pa.int64()), ("y", pa.string())]), errors="fail")

    (tmp_path / "b.csv").write_bytes(b"x,y\n" + b"1,a\n" * 50 + b"2,\xff\n")
    monkeypatch.setattr(CsvSource, "_block_bytes", 64)
    source = CsvSource(str(tmp_path / "b.csv"), errors="fail")
    assert source.schema() == pa.schema([("x", pa.int64()), ("y", pa.string())])
    with pytest.raises(RaystreamError, match=r"read_csv: line 52 of '.*b\.csv' cannot be decoded .*not valid UTF-8"):
        read_all(source)


# --------------------------------------------------------------------------- #
# Text                                                                        #
# --------------------------------------------------------------------------- #

TEXT = b"first\r\nsecond\n\n\r\nfifth line, a bit longer than a block\n\xc3\xa9t\xc3\xa9\nno newline at the end"
LINES = ["first", "second", "", "", "fifth line, a bit longer than a block", "été", "no newline at the end"]


@pytest.mark.parametrize("block_bytes", [1, 7, 1 << 20])
@pytest.mark.parametrize("max_rows", [1, 3, 1000])
def test_text_lines_and_resume_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int, max_rows: int
) -> None:
    (tmp_path / "a.txt").write_bytes(TEXT)
    (tmp_path / "b.txt").write_bytes(b"")
    (tmp_path / "c.txt").write_bytes(b"only\n")
    monkeypatch.setattr(TextSource, "_block_bytes", block_bytes)
    source = TextSource(str(tmp_path))
    assert source.name == "read_text"
    assert source.schema() == pa.schema([("line", pa.string())])
    assert [s.split_id for s in source.splits(1)] == ["a.txt", "c.txt"]
    assert read_all(source, max_rows).column("line").to_pylist() == [*LINES, "only"]
    check_resume_everywhere(source, max_rows)


def test_text_position_is_a_byte_offset(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"ab\r\ncd\nef")
    source = TextSource(str(tmp_path / "a.txt"))
    reader = source.open_split(source.splits(1)[0], None)
    positions = []
    while reader.next_batch(1) is not None:
        positions.append(reader.position())
    assert positions == [4, 7, 9]


def test_text_gzip_and_latin1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with gzip.open(tmp_path / "a.txt.gz", "wb") as f:
        f.write(TEXT)
    monkeypatch.setattr(TextSource, "_block_bytes", 5)
    source = TextSource(str(tmp_path / "a.txt.gz"))
    assert read_all(source, 2).column("line").to_pylist() == LINES
    check_resume_everywhere(source, 2)

    (tmp_path / "b.txt").write_bytes("café\r\nniño".encode("latin-1"))
    latin = TextSource(str(tmp_path / "b.txt"), encoding="latin-1")
    assert read_all(latin).column("line").to_pylist() == ["café", "niño"]
    with pytest.raises(Exception, match=r"read_text: '.*b\.txt' is not valid utf-8.*encoding="):
        read_all(TextSource(str(tmp_path / "b.txt")))


def test_text_rejects_encodings_without_a_newline_byte(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(PlanError, match=r"encoding 'utf-16' is not supported.*utf-8"):
        TextSource(str(tmp_path), encoding="utf-16")
    with pytest.raises(PlanError, match=r"unknown encoding 'klingon'"):
        TextSource(str(tmp_path), encoding="klingon")
