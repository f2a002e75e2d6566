"""The routes of the API: thin handlers that parse, call the domain and shape the answer.

Access (see `meter.auth`; the route x scope matrix is in `meter/api/README.md`): `admin` keys
reach everything; `billing` keys plans, organizations' plan and status, grants, voids, codes,
redemptions and seat billing of every organization, and the reads; `org_admin` keys their
organization's members, limits, groups, billing groups, keys, reads and quota routes; `product`
keys check, reserve, release and ingest for their organization. Another organization's key gets
404 everywhere; a key of the right organization whose scope does not allow the route gets 403.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from typing import Any

import orjson
import structlog

from meter import metrics
from meter.admin import alert_thresholds, reads
from meter.api import bodies, ingest, readable, reports
from meter.api import plans as plan_routes
from meter.api import rating as rating_routes
from meter.api.http import (
    NO_CONTENT,
    Access,
    Call,
    Response,
    Route,
    json_response,
    model_response,
    parse_body,
    query_params,
)
from meter.auth import PLATFORM, Scope
from meter.engine.types import CheckResult, Reason
from meter.errors import InvalidInput, NotFound, OrgQuarantined, Unavailable
from meter.health import HEALTH
from meter.money import format_credits
from meter.webhooks import routes as webhook_routes
from schemas import api
from schemas.events import format_time

ORG = (Scope.ORG_ADMIN,)
READ = (Scope.ORG_ADMIN, Scope.BILLING)
BILL = (Scope.BILLING,)
QUOTA = (Scope.ORG_ADMIN, Scope.PRODUCT)
HOLDS_TIMEOUT_S = 2.0
"""How long `/metrics` waits for the live-holds count before answering without it."""

log = structlog.get_logger("meter.api")


# -- health and docs ----------------------------------------------------------------------------


async def healthz(call: Call) -> Response:
    return json_response({"status": "ok", "checks": {}})


async def _probe(name: str, probe: Any) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe, 2.0)
    except Exception as exc:
        return name, f"unavailable: {type(exc).__name__}"
    return name, "ok"


async def readyz(call: Call) -> Response:
    app = call.app

    async def kafka() -> None:
        producer = await app.producer()
        await producer.client.fetch_all_metadata()

    checks = dict(
        await asyncio.gather(
            _probe("redis", app.redis.ping()),
            _probe("postgres", app.pool.fetchval("SELECT 1")),
            _probe("kafka", kafka()),
        )
    )
    checks.update(HEALTH.problems())
    # Checks need Redis and PostgreSQL only: Kafka down degrades ingest (503), reported here
    # without taking the API out of service.
    ok = all(v == "ok" for name, v in checks.items() if name != "kafka")
    return json_response(
        {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503
    )


async def prometheus(call: Call) -> Response:
    """The process's metrics in the Prometheus text format (aggregate numbers only)."""
    app = call.app
    if not app.settings.metrics_on_api:
        raise NotFound("no such route", code="route_not_found")
    try:
        await asyncio.wait_for(
            metrics.refresh_live_holds(app.pool, app.redis, app.clock()), HOLDS_TIMEOUT_S
        )
    except Exception as exc:
        log.warning("live holds not refreshed", error=repr(exc))
    return Response(200, metrics.exposition(), [(b"content-type", metrics.CONTENT_TYPE.encode())])


async def openapi(call: Call) -> Response:
    from meter.api.openapi import openapi_bytes

    return Response(200, openapi_bytes())


# -- quota hot path -----------------------------------------------------------------------------


def _opt_credits(micro: int | None) -> str | None:
    return None if micro is None else format_credits(micro)


@functools.lru_cache(maxsize=4096)
def _instant(ms: int) -> str:
    """RFC 3339 of an instant; period ends repeat across checks, so they are cached."""
    return format_time(ms)


