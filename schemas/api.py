"""Request and response models of the HTTP API (`/v1`), the source of `schemas/openapi.json`.

Credits travel as decimal strings (`"1.5"`) or JSON numbers and are parsed exactly by
`meter.money.parse_credits` into integer micro-credits; responses always carry decimal strings.
Instants are RFC 3339 with a zone. Identifiers are 1-64 characters of `[A-Za-z0-9._:@-]`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from meter.engine.types import MAX_AMOUNT, MAX_HOLD_MS
from meter.money import CreditsError, format_credits, parse_credits
from meter.rating.dimensions import DIMENSIONS
from schemas.event_model import UsageQuantities


def _credits(value: Any) -> int:
    # Floats never get here from the API's own decoder (it keeps number literals as text).
    try:
        return parse_credits(value, maximum=MAX_AMOUNT)
    except CreditsError as exc:
        raise PydanticCustomError(exc.code, "{message}", {"message": exc.message}) from None


Credits = Annotated[
    int,
    BeforeValidator(_credits),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(0|[1-9][0-9]*)(\.[0-9]{1,6})?$"},
                {"type": "number", "minimum": 0, "maximum": MAX_AMOUNT // 1_000_000},
            ],
            "description": "Credits: a decimal with at most 6 fractional digits, at most "
            f"{format_credits(MAX_AMOUNT)} (the engine's exact range).",
            "examples": ["1.5"],
        }
    ),
]
"""Credits on input: parsed to integer micro-credits, at most `MAX_AMOUNT` (every credits field
reaches the engine, which keeps amounts exactly only up to there). A value out of range or not
a credits literal is a validation error whose type is the `CreditsError` code (`too_large`,
`too_precise`, `negative`, `not_a_number`, `inexact`)."""

CreditsOut = Annotated[str, Field(pattern=r"^-?(0|[1-9][0-9]*)(\.[0-9]{1,6})?$", examples=["1500"])]
"""Credits on output: a decimal string."""

Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:@-]{1,64}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Text = Annotated[str, StringConstraints(max_length=1000)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- errors -------------------------------------------------------------------------------


class ErrorDetail(Model):
    code: str
    message: str
    details: list[dict[str, Any]] = []


class ErrorBody(Model):
    """Every non-2xx response."""

    error: ErrorDetail


# --- plans ----------------------------------------------------------------------------------


class PlanCreate(Model):
    """A plan from a shipped preset (`preset`; any other field given overrides it) or from
    explicit settings (`plan_id` and `name` required). Fields left out take the preset's value,
    or the default shown here when there is no preset."""

    preset: Id | None = None
    """A name from `GET /v1/plan-presets`."""
    plan_id: Id | None = None
    """Defaults to the preset's name."""
    name: Name | None = None
    period_kind: Literal["monthly", "rolling"] = "monthly"
    rolling_days: int = Field(default=30, ge=1, le=3660)
    seat_credits: Credits = 0
    """Credits included per seat per period."""
    prorate: bool = True
    """Mid-period seats receive (and pay) the remaining fraction of the period."""
    limit_policy: Literal["all", "shared"] = "all"
    """What a member limit counts: all credits, or only shared-pool credits."""
    default_member_limit: Credits | None = None
    """Limit of a member with none set: null = unlimited, 0 = may not use credits."""
    billing_groups_allowed: bool = True
    on_demand_allowed: bool = False
    on_demand_member_cap: Credits | None = None
    """Default per-member on-demand cap per period (an admin may set one per member)."""
    on_demand_price_micros: int | None = Field(default=None, ge=0, le=10**12)
    """Price of one credit in micro-units of currency."""
    on_demand_charge_threshold_micros: int | None = Field(default=None, ge=0, le=10**15)
    """A charge is due once uncharged on-demand usage costs this much."""
    charge_at_period_end: bool = False
    """Uncharged on-demand usage is also due when its period ends."""
    groups_allowed: bool = True
    personal_addons_allowed: bool = True
    shared_addons_allowed: bool = True
    seat_month_codes: bool = False
    """Seats may be paid from a seat-month balance fed by redemption codes."""
    seat_price_micros: int | None = Field(default=None, ge=0, le=10**12)
    org_credits_per_period: Credits = 0
    """Credits the organization's shared pool receives each period (package plans)."""
    shared_pack_credits: Credits | None = None
    shared_pack_price_micros: int | None = Field(default=None, ge=0, le=10**12)
    shared_pack_validity_months: int = Field(default=3, ge=1, le=120)


