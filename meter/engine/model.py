"""The reference model of the credit engine: the rules of `README.md` in plain Python, no I/O.

`Ledger` offers every method of `meter.engine.types.Engine` synchronously (same names, same
arguments, no `await`). The Redis engine must return exactly what this model returns; the property
test in `tests/engine/` holds it to that.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from meter.engine.periods import DAY_MS, period_at
from meter.engine.types import (
    DEFAULT_HOLD_MS,
    KIND_RANK,
    MAX_AMOUNT,
    MAX_HOLD_MS,
    UNASSIGNED,
    BillingGroupConfig,
    CheckResult,
    EngineInputError,
    Grant,
    Kind,
    LimitPolicy,
    Line,
    MemberConfig,
    OrgConfig,
    OrgStatus,
    Period,
    Reason,
    Settlement,
    UsageEvent,
    VoidResult,
    check_amount,
    check_id,
    check_instant,
    check_org_id,
)


@dataclass(slots=True)
class Bucket:
    """A grant and what is left of it."""

    grant: Grant
    left: int

    def order(self) -> tuple[int, int, int, str]:
        """Burn-down order: kind, sooner expiry, older grant, bucket id."""
        g = self.grant
        return (KIND_RANK[g.kind], g.expires_at_ms, g.granted_at_ms, g.bucket_id)

    def usable_at(self, t_ms: int) -> bool:
        return self.grant.valid_from_ms <= t_ms < self.grant.expires_at_ms


@dataclass(slots=True)
class Member:
    config: MemberConfig
    removed: bool = False


@dataclass(frozen=True, slots=True)
class Hold:
    """A live reservation: what its simulated draw took from each bucket and limit."""

    member_id: str
    expires_ms: int
    group: str
    drawn: int
    """Credits counted against the member (policy `all`) and the group."""
    drawn_shared: int
    """Credits counted against the member under policy `shared`."""
    lines: tuple[Line, ...]


@dataclass(frozen=True, slots=True)
class Draw:
    lines: tuple[Line, ...]
    unfunded: int
    member_limited: bool
    group_limited: bool


def draw(
    buckets: Sequence[tuple[Bucket, int]],
    need: int,
    policy: LimitPolicy,
    member_room: int | None,
    group_room: int | None,
) -> Draw:
    """Greedy draw of `need` credits from `(bucket, available)` pairs already in burn-down order.

    From each bucket take `min(still needed, available, member room if the kind is counted,
    group room)`. A limit that cuts a take sets its flag; what no bucket covers is unfunded.
    """
    lines: list[Line] = []
    member_limited = group_limited = False
    for bucket, available in buckets:
        if need == 0:
            break
        if available <= 0:
            continue
        kind = bucket.grant.kind
        counted = policy is LimitPolicy.ALL or kind is Kind.SHARED
        take = min(need, available)
        if counted and member_room is not None and member_room < take:
            take, member_limited = member_room, True
        if group_room is not None and group_room < take:
            take, group_limited = group_room, True
        if take <= 0:
            continue
        lines.append(Line(bucket.grant.bucket_id, kind, take))
        need -= take
        if counted and member_room is not None:
            member_room -= take
        if group_room is not None:
            group_room -= take
    return Draw(tuple(lines), need, member_limited, group_limited)


class Ledger:
    """The whole engine state of any number of organizations, in memory."""

    def __init__(self) -> None:
        self.orgs: dict[str, OrgConfig] = {}
        self.members: dict[tuple[str, str], Member] = {}
        self.groups: dict[str, dict[str, int | None]] = defaultdict(dict)
        self.buckets: dict[str, dict[tuple[str | None, str], Bucket]] = defaultdict(dict)
        """Per org, by (owner member id or None for the shared pool, bucket id)."""
        self.counters: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        """Per (org, period start): `member:`, `member_shared:`, `group:`, `drawn`, `unfunded`."""
        self.results: dict[str, dict[str, Settlement]] = defaultdict(dict)
        self.voids: dict[str, dict[str, VoidResult]] = defaultdict(dict)
        self.holds: dict[str, dict[str, Hold]] = defaultdict(dict)

    # -- configuration -------------------------------------------------------------------------

    def put_org(self, org: OrgConfig, *, create: bool = True) -> None:
        validate_org(org)
        if create or org.org_id in self.orgs:
            self.orgs[org.org_id] = org

    def put_member(self, member: MemberConfig) -> None:
        validate_member(member)
        self.members[(member.org_id, member.member_id)] = Member(member)

    def remove_member(self, org_id: str, member_id: str) -> None:
        """The member can no longer pass checks; events already in flight still settle."""
        check_org_id(org_id)
        check_id("member_id", member_id)
        m = self.members.get((org_id, member_id))
        if m is not None:
            m.removed = True

    def put_billing_group(self, group: BillingGroupConfig) -> None:
        validate_billing_group(group)
        self.groups[group.org_id][group.group_id] = group.limit

    def delete_billing_group(self, org_id: str, group_id: str) -> None:
        check_org_id(org_id)
        check_id("group_id", group_id)
        self.groups[org_id].pop(group_id, None)

    def apply_grant(self, grant: Grant) -> bool:
        validate_grant(grant)
        buckets = self.buckets[grant.org_id]
        slot = (grant.member_id, grant.bucket_id)
        if slot in buckets:
            return False
        buckets[slot] = Bucket(grant, grant.amount)
        return True

    # -- helpers -------------------------------------------------------------------------------

    def _group_of(self, member: Member) -> str:
        """The member's billing group, or Unassigned when it names no existing group."""
        group = member.config.billing_group
        return group if group in self.groups[member.config.org_id] else UNASSIGNED

    def _member_limit(self, org: OrgConfig, member: Member) -> int | None:
        limit = member.config.member_limit
        return org.default_member_limit if limit is None else limit

    def _eligible(self, org_id: str, member_id: str, t_ms: int) -> list[Bucket]:
        """Buckets the member may draw from at `t_ms`, in burn-down order."""
        found = [
            b
            for (owner, _), b in self.buckets[org_id].items()
            if owner in (member_id, None) and b.usable_at(t_ms)
        ]
        return sorted(found, key=Bucket.order)

    def _drop_expired_holds(self, org_id: str, now_ms: int) -> None:
        holds = self.holds[org_id]
        for rid in [rid for rid, h in holds.items() if h.expires_ms <= now_ms]:
            del holds[rid]

    def revoke_grant(
        self, org_id: str, member_id: str | None, bucket_id: str, now_ms: int
    ) -> int | None:
        """Nothing left in the bucket, and it expires at `now_ms` unless it expires sooner;
        returns what it had left (None: no such bucket)."""
        check_org_id(org_id)
        if member_id is not None:
            check_id("member_id", member_id)
        check_id("bucket_id", bucket_id)
        check_instant("now_ms", now_ms)
        bucket = self.buckets[org_id].get((member_id, bucket_id))
        if bucket is None:
            return None
        left, bucket.left = bucket.left, 0
        if bucket.grant.expires_at_ms > now_ms:
            bucket.grant = replace(bucket.grant, expires_at_ms=now_ms)
        return left

    # -- settling ------------------------------------------------------------------------------

    def settle_batch(
        self,
        org_id: str,
        events: Sequence[UsageEvent],
        now_ms: int,
        *,
        trusted: bool = False,
    ) -> list[Settlement]:
        """Settle `events` in order (README "Settling"). The model validates every event even
        when `trusted`."""
        validate_events(org_id, events, now_ms)
        self._drop_expired_holds(org_id, now_ms)
        return [self._settle(ev, now_ms) for ev in events]

    def _settle(self, ev: UsageEvent, now_ms: int) -> Settlement:
        stored = self.results[ev.org_id].get(ev.key)
        if stored is not None:
            return replace(stored, duplicate=True)
        org = self.orgs.get(ev.org_id)
        member = self.members.get((ev.org_id, ev.member_id))
        if org is None or member is None:
            return refused(ev, Reason.UNKNOWN_ORG if org is None else Reason.UNKNOWN_MEMBER)

        period, t_ms = period_at(org, ev.time_ms), ev.time_ms
        late = now_ms > period.end_ms + org.grace_ms
        if late:
            period, t_ms = period_at(org, now_ms), now_ms
        group = self._group_of(member)

        counters = self.counters[(ev.org_id, period.start_ms)]
        if org.status is not OrgStatus.ACTIVE:
            result = Draw((), ev.credits, False, False)
        else:
            used = counters[_member_key(org, ev.member_id)]
            limit = self._member_limit(org, member)
            group_limit = self.groups[ev.org_id].get(group) if group else None
            result = draw(
                [(b, b.left) for b in self._eligible(ev.org_id, ev.member_id, t_ms)],
                ev.credits,
                org.limit_policy,
                None if limit is None else max(0, limit - used),
                None if group_limit is None else max(0, group_limit - counters[f"group:{group}"]),
            )
        if _overflows(counters, ev.member_id, group, result):
            return refused(ev, Reason.COUNTER_OVERFLOW)

        holds = self.holds[ev.org_id]
        if ev.reservation_id is not None:
            hold = holds.get(ev.reservation_id)
            if hold is not None and hold.member_id == ev.member_id:
                del holds[ev.reservation_id]
        buckets = self.buckets[ev.org_id]
        for line in result.lines:
            buckets[(_owner(line.kind, ev.member_id), line.bucket_id)].left -= line.amount

        settlement = Settlement(
            ev.key, ev.org_id, ev.member_id, ev.credits, ev.time_ms, period, group,
            result.lines, result.unfunded, result.member_limited, result.group_limited, late,
            ev.reservation_id,
        )  # fmt: skip
        self._count(settlement, +1)
        self.results[ev.org_id][ev.key] = settlement
        return settlement

    def _count(self, s: Settlement, sign: int) -> None:
        """Add (or, with sign -1, take back) a settlement to its period's counters."""
        assert s.period is not None
        counters = self.counters[(s.org_id, s.period.start_ms)]
        drawn = sum(line.amount for line in s.lines)
        shared = sum(line.amount for line in s.lines if line.kind is Kind.SHARED)
        counters[f"member:{s.member_id}"] += sign * drawn
        counters[f"member_shared:{s.member_id}"] += sign * shared
        counters[f"group:{s.billing_group}"] += sign * drawn
        counters["drawn"] += sign * drawn
        counters["unfunded"] += sign * s.unfunded

    def confirm(self, org_id: str, keys: Sequence[str]) -> None:
        check_org_id(org_id)
        results = self.results[org_id]
        for key in keys:
            results.pop(key, None)

    # -- checks and reservations ---------------------------------------------------------------

    def check(self, org_id: str, member_id: str, credits: int, now_ms: int) -> CheckResult:
        check_org_id(org_id)
        check_id("member_id", member_id)
        check_amount("credits", credits)
        check_instant("now_ms", now_ms)
        self._drop_expired_holds(org_id, now_ms)
        return self._check(org_id, member_id, credits, now_ms)[0]

    def _check(
        self, org_id: str, member_id: str, credits: int, now_ms: int
    ) -> tuple[CheckResult, Draw | None, str]:
        org = self.orgs.get(org_id)
        if org is None:
            return CheckResult(False, Reason.UNKNOWN_ORG), None, UNASSIGNED
        member = self.members.get((org_id, member_id))
        if member is None or member.removed:
            return CheckResult(False, Reason.UNKNOWN_MEMBER), None, UNASSIGNED
        if org.status is not OrgStatus.ACTIVE:
            return CheckResult(False, Reason.ORG_INACTIVE), None, UNASSIGNED
        if not member.config.seated:
            return CheckResult(False, Reason.NO_SEAT), None, UNASSIGNED

        period = period_at(org, now_ms)
        counters = self.counters[(org_id, period.start_ms)]
        group = self._group_of(member)
        holds = self.holds[org_id].values()
        held: dict[str, int] = defaultdict(int)
        for h in holds:
            for line in h.lines:
                held[line.bucket_id] += line.amount

        limit = self._member_limit(org, member)
        member_room = None
        if limit is not None:
            mine = [h for h in holds if h.member_id == member_id]
            if org.limit_policy is LimitPolicy.ALL:
                held_member = sum(h.drawn for h in mine)
            else:
                held_member = sum(h.drawn_shared for h in mine)
            member_room = max(0, limit - counters[_member_key(org, member_id)] - held_member)
        group_limit = self.groups[org_id].get(group) if group else None
        group_room = None
        if group_limit is not None:
            held_group = sum(h.drawn for h in holds if h.group == group)
            group_room = max(0, group_limit - counters[f"group:{group}"] - held_group)

        candidates = [
            (b, max(0, b.left - held[b.grant.bucket_id]))
            for b in self._eligible(org_id, member_id, now_ms)
        ]
        available = dict.fromkeys(Kind, 0)
        for b, amount in candidates:
            available[b.grant.kind] += amount
        # A sum over buckets can pass the bound: reported as at least MAX_AMOUNT.
        available = {kind: min(total, MAX_AMOUNT) for kind, total in available.items()}
        result = draw(candidates, credits, org.limit_policy, member_room, group_room)
        reason = None
        if result.unfunded:
            reason = Reason.INSUFFICIENT_CREDITS
            if result.member_limited:
                reason = Reason.MEMBER_LIMIT_REACHED
            elif result.group_limited:
                reason = Reason.GROUP_LIMIT_REACHED
        checked = CheckResult(
            reason is None, reason, available, member_room, group_room, period.end_ms
        )
        return checked, result, group

    def reserve(
        self,
        org_id: str,
        member_id: str,
        credits: int,
        now_ms: int,
        reservation_id: str,
        ttl_ms: int = DEFAULT_HOLD_MS,
    ) -> CheckResult:
        """Check, and if allowed hold the simulated draw until `now_ms + ttl_ms` (capped)."""
        check_org_id(org_id)
        check_id("member_id", member_id)
        check_amount("credits", credits)
        check_instant("now_ms", now_ms)
        check_id("reservation_id", reservation_id)
        ttl_ms = hold_ttl(ttl_ms)
        self._drop_expired_holds(org_id, now_ms)
        existing = self.holds[org_id].get(reservation_id)
        if existing is not None:
            return CheckResult(
                True, None, reservation_id=reservation_id,
                reservation_expires_ms=existing.expires_ms,
            )  # fmt: skip
        checked, result, group = self._check(org_id, member_id, credits, now_ms)
        if not checked.allowed or result is None:
            return checked
        expires = now_ms + ttl_ms
        shared = sum(line.amount for line in result.lines if line.kind is Kind.SHARED)
        drawn = sum(line.amount for line in result.lines)
        self.holds[org_id][reservation_id] = Hold(
            member_id, expires, group, drawn, shared, result.lines
        )
        return replace(checked, reservation_id=reservation_id, reservation_expires_ms=expires)

    def release(self, org_id: str, reservation_id: str, now_ms: int) -> bool:
        check_org_id(org_id)
        check_id("reservation_id", reservation_id)
        check_instant("now_ms", now_ms)
        self._drop_expired_holds(org_id, now_ms)
        return self.holds[org_id].pop(reservation_id, None) is not None

    # -- corrections ---------------------------------------------------------------------------

    def void(
        self, org_id: str, key: str, now_ms: int, settlement: Settlement | None = None
    ) -> VoidResult:
        """Return a settlement's credits to its unexpired buckets and take back its counters
        (while its period is open). Idempotent: a second void returns the first result."""
        check_org_id(org_id)
        check_instant("now_ms", now_ms)
        validate_void_settlement(org_id, key, settlement)
        self._drop_expired_holds(org_id, now_ms)
        done = self.voids[org_id].get(key)
        if done is not None:
            return replace(done, duplicate=True)
        org = self.orgs.get(org_id)
        s = self.results[org_id].get(key, settlement)
        if org is None or s is None or s.period is None:
            return VoidResult(key, False)
        returned = []
        buckets = self.buckets[org_id]
        for line in s.lines:
            bucket = buckets.get((_owner(line.kind, s.member_id), line.bucket_id))
            if bucket is not None and now_ms < bucket.grant.expires_at_ms:
                # Capped, as the Lua caps it: a bucket never holds more than MAX_AMOUNT.
                bucket.left = min(bucket.left + line.amount, MAX_AMOUNT)
                returned.append(line)
        if now_ms <= s.period.end_ms + org.grace_ms:
            self._count(s, -1)
        result = VoidResult(key, True, tuple(returned))
        self.voids[org_id][key] = result
        return result

    # -- recovery and upkeep -------------------------------------------------------------------

    def restore(
        self, org_id: str, balances: Mapping[str, int], usage: Mapping[str, int], now_ms: int
    ) -> None:
        """Put back what `balances` and `usage` read earlier (README "Recovery"): credits left per
        bucket id, the counters of the period containing `now_ms`; drop holds and stored results."""
        check_org_id(org_id)
        check_instant("now_ms", now_ms)
        validate_restore(balances, usage)
        org = self.orgs.get(org_id)
        if org is None:
            raise EngineInputError(f"restore: unknown org {org_id!r}")
        by_id: dict[str, list[Bucket]] = defaultdict(list)
        for (_, bucket_id), bucket in self.buckets[org_id].items():
            by_id[bucket_id].append(bucket)
        for bucket_id in balances:
            found = by_id.get(bucket_id, [])
            if len(found) != 1:
                what = "unknown" if not found else "ambiguous"
                raise EngineInputError(f"restore: {what} bucket id {bucket_id!r}")
        for bucket_id, left in balances.items():
            by_id[bucket_id][0].left = left
        start = period_at(org, now_ms).start_ms
        self.counters[(org_id, start)] = defaultdict(int, usage)
        self.holds[org_id].clear()
        self.results[org_id].clear()

    def prune(self, org_id: str, now_ms: int) -> int:
        """Drop buckets no event can draw from any more (README "Pruning"); returns how many."""
        check_org_id(org_id)
        check_instant("now_ms", now_ms)
        org = self.orgs.get(org_id)
        if org is None:
            return 0
        buckets = self.buckets[org_id]
        gone = [slot for slot, b in buckets.items() if prunable(org, b.grant.expires_at_ms, now_ms)]
        for slot in gone:
            del buckets[slot]
        return len(gone)

    def has_org(self, org_id: str) -> bool:
        return org_id in self.orgs

    # -- reading -------------------------------------------------------------------------------

    def balances(self, org_id: str, now_ms: int) -> dict[str, int]:
        check_org_id(org_id)
        return {b.grant.bucket_id: b.left for b in self.buckets[org_id].values()}

    def usage(self, org_id: str, now_ms: int) -> dict[str, int]:
        check_org_id(org_id)
        check_instant("now_ms", now_ms)
        org = self.orgs.get(org_id)
        if org is None:
            return {}
        start = period_at(org, now_ms).start_ms
        return {k: v for k, v in self.counters[(org_id, start)].items() if v}


