"""The ``raystream`` command line.

``raystream run JOB.py --config CONFIG.yaml`` loads a job module, validates
the YAML against it, builds the stream and runs it into the configured sink
(or its streams into the sinks that the config names under ``sinks``).

``raystream backfill JOB.py --config CONFIG.yaml --from T1 --to T2`` runs the
same job over the history of its source (``job.source``, or the ``history``
of a hybrid source) between two times, into the same sink, with a progress
bar.

A job module defines ``build(config) -> Stream`` (or a dict of streams by
output name, for a config with ``sinks``) and, to take settings from
the ``job:`` section of the YAML, a dataclass named ``Config``; ``build``
then receives an instance of it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from raystream._fs import redact
from raystream.config import RunConfig, SinkConfig, SourceConfig, load_yaml, parse_config, parse_sinks, run_sinks
from raystream.errors import ConfigError, RaystreamError


def load_job(path: str | Path) -> ModuleType:
    """Import a job file by path.

    Raises:
        ConfigError: when the file is missing or defines no ``build``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"raystream run: job file {str(path)!r} does not exist; give its path from the current folder, "
            "such as jobs/wordcount.py"
        )
    name = f"raystream_job_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "build", None)):
        raise ConfigError(f"raystream run: {str(path)!r} must define build(config) -> raystream.Stream")
    return module


def prepare_job(
    job_path: str | Path, config_path: str | Path, data: dict[str, Any] | None = None
) -> tuple[Any, RunConfig, dict[str, SinkConfig]]:
    """Load a job and its YAML config; return (what ``build`` returned, run config, sinks by output name).

    Nothing runs yet. ``build`` returns a stream, or a dict of streams by output name when the config names its
    outputs under ``sinks``. ``data``, when given, is the config already loaded (and changed, by ``backfill``).
    """
    module = load_job(job_path)
    data = load_yaml(config_path) if data is None else data
    job_config_class = getattr(module, "Config", None)
    if job_config_class is not None:
        job_config = parse_config(job_config_class, data.get("job"), "job")
    elif data.get("job"):
        raise ConfigError(f"config: {str(job_path)!r} defines no Config dataclass, so its YAML takes no 'job' section")
    else:
        job_config = None
    run_config = parse_config(RunConfig, data.get("run"), "run")
    sinks = parse_sinks(data)
    streams = module.build(job_config) if job_config_class is not None else module.build()
    return streams, run_config, sinks


def _run(args: argparse.Namespace) -> int:
    streams, run_config, sinks = prepare_job(args.job, args.config)
    job = run_sinks(streams, sinks, run_config, wait=False)
    try:
        while job.status() == "running":
            time.sleep(0.1)
        job.wait()
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
        job.stop()
    return 0