def check_payload(result: CheckResult) -> dict[str, Any]:
    return {
        "allowed": result.allowed,
        "reason": None if result.reason is None else result.reason.value,
        "available": {k.value: format_credits(v) for k, v in result.available.items()},
        "member_remaining": _opt_credits(result.member_remaining),
        "group_remaining": _opt_credits(result.group_remaining),
        "period_end": None if result.period_end_ms is None else _instant(result.period_end_ms),
        "reservation_id": result.reservation_id,
        "reservation_expires_at": (
            None
            if result.reservation_expires_ms is None
            else format_time(result.reservation_expires_ms)
        ),
    }


async def absent_org(call: Call, org_id: str, reason: Reason) -> None:
    """An organization without state in Redis: 503 when it exists (quarantined, or Redis being
    rebuilt), so that no caller takes `unknown_org` for an answer about a real organization. An
    organization-bound key proves its organization exists; for an admin key PostgreSQL says
    (the organization's state lives on one shard, which may have restarted empty). Either way the
    reconciler is asked to repair it at once. Only denied answers get here: checks of known
    organizations pay nothing for it."""
    if reason is Reason.ORG_QUARANTINED:
        raise OrgQuarantined(f"organization {org_id!r} is quarantined; an operator must release it")
    if call.who.org_id != org_id:
        try:
            await call.app.admin.org_exists(org_id)
        except NotFound:
            return
    call.app.admin.want_repair(org_id)
    raise Unavailable("quota state is being rebuilt; retry shortly")


async def check(call: Call) -> Response:
    org_id, member_id, amount = bodies.check_body(call.body)
    call.who.require_org(org_id, *QUOTA)
    app = call.app
    now = app.clock()
    credits = amount if isinstance(amount, int) else await rating_routes.rated(call, org_id, amount)
    if not app.seats.covers(org_id, now):
        await app.issue_seats(org_id, now)
    result = await app.engine.check(org_id, member_id, credits, now)
    metrics.count_check("check", result)
    if result.reason is Reason.UNKNOWN_ORG or result.reason is Reason.ORG_QUARANTINED:
        await absent_org(call, org_id, result.reason)
    return Response(200, orjson.dumps(check_payload(result)))


async def reserve(call: Call) -> Response:
    org_id, member_id, amount, ttl_ms, reservation_id = bodies.reserve_body(call.body)
    call.who.require_org(org_id, *QUOTA)
    app = call.app
    reservation_id = reservation_id or "res_" + secrets.token_hex(12)
    now = app.clock()
    credits = amount if isinstance(amount, int) else await rating_routes.rated(call, org_id, amount)
    if not app.seats.covers(org_id, now):
        await app.issue_seats(org_id, now)
    result = await app.engine.reserve(org_id, member_id, credits, now, reservation_id, ttl_ms)
    metrics.count_check("reserve", result)
    if result.reason is Reason.UNKNOWN_ORG or result.reason is Reason.ORG_QUARANTINED:
        await absent_org(call, org_id, result.reason)
    return Response(200, orjson.dumps(check_payload(result)))


_RELEASED = {True: b'{"released":true}', False: b'{"released":false}'}


async def release(call: Call) -> Response:
    org_id, reservation_id = bodies.release_body(call.body)
    call.who.require_org(org_id, *QUOTA)
    app = call.app
    released = await app.engine.release(org_id, reservation_id, app.clock())
    metrics.count_release(released)
    return Response(200, _RELEASED[released])


# -- plans and organizations --------------------------------------------------------------------


async def create_plan(call: Call) -> Response:
    plan = await call.app.admin.create_plan(parse_body(api.PlanCreate, call.body))
    return model_response(plan, 201)


async def list_plans(call: Call) -> Response:
    return model_response(await call.app.admin.list_plans())


async def get_plan(call: Call) -> Response:
    return model_response(await call.app.admin.get_plan(call.params["plan_id"]))


async def create_org(call: Call) -> Response:
    org = await call.app.admin.create_org(parse_body(api.OrgCreate, call.body))
    return model_response(org, 201)


async def get_org(call: Call) -> Response:
    return model_response(await call.app.admin.get_org(call.params["org_id"]))


async def update_org(call: Call) -> Response:
    body = parse_body(api.OrgUpdate, call.body)
    return model_response(await call.app.admin.update_org(call.params["org_id"], body))


