"""The ``raystream`` command line.

``raystream run JOB.py --config CONFIG.yaml`` loads a job module, validates
the YAML against it, builds the stream and runs it into the configured sink.

A job module defines ``build(config) -> Stream`` and, to take settings from
the ``job:`` section of the YAML, a dataclass named ``Config``; ``build``
then receives an instance of it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from raystream.config import RunConfig, SinkConfig, load_yaml, parse_config
from raystream.errors import ConfigError, RaystreamError


def load_job(path: str | Path) -> ModuleType:
    """Import a job file by path.

    Raises:
        ConfigError: when the file is missing or defines no ``build``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"raystream run: job file {str(path)!r} does not exist")
    name = f"raystream_job_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "build", None)):
        raise ConfigError(f"raystream run: {str(path)!r} must define build(config) -> raystream.Stream")
    return module


def prepare_job(job_path: str | Path, config_path: str | Path) -> tuple[Any, RunConfig, SinkConfig]:
    """Load a job and its YAML config; return (stream, run config, sink config). Nothing runs yet."""
    module = load_job(job_path)
    data = load_yaml(config_path)
    job_config_class = getattr(module, "Config", None)
    if job_config_class is not None:
        job_config = parse_config(job_config_class, data.get("job"), "job")
    elif data.get("job"):
        raise ConfigError(f"config: {str(job_path)!r} defines no Config dataclass, so its YAML takes no 'job' section")
    else:
        job_config = None
    run_config = parse_config(RunConfig, data.get("run"), "run")
    sink_config = parse_config(SinkConfig, data.get("sink"), "sink")
    stream = module.build(job_config) if job_config_class is not None else module.build()
    return stream, run_config, sink_config


def _run(args: argparse.Namespace) -> int:
    stream, run_config, sink_config = prepare_job(args.job, args.config)
    job = sink_config.run(stream, run_config, wait=False)
    try:
        while job.status() == "running":
            time.sleep(0.1)
        job.wait()
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
        job.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``raystream`` console script."""
    parser = argparse.ArgumentParser(prog="raystream", description="Run raystream jobs.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a job file with a YAML config")
    run.add_argument("job", help="a Python file that defines build(config) -> Stream")
    run.add_argument("--config", required=True, help="a YAML file with job, run and sink sections")
    run.set_defaults(handler=_run)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except RaystreamError as exc:
        print(f"raystream: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