class PlanSettingsOut(Model):
    plan_id: str
    name: str
    period_kind: Literal["monthly", "rolling"]
    rolling_days: int
    seat_credits: CreditsOut
    prorate: bool
    limit_policy: Literal["all", "shared"]
    default_member_limit: CreditsOut | None
    billing_groups_allowed: bool
    on_demand_allowed: bool
    on_demand_member_cap: CreditsOut | None
    on_demand_price_micros: int | None
    on_demand_charge_threshold_micros: int | None
    charge_at_period_end: bool
    groups_allowed: bool
    personal_addons_allowed: bool
    shared_addons_allowed: bool
    seat_month_codes: bool
    seat_price_micros: int | None
    org_credits_per_period: CreditsOut
    shared_pack_credits: CreditsOut | None
    shared_pack_price_micros: int | None
    shared_pack_validity_months: int


class Plan(PlanSettingsOut):
    created_at: datetime


class PlanList(Model):
    plans: list[Plan]


class PlanPresetList(Model):
    """The plan presets shipped with meter (`meter/plans/presets.toml`)."""

    presets: list[PlanSettingsOut]


# --- organizations ------------------------------------------------------------------------

OrgStatusName = Literal["active", "expired", "suspended"]


class OrgCreate(Model):
    org_id: Id
    name: Name
    plan_id: Id
    billing_anchor: AwareDatetime | None = None
    """Start of the first period; defaults to the creation time."""
    status: OrgStatusName = "active"
    grace_seconds: int = Field(default=0, ge=0, le=90 * 86_400)
    """How long after a period's end late events still settle into it."""


class OrgUpdate(Model):
    name: Name | None = None
    status: OrgStatusName | None = None
    plan_id: Id | None = None
    grace_seconds: int | None = Field(default=None, ge=0, le=90 * 86_400)


class Org(Model):
    org_id: str
    name: str
    plan_id: str
    billing_anchor: datetime
    status: OrgStatusName
    grace_seconds: int
    created_at: datetime
    updated_at: datetime


# --- members ------------------------------------------------------------------------------


class MemberCreate(Model):
    member_id: Id
    name: Text = ""
    email: Text = ""
    seated: bool = True
    member_limit: Credits | None = None
    """Per-period limit; null falls back to the plan's default."""
    billing_group_id: Id | None = None
    """null = Unassigned."""


class MemberUpdate(Model):
    """Fields left out stay as they are; `member_limit` / `billing_group_id` null clears them."""

    name: Text | None = None
    email: Text | None = None
    seated: bool | None = None
    member_limit: Credits | None = None
    billing_group_id: Id | None = None


class Member(Model):
    member_id: str
    name: str
    email: str
    status: Literal["active", "removed"]
    seated: bool
    member_limit: CreditsOut | None
    billing_group_id: str | None
    groups: list[str]
    created_at: datetime
    updated_at: datetime


class MemberList(Model):
    members: list[Member]


# --- groups -------------------------------------------------------------------------------


class GroupCreate(Model):
    group_id: Id
    name: Name
    description: Text = ""


class Group(Model):
    group_id: str
    name: str
    description: str
    member_ids: list[str]
    created_at: datetime


class GroupList(Model):
    groups: list[Group]


# --- billing groups ---------------------------------------------------------------------------


class BillingGroupCreate(Model):
    billing_group_id: Id
    name: Name
    description: Text = ""
    period_limit: Credits | None = None
    """Credits per period for all members together; null = unlimited."""


class BillingGroupUpdate(Model):
    """Fields left out stay as they are; `period_limit` null removes the limit."""

    name: Name | None = None
    description: Text | None = None
    period_limit: Credits | None = None


class BillingGroup(Model):
    billing_group_id: str
    """"" for the built-in Unassigned group."""
    name: str
    description: str
    period_limit: CreditsOut | None
    built_in: bool
    member_ids: list[str]


class BillingGroupList(Model):
    billing_groups: list[BillingGroup]


# --- grants -------------------------------------------------------------------------------


class GrantCreate(Model):
    bucket_id: Id | None = None
    """Idempotency key of the grant; generated when left out."""
    kind: Literal["personal", "shared", "seat", "on_demand"]
    member_id: Id | None = None
    """Owner; required for every kind except `shared` (the organization's pool)."""
    amount: Credits
    valid_from: AwareDatetime | None = None
    """Defaults to now."""
    expires_at: AwareDatetime
    source: Text = ""


