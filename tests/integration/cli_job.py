"""``raystream run JOB --config CONFIG`` on a local Ray of its own, run as its own process by the recovery tests.

python cli_job.py JOB CONFIG --ray-temp-dir DIR
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("job")
    parser.add_argument("config")
    parser.add_argument("--ray-temp-dir")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from raystream.cli import main as raystream

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="ERROR", _temp_dir=args.ray_temp_dir)
    return raystream(["run", args.job, "--config", args.config])


if __name__ == "__main__":
    sys.exit(main())
