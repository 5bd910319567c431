"""File sources: Parquet, CSV, newline-delimited JSON and text lines.

Every file source follows the same plan, on the driver, in its constructor,
so that bad input fails before a job starts:

1. **List.** Resolve each path (an fsspec URL: a file, a directory or a glob;
   ``s3://`` through s3fs, ``hdfs://`` through pyarrow's HadoopFileSystem,
   ``gs://``/``abfs://`` when gcsfs/adlfs are installed, see
   :mod:`raystream._fs`) to a sorted list of data files. Names starting with
   ``.`` or ``_`` (``_SUCCESS``, ``.crc``, ``_staging/``) are ignored below a
   directory or a glob; a missing path, or one that matches no data file,
   raises :class:`FileNotFoundError`.
2. **Hive partitions.** Each folder named ``key=value`` between the path
   given (a directory, or the part of a glob before its first wildcard) and
   a file becomes a column ``key`` with that value (URL-decoded; an empty
   value and ``__HIVE_DEFAULT_PARTITION__`` are null). A folder name without
   ``=`` is not a partition, and neither is a folder in the path given
   itself. The type is inferred over every listed file, like pyarrow
   datasets: ``int64`` when every value is an integer (``hour=03`` is 3),
   else ``string`` (``dt=2026-01-01`` stays the string ``"2026-01-01"``).
   Partition columns come after the files' columns; a file outside a folder
   that others are in gets null. ``partitioning=None`` turns this off.
3. **Prune by time.** With ``time_column``, ``start`` and ``end`` (half-open:
   ``start <= t < end``; a datetime, a ``datetime.date``, or an ISO string;
   naive means UTC), a file whose *partition time range* lies outside
   ``[start, end)`` is dropped before it is opened. The range comes from the
   partition columns in ``partition_time`` (by default ``dt`` or ``date``,
   and ``hour`` when present): a day value (``2026-01-01`` or ``20260101``)
   is that UTC day, narrowed to one hour by an ``hour`` (0-23) column; an
   hour value (``2026-01-01T03``, ``2026-01-01 03``, ``2026-01-01-03``) is
   that hour. The partitions are trusted: their rows must have event times
   in their range.
4. **Schemas.** Read each remaining file's schema (a Parquet footer, the
   first block of a CSV or JSON file) and unify them. Column sets must be
   equal; types must be equal or safely promotable (``int64`` and ``double``
   give ``double``, ``null`` and any type give that type). Anything else is
   a :class:`~raystream.errors.PlanError` that names both files and the
   column. With ``schema=``, it gives the files' columns and types instead;
   a column of it that is also a partition folder of a file comes from the
   folder (in the schema's type), and partition columns it does not name are
   appended as in step 2 (only those of files listed at plan time: to watch
   an empty folder with partition columns, name them in ``schema=``).
5. **Parquet row groups.** Row groups whose statistics on ``time_column``
   lie outside ``[start, end)`` are dropped; only footers are read.

Then, in reader actors, a split (a file, or a range of Parquet row groups)
is read batch by batch; each batch gets its partition columns, is cast to
the source's schema, and, with ``start``/``end``, loses its rows outside
``[start, end)`` (and rows with a null time), vectorized. A split's position
is a plain ``int``: the number of the split's rows already consumed from the
file (returned or filtered out), except for :class:`TextSource`, where it is
the byte offset of the first line not yet returned (so resuming a large text
file seeks instead of re-reading it).

**Event-time order.** With ``time_column``, each split's
``min_event_time_ms`` is a lower bound of its event times: the smallest
Parquet statistic of its row groups, else the start of its partition time
range, raised to ``start``. The engine deals splits in that order.

**Progress.** Each reader's :meth:`~SplitReader.metrics` (shown per split in
``Job.metrics()["splits"]``) holds ``file`` (its URL, without credentials),
``rows_read`` (rows consumed from the file), ``bytes_read`` and
``bytes_total`` (Parquet: compressed bytes of the row groups started and of
all of the split's row groups; CSV, JSON, text: bytes of the file read so far
and its size), and ``event_time_ms`` (the largest event time returned, with
``time_column``).

**Which files are opened.** :meth:`files` lists the files a source reads
after pruning. Every open of a file, at plan time or by a reader, goes
through :func:`_open_file`, so a test can count them by wrapping it.

**Watching.** With ``watch=True`` the source is unbounded: every
``poll_interval`` the engine calls :meth:`splits`, which lists the paths
again and returns one split per file (Parquet: per run of row groups) with a
stable id derived from the file's path, so files that landed since are new
splits and files already read are not read again after a restart. A file is
assumed to land atomically: written elsewhere (or under a ``.`` or ``_``
name, which is ignored) and then renamed into place, never modified after.
The schema is fixed at plan time, from the files already there or from
``schema=``; a new Parquet file must have its columns (extra ones are
ignored), and a new file's partition values must fit their column types.

**Modules.** ``_listing`` (steps 1 to 3: paths, hidden names, Hive
partitions, partition time ranges), ``_source`` (the common
``_FileSource``, step 4's unification), ``_rows`` (the row reader:
``_RowBuffer``, ``_RowReader``), ``_parquet`` (step 5), ``_line_records``
(what CSV and JSON lines share), ``_csv_files``, ``_json_files`` and ``_text``.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from raystream.sources.files import _opening
from raystream.sources.files._csv_files import CsvSource
from raystream.sources.files._json_files import JsonSource
from raystream.sources.files._parquet import ParquetSource
from raystream.sources.files._text import TextSource

__all__ = ["CsvSource", "JsonSource", "ParquetSource", "TextSource"]

#: Every open of a data file goes through this (see :func:`_opening.open_file`); a test may wrap it.
_open_file = _opening.open_file
#: Rows taken from a file at a time when rows outside [start, end) are filtered out; a test may lower it.
_FILTER_CHUNK_ROWS = _opening.FILTER_CHUNK_ROWS
#: The package's names that are forwarded, when set, to what the readers use in :mod:`._opening`.
_FORWARDED = {"_open_file": "open_file", "_FILTER_CHUNK_ROWS": "FILTER_CHUNK_ROWS"}


class _Package(types.ModuleType):
    """This package: setting ``_open_file`` or ``_FILTER_CHUNK_ROWS`` on it sets what the readers use too."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in _FORWARDED:
            setattr(_opening, _FORWARDED[name], value)


sys.modules[__name__].__class__ = _Package
