"""The JSON record decoder shared by read_kafka and read_json: one record, one row or one dead letter, in order."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raystream.sources._json import EMPTY, TOMBSTONE, decode_records, infer_schema

SCHEMA = pa.schema([("a", pa.int64()), ("s", pa.string())])


def expected_rows(records: list[bytes]) -> pd.DataFrame:
    """The oracle: Python's json module on the records that should become rows."""
    frame = pd.DataFrame([json.loads(r) for r in records], columns=SCHEMA.names)
    return frame.astype({"a": "Int64", "s": "string"})


def rows_frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas().astype({"a": "Int64", "s": "string"})


def test_a_tombstone_and_a_record_of_two_values_are_dead_letters_and_the_rest_stay_in_place() -> None:
    # The batch that used to decode to 4 rows for 4 records: the tombstone vanished and {b}{c} gave 2 rows.
    records = [b'{"a": 1}', None, b'{"a": 2}{"a": 3}', b'{"a": 4}']
    decoded = decode_records(pa.array(records, pa.binary()), SCHEMA)
    pd.testing.assert_frame_equal(rows_frame(decoded.rows), expected_rows([records[0], records[3]]))
    assert decoded.good.tolist() == [0, 3] and decoded.bad.tolist() == [1, 2]
    assert decoded.errors[0] == TOMBSTONE
    assert "more than one JSON value" in decoded.errors[1]
    # Keys, timestamps and offsets go with their own record by these indices.
    timestamps = pa.array([10, 11, 12, 13])
    assert timestamps.take(pa.array(decoded.good)).to_pylist() == [10, 13]
    assert timestamps.take(pa.array(decoded.bad)).to_pylist() == [11, 12]


@pytest.mark.parametrize("record", [b"", b"   ", b"\t\r\n"])
def test_a_record_of_no_json_value_is_a_dead_letter(record: bytes) -> None:
    decoded = decode_records(pa.array([b'{"a": 1}', record], pa.binary()), SCHEMA)
    assert decoded.good.tolist() == [0] and decoded.errors == [EMPTY]


def test_blank_lines_of_a_file_are_skipped_not_dead_letters() -> None:
    decoded = decode_records(pa.array([b'{"a": 1}', b"  ", b'{"a": 2}'], pa.binary()), SCHEMA, skip_blank=True)
    assert decoded.good.tolist() == [0, 2] and decoded.bad.tolist() == []


def test_records_that_are_not_one_json_object_are_dead_letters_that_say_what_they_are() -> None:
    records = [b"[1, 2]", b'"text"', b"null", b"not json", b'{"a": 1} trailing', b'1}{"v": 2', b'{"a": 5}']
    decoded = decode_records(pa.array(records, pa.binary()), SCHEMA)
    assert decoded.good.tolist() == [6] and decoded.rows.to_pylist() == [{"a": 5, "s": None}]
    errors = dict(zip(decoded.bad.tolist(), decoded.errors, strict=True))
    assert errors[0] == "the record is an array, not a JSON object"
    assert errors[1] == "the record is a string, not a JSON object"
    assert errors[2] == "the record is JSON null, not an object"
    assert errors[3].startswith("not JSON: ")
    assert errors[4].startswith("not JSON: unexpected data after the value")
    assert errors[5].startswith("not JSON: ")


def test_invalid_utf8_is_a_dead_letter_whether_raw_or_escaped() -> None:
    records = [
        b'{"a": 1, "s": "caf\xc3\xa9"}',  # valid
        b'{"a": 2, "s": "bad \xff byte"}',  # raw invalid byte in a string
        b'{"a": 3, "\xfe": "bad key"}',  # raw invalid byte in a field name
        b'{"a": 4, "s": "\\ud800"}',  # an unpaired surrogate escape
        b'{"a": 5, "s": "\\u00e9 \\ud83d\\ude00"}',  # valid escapes, a surrogate pair among them
        b'{"a": 6, "s": "\xed\xa0\x80"}',  # a UTF-8-encoded surrogate (CESU), invalid
    ]
    decoded = decode_records(pa.array(records, pa.binary()), SCHEMA)
    assert decoded.good.tolist() == [0, 4]
    decoded.rows.validate(full=True)  # every string is valid UTF-8
    assert decoded.rows.column("s").to_pylist() == ["café", "é \U0001f600"]
    errors = dict(zip(decoded.bad.tolist(), decoded.errors, strict=True))
    assert errors[1].startswith("not valid UTF-8: byte 0xff at position 19")
    assert errors[2].startswith("not valid UTF-8: byte 0xfe")
    assert "column 's'" in errors[3] and "surrogate" in errors[3]
    assert errors[5].startswith("not valid UTF-8: byte 0xed")


