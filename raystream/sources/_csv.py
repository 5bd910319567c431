"""CSV lines to rows, one row per line: the decoder behind ``read_csv``.

A *record* is one line of a file after its header, without its newline.
Each line becomes exactly one row or one dead letter, in order, so that the
caller can keep a line's number with it by index; blank lines are neither,
as pyarrow's CSV reader skips them.

The fast path is one vectorized ``pyarrow.csv`` call per batch of lines,
joined back with newlines (lines hold none: fields cannot span lines). Only
when a batch fails, because a line has too few or too many fields, a value
that does not convert to its column's type, or bytes that are not UTF-8 in a
string column, is it bisected, down to the lines at fault, whose ``pyarrow``
error is then made readable. The number of rows must equal the number of
lines, and no parsed field may hold a newline: a quote left open on its line
would otherwise swallow the lines after it into one field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from raystream.sources._json import Decoded, bisect_ranges, explain

__all__ = ["decode_lines", "header_names"]

_MIN_BLOCK_BYTES = 1 << 20
_UNCLOSED = "a quoted field is not closed on its line (a field cannot hold a newline)"
_COLUMN = re.compile(r"^In CSV column #(\d+): ")
_ROW = re.compile(r"Row #\d+: ")


def header_names(line: bytes, delimiter: str) -> list[str]:
    """The column names of a header line (quoted names unquoted, as ``pyarrow.csv`` reads them)."""
    parse = pa_csv.ParseOptions(delimiter=delimiter)
    return pa_csv.read_csv(pa.BufferReader(line + b"\n"), parse_options=parse).column_names


def decode_lines(lines: pa.Array | pa.ChunkedArray, names: Sequence[str], schema: pa.Schema, delimiter: str) -> Decoded:
    """Decode each line of ``lines`` (binary) as one CSV row of the columns ``names``, keeping ``schema``'s.

    Args:
        lines: The lines after the header, one per element, without newlines.
        names: The header's column names, in file order.
        schema: The columns to keep, in this order, and their types; each must be in ``names``.
        delimiter: The field delimiter.

    Returns:
        Every line is in exactly one of ``good`` (with its row) or ``bad``
        (with its error), but for blank ones (empty, or only ``\\r``).
    """
    if len(lines) == 0:
        return Decoded(schema.empty_table(), np.zeros(0, np.int64), np.zeros(0, np.int64), [])
    lines = lines if lines.type == pa.binary() else lines.cast(pa.binary())
    lengths = pc.binary_length(lines).to_numpy(zero_copy_only=False)
    keep = lengths > 1
    short = np.flatnonzero(lengths == 1)
    if len(short):
        keep[short] = pc.not_equal(lines.take(pa.array(short)), pa.scalar(b"\r")).to_numpy(zero_copy_only=False)
    candidates = np.flatnonzero(keep)
    subset = lines if len(candidates) == len(lines) else lines.take(pa.array(candidates))
    chunks, failed = _bisect(subset, names, schema, delimiter)
    rows = [table for _, table in chunks]
    good = [candidates[start : start + table.num_rows] for start, table in chunks]
    bad = [(int(candidates[index]), _explain(subset[index].as_py(), error, names)) for index, error in failed]
    table = pa.concat_tables(rows) if rows else schema.empty_table()
    if not table.schema.equals(schema, check_metadata=True):
        table = table.cast(schema)
    return Decoded(
        rows=table,
        good=np.concatenate(good) if good else np.zeros(0, np.int64),
        bad=np.array([i for i, _ in bad], np.int64),
        errors=[e for _, e in bad],
    )


def _bisect(
    lines: pa.Array | pa.ChunkedArray, names: Sequence[str], schema: pa.Schema, delimiter: str
) -> tuple[list[tuple[int, pa.Table]], list[tuple[int, str]]]:
    """Parse the lines, bisecting ranges that fail: ``(start, table)`` per good range, ``(index, error)``."""
    if len(lines) == 0:
        return [], []
    # large_binary: the joined batch may pass the 2 GiB of 32-bit offsets.
    newline, separator = pa.scalar(b"\n", pa.large_binary()), pa.scalar(b"", pa.large_binary())
    joined = pc.binary_join_element_wise(lines.cast(pa.large_binary()), newline, separator)
    if isinstance(joined, pa.ChunkedArray):
        joined = pa.concat_arrays(joined.chunks)
    offsets = np.frombuffer(joined.buffers()[1], np.int64)[joined.offset : joined.offset + len(joined) + 1]
    data = joined.buffers()[2]
    # Without a quote, no field can swallow a newline: the check of the fields is skipped.
    quoted = bool(pc.any(pc.match_substring(lines, '"')).as_py())
    longest = int(np.max(np.diff(offsets)))
    block = max(_MIN_BLOCK_BYTES, 2 * longest + 2)
    threaded, single = (
        pa_csv.ReadOptions(column_names=list(names), block_size=block, use_threads=u) for u in (True, False)
    )
    parse = pa_csv.ParseOptions(delimiter=delimiter)
    convert = pa_csv.ConvertOptions(
        column_types={field.name: field.type for field in schema}, include_columns=schema.names
    )
    text_columns = [
        field.name
        for field in schema
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type) or pa.types.is_binary(field.type)
    ]

    def attempt(start: int, end: int) -> pa.Table | str:
        text = data.slice(int(offsets[start]), int(offsets[end] - offsets[start]))
        try:
            read = threaded if text.size > block else single
            table = pa_csv.read_csv(
                pa.BufferReader(text), read_options=read, parse_options=parse, convert_options=convert
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            return str(exc)
        if table.num_rows != end - start:
            return _UNCLOSED
        if quoted and any(pc.any(pc.match_substring(table.column(c), "\n")).as_py() for c in text_columns):
            return _UNCLOSED
        return table

    return bisect_ranges(attempt, len(lines))


def _explain(line: bytes, error: str, names: Sequence[str]) -> str:
    """A ``pyarrow.csv`` error about one line, as its reader would say it."""
    if "invalid UTF8" in error:
        return explain(line)  # which byte, and where
    error = (error.splitlines()[0] if error else "it does not parse").removeprefix("CSV parse error: ")
    column = _COLUMN.match(error)
    if column is not None:
        index = int(column.group(1))
        name = names[index] if index < len(names) else f"#{index}"
        error = f"column {name!r}: {error[column.end() :]}"
    error = _ROW.sub("", error)
    # pyarrow ends a wrong field count with the line itself, which the dead letter holds already.
    return re.sub(r"^(Expected \d+ columns, got \d+): .*$", r"\1", error, flags=re.DOTALL).replace(
        "Expected", "expected", 1
    )
