"""Acceptance: `make demo` runs a real job on a local Ray of its own and prints a result table."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_prints_clicks_per_user() -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_ADDRESS": ""},  # its own local Ray, not a cluster the tests may know
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("--- epoch") and "20 rows" in line for line in lines), done.stdout
    header = next(line for line in lines if line.split()[:1] == ["user"])
    assert header.split() == ["user", "country", "clicks", "pages", "spent"]
    counts = [int(line.split()[2]) for line in lines[lines.index(header) + 1 :] if line.strip().startswith("user-")]
    assert len(counts) == 20 and counts == sorted(counts, reverse=True)  # sorted by clicks, as configured
