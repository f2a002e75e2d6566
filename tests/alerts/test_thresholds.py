"""Alert thresholds per organization and the global defaults, set through the API, used by the
settlement triggers; and the shared pool evaluated by the period scheduler after a bucket expired.

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
DEFAULTS_PATH = "/v1/alert-thresholds"
DEFAULTS = {
    "member": {"percents": [80, 100], "source": "default"},
    "billing_group": {"percents": [80, 100], "source": "default"},
    "shared_pool": {"percents": [20], "source": "default"},
}
BAD_BODIES: list[Any] = [
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


@pytest_asyncio.fixture(loop_scope="session")
async def restore_defaults(admin: httpx.AsyncClient) -> AsyncIterator[None]:
    """Puts the global defaults back to 80/100, 80/100 and 20 after the test."""
    yield
    body = {kind: value["percents"] for kind, value in DEFAULTS.items()}
    r = await admin.put(DEFAULTS_PATH, json=body)
    assert r.status_code == 200 and r.json() == DEFAULTS, r.text


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
    for body in BAD_BODIES:
        r = await admin.put(PATH.format(org), json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "invalid_input"
    r = await admin.put(
        PATH.format(org), content=b"[80]", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    # Nothing was stored.
    assert (await admin.get(PATH.format(org))).json() == DEFAULTS


async def test_default_thresholds_apply_to_organizations_without_their_own(
    app: App, admin: httpx.AsyncClient, store: SettlementStore, restore_defaults: None
) -> None:
    plain, own = await org_with_limits(admin), await org_with_limits(admin)
    r = await admin.put(PATH.format(own), json={"member": [90], "shared_pool": [20]})
    assert r.status_code == 200, r.text
    assert (await admin.get(DEFAULTS_PATH)).json() == DEFAULTS

    # A new member list, billing groups keep theirs (null), the shared pool is off by default.
    body = {"member": [60, 50], "billing_group": None, "shared_pool": []}
    r = await admin.put(DEFAULTS_PATH, json=body)
    assert r.status_code == 200, r.text
    changed = {
        **DEFAULTS,
        "member": {"percents": [50, 60], "source": "default"},
        "shared_pool": {"percents": [], "source": "default"},
    }
    assert r.json() == changed
    assert (await admin.get(DEFAULTS_PATH)).json() == changed
    assert (await admin.get(PATH.format(plain))).json() == changed
    assert (await admin.get(PATH.format(own))).json() == {
        **changed,
        "member": {"percents": [90], "source": "organization"},
        "shared_pool": {"percents": [20], "source": "organization"},
    }
    # Kinds left out keep their default list.
    r = await admin.put(DEFAULTS_PATH, json={})
    assert r.status_code == 200 and r.json() == changed

    for org in (plain, own):
        # alice at 5 of 10 (50%); eng at 5 of 20 (25%).
        await write(store, usage(org, "k1", "alice", 5, Kind.PERSONAL))
        # The pool has 1 of 10 left (10%); eng at 14 of 20 (70%).
        await write(store, usage(org, "k2", "bob", 9, Kind.SHARED))
        # alice at 8 of 10 (80%, the old default); eng at 17 of 20 (85%).
        await write(store, usage(org, "k3", "alice", 3, Kind.PERSONAL))

    # The new member default, not the old one; no pool alert; billing groups at the kept 80.
    assert await recorded(app, plain) == [
        ("billing_group", "eng", 80, 17, 20),
        ("member", "alice", 50, 5, 10),
        ("member", "alice", 60, 8, 10),
    ]
    # The organization's own lists are unaffected.
    assert await recorded(app, own) == [
        ("billing_group", "eng", 80, 17, 20),
        ("shared_pool", "", 20, 1, 10),
    ]


async def test_default_thresholds_are_admin_only(
    app: App, admin: httpx.AsyncClient, restore_defaults: None
) -> None:
    org = await make_org(admin)
    for scope in ("org_admin", "product"):
        async with client_for(app, await make_key(admin, org, scope)) as client:
            for r in (await client.get(DEFAULTS_PATH),
                      await client.put(DEFAULTS_PATH, json={"member": [50]})):  # fmt: skip
                assert r.status_code == 403, (scope, r.text)
                assert r.json()["error"]["code"] == "forbidden"
    assert (await admin.get(DEFAULTS_PATH)).json() == DEFAULTS


async def test_invalid_default_bodies_get_422(
    app: App, admin: httpx.AsyncClient, restore_defaults: None
) -> None:
    for body in BAD_BODIES:
        r = await admin.put(DEFAULTS_PATH, json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "invalid_input"
    r = await admin.put(
        DEFAULTS_PATH, content=b"[80]", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    # Nothing was stored.
    assert (await admin.get(DEFAULTS_PATH)).json() == DEFAULTS


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
