"""Alert thresholds per organization, set through the API, used by the settlement triggers; and
the shared pool evaluated by the period scheduler after a bucket expired.

Organizations are created through the real API; settlements are written into the same database
by the real settlement store; the scheduler runs on the app's admin service with a moved clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest_asyncio
from api.plans_support import DAY, iso, real_now, scheduler_for, use_clock
from api.support import FAR, client_for, make_key, make_org

from meter.admin.clock import from_ms
from meter.api import App
from meter.engine.types import MICRO, UNASSIGNED, Kind, Line, Period, Settlement
from meter.store import SettlementStore

NOW = real_now()
PERIOD = Period(NOW - DAY, NOW + DAY)
PATH = "/v1/orgs/{}/alert-thresholds"
DEFAULTS = {
    "member": {"percents": [80, 100], "source": "default"},
    "billing_group": {"percents": [80, 100], "source": "default"},
    "shared_pool": {"percents": [20], "source": "default"},
}


@pytest_asyncio.fixture(loop_scope="session")
async def store(app: App) -> AsyncIterator[SettlementStore]:
    settlements = SettlementStore(app.services.postgres_dsn)
    await settlements.open()
    try:
        yield settlements
    finally:
        await settlements.close()


async def post(admin: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
    r = await admin.post(path, json=body)
    assert r.status_code == 201, r.text


async def org_with_limits(admin: httpx.AsyncClient) -> str:
    """alice (limit 10) and bob (no limit) in billing group eng (limit 20), a pool of 10."""
    org = await make_org(admin)
    await post(admin, f"/v1/orgs/{org}/billing-groups",
               {"billing_group_id": "eng", "name": "Eng", "period_limit": "20"})  # fmt: skip
    for member, limit in (("alice", "10"), ("bob", None)):
        body = {"member_id": member, "member_limit": limit, "billing_group_id": "eng"}
        await post(admin, f"/v1/orgs/{org}/members", body)
    pool = {"bucket_id": "pool", "kind": "shared", "amount": "10", "expires_at": FAR}
    await post(admin, f"/v1/orgs/{org}/grants", pool)
    return org


def usage(
    org: str, key: str, member: str, credits: int, kind: Kind, group: str = "eng", bucket: str = ""
) -> Settlement:
    amount = credits * MICRO
    bucket = bucket or ("pool" if kind == Kind.SHARED else f"b-{member}")
    return Settlement(
        key=f"{org}/{key}", org_id=org, member_id=member, credits=amount,
        time_ms=PERIOD.start_ms + 1000, period=PERIOD, billing_group=group,
        lines=(Line(bucket, kind, amount),),
    )  # fmt: skip


async def write(store: SettlementStore, *settlements: Settlement) -> None:
    await store.write_batch("g", "t", [(s, None) for s in settlements], [])


async def recorded(app: App, org: str) -> list[tuple[str, str, int, int, int]]:
    rows = await app.pool.fetch(
        "SELECT subject_kind, subject_id, threshold, amount, reference FROM alerts "
        "WHERE org_id = $1",
        org,
    )
    return sorted((r[0], r[1], r[2], r[3] // MICRO, r[4] // MICRO) for r in rows)


async def test_org_thresholds_replace_the_defaults(
    app: App, admin: httpx.AsyncClient, store: SettlementStore
) -> None:
    own, other = await org_with_limits(admin), await org_with_limits(admin)
    body = {"member": [50], "billing_group": [90, 40], "shared_pool": [50]}
    r = await admin.put(PATH.format(own), json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "member": {"percents": [50], "source": "organization"},
        "billing_group": {"percents": [40, 90], "source": "organization"},
        "shared_pool": {"percents": [50], "source": "organization"},
    }
    assert (await admin.get(PATH.format(own))).json() == r.json()
    assert (await admin.get(PATH.format(other))).json() == DEFAULTS

    for org in (own, other):
        # alice at 6 of 10 (60%); eng at 6 of 20 (30%).
        await write(store, usage(org, "k1", "alice", 6, Kind.PERSONAL))
        # The pool has 4 of 10 left (40%); eng at 12 of 20 (60%).
        await write(store, usage(org, "k2", "bob", 6, Kind.SHARED))
        # eng at 16 of 20 (80%).
        await write(store, usage(org, "k3", "bob", 4, Kind.PERSONAL))
        # alice at 8 of 10 (80%); eng at 18 of 20 (90%).
        await write(store, usage(org, "k4", "alice", 2, Kind.PERSONAL))

    # The organization's percents, never the defaults.
    assert await recorded(app, own) == [
        ("billing_group", "eng", 40, 12, 20),
        ("billing_group", "eng", 90, 18, 20),
        ("member", "alice", 50, 6, 10),
        ("shared_pool", "", 50, 4, 10),
    ]
    # The other organization keeps the defaults.
    assert await recorded(app, other) == [
        ("billing_group", "eng", 80, 16, 20),
        ("member", "alice", 80, 8, 10),
    ]


async def test_an_empty_list_silences_a_kind_and_null_restores_the_default(
    app: App, admin: httpx.AsyncClient, store: SettlementStore
) -> None:
    org = await org_with_limits(admin)
    r = await admin.put(PATH.format(org), json={"member": [], "shared_pool": None})
    assert r.status_code == 200, r.text
    assert r.json() == {**DEFAULTS, "member": {"percents": [], "source": "organization"}}
    await write(store, usage(org, "k1", "alice", 10, Kind.PERSONAL, UNASSIGNED))
    assert await recorded(app, org) == []

    # A PUT replaces every list: what is left out goes back to the defaults.
    r = await admin.put(PATH.format(org), json={})
    assert r.status_code == 200 and r.json() == DEFAULTS
    await write(store, usage(org, "k2", "alice", 1, Kind.PERSONAL, UNASSIGNED))
    assert await recorded(app, org) == [("member", "alice", 80, 11, 10),
                                        ("member", "alice", 100, 11, 10)]  # fmt: skip


async def test_scopes_and_tenancy(app: App, admin: httpx.AsyncClient) -> None:
    org, other = await make_org(admin), await make_org(admin)
    body = {"shared_pool": [10]}
    async with client_for(app, await make_key(admin, org, "org_admin")) as client:
        r = await client.put(PATH.format(org), json=body)
        assert r.status_code == 200, r.text
        assert (await client.get(PATH.format(org))).json()["shared_pool"]["percents"] == [10]
        # Another organization's thresholds do not exist for this key.
        for r in (await client.get(PATH.format(other)),
                  await client.put(PATH.format(other), json=body)):  # fmt: skip
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "org_not_found" and other not in r.text
    async with client_for(app, await make_key(admin, org, "product")) as client:
        for r in (await client.get(PATH.format(org)),
                  await client.put(PATH.format(org), json=body)):  # fmt: skip
            assert r.status_code == 403, r.text
    assert (await admin.get(PATH.format(other))).json() == DEFAULTS
    r = await admin.get(PATH.format("no-such-org"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "org_not_found"
    r = await admin.put(PATH.format("no-such-org"), json=body)
    assert r.status_code == 404 and r.json()["error"]["code"] == "org_not_found"


async def test_invalid_bodies_get_422(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    bad: list[Any] = [
        {"member": [80, 80]},
        {"member": [0]},
        {"billing_group": [1001]},
        {"shared_pool": [101]},
        {"shared_pool": [-1]},
        {"member": [80.5]},
        {"member": ["80"]},
        {"member": [True]},
        {"member": 80},
        {"member": list(range(1, 12))},
        {"members": [80]},
        {"member": [None]},
    ]
    for body in bad:
        r = await admin.put(PATH.format(org), json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "invalid_input"
    r = await admin.put(
        PATH.format(org), content=b"[80]", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    # Nothing was stored.
    assert (await admin.get(PATH.format(org))).json() == DEFAULTS


async def test_pool_low_after_expiry_alerts_on_the_next_tick(
    app: App,
    admin: httpx.AsyncClient,
    store: SettlementStore,
    new_topic: Callable[..., Awaitable[str]],
) -> None:
    clock = use_clock(app, real_now())
    org = await make_org(admin)
    await post(admin, f"/v1/orgs/{org}/members", {"member_id": "bob"})
    for bucket, expires in (("soon", iso(clock.ms + DAY)), ("late", FAR)):
        body = {"bucket_id": bucket, "kind": "shared", "amount": "10", "expires_at": expires}
        await post(admin, f"/v1/orgs/{org}/grants", body)
    # 8 of "late" drawn: 12 of 20 left (60%), not low.
    await write(store, usage(org, "k1", "bob", 8, Kind.SHARED, UNASSIGNED, "late"))
    scheduler = await scheduler_for(app, new_topic)
    assert (await scheduler.tick()).pool_alerts == 0
    assert await recorded(app, org) == []

    # "soon" expires with its 10 credits unused: 2 of 10 left (20%), with no draw since.
    clock.ms += 2 * DAY
    assert (await scheduler.tick()).pool_alerts == 1
    assert await recorded(app, org) == [("shared_pool", "", 20, 2, 10)]
    row = await app.pool.fetchrow(
        "SELECT period_start, period_end FROM alerts WHERE org_id = $1", org
    )
    assert row["period_start"] <= from_ms(clock.ms) < row["period_end"]
    # Once per period and threshold.
    assert (await scheduler.tick()).pool_alerts == 0
    scheduler.pools_checked_ms = None
    assert (await scheduler.tick()).pool_alerts == 0
    assert len(await recorded(app, org)) == 1
