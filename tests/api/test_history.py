"""Reads of history: an organization's alerts and a member's settlements, newest first, paged;
the settlements written by the real consumer, the member alerts by the real triggers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx

from api.plans_support import settling
from api.support import FAR, client_for, make_billing_key, make_key, make_org
from meter.admin.history import member_settlements
from meter.api import App
from meter.store import OffsetAdvance, SettlementStore

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)
INSERT_ALERT = """
INSERT INTO alerts (org_id, subject_kind, subject_id, period_start, period_end, threshold, amount,
                    reference, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING alert_id
"""


async def _pages(
    client: httpx.AsyncClient, path: str, field: str, cursor: str
) -> list[dict[str, Any]]:
    """Every item of a paged read, two at a time."""
    items: list[dict[str, Any]] = []
    params: dict[str, str] = {"limit": "2"}
    for _ in range(20):
        r = await client.get(path, params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body[field]) <= 2
        items += body[field]
        if body[f"next_{cursor}"] is None:
            return items
        params[cursor] = body[f"next_{cursor}"]
    raise AssertionError("paging did not end")


async def test_member_settlements_and_their_alerts(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    org = await make_org(admin, plan={"seat_credits": "0", "limit_policy": "all"})
    for member in ({"member_id": "ann", "member_limit": "4"}, {"member_id": "bob"}):
        assert (await admin.post(f"/v1/orgs/{org}/members", json=member)).status_code == 201
    grant = {"bucket_id": "pool", "kind": "shared", "amount": "100", "expires_at": FAR}
    assert (await admin.post(f"/v1/orgs/{org}/grants", json=grant)).status_code == 201

    async with settling(app, admin, new_topic) as s:
        ann = [await s.settle(org, "ann", "1.25") for _ in range(5)]
        await s.settle(org, "bob", "7")
    voided = ann[1]["key"]
    assert (await admin.post(f"/v1/orgs/{org}/voids", json={"key": voided})).status_code == 200

    path = f"/v1/orgs/{org}/members/ann/settlements"
    listed = await _pages(admin, path, "settlements", "before")
    assert [x["key"] for x in listed] == [r["key"] for r in reversed(ann)]  # newest first
    stamps = [x["settled_at"] for x in listed]
    assert stamps == sorted(stamps, reverse=True)
    for item in listed:
        one = await admin.get(f"/v1/orgs/{org}/settlements", params={"key": item["key"]})
        assert one.json() == item  # the same shape as the single read
        assert item["credits"] == "1.25" and item["member_id"] == "ann", item
    by_key = {x["key"]: x for x in listed}
    assert by_key[voided]["void"]["returned"][0]["amount"] == "1.25"
    # Within the limit of 4 the pool paid; past it, nothing did.
    drawn = [{"bucket_id": "pool", "kind": "shared", "amount": "1.25"}]
    assert [(x["buckets"] == drawn, x["member_limited"]) for x in reversed(listed)] == [
        (True, False)
    ] * 3 + [(False, True)] * 2, listed
    whole = (await admin.get(path)).json()
    assert whole["settlements"] == listed and whole["next_before"] is None

    # Errors: unknown member, bad cursor, bad limit, unknown parameter.
    r = await admin.get(f"/v1/orgs/{org}/members/nobody/settlements")
    assert r.status_code == 404 and r.json()["error"]["code"] == "member_not_found"
    for params, code in (
        ({"before": "not-a-cursor!"}, "invalid_cursor"),
        ({"before": "WzEsMl0"}, "invalid_cursor"),  # [1,2]: no key
        ({"limit": "0"}, "invalid_limit"),
        ({"after": "1"}, "invalid_query"),
    ):
        r = await admin.get(path, params=params)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, (params, r.text)

    # The member's limit alerts, fired by the settlement triggers, newest first.
    alerts = (await admin.get(f"/v1/orgs/{org}/alerts")).json()
    assert alerts["next_after"] is None
    member_alerts = [a for a in alerts["alerts"] if a["kind"] == "member_limit"]
    assert sorted(a["threshold_percent"] for a in member_alerts) == [80, 100]
    ids = [a["alert_id"] for a in alerts["alerts"]]
    assert ids == sorted(ids, reverse=True)
    hundred = next(a for a in member_alerts if a["threshold_percent"] == 100)
    assert hundred["member_id"] == "ann" and hundred["limit"] == "4"
    assert hundred["used"] == "4" and hundred["billing_group_id"] is None
    assert hundred["remaining"] is None and hundred["reason"] is None


async def test_alerts_of_every_kind_paged_and_scoped(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    outsider = await make_org(admin)
    rows = [
        ("member", "ann", 80, 800_000_000, 1_000_000_000, None),
        ("billing_group", "eng", 100, 5_000_000, 5_000_000, None),
        ("shared_pool", "", 20, 1_500_000, 10_000_000, None),
        ("quarantine", "", 0, 0, 0, "engine_input"),
    ]
    made = [
        await app.pool.fetchval(INSERT_ALERT, org, kind, subject, START, END, pct, amt, ref, why)
        for kind, subject, pct, amt, ref, why in rows
    ]
    path = f"/v1/orgs/{org}/alerts"
    listed = await _pages(admin, path, "alerts", "after")
    assert [a["alert_id"] for a in listed] == list(reversed(made))
    quarantine, pool, group, member = listed
    assert quarantine["kind"] == "org_quarantined" and quarantine["reason"] == "engine_input"
    assert quarantine["threshold_percent"] is None and quarantine["used"] is None
    assert pool["kind"] == "shared_pool_low" and pool["threshold_percent"] == 20
    assert (pool["remaining"], pool["granted"], pool["member_id"]) == ("1.5", "10", None)
    assert group["kind"] == "billing_group_limit" and group["billing_group_id"] == "eng"
    assert (group["used"], group["limit"]) == ("5", "5")
    assert member["kind"] == "member_limit" and member["member_id"] == "ann"
    assert (member["used"], member["limit"], member["threshold_percent"]) == ("800", "1000", 80)
    assert member["period_start"].startswith("2026-11-01T00:00:00")
    assert member["published_at"] is None
    r = await admin.get(path, params={"after": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"

    other = await make_key(admin, outsider, "org_admin")
    own = await make_key(admin, org, "org_admin")
    product = await make_key(admin, org, "product")
    billing = await make_billing_key(admin)
    async with client_for(app, other) as client:
        assert (await client.get(path)).status_code == 404
        assert (await client.get(f"/v1/orgs/{outsider}/alerts")).json()["alerts"] == []
    async with client_for(app, product) as client:
        assert (await client.get(path)).status_code == 403
    for token in (own, billing):
        async with client_for(app, token) as client:
            assert (await client.get(path)).json()["alerts"] == listed


async def test_member_settlements_page_through_runs_of_many_keys(migrated_dsn: str) -> None:
    """Writes of several settlements per member (one run each, `settlement_runs`): pages of any
    size list them in (settled_at, key) order, newest first, each once, the cursor falling
    inside a run as well as between runs; another member's and another organization's stay
    out."""
    setup = [
        "INSERT INTO plans (plan_id, name, period_kind) VALUES ('p', 'p', 'monthly')",
        "INSERT INTO organizations (org_id, name, plan_id, billing_anchor)"
        " VALUES ('o', 'o', 'p', now()), ('o2', 'o2', 'p', now())",
        "INSERT INTO members (org_id, member_id) VALUES ('o', 'ann'), ('o', 'bob'), ('o2', 'ann')",
    ]
    store = SettlementStore(migrated_dsn)
    pool = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=2)
    try:
        for statement in setup:
            await pool.execute(statement)
        await store.load_offsets("g", "t", {0: 0})
        start, end = 1_793_491_200_000, 1_796_083_200_000  # 2026-11-01, 2026-12-01
        written = 0
        # Keys out of byte order within a write, three writes; bob's and the other
        # organization's settlements are written beside ann's.
        for keys in (["k5", "K1", "k3", "_2"], ["k9", "k10", "a"], ["z"]):
            items = [
                (
                    f"{key}-{member}",
                    org,
                    f"{member}\x1f1000000\x1f{start + 1}\x1f{start}\x1f{end}\x1f\x1f0\x1f0\x1f"
                    f"\x1fseat:{member}\x1fs\x1f1000000",
                    None,
                    None,
                )
                for org, member in (("o", "ann"), ("o", "bob"), ("o2", "ann"))
                for key in keys
            ]
            advance = OffsetAdvance(0, written, written + len(items))
            assert await store.write_encoded("g", "t", items, [advance]) == len(items)
            written += len(items)
        # A write is one run per member: its settlements share the write's settled_at.
        runs = await pool.fetch(
            "SELECT cardinality(keys) FROM settlement_runs"
            " WHERE org_id = 'o' AND member_id = 'ann' ORDER BY settled_at"
        )
        assert [r[0] for r in runs] == [4, 3, 1]
        expected = [
            r["key"]
            for r in await pool.fetch(
                "SELECT key FROM settlements WHERE org_id = 'o' AND member_id = 'ann'"
                ' ORDER BY settled_at DESC, key COLLATE "C" DESC'
            )
        ]
        assert len(expected) == 8
        for limit in (1, 2, 3, 8, 50):
            seen: list[str] = []
            before: str | None = None
            while True:
                page = await member_settlements(pool, "o", "ann", before=before, limit=limit)
                seen += [s.key for s in page.settlements]
                assert len(page.settlements) <= limit
                if page.next_before is None:
                    break
                before = page.next_before
            assert seen == expected, limit
    finally:
        await store.close()
        await pool.close()