class GrantOut(Model):
    bucket_id: str
    kind: str
    member_id: str | None
    amount: CreditsOut
    valid_from: datetime
    expires_at: datetime
    granted_at: datetime
    source: str
    created: bool
    """False when a grant with this bucket id already existed (nothing changed)."""
    revoked_at: datetime | None = None
    """When the grant was revoked (its `expires_at` is then that instant, unless it expired
    sooner); null while it is not."""


class GrantList(Model):
    grants: list[GrantOut]


class BucketBalance(Model):
    """One bucket: what was granted, what is left now, and when it may be drawn."""

    bucket_id: str
    kind: Literal["personal", "shared", "seat", "on_demand"]
    member_id: str | None
    """Owner; null for the organization's shared pool."""
    valid_from: datetime
    expires_at: datetime
    granted: CreditsOut
    left: CreditsOut
    revoked_at: datetime | None = None


class Balances(Model):
    """Credits left per bucket. `balances` is the original map of every bucket id (expired and
    empty buckets included), kept for existing clients; `buckets` describes each bucket and
    leaves out expired, revoked and empty ones unless `?all=true`."""

    balances: dict[str, CreditsOut]
    buckets: list[BucketBalance] = []


# --- voids --------------------------------------------------------------------------------


class VoidRequest(Model):
    key: Annotated[str, StringConstraints(min_length=1, max_length=600)]
    """Settlement key of the event: its CloudEvents `source` and `id` as the consumer builds it."""


class VoidLine(Model):
    bucket_id: str
    kind: str
    amount: CreditsOut


class VoidOut(Model):
    key: str
    voided: bool
    """False when no settlement with this key exists."""
    returned: list[VoidLine]
    duplicate: bool


# --- seats, seat-month balance, redemption codes, on-demand, charges -----------------------

SeatMonths = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]*)(\.[0-9]{1,6})?$", examples=["0.5"])]
"""Seat-months (one seat for one period = 1) as a decimal string."""


class SeatBillingUpdate(Model):
    seat_billing: Literal["external", "balance"]
    """`external`: seats are paid outside the service (card, invoice); `balance`: each seat is paid
    from the organization's seat-month balance at each period start (prorated when joining)."""


class SeatBillingOut(Model):
    org_id: str
    seat_billing: Literal["external", "balance"]


class CodeCreate(Model):
    code: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    """The code's text; only a digest of it is stored."""
    kind: Literal["seat_months_monthly", "seat_months_annual", "shared_credits"]
    seat_months: int = Field(default=0, ge=0, le=1_000_000)
    """Seat-months of a seat-month code (annual: a multiple of 12)."""
    credits: Credits = 0
    """Credits of a shared-credit code."""
    validity_months: int = Field(default=3, ge=1, le=120)
    bound_org_id: Id | None = None
    """Only this organization may redeem it; null = any."""


class CodeOut(Model):
    code_id: str
    kind: str
    seat_months: int
    credits: CreditsOut
    validity_months: int
    bound_org_id: str | None


class RedemptionCreate(Model):
    code: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    redeemed_at: AwareDatetime | None = None
    """Admin keys only: apply the redemption as if made at this past instant (at most
    `REDEEMED_AT_WINDOW_DAYS` ago, not in the future); defaults to now."""


class Bucket(Model):
    bucket_id: str
    kind: str
    member_id: str | None
    amount: CreditsOut
    valid_from: datetime
    expires_at: datetime


class SeatMonthLot(Model):
    lot_id: str
    code_id: str
    installment: int
    """0 for the first (or only) portion of a code, 1..11 for later installments."""
    amount: SeatMonths
    remaining: SeatMonths
    available_from: datetime
    expires_at: datetime
    state: Literal["frozen", "available", "used", "expired"]


class RedemptionOut(Model):
    code_id: str
    kind: str
    redeemed_at: datetime
    lots: list[SeatMonthLot]
    """Seat-month codes: the lots added to the balance (an annual code's 12 installments)."""
    grant: Bucket | None
    """Shared-credit codes: the shared-pool bucket added."""


class SeatBalance(Model):
    seat_billing: Literal["external", "balance"]
    available: SeatMonths
    frozen: SeatMonths
    """Installments of annual codes not returned yet."""
    expired: SeatMonths
    next_expiry: datetime | None
    lots: list[SeatMonthLot]


