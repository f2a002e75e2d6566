"""The `meter` command line.

Subcommands are listed in `COMMANDS` as `name -> Command("module:function", help)` and imported
only when chosen, so `meter --help` stays fast. The function receives the subcommand's
`argparse` parser, adds its arguments (nested subcommands included) and returns the handler:
an `async (args, settings) -> exit code`. Settings are read and validated before the handler runs.

`meter run` provisions the services, migrates, then runs every component of `RUN_COMPONENTS`
(`"module:function"`, each an `async (settings, services) -> None` that runs until cancelled)
until Ctrl-C or SIGTERM, and stops them and the local servers cleanly. A component that fails is
started again after a backoff, and the process reports it unready meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import structlog

from meter.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from meter.services import Services

Handler = Callable[[argparse.Namespace, Settings], Awaitable[int]]
Configure = Callable[[argparse.ArgumentParser], Handler]
Component = Callable[[Settings, "Services"], Coroutine[Any, Any, None]]
"""A long-running part of `meter run`: `async (settings, services: Services) -> None`."""


@dataclass(frozen=True)
class Command:
    target: str
    """`module:function`; the function takes the subcommand's parser and returns its handler."""
    help: str


COMMANDS: dict[str, Command] = {
    "run": Command(
        "meter.cli:configure_run",
        "provision the services, migrate, run every component until Ctrl-C",
    ),
    "migrate": Command("meter.cli:configure_migrate", "apply the PostgreSQL migrations"),
    "services": Command(
        "meter.cli:configure_services",
        "provision Kafka, Redis and PostgreSQL, print where they are, wait until Ctrl-C",
    ),
    "api": Command("meter.roles:configure_api", "serve the HTTP API (stateless, any replicas)"),
    "scheduler": Command(
        "meter.roles:configure_scheduler",
        "period scheduler and publishers; one active replica by lease, the others stand by",
    ),
    "consume": Command(
        "consumers.settle:configure_consume", "run a settlement consumer (Kafka -> PostgreSQL)"
    ),
    "dlq": Command("consumers.dlq:configure_dlq", "dead-letter tools (replay, list)"),
    "rebuild": Command("meter.rebuild:configure", "rebuild Redis state from PostgreSQL"),
    "quarantine": Command(
        "meter.quarantine:configure", "organizations set aside: list, show, release"
    ),
    "export": Command("meter.reports.cli:configure_export", "CSV export of a period's usage"),
    "bench": Command("meter.bench.command:configure", "benchmarks (engine, pipeline, ...)"),
    "archive": Command(
        "meter.archive:configure",
        "verify closed months of settlements, write them to files, detach their partitions",
    ),
    "rerate": Command("meter.rating.rerate:configure", "re-rate a window under corrected cards"),
}

RUN_COMPONENTS: list[str] = [
    "consumers.settle:run_component",
    "meter.api.server:serve",
    "meter.roles:scheduler_component",
]
"""The components `meter run` starts, as `module:function` (see `Component`)."""

log = structlog.get_logger("meter.cli")