async def reconcile(call: Call) -> Response:
    from meter.admin import reconcile_org

    org_id = call.params["org_id"]
    await call.app.admin.org_exists(org_id)
    await reconcile_org(call.app.admin, org_id)
    return NO_CONTENT


# -- members --------------------------------------------------------------------------------------


async def create_member(call: Call) -> Response:
    body = parse_body(api.MemberCreate, call.body)
    return model_response(await call.app.admin.create_member(call.params["org_id"], body), 201)


async def list_members(call: Call) -> Response:
    return model_response(await call.app.admin.list_members(call.params["org_id"]))


async def get_member(call: Call) -> Response:
    p = call.params
    return model_response(await call.app.admin.get_member(p["org_id"], p["member_id"]))


async def update_member(call: Call) -> Response:
    p = call.params
    body = parse_body(api.MemberUpdate, call.body)
    return model_response(await call.app.admin.update_member(p["org_id"], p["member_id"], body))


async def delete_member(call: Call) -> Response:
    await call.app.admin.delete_member(call.params["org_id"], call.params["member_id"])
    return NO_CONTENT


# -- groups ---------------------------------------------------------------------------------------


async def create_group(call: Call) -> Response:
    body = parse_body(api.GroupCreate, call.body)
    return model_response(await call.app.admin.create_group(call.params["org_id"], body), 201)


async def list_groups(call: Call) -> Response:
    return model_response(await call.app.admin.list_groups(call.params["org_id"]))


async def get_group(call: Call) -> Response:
    p = call.params
    return model_response(await call.app.admin.get_group(p["org_id"], p["group_id"]))


async def delete_group(call: Call) -> Response:
    await call.app.admin.delete_group(call.params["org_id"], call.params["group_id"])
    return NO_CONTENT


async def add_group_member(call: Call) -> Response:
    p = call.params
    group = await call.app.admin.add_group_member(p["org_id"], p["group_id"], p["member_id"])
    return model_response(group)


async def remove_group_member(call: Call) -> Response:
    p = call.params
    group = await call.app.admin.remove_group_member(p["org_id"], p["group_id"], p["member_id"])
    return model_response(group)


# -- billing groups -----------------------------------------------------------------------------


async def create_billing_group(call: Call) -> Response:
    body = parse_body(api.BillingGroupCreate, call.body)
    group = await call.app.admin.create_billing_group(call.params["org_id"], body)
    return model_response(group, 201)


async def list_billing_groups(call: Call) -> Response:
    return model_response(await call.app.admin.list_billing_groups(call.params["org_id"]))


async def get_billing_group(call: Call) -> Response:
    p = call.params
    return model_response(
        await call.app.admin.get_billing_group(p["org_id"], p["billing_group_id"])
    )


async def update_billing_group(call: Call) -> Response:
    p = call.params
    body = parse_body(api.BillingGroupUpdate, call.body)
    group = await call.app.admin.update_billing_group(p["org_id"], p["billing_group_id"], body)
    return model_response(group)


async def delete_billing_group(call: Call) -> Response:
    p = call.params
    await call.app.admin.delete_billing_group(p["org_id"], p["billing_group_id"])
    return NO_CONTENT


# -- grants, balances, voids ----------------------------------------------------------------------


async def create_grant(call: Call) -> Response:
    body = parse_body(api.GrantCreate, call.body)
    grant = await call.app.admin.create_grant(call.params["org_id"], body)
    return model_response(grant, 201 if grant.created else 200)


async def revoke_grant(call: Call) -> Response:
    p = call.params
    return model_response(await call.app.admin.revoke_grant(p["org_id"], p["bucket_id"]))


async def list_grants(call: Call) -> Response:
    return model_response(await call.app.admin.list_grants(call.params["org_id"]))


async def balances(call: Call) -> Response:
    show_all = readable.flag(query_params(call, {"all"}).get("all"), "all")
    app = call.app
    org_id = call.params["org_id"]
    return model_response(
        await reads.buckets(app.pool, app.engine, org_id, app.clock(), show_all=show_all)
    )


