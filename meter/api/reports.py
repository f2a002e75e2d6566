"""Reporting routes: settled totals, daily series and the CSV export (`meter.reports`).

Query parameters: `period` (`current`, the default, or `YYYY-MM-DD`), and on the member list
`billing_group` (a group id, `unassigned` for Unassigned), `after` (the previous page's
`next_after`) and `limit` (1..1000, default 100); on the export `billing_group`.

Access: `admin` and `billing` keys and the organization's `org_admin` keys; another organization's
key gets 404, a `product` key of the organization 403 (reports carry every member's name, email
and usage).
"""

from __future__ import annotations

from meter.api.http import Access, Call, Response, Route, model_response, query_params
from meter.auth import Scope
from meter.errors import InvalidInput
from meter.reports import Reports, billing_group_filter, export
from meter.reports.export import file_name
from schemas import reports as r

READ = (Scope.ORG_ADMIN, Scope.BILLING)
PATH = "/v1/orgs/{org_id}/reports"
_KNOWN = {"period", "billing_group", "after", "limit"}


def _query(call: Call) -> dict[str, str]:
    return query_params(call, _KNOWN)


def _reports(call: Call) -> Reports:
    app = call.app
    return Reports(app.pool, lambda: app.clock())


def _limit(text: str | None) -> int:
    if text is None:
        return 100
    if not text.isdigit() or len(text) > 6:
        raise InvalidInput("limit must be an integer in 1..1000", code="invalid_limit")
    return int(text)


async def periods(call: Call) -> Response:
    _query(call)
    return model_response(await _reports(call).periods(call.params["org_id"]))


async def org_totals(call: Call) -> Response:
    query = _query(call)
    return model_response(
        await _reports(call).org_totals(call.params["org_id"], query.get("period"))
    )


async def billing_group_totals(call: Call) -> Response:
    query = _query(call)
    return model_response(
        await _reports(call).billing_groups(call.params["org_id"], query.get("period"))
    )


async def member_totals(call: Call) -> Response:
    query = _query(call)
    page = await _reports(call).members(
        call.params["org_id"],
        query.get("period"),
        billing_group=billing_group_filter(query.get("billing_group")),
        after=query.get("after", ""),
        limit=_limit(query.get("limit")),
    )
    return model_response(page)


async def member_report(call: Call) -> Response:
    query = _query(call)
    p = call.params
    return model_response(
        await _reports(call).member(p["org_id"], p["member_id"], query.get("period"))
    )


async def org_daily(call: Call) -> Response:
    query = _query(call)
    return model_response(await _reports(call).daily(call.params["org_id"], query.get("period")))


async def member_daily(call: Call) -> Response:
    query = _query(call)
    p = call.params
    return model_response(
        await _reports(call).daily(p["org_id"], query.get("period"), p["member_id"])
    )


async def export_csv(call: Call) -> Response:
    query = _query(call)
    org_id = call.params["org_id"]
    period, group, chunks = await export(
        _reports(call), org_id, query.get("period"), query.get("billing_group")
    )
    disposition = f'attachment; filename="{file_name(org_id, period, group)}"'
    headers = [
        (b"content-type", b"text/csv; charset=utf-8"),
        (b"content-disposition", disposition.encode()),
        (b"cache-control", b"no-store"),
    ]
    return Response(200, b"", headers, chunks)


OA = Access.ORG

ROUTES: list[Route] = [
    Route("GET", PATH + "/periods", periods,
          "Periods with settled usage (current first) and their totals", OA, READ,
          response=r.PeriodList, tag="reports"),
    Route("GET", PATH + "/totals", org_totals,
          "Organization totals of a period (?period=current|YYYY-MM-DD)", OA, READ,
          response=r.OrgReport, tag="reports"),
    Route("GET", PATH + "/billing-groups", billing_group_totals,
          "Totals per billing group of a period (?period=)", OA, READ,
          response=r.GroupReport, tag="reports"),
    Route("GET", PATH + "/members", member_totals,
          "A page of member totals (?period=&billing_group=&after=&limit=)", OA, READ,
          response=r.MemberPage, tag="reports"),
    Route("GET", PATH + "/members/{member_id}", member_report,
          "One member's totals and their billing-group attribution (?period=)", OA, READ,
          response=r.MemberReport, tag="reports"),
    Route("GET", PATH + "/daily", org_daily,
          "The organization's usage per UTC day of a period (?period=)", OA, READ,
          response=r.DailyReport, tag="reports"),
    Route("GET", PATH + "/members/{member_id}/daily", member_daily,
          "A member's usage per UTC day of a period (?period=)", OA, READ,
          response=r.DailyReport, tag="reports"),
    Route("GET", PATH + "/export.csv", export_csv,
          "CSV export of a period: Billing Group,Member Name,Email,Credits Consumption"
          " (?period=&billing_group=)", OA, READ, tag="reports"),
]  # fmt: skip
