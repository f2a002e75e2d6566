"""Routes of plan presets, seats, the seat-month balance, redemption codes, on-demand caps and
charges (the rules are in `meter.plans`, the administration in `meter.admin`)."""

from __future__ import annotations

from meter.api.http import Access, Call, Response, Route, model_response, parse_body
from meter.auth import Scope
from schemas import api


async def list_presets(call: Call) -> Response:
    return model_response(call.app.admin.list_presets())


async def set_seat_billing(call: Call) -> Response:
    body = parse_body(api.SeatBillingUpdate, call.body)
    return model_response(await call.app.admin.set_seat_billing(call.params["org_id"], body))


async def create_code(call: Call) -> Response:
    body = parse_body(api.CodeCreate, call.body)
    return model_response(await call.app.admin.create_code(body), 201)


async def redeem(call: Call) -> Response:
    body = parse_body(api.RedemptionCreate, call.body)
    if body.redeemed_at is not None:
        call.who.require_admin()
    return model_response(await call.app.admin.redeem(call.params["org_id"], body), 201)


async def seat_balance(call: Call) -> Response:
    return model_response(await call.app.admin.seat_balance(call.params["org_id"]))


async def seats(call: Call) -> Response:
    return model_response(await call.app.admin.seats(call.params["org_id"]))


async def set_on_demand_cap(call: Call) -> Response:
    p = call.params
    body = parse_body(api.OnDemandCapUpdate, call.body)
    return model_response(await call.app.admin.set_on_demand_cap(p["org_id"], p["member_id"], body))


async def charges(call: Call) -> Response:
    return model_response(await call.app.admin.charges(call.params["org_id"]))


A, OA = Access.ADMIN, Access.ORG
ORG = (Scope.ORG_ADMIN,)
READ = (Scope.ORG_ADMIN, Scope.BILLING)
BILL = (Scope.BILLING,)
ORG_PATH = "/v1/orgs/{org_id}"

ROUTES: list[Route] = [
    Route("GET", "/v1/plan-presets", list_presets, "The plan presets shipped with meter", A,
          BILL, response=api.PlanPresetList, tag="plans"),
    Route("POST", "/v1/codes", create_code, "Register a redemption code", A, BILL, api.CodeCreate,
          api.CodeOut, 201, tag="redemption"),
    Route("POST", ORG_PATH + "/redemptions", redeem, "Redeem a code into the organization", OA,
          BILL, api.RedemptionCreate, api.RedemptionOut, 201, tag="redemption"),
    Route("PUT", ORG_PATH + "/seat-billing", set_seat_billing,
          "Pay seats outside the service or from the seat-month balance", OA, BILL,
          api.SeatBillingUpdate, api.SeatBillingOut, tag="seats"),
    Route("GET", ORG_PATH + "/seat-balance", seat_balance,
          "Seat-month balance: available, frozen installments, expired", OA, READ,
          response=api.SeatBalance, tag="seats"),
    Route("GET", ORG_PATH + "/seats", seats,
          "Seats billed for the current period (members who left included)", OA, READ,
          response=api.SeatList, tag="seats"),
    Route("PUT", ORG_PATH + "/members/{member_id}/on-demand-cap", set_on_demand_cap,
          "Set a member's on-demand cap per period", OA, ORG, api.OnDemandCapUpdate,
          api.OnDemandCapOut, tag="members"),
    Route("GET", ORG_PATH + "/charges", charges, "On-demand charges due", OA, READ,
          response=api.ChargeList, tag="charges"),
]  # fmt: skip
