"""Mergeable partial aggregates per key, computed with ``Table.group_by``.

A :class:`Partial` is what a batch reduces to: one row per key in
``Partial.table`` (partial sums, counts, minima, maxima), plus, for each
``count_distinct``, a table of the distinct ``(key, value)`` pairs. Partials
merge associatively and commutatively, so readers pre-aggregate before the
shuffle (a combiner) and partition actors merge into their state, and the
result does not depend on how the stream was cut into batches.

:class:`KeyedTop` is the same idea for whole rows: a batch reduces to the
rows that rank within the first ``n`` of their key, and such candidates
merge into the same candidates, however the rows were cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raystream.aggregates import Aggregate, Top

_VALUE = "__value"
TOUCHED = "__touched"
_ONLY_VALID = pc.CountOptions(mode="only_valid")


@dataclass(frozen=True)
class Partial:
    """Partial aggregates of some rows.

    Attributes:
        table: One row per key: the key columns, then the partial columns.
        distinct: For each ``count_distinct`` aggregate, in order, the
            distinct ``(key columns..., __value)`` pairs seen.
    """

    table: pa.Table
    distinct: tuple[pa.Table, ...] = ()

    @property
    def num_rows(self) -> int:
        return self.table.num_rows


@dataclass(frozen=True)
class _Column:
    """One column of a partial: how to compute it from rows and how to merge it."""

    name: str
    source: str | None  # the input column, None for count_all
    compute: str  # the group_by function over input rows
    merge: str  # the group_by function over partials


class KeyedAggregation:
    """Named aggregates over the rows of each key.

    Args:
        keys: The key columns.
        aggregates: ``(output name, Aggregate)`` pairs, in output order.
    """

    def __init__(self, keys: Sequence[str], aggregates: Sequence[tuple[str, Aggregate]]) -> None:
        self.keys = tuple(keys)
        self.aggregates = tuple(aggregates)
        self._columns: list[_Column] = []
        self._distinct: list[tuple[str, str]] = []  # (output name, input column)
        for name, agg in self.aggregates:
            if agg.kind == "count":
                if agg.column is None:
                    self._columns.append(_Column(name, None, "count_all", "sum"))
                else:
                    self._columns.append(_Column(name, agg.column, "count", "sum"))
            elif agg.kind in ("sum", "min", "max"):
                self._columns.append(_Column(name, agg.column, agg.kind, agg.kind))
            elif agg.kind == "mean":
                self._columns.append(_Column(f"{name}.__sum", agg.column, "sum", "sum"))
                self._columns.append(_Column(f"{name}.__count", agg.column, "count", "sum"))
            elif agg.kind == "count_distinct":
                assert agg.column is not None
                self._distinct.append((name, agg.column))
            else:  # pragma: no cover - Aggregate.kind is a Literal
                raise ValueError(f"unknown aggregate {agg!r}")

    @property
    def distinct_aggregates(self) -> list[tuple[str, str]]:
        """``(output name, input column)`` of each ``count_distinct``, in the order of ``Partial.distinct``."""
        return list(self._distinct)

    # -- building partials -------------------------------------------------

    def partial(self, rows: pa.Table) -> Partial:
        """Reduce input rows to one partial row per key."""
        specs: list[Any] = [
            ([], "count_all")
            if col.source is None
            else (col.source, col.compute, _ONLY_VALID)
            if col.compute == "count"
            else (col.source, col.compute)
            for col in self._columns
        ]
        grouped = rows.group_by(list(self.keys), use_threads=False).aggregate(specs)
        table = self._named(grouped, [col.name for col in self._columns])
        if not self._columns:
            table = grouped.select(list(self.keys))
        distinct = tuple(
            rows.select([*self.keys, column])
            .rename_columns([*self.keys, _VALUE])
            .group_by([*self.keys, _VALUE], use_threads=False)
            .aggregate([])
            for _, column in self._distinct
        )
        return Partial(table, distinct)

    def merge(self, partials: Sequence[Partial], track_touched_from: int | None = None) -> Partial:
        """Merge partials into one.

        Args:
            partials: The partials, of the same aggregation.
            track_touched_from: When given, the result's table gains a boolean
                ``__touched`` column, true for keys present in
                ``partials[track_touched_from:]``.
        """
        tables = [p.table for p in partials]
        if track_touched_from is not None:
            tables = [
                t.append_column(TOUCHED, pa.repeat(pa.scalar(i >= track_touched_from), t.num_rows))
                for i, t in enumerate(tables)
            ]
        combined = pa.concat_tables(tables, promote_options="default")
        specs: list[tuple[str, str]] = [(col.name, col.merge) for col in self._columns]
        names = [col.name for col in self._columns]
        if track_touched_from is not None:
            specs.append((TOUCHED, "any"))
            names.append(TOUCHED)
        grouped = combined.group_by(list(self.keys), use_threads=False).aggregate(specs)
        table = self._named(grouped, names)
        distinct = tuple(
            pa.concat_tables([p.distinct[i] for p in partials], promote_options="default")
            .group_by([*self.keys, _VALUE], use_threads=False)
            .aggregate([])
            for i in range(len(self._distinct))
        )
        return Partial(table, distinct)

    # -- results -----------------------------------------------------------

    def finalize(self, partial: Partial, only_touched: bool = False) -> pa.Table:
        """Turn a partial into output rows: the key columns, then one column per aggregate.

        Args:
            partial: A partial, possibly with a ``__touched`` column, which
                is then kept as the last column.
            only_touched: Keep only the keys whose ``__touched`` is true (and
                drop the column).
        """
        table = partial.table
        if self._distinct:
            table = self._attach_distinct_counts(partial)
        if only_touched:
            table = table.filter(pc.field(TOUCHED))
        columns: dict[str, pa.ChunkedArray] = {key: table.column(key) for key in self.keys}
        for name, agg in self.aggregates:
            if agg.kind == "mean":
                total = pc.cast(table.column(f"{name}.__sum"), pa.float64())
                columns[name] = pc.divide(total, pc.cast(table.column(f"{name}.__count"), pa.float64()))
            elif agg.kind == "count_distinct":
                columns[name] = table.column(name).fill_null(0)
            else:
                columns[name] = table.column(name)
        if TOUCHED in table.column_names and not only_touched:
            columns[TOUCHED] = table.column(TOUCHED)
        return pa.table(columns)

    def strip_touched(self, partial: Partial) -> Partial:
        """Drop the ``__touched`` column that :meth:`merge` may have added."""
        if TOUCHED in partial.table.column_names:
            return Partial(partial.table.drop_columns([TOUCHED]), partial.distinct)
        return partial

    def _attach_distinct_counts(self, partial: Partial) -> pa.Table:
        # Arrow joins never match null keys, but group_by groups them. So the
        # counts are joined by a union followed by a group_by over the keys.
        main = partial.table
        extra = [name for name, _ in self._distinct]
        pieces = [self._with_null_columns(main, {n: pa.int64() for n in extra})]
        for (name, _), pairs in zip(self._distinct, partial.distinct, strict=True):
            counts = pairs.group_by(list(self.keys), use_threads=False).aggregate([(_VALUE, "count", _ONLY_VALID)])
            counts = self._named(counts, [name])
            other = {f.name: f.type for f in main.schema if f.name not in self.keys}
            other.update({n: pa.int64() for n in extra if n != name})
            pieces.append(self._with_null_columns(counts, other))
        union = pa.concat_tables([p.select(pieces[0].column_names) for p in pieces], promote_options="default")
        merge_specs: list[tuple[str, str]] = [(c.name, c.merge) for c in self._columns] + [(n, "sum") for n in extra]
        names = [c.name for c in self._columns] + extra
        if TOUCHED in main.column_names:
            merge_specs.append((TOUCHED, "any"))
            names.append(TOUCHED)
        return self._named(union.group_by(list(self.keys), use_threads=False).aggregate(merge_specs), names)

    @staticmethod
    def _with_null_columns(table: pa.Table, columns: dict[str, pa.DataType]) -> pa.Table:
        for name, kind in columns.items():
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, kind))
        return table

    def _named(self, grouped: pa.Table, names: list[str]) -> pa.Table:
        """Rename group_by output (``col_fn`` names, keys last or first) to keys + ``names``."""
        key_columns = [grouped.column(k) for k in self.keys]
        value_columns = [c for c, n in zip(grouped.columns, grouped.column_names, strict=True) if n not in self.keys]
        return pa.Table.from_arrays([*key_columns, *value_columns], names=[*self.keys, *names])


# -- the rows that rank first per key ---------------------------------------------------------------


def orderable(kind: pa.DataType) -> bool:
    """Whether :class:`KeyedTop` can sort and compare values of ``kind`` (dictionaries by their values)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    checks = (
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_decimal,
        pa.types.is_boolean,
        pa.types.is_temporal,
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_binary,
        pa.types.is_large_binary,
        pa.types.is_fixed_size_binary,
    )
    return any(check(kind) for check in checks)


