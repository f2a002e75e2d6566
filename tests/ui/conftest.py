"""One Chromium for the session, one real `meter run` per module (a database of its own)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from client.support import MeterRun
from playwright.async_api import Browser, Page, async_playwright

from meter.services import create_database, drop_database, with_database
from meter.settings import Settings
from ui.support import CHROMIUM_ARGS, chromium_path


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh tab in a fresh context: nothing kept from another test's sign-in."""
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    tab = await context.new_page()
    yield tab
    await context.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def meter(settings: Settings, postgres_dsn: str) -> AsyncIterator[MeterRun]:
    """One `meter run` for the module, on a database of its own."""
    name = f"meter_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = with_database(postgres_dsn, "postgres")
    await create_database(admin_dsn, name)
    data_dir = Path(tempfile.mkdtemp(prefix="meter-ui-"))
    run = MeterRun(settings, with_database(postgres_dsn, name), data_dir)
    try:
        run.start()
        yield run
        if run.proc is not None:
            run.stop()
    finally:
        if run.proc is not None:
            run.proc.kill()
            run.proc.wait()
        await drop_database(admin_dsn, name)