class Seat(Model):
    member_id: str
    seated_from: datetime
    fraction: SeatMonths
    """Seat-months billed for the period."""
    billing: Literal["external", "balance"]
    bucket_id: str | None = None
    """The seat's credit bucket for the period (`seat:<member>:<period start ms>`); null when
    the plan gives seats no credits."""
    credits: CreditsOut | None = None
    """Credits the seat was granted for the period (prorated from `seated_from` when the plan
    prorates)."""
    left: CreditsOut | None = None
    """Credits of the seat's bucket left now."""


class SeatList(Model):
    """Seats billed for the current period, members who left since included."""

    period_start: datetime
    period_end: datetime
    seats: list[Seat]


class OnDemandCapUpdate(Model):
    cap: Credits
    """On-demand credits the member may use per period. A raise applies at once, a cut from the
    next period."""


class OnDemandCapOut(Model):
    member_id: str
    cap: CreditsOut
    granted: Bucket | None
    """The on-demand bucket added now to raise this period's room, if any."""


class Charge(Model):
    charge_id: str
    period_start: datetime
    period_end: datetime
    reason: Literal["threshold", "period_end"]
    credits: CreditsOut
    """On-demand credits this charge covers."""
    through_credits: CreditsOut
    amount_micros: int
    due_at: datetime
    published_at: datetime | None
    """When it was sent on the billing topic."""


class ChargeList(Model):
    charges: list[Charge]


# --- keys ---------------------------------------------------------------------------------


class KeyCreate(Model):
    scope: Literal["admin", "billing", "org_admin", "product"]
    name: Text = ""


class KeyCreated(Model):
    key_id: str
    token: str
    """Shown once; only its hash is stored."""
    scope: str
    org_id: str | None


class KeyInfo(Model):
    key_id: str
    scope: str
    org_id: str | None
    name: str
    created_at: datetime
    revoked_at: datetime | None


class KeyList(Model):
    keys: list[KeyInfo]


# --- quota hot path -----------------------------------------------------------------------


class _CreditsOrUsage(Model):
    credits: Credits | None = None
    usage: UsageQuantities | None = None
    """An estimate (e.g. input tokens and the maximum output tokens for a model), rated with
    the organization's rate card in force now, instead of `credits`."""

    @model_validator(mode="after")
    def _one_of(self) -> Any:
        if (self.credits is None) == (self.usage is None):
            raise PydanticCustomError("invalid_input", "give credits or usage, not both")
        return self


class CheckRequest(_CreditsOrUsage):
    org_id: Id
    member_id: Id


class ReserveRequest(_CreditsOrUsage):
    org_id: Id
    member_id: Id
    ttl_ms: int = Field(default=60_000, ge=1, le=MAX_HOLD_MS)
    reservation_id: Id | None = None
    """Idempotency key of the hold; generated when left out."""


class ReleaseRequest(Model):
    org_id: Id
    reservation_id: Id


class CheckResponse(Model):
    allowed: bool
    reason: (
        Literal[
            "unknown_org",
            "unknown_member",
            "org_inactive",
            "no_seat",
            "member_limit_reached",
            "group_limit_reached",
            "insufficient_credits",
        ]
        | None
    )
    available: dict[str, CreditsOut]
    """Credits available now per bucket kind, net of live holds."""
    member_remaining: CreditsOut | None
    """Room left under the member limit this period; null = unlimited."""
    group_remaining: CreditsOut | None
    """Room left under the billing-group limit this period; null = unlimited."""
    period_end: datetime | None
    reservation_id: str | None = None
    reservation_expires_at: datetime | None = None


class ReleaseResponse(Model):
    released: bool
    """False when no live hold had this id (already released, consumed or expired)."""


# --- ingest -------------------------------------------------------------------------------


class EventResult(Model):
    index: int
    id: str | None
    source: str | None
    accepted: bool
    error: ErrorDetail | None = None


class IngestResponse(Model):
    accepted: int
    rejected: int
    results: list[EventResult]


# --- health -------------------------------------------------------------------------------


class Health(Model):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}


# --- dead letters, settlements, organizations ----------------------------------------------

REDEEMED_AT_WINDOW_DAYS = 400
"""How far back an admin may date a redemption (`RedemptionCreate.redeemed_at`)."""

