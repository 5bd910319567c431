"""JSON records to rows, one object per record: the decoder behind ``read_kafka`` and ``read_json``.

A *record* is one Kafka value or one line of a file. Each record becomes
exactly one row or one dead letter, in order, so that the caller can keep a
record's key, timestamp, offset or line number with it by index.

The fast path is one vectorized ``pyarrow.json`` call per batch. Each record
is wrapped as ``{"v":<record>}`` first (a vectorized concatenation), so that
a record holding two JSON values (``{...}{...}``) or none no longer parses,
and two records can never merge into one row or one record split into two:
every wrapped record opens an object and closes it, so a record that does not
close what it opens makes the parse fail, and the row count must equal the
record count. Only when a batch fails is it bisected, down to the records at
fault. A single bad record is then explained (not JSON, two values, not an
object, which column does not fit the schema) with Python's ``json`` module:
a loop over bad records only.

Checked up front, vectorized: a null record (a Kafka tombstone), an empty
one, and one that is not valid UTF-8 (JSON text must be UTF-8, and
``pyarrow.json`` copies invalid bytes into strings, where they would break
hashing and Parquet output downstream). Escapes cannot produce invalid UTF-8:
``pyarrow.json`` rejects unpaired surrogates such as ``"\\ud800"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

__all__ = ["Decoded", "Unexpected", "bisect_ranges", "decode_records", "explain", "infer_schema", "utf8_valid"]

#: What a field that the schema does not name does: ``"ignore"`` it, or make the record an ``"error"``.
Unexpected = Literal["ignore", "error"]

TOMBSTONE = "tombstone: the record has no value"
EMPTY = "empty: the record holds no JSON value"

_PREFIX = b'{"v":'
_SUFFIX = b"}\n"
_MIN_BLOCK_BYTES = 1 << 20
_SINGLE = pajson.ReadOptions(use_threads=False)
_BLANK = r"^[ \t\r\n]*$"
# Well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF). On a binary array
# RE2 matches bytes (Latin-1), so each \xNN below is one byte.
_UTF8 = (
    r"^(?:[\x00-\x7F]|[\xC2-\xDF][\x80-\xBF]|\xE0[\xA0-\xBF][\x80-\xBF]|[\xE1-\xEC\xEE\xEF][\x80-\xBF]{2}"
    r"|\xED[\x80-\x9F][\x80-\xBF]|\xF0[\x90-\xBF][\x80-\xBF]{2}|[\xF1-\xF3][\x80-\xBF]{3}|\xF4[\x80-\x8F][\x80-\xBF]{2})*$"
)
_COLUMN = re.compile(r"Column\(/v(/[^)]*)?\)")
_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


@dataclass(frozen=True)
class Decoded:
    """The rows of a batch of records, and the records that could not become rows.

    Attributes:
        rows: One row per good record, in record order, with the schema asked for.
        good: The index of each row's record (int64, ascending, one per row).
        bad: The indices of the records that are dead letters (int64, ascending).
        errors: What is wrong with each of ``bad``, in the same order.
    """

    rows: pa.Table
    good: np.ndarray
    bad: np.ndarray
    errors: list[str]


def decode_records(
    values: pa.Array | pa.ChunkedArray,
    schema: pa.Schema,
    *,
    unexpected: Unexpected = "ignore",
    skip_blank: bool = False,
) -> Decoded:
    """Decode each record of ``values`` (binary) as one JSON object with ``schema``.

    Args:
        values: The records, one per element; null is a tombstone.
        schema: The rows' schema. A field missing from a record is null.
        unexpected: What a field the schema does not name does (at any depth):
            ``"ignore"`` it, or make the record a dead letter.
        skip_blank: Records of only whitespace are neither rows nor dead
            letters (blank lines of a file), instead of dead letters.

    Returns:
        Every record is in exactly one of ``good`` (with its row) or ``bad``
        (with its error), but for blank ones skipped by ``skip_blank``.
    """
    if len(values) == 0:  # an idle Kafka poll
        return Decoded(schema.empty_table(), np.zeros(0, np.int64), np.zeros(0, np.int64), [])
    values = _binary(values)
    bad: list[tuple[int, str]] = []
    keep = _screen(values, skip_blank, bad)
    candidates = np.flatnonzero(keep)
    subset = values if len(candidates) == len(values) else values.take(pa.array(candidates))
    target = pa.schema([pa.field("v", pa.struct(schema))])
    chunks, failed = _bisect(subset, target, unexpected)
    rows: list[pa.Table] = []
    good: list[np.ndarray] = []
    for start, table in chunks:
        objects = table.column(0)
        if objects.null_count:  # the record is JSON null
            valid = objects.is_valid().to_numpy(zero_copy_only=False)
            nulls = candidates[start + np.flatnonzero(~valid)]
            bad += [(int(i), "the record is JSON null, not an object") for i in nulls]
            objects = objects.filter(pa.array(valid))
        else:
            valid = np.ones(len(objects), bool)
        rows.append(pa.Table.from_struct_array(objects))
        good.append(candidates[start + np.flatnonzero(valid)])
    for index, error in failed:
        explained = _explain(subset[index].as_py(), error, schema, unexpected)
        if not (skip_blank and explained == EMPTY):
            bad.append((int(candidates[index]), explained))
    bad.sort()
    table = pa.concat_tables(rows) if rows else schema.empty_table()
    if not table.schema.equals(schema, check_metadata=True):
        table = table.cast(schema)
    return Decoded(
        rows=table,
        good=np.concatenate(good) if good else np.zeros(0, np.int64),
        bad=np.array([i for i, _ in bad], np.int64),
        errors=[e for _, e in bad],
    )


def infer_schema(values: pa.Array | pa.ChunkedArray, *, drop_null: bool = True) -> pa.Schema | None:
    """The schema of a sample of records, fixed by the first ones; ``None`` when none is a JSON object.

    The records are decoded with ``pyarrow.json``'s inference, in order.
    Where they disagree, the types of the first records win: a later record
    whose field has another type (a string where the first records have a
    number) does not change the schema, and will be a dead letter when
    decoded with it. Types promote as ``pyarrow.json`` promotes them within a
    block (an int64 field that later holds 1.5 is double; a null field takes
    the type that follows).

    Args:
        values: The records (binary); tombstones, blank and invalid records are passed over.
        drop_null: Leave out the fields that are null in every record (they
            have no type yet), instead of keeping them with type ``null``
            (which unifies with any type, across files).
    """
    values = _binary(values)
    keep = _screen(values, skip_blank=True, bad=[])
    subset = values.filter(pa.array(keep))
    chunks, _ = _bisect(subset, None, "ignore")
    merged: pa.Schema | None = None
    for _, table in chunks:
        kind = table.schema.field(0).type
        if not pa.types.is_struct(kind):
            continue  # records that are not objects
        found = pa.schema(list(kind))
        if merged is None:
            merged = found
            continue
        try:
            merged = pa.unify_schemas([merged, found], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            continue  # these records disagree with the first ones: the first ones win
    if merged is None:
        return None
    fields = [f for f in (_typed(field) if drop_null else field for field in merged) if f is not None]
    return pa.schema(fields) if fields else None


def explain(record: bytes | None) -> str:
    """Why ``record`` is not a JSON object (for a record :func:`infer_schema` found nothing in)."""
    if record is None:
        return TOMBSTONE
    try:
        record.decode("utf-8")
    except UnicodeDecodeError:
        return _utf8_error(record)
    return _explain(record, "", pa.schema([]), "ignore")


def _binary(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    # A chunked array stays chunked: the wrapping below copies it into one buffer anyway.
    return values if values.type == pa.binary() else values.cast(pa.binary())


def _screen(values: pa.Array | pa.ChunkedArray, skip_blank: bool, bad: list[tuple[int, str]]) -> np.ndarray:
    """Which records go to the parser: not null, not empty, valid UTF-8 (vectorized); the others join ``bad``.

    A longer record of only whitespace fails to parse and is explained then
    (and skipped with ``skip_blank``); the short ones, a producer's empty
    value or a file's blank line (``\\r`` too), are common enough to be told
    here, for little.
    """
    keep = np.ones(len(values), bool)
    if values.null_count:
        nulls = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
        keep[nulls] = False
        bad += [(int(i), TOMBSTONE) for i in nulls]
    short = np.flatnonzero(
        pc.fill_null(pc.less_equal(pc.binary_length(values), 2), False).to_numpy(zero_copy_only=False)
    )
    if len(short):
        blank = short[pc.match_substring_regex(values.take(pa.array(short)), _BLANK).to_numpy(zero_copy_only=False)]
        keep[blank] = False
        if not skip_blank:
            bad += [(int(i), EMPTY) for i in blank]
    valid = utf8_valid(values)
    if valid is not None:
        for i in np.flatnonzero(keep & ~valid):  # the invalid records only, to say where
            bad.append((int(i), _utf8_error(values[int(i)].as_py())))
        keep &= valid
    return keep


def utf8_valid(values: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """``None`` when every element of ``values`` (binary) is valid UTF-8, else which are (nulls count as valid)."""
    try:
        values.cast(pa.string())  # validates the whole array at once, the common case
        return None
    except pa.ArrowInvalid:
        return pc.fill_null(pc.match_substring_regex(values, _UTF8), True).to_numpy(zero_copy_only=False)


def _utf8_error(record: bytes) -> str:
    try:
        record.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8: byte 0x{record[exc.start]:02x} at position {exc.start} ({exc.reason})"
    return "not valid UTF-8"


def _bisect(
    records: pa.Array | pa.ChunkedArray, target: pa.Schema | None, unexpected: Unexpected
) -> tuple[list[tuple[int, pa.Table]], list[tuple[int, str]]]:
    """Parse the wrapped records, bisecting ranges that fail: ``(start, table)`` per good range, ``(index, error)``."""
    if len(records) == 0:
        return [], []
    # large_binary: the wrapped batch may pass the 2 GiB of 32-bit offsets.
    prefix, suffix, separator = (pa.scalar(text, pa.large_binary()) for text in (_PREFIX, _SUFFIX, b""))
    wrapped = pc.binary_join_element_wise(prefix, records.cast(pa.large_binary()), suffix, separator)
    if isinstance(wrapped, pa.ChunkedArray):
        wrapped = pa.concat_arrays(wrapped.chunks)
    offsets = np.frombuffer(wrapped.buffers()[1], np.int64)[wrapped.offset : wrapped.offset + len(wrapped) + 1]
    data = wrapped.buffers()[2]
    # Blocks of ~1 MiB decode in parallel; a block must hold the longest record whole.
    longest = int(np.max(np.diff(offsets)))
    block = max(_MIN_BLOCK_BYTES, 2 * longest + 2)
    # One block is parsed by one thread: handing it to the thread pool costs more than parsing a few records.
    threaded, single = (pajson.ReadOptions(block_size=block, use_threads=u) for u in (True, False))
    behavior = unexpected if target is not None else "infer"
    parse = pajson.ParseOptions(explicit_schema=target, unexpected_field_behavior=behavior)

    def attempt(start: int, end: int) -> pa.Table | str:
        text = data.slice(int(offsets[start]), int(offsets[end] - offsets[start]))
        try:
            read = threaded if text.size > block else single
            table = pajson.read_json(pa.BufferReader(text), read_options=read, parse_options=parse)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            return str(exc)
        if table.num_rows != end - start:
            return f"decoded to {table.num_rows} rows"
        return table

    return bisect_ranges(attempt, len(records))


def bisect_ranges(
    attempt: Callable[[int, int], pa.Table | str], count: int
) -> tuple[list[tuple[int, pa.Table]], list[tuple[int, str]]]:
    """Parse records ``0..count`` by ranges, halving each range that fails until the failures are single records.

    ``attempt(start, end)`` parses a range into a table, or returns why it failed. Returns ``(start, table)`` per
    range that parsed, and ``(index, error)`` per record that did not.
    """
    good: list[tuple[int, pa.Table]] = []
    bad: list[tuple[int, str]] = []

    def run(start: int, end: int) -> None:
        result = attempt(start, end)
        if isinstance(result, pa.Table):
            good.append((start, result))
        elif end - start == 1:
            bad.append((start, result))
        else:
            middle = (start + end) // 2
            run(start, middle)
            run(middle, end)

    if count:
        run(0, count)
    return good, bad


def _explain(record: bytes, error: str, schema: pa.Schema, unexpected: Unexpected) -> str:
    """What is wrong with one record that ``pyarrow.json`` refused with ``error``."""
    text = record.decode("utf-8")  # screened: valid UTF-8
    decoder = json.JSONDecoder()
    start = _skip_space(text, 0)
    if start == len(text):
        return EMPTY
    try:
        value, end = decoder.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        return f"not JSON: {exc.msg} at character {exc.pos + 1}"
    rest = _skip_space(text, end)
    if rest < len(text):
        try:
            decoder.raw_decode(text, rest)
        except json.JSONDecodeError:
            return f"not JSON: unexpected data after the value, at character {rest + 1}"
        return (
            f"the record holds more than one JSON value (the second at character {rest + 1}); "
            "a record must be exactly one JSON object"
        )
    if not isinstance(value, dict):
        return f"the record is {_KINDS.get(type(value), 'JSON null')}, not a JSON object"
    if unexpected == "error":
        extra = [key for key in value if key not in schema.names]
        if extra:
            return f"field {extra[0]!r} is not in the schema (fields: {', '.join(schema.names)})"
    for field in schema:
        if field.name in value:
            problem = _fits(value[field.name], field, unexpected)
            if problem is not None:
                return problem
    return _clean(error)


def _fits(value: Any, field: pa.Field, unexpected: Unexpected) -> str | None:
    """``None`` when ``value`` decodes as ``field``, else an error naming the column and both types."""
    try:
        one = (json.dumps({"v": {field.name: value}}, allow_nan=True) + "\n").encode()
    except (TypeError, ValueError):
        return None
    target = pa.schema([pa.field("v", pa.struct([field]))])
    try:
        pajson.read_json(
            pa.BufferReader(one),
            read_options=_SINGLE,
            parse_options=pajson.ParseOptions(target, unexpected_field_behavior=unexpected),
        )
        return None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        error = _clean(str(exc))
    try:
        found = pajson.read_json(pa.BufferReader(one), read_options=_SINGLE).schema.field(0).type.field(0).type
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return f"column {field.name!r}: {error}"
    return f"column {field.name!r} is {found} in this record but {field.type} in the schema ({error})"


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _clean(error: str) -> str:
    """A ``pyarrow.json`` message about a wrapped record, as the user's record would give it."""
    error = error.splitlines()[0] if error else "it holds no field that is not null"
    error = error.removeprefix("JSON parse error: ").replace(" in row 0", "")
    return _COLUMN.sub(lambda m: f"column '{m.group(1)[1:]}'" if m.group(1) else "the record", error)


def _typed(field: pa.Field) -> pa.Field | None:
    """``field`` without the parts that were null in every record (no type was seen), or ``None``."""
    kind = field.type
    if pa.types.is_null(kind):
        return None
    if pa.types.is_struct(kind):
        children = [c for c in (_typed(child) for child in kind) if c is not None]
        return field.with_type(pa.struct(children)) if children else None
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        item = _typed(kind.value_field)
        return None if item is None else field.with_type(pa.list_(item))
    return field