def same_as_previous(keys: pa.Table) -> np.ndarray:
    """For rows 1..n-1: true where every key equals the previous row's (nulls equal nulls)."""
    n = keys.num_rows
    same = np.ones(max(n - 1, 0), dtype=bool)
    for column in keys.columns:
        current, previous = column.slice(1), column.slice(0, n - 1)
        equal = pc.fill_null(pc.equal(current, previous), False)
        both_null = pc.and_(pc.is_null(current), pc.is_null(previous))
        same &= np.asarray(pc.or_(equal, both_null), dtype=bool)
    return same


def _decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A dictionary column as its values (Arrow sorts and compares those only); others as they are."""
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column


class KeyedTop:
    """The rows that rank within the first ``top.n`` of their key by ``top.by``: whole rows, mergeable.

    Keeping the top ``n`` of each key is associative and commutative, as a
    combiner must be: a row among the first ``n`` of all the rows of its
    key is among the first ``n`` of any subset that holds it (fewer rows
    can only rank before it), and every row that ranks before it is kept
    too. So readers reduce each batch to its candidates before the shuffle,
    partition actors merge candidates into their state, and the answer does
    not depend on the batches. Rows whose ``by`` is null or NaN are never
    kept, as ``rs.max`` ignores them.

    Args:
        keys: The columns that identify a key (for a window: the keys and ``window_start``).
        top: What to keep.
    """

    def __init__(self, keys: Sequence[str], top: Top) -> None:
        self.keys = tuple(keys)
        self.top = top

    def reduce(self, rows: pa.Table) -> pa.Table:
        """The candidates of ``rows``: the rows within the first ``n`` of their key."""
        return self._candidates(rows)[0]

    def merge(self, state: pa.Table | None, payloads: Sequence[pa.Table]) -> tuple[pa.Table, np.ndarray]:
        """Merge the state's candidates with new ones (or raw rows, which are reduced alike).

        Returns:
            The merged candidates, sorted by key, and for each of them
            whether its key's candidates changed: whether any kept row of the
            key came from ``payloads``.
        """
        tables = [] if state is None else [state.append_column(TOUCHED, pa.repeat(pa.scalar(False), state.num_rows))]
        tables += [p.append_column(TOUCHED, pa.repeat(pa.scalar(True), p.num_rows)) for p in payloads]
        combined = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
        kept, group_starts = self._candidates(combined)
        group = np.cumsum(group_starts) - 1
        from_payloads = np.asarray(kept.column(TOUCHED), dtype=bool)
        changed = np.bincount(group, weights=from_payloads, minlength=int(group_starts.sum())) > 0
        return kept.drop_columns([TOUCHED]), changed[group]

    def _candidates(self, rows: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """The kept rows, sorted by key, and the mask of those that start a key."""
        by = rows.column(self.top.by)
        valid = pc.is_valid(by)
        if pa.types.is_floating(by.type):
            valid = pc.and_(valid, pc.invert(pc.fill_null(pc.is_nan(by), True)))
        if by.null_count or pa.types.is_floating(by.type):
            rows = rows.filter(valid)
        n = rows.num_rows
        if n == 0:
            return rows, np.zeros(0, dtype=bool)
        # Sorted by key, then best first (then by the other columns: a deterministic ROW_NUMBER without ties),
        # each row's rank is its distance from the first row of its key (of its run of equal values, with ties).
        ordering = [*self.keys, self.top.by]
        if not self.top.ties:
            ordering += [c for c in rows.column_names if c not in ordering and c != TOUCHED]
        sortable = pa.table({c: _decoded(rows.column(c)) for c in ordering})
        order = "descending" if self.top.descending else "ascending"
        sort_keys = [(c, order if c == self.top.by else "ascending") for c in ordering]
        indices = pc.sort_indices(sortable, sort_keys=sort_keys)
        sortable = sortable.take(indices)
        positions = np.arange(n)
        key_starts = np.ones(n, dtype=bool)
        key_starts[1:] = ~same_as_previous(sortable.select(list(self.keys)))
        first_of_key = np.maximum.accumulate(np.where(key_starts, positions, 0))
        if self.top.ties:
            value = sortable.column(self.top.by)
            run_starts = key_starts.copy()
            run_starts[1:] |= ~np.asarray(pc.equal(value.slice(1), value.slice(0, n - 1)), dtype=bool)
            rank = np.maximum.accumulate(np.where(run_starts, positions, 0)) - first_of_key
        else:
            rank = positions - first_of_key
        keep = rank < self.top.n
        return rows.take(pc.filter(indices, pa.array(keep))), key_starts[keep]
