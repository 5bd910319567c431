"""The ``raystream`` command line: one-line errors for what the user can fix, ``--version``. No Ray is started."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import raystream
from raystream.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _job(tmp_path: Path, body: str) -> Path:
    job = tmp_path / "job.py"
    job.write_text("import raystream as rs\n\n\ndef build():\n" + body)
    return job


def _config(tmp_path: Path, text: str = "sink:\n  kind: print\n") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    return config


def test_a_missing_input_path_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = f"job:\n  source:\n    kind: text\n    path: {tmp_path}/nowhere.txt\n"
    config = _config(tmp_path, source + "sink:\n  kind: print\n")
    assert main(["run", str(ROOT / "jobs" / "wordcount.py"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.fullmatch(r"raystream: error: read_text: path '.*nowhere\.txt' does not exist; check the path.*\n", err)


def test_an_os_error_in_a_jobs_build_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job(tmp_path, "    open('/nonexistent/lookup.csv')\n")
    assert main(["run", str(job), "--config", str(_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err == "raystream: error: [Errno 2] No such file or directory: '/nonexistent/lookup.csv'\n"


def test_traceback_flag_shows_the_whole_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job(tmp_path, "    open('/nonexistent/lookup.csv')\n")
    assert main(["--traceback", "run", str(job), "--config", str(_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith(
        "raystream: error: [Errno 2] No such file or directory: '/nonexistent/lookup.csv'\n"
    )


def test_a_bug_in_a_jobs_code_keeps_its_traceback(tmp_path: Path) -> None:
    # Not an error the user made in a path or a config: the traceback is what finds the bug.
    job = _job(tmp_path, "    return 1 / 0\n")
    with pytest.raises(ZeroDivisionError):
        main(["run", str(job), "--config", str(_config(tmp_path))])


def test_a_url_in_an_error_is_shown_without_its_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "pw-" + "cli-9876"  # Not one literal: a traceback would quote the line.
    job = _job(tmp_path, f"    raise FileNotFoundError('cannot read ftp://ann:{secret}@files.example/x.csv')\n")
    assert main(["run", str(job), "--config", str(_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert secret not in err and "ftp://ann:***@files.example/x.csv" in err


def test_version_is_the_packages() -> None:
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None and raystream.__version__ == version.group(1)
    done = subprocess.run(
        [sys.executable, "-m", "raystream.cli", "--version"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout == f"raystream {raystream.__version__}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "sink:\n  kind: print\nsinks:\n  a: {kind: print}\n",
            "has both 'sink' and 'sinks'; keep 'sink' for one output, or name every output under 'sinks'",
        ),
        ("sinks: []\n", "'sinks' must map each output's name to its sink"),
        ("sinks:\n  alerts: {kind: parquet}\n", "'sinks.alerts.path' is required for sink kind 'parquet'"),
        ("sinks:\n  alerts: {kind: print, colour: red}\n", "sinks.alerts.colour"),
    ],
)
def test_a_bad_sinks_section_is_an_error_naming_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    job = _job(tmp_path, "    return rs.from_pandas(__import__('pandas').DataFrame({'x': [1]}))\n")
    assert main(["run", str(job), "--config", str(_config(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raystream: error: ") and message in err, err


def test_outputs_that_the_config_does_not_name_are_an_error_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = "    s = rs.from_pandas(__import__('pandas').DataFrame({'x': [1]}))\n    return {'alerts': s, 'counts': s}\n"
    config = _config(tmp_path, "sinks:\n  alerts: {kind: print}\n  totals: {kind: print}\n")
    assert main(["run", str(_job(tmp_path, body)), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "build(config) returned the outputs ['alerts', 'counts'], but the config names 'sinks' " in err, err
    assert "['alerts', 'totals']" in err


def test_a_yaml_csv_source_takes_errors_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "prices.csv"
    data.write_text("id,price\n1,0.5\n2\n")
    job = tmp_path / "job.py"
    job.write_text(
        "from dataclasses import dataclass\nfrom raystream.config import SourceConfig\n\n\n"
        "@dataclass(frozen=True)\nclass Config:\n    source: SourceConfig\n\n\n"
        "def build(config):\n    return config.source.build()\n"
    )
    source = f"job:\n  source:\n    kind: csv\n    path: {data}\n"
    assert main(["run", str(job), "--config", str(_config(tmp_path, source + "    errors: fail\n"))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raystream: error: read_csv: ") and "prices.csv" in err and "got 1" in err, err
    text = source.replace("kind: csv", "kind: text") + "    errors: fail\n"
    assert main(["run", str(job), "--config", str(_config(tmp_path, text))]) == 2
    assert "'job.source.errors' is for source kinds kafka, csv, json, not 'text'" in capsys.readouterr().err
