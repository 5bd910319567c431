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

AggregateKind = Literal["count", "sum", "min", "max", "mean", "count_distinct"]


@dataclass(frozen=True)
class Aggregate:
    """One aggregate over one column (or over rows, for ``count()``).

    Build it with :func:`count`, :func:`sum`, :func:`min`, :func:`max`,
    :func:`mean` or :func:`count_distinct` rather than directly.
    """

    kind: AggregateKind
    column: str | None = None

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
