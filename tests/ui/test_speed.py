"""The overview and the members page of an organization of 10,000 members with a month of
settled usage, timed in Chromium from navigation start until the page is drawn and usable.

The usage is written as the totals rows the settlement store keeps (the bulk path of `meter bench
reports`): the pages read only those. Target: under 1 s each; the assertion is looser (the test
machine is shared), the figures are printed."""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest_asyncio
from client.support import MeterRun
from playwright.async_api import Page

from meter.admin.clock import from_ms, now_ms
from meter.bench import reports as bench
from meter.engine.periods import period_at
from meter.engine.types import OrgConfig, OrgStatus, PeriodKind
from ui.support import grouped, ok, sign_in

ORG = "big-org"
MEMBERS = 10_000
EVENTS_PER_MEMBER = 300
RUNS = 5
BOUND_MS = 3_000
"""Looser than the 1 s target: a shared 2-core machine; the figures are what to read."""


def _sql(text: str, anchor: str) -> str:
    return text.replace("bench-org", ORG).replace(bench.ANCHOR, anchor)


async def seed(dsn: str) -> int:
    """10,000 members in 20 billing groups, the current monthly period 30 days old, and the
    totals of `EVENTS_PER_MEMBER` events per member in it and in the period before."""
    now = now_ms()
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    anchor = start - timedelta(days=29)
    org = OrgConfig(
        ORG, OrgStatus.ACTIVE, PeriodKind.MONTHLY, anchor_ms=int(anchor.timestamp() * 1000)
    )
    current = period_at(org, now)
    previous = period_at(org, current.start_ms - 1)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_sql(bench.SETUP, anchor.isoformat()))
        await conn.execute(_sql(bench.MEMBERS, ""), MEMBERS)
        for p in (previous, current):
            await conn.execute(
                _sql(bench.MEMBER_GROUPS, ""),
                from_ms(p.start_ms), from_ms(p.end_ms), MEMBERS, EVENTS_PER_MEMBER,
            )  # fmt: skip
        await conn.execute(bench.ROLLUPS)
        await conn.execute(bench.DAILY, from_ms(now).date())
        await conn.execute(bench.ORG_DAILY)
        await conn.execute("ANALYZE")
        days: int = await conn.fetchval(
            "SELECT count(DISTINCT day) FROM org_daily_totals WHERE day >= $1",
            from_ms(current.start_ms).date(),
        )
    finally:
        await conn.close()
    return days


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def org_admin_key(meter: MeterRun) -> AsyncIterator[str]:
    days = await seed(meter.env["METER_POSTGRES_DSN"])
    assert days >= 28
    with meter.admin() as admin:
        ok(admin.post(f"/v1/orgs/{ORG}/reconcile"), 204)
        key = ok(admin.post(f"/v1/orgs/{ORG}/keys", json={"scope": "org_admin"}), 201)["token"]
        grant = {"kind": "shared", "amount": "5000000", "expires_at": "2099-01-01T00:00:00Z"}
        ok(admin.post(f"/v1/orgs/{ORG}/grants", json=grant), 201)
    yield str(key)


def most_used(meter: MeterRun, key: str) -> str:
    """The largest member usage of the current period, read page by page from the API."""
    best: tuple[Decimal, str] = (Decimal(-1), "")
    after = ""
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=meter.url, headers=headers, timeout=30) as client:
        while True:
            params = {"limit": "1000", **({"after": after} if after else {})}
            page = ok(client.get(f"/v1/orgs/{ORG}/reports/members", params=params))
            members = page["members"]
            assert isinstance(members, list)
            for m in members:
                best = max(best, (Decimal(m["totals"]["credits"]), m["totals"]["credits"]))
            if not page["next_after"]:
                return best[1]
            after = str(page["next_after"])


async def timed(page: Page, meter: MeterRun, name: str) -> tuple[list[float], list[float]]:
    """Milliseconds from navigation start until page `name` is drawn and usable, and until all
    its data is in (the members page reads its report pages behind the first), over `RUNS` full
    loads."""
    await page.goto(f"{meter.url}/ui/#/{ORG}/{name}")
    drawn, complete = [], []
    for _ in range(RUNS):
        await page.reload()
        await page.wait_for_selector(f"body[data-ready={name}]", state="attached", timeout=60_000)
        drawn.append(float(await page.evaluate("window.__meterReady")))
        if name == "members":
            await page.wait_for_selector("body[data-complete=members]", state="attached")
            complete.append(float(await page.evaluate("window.__meterComplete")))
    return drawn, complete


def _ms(times: list[float]) -> str:
    return f"median {statistics.median(times):.0f} ms (runs: {[round(t) for t in times]})"


async def test_overview_and_members_of_10000_members(
    page: Page, meter: MeterRun, org_admin_key: str
) -> None:
    await sign_in(page, meter, org_admin_key)
    overview, _ = await timed(page, meter, "overview")
    print(f"overview drawn: {_ms(overview)}")
    members, complete = await timed(page, meter, "members")
    print(f"members drawn (first 1,000 by id): {_ms(members)}")
    print(f"members complete (10,000 sorted by usage): {_ms(complete)}")
    count = await page.get_by_test_id("member-count").inner_text()
    assert count == "10,000 of 10,000 members"
    rows = page.get_by_test_id("members").locator("tbody tr")
    assert await rows.count() == 50
    # The most used member of all 10,000 heads the table once every page is in.
    top = await rows.first.locator("[data-col=used]").inner_text()
    assert top == grouped(most_used(meter, org_admin_key))
    # Sorting and searching 10,000 rows answer at once.
    started = await page.evaluate("performance.now()")
    await page.get_by_test_id("members").locator("[data-sort=name]").click()
    await page.get_by_test_id("member-search").fill("Surname 5")
    await page.wait_for_selector("[data-testid=member-count]:has-text('of 10,000 members')")
    print(f"sort + search: {await page.evaluate('performance.now()') - started:.0f} ms")
    for times in (overview, members, complete):
        assert statistics.median(times) < BOUND_MS, times


async def test_a_past_period_of_the_billing_groups(
    page: Page, meter: MeterRun, org_admin_key: str
) -> None:
    async with httpx.AsyncClient(
        base_url=meter.url, headers={"authorization": f"Bearer {org_admin_key}"}, timeout=30
    ) as client:
        periods = ok(await client.get(f"/v1/orgs/{ORG}/reports/periods"))["periods"]
        assert isinstance(periods, list) and len(periods) == 2
        past = periods[1]["period"]["start"][:10]
        path = f"/v1/orgs/{ORG}/reports/billing-groups"
        report = ok(await client.get(path, params={"period": past}))
    groups = report["billing_groups"]
    assert isinstance(groups, list)
    g00 = next(g for g in groups if g["billing_group_id"] == "g00")
    await sign_in(page, meter, org_admin_key)
    await page.goto(f"{meter.url}/ui/#/{ORG}/billing-groups")
    await page.wait_for_selector("body[data-ready=billing-groups]", state="attached")
    await page.evaluate("document.body.dataset.ready = ''")
    await page.get_by_test_id("period-select").select_option(past)
    await page.wait_for_selector("body[data-ready=billing-groups]", state="attached")
    assert page.url.endswith(f"/billing-groups/{past}")
    used = page.locator("[data-group=g00] [data-col=used]")
    assert await used.inner_text() == grouped(g00["totals"]["credits"])
