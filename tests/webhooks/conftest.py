"""The API application, its admin client, a real HTTP receiver and a running delivery worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio
from api.conftest import admin, app

from meter.api import App
from meter.supervise import cancel_and_wait
from meter.webhooks.worker import WebhookWorker
from webhooks.receiver import Receiver

__all__ = ["admin", "app", "receiver", "start_worker"]

SHORT_SCHEDULE = (0.2,) * 40
"""Retries every 0.2 s (with jitter) for about 8 s: outages in tests last less."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    hook.start()
    try:
        yield hook
    finally:
        hook.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def start_worker(app: App) -> AsyncIterator[Callable[..., WebhookWorker]]:
    """Starts a `WebhookWorker` on the app's database (options as keyword arguments); every
    worker started is cancelled at the end of the test."""
    tasks: list[asyncio.Task[None]] = []

    def start(**options: object) -> WebhookWorker:
        settings: dict[str, object] = {
            "production": False,
            "schedule": SHORT_SCHEDULE,
            "timeout_s": 2.0,
            "poll_s": 0.5,
        }
        settings.update(options)
        worker = WebhookWorker(app.services.postgres_dsn, **settings)  # type: ignore[arg-type]
        tasks.append(asyncio.create_task(worker.run()))
        return worker

    yield start
    await cancel_and_wait(tasks)
