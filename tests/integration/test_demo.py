"""Acceptance: `make demo` runs a real job on a local Ray of its own and prints a result table."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_prints_clicks_per_user_with_token_auth_on(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["RAY_ADDRESS"] = ""  # its own local Ray, not a cluster the tests may know
    env["HOME"] = str(tmp_path)  # where Ray writes the token it creates, ~/.ray/auth_token
    done = subprocess.run(
        ["make", "--no-print-directory", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("--- epoch") and "20 rows" in line for line in lines), done.stdout
    header = next(line for line in lines if line.split()[:1] == ["user"])
    assert header.split() == ["user", "country", "clicks", "pages", "spent"]
    counts = [int(line.split()[2]) for line in lines[lines.index(header) + 1 :] if line.strip().startswith("user-")]
    assert len(counts) == 20 and counts == sorted(counts, reverse=True)  # sorted by clicks, as configured
    assert (tmp_path / ".ray" / "auth_token").is_file()  # The demo's Ray had token authentication on.