def refused(ev: UsageEvent, reason: Reason) -> Settlement:
    """The result of an event that cannot settle: nothing drawn, nothing stored."""
    return Settlement(
        ev.key, ev.org_id, ev.member_id, ev.credits, ev.time_ms, None,
        reservation_id=ev.reservation_id, reason=reason,
    )  # fmt: skip


def _overflows(counters: Mapping[str, int], member_id: str, group: str, result: Draw) -> bool:
    """True when adding `result` to its period's counters would take one past `MAX_AMOUNT`
    (README "Bounds")."""
    drawn = sum(line.amount for line in result.lines)
    shared = sum(line.amount for line in result.lines if line.kind is Kind.SHARED)
    return (
        counters.get("drawn", 0) + drawn > MAX_AMOUNT
        or counters.get("unfunded", 0) + result.unfunded > MAX_AMOUNT
        or counters.get(f"member:{member_id}", 0) + drawn > MAX_AMOUNT
        or counters.get(f"member_shared:{member_id}", 0) + shared > MAX_AMOUNT
        or counters.get(f"group:{group}", 0) + drawn > MAX_AMOUNT
    )


def _owner(kind: Kind, member_id: str) -> str | None:
    return None if kind is Kind.SHARED else member_id


def _member_key(org: OrgConfig, member_id: str) -> str:
    """The counter a member limit compares against, by the org's limit policy."""
    if org.limit_policy is LimitPolicy.ALL:
        return f"member:{member_id}"
    return f"member_shared:{member_id}"