BillingGroupRef = Annotated[str | None, Field(description="null for Unassigned")]


class DeadLetterOut(Model):
    """An event that could not settle, as the dead-letter topic holds it."""

    id: int
    org_id: str
    reason: str
    """The stable code of why (`unknown_member`, `invalid_credits`, ...)."""
    detail: str
    event: str
    """The record's value as text, at most its first 16 KiB (`truncated` then true)."""
    truncated: bool
    topic: str
    partition: int
    offset: int
    created_at: datetime


class DeadLetterList(Model):
    dead_letters: list[DeadLetterOut]
    """Newest first."""
    next_after: str | None
    """Pass as `after` for the next page; null on the last page."""


class SettlementLineOut(Model):
    bucket_id: str
    kind: Literal["personal", "shared", "seat", "on_demand"]
    amount: CreditsOut


class SettlementVoidOut(Model):
    voided_at: datetime
    returned: list[SettlementLineOut]
    """Credits put back per bucket."""


class SettlementOut(Model):
    """What one event drew, as PostgreSQL holds it."""

    key: str
    """`<source> <id>`: the CloudEvents source and id joined by one space."""
    source: str
    id: str
    member_id: str
    billing_group_id: BillingGroupRef
    billing_group_name: str | None
    """`Unassigned` for Unassigned; null when the group no longer exists."""
    credits: CreditsOut
    buckets: list[SettlementLineOut]
    """Buckets drawn, in draw order of kind then bucket id."""
    unfunded: CreditsOut
    """Credits no bucket covered (the usage happened; nothing paid for it)."""
    member_limited: bool
    group_limited: bool
    period_start: datetime
    period_end: datetime
    event_time: datetime
    late: bool
    """Settled into a period that had ended (within the organization's grace)."""
    reservation_id: str | None
    settled_at: datetime
    void: SettlementVoidOut | None
    """Set once the settlement was voided."""
    rating: dict[str, Any] | None = None
    """How a usage event was rated (`meter/rating/README.md`): card version, model, rule,
    credits and per-dimension lines, exact decimals as strings; null for an event that carried
    credits."""


class OrgList(Model):
    orgs: list[Org]
    next_after: str | None
    """Pass as `after` for the next page; null on the last page."""


# --- webhooks -------------------------------------------------------------------------------

WebhookEventType = Literal[
    "alert.member_limit",
    "alert.billing_group_limit",
    "alert.shared_pool_low",
    "alert.org_quarantined",
    "alert.*",
    "charge.due",
    "dead_letter",
]
"""What an endpoint subscribes to (`meter.webhooks.rules.EVENT_TYPES`); `alert.*` is every
alert, `dead_letter` an event of the organization that could not settle."""
WebhookUrl = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
WebhookEventTypes = Annotated[list[WebhookEventType], Field(min_length=1, max_length=16)]


class WebhookEndpointCreate(Model):
    url: WebhookUrl
    event_types: WebhookEventTypes
    description: Text = ""
    enabled: bool = True


class WebhookEndpointUpdate(Model):
    url: WebhookUrl | None = None
    event_types: WebhookEventTypes | None = None
    description: Text | None = None
    enabled: bool | None = None


class WebhookEndpoint(Model):
    endpoint_id: str
    org_id: str
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    failing_since: datetime | None
    """Set when a delivery exhausted its retries; cleared by the next success."""
    previous_secret_expires_at: datetime | None
    """After a rotation: until when the previous secret still signs beside the new one."""
    created_at: datetime
    updated_at: datetime


class WebhookEndpointCreated(WebhookEndpoint):
    secret: str
    """`whsec_...`: shown at creation and rotation only."""


class WebhookEndpointList(Model):
    endpoints: list[WebhookEndpoint]


class WebhookSecretRotate(Model):
    grace_s: int = Field(default=86_400, ge=0, le=7 * 86_400)
    """Seconds the previous secret keeps signing beside the new one."""


class WebhookSecret(Model):
    endpoint_id: str
    secret: str
    previous_secret_expires_at: datetime | None


class WebhookAttempt(Model):
    attempt_id: int
    message_id: str
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    at: datetime
    next_attempt_at: datetime | None
    """When the next attempt is due (None: delivered, or retries exhausted)."""


class WebhookAttemptList(Model):
    attempts: list[WebhookAttempt]
    """Newest first."""


class WebhookQueued(Model):
    message_id: str
    endpoint_id: str


