"""Checks of an organization that exists but has no state in Redis answer 503, never
`unknown_org`: while its state is rebuilt (its marker gone with its keys) and while it is
quarantined."""

from __future__ import annotations

import asyncio

import httpx

from api.support import make_org
from meter import quarantine
from meter.api import App
from meter.engine.redis import org_present
from meter.rebuild import clear_org


async def test_checks_of_an_org_without_state(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    r = await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "a"})
    assert r.status_code == 201, r.text
    check = {"org_id": org, "member_id": "a", "credits": 1}
    reserve = check | {"reservation_id": "r1"}
    assert (await admin.post("/v1/check", json=check)).status_code == 200

    # Redis lost the org's keys, its marker with them (its shard restarted empty). The first
    # check answers 503 and asks the reconciler to repair at once; until it has, checks answer
    # 503, afterwards about the member again: never `unknown_org`.
    await clear_org(app.redis, org)
    r = await admin.post("/v1/check", json=check)
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        for body in (check, reserve):
            r = await admin.post(
                "/v1/reserve" if "reservation_id" in body else "/v1/check", json=body
            )
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "unavailable", r.text
            else:
                assert r.status_code == 200 and r.json()["reason"] != "unknown_org", r.text
        if r.status_code == 200 and await org_present(app.redis, org):
            break
        assert asyncio.get_running_loop().time() < deadline, "Redis was not repaired"
        await asyncio.sleep(0.05)
    # An organization that does not exist is still unknown once Redis is rebuilt.
    nobody = await admin.post("/v1/check", json=check | {"org_id": "nobody"})
    assert nobody.status_code == 200 and nobody.json()["reason"] == "unknown_org", nobody.text

    # Quarantined (its keys cleared, the marker set): its own code, for check and reservation.
    await clear_org(app.redis, org)
    await quarantine.mark(app.redis, org, "engine_input")
    for path, body in (("/v1/check", check), ("/v1/reserve", reserve)):
        r = await admin.post(path, json=body)
        assert r.status_code == 503 and r.json()["error"]["code"] == "org_quarantined", r.text
