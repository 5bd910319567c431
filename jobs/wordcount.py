"""WordCount, the seed's example: Flink's socket WordCount in raystream.

Read lines, split them into words, key by word, count, print::

    raystream run jobs/wordcount.py --config configs/wordcount-files.yaml
    raystream run jobs/wordcount.py --config configs/wordcount-socket.yaml   # with: nc -lk 9999
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

import raystream as rs
from raystream.config import SourceConfig


@dataclass(frozen=True)
class Config:
    """The job's settings, from the ``job:`` section of the YAML.

    Attributes:
        source: Where the lines come from (``kind: text`` or ``kind: socket``).
    """

    source: SourceConfig


def split_words(lines: pa.Table) -> pa.Table:
    """Lower-case the lines and split them into words, vectorized over the whole batch."""
    pieces = pc.split_pattern_regex(pc.utf8_lower(lines.column("line")), r"[^a-z0-9']+")
    words = pc.list_flatten(pieces)
    return pa.table({"word": words.filter(pc.not_equal(words, ""))})


def build(config: Config) -> rs.Stream:
    """Count each word of the configured source."""
    return config.source.build().map_batches(split_words).key_by("word").agg(count=rs.count())
