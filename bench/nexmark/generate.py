"""Write Nexmark events to Parquet, or produce them to Kafka as JSON.

    python -m bench.nexmark.generate --events 20000000 --out /tmp/nexmark            # bids only
    python -m bench.nexmark.generate --events 20000000 --out /tmp/nexmark --kinds all
    python -m bench.nexmark.generate --events 1000000 --kafka bids --bootstrap-servers 127.0.0.1:9092

The events are ``raystream.datagen``'s: a pure function of the seed and the
event number, so the same arguments always write the same rows. A dataset
folder holds one subfolder per kind (``bid/``, ``auction/``, ``person/``) of
files that each cover a contiguous range of event numbers, and a
``_nexmark.json`` that records how it was made, so a benchmark can reuse it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raystream.datagen import DEFAULT_BASE_TIME_MS, DEFAULT_RATE, KINDS, SCHEMAS, Kind, NexmarkGenerator

#: The file that describes a dataset: the arguments it was generated with.
MANIFEST = "_nexmark.json"
#: Event numbers per generation step (and per Parquet row group of bids, give or take).
_STEP_EVENTS = 1 << 19
#: Event numbers per Parquet file.
_FILE_EVENTS = 1 << 22


def dataset_manifest(events: int, kinds: Sequence[str], seed: int, rate: float, base_time_ms: int) -> dict[str, Any]:
    """What identifies a dataset: two datasets with equal manifests hold the same rows."""
    return {
        "events": events,
        "kinds": sorted(kinds),
        "seed": seed,
        "rate": rate,
        "base_time_ms": base_time_ms,
        "format": 1,
    }


def write_parquet(
    out: str | Path,
    events: int,
    *,
    kinds: Sequence[str] = ("bid",),
    seed: int = 0,
    rate: float = DEFAULT_RATE,
    base_time_ms: int = DEFAULT_BASE_TIME_MS,
    reuse: bool = True,
) -> Path:
    """Write the events ``0 .. events - 1`` of ``kinds`` under ``out/<kind>/``; return ``out``.

    With ``reuse``, a folder whose manifest matches is kept as it is. Any
    other content of ``out/<kind>/`` is replaced. The manifest is written
    last, so an interrupted run is never taken for a complete dataset.
    """
    out = Path(out)
    manifest = dataset_manifest(events, kinds, seed, rate, base_time_ms)
    manifest_path = out / MANIFEST
    if reuse and manifest_path.exists() and json.loads(manifest_path.read_text()) == manifest:
        return out
    manifest_path.unlink(missing_ok=True)
    generator = NexmarkGenerator(seed=seed, rate=rate, base_time_ms=base_time_ms)
    for kind in kinds:
        folder = out / kind
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for number, first in enumerate(range(0, max(events, 1), _FILE_EVENTS)):
            last = min(first + _FILE_EVENTS, events)
            with pq.ParquetWriter(folder / f"part-{number:05d}.parquet", SCHEMAS[kind]) as writer:
                for step in range(first, last, _STEP_EVENTS):  # a step of 512k events, not a row
                    writer.write_table(generator.table(cast(Kind, kind), step, min(step + _STEP_EVENTS, last)))
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return out


def json_lines(table: pa.Table) -> pa.Array:
    """Each row of ``table`` as one JSON object, built column-wise with Arrow string kernels.

    Integers and floats are written as numbers, timestamps as ISO-8601
    strings (which ``pyarrow.json`` reads back into a timestamp column), and
    strings quoted, with backslashes and quotes escaped.
    """
    parts: list[Any] = []
    for i, (name, column) in enumerate(zip(table.column_names, table.columns, strict=True)):
        parts.append(("{" if i == 0 else ",") + json.dumps(name) + ":")
        kind = column.type
        if pa.types.is_timestamp(kind):
            text = pc.strftime(column, format="%Y-%m-%dT%H:%M:%S")
            parts += ['"', text, '"']
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            escaped = pc.replace_substring(pc.replace_substring(column, "\\", "\\\\"), '"', '\\"')
            parts += ['"', escaped, '"']
        else:
            parts.append(pc.cast(column, pa.string()))
    parts.append("}")
    joined = pc.binary_join_element_wise(*parts, "")
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def produce_kafka(
    topic: str,
    bootstrap_servers: str,
    events: int,
    *,
    kind: str = "bid",
    seed: int = 0,
    rate: float = DEFAULT_RATE,
    base_time_ms: int = DEFAULT_BASE_TIME_MS,
    producer_config: dict[str, Any] | None = None,
    step_events: int = 100_000,
) -> int:
    """Produce the ``kind`` rows of events ``0 .. events - 1`` to ``topic`` as JSON; return how many.

    Records are encoded a whole step at a time (:func:`json_lines`) and
    handed over with ``produce_batch``, which takes no record timestamps:
    read the event time from the ``date_time`` field
    (``rs.read_kafka(..., time_column="date_time")``). Every delivery is
    confirmed before this returns.

    Raises:
        RuntimeError: A record could not be delivered (the broker's message).
    """
    from confluent_kafka import KafkaError, Producer

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "linger.ms": 20,
        "queue.buffering.max.messages": 1_000_000,
    }
    config.update(producer_config or {})
    producer = Producer(config)
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    generator = NexmarkGenerator(seed=seed, rate=rate, base_time_ms=base_time_ms)
    produced = 0
    for step in range(0, events, step_events):
        table = generator.table(cast(Kind, kind), step, min(step + step_events, events))
        values = json_lines(table).to_pylist()
        # confluent-kafka takes one dict per record; the values were encoded for the whole step at once.
        pending = [{"value": value} for value in values]
        while pending:
            producer.produce_batch(topic, pending, on_delivery=delivered)
            refused = [m for m in pending if "_error" in m]  # the client reports refusals per record
            for message in refused:
                error = message.pop("_error")
                if getattr(error, "code", lambda: None)() != KafkaError._QUEUE_FULL:
                    raise RuntimeError(f"produce to {topic!r} failed: {error}")
            if refused:
                producer.poll(0.1)
            pending = refused
        produced += len(values)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining or failures:
        raise RuntimeError(
            f"produce to {topic!r}: {len(failures)} records failed ({failures[:1]}) and {remaining} unconfirmed"
        )
    return produced


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000_000, help="events numbered 0..N-1 (92%% are bids)")
    parser.add_argument("--kinds", default="bid", help="'bid', 'all', or a comma-separated list of bid,auction,person")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="events per second of event time")
    parser.add_argument("--out", help="write Parquet under this folder")
    parser.add_argument("--kafka", metavar="TOPIC", help="produce JSON records of one kind to this topic")
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    args = parser.parse_args(argv)
    kinds = list(KINDS) if args.kinds == "all" else [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        parser.error(f"--kinds: unknown kind {unknown[0] if unknown else '(none)'}; use bid, auction, person or all")
    if not args.out and not args.kafka:
        parser.error("give --out DIR (Parquet) or --kafka TOPIC")
    started = time.perf_counter()
    if args.out:
        write_parquet(args.out, args.events, kinds=kinds, seed=args.seed, rate=args.rate, reuse=False)
        size = sum(f.stat().st_size for f in Path(args.out).rglob("*.parquet"))
        print(f"wrote {args.events:,} events ({', '.join(kinds)}) to {args.out}: {size / 2**20:,.0f} MiB")
    if args.kafka:
        if len(kinds) != 1:
            parser.error("--kafka produces one kind to one topic; choose it with --kinds")
        count = produce_kafka(args.kafka, args.bootstrap_servers, args.events, kind=kinds[0], seed=args.seed)
        print(f"produced {count:,} {kinds[0]} records to {args.kafka}")
    seconds = time.perf_counter() - started
    print(f"{seconds:.1f}s, {args.events / seconds:,.0f} events/s")


if __name__ == "__main__":
    main()
