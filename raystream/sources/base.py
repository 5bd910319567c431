"""The source contract: a source is cut into splits, and a split is read in batches.

Files and Kafka implement the same contract. A file's row offset and a Kafka
offset are both just a split's *position*: an opaque, small, picklable value
that ``open_split`` accepts back to resume exactly after the last batch that
was returned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from raystream._jsonable import from_json, to_json
from raystream.errors import RaystreamError

#: The columns of ``stream.dead_letters()``, whatever the source. A dead letter is a record that could not
#: become a row (it does not parse, does not fit the schema, has no event time), kept with where it came from
#: and why instead of being dropped. Where it came from is said in the source contract's own terms, a stage and
#: a split and a place in that split, so no column belongs to one kind of source:
#:
#: - ``source``: the source stage that read it, as ``Job.metrics()`` names stages (``"source"``, or
#:   ``"source-2"``... in a plan with several sources).
#: - ``split_id``: the split it came from (:attr:`Split.split_id`): ``"clicks/2"`` (topic/partition) for
#:   Kafka, the file's path relative to the path given (``"2026/a.csv"``) for a file.
#: - ``position``: where the record is in its split, as an integer: the Kafka offset, or a file's line
#:   number, from 1 (a CSV file's header is line 1). Null for a row refused after it was decoded (a row with
#:   no event time), which has no place of its own in the split. It is not the split's resume position.
#: - ``raw``: the record as read (a Kafka value, null for a tombstone; a file's line, without its newline),
#:   or, for a row refused after it was decoded, the row as JSON.
#: - ``error``: what is wrong with it, in words.
DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("split_id", pa.string()),
        ("position", pa.int64()),
        ("raw", pa.binary()),
        ("error", pa.string()),
    ]
)


def dead_letter_table(
    source: str,
    split_id: str | Sequence[str | None] | pa.Array | pa.ChunkedArray | None,
    raw: Sequence[bytes | None] | pa.Array | pa.ChunkedArray,
    error: str | Sequence[str] | pa.Array | pa.ChunkedArray,
    position: Sequence[int | None] | np.ndarray | pa.Array | pa.ChunkedArray | None = None,
) -> pa.Table:
    """Dead letters in :data:`DEAD_LETTER_SCHEMA`: one per element of ``raw``.

    Args:
        source: The source's label, the same for every row (a reader actor
            replaces it with its stage's name).
        split_id: The split, one for all rows (a string) or one per row.
        raw: The records as read, one per dead letter.
        error: What is wrong, one for all rows (a string) or one per row.
        position: Each record's place in its split (see :data:`DEAD_LETTER_SCHEMA`), or ``None``: null.
    """
    rows = len(raw)

    def column(value: Any, kind: pa.DataType) -> pa.Array | pa.ChunkedArray:
        if value is None:
            return pa.nulls(rows, kind)
        if isinstance(value, str):
            return pa.repeat(pa.scalar(value, kind), rows)
        if isinstance(value, (pa.Array, pa.ChunkedArray)):
            return value.cast(kind)
        return pa.array(value, kind)

    columns = [source, split_id, position, raw, error]
    return pa.table(
        [column(value, f.type) for value, f in zip(columns, DEAD_LETTER_SCHEMA, strict=True)],
        schema=DEAD_LETTER_SCHEMA,
    )


def relabel_dead_letters(letters: pa.Table, source: str) -> pa.Table:
    """``letters`` with ``source`` in their ``source`` column (a reader actor names its stage there)."""
    index = letters.schema.get_field_index("source")
    return letters.set_column(index, DEAD_LETTER_SCHEMA.field("source"), pa.repeat(pa.scalar(source), letters.num_rows))


class ReplayError(RaystreamError):
    """A split could not re-read exactly what a logged epoch read."""


@dataclass(frozen=True)
class Split:
    """One independently readable piece of a source.

    Attributes:
        split_id: Stable and unique within its source, for example
            ``"data/part-0.parquet#rg0-3"`` or ``"clicks/2"``. Checkpoints and
            metrics refer to a split by this id.
        payload: Whatever the source needs to open the split (a path, a row
            group range, a partition number). It must be picklable, since it
            travels to a reader actor, and storable in a checkpoint through
            :meth:`Source.encode_payload`: JSON values, tuples, dicts and the
            dataclasses of the source's ``payload_types``.
        min_event_time_ms: The split's smallest event time, when the source
            knows it before reading (Parquet statistics, partition values).
            Splits are dealt to readers in this order, and an unstarted
            split holds the watermark here.
    """

    split_id: str
    payload: Any = None
    min_event_time_ms: int | None = None


class SplitReader(ABC):
    """Reads one split, batch by batch, inside a reader actor.

    One reader actor calls one ``SplitReader`` from a single thread. It is
    built by :meth:`Source.open_split` from the split and a position alone.
    """

    @abstractmethod
    def next_batch(self, max_rows: int) -> pa.Table | None:
        """Return the next batch of at most ``max_rows`` rows.

        Called repeatedly, once per epoch or more, until it returns ``None``.

        Returns:
            A table of up to ``max_rows`` rows; an empty table when an
            unbounded split has nothing right now (it should wait a little,
            at most ~100 ms, before saying so); ``None`` once a bounded split
            is exhausted. After ``None`` it is not called again.
        """

    @abstractmethod
    def position(self) -> Any:
        """Return the position just after the last batch returned.

        Passing it to :meth:`Source.open_split` gives a reader whose first
        batch starts with the first row that was never returned. It is small
        and JSON-serializable (an int, a string, a list...): checkpoints and
        the write-ahead log store it.
        """

    def read_until(self, position: Any, max_rows: int) -> pa.Table | None:
        """Re-read, after a failure, exactly what an epoch read: up to ``position``, in at most ``max_rows``.

        Called instead of ``next_batch`` when an epoch is replayed from the
        write-ahead log. ``position`` and ``max_rows`` are what the split
        reported and was given in the original epoch. The default suits
        deterministic sources (files, tables): the same ``next_batch``
        returns the same rows. A source whose batches depend on timing
        (Kafka) overrides it.

        Raises:
            ReplayError: when the split does not end at ``position``.
        """
        batch = self.next_batch(max_rows)
        if self.position() != position:
            raise ReplayError(
                f"replaying a split ended at position {self.position()!r}, not at the logged {position!r}: "
                "the source does not return the same rows from the same position, so it cannot be replayed; make "
                "its reads deterministic (override read_until), or start over with a new checkpoint_dir"
            )
        return batch

    def watermark_ms(self) -> int | None:
        """A watermark the split itself declares (epoch ms), or ``None``.

        Called after each ``next_batch``. A source that knows no event time
        can come before this value any more (a test script, a partition
        marked idle by its producer) says so here; the job's watermark then
        uses the larger of this and the one derived from event times.
        """
        return None

    def take_dead_letters(self) -> pa.Table | None:
        """Records that could not be decoded since the last call, or ``None``.

        Called after each ``next_batch``. A source that routes malformed
        records to ``stream.dead_letters()`` returns them here, with the raw
        bytes, where they came from and the error, instead of dropping them.
        """
        return None

    def metrics(self) -> dict[str, Any]:
        """Small numbers about the split (a Kafka partition's lag), shown in ``Job.metrics()``."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release files or connections. Called once, when the reader is done."""


class Source(ABC):
    """A bounded or unbounded collection of splits that yield Arrow tables.

    A ``Source`` object is built on the driver, at plan time, and pickled to
    reader actors. Its constructor checks what it can (paths exist, the
    schema is readable) so that bad input fails before a job starts.
    """

    #: The user-facing name, used in errors: ``"read_parquet"``.
    name: str = "source"
    #: True when every split ends; the job then ends when they all have.
    bounded: bool = True
    #: True when a split can be re-read from any position it reported.
    replayable: bool = True
    #: True when ``splits()`` may return new splits while a job runs (new Kafka partitions, files landing).
    discovers_splits: bool = False
    #: How often, in seconds, a source that discovers splits is asked for new ones.
    discovery_interval_s: float = 5.0
    #: True when readers may return malformed records through ``take_dead_letters``.
    has_dead_letters: bool = False
    #: The most rows a reader takes per epoch unless ``RunConfig.max_batch_rows`` says otherwise: big batches
    #: for files, where each epoch's fixed costs are paid over more rows, and smaller ones where latency counts.
    batch_rows: int = 100_000
    #: The dataclasses a split payload may hold, which ``decode_payload`` may rebuild from a checkpoint.
    payload_types: tuple[type, ...] = ()
    #: A split that readers have polled for this many milliseconds without a single row stops holding the
    #: watermark back (a Kafka partition that never receives data), until its first row. ``None``: it holds it.
    #: A split waiting behind others of its reader is not polled, so it keeps holding the watermark.
    new_split_idle_timeout_ms: int | None = None

    def identity(self) -> dict[str, Any]:
        """What this source reads, JSON-able: the paths, topics... with no credentials.

        Stored in checkpoints; a job resumes only from a checkpoint of the
        same identity, so that changing a source's paths or topics is an
        error that names the difference instead of wrong positions.
        """
        return {"source": self.name}

    def encode_payload(self, payload: Any) -> Any:
        """A split's payload as JSON-able data, for checkpoints; :meth:`decode_payload` reverses it.

        The default stores JSON values, tuples, dicts with string keys and
        the dataclasses listed in ``payload_types``. Override both methods
        for anything else. Checkpoints never hold pickled objects, so that
        reading one cannot run code.

        Raises:
            RaystreamError: when the payload cannot be stored.
        """
        return to_json(payload, self.payload_types, f"{self.name}: a split payload")

    def decode_payload(self, data: Any) -> Any:
        """The payload that :meth:`encode_payload` stored, rebuilt on the driver when a job resumes."""
        return from_json(data, self.payload_types, f"{self.name}: a split payload")

    def encode_split(self, split: Split) -> dict[str, Any]:
        """A split as JSON-able data for checkpoints (its payload through :meth:`encode_payload`)."""
        return {
            "split_id": split.split_id,
            "payload": self.encode_payload(split.payload),
            "min_event_time_ms": split.min_event_time_ms,
        }

    def decode_split(self, data: Any) -> Split:
        """The split that :meth:`encode_split` stored.

        Raises:
            RaystreamError: when ``data`` is not a stored split.
        """
        from raystream._jsonable import JsonableError

        fields = ("split_id", "payload", "min_event_time_ms")
        if not isinstance(data, dict) or set(data) != set(fields):
            raise JsonableError(f"{self.name}: {str(data)[:80]!r} is not a stored split")
        split_id, low = data["split_id"], data["min_event_time_ms"]
        if not isinstance(split_id, str) or not (low is None or type(low) is int):
            raise JsonableError(f"{self.name}: {str(data)[:80]!r} is not a stored split")
        return Split(split_id, self.decode_payload(data["payload"]), low)

    def check_resume(self, positions: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Check, on the driver, that a job can resume at these checkpointed positions (split id -> position).

        Called once when a job resumes from a checkpoint, before any split is
        opened. A Kafka partition whose checkpointed offset lies past its end
        (the broker lost its data) raises here instead of waiting forever.

        Raises:
            RaystreamError: naming the split, its position and what is wrong.
        """

    def on_epoch_complete(self, positions: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Called on the driver after an epoch's output is committed, with every split's position.

        A source may publish the positions for information (Kafka consumer
        group offsets); raystream never reads them back.
        """

    @abstractmethod
    def schema(self) -> pa.Schema | None:
        """Return the schema of every batch, or ``None`` when unknown until read.

        Called on the driver at plan time to check column names.
        """

    def estimated_bytes(self) -> int | None:
        """About how many bytes the source holds, when it can tell cheaply (``None``: it cannot).

        The planner broadcasts a join's table whose sources are small enough
        (``RunConfig.broadcast_join_max_bytes``).
        """
        return None

    @abstractmethod
    def splits(self, parallelism: int) -> list[Split]:
        """Return the splits to read. Called on the driver when a job starts.

        Args:
            parallelism: The number of reader actors, a hint for sources that
                can cut their data freely (in-memory tables).
        """

    @abstractmethod
    def open_split(self, split: Split, position: Any | None) -> SplitReader:
        """Open ``split`` in a reader actor, at ``position`` or at its start when ``None``."""
