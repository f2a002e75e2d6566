"""A real `meter run` per test module: the session's servers, a database of its own."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from client.support import MeterRun
from meter.services import create_database, drop_database, with_database
from meter.settings import Settings


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def meter(settings: Settings, postgres_dsn: str) -> AsyncIterator[MeterRun]:
    """One `meter run` for the module, on a database of its own."""
    name = f"meter_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = with_database(postgres_dsn, "postgres")
    await create_database(admin_dsn, name)
    data_dir = Path(tempfile.mkdtemp(prefix="meter-client-"))
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
