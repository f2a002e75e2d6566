"""A benchmark's standard output is its report: with --json it ends with one JSON object, and
the logs (here: the local Redis it starts and stops) go to standard error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

METER = str(Path(sys.executable).parent / "meter")


def test_bench_engine_json_is_the_last_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env.update({"METER_DATA_DIR": str(tmp_path), "METER_LOG_FORMAT": "json"})
    args = ["--orgs", "2", "--members", "20", "--events", "2000", "--calls", "50", "--batch", "100"]
    done = subprocess.run(
        [METER, "bench", "engine", "--json", *args],
        env=env,
        capture_output=True,
        timeout=300,
        check=True,
    )
    lines = done.stdout.decode().strip().splitlines()
    report = orjson.loads(lines[-1])
    assert isinstance(report, dict) and report
    assert b'"event":"service stopped"' in done.stderr  # a log record, on standard error
    assert all(b'"event"' not in line.encode() for line in lines)
