"""Helpers of the client tests: `meter run` as a child process, an organization to meter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from meter.services import free_port
from meter.settings import Settings

ADMIN_KEY = "client-admin-token-0123456789"


class MeterRun:
    """`meter run` as a child process on a fixed port; `stop` and `start` again keep its
    database, topics and consumer group, as a restart of the service would."""

    def __init__(self, settings: Settings, dsn: str, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        suffix = uuid.uuid4().hex[:8]
        self.env = {
            **os.environ,
            "METER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
            "METER_REDIS_URL": settings.redis_url or "",
            "METER_POSTGRES_DSN": dsn,
            "METER_USAGE_TOPIC": f"client.usage.{suffix}",
            "METER_DLQ_TOPIC": f"client.dlq.{suffix}",
            "METER_CONSUMER_GROUP": f"client-{suffix}",
            "METER_CONSUMER_SESSION_TIMEOUT_MS": str(settings.consumer_session_timeout_ms),
            "METER_API_PORT": str(self.port),
            "METER_ADMIN_TOKEN": ADMIN_KEY,
            "METER_DATA_DIR": str(data_dir),
        }
        self.log = data_dir / "run.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until `/readyz` answers 200."""
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "meter"), "run"],
                env=self.env,
                stdout=sink,
                stderr=sink,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.tail()
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("meter run did not become ready:\n" + self.tail())

    def stop(self) -> None:
        """Stop it (SIGINT, as an operator would) and wait for it to exit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        assert code == 0, self.tail()
        self.proc = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def admin(self) -> httpx.Client:
        """An HTTP client with the bootstrap admin key."""
        return httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
        )


@dataclass(frozen=True)
class Tenant:
    """An organization on the `teams` preset with member `ada` and a 2,000-credit shared pack."""

    org_id: str
    member_id: str
    product_key: str


def make_tenant(meter: MeterRun, pack: str = "2000") -> Tenant:
    """A new organization, its member, a shared pack and a `product` key."""
    org_id = f"org-{uuid.uuid4().hex[:8]}"
    with meter.admin() as admin:
        r = admin.post("/v1/orgs", json={"org_id": org_id, "name": "Acme", "plan_id": "teams"})
        assert r.status_code == 201, r.text
        r = admin.post(f"/v1/orgs/{org_id}/members", json={"member_id": "ada", "name": "Ada"})
        assert r.status_code == 201, r.text
        grant = {"bucket_id": "pack-1", "kind": "shared", "amount": pack}
        grant["expires_at"] = "2099-01-01T00:00:00Z"
        r = admin.post(f"/v1/orgs/{org_id}/grants", json=grant)
        assert r.status_code == 201, r.text
        r = admin.post(f"/v1/orgs/{org_id}/keys", json={"scope": "product", "name": "product"})
        assert r.status_code == 201, r.text
        return Tenant(org_id, "ada", r.json()["token"])


def totals(meter: MeterRun, org_id: str) -> dict[str, object]:
    """The organization's settled totals of the current period."""
    with meter.admin() as admin:
        r = admin.get(f"/v1/orgs/{org_id}/reports/totals")
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()["totals"]
        return body


def wait_totals(
    meter: MeterRun, org_id: str, events: int, timeout_s: float = 60
) -> dict[str, object]:
    """The totals once they count `events` settled events (or whatever they are at the deadline),
    then a further moment, so a late duplicate would show."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = totals(meter, org_id)
        if seen.get("events") == events or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)
