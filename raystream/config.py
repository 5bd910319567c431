"""The YAML job configs that ``raystream run`` reads, validated (``RunConfig`` is in :mod:`raystream.run_config`).

A YAML job config has up to three sections::

    job:   # the job's own settings, validated against the job module's Config dataclass
      source: {kind: text, path: data/words/}
    run:   # RunConfig fields
      parallelism: 2
    sink:  # where the output goes
      kind: print

A job with several outputs names each under ``sinks`` instead of ``sink``,
and its ``build`` returns a mapping from those names to streams (a single
stream goes to every sink)::

    sinks:
      alerts: {kind: kafka, topic: alerts, transactional_id: alerts-1}
      per_minute: {kind: parquet, path: out/per-minute}

An unknown key or a value of the wrong type is a :class:`ConfigError` that
names the key, such as ``run.parallelism``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from raystream._fs import redact
from raystream.errors import ConfigError
from raystream.run_config import RunConfig

if typing.TYPE_CHECKING:
    from raystream.outputs import Outputs
    from raystream.runtime.job import Job
    from raystream.stream import Stream


@dataclass(frozen=True)
class SourceConfig:
    """A source chosen in YAML, so one job file can read history, a live feed, or both.

    Attributes:
        kind: ``text``, ``parquet``, ``csv``, ``json``, ``socket``, ``kafka``, or
            ``hybrid`` (``history`` then ``live``, switching at ``switch_at``).
        path: For file kinds: a file, folder, glob or URL.
        host: For ``socket``.
        port: For ``socket``.
        topics: For ``kafka``.
        bootstrap_servers: For ``kafka``.
        schema: For ``kafka`` (and ``csv``/``json`` files): column name to type, in
            pyarrow's names (``int64``, ``double``, ``string``, ``timestamp[ms]``...).
        start: For ``kafka``: ``earliest`` (the default), ``latest`` or an ISO time. For
            file kinds: read only events at or after this ISO time (files are pruned).
        end: For file kinds: read only events before this ISO time.
        stop: For ``kafka``: absent (unbounded), ``latest``, or an ISO time.
        time_column: The event-time column, if any.
        watch: For file kinds: keep watching ``path`` for new files.
        poll_interval: For file kinds with ``watch``: how often to look, such as ``10s``.
        storage_options: fsspec options for ``path``.
        consumer_config: For ``kafka``: librdkafka settings.
        history: For ``hybrid``: the file source that holds the history.
        live: For ``hybrid``: the live source (``kafka``).
        switch_at: For ``hybrid``: the ISO time where history hands over to live.
        errors: For ``kafka``, ``csv`` and ``json``: what a malformed record does, ``dead_letter`` (the
            default: it goes to the dead letters and the job goes on) or ``fail`` (the job fails, naming it).
    """

    kind: Literal["text", "parquet", "csv", "json", "socket", "kafka", "hybrid"]
    path: str | None = None
    host: str = "localhost"
    port: int = 9999
    topics: list[str] = field(default_factory=list)
    bootstrap_servers: str = "localhost:9092"
    schema: dict[str, str] = field(default_factory=dict)
    start: str | None = None
    end: str | None = None
    stop: str | None = None
    time_column: str | None = None
    watch: bool = False
    poll_interval: str = "10s"
    storage_options: dict[str, Any] = field(default_factory=dict)
    consumer_config: dict[str, Any] = field(default_factory=dict)
    history: SourceConfig | None = None
    live: SourceConfig | None = None
    switch_at: str | None = None
    errors: Literal["dead_letter", "fail"] = "dead_letter"

    #: The kinds that tell malformed records apart, and so take ``errors``.
    ERRORS_KINDS: typing.ClassVar[tuple[str, ...]] = ("kafka", "csv", "json")
    #: The file kinds with an event time, which ``raystream backfill`` can run over a time range.
    BACKFILL_KINDS: typing.ClassVar[tuple[str, ...]] = ("parquet", "csv", "json")

    def __repr__(self) -> str:
        # storage_options and consumer_config hold credentials (keys, SASL passwords): never show them;
        # path is shown without a URL's password.
        shown = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("storage_options", "consumer_config")
        }
        if self.path is not None:
            shown["path"] = redact(self.path)
        return "SourceConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def arrow_schema(self) -> pa.Schema | None:
        """``schema`` as a pyarrow schema; a ConfigError names a type pyarrow does not know."""
        if not self.schema:
            return None
        fields = []
        for name, alias in self.schema.items():
            try:
                fields.append(pa.field(name, pa.type_for_alias(str(alias))))
            except ValueError as exc:
                raise ConfigError(
                    f"config: 'job.source.schema.{name}' has unknown type {alias!r}; use a pyarrow type "
                    "name such as int64, double, string, bool or timestamp[ms]"
                ) from exc
        return pa.schema(fields)

    def build(self, where: str = "job.source") -> Stream:
        """Return the stream this config describes (``where`` is its key path, for errors)."""
        import raystream as rs

        options = self.storage_options or None
        if self.errors != "dead_letter" and self.kind not in self.ERRORS_KINDS:
            raise ConfigError(
                f"config: '{where}.errors' is for source kinds {', '.join(self.ERRORS_KINDS)}, not {self.kind!r}; "
                "remove it"
            )
        if self.kind == "hybrid":
            if self.history is None or self.live is None or self.switch_at is None:
                raise ConfigError(
                    f"config: '{where}' of kind 'hybrid' needs 'history' (a file source), 'live' (a kafka "
                    "source) and 'switch_at' (an ISO time)"
                )
            history = self.history.build(f"{where}.history")
            return rs.hybrid(history, self.live.build(f"{where}.live"), self.switch_at)
        if self.kind == "socket":
            return rs.read_socket(self.host, self.port)
        if self.kind == "kafka":
            if not self.topics:
                raise ConfigError(f"config: '{where}.topics' is required for source kind 'kafka', as topics: [clicks]")
            return rs.read_kafka(
                self.topics,
                self.bootstrap_servers,
                schema=self.arrow_schema(),
                time_column=self.time_column,
                start=_kafka_bound(self.start or "earliest", f"{where}.start", ("earliest", "latest")),
                stop=None if self.stop is None else _kafka_bound(self.stop, f"{where}.stop", ("latest",)),
                consumer_config=self.consumer_config or None,
                errors=self.errors,
            )
        if self.path is None:
            raise ConfigError(
                f"config: '{where}.path' is required for source kind {self.kind!r}; give a file, folder, glob or URL"
            )
        watching: dict[str, Any] = {"watch": True, "poll_interval": self.poll_interval} if self.watch else {}
        if self.kind == "text":
            if self.start is not None or self.end is not None:
                raise ConfigError(f"config: '{where}' of kind 'text' has no event time, so it takes no start or end")
            return rs.read_text(self.path, storage_options=options, **watching)
        files: dict[str, Any] = {"time_column": self.time_column, "storage_options": options, **watching}
        if self.start is not None or self.end is not None:
            files.update(start=self.start, end=self.end)
        if self.kind == "parquet":
            return rs.read_parquet(self.path, **files)
        if self.kind == "csv":
            return rs.read_csv(self.path, schema=self.arrow_schema(), errors=self.errors, **files)
        return rs.read_json(self.path, schema=self.arrow_schema(), errors=self.errors, **files)


def _kafka_bound(value: str, where: str, words: tuple[str, ...]) -> str | datetime:
    """A Kafka start or stop from YAML: one of ``words``, or an ISO time."""
    if value in words:
        return value
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"config: '{where}' is {value!r}; use {' or '.join(words)}, or an ISO time such as 2026-01-03T00:00:00"
        ) from None


@dataclass(frozen=True)
class SinkConfig:
    """Where a job run from the CLI writes.

    Attributes:
        kind: ``print``, ``parquet`` or ``kafka``.
        path: For ``parquet``: the output folder or URL.
        partition_by: For ``parquet``: Hive-style partition columns.
        num_rows: For ``print``: rows shown per epoch.
        sort_by: For ``print``: columns to sort by; ``-col`` sorts descending.
        storage_options: For ``parquet``: fsspec options for ``path``.
        compression: For ``parquet``: the codec (``snappy``, ``zstd``, ``lz4``, ``gzip``, ``brotli``, ``none``).
        mode: For ``parquet``: when the folder holds files, ``error`` (the
            default), ``overwrite`` or ``append``; see ``Stream.write_parquet``.
        topic: For ``kafka``: the topic to write (it must exist).
        bootstrap_servers: For ``kafka``.
        key: For ``kafka``: the column whose value becomes the record key.
        format: For ``kafka``: ``json`` (each row as an object) or ``raw`` (the ``value`` column).
        producer_config: For ``kafka``: librdkafka producer settings.
        transactional_id: For ``kafka``: makes the sink exactly-once (with a
            ``checkpoint_dir``), one Kafka transaction per epoch; unique per job.
    """

    kind: Literal["print", "parquet", "kafka"] = "print"
    path: str | None = None
    partition_by: list[str] = field(default_factory=list)
    num_rows: int = 20
    sort_by: list[str] = field(default_factory=list)
    storage_options: dict[str, Any] = field(default_factory=dict)
    compression: str = "snappy"
    mode: Literal["error", "overwrite", "append"] = "error"
    topic: str | None = None
    bootstrap_servers: str = "localhost:9092"
    key: str | None = None
    format: Literal["json", "raw"] = "json"
    producer_config: dict[str, Any] = field(default_factory=dict)
    transactional_id: str | None = None

    #: The keys each kind takes, besides ``kind``.
    KEYS: typing.ClassVar[dict[str, tuple[str, ...]]] = {
        "print": ("num_rows", "sort_by"),
        "parquet": ("path", "partition_by", "storage_options", "compression", "mode"),
        "kafka": ("topic", "bootstrap_servers", "key", "format", "producer_config", "transactional_id"),
    }

    def __post_init__(self) -> None:
        # A key of another kind would be ignored without a word (a parquet 'path' on a print sink): refuse it.
        for f in dataclasses.fields(self):
            if f.name == "kind" or f.name in self.KEYS.get(self.kind, ()):
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if getattr(self, f.name) != default:
                owner = next(kind for kind, keys in self.KEYS.items() if f.name in keys)
                raise ConfigError(
                    f"config: 'sink.{f.name}' is for sink kind {owner!r}, not {self.kind!r}; remove it, or set "
                    f"kind: {owner}"
                )
        if self.kind == "parquet" and not self.path:
            raise ConfigError("config: 'sink.path' is required for sink kind 'parquet'; give an output folder or URL")
        if self.kind == "kafka" and not self.topic:
            raise ConfigError("config: 'sink.topic' is required for sink kind 'kafka', as topic: clicks-per-user")
        if self.kind == "kafka" and self.transactional_id == "":
            raise ConfigError("config: 'sink.transactional_id' must be a non-empty string, or left out")

    def __repr__(self) -> str:
        # storage_options and producer_config hold credentials (keys, SASL passwords): never show them.
        shown = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("storage_options", "producer_config")
        }
        return "SinkConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    def add_to(self, outputs: Outputs, stream: Stream, name: str) -> Outputs:
        """Add ``stream`` into this sink to ``outputs``, as the output ``name``."""
        if self.kind == "print":
            return outputs.print(stream, name, num_rows=self.num_rows, sort_by=self.sort_by or None)
        if self.kind == "kafka":
            assert self.topic is not None  # checked in __post_init__
            return outputs.write_kafka(
                stream,
                self.topic,
                self.bootstrap_servers,
                name,
                key=self.key,
                format=self.format,
                producer_config=self.producer_config or None,
                transactional_id=self.transactional_id,
            )
        assert self.path is not None  # checked in __post_init__
        return outputs.write_parquet(
            stream,
            self.path,
            name,
            partition_by=self.partition_by or None,
            storage_options=self.storage_options or None,
            compression=self.compression,
            mode=self.mode,
        )

    def run(self, stream: Stream, config: RunConfig, wait: bool = True) -> Job:
        """Run ``stream`` into this sink; with ``wait``, until it ends."""
        if self.kind == "print":
            return stream.print(config, num_rows=self.num_rows, sort_by=self.sort_by or None, wait=wait)
        if self.kind == "kafka":
            assert self.topic is not None  # checked in __post_init__
            return stream.write_kafka(
                self.topic,
                self.bootstrap_servers,
                key=self.key,
                format=self.format,
                producer_config=self.producer_config or None,
                config=config,
                wait=wait,
                transactional_id=self.transactional_id,
            )
        assert self.path is not None  # checked in __post_init__
        return stream.write_parquet(
            self.path,
            config,
            partition_by=self.partition_by or None,
            storage_options=self.storage_options or None,
            wait=wait,
            compression=self.compression,
            mode=self.mode,
        )


def parse_config(cls: type[Any], data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from plain YAML data, checking every key and type.

    Args:
        cls: A dataclass type whose fields have type hints.
        data: A mapping (from YAML).
        where: The key path of ``data``, used in errors (``"job"``).

    Raises:
        ConfigError: naming the unknown key or the key of the wrong type.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: '{where}' must be a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"config: unknown key '{_join(where, key)}'; the keys of '{where}' are: {', '.join(fields)}"
            )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _coerce(hints[name], data[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config: missing key '{_join(where, name)}'")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config: '{where}' is invalid: {exc}") from exc


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config: '{where}' has an invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config: '{where}' must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"config: '{where}' must be a list, got {_describe(value)}")
        items = [_coerce(args[0] if args else Any, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config: '{where}' must be a mapping, got {_describe(value)}")
        return dict(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return parse_config(hint, value, where)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int or hint is bool or hint is str:
        if type(value) is hint:
            return value
    else:  # pragma: no cover - a hint this parser does not know
        raise ConfigError(f"config: '{where}' has an unsupported type {hint!r}")
    raise ConfigError(f"config: '{where}' must be {hint.__name__}, got {_describe(value)}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping, with an error naming the file when it is not one."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"config: cannot read {str(path)!r}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {str(path)!r} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {str(path)!r} must hold a mapping with keys job, run and sink (or sinks)")
    unknown = set(data) - {"job", "run", "sink", "sinks"}
    if unknown:
        raise ConfigError(
            f"config: unknown top-level key '{sorted(unknown)[0]}' in {str(path)!r}; the keys are: job, run, sink, "
            "sinks"
        )
    if "sink" in data and "sinks" in data:
        raise ConfigError(
            f"config: {str(path)!r} has both 'sink' and 'sinks'; keep 'sink' for one output, or name every output "
            "under 'sinks'"
        )
    return data


def parse_sinks(data: dict[str, Any]) -> dict[str, SinkConfig]:
    """The outputs a loaded YAML config names: ``sinks`` by name, or its one ``sink`` as ``output``."""
    if "sinks" not in data:
        return {"output": parse_config(SinkConfig, data.get("sink"), "sink")}
    sinks = data["sinks"]
    if not isinstance(sinks, dict) or not sinks:
        raise ConfigError(
            f"config: 'sinks' must map each output's name to its sink, as sinks: {{alerts: {{kind: print}}}}; "
            f"got {_describe(sinks)}"
        )
    parsed = {}
    for name, sink in sinks.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"config: the output name {name!r} under 'sinks' must be a non-empty string")
        try:
            parsed[name] = parse_config(SinkConfig, sink, f"sinks.{name}")
        except ConfigError as exc:  # SinkConfig's own checks say 'sink.<key>': say which of the sinks
            raise ConfigError(str(exc).replace("'sink.", f"'sinks.{name}.")) from None
    return parsed


def run_sinks(
    streams: Stream | Mapping[str, Stream], sinks: dict[str, SinkConfig], config: RunConfig, wait: bool = True
) -> Job:
    """Run a job's streams into the sinks of its YAML config, as one job.

    Args:
        streams: What the job module's ``build`` returned: one stream, written to every sink, or a mapping from
            each sink's name to its stream.
        sinks: :func:`parse_sinks`'s result.
        config: How to run.
        wait: When false, return the running job at once.
    """
    from raystream.outputs import Outputs
    from raystream.stream import Stream

    if isinstance(streams, Stream):
        if list(sinks) == ["output"]:  # the single 'sink': the one-output path, with its early checks
            return sinks["output"].run(streams, config, wait=wait)
        streams = dict.fromkeys(sinks, streams)
    if not isinstance(streams, Mapping) or not all(isinstance(s, Stream) for s in streams.values()):
        raise ConfigError(
            "raystream run: build(config) must return a raystream.Stream, or a dict from each output's name "
            f"under 'sinks' to its Stream; got {type(streams).__name__}"
        )
    missing, extra = sorted(set(sinks) - set(streams)), sorted(set(streams) - set(sinks))
    if missing or extra:
        named = "'sinks'" if list(sinks) != ["output"] else "'sink' (the output named 'output')"
        raise ConfigError(
            f"raystream run: build(config) returned the outputs {sorted(streams)}, but the config names {named} "
            f"{sorted(sinks)}; give each returned stream a sink under 'sinks', by the same name"
        )
    outputs = Outputs()
    for name, sink in sinks.items():
        sink.add_to(outputs, streams[name], name)
    return outputs.run(config, wait=wait)