def hold_ttl(ttl_ms: int) -> int:
    """A hold's lifetime: positive, capped at `MAX_HOLD_MS`."""
    if type(ttl_ms) is not int or ttl_ms <= 0:
        raise EngineInputError(f"ttl_ms must be a positive integer, got {ttl_ms!r}")
    return min(ttl_ms, MAX_HOLD_MS)


def validate_org(org: OrgConfig) -> None:
    """The checks of `put_org` (both engines)."""
    check_org_id(org.org_id)
    check_instant("anchor_ms", org.anchor_ms)
    check_amount("grace_ms", org.grace_ms)
    days = org.rolling_days
    if type(days) is not int or not 0 < days <= MAX_AMOUNT // DAY_MS:
        raise EngineInputError(f"rolling_days must be an integer in 1..{MAX_AMOUNT // DAY_MS}")
    if org.default_member_limit is not None:
        check_amount("default_member_limit", org.default_member_limit)


def validate_member(member: MemberConfig) -> None:
    """The checks of `put_member` (both engines)."""
    check_org_id(member.org_id)
    check_id("member_id", member.member_id)
    check_id("billing_group", member.billing_group, empty=True)
    if member.member_limit is not None:
        check_amount("member_limit", member.member_limit)


def validate_billing_group(group: BillingGroupConfig) -> None:
    """The checks of `put_billing_group` (both engines)."""
    check_org_id(group.org_id)
    check_id("group_id", group.group_id)
    if group.limit is not None:
        check_amount("limit", group.limit)