def test_a_value_of_another_type_names_the_column_and_both_types() -> None:
    records = [b'{"a": 1, "s": "x"}', b'{"a": "one", "s": "y"}', b'{"a": 1.5}', b'{"a": 2, "s": 3}']
    decoded = decode_records(pa.array(records, pa.binary()), SCHEMA)
    assert decoded.good.tolist() == [0]
    assert decoded.errors[0].startswith("column 'a' is string in this record but int64 in the schema")
    assert decoded.errors[1].startswith("column 'a' is double in this record but int64 in the schema")
    assert decoded.errors[2].startswith("column 's' is int64 in this record but string in the schema")


def test_a_field_the_schema_lacks_is_ignored_or_a_dead_letter() -> None:
    records = pa.array([b'{"a": 1, "late": true}', b'{"a": 2}'], pa.binary())
    assert decode_records(records, SCHEMA).good.tolist() == [0, 1]
    strict = decode_records(records, SCHEMA, unexpected="error")
    assert strict.good.tolist() == [1] and strict.errors == ["field 'late' is not in the schema (fields: a, s)"]


def test_inference_lets_the_first_records_fix_the_types_and_the_odd_record_is_a_dead_letter() -> None:
    # A batch mixing types used to fail the whole decode ("Unable to merge: Field a has incompatible types").
    records = [b'{"a": %d, "s": "x"}' % i for i in range(50)]
    records[30] = b'{"a": "thirty", "s": "x"}'
    records[40] = b'{"a": 4.5, "n": null, "later": {"x": 1}}'  # int64 promotes to double; null has no type
    values = pa.array(records, pa.binary())
    schema = infer_schema(values)
    assert schema == pa.schema([("a", pa.float64()), ("s", pa.string()), ("later", pa.struct([("x", pa.int64())]))])
    decoded = decode_records(values, schema)
    assert decoded.bad.tolist() == [30]
    assert decoded.errors[0].startswith("column 'a' is string in this record but double in the schema")
    assert decoded.rows.column("a").to_pylist() == [4.5 if i == 40 else float(i) for i in range(50) if i != 30]


def test_inference_of_records_without_an_object_is_none() -> None:
    assert infer_schema(pa.array([None, b"[1]", b"oops", b'{"n": null}'], pa.binary())) is None


# A record of each kind, and whether it becomes a row.
GOOD = st.builds(
    lambda a, s, pad: (pad + json.dumps({"a": a, "s": s}) + pad).encode(),
    st.integers(-(2**62), 2**62),
    st.text(max_size=5),
    st.sampled_from(["", " ", "\n", "\t "]),
)
BAD = st.one_of(
    st.none(),
    st.sampled_from([b"", b" ", b"[1]", b"null", b"7", b'{"a": 1}{"a": 2}', b'{"a": 1', b'{"a": "x"}', b"\x80"]),
    st.builds(lambda s: b'{"s": "' + s + b'"}', st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\udc00"])),
)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(GOOD.map(lambda r: (r, True)), BAD.map(lambda r: (r, False))), max_size=40))
def test_each_record_is_exactly_one_row_or_one_dead_letter_in_order(records: list[tuple[bytes | None, bool]]) -> None:
    values = pa.array([r for r, _ in records], pa.binary())
    decoded = decode_records(values, SCHEMA)
    assert decoded.good.tolist() == [i for i, (_, ok) in enumerate(records) if ok]
    assert decoded.bad.tolist() == [i for i, (_, ok) in enumerate(records) if not ok]
    assert len(decoded.errors) == len(decoded.bad) and all(decoded.errors)
    good = [r for r, ok in records if ok]
    assert isinstance(decoded.good, np.ndarray) and decoded.rows.num_rows == len(good)
    if good:
        pd.testing.assert_frame_equal(rows_frame(decoded.rows), expected_rows(good))  # type: ignore[arg-type]