# --- the calling key ------------------------------------------------------------------------


class WhoAmI(Model):
    """The key a request was made with: what the dashboard opens after sign-in."""

    key_id: str
    scope: Literal["admin", "billing", "org_admin", "product"]
    org_id: str | None
    """The key's organization; null for `admin` and `billing` keys."""


# --- rate cards ---------------------------------------------------------------------------

MAX_RATE_MICROS = 10**15


class RateIn(Model):
    """One rate: integer micro-credits per unit, or per million units (exactly one)."""

    micros_per_unit: int | None = Field(default=None, ge=0, le=MAX_RATE_MICROS)
    micros_per_million: int | None = Field(default=None, ge=0, le=MAX_RATE_MICROS)

    @model_validator(mode="after")
    def _one_of(self) -> Any:
        if (self.micros_per_unit is None) == (self.micros_per_million is None):
            raise PydanticCustomError(
                "invalid_rate_card", "a rate is micros_per_unit or micros_per_million"
            )
        return self


RatesIn = Annotated[
    dict[str, RateIn],
    Field(json_schema_extra={"propertyNames": {"enum": list(DIMENSIONS)}}),
]
"""Dimension -> rate."""


class RateCardCreate(Model):
    """A new version of a plan's rate card, or of one organization's override on that plan."""

    org_id: Id | None = None
    effective_from: AwareDatetime
    unknown_model: Literal["error", "default"] = "error"
    """`error`: usage of a model no rule matches is dead-lettered `unrated` (and a check with
    it refused); `default`: it is priced at `default`."""
    default: RatesIn | None = None
    models: Annotated[dict[str, RatesIn], Field(max_length=1000)]
    """Model rule (an exact name, or a pattern with `*` and `?`) -> rates. An exact name beats
    a pattern; among patterns the longest wins."""
    note: Text = ""

    def card_body(self) -> dict[str, Any]:
        out: dict[str, Any] = self.model_dump(
            include={"unknown_model", "default", "models"}, exclude_none=True
        )
        return out


class RateCardOut(Model):
    version: int
    plan_id: str
    org_id: str | None
    effective_from: datetime
    unknown_model: Literal["error", "default"]
    default: dict[str, dict[str, int]] | None
    models: dict[str, dict[str, dict[str, int]]]
    note: str
    created_at: datetime


class RateCardList(Model):
    rate_cards: list[RateCardOut]


class DimensionUsage(Model):
    quantity: int
    credits: str
    """Exact credits of this dimension's lines, summed (a decimal, up to 12 fractional digits)."""


class ModelUsage(Model):
    model: str
    events: int
    credits: CreditsOut
    """Credits the events were charged (each rated and rounded once)."""
    dimensions: dict[str, DimensionUsage]


class UsageByModel(Model):
    """Rated usage of a period by model and dimension (events that carried credits are not in
    it; the period totals count them)."""

    org_id: str
    member_id: str | None
    period_start: datetime
    period_end: datetime
    models: list[ModelUsage]


# --- alerts, a member's settlements ---------------------------------------------------------


class AlertOut(Model):
    """One alert of the organization, as recorded when it fired (`meter.alerts`)."""

    alert_id: int
    kind: Literal["member_limit", "billing_group_limit", "shared_pool_low", "org_quarantined"]
    member_id: str | None
    """Set for `member_limit`."""
    billing_group_id: str | None
    """Set for `billing_group_limit`."""
    threshold_percent: int | None
    """The threshold crossed; null for `org_quarantined`."""
    used: CreditsOut | None
    """Counted usage when it fired (member and billing-group limits)."""
    limit: CreditsOut | None
    remaining: CreditsOut | None
    """Credits left in the shared pool when it fired (`shared_pool_low`)."""
    granted: CreditsOut | None
    reason: str | None
    """Why the organization was quarantined (`org_quarantined`)."""
    period_start: datetime
    """The period it fired in (for `org_quarantined`: since when)."""
    period_end: datetime
    created_at: datetime
    published_at: datetime | None
    """When it was sent on the alerts topic."""


class AlertList(Model):
    alerts: list[AlertOut]
    """Newest first."""
    next_after: str | None
    """Pass as `after` for the next page; null on the last page."""


class SettlementList(Model):
    settlements: list[SettlementOut]
    """Newest first (by `settled_at`)."""
    next_before: str | None
    """Pass as `before` for the next page; null on the last page."""
