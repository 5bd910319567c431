"""Aggregates a user names in ``keyed.agg(name=rs.count(), ...)``.

Every aggregate is a *mergeable partial aggregate*: a batch is reduced to a
partial per key with ``Table.group_by``, partials are merged the same way, and
a partial is finalized into the value the user sees. That is what lets
readers pre-aggregate before the shuffle and lets state be merged epoch after
epoch in any batching, with the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from raystream.errors import PlanError

AggregateKind = Literal["count", "sum", "min", "max", "mean", "count_distinct"]
_KINDS = ("count", "sum", "min", "max", "mean", "count_distinct")


@dataclass(frozen=True)
class Aggregate:
    """One aggregate over one column (or over rows, for ``count()``).

    Build it with :func:`count`, :func:`sum`, :func:`min`, :func:`max`,
    :func:`mean` or :func:`count_distinct` rather than directly.
    """

    kind: AggregateKind
    column: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise PlanError(
                f"unknown aggregate {self.kind!r}; the aggregates are: " + ", ".join(f"rs.{k}()" for k in _KINDS)
            )
        if self.column is not None and not isinstance(self.column, str):
            raise PlanError(f"rs.{self.kind}: the column must be a column name, got {self.column!r}")
        if self.column is None and self.kind != "count":
            raise PlanError(f"rs.{self.kind} needs a column, as rs.{self.kind}('price')")

    def __repr__(self) -> str:
        return f"rs.{self.kind}({self.column!r})" if self.column is not None else f"rs.{self.kind}()"


def count(column: str | None = None) -> Aggregate:
    """Count rows, or the non-null values of ``column`` when one is given."""
    return Aggregate("count", column)


def sum(column: str) -> Aggregate:  # noqa: A001 - the public name mirrors SQL and pandas
    """Sum of the non-null values of ``column`` (null when there are none)."""
    return Aggregate("sum", column)


def min(column: str) -> Aggregate:  # noqa: A001
    """Smallest non-null value of ``column``."""
    return Aggregate("min", column)


def max(column: str) -> Aggregate:  # noqa: A001
    """Largest non-null value of ``column``."""
    return Aggregate("max", column)


def mean(column: str) -> Aggregate:
    """Arithmetic mean of the non-null values of ``column``, as float64."""
    return Aggregate("mean", column)


def count_distinct(column: str) -> Aggregate:
    """Number of distinct non-null values of ``column``. Exact, not approximate."""
    return Aggregate("count_distinct", column)


@dataclass(frozen=True)
class Top:
    """Which rows ``top`` keeps of each key: those ranked within the first ``n`` by ``by``.

    Built by :meth:`raystream.KeyedStream.top` and
    :meth:`raystream.WindowedStream.top`, which check the arguments.

    Attributes:
        by: The column that ranks the rows.
        n: How many ranks to keep.
        ties: ``True`` ranks as SQL's ``RANK()``: a row is kept when fewer
            than ``n`` rows of its key rank strictly before it, so ties at
            the last rank are all kept. ``False`` keeps exactly ``n`` rows
            (``ROW_NUMBER()``), breaking ties by the other columns, ascending.
        descending: ``True`` ranks the largest values first.
    """

    by: str
    n: int = 1
    ties: bool = True
    descending: bool = True

    def __repr__(self) -> str:
        return f"top({self.by!r}, n={self.n}, ties={self.ties}, descending={self.descending})"
