"""Time ``rs.read_json`` over a newline-delimited JSON file of clean records (each one row, no dead letters).

    .venv/bin/python -m bench.json_read --lines 1000000 --parallelism 2

The file is written once to the temp folder and reused. The time includes starting a local Ray.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import raystream as rs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args()
    path = Path(tempfile.gettempdir()) / f"raystream-bench-{args.lines}.json"
    if not path.exists():
        with path.open("w") as f:
            for i in range(args.lines):  # a Python loop: it writes the input once, outside the timing
                f.write(json.dumps({"t": i, "user": f"u{i % 1000}", "price": i * 0.5, "page": "/p"}) + "\n")
    started = time.perf_counter()
    rows = rs.read_json(str(path)).to_arrow(rs.RunConfig(parallelism=args.parallelism)).num_rows
    print(f"json {time.perf_counter() - started:.2f} s for {rows} rows")


if __name__ == "__main__":
    main()