async def void(call: Call) -> Response:
    body = parse_body(api.VoidRequest, call.body)
    result = await call.app.admin.void(call.params["org_id"], body.key, call.who.key_id)
    return model_response(result)


# -- alert thresholds -----------------------------------------------------------------------------


async def get_alert_thresholds(call: Call) -> Response:
    return model_response(await alert_thresholds.get(call.app.pool, call.params["org_id"]))


async def put_alert_thresholds(call: Call) -> Response:
    body = parse_body(alert_thresholds.AlertThresholdsUpdate, call.body)
    return model_response(await alert_thresholds.put(call.app.pool, call.params["org_id"], body))


async def get_default_alert_thresholds(call: Call) -> Response:
    return model_response(await alert_thresholds.get_defaults(call.app.pool))


async def put_default_alert_thresholds(call: Call) -> Response:
    body = parse_body(alert_thresholds.DefaultAlertThresholdsUpdate, call.body)
    return model_response(await alert_thresholds.put_defaults(call.app.pool, body))


# -- keys -----------------------------------------------------------------------------------------


async def create_admin_key(call: Call) -> Response:
    body = parse_body(api.KeyCreate, call.body)
    scope = Scope(body.scope)
    if scope not in PLATFORM:
        raise InvalidInput(
            "organization keys are created under /v1/orgs/{org_id}/keys", code="invalid_scope"
        )
    return model_response(await call.app.admin.create_key(scope, None, body.name), 201)


async def list_admin_keys(call: Call) -> Response:
    return model_response(await call.app.admin.list_keys(None))


async def revoke_admin_key(call: Call) -> Response:
    await call.app.admin.revoke_key(None, call.params["key_id"])
    call.app.keys.forget_key(call.params["key_id"])
    return NO_CONTENT


async def create_org_key(call: Call) -> Response:
    body = parse_body(api.KeyCreate, call.body)
    if Scope(body.scope) in PLATFORM:
        raise InvalidInput(
            "admin and billing keys belong to no organization; an admin creates them under"
            " /v1/keys",
            code="invalid_scope",
        )
    key = await call.app.admin.create_key(Scope(body.scope), call.params["org_id"], body.name)
    return model_response(key, 201)


async def list_org_keys(call: Call) -> Response:
    org_id = call.params["org_id"]
    await call.app.admin.org_exists(org_id)
    return model_response(await call.app.admin.list_keys(org_id))


async def revoke_org_key(call: Call) -> Response:
    await call.app.admin.revoke_key(call.params["org_id"], call.params["key_id"])
    call.app.keys.forget_key(call.params["key_id"])
    return NO_CONTENT


# -- the table ----------------------------------------------------------------------------------

P, A, OA, B = Access.PUBLIC, Access.ADMIN, Access.ORG, Access.BODY_ORG
ORG_PATH = "/v1/orgs/{org_id}"

