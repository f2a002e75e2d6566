"""One organization's key can never read or change another organization: every route is walked.

Another organization's key gets 404 (existence does not leak); a key of the right organization
whose scope does not allow the route gets 403; admin-only global routes give org keys 403.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from api.support import FAR, call, client_for, make_key, make_org
from meter.api import App
from meter.api.http import Access
from meter.api.routes import ROUTES


@pytest.fixture
async def two_orgs(app: App, admin: httpx.AsyncClient) -> dict[str, str]:
    victim = await make_org(admin)
    for path, body in [
        (f"/v1/orgs/{victim}/billing-groups", {"billing_group_id": "bg1", "name": "One"}),
        (f"/v1/orgs/{victim}/members", {"member_id": "alice", "billing_group_id": "bg1"}),
        (f"/v1/orgs/{victim}/groups", {"group_id": "g1", "name": "g1"}),
        (f"/v1/orgs/{victim}/grants", {"kind": "shared", "amount": "5", "expires_at": FAR}),
    ]:
        r = await admin.post(path, json=body)
        assert r.status_code == 201, r.text
    other = await make_org(admin)
    return {
        "victim": victim,
        "victim_product": await make_key(admin, victim, "product"),
        "other_admin": await make_key(admin, other, "org_admin"),
        "other_product": await make_key(admin, other, "product"),
    }


async def state_of(admin: httpx.AsyncClient, org: str) -> list[Any]:
    paths = ["", "/members", "/groups", "/billing-groups", "/grants", "/balances", "/keys",
             "/seats", "/seat-balance", "/charges"]  # fmt: skip
    return [(await admin.get(f"/v1/orgs/{org}{p}")).json() for p in paths]


PROTECTED = [r for r in ROUTES if r.access != Access.PUBLIC]


async def test_other_orgs_keys_get_404_on_every_route(
    app: App, admin: httpx.AsyncClient, two_orgs: dict[str, str]
) -> None:
    victim = two_orgs["victim"]
    before = await state_of(admin, victim)
    for key in ("other_admin", "other_product"):
        async with client_for(app, two_orgs[key]) as client:
            for route in PROTECTED:
                r = await call(client, route, victim)
                # A route of any key (`whoami`) answers about the calling key alone.
                expected = {Access.ADMIN: 403, Access.KEY: 200}.get(route.access, 404)
                assert r.status_code == expected, (key, route.method, route.path, r.text)
                if expected != 403:
                    assert victim not in r.text
    assert await state_of(admin, victim) == before


async def test_scopes_within_the_own_org(
    app: App, admin: httpx.AsyncClient, two_orgs: dict[str, str]
) -> None:
    victim = two_orgs["victim"]
    async with client_for(app, two_orgs["victim_product"]) as client:
        for route in PROTECTED:
            r = await call(client, route, victim)
            if route.access == Access.BODY_ORG:
                assert r.status_code in (200, 202), (route.path, r.text)
            elif route.access == Access.KEY:
                assert r.status_code == 200 and r.json()["org_id"] == victim, r.text
            else:
                assert r.status_code == 403, (route.method, route.path, r.text)


async def test_every_route_needs_a_valid_key(app: App, two_orgs: dict[str, str]) -> None:
    for token in (None, "mk_not-a-key", "garbage " * 3):
        async with client_for(app, token) as client:
            for route in PROTECTED:
                r = await call(client, route, two_orgs["victim"])
                assert r.status_code == 401, (route.path, r.text)
                assert r.json()["error"]["code"] == "unauthenticated"


async def test_revoked_key_stops_working(
    app: App, admin: httpx.AsyncClient, two_orgs: dict[str, str]
) -> None:
    victim = two_orgs["victim"]
    r = await admin.post(f"/v1/orgs/{victim}/keys", json={"scope": "org_admin"})
    key_id, token = r.json()["key_id"], r.json()["token"]
    async with client_for(app, token) as client:
        assert (await client.get(f"/v1/orgs/{victim}")).status_code == 200
        r = await client.delete(f"/v1/orgs/{victim}/keys/{key_id}")
        assert r.status_code == 204
        assert (await client.get(f"/v1/orgs/{victim}")).status_code == 401
    listed = (await admin.get(f"/v1/orgs/{victim}/keys")).json()["keys"]
    assert [k["revoked_at"] is not None for k in listed if k["key_id"] == key_id] == [True]
