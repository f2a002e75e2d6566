"""Supervised background loops: they retry through outages, report their readiness, and never
die silently.

`supervise(component, step)` calls `step()` again and again until cancelled. A step is one pass
of a loop and waits for its own next turn (a timer, a wake-up event). When a step raises:

- the failure is logged once per attempt, with the error's class and the next delay
  (`pass_failed`); a traceback only for an unexpected error, once per run of failures;
- the next step waits a backoff: exponential from `Backoff.initial_s`, capped at `max_s`, with
  random jitter so that processes which failed together do not retry in lockstep;
- `HEALTH.fail(component, reason)` marks the process unready (`/readyz` answers 503): at once
  for an unexpected error (a bug that a retry may not cure), after `fail_after` attempts in a
  row for a transient one (a server down or restarting, which the probes of `/readyz` show
  anyway);
- the next step that succeeds clears it (`HEALTH.ok`), logs `pass_recovered` and resets the
  backoff.

`restart(component, run)` does the same for a coroutine meant to run forever (a `meter run`
component): when it returns or fails it is started again after the backoff, and it counts as
healthy again once it has run for `stable_s` without failing (`component_failed`,
`component_recovered` in the logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, NoReturn

import asyncpg  # type: ignore[import-untyped]
import structlog
from aiokafka.errors import KafkaError

from meter.health import HEALTH, Health
from meter.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE

log = structlog.get_logger("meter.supervise")

TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    *REDIS_UNAVAILABLE,
    KafkaError,
)
"""A server down, restarting, overloaded or unreachable: retried quietly."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between failed attempts: `initial_s * 2**(attempt-1)`, capped at `max_s`, then
    scaled by a random factor in `[1 - jitter, 1]`."""

    initial_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int, rand: float | None = None) -> float:
        """Seconds to wait after the `attempt`-th failure in a row (1-based); `rand` in [0, 1)
        replaces the random draw."""
        base = min(self.max_s, self.initial_s * 2.0 ** min(max(attempt - 1, 0), 60))
        r = random.random() if rand is None else rand
        return base * (1.0 - self.jitter * r)


DEFAULT_BACKOFF = Backoff()

Step = Callable[[], Awaitable[None]]


class Supervisor:
    """Failure bookkeeping of one component: attempts, health, logs, delays."""

    def __init__(
        self,
        component: str,
        *,
        backoff: Backoff = DEFAULT_BACKOFF,
        fail_after: int = 3,
        health: Health = HEALTH,
        what: str = "pass",
    ) -> None:
        self.component = component
        self.what = what
        """Names the log events: `<what>_failed`, `<what>_recovered`."""
        self.backoff = backoff
        self.fail_after = fail_after
        self.health = health
        self.attempt = 0
        """Failures in a row (0: the last pass succeeded)."""
        self.failures = 0
        """Failures since this supervisor started."""
        self._traced: set[type[BaseException]] = set()

    def succeeded(self) -> None:
        if self.attempt:
            log.info(
                f"{self.what}_recovered", component=self.component, after_attempts=self.attempt
            )
        self.attempt = 0
        self._traced.clear()
        self.health.ok(self.component)

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns how long to wait before the next attempt."""
        self.attempt += 1
        self.failures += 1
        delay = self.backoff.delay(self.attempt)
        transient = isinstance(exc, TRANSIENT)
        error = type(exc).__name__
        # A traceback helps with a bug, once; a server that is down needs none.
        trace = not transient and type(exc) not in self._traced
        self._traced.add(type(exc))
        log.warning(
            f"{self.what}_failed",
            component=self.component,
            attempt=self.attempt,
            error=error,
            message=str(exc)[:200],
            delay_s=round(delay, 3),
            exc_info=exc if trace else None,
        )
        if not transient or self.attempt >= self.fail_after:
            kind = "retrying" if transient else "failing"
            self.health.fail(self.component, f"{kind}: {error} (attempt {self.attempt})")
        return delay

    def stopped(self) -> None:
        """The loop is gone (cancelled): it no longer holds the process's readiness."""
        self.health.ok(self.component)


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set or `timeout_s` passed; True when it is set.

    Not `asyncio.wait_for`: on Python 3.11 it swallows a cancellation that arrives as the event is
    set or the timeout expires (a frozen process woken up, a shutdown during a wake-up), and the
    loop waiting would then outlive its cancellation."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, timeout_s)):
            await event.wait()
    return event.is_set()