ROUTES: list[Route] = [
    Route("GET", "/healthz", healthz, "Process is up", P, tag="health", response=api.Health),
    Route("GET", "/livez", healthz, "Process is up (the same as /healthz)", P, tag="health",
          response=api.Health),
    Route(
        "GET", "/readyz", readyz,
        "Redis and PostgreSQL answer, no background loop failing (Kafka reported, not required)",
        P,
        tag="health", response=api.Health,
    ),
    Route("GET", "/openapi.json", openapi, "This document", P, tag="health"),
    Route(
        "GET", "/metrics", prometheus, "Prometheus metrics (aggregate numbers, no tenant data)", P,
        tag="health",
    ),
    # quota
    Route(
        "POST", "/v1/check", check, "May this member start a request of this size now?", B,
        QUOTA, api.CheckRequest, api.CheckResponse, tag="quota",
    ),
    Route(
        "POST", "/v1/reserve", reserve, "Check, and hold the credits if allowed", B, QUOTA,
        api.ReserveRequest, api.CheckResponse, tag="quota",
    ),
    Route(
        "POST", "/v1/release", release, "Release a hold", B, QUOTA, api.ReleaseRequest,
        api.ReleaseResponse, tag="quota",
    ),
    Route(
        "POST", "/v1/events", ingest.ingest, "Ingest usage events (CloudEvents, one or a batch)",
        B, QUOTA, None, api.IngestResponse, 202, ingest.MAX_BATCH_BYTES, ingest.CONTENT_TYPES,
        tag="ingest",
    ),
    # plans, organizations
    Route("POST", "/v1/plans", create_plan, "Create a plan", A, BILL, api.PlanCreate, api.Plan,
          201, tag="plans"),
    Route("GET", "/v1/plans", list_plans, "List plans", A, BILL, response=api.PlanList,
          tag="plans"),
    Route("GET", "/v1/plans/{plan_id}", get_plan, "Get a plan", A, BILL, response=api.Plan,
          tag="plans"),
    Route("POST", "/v1/orgs", create_org, "Create an organization", A, BILL, api.OrgCreate,
          api.Org, 201, tag="organizations"),
    Route("GET", ORG_PATH, get_org, "Get an organization", OA, READ, response=api.Org,
          tag="organizations"),
    Route("PATCH", ORG_PATH, update_org, "Change an organization's status, plan or name", OA,
          BILL, api.OrgUpdate, api.Org, tag="organizations"),
    Route("POST", ORG_PATH + "/reconcile", reconcile,
          "Re-apply the organization's state from PostgreSQL to Redis", OA, (), status=204,
          tag="organizations"),
    # members
    Route("POST", ORG_PATH + "/members", create_member, "Add a member", OA, ORG,
          api.MemberCreate, api.Member, 201, tag="members"),
    Route("GET", ORG_PATH + "/members", list_members, "List members", OA, READ,
          response=api.MemberList, tag="members"),
    Route("GET", ORG_PATH + "/members/{member_id}", get_member, "Get a member", OA, READ,
          response=api.Member, tag="members"),
    Route("PATCH", ORG_PATH + "/members/{member_id}", update_member,
          "Change seat, member limit, billing group, name or email", OA, ORG, api.MemberUpdate,
          api.Member, tag="members"),
    Route("DELETE", ORG_PATH + "/members/{member_id}", delete_member, "Remove a member", OA, ORG,
          status=204, tag="members"),
    # groups
    Route("POST", ORG_PATH + "/groups", create_group, "Create a group", OA, ORG, api.GroupCreate,
          api.Group, 201, tag="groups"),
    Route("GET", ORG_PATH + "/groups", list_groups, "List groups", OA, READ,
          response=api.GroupList, tag="groups"),
    Route("GET", ORG_PATH + "/groups/{group_id}", get_group, "Get a group", OA, READ,
          response=api.Group, tag="groups"),
    Route("DELETE", ORG_PATH + "/groups/{group_id}", delete_group, "Delete a group", OA, ORG,
          status=204, tag="groups"),
    Route("PUT", ORG_PATH + "/groups/{group_id}/members/{member_id}", add_group_member,
          "Add a member to a group", OA, ORG, response=api.Group, tag="groups"),
    Route("DELETE", ORG_PATH + "/groups/{group_id}/members/{member_id}", remove_group_member,
          "Remove a member from a group", OA, ORG, response=api.Group, tag="groups"),
    # billing groups
    Route("POST", ORG_PATH + "/billing-groups", create_billing_group, "Create a billing group",
          OA, ORG, api.BillingGroupCreate, api.BillingGroup, 201, tag="billing groups"),
    Route("GET", ORG_PATH + "/billing-groups", list_billing_groups,
          "List billing groups (Unassigned first)", OA, READ, response=api.BillingGroupList,
          tag="billing groups"),
    Route("GET", ORG_PATH + "/billing-groups/{billing_group_id}", get_billing_group,
          "Get a billing group", OA, READ, response=api.BillingGroup, tag="billing groups"),
    Route("PATCH", ORG_PATH + "/billing-groups/{billing_group_id}", update_billing_group,
          "Rename a billing group or set its period limit", OA, ORG, api.BillingGroupUpdate,
          api.BillingGroup, tag="billing groups"),
    Route("DELETE", ORG_PATH + "/billing-groups/{billing_group_id}", delete_billing_group,
          "Delete a billing group: its members return to Unassigned", OA, ORG, status=204,
          tag="billing groups"),
    # grants, balances, voids
    Route("POST", ORG_PATH + "/grants", create_grant, "Grant credits (idempotent by bucket id)",
          OA, BILL, api.GrantCreate, api.GrantOut, 201, tag="credits"),
    Route("DELETE", ORG_PATH + "/grants/{bucket_id}", revoke_grant,
          "Revoke a grant from now on (idempotent)", OA, BILL, response=api.GrantOut,
          tag="credits"),
    Route("GET", ORG_PATH + "/grants", list_grants, "List grants", OA, READ,
          response=api.GrantList, tag="credits"),
    Route("GET", ORG_PATH + "/balances", balances,
          "Credits left per bucket; `buckets` hides expired, revoked and empty ones unless"
          " `all=true`", OA, READ,
          response=api.Balances, tag="credits"),
    Route("POST", ORG_PATH + "/voids", void, "Void a settled event by its key", OA, BILL,
          api.VoidRequest, api.VoidOut, tag="credits"),
    # alerts
    Route("GET", "/v1/alert-thresholds", get_default_alert_thresholds,
          "Global default alert thresholds (for organizations without lists of their own)", A,
          response=alert_thresholds.AlertThresholds, tag="alerts"),
    Route("PUT", "/v1/alert-thresholds", put_default_alert_thresholds,
          "Set the global default alert thresholds (kinds left out keep theirs)", A, (),
          alert_thresholds.DefaultAlertThresholdsUpdate, alert_thresholds.AlertThresholds,
          tag="alerts"),
    Route("GET", ORG_PATH + "/alert-thresholds", get_alert_thresholds,
          "Alert thresholds that apply to the organization (its own or the defaults)", OA, READ,
          response=alert_thresholds.AlertThresholds, tag="alerts"),
    Route("PUT", ORG_PATH + "/alert-thresholds", put_alert_thresholds,
          "Set the organization's alert thresholds (kinds left out use the defaults)", OA, ORG,
          alert_thresholds.AlertThresholdsUpdate, alert_thresholds.AlertThresholds, tag="alerts"),
    # keys
    Route("POST", "/v1/keys", create_admin_key, "Create an admin key", A, (), api.KeyCreate,
          api.KeyCreated, 201, tag="keys"),
    Route("GET", "/v1/keys", list_admin_keys, "List admin keys", A, response=api.KeyList,
          tag="keys"),
    Route("DELETE", "/v1/keys/{key_id}", revoke_admin_key, "Revoke an admin key", A, status=204,
          tag="keys"),
    Route("POST", ORG_PATH + "/keys", create_org_key, "Create an org_admin or product key", OA,
          ORG, api.KeyCreate, api.KeyCreated, 201, tag="keys"),
    Route("GET", ORG_PATH + "/keys", list_org_keys, "List the organization's keys", OA, ORG,
          response=api.KeyList, tag="keys"),
    Route("DELETE", ORG_PATH + "/keys/{key_id}", revoke_org_key, "Revoke a key", OA, ORG,
          status=204, tag="keys"),
]  # fmt: skip
ROUTES += reports.ROUTES
ROUTES += plan_routes.ROUTES
ROUTES += readable.ROUTES
ROUTES += webhook_routes.ROUTES


async def whoami(call: Call) -> Response:
    """The calling key's id, scope and organization (any valid key)."""
    who = call.who
    return model_response(api.WhoAmI(key_id=who.key_id, scope=who.scope.value, org_id=who.org_id))


ROUTES.append(
    Route("GET", "/v1/whoami", whoami, "The calling key: its id, scope and organization",
          Access.KEY, response=api.WhoAmI, tag="keys")
)  # fmt: skip
ROUTES += rating_routes.ROUTES
