"""Lazy seat issuance: a period's seats are there before anything draws from or checks them.

No correctness rule waits on the scheduler. Before the consumer settles an organization's
events, and before an API process answers an organization's check or reservation, a
`SeatPeriods` makes sure the seats of the period concerned are issued (PostgreSQL and Redis):

- in process, organization -> the end of the newest period known issued: within a period (and
  for events of older periods) this costs a dictionary lookup, no I/O;
- on a miss, one PostgreSQL probe (`PROBE`: the organization's period settings and the periods
  recorded in `seat_periods`, migration 0016); if the period is not recorded,
  `AdminService.refresh_seats(strict=True)` issues it at an instant inside it (idempotent: grant
  ids derive from organization, member, period and seat start, so the scheduler, another
  consumer or an API process racing it write the same grants), applies it to Redis and records
  it. Then the period's end is remembered;
- one flight per organization: concurrent callers wait for the same work;
- an organization PostgreSQL does not know, or a quarantined one, is not looked up again for
  `retry_ms` (its events and checks are refused by the engine anyway).

A probe or issuance that fails raises; the consumer retries it (transient) or quarantines the
organization (anything else) as for a settle call, the API answers from Redis as it is and tries
again after `retry_ms` (`meter.api.routes`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog

from meter.admin.clock import from_ms, to_ms
from meter.admin.service import AdminService, org_config
from meter.engine.periods import period_at
from meter.engine.types import Period

log = structlog.get_logger("meter.admin.issuance")

PROBE = """
SELECT o.*, p.period_kind, p.rolling_days, p.limit_policy, p.default_member_limit,
       EXISTS (SELECT 1 FROM quarantined_orgs q WHERE q.org_id = o.org_id) AS quarantined,
       ARRAY(
           SELECT s.period_start FROM seat_periods s
           WHERE s.org_id = o.org_id AND s.period_start >= $2
       ) AS issued
FROM organizations o JOIN plans p USING (plan_id)
WHERE o.org_id = $1
"""
MAX_PERIODS = 3
"""At most this many periods (the newest) are issued in one call: older ones were issued by
whoever was there then, or are history."""
LOOK_BACK_MS = 400 * 86_400_000
"""Recorded periods are read from this long before the earliest instant asked about."""
RETRY_MS = 5_000
MAX_ENTRIES = 100_000
"""Known organizations kept in process; past this the map starts again (costs one probe each)."""


class SeatPeriods:
    """Which organizations' seats are known issued, and the lazy issuance of the others."""

    def __init__(
        self,
        admin: AdminService,
        *,
        retry_ms: int = RETRY_MS,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.admin = admin
        self.retry_ms = retry_ms
        self.clock = clock or admin.clock
        self._until: dict[str, int] = {}
        """Organization -> instant before which nothing is to be done (the end of the newest
        period known issued; for an unknown organization, when to look again)."""
        self._flights: dict[str, asyncio.Event] = {}
        admin.on_issued = self.learn
        self.probes = 0
        self.issued = 0
        """Periods this process issued itself."""

    def covers(self, org_id: str, at_ms: int) -> bool:
        """Nothing to do for `at_ms` (no I/O): the cheap test of the hot paths."""
        until = self._until.get(org_id)
        return until is not None and at_ms < until

    def learn(self, org_id: str, period: Period) -> None:
        """`period`'s seats are issued (by this process's admin service, whoever called it)."""
        self._remember(org_id, period.end_ms)

    def forget(self, org_id: str | None = None) -> None:
        """Look again at the next call (one organization, or all)."""
        if org_id is None:
            self._until.clear()
        else:
            self._until.pop(org_id, None)

    def defer(self, org_id: str) -> None:
        """Leave the organization alone for `retry_ms` (after a failure)."""
        self._remember(org_id, self.clock() + self.retry_ms)

    async def ensure(self, org_id: str, instants: Iterable[int]) -> None:
        """Make sure the seats of the periods containing `instants` (at most the newest
        `MAX_PERIODS` of them) are issued; instants before what is known need nothing."""
        wanted = list(instants)
        while True:
            pending = [t for t in wanted if not self.covers(org_id, t)]
            if not pending:
                return
            flight = self._flights.get(org_id)
            if flight is None:
                break
            await flight.wait()  # then look again: the flight may have failed or done less
        flight = self._flights[org_id] = asyncio.Event()
        try:
            await self._ensure(org_id, pending)
        finally:
            del self._flights[org_id]
            flight.set()

    async def _ensure(self, org_id: str, pending: list[int]) -> None:
        earliest = min(pending)
        self.probes += 1
        row = await self.admin.pool.fetchrow(PROBE, org_id, from_ms(earliest - LOOK_BACK_MS))
        if row is None or row["quarantined"]:
            self.defer(org_id)
            return
        org = org_config(row)
        issued = {to_ms(s) for s in row["issued"]}
        by_start = {p.start_ms: p for p in (period_at(org, t) for t in pending)}
        periods = [by_start[s] for s in sorted(by_start)[-MAX_PERIODS:]]
        now = self.clock()
        for period in periods:
            if period.start_ms in issued:
                continue
            at = min(max(now, period.start_ms), period.end_ms - 1)
            await self.admin.refresh_seats(org_id, at, strict=True)
            self.issued += 1
            log.info("seats_issued", org_id=org_id, period_start=period.start_ms, lazily=True)
        self._remember(org_id, periods[-1].end_ms)

    def _remember(self, org_id: str, until: int) -> None:
        if len(self._until) >= MAX_ENTRIES and org_id not in self._until:
            self._until.clear()
        self._until[org_id] = max(until, self._until.get(org_id, until))
