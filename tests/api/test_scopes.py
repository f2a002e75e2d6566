"""Scopes: the route x scope matrix of `meter/api/README.md` is what the code does, route by route.

The matrix is generated from the route table; these tests check that the committed copy is the
generated one, then walk every route with a key of every column and assert the documented answer.
Credits (grants, voids, redemptions, codes) and plan changes need a platform key: an `org_admin`
key, which a customer may hold, can neither fund its organization nor mint a platform key.
"""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest

from api.support import ADMIN_TOKEN, FAR, call, client_for, make_key, make_org, unique
from meter.api import App
from meter.api.openapi import (
    MATRIX_COLUMNS,
    MATRIX_END,
    MATRIX_START,
    README,
    readme_with_matrix,
)
from meter.api.routes import ROUTES


def documented_matrix() -> dict[tuple[str, str], dict[str, str]]:
    """The matrix as the README states it: (method, path) -> column -> cell."""
    text = README.read_text()
    table = text[text.index(MATRIX_START) + len(MATRIX_START) : text.index(MATRIX_END)]
    rows = [line for line in table.strip().splitlines()[2:] if line.startswith("| `")]
    matrix: dict[tuple[str, str], dict[str, str]] = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        method, path = cells[0].strip("`").split(" ", 1)
        matrix[(method, path)] = dict(zip(MATRIX_COLUMNS, cells[1:], strict=True))
    return matrix


def test_the_readme_matrix_is_the_generated_one() -> None:
    text = README.read_text()
    assert readme_with_matrix(text) == text, "run python -m meter.api.openapi"
    assert set(documented_matrix()) == {(r.method, r.path) for r in ROUTES}


async def billing_key(admin: httpx.AsyncClient) -> tuple[str, str]:
    r = await admin.post("/v1/keys", json={"scope": "billing", "name": "finance"})
    assert r.status_code == 201, r.text
    assert r.json()["org_id"] is None
    return r.json()["key_id"], r.json()["token"]


@pytest.fixture
async def keys(app: App, admin: httpx.AsyncClient) -> dict[str, str | None]:
    """An organization with objects every sample request names, and a key per matrix column."""
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
        "org": victim,
        "admin": ADMIN_TOKEN,
        "billing": (await billing_key(admin))[1],
        "org_admin": await make_key(admin, victim, "org_admin"),
        "org_admin, other org": await make_key(admin, other, "org_admin"),
        "product": await make_key(admin, victim, "product"),
        "no key": None,
    }


async def test_every_route_with_every_scope(app: App, keys: dict[str, str | None]) -> None:
    matrix = documented_matrix()
    org = keys["org"]
    assert org is not None
    walked = 0
    # Keys that must be refused go first, so the routes they are refused see the fixture's state.
    for column in ("no key", "product", "org_admin, other org", "org_admin", "billing", "admin"):
        async with client_for(app, keys[column]) as client:
            for route in ROUTES:
                cell = matrix[(route.method, route.path)][column]
                r = await call(client, route, org)
                where = (column, route.method, route.path, r.status_code, r.text)
                walked += 1
                if cell == "yes":
                    assert r.status_code not in (401, 403, 429), where
                    if r.status_code == 404:
                        assert r.json()["error"]["code"] != "org_not_found", where
                    if route.access != "public":
                        assert r.status_code < 500, where
                elif cell == "401":
                    assert r.status_code == 401, where
                    assert r.json()["error"]["code"] == "unauthenticated", where
                elif cell == "403":
                    assert r.status_code == 403, where
                    assert r.json()["error"]["code"] == "forbidden", where
                else:
                    assert cell == "404", where
                    assert r.status_code == 404, where
                    assert r.json()["error"]["code"] == "org_not_found", where
                    assert org not in r.text, where
    assert walked == len(ROUTES) * len(MATRIX_COLUMNS)