def validate_grant(grant: Grant) -> None:
    check_org_id(grant.org_id)
    check_id("bucket_id", grant.bucket_id)
    check_amount("amount", grant.amount)
    for name in ("valid_from_ms", "expires_at_ms", "granted_at_ms"):
        check_instant(name, getattr(grant, name))
    if (grant.kind is Kind.SHARED) != (grant.member_id is None):
        raise EngineInputError("shared buckets have no member; other kinds need one")
    if grant.member_id is not None:
        check_id("member_id", grant.member_id)


def validate_events(org_id: str, events: Sequence[UsageEvent], now_ms: int) -> None:
    check_org_id(org_id)
    check_instant("now_ms", now_ms)
    for ev in events:
        if ev.org_id != org_id:
            raise EngineInputError(f"event {ev.key!r} is of org {ev.org_id!r}, not {org_id!r}")
        check_id("key", ev.key)
        check_id("member_id", ev.member_id)
        check_amount("credits", ev.credits)
        check_instant("time_ms", ev.time_ms)
        if ev.reservation_id is not None:
            check_id("reservation_id", ev.reservation_id)


PRUNE_AFTER_MS = 7 * DAY_MS
"""How long after the period of its last valid instant closes an expired bucket is kept."""

USAGE_PREFIXES = ("member:", "member_shared:", "group:")
USAGE_TOTALS = ("drawn", "unfunded")


