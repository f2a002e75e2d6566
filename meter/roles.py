"""The long-running roles as commands: `meter api` and `meter scheduler`.

Each role is one process that scales its own way (`meter consume`, the third, lives in
`consumers.settle`):

- `meter api`: the HTTP API, stateless; run any number of replicas behind a load balancer;
- `meter scheduler`: the period scheduler, the alert publisher and the webhook worker, a
  singleton by lease (`meter.lease`): run two or more replicas, one is active, the others stand
  by and take over within `lease_ttl_s` (plus a poll) of the active one dying, hanging or losing
  PostgreSQL.

`meter run` runs every role in one process, with local servers, for one machine.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

import asyncpg  # type: ignore[import-untyped]
import structlog

from meter import __version__, metrics
from meter.lease import TTL_S, Lease
from meter.supervise import cancel_and_wait, close_quietly

if TYPE_CHECKING:
    from meter.cli import Handler
    from meter.services import Services
    from meter.settings import Settings

log = structlog.get_logger("meter.roles")

SCHEDULER_LEASE = "scheduler"


def log_start(role: str, services: Services) -> None:
    """The one start-up line of a role: its name, version and the servers it uses."""
    log.info("starting", role=role, version=__version__, **services.describe())


def configure_api(parser: argparse.ArgumentParser) -> Handler:
    """`meter api`: serve the HTTP API until SIGTERM."""

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.api.server import serve
        from meter.migrate import migrate
        from meter.services import provision

        async with provision(settings) as services:
            await migrate(services.postgres_dsn)
            resolved = services.apply(settings)
            log_start("api", services)
            await serve(resolved, services)
        return 0

    return handle


def configure_scheduler(parser: argparse.ArgumentParser) -> Handler:
    """`meter scheduler`: the period scheduler and the alert publisher, while holding the lease."""
    parser.add_argument(
        "--lease-ttl", type=float, default=TTL_S, metavar="S",
        help=f"seconds a standby waits for a silent active replica (default {TTL_S:g})",
    )  # fmt: skip

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.migrate import migrate
        from meter.services import provision

        async with provision(settings) as services:
            await migrate(services.postgres_dsn)
            resolved = services.apply(settings)
            log_start("scheduler", services)
            async with metrics.metrics_server(resolved):
                await run_scheduler(resolved, services, lease_ttl_s=args.lease_ttl)
        return 0

    return handle


async def scheduler_work(settings: Settings, services: Services) -> None:
    """What the active scheduler replica runs: the period scheduler, the alert publisher and the
    webhook worker."""
    from meter import alerts
    from meter.admin import scheduler
    from meter.webhooks import worker as webhooks

    tasks = [
        asyncio.create_task(scheduler.run_component(settings, services), name="scheduler"),
        asyncio.create_task(alerts.run_component(settings, services), name="alerts"),
        asyncio.create_task(webhooks.run_component(settings, services), name="webhooks"),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        await cancel_and_wait(tasks)


async def run_scheduler(
    settings: Settings, services: Services, *, lease_ttl_s: float = TTL_S, holder: str | None = None
) -> None:
    """Stand by for the scheduler lease and run `scheduler_work` while holding it."""
    pool = await asyncpg.create_pool(services.postgres_dsn, min_size=1, max_size=2)
    try:
        lease = Lease(pool, SCHEDULER_LEASE, holder=holder, ttl_s=lease_ttl_s)
        log.info("scheduler standing by for the lease", holder=lease.holder, ttl_s=lease_ttl_s)
        await lease.run(lambda: scheduler_work(settings, services))
    finally:
        await close_quietly(None, pool)


async def scheduler_component(settings: Settings, services: Services) -> None:
    """`meter run` component: the scheduler role under the lease, like `meter scheduler`, so
    `meter scheduler` replicas started beside `meter run` stand by rather than run twice."""
    await run_scheduler(settings, services)
