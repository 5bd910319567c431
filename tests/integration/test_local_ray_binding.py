"""The local Ray that raystream starts listens on loopback only, with Ray's token authentication on.

The job runs in a process of its own, so that it starts its Ray through raystream's own ``ensure_ray`` (this
test process may already hold one), with ``RAY_AUTH_MODE`` unset, as ``make demo`` runs, and a home folder of
its own, where Ray writes the token it creates. While the job's actors run, the job's process lists the TCP
sockets that its Ray processes (its descendants: the GCS, the raylet, the workers, the agents) listen on.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[2]

JOB = """
import json, time
import pandas as pd
import psutil
import raystream as rs

def slow(table):
    time.sleep(0.2)
    return table

stream = rs.from_pandas(pd.DataFrame({"k": range(2_000), "v": range(2_000)})).map_batches(slow)
job = stream.key_by("k").agg(n=rs.count()).start(rs.RunConfig(parallelism=2, max_batch_rows=50))
while job.status() == "running" and job.metrics()["rows_read"] == 0:
    time.sleep(0.05)
me = psutil.Process()
ours = {me.pid} | {child.pid for child in me.children(recursive=True)}
listening = sorted(
    {(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name())
     for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in ours}
)
running = job.status()
job.stop()
import ray
ray.shutdown()
print("LISTENING " + json.dumps({"sockets": listening, "running": running}))
"""


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1, an IPv6 socket bound to IPv4 loopback
    return address.is_loopback


def test_the_local_ray_listens_on_loopback_only_with_token_auth_on(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["HOME"] = str(tmp_path)  # Ray writes the token it creates to ~/.ray/auth_token.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [sys.executable, "-c", JOB],
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output[-3000:]
    line = next(line for line in output.splitlines() if line.startswith("LISTENING "))
    found = json.loads(line.removeprefix("LISTENING "))
    assert found["running"] == "running", output[-3000:]
    names = {name for _, _, name in found["sockets"]}
    assert {"gcs_server", "raylet"} <= names, found  # The measurement saw Ray's own servers.
    exposed = [socket for socket in found["sockets"] if not _is_loopback(socket[0])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert (tmp_path / ".ray" / "auth_token").is_file()  # Token authentication was on: Ray created a token.