def prunable(org: OrgConfig, expires_at_ms: int, now_ms: int) -> bool:
    """True when no event can draw from a bucket expiring at `expires_at_ms` any more: the period
    containing its last valid instant closed (end + grace) more than `PRUNE_AFTER_MS` ago. Events
    of earlier times are late by then and draw at `now_ms`, where the bucket has expired."""
    if expires_at_ms > now_ms:
        return False
    return now_ms > period_at(org, expires_at_ms - 1).end_ms + org.grace_ms + PRUNE_AFTER_MS


def validate_restore(balances: Mapping[str, int], usage: Mapping[str, int]) -> None:
    """The arguments of `restore`: bucket ids and amounts, counter names of `usage` and values."""
    for bucket_id, left in balances.items():
        check_id("bucket_id", bucket_id)
        check_amount("left", left)
    for name, value in usage.items():
        check_id("counter name", name)
        check_amount(name, value)
        if name in USAGE_TOTALS:
            continue
        prefix = next((p for p in USAGE_PREFIXES if name.startswith(p)), None)
        if prefix is None:
            raise EngineInputError(f"restore: {name!r} is not a counter name of usage()")
        check_id(name, name[len(prefix) :], empty=prefix == "group:")


def validate_void_settlement(org_id: str, key: str, settlement: Settlement | None) -> None:
    check_id("key", key)
    if settlement is None:
        return
    if settlement.org_id != org_id or settlement.key != key:
        raise EngineInputError("the settlement passed to void is not the one named")
    if settlement.period is None or settlement.reason is not None:
        raise EngineInputError("the settlement passed to void did not settle")
    check_id("member_id", settlement.member_id)
    check_id("billing_group", settlement.billing_group, empty=True)
    check_amount("unfunded", settlement.unfunded)
    for line in settlement.lines:
        check_id("bucket_id", line.bucket_id)
        check_amount("amount", line.amount)


__all__ = ["Bucket", "Draw", "Hold", "Ledger", "Period", "draw"]