async def cancel_and_wait(tasks: Collection[asyncio.Future[Any]], *, again_s: float = 1.0) -> None:
    """Cancel `tasks` and wait until every one has ended, cancelling those still running again
    every `again_s` seconds.

    One cancellation is not always enough on Python 3.11: `asyncio.wait_for`, which libraries
    use inside their calls (redis-py around each socket write), returns the result and drops the
    cancellation when both arrive together, as they do in a process woken from a freeze; the
    task then runs on as if never cancelled. Results and errors of the tasks are not raised; a
    cancellation of the caller meanwhile is, once they have all ended."""
    loop = asyncio.get_running_loop()
    pending = {task for task in tasks if not task.done()}
    interrupted = False
    again = loop.time()
    while pending:
        if loop.time() >= again:
            for task in pending:
                task.cancel()
            again = loop.time() + again_s
        try:
            await asyncio.wait(pending, timeout=again - loop.time())
        except asyncio.CancelledError:
            interrupted = True  # the caller's: its tasks still end first
        pending = {task for task in pending if not task.done()}
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: not logged as "never retrieved"
    if interrupted:
        raise asyncio.CancelledError


def _terminate_open(*targets: asyncpg.Connection | asyncpg.Pool | None) -> None:
    """Terminate (close the sockets of, at once) the asyncpg connections and pools among
    `targets` still open. For the `finally` of a component's clean-up, whose closes a second
    cancellation can cut short (`cancel_and_wait` cancels again after a second): a connection
    left open is only found by the garbage collector, which warns of it."""
    for target in targets:
        if target is None:
            continue
        if isinstance(target, asyncpg.Pool) or not target.is_closed():
            target.terminate()  # (a closed pool's terminate does nothing)


async def close_quietly(
    listener: asyncpg.Connection | None,
    pool: asyncpg.Pool | None,
    *others: Callable[[], Awaitable[object]],
) -> None:
    """A component's clean-up: close its listening connection, then `others` (a producer's
    stop, a client's close), then its pool, each one's errors swallowed. What a cancellation
    cuts short is terminated (`_terminate_open`) and the cancellation raised."""
    try:
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close(timeout=2)
        for close in others:
            with contextlib.suppress(Exception):
                await close()
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.close()
    finally:
        _terminate_open(listener, pool)


async def supervise(
    component: str,
    step: Step,
    *,
    backoff: Backoff = DEFAULT_BACKOFF,
    fail_after: int = 3,
    on_failure: Step | None = None,
    health: Health = HEALTH,
) -> NoReturn:
    """Run `step()` forever (see the module's docstring); `on_failure()` runs after each failed
    step, before the backoff (to drop connections that may be broken)."""
    supervisor = Supervisor(component, backoff=backoff, fail_after=fail_after, health=health)
    try:
        while True:
            try:
                await step()
            except Exception as exc:
                delay = supervisor.failed(exc)
                if on_failure is not None:
                    with contextlib.suppress(Exception):
                        await on_failure()
                await asyncio.sleep(delay)
            else:
                supervisor.succeeded()
    finally:
        supervisor.stopped()


async def restart(
    component: str,
    run: Step,
    *,
    backoff: Backoff = DEFAULT_BACKOFF,
    stable_s: float = 30.0,
    health: Health = HEALTH,
) -> NoReturn:
    """Run `run()`, meant to run until cancelled, and start it again whenever it fails or
    returns; it is reported unhealthy from then until a run has lasted `stable_s`."""
    supervisor = Supervisor(
        component, backoff=backoff, fail_after=1, health=health, what="component"
    )
    loop = asyncio.get_running_loop()
    try:
        while True:
            started = loop.time()
            task = asyncio.ensure_future(run())
            healthy = (
                loop.call_later(stable_s, supervisor.succeeded) if supervisor.attempt else None
            )
            try:
                await task
            except Exception as exc:
                error: BaseException = exc
            else:
                error = RuntimeError("stopped on its own")
            finally:
                if healthy is not None:
                    healthy.cancel()
            if loop.time() - started >= stable_s:
                supervisor.attempt = 0  # a long run in between: start the backoff afresh
            await asyncio.sleep(supervisor.failed(error))
    finally:
        supervisor.stopped()
