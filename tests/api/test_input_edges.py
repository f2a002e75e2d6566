"""Input PostgreSQL cannot store and JSON nested too deep are refused at the edge, never a 500.

Text with a NUL character anywhere in a JSON body (a name, an email, a grant source, a void key,
a key name...) or in a query value is a 422 `invalid_input` naming the field; a body nested deeper
than `MAX_JSON_DEPTH` is a 400 `malformed_request` before anything walks it.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest

from api.support import FAR, make_org
from meter.api import App
from meter.api.app import edge_error
from meter.api.http import MAX_JSON_DEPTH
from meter.errors import InvalidInput, Unavailable
from schemas.events import encode_event

BAD = "bad\x00text"

# (method, path under the organization ("" = global), body with BAD where the field is, field)
TEXT_FIELDS: list[tuple[str, str, dict[str, Any], str]] = [
    ("POST", "/v1/plans", {"plan_id": "p-nul", "name": BAD}, "name"),
    ("POST", "/v1/orgs", {"org_id": "o-nul", "name": BAD, "plan_id": "p-nul"}, "name"),
    ("PATCH", "{org}", {"name": BAD}, "name"),
    ("POST", "{org}/members", {"member_id": "m2", "name": BAD}, "name"),
    ("POST", "{org}/members", {"member_id": "m2", "email": BAD}, "email"),
    ("PATCH", "{org}/members/m1", {"name": BAD}, "name"),
    ("PATCH", "{org}/members/m1", {"email": BAD}, "email"),
    ("POST", "{org}/groups", {"group_id": "g2", "name": "g", "description": BAD}, "description"),
    ("POST", "{org}/billing-groups", {"billing_group_id": "bg2", "name": BAD}, "name"),
    ("PATCH", "{org}/billing-groups/bg1", {"name": BAD}, "name"),
    (
        "POST", "{org}/grants",
        {"kind": "shared", "amount": "1", "expires_at": FAR, "source": BAD}, "source",
    ),
    ("POST", "{org}/voids", {"key": BAD}, "key"),
    ("POST", "/v1/keys", {"scope": "admin", "name": BAD}, "name"),
    ("POST", "{org}/keys", {"scope": "product", "name": BAD}, "name"),
    ("POST", "/v1/codes", {"code": BAD, "kind": "shared_credits", "credits": "1"}, "code"),
    ("POST", "{org}/redemptions", {"code": BAD}, "code"),
    ("POST", "/v1/plans", {"plan_id": "p-nul", "name": "ok", "x": [{BAD: 1}]}, "x.0.bad\\x00text"),
]  # fmt: skip


async def _org_with_objects(admin: httpx.AsyncClient) -> str:
    org = await make_org(admin)
    r = await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "m1", "name": "M"})
    assert r.status_code == 201, r.text
    body = {"billing_group_id": "bg1", "name": "BG"}
    r = await admin.post(f"/v1/orgs/{org}/billing-groups", json=body)
    assert r.status_code == 201, r.text
    return org


def _url(path: str, org: str) -> str:
    return path.replace("{org}", f"/v1/orgs/{org}")


@pytest.mark.parametrize(("method", "path", "body", "field"), TEXT_FIELDS)
async def test_nul_in_body_text_is_422_naming_the_field(
    app: App, admin: httpx.AsyncClient, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    org = await _org_with_objects(admin)
    if path == "/v1/orgs":
        r = await admin.post("/v1/plans", json={"plan_id": "p-nul", "name": "P"})
        assert r.status_code == 201, r.text
    r = await admin.request(method, _url(path, org), json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_input"
    assert [d["loc"] for d in error["details"]] == [field]
    assert error["details"][0]["type"] == "unstorable_text"


@pytest.mark.parametrize("name", ["billing_group", "period", "after", "limit"])
@pytest.mark.parametrize("report", ["members", "export.csv", "totals"])
async def test_nul_in_query_value_is_422_naming_the_parameter(
    app: App, admin: httpx.AsyncClient, name: str, report: str
) -> None:
    org = await _org_with_objects(admin)
    r = await admin.get(f"/v1/orgs/{org}/reports/{report}?{name}=a%00b")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["details"][0]["loc"] == f"query.{name}"


async def test_nul_in_path_parameter_is_404(app: App, admin: httpx.AsyncClient) -> None:
    org = await _org_with_objects(admin)
    for path in (f"/v1/orgs/{org}/members/m%001", "/v1/orgs/a%00b", "/v1/plans/p%00"):
        r = await admin.get(path)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "route_not_found"


async def test_plain_text_is_stored_as_sent(app: App, admin: httpx.AsyncClient) -> None:
    org = await _org_with_objects(admin)
    name = "Zoë \u00a0\t\r\n\u2028 \U0001f600 =1+1"
    r = await admin.patch(f"/v1/orgs/{org}/members/m1", json={"name": name})
    assert r.status_code == 200, r.text
    assert (await admin.get(f"/v1/orgs/{org}/members/m1")).json()["name"] == name


def _nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


# Deep enough to pass orjson (which stops at 1024) and to exhaust Python's recursion limit.
DEEP = 1000


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/plans"),
        ("POST", "{org}/members"),
        ("PATCH", "{org}/members/m1"),
        ("POST", "{org}/grants"),
        ("POST", "/v1/check"),
        ("POST", "/v1/reserve"),
        ("POST", "/v1/release"),
    ],
)
@pytest.mark.parametrize("leaf", [b"1", b"1.5", b'"x"'])
async def test_deep_json_is_400(
    app: App, admin: httpx.AsyncClient, method: str, path: str, leaf: bytes
) -> None:
    org = await _org_with_objects(admin)
    for depth in (MAX_JSON_DEPTH + 1, DEEP):
        body = b'{"name":' + _nested(depth - 1, leaf) + b"}"
        r = await admin.request(
            method, _url(path, org), content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, (depth, r.text)
        error = r.json()["error"]
        assert error["code"] == "malformed_request", error
        assert str(MAX_JSON_DEPTH) in error["message"]


async def test_depth_at_the_bound_is_read(app: App, admin: httpx.AsyncClient) -> None:
    org = await _org_with_objects(admin)
    body = b'{"member_id":"m3","name":' + _nested(MAX_JSON_DEPTH - 1) + b"}"
    r = await admin.post(
        f"/v1/orgs/{org}/members", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text  # read, then refused by the model: name is no object
    assert r.json()["error"]["details"][0]["loc"] == "name"


async def test_deep_events_are_refused(app: App, admin: httpx.AsyncClient) -> None:
    org = await _org_with_objects(admin)
    event = encode_event(
        event_id="e-deep", source="//test", org_id=org, member_id="m1",
        credits=1_000_000, time_ms=time.time_ns() // 1_000_000,
    )  # fmt: skip
    deep = event[:-2] + b',"attributes":' + _nested(DEEP) + b"}}"
    single = await admin.post(
        "/v1/events", content=deep, headers={"content-type": "application/cloudevents+json"}
    )
    assert single.status_code == 422, single.text
    batch = await admin.post(
        "/v1/events", content=b"[" + deep + b"]",
        headers={"content-type": "application/cloudevents-batch+json"},
    )  # fmt: skip
    assert batch.status_code == 400, batch.text
    assert batch.json()["error"]["code"] == "invalid_json"


async def test_data_exceptions_from_postgresql_are_422(migrated_dsn: str) -> None:
    """The last line of defence: text PostgreSQL refuses is bad input, whatever let it through."""
    conn = await asyncpg.connect(migrated_dsn)
    try:
        with pytest.raises(asyncpg.DataError) as raised:
            await conn.fetchval("SELECT $1::text", "a\x00b")
        with pytest.raises(asyncpg.exceptions.DataError) as server_side:
            await conn.fetchval("SELECT convert_from('\\x00'::bytea, 'UTF8')")
    finally:
        await conn.close()
    for exc in (raised.value, server_side.value):
        mapped = edge_error(exc)
        assert isinstance(mapped, InvalidInput), exc
        assert mapped.code == "invalid_input"


def test_a_redis_cluster_failing_over_is_unavailable_and_retried() -> None:
    """What a cluster raises while it fails over or migrates a slot (redirects until the client
    gives up, no primary for the slot, TRYAGAIN) is a 503 on the API and a retry in every loop,
    never a 500 or a quarantined organization; what Redis says about the command is neither."""
    from redis.exceptions import ClusterError, ResponseError, SlotNotCoveredError, TryAgainError

    from consumers.settle import TRANSIENT
    from meter.quarantine import is_transient
    from meter.supervise import TRANSIENT as SUPERVISED_TRANSIENT

    for exc in (
        ClusterError("TTL exhausted."),
        SlotNotCoveredError("slot 5 is not covered"),
        TryAgainError("TRYAGAIN"),
    ):
        assert isinstance(edge_error(exc), Unavailable), exc
        assert isinstance(exc, TRANSIENT) and isinstance(exc, SUPERVISED_TRANSIENT), exc
        assert is_transient(exc), exc
    wrong = ResponseError("ERR Error running script")
    assert edge_error(wrong) is None
    assert not isinstance(wrong, TRANSIENT) and not is_transient(wrong)
