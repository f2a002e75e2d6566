"""Routes of rate cards (create a version, list a plan's versions, get one; no edit: a version
is immutable), and the rating of a check's or reservation's usage estimate (`meter.rating`)."""

from __future__ import annotations

from meter.api.http import (
    Access,
    Call,
    Response,
    Route,
    model_response,
    parse_body,
    query_params,
)
from meter.auth import Scope
from meter.errors import InvalidInput, NotFound
from meter.rating import report
from meter.rating.book import StoredCard, create_card, get_card, list_cards
from meter.rating.dimensions import Usage
from meter.rating.rate import Unrated, rate
from meter.reports import Reports
from meter.store import ms_to_datetime
from schemas import api


async def rated(call: Call, org_id: str, usage: Usage) -> int:
    """Micro-credits of a usage estimate under `org_id`'s card in force now; `InvalidInput`
    (`unrated`) when the card cannot price it. An organization PostgreSQL does not know rates
    to 0, so the engine answers `unknown_org` as it does for credits."""
    try:
        card = await call.app.cards.card_for_org(call.app.pool, org_id, call.app.clock())
        return rate(usage, card).credits
    except Unrated as exc:
        raise InvalidInput(exc.message, code="unrated") from None
    except NotFound:
        return 0


def _out(stored: StoredCard) -> api.RateCardOut:
    card = stored.card
    body = card.body()
    return api.RateCardOut(
        version=card.version,
        plan_id=card.plan_id,
        org_id=card.org_id,
        effective_from=ms_to_datetime(card.effective_from_ms),
        unknown_model=card.unknown_model,
        default=body.get("default"),
        models=body["models"],
        note=card.note,
        created_at=ms_to_datetime(stored.created_at_ms),
    )


async def create_rate_card(call: Call) -> Response:
    body = parse_body(api.RateCardCreate, call.body)
    effective_ms = int(body.effective_from.timestamp() * 1000)
    stored = await create_card(
        call.app.pool,
        plan_id=call.params["plan_id"],
        org_id=body.org_id,
        effective_from_ms=effective_ms,
        body=body.card_body(),
        note=body.note,
    )
    return model_response(_out(stored), 201)


async def list_rate_cards(call: Call) -> Response:
    stored = await list_cards(call.app.pool, call.params["plan_id"])
    return model_response(api.RateCardList(rate_cards=[_out(s) for s in stored]))


async def get_rate_card(call: Call) -> Response:
    version = call.params["version"]
    number = int(version) if version.isdigit() and len(version) < 19 else 0
    return model_response(_out(await get_card(call.app.pool, number)))


async def usage_by_model(call: Call) -> Response:
    query = _query(call)
    org_id = call.params["org_id"]
    period = await Reports(call.app.pool, call.app.clock).period(org_id, query.get("period"))
    member_id = query.get("member_id")
    models = await report.usage_by_model(call.app.pool, org_id, period.start, member_id)
    return model_response(
        api.UsageByModel(
            org_id=org_id,
            member_id=member_id,
            period_start=period.start,
            period_end=period.end,
            models=report.models_out(models),
        )
    )


def _query(call: Call) -> dict[str, str]:
    return query_params(call, ("period", "member_id"))


A, OA = Access.ADMIN, Access.ORG
BILL = (Scope.BILLING,)
READ = (Scope.ORG_ADMIN, Scope.BILLING)
CARDS = "/v1/plans/{plan_id}/rate-cards"

ROUTES: list[Route] = [
    Route("POST", CARDS, create_rate_card, "Create a rate card version (immutable)", A, BILL,
          api.RateCardCreate, api.RateCardOut, 201, tag="rating"),
    Route("GET", CARDS, list_rate_cards, "List a plan's rate card versions", A, BILL,
          response=api.RateCardList, tag="rating"),
    Route("GET", "/v1/rate-cards/{version}", get_rate_card, "Get one rate card version", A,
          BILL, response=api.RateCardOut, tag="rating"),
    Route("GET", "/v1/orgs/{org_id}/reports/models", usage_by_model,
          "Rated usage of a period by model and dimension (?period=&member_id=)", OA, READ,
          response=api.UsageByModel, tag="reports"),
]  # fmt: skip
