"""Bad input never gives a 500: garbage is thrown at every route."""

from __future__ import annotations

import collections

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.support import ADMIN_TOKEN, client_for, make_org
from meter.api import App
from meter.api.http import MAX_BODY_BYTES
from meter.api.routes import ROUTES

BAD_BODIES: list[bytes] = [
    b"",
    b"\x00\xff\xfe",
    b"not json",
    b"[]",
    b"null",
    b"42",
    b'"a string"',
    b"{",
    b'{"org_id": null}',
    b'{"org_id": {"$gt": ""}, "member_id": [], "credits": {}}',
    b'{"org_id": "a", "member_id": "b", "credits": NaN}',
    b'{"org_id": "a", "member_id": "b", "credits": 1e999999}',
    b'{"org_id": "a", "member_id": "b", "credits": 123456789012345678901234567890}',
    b'{"org_id": "a\\u0000", "member_id": "b", "credits": "1"}',
    b'{"plan_id": "' + b"x" * 5000 + b'", "name": "x"}',
    b"[" * 10_000 + b"]" * 10_000,
    b'{"kind": "shared", "amount": "1", "expires_at": "yesterday"}',
    b'{"scope": "root"}',
    b'{"status": "bankrupt"}',
    b'{"expires_at": "2026-01-01T00:00:00"}',
]
OK_STATUSES = {200, 201, 202, 204, 400, 404, 405, 409, 413, 415, 422}


def _path(path: str, org: str, junk: str = "x") -> str:
    return path.format_map(collections.defaultdict(lambda: junk, {"org_id": org}))


async def test_garbage_bodies_on_every_route(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    for route in ROUTES:
        for body in BAD_BODIES:
            for content_type in ("application/json", "application/cloudevents-batch+json"):
                r = await admin.request(
                    route.method, _path(route.path, org), content=body,
                    headers={"content-type": content_type},
                )  # fmt: skip
                assert r.status_code in OK_STATUSES, (route.method, route.path, body[:40], r.text)
                if r.status_code >= 400:
                    assert r.json()["error"]["code"]


async def test_odd_paths_methods_and_types(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    for route in ROUTES:
        for junk in ("%00", "..", "a" * 300, "%E2%82%AC", "x%2Fy", " "):
            r = await admin.request(route.method, _path(route.path, org, junk))
            assert r.status_code in OK_STATUSES, (route.path, junk, r.text)
        r = await admin.request("TRACE", _path(route.path, org))
        assert r.status_code in (404, 405)
        if route.method in ("POST", "PATCH", "PUT"):
            r = await admin.request(
                route.method, _path(route.path, org), content=b"<xml/>",
                headers={"content-type": "application/xml"},
            )  # fmt: skip
            assert r.status_code in (404, 415), (route.path, r.text)
            r = await admin.request(
                route.method, _path(route.path, org), content=b" " * (route.max_body + 1),
                headers={"content-type": "application/json"},
            )  # fmt: skip
            assert r.status_code == 413, (route.path, r.text)
    assert (await admin.get("/nope")).status_code == 404
    assert (await admin.get("/v1/orgs/")).status_code in (404, 405)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    route=st.sampled_from([r for r in ROUTES if r.method in ("POST", "PATCH", "PUT")]),
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20)
        | st.floats(allow_nan=False, allow_infinity=False),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["org_id", "member_id", "credits", "kind", "amount", "name",
                             "scope", "status", "expires_at", "ttl_ms", "x"]),
            children, max_size=6,
        ),
        max_leaves=12,
    ),
)  # fmt: skip
async def test_random_json_bodies(app: App, route: object, doc: object) -> None:
    from meter.api.http import Route

    assert isinstance(route, Route)
    async with client_for(app, ADMIN_TOKEN) as client:
        r = await client.request(route.method, _path(route.path, "org-x"), json=doc)
    assert r.status_code in OK_STATUSES, (route.path, doc, r.text)


def test_body_limit_is_small() -> None:
    assert MAX_BODY_BYTES <= 1024 * 1024
