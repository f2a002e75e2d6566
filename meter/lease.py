"""Leases: one active replica of a singleton role, the others standing by.

`meter scheduler` may run as two or more replicas; only the holder of the `scheduler` lease does
the work. A lease is a row of `leases` (migration 0015) with a holder and an expiry on
PostgreSQL's clock:

- a replica takes the lease when the row is absent, expired, or already its own, and extends it
  by `ttl_s` (one statement, so two replicas can never both take it);
- the holder renews every `ttl_s / 3`; a renewal that fails, or does not answer before the lease
  would have run out by this process's own monotonic clock, ends its term at once: its work is
  cancelled and it stands by again. So a holder that dies, hangs or loses PostgreSQL is replaced
  within `ttl_s` plus one standby poll, and never believes it holds a lease another replica took;
- a holder that stops cleanly gives the lease up, so a standby takes over at its next poll.

The scheduler's work is idempotent (seats, expiries, charges and alerts are recorded under unique
keys), so the moment of overlap a frozen holder could cause on waking repeats work, never doubles
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg  # type: ignore[import-untyped]
import structlog

from meter.health import HEALTH
from meter.supervise import cancel_and_wait

log = structlog.get_logger("meter.lease")

TTL_S = 6.0
POLL_S = 1.0

_TAKE = """
INSERT INTO leases (name, holder, acquired_at, expires_at)
VALUES ($1, $2, now(), now() + make_interval(secs => $3))
ON CONFLICT (name) DO UPDATE
   SET holder = EXCLUDED.holder,
       acquired_at = CASE WHEN leases.holder = EXCLUDED.holder THEN leases.acquired_at
                          ELSE now() END,
       expires_at = EXCLUDED.expires_at
 WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now()
RETURNING holder
"""
_GIVE_UP = "DELETE FROM leases WHERE name = $1 AND holder = $2"
_UNREACHABLE = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""What a lease call raises when PostgreSQL cannot answer it."""
_HOLDER = "SELECT holder, expires_at > now() AS live FROM leases WHERE name = $1"


def holder_id() -> str:
    """This process's name in the lease table: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class LeaseState:
    holder: str | None
    live: bool


async def lease_state(pool: asyncpg.Pool, name: str) -> LeaseState:
    """Who holds `name` now (for status reads and tests)."""
    row = await pool.fetchrow(_HOLDER, name)
    if row is None:
        return LeaseState(None, False)
    return LeaseState(row["holder"], bool(row["live"]))


class Lease:
    """The lease `name` as seen by one replica (`holder`)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        name: str,
        *,
        holder: str | None = None,
        ttl_s: float = TTL_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.pool = pool
        self.name = name
        self.holder = holder or holder_id()
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self.terms = 0
        """How many times this replica became active."""

    async def try_take(self) -> bool:
        """Take or renew the lease; True when this replica holds it afterwards."""
        deadline = max(self.ttl_s / 3, 0.5)
        async with asyncio.timeout(deadline):  # not wait_for: see `meter.supervise.wait_event`
            row = await self.pool.fetchrow(_TAKE, self.name, self.holder, self.ttl_s)
        return row is not None

    async def give_up(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await self.pool.execute(_GIVE_UP, self.name, self.holder)

    async def run(self, work: Callable[[], Awaitable[None]]) -> None:
        """Forever: stand by until the lease is taken, then run `work` while it is held.

        `work` is cancelled when a renewal fails; if `work` returns or raises, the lease is given up
        and the error propagates (the role stops: its supervisor decides)."""
        component = f"lease:{self.name}"
        while True:
            try:
                taken = await self.try_take()
            except _UNREACHABLE as exc:
                HEALTH.fail(component, f"cannot reach PostgreSQL: {type(exc).__name__}")
                log.warning("lease poll failed", lease=self.name, error=type(exc).__name__)
                await asyncio.sleep(self.poll_s)
                continue
            HEALTH.ok(component)
            if not taken:
                await asyncio.sleep(self.poll_s)
                continue
            self.terms += 1
            log.info("lease taken: active", lease=self.name, holder=self.holder)
            try:
                await self._term(work)
            finally:
                await self.give_up()
            log.warning("lease lost: standing by", lease=self.name, holder=self.holder)

    async def _term(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` until it ends or the lease can no longer be renewed in time."""
        task = asyncio.ensure_future(work())
        valid_until = time.monotonic() + self.ttl_s
        try:
            while True:
                wait = min(self.ttl_s / 3, max(valid_until - time.monotonic() - 0.5, 0.0))
                done, _ = await asyncio.wait({task}, timeout=wait)
                if done:
                    task.result()
                    return
                started = time.monotonic()
                try:
                    renewed = await self.try_take()
                except _UNREACHABLE as exc:
                    log.warning("lease renewal failed", lease=self.name, error=type(exc).__name__)
                    renewed = False
                if not renewed or time.monotonic() > valid_until:
                    return
                valid_until = started + self.ttl_s
        finally:
            await cancel_and_wait([task])
