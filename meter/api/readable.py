"""Routes that let a client read its account (`meter.admin.reads`): the organization list, one
settlement by event key, dead letters, alerts, a member's latest settlements.

A settlement key is `<source> <id>` and a CloudEvents source is a URI (`//chat.example.com/api`):
neither fits a path segment, so the key travels in the query, `?key=` or `?source=&id=`.
"""

from __future__ import annotations

from meter.admin import history, reads
from meter.api.http import Access, Call, Response, Route, model_response, query_params
from meter.auth import Scope
from meter.errors import InvalidInput
from schemas import api

READ = (Scope.ORG_ADMIN, Scope.BILLING)
ORG_PATH = "/v1/orgs/{org_id}"


def flag(value: str | None, name: str) -> bool:
    if value is None or value in ("false", "0"):
        return False
    if value in ("true", "1", ""):
        return True
    raise InvalidInput(f"{name} is true or false", code="invalid_query")


async def list_orgs(call: Call) -> Response:
    q = query_params(call, {"status", "after", "limit"})
    page = await reads.list_orgs(
        call.app.pool, q.get("status"), q.get("after", ""), reads.page_limit(q.get("limit"))
    )
    return model_response(page)


async def get_settlement(call: Call) -> Response:
    key = reads.event_key_of(query_params(call, {"key", "source", "id"}))
    return model_response(await reads.settlement(call.app.pool, call.params["org_id"], key))


async def list_dead_letters(call: Call) -> Response:
    q = query_params(call, {"reason", "after", "limit"})
    page = await reads.dead_letters(
        call.app.pool,
        call.params["org_id"],
        reason=q.get("reason"),
        after=q.get("after"),
        limit=reads.page_limit(q.get("limit")),
    )
    return model_response(page)


async def list_alerts(call: Call) -> Response:
    q = query_params(call, {"after", "limit"})
    page = await history.alerts(
        call.app.pool,
        call.params["org_id"],
        after=q.get("after"),
        limit=reads.page_limit(q.get("limit")),
    )
    return model_response(page)


async def list_member_settlements(call: Call) -> Response:
    q = query_params(call, {"before", "limit"})
    page = await history.member_settlements(
        call.app.pool,
        call.params["org_id"],
        call.params["member_id"],
        before=q.get("before"),
        limit=reads.page_limit(q.get("limit")),
    )
    return model_response(page)


A, OA = Access.ADMIN, Access.ORG

ROUTES: list[Route] = [
    Route("GET", "/v1/orgs", list_orgs,
          "List organizations by id (`status`, `after` = the previous page's `next_after`,"
          " `limit` 1..1000)", A, (), response=api.OrgList, tag="organizations"),
    Route("GET", ORG_PATH + "/settlements", get_settlement,
          "What one event drew, by `key` (`<source> <id>`) or by `source` and `id`", OA, READ,
          response=api.SettlementOut, tag="credits"),
    Route("GET", ORG_PATH + "/dead-letters", list_dead_letters,
          "Events that could not settle, newest first (`reason`, `after`, `limit`)", OA, READ,
          response=api.DeadLetterList, tag="ingest"),
    Route("GET", ORG_PATH + "/alerts", list_alerts,
          "Alerts that fired, newest first (`after` = the previous page's `next_after`, `limit`"
          " 1..1000)", OA, READ, response=api.AlertList, tag="alerts"),
    Route("GET", ORG_PATH + "/members/{member_id}/settlements", list_member_settlements,
          "A member's settlements, newest first (`before` = the previous page's `next_before`,"
          " `limit` 1..1000)", OA, READ, response=api.SettlementList, tag="credits"),
]  # fmt: skip