def _resolve(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def build_parser(chosen: str | None) -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The parser; only the chosen subcommand's module is imported to configure its arguments."""
    parser = argparse.ArgumentParser(
        prog="meter", description="Usage metering for AI products that sell seats and credits."
    )
    from meter import __version__

    parser.add_argument("--version", action="version", version=f"meter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    handlers: dict[str, Handler] = {}
    for name, command in COMMANDS.items():
        command_parser = sub.add_parser(name, help=command.help, description=command.help)
        if name == chosen:
            configure = cast(Configure, _resolve(command.target))
            handlers[name] = configure(command_parser)
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `meter` console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_list if not a.startswith("-")), None)
    parser, handlers = build_parser(chosen)
    args = parser.parse_args(args_list)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"meter: {exc}", file=sys.stderr)
        return 2
    from meter import kafka
    from meter.logging import configure_logging

    # A benchmark's standard output is its report (its last line JSON with --json): logs go to
    # standard error there.
    stream = sys.stderr if args.command == "bench" else None
    configure_logging(
        settings.log_level, settings.log_format, secrets=secrets_of(settings), stream=stream
    )
    kafka.configure(settings)
    handler = handlers[args.command]
    from meter.migrate import MigrationError
    from meter.services import ServiceError

    tune_gc()

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_until_signal(handler(args, settings)))
    except SettingsError as exc:
        print(f"meter {args.command}: {exc}", file=sys.stderr)
        return 2
    except (ServiceError, MigrationError) as exc:
        print(f"meter {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


GC_YOUNG_THRESHOLD = 200_000
"""Tracked objects allocated (net of those freed) before a young-generation collection."""


def tune_gc() -> None:
    """Collect cycles less often than CPython's default (every 700 net allocations). A consumer
    batch holds tens of thousands of tuples for a few milliseconds; at the default threshold they
    were traversed again and again on their way to the old generation, and full collections
    walked every one of them: 12.7 s of a one-million-event pipeline run went to the collector,
    0.2 s with this threshold (`meter bench pipeline`: 23,400 -> 27,000 events/s). Objects
    alive at start-up (modules, settings, clients) are frozen out of every collection. Cycles
    are still collected, after at most this many net allocations."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (every platform but Windows): the consumer's
    and the API's hot paths spend a tenth of their time in the event loop and its transports."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def secrets_of(settings: Settings) -> list[str | None]:
    """What the logs must never show: the admin token and the servers' passwords."""
    from urllib.parse import urlsplit

    secrets = [settings.admin_token]
    for url in (settings.postgres_dsn, settings.redis_url):
        if url is not None:
            secrets.append(urlsplit(url).password)
    return secrets


async def _until_signal(work: Awaitable[int]) -> int:
    """Run `work`; the first SIGINT or SIGTERM cancels it (so its cleanup runs), later ones are
    ignored while it cleans up. Returns its exit code, or 0 when a signal stopped it."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    signalled: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        if not signalled:
            signalled.append(sig)
            log.info("stopping", signal=sig.name)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await task
    except asyncio.CancelledError:
        if not signalled:
            raise
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# ---------------------------------------------------------------------------------------------
# Built-in subcommands


def configure_migrate(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument(
        "--dir", type=Path, default=None, help="migration directory (default: schemas/migrations)"
    )

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.migrate import migrate
        from meter.services import provision

        async with provision(settings, only={"postgres"}) as services:
            applied = await migrate(services.postgres_dsn, args.dir)
        print(f"applied: {', '.join(applied)}" if applied else "up to date")
        return 0

    return handle


def configure_services(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument(
        "--check", action="store_true", help="print where the services are and exit"
    )

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.services import provision

        async with provision(settings) as services:
            _print_services(services.describe())
            if not args.check:
                print("Ctrl-C to stop", flush=True)
                await asyncio.Event().wait()
        return 0

    return handle


def configure_run(parser: argparse.ArgumentParser) -> Handler:
    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.migrate import migrate
        from meter.services import provision

        components = [cast(Component, _resolve(target)) for target in RUN_COMPONENTS]
        async with provision(settings) as services:
            applied = await migrate(services.postgres_dsn)
            log.info("migrated", applied=applied)
            resolved = services.apply(settings)
            _print_services(services.describe())
            print("meter is running; Ctrl-C to stop", flush=True)
            return await _run_components(components, resolved, services)

    return handle


async def _run_components(
    components: list[Component], settings: Settings, services: Services
) -> int:
    """Run the components until this task is cancelled. A component that fails (or returns) is
    started again after a backoff (`meter.supervise.restart`) and reported in `HEALTH`, so the
    API's `/readyz` answers 503 until it has run for a while again."""
    from meter.supervise import cancel_and_wait, restart

    tasks = [
        asyncio.create_task(
            restart(component.__module__, functools.partial(component, settings, services)),
            name=component.__module__,
        )
        for component in components
    ]
    try:
        if not tasks:
            await asyncio.Event().wait()
        # `wait`, not `gather`: cancelling this task must cancel each component once, below, so
        # that their own shutdown (finish requests, leave the group) is not interrupted.
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # supervision ends only by a BaseException (SystemExit): re-raised
        return 1
    finally:
        # Again after 5 s if a cancellation was lost, not sooner: a shutdown takes its time.
        await cancel_and_wait(tasks, again_s=5.0)


def _print_services(where: dict[str, str]) -> None:
    for name, address in where.items():
        print(f"  {name:<9} {address}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
