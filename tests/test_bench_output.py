"""A benchmark's standard output is its report: with --json it ends with one JSON object, and
the logs (here: the local Redis it starts and stops) go to standard error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import psutil  # type: ignore[import-untyped]

from meter.bench.cpu import process_cpu_s, server_cpu_s
from meter.settings import Settings

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


def _configured_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    """The environment of a bench run against the test run's servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env.update(
        {
            "METER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
            "METER_REDIS_URL": settings.redis_url or "",
            "METER_POSTGRES_DSN": settings.postgres_dsn or "",
            "METER_DATA_DIR": str(tmp_path),
            "METER_LOG_FORMAT": "json",
            "METER_CONSUMER_SESSION_TIMEOUT_MS": str(settings.consumer_session_timeout_ms),
        }
    )
    return env


def test_bench_scale_reports_every_case(settings: Settings, tmp_path: Path) -> None:
    env = _configured_env(settings, tmp_path)
    args = ["--events", "3000", "--processes", "1,2", "--no-cluster", "--lag-seconds", "0.5"]
    done = subprocess.run(
        [METER, "bench", "scale", "--json", *args], env=env, capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    cases = orjson.loads(done.stdout.decode().strip().splitlines()[-1])["cases"]
    shapes = [(c["redis"], c["hot_org"], c["processes"]) for c in cases]
    assert shapes == [
        ("single", False, 1),
        ("single", False, 2),
        ("single", True, 1),
        ("single", True, 2),
    ]
    for case in cases:
        assert 0 < case["events_measured"] <= 3000
        assert case["events_per_s"] > 0 and case["cpu_us_per_event"] > 0
        assert len(case["cpu_s_per_process"]) == case["processes"]
        assert case["lag_p99_ms"] >= case["lag_p50_ms"] >= 0
        if case["processes"] == 1:
            assert case["ratio_to_one"] == 1.0


def test_bench_pipeline_reports_the_cpu_of_each_server(settings: Settings, tmp_path: Path) -> None:
    """Besides events/s, `meter bench pipeline` reports the CPU an event costs the consumer,
    PostgreSQL and Redis over the same window: figures a busy machine disturbs less than it
    disturbs throughput."""
    env = _configured_env(settings, tmp_path)
    args = ["--events", "60000", "--rate", "2000", "--lag-seconds", "1"]
    done = subprocess.run(
        [METER, "bench", "pipeline", "--json", *args], env=env, capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    report = orjson.loads(done.stdout.decode().strip().splitlines()[-1])
    assert report["events"] == 60000 and report["events_per_s"] > 0
    assert report["consumer_cpu_us_per_event"] > 0
    assert report["redis_cpu_us_per_event"] > 0
    host = urlsplit(settings.postgres_dsn or "").hostname
    if host in (None, "localhost", "127.0.0.1", "::1"):  # its processes are on this machine
        assert report["postgres_cpu_us_per_event"] > 0
    else:
        assert "postgres_cpu_us_per_event" in report


def test_a_servers_cpu_counts_the_children_it_has_reaped() -> None:
    """A forking server's CPU (PostgreSQL's postmaster) includes its children's, those still
    running and those that exited and were waited for."""
    script = (
        "import subprocess, sys, time\n"
        "subprocess.run([sys.executable, '-c', 'x = 0\\nwhile x < 10**7: x += 1'])\n"
        "child = subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline() == b"started\n"
        time.sleep(0.3)  # the busy child has run a while
        own = process_cpu_s(server.pid)
        reaped = psutil.Process(server.pid).cpu_times()
        total = server_cpu_s(server.pid)
    finally:
        for child in psutil.Process(server.pid).children():
            child.kill()
        server.kill()
        server.communicate()
    assert reaped.children_user + reaped.children_system > 0.1  # the counting child, reaped
    assert total > own + reaped.children_user + reaped.children_system + 0.1  # the live one


def test_process_cpu_time_is_finer_than_clock_ticks() -> None:
    """`meter bench scale` and `quota` divide another process's CPU time by what it did. Clock
    ticks (10 ms) read 0 for a short window of a quick consumer, and any reading is a multiple
    of 10 ms; the process's CPU clock is not."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        steps = []
        last = process_cpu_s(busy.pid)
        for _ in range(40):
            time.sleep(0.002)
            now = process_cpu_s(busy.pid)
            steps.append(now - last)
            last = now
    finally:
        busy.kill()
        busy.wait()
    assert sum(steps) > 0
    assert all(step >= 0 for step in steps)
    if sys.platform == "linux":
        off_tick = [s for s in steps if s > 0 and abs(s * 100 - round(s * 100)) > 1e-3]
        assert off_tick, steps
