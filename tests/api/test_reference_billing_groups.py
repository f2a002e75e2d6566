"""Reference 003 (groups and billing groups, Enterprise): groups are functional only, a member is
in at most one billing group, Unassigned is built in, period limits, reassigning changes
attribution from then on, deleting a billing group returns its members to Unassigned with history
intact, and a new period starts consumption at 0 with limits kept."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from api.plans_support import DAY, check, ms_of, post, real_now, scheduler_for, settling, use_clock
from api.support import FAR, unique
from meter.api import App


async def test_groups_and_billing_groups(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    clock = use_clock(app, real_now() - 2 * DAY)
    org = unique("bg")
    base = f"/v1/orgs/{org}"
    await post(admin, "/v1/orgs", {"org_id": org, "name": "Corp", "plan_id": "enterprise"})
    eng = {"billing_group_id": "eng", "name": "Engineering", "period_limit": "100"}
    await post(admin, f"{base}/billing-groups", eng)
    for member, group in (("ada", "eng"), ("bo", None)):
        body = {"member_id": member, "member_limit": "1000", "billing_group_id": group}
        await post(admin, f"{base}/members", body)
    await post(admin, f"{base}/grants", {"kind": "shared", "amount": "5000", "expires_at": FAR})

    # Groups change nothing about credits, limits or attribution.
    before = await check(admin, org, "ada", "40")
    await post(admin, f"{base}/groups", {"group_id": "research", "name": "Research"})
    for member in ("ada", "bo"):
        assert (await admin.put(f"{base}/groups/research/members/{member}")).status_code == 200
    assert await check(admin, org, "ada", "40") == before

    # Unassigned: listed, never renamed, limited or deleted.
    for method, body in (("PATCH", {"period_limit": "1"}), ("DELETE", None)):
        r = await admin.request(method, f"{base}/billing-groups/Unassigned", json=body)
        assert r.status_code == 409 and r.json()["error"]["code"] == "unassigned_built_in"

    async with settling(app, admin, new_topic) as s:
        in_eng = await s.settle(org, "ada", "60")
        assert in_eng["billing_group"] == "eng"
        result = await check(admin, org, "ada", "41")
        assert result["reason"] == "group_limit_reached" and result["group_remaining"] == "40"
        # Deleting the billing group returns ada to Unassigned; settled history keeps "eng".
        assert (await admin.delete(f"{base}/billing-groups/eng")).status_code == 204
        groups = (await admin.get(f"{base}/billing-groups")).json()["billing_groups"]
        assert [(g["name"], g["member_ids"]) for g in groups] == [("Unassigned", ["ada", "bo"])]
        assert (await check(admin, org, "ada", "41"))["allowed"] is True
        after = await s.settle(org, "ada", "10")
        assert after["billing_group"] == ""
    history = await app.pool.fetch(
        "SELECT billing_group, credits FROM settlements WHERE org_id = $1 ORDER BY event_time, key",
        org,
    )
    assert sorted((h["billing_group"], h["credits"]) for h in history) == [
        ("", 10_000_000),
        ("eng", 60_000_000),
    ]

    # Reassigning: from now on attributed to the new group, under its limit.
    await post(admin, f"{base}/billing-groups",
               {"billing_group_id": "ops", "name": "Ops", "period_limit": "50"})  # fmt: skip
    await admin.patch(f"{base}/members/bo", json={"billing_group_id": "ops"})
    assert (await check(admin, org, "bo", "51"))["reason"] == "group_limit_reached"
    # A member may be in one billing group only: moving ada there takes her out of Unassigned.
    await admin.patch(f"{base}/members/ada", json={"billing_group_id": "ops"})
    groups = (await admin.get(f"{base}/billing-groups")).json()["billing_groups"]
    assert [(g["name"], g["member_ids"]) for g in groups] == [
        ("Unassigned", []),
        ("Ops", ["ada", "bo"]),
    ]
    # The member limit counted ada's 70 credits this period.
    assert (await check(admin, org, "ada", "1"))["member_remaining"] == "930"

    # The next period: consumption starts at 0, limits and memberships carry over.
    scheduler = await scheduler_for(app, new_topic)
    await scheduler.tick()
    clock.ms = ms_of((await admin.get(f"{base}/seats")).json()["period_end"])
    assert (await scheduler.tick()).started == [(org, clock.ms)]
    result = await check(admin, org, "ada", "50")
    assert result["allowed"] is True and result["member_remaining"] == "1000"
    assert result["group_remaining"] == "50"
    assert (await check(admin, org, "ada", "51"))["reason"] == "group_limit_reached"
    member = (await admin.get(f"{base}/members/ada")).json()
    assert member["billing_group_id"] == "ops" and member["groups"] == ["research"]
    assert ms_of((await admin.get(f"{base}/seats")).json()["period_start"]) == clock.ms