def _backfill(args: argparse.Namespace) -> int:
    from raystream._time import time_ns
    from raystream.progress import BackfillProgress

    start_ms, end_ms = (
        time_ns(value, f"raystream backfill: --{flag}") // 1_000_000
        for value, flag in ((args.start, "from"), (args.end, "to"))
    )
    if start_ms >= end_ms:
        raise ConfigError(f"raystream backfill: --from {args.start} is not before --to {args.end}")
    data = load_yaml(args.config)
    job_section = dict(data.get("job") or {})
    source = job_section.get("source")
    if not isinstance(source, dict):
        raise ConfigError(
            f"raystream backfill: {args.config!r} has no job.source; backfill runs the job's history source over "
            "a time range, so the job must take its source from the config"
        )
    if source.get("kind") == "hybrid":
        source = source.get("history")
    if not isinstance(source, dict) or source.get("kind") not in SourceConfig.BACKFILL_KINDS:
        raise ConfigError(
            f"raystream backfill: job.source in {args.config!r} is not a file source or a hybrid with a file "
            f"history of kind {', '.join(SourceConfig.BACKFILL_KINDS)}; backfill reads timed history from files"
        )
    job_section["source"] = {**source, "start": args.start, "end": args.end, "watch": False}
    streams, run_config, sinks = prepare_job(args.job, args.config, {**data, "job": job_section})
    job = run_sinks(streams, sinks, run_config, wait=False)
    progress = BackfillProgress(start_ms, end_ms)
    try:
        while job.status() == "running":
            progress.update(job.metrics())
            time.sleep(0.5)
        job.wait()
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
        job.stop()
    finally:
        progress.close(job.metrics())
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from raystream.runtime.checkpoint import CheckpointStore

    summary = CheckpointStore(args.dir).describe()
    if summary["latest_epoch"] is None:
        print(f"{redact(args.dir)}: no committed checkpoint")
        return 1
    record = summary["record"]
    watermark = record.get("watermark_ms")
    print(f"checkpoint dir: {redact(summary['url'])}")
    print(f"last committed epoch: {summary['latest_epoch']}")
    print(f"watermark: {_format_ms(watermark)}")
    print("source positions:")
    done = set(record.get("done", []))
    for split_id in summary["split_ids"]:
        position = record.get("positions", {}).get(split_id)
        print(f"  {split_id}: {'start' if position is None else position}{'  (done)' if split_id in done else ''}")
    print("state per operator:")
    if not summary["state"]:
        print("  (none)")
    for operator, size in sorted(summary["state"].items()):
        print(f"  {operator}: {size['rows']} rows in {size['files']} files, {size['bytes']} bytes")
    return 0


def _format_ms(value: int | None) -> str:
    from raystream._time import END_OF_TIME_MS, START_OF_TIME_MS

    if value is None or value <= START_OF_TIME_MS:
        return "none yet"
    if value >= END_OF_TIME_MS:
        return "end of input"
    from datetime import datetime, timezone

    return f"{datetime.fromtimestamp(value / 1000, tz=timezone.utc).isoformat()} ({value} ms)"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``raystream`` console script.

    An error that the user can fix (any :class:`~raystream.errors.RaystreamError`, and an ``OSError`` such as a
    missing or unreadable file, while the job is built or while it runs) is one line on stderr,
    ``raystream: error: ...``, with exit status 2; ``--traceback`` shows its traceback too. Anything else is a
    bug, in the job's code or in raystream, and keeps its traceback.
    """
    from raystream import __version__

    parser = argparse.ArgumentParser(prog="raystream", description="Run raystream jobs.")
    parser.add_argument("--version", action="version", version=f"raystream {__version__}")
    parser.add_argument(
        "--traceback", action="store_true", help="on an error, print its whole traceback instead of one line"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a job file with a YAML config")
    run.add_argument("job", help="a Python file that defines build(config) -> Stream")
    run.add_argument("--config", required=True, help="a YAML file with job, run and sink sections")
    run.set_defaults(handler=_run)
    backfill = commands.add_parser("backfill", help="run a job over its history between two times, with progress")
    backfill.add_argument("job", help="a Python file that defines build(config) -> Stream")
    backfill.add_argument("--config", required=True, help="the job's YAML config; its job.source is the history")
    backfill.add_argument("--from", dest="start", required=True, help="the first event time, ISO (2026-01-01)")
    backfill.add_argument("--to", dest="end", required=True, help="the end of the range (excluded), ISO")
    backfill.set_defaults(handler=_backfill)
    checkpoints = commands.add_parser("checkpoints", help="look into a job's checkpoints")
    checkpoint_commands = checkpoints.add_subparsers(dest="checkpoint_command", required=True)
    inspect = checkpoint_commands.add_parser(
        "inspect", help="the last committed epoch, source positions, watermark and state size per operator"
    )
    inspect.add_argument("dir", help="the job's checkpoint_dir (a folder or an fsspec URL)")
    inspect.set_defaults(handler=_inspect)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (RaystreamError, OSError) as exc:
        if args.traceback:
            traceback.print_exc()
        # The message is the whole report; a URL in it (a path of the job's) is shown without its credentials.
        print(f"raystream: error: {redact(str(exc) or type(exc).__name__)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
