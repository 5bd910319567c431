"""Named ``pyarrow.compute`` expressions evaluated over a table, with Acero."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.compute as pc


def evaluate_exprs(table: pa.Table, exprs: Mapping[str, pc.Expression]) -> pa.Table:
    """Evaluate named pyarrow.compute expressions over ``table``, vectorized, with Acero."""
    import pyarrow.acero as acero

    declaration = acero.Declaration.from_sequence(
        [
            acero.Declaration("table_source", acero.TableSourceNodeOptions(table)),
            acero.Declaration("project", acero.ProjectNodeOptions(list(exprs.values()), list(exprs.keys()))),
        ]
    )
    return declaration.to_table(use_threads=False)