async def test_an_org_admin_key_cannot_fund_its_own_organization(
    app: App, admin: httpx.AsyncClient
) -> None:
    org = await make_org(admin)
    r = await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "ann"})
    assert r.status_code == 201, r.text
    plan = unique("plan")
    r = await admin.post("/v1/plans", json={"plan_id": plan, "name": "Big"})
    assert r.status_code == 201, r.text
    before = [(await admin.get(f"/v1/orgs/{org}{p}")).json() for p in ("", "/grants", "/balances")]
    grant = {"kind": "shared", "amount": "1000000", "expires_at": FAR}
    code = {"code": unique("CODE"), "kind": "shared_credits", "credits": "5000"}
    attempts = [
        ("POST", f"/v1/orgs/{org}/grants", grant),
        ("POST", f"/v1/orgs/{org}/voids", {"key": "//product e-1"}),
        ("POST", "/v1/codes", code),
        ("POST", f"/v1/orgs/{org}/redemptions", {"code": code["code"]}),
        ("PATCH", f"/v1/orgs/{org}", {"plan_id": plan}),
        ("PATCH", f"/v1/orgs/{org}", {"status": "active"}),
        ("PUT", f"/v1/orgs/{org}/seat-billing", {"seat_billing": "external"}),
        ("POST", "/v1/plans", {"plan_id": unique("plan"), "name": "Free"}),
        ("POST", "/v1/keys", {"scope": "billing"}),
    ]
    async with client_for(app, await make_key(admin, org, "org_admin")) as customer:
        for method, path, body in attempts:
            r = await customer.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["error"]["code"] == "forbidden"
        for scope in ("billing", "admin"):
            r = await customer.post(f"/v1/orgs/{org}/keys", json={"scope": scope})
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "invalid_scope"
        # What it still manages: members and their limits, and its own organization keys.
        r = await customer.patch(f"/v1/orgs/{org}/members/ann", json={"member_limit": "10"})
        assert r.status_code == 200, r.text
        r = await customer.post(f"/v1/orgs/{org}/keys", json={"scope": "product"})
        assert r.status_code == 201, r.text
    after = [(await admin.get(f"/v1/orgs/{org}{p}")).json() for p in ("", "/grants", "/balances")]
    assert after == before

    _, token = await billing_key(admin)
    async with client_for(app, token) as finance:
        r = await finance.post(f"/v1/orgs/{org}/grants", json=grant)
        assert r.status_code == 201, r.text
        r = await finance.post("/v1/codes", json=code)
        assert r.status_code == 201, r.text
        r = await finance.post(f"/v1/orgs/{org}/redemptions", json={"code": code["code"]})
        assert r.status_code == 201, r.text
        r = await finance.patch(f"/v1/orgs/{org}", json={"plan_id": plan})
        assert r.status_code == 200, r.text
        r = await finance.post(f"/v1/orgs/{org}/voids", json={"key": "//product e-1"})
        assert r.status_code == 200 and r.json()["voided"] is False, r.text
        # A billing key is no administrator: no keys, no members.
        assert (await finance.post("/v1/keys", json={"scope": "billing"})).status_code == 403
        r = await finance.post(f"/v1/orgs/{org}/keys", json={"scope": "org_admin"})
        assert r.status_code == 403, r.text
        r = await finance.post(f"/v1/orgs/{org}/members", json={"member_id": "bob"})
        assert r.status_code == 403, r.text
    grants = (await admin.get(f"/v1/orgs/{org}/grants")).json()["grants"]
    assert len(grants) == len(before[1]["grants"]) + 2


async def test_billing_keys_are_platform_keys(app: App, admin: httpx.AsyncClient) -> None:
    key_id, token = await billing_key(admin)
    listed = (await admin.get("/v1/keys")).json()["keys"]
    assert [k["scope"] for k in listed if k["key_id"] == key_id] == ["billing"]
    async with client_for(app, token) as finance:
        assert (await finance.get("/v1/plans")).status_code == 200
        assert (await admin.delete(f"/v1/keys/{key_id}")).status_code == 204
        assert (await finance.get("/v1/plans")).status_code == 401
    org = await make_org(admin)
    with pytest.raises(asyncpg.CheckViolationError):
        await app.pool.execute(
            "INSERT INTO api_keys (key_id, token_hash, scope, org_id) VALUES ($1, $2, $3, $4)",
            "key_bad",
            b"\x00" * 32,
            "billing",
            org,
        )
