"""The CSV export neutralises formula injection: a text cell a spreadsheet would run as a formula
gets a single quote in front, over HTTP and from `meter export` alike; other cells are unchanged."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest_asyncio
import redis.asyncio as aioredis
from api.support import Addresses
from hypothesis import given
from hypothesis import strategies as st

from meter.api import App, build_app
from meter.reports.export import FORMULA_START, text_cell
from meter.settings import Settings

ADMIN_TOKEN = "test-admin-token-0123456789"

MEMBERS = [
    ("m1", '=HYPERLINK("http://evil.test","x")', "a@example.com", None),
    ("m2", "+1", "b@example.com", None),
    ("m3", "-2+3", "c@example.com", None),
    ("m4", "@SUM(A1)", "d@example.com", None),
    ("m5", "\tx", "e@example.com", None),
    ("m6", "\rx", "f@example.com", None),
    ("m7", "Ada Lovelace", "ada@example.com", None),
    ("m8", "Mallory", "=1+1@evil.test", None),
    ("m9", "Grace Hopper", "grace@example.com", "ops"),
    ("m10", "Smith, Alice", "alice@example.com", None),
]
EXPECTED = (
    b"Billing Group,Member Name,Email,Credits Consumption\r\n"
    b"'-Ops,Grace Hopper,grace@example.com,0\r\n"
    b"Unassigned,'\tx,e@example.com,0\r\n"
    b'Unassigned,"\'\rx",f@example.com,0\r\n'
    b"Unassigned,'+1,b@example.com,0\r\n"
    b"Unassigned,'-2+3,c@example.com,0\r\n"
    b'Unassigned,"\'=HYPERLINK(""http://evil.test"",""x"")",a@example.com,0\r\n'
    b"Unassigned,'@SUM(A1),d@example.com,0\r\n"
    b"Unassigned,Ada Lovelace,ada@example.com,0\r\n"
    b"Unassigned,Mallory,'=1+1@evil.test,0\r\n"
    b'Unassigned,"Smith, Alice",alice@example.com,0\r\n'
)


@dataclass(frozen=True)
class Org:
    app: App
    dsn: str
    org_id: str


@pytest_asyncio.fixture(loop_scope="session")
async def org(
    settings: Settings,
    migrated_dsn: str,
    redis: aioredis.Redis,
    new_topic: Callable[..., Awaitable[str]],
) -> AsyncIterator[Org]:
    topic = await new_topic(partitions=1, prefix="export")
    assert settings.redis_url is not None and settings.kafka_bootstrap is not None
    app = build_app(
        settings.model_copy(update={"admin_token": ADMIN_TOKEN, "usage_topic": topic}),
        Addresses(settings.redis_url, migrated_dsn, settings.kafka_bootstrap),
        reconcile_interval_s=3600.0,
    )
    async with app.running(), _client(app) as admin:
        r = await admin.post("/v1/plans", json={"plan_id": "p", "name": "P"})
        assert r.status_code == 201, r.text
        r = await admin.post("/v1/orgs", json={"org_id": "acme", "name": "Acme", "plan_id": "p"})
        assert r.status_code == 201, r.text
        body = {"billing_group_id": "ops", "name": "-Ops"}
        r = await admin.post("/v1/orgs/acme/billing-groups", json=body)
        assert r.status_code == 201, r.text
        for member_id, name, email, group in MEMBERS:
            body = {"member_id": member_id, "name": name, "email": email}
            if group is not None:
                body["billing_group_id"] = group
            r = await admin.post("/v1/orgs/acme/members", json=body)
            assert r.status_code == 201, r.text
        yield Org(app, migrated_dsn, "acme")


def _client(app: App) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://meter",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )


async def test_http_export_neutralises_formulas(org: Org) -> None:
    async with _client(org.app) as admin:
        r = await admin.get(f"/v1/orgs/{org.org_id}/reports/export.csv")
    assert r.status_code == 200, r.text
    assert r.content == EXPECTED


async def test_cli_export_neutralises_formulas(org: Org) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meter.cli", "export", "--org", org.org_id,
        env={"METER_POSTGRES_DSN": org.dsn, "METER_LOG_FORMAT": "console", "PATH": ""},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out == EXPECTED


@given(st.text())
def test_text_cells(text: str) -> None:
    cell = text_cell(text)
    if text[:1] in FORMULA_START and text:
        assert cell == "'" + text
    else:
        assert cell == text  # byte-identical to what was exported before
