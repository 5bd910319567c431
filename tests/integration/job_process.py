"""Run a job script in a process group of its own, and SIGKILL the whole group (driver and its Ray) on cue."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def last_commit(checkpoints: Path) -> int:
    """The newest committed epoch in a checkpoint folder (-1 when there is none)."""
    return max((int(p.stem) for p in (checkpoints / "commits").glob("*.json")), default=-1)


def run_job_process(script: Path, args: list[str], kill_when: Callable[[], bool] | None = None) -> bool:
    """Run ``script`` with ``args --ray-temp-dir DIR``; SIGKILL its whole process group once ``kill_when()`` is true.

    Returns:
        True when the job ran to its end, False when it was killed.
    """
    # A short folder of its own for the job's Ray: socket paths must stay under ~100 characters.
    ray_dir = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    command = [sys.executable, str(script), *args, "--ray-temp-dir", str(ray_dir)]
    log = ray_dir.with_suffix(".log")
    with open(log, "wb") as output:
        process = subprocess.Popen(command, start_new_session=True, stdout=output, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        while process.poll() is None:
            if kill_when is not None and kill_when():
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return False
            assert time.monotonic() - started < 300, "the job ran for 5 minutes"
            time.sleep(0.02)
        assert process.returncode == 0, log.read_text()[-3000:]
        return True
    finally:
        # The local Ray the job started lives in its own temp dir: make sure none of it survives.
        subprocess.run(["pkill", "-9", "-f", str(ray_dir)], check=False)
        shutil.rmtree(ray_dir, ignore_errors=True)


def kill_at_random_checkpoints(script: Path, args: list[str], checkpoints: Path, seed: int, kills: int = 3) -> None:
    """Run ``script`` ``kills`` times, SIGKILLing it each time at a random moment in the middle of its run.

    The moment is by checkpoint progress, not by time: one to three checkpoints after the last one, then a
    random instant of up to 0.3 s after that one is committed.
    """
    rng = random.Random(seed)
    for _ in range(kills):
        target = last_commit(checkpoints) + rng.randint(1, 3)
        pause = rng.uniform(0.0, 0.3)
        ready_at: list[float] = []

        def due(target: int = target, pause: float = pause, ready_at: list[float] = ready_at) -> bool:
            if not ready_at and (checkpoints / "commits").exists() and last_commit(checkpoints) >= target:
                ready_at.append(time.monotonic())
            return bool(ready_at) and time.monotonic() - ready_at[0] >= pause

        assert not run_job_process(script, args, kill_when=due), "the job ended before it could be killed"
