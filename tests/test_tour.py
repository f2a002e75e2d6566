"""The README's tour, run as written against a real `meter run`."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO

import httpx

from meter.money import parse_credits
from meter.services import free_port
from meter.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
ADMIN_KEY = "local-admin-token-0123456789"


def tour_blocks() -> list[str]:
    """The shell blocks between the README's tour markers, in order."""
    text = README.read_text()
    tour = text.split("<!-- tour -->", 1)[1].split("<!-- /tour -->", 1)[0]
    return re.findall(r"```sh\n(.*?)```", tour, flags=re.S)


def expected_export() -> str:
    """The export the README promises, right after the tour."""
    after = README.read_text().split("<!-- /tour -->", 1)[1]
    block = re.search(r"```\n(Billing Group,.*?)```", after, flags=re.S)
    assert block is not None, "the README shows no export after the tour"
    return block.group(1)


def run_block(prelude: str, block: str) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", prelude + "\n" + block],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def open_log(log: Path) -> IO[bytes]:
    return log.open("wb")


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def wait_ready(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            assert proc.returncode is None, tail(log)
            try:
                if (await client.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("meter run did not become ready:\n" + tail(log))


async def test_readme_tour(settings: Settings, pg_dsn_clean: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    suffix = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "METER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "METER_REDIS_URL": settings.redis_url or "",
        "METER_POSTGRES_DSN": pg_dsn_clean,
        "METER_USAGE_TOPIC": f"tour.usage.{suffix}",
        "METER_DLQ_TOPIC": f"tour.dlq.{suffix}",
        "METER_CONSUMER_GROUP": f"tour-{suffix}",
        "METER_API_PORT": str(port),
        "METER_ADMIN_TOKEN": ADMIN_KEY,
        "METER_DATA_DIR": str(tmp_path),
    }
    log = tmp_path / "run.log"
    with open_log(log) as sink:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "meter"), "run", env=env, stdout=sink, stderr=sink
        )
    try:
        await wait_ready(url, proc, log)
        prelude, *steps = tour_blocks()
        assert ADMIN_KEY in prelude
        prelude = prelude.replace("http://127.0.0.1:8080", url)
        created, quota, ingest, settled = steps

        out = await asyncio.to_thread(run_block, prelude, created)
        assert '"org_id":"acme"' in out and '"plan_id":"teams"' in out
        assert '"member_id":"ada"' in out and '"seated":true' in out
        assert '"bucket_id":"pack-1"' in out and '"amount":"2000"' in out

        out = await asyncio.to_thread(run_block, prelude, quota)
        assert out.count('"allowed":true') == 2, out
        assert '"reservation_id":"req-1"' in out

        out = await asyncio.to_thread(run_block, prelude, ingest)
        assert '"accepted":1' in out and '"rejected":0' in out, out

        deadline = time.monotonic() + 60
        while True:
            out = await asyncio.to_thread(run_block, prelude, settled)
            # The block reads balances, totals, then the export: all of them must show the event.
            seen = expected_export() in out and '"credits":"3001.25"' in out
            if (seen and '"pack-1":"2000"' not in out) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert expected_export() in out, out
        assert '"credits":"3001.25"' in out and '"unfunded":"0"' in out
        seat = re.search(r'"seat":"([0-9.]+)"', out)
        shared = re.search(r'"shared":"([0-9.]+)"', out)
        assert seat and shared, out
        assert seat.group(1).startswith("2999.9999")
        assert parse_credits(seat.group(1)) + parse_credits(shared.group(1)) == 3_001_250_000
        balance = re.search(r'"pack-1":"([0-9.]+)"', out)
        assert balance, out
        assert parse_credits(balance.group(1)) == 2_000_000_000 - parse_credits(shared.group(1))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = await asyncio.wait_for(proc.wait(), timeout=30)
        except TimeoutError:
            proc.kill()
            raise
    assert code == 0, tail(log)
