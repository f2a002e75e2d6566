"""Migrations: applied in order and once, with checksums; changed applied files are refused."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from meter.migrate import (
    MIGRATIONS_DIR,
    ChangedMigrationError,
    MigrationError,
    applied_versions,
    discover,
    migrate,
)

FIRST = "CREATE TABLE widgets (id bigint PRIMARY KEY, name text NOT NULL);\n"
SECOND = "ALTER TABLE widgets ADD COLUMN size int;\nINSERT INTO widgets VALUES (1, 'a', 2);\n"
THIRD = "CREATE TABLE gadgets (id bigint PRIMARY KEY);\n"


def write(directory: Path, name: str, sql: str) -> Path:
    path = directory / name
    path.write_text(sql)
    return path


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    write(directory, "0001_widgets.sql", FIRST)
    write(directory, "0002_widget_size.sql", SECOND)
    return directory


async def fetch(dsn: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query)
        return rows
    finally:
        await conn.close()


async def test_applies_in_order_and_records_checksums(pg_dsn_clean: str, migrations: Path) -> None:
    assert await migrate(pg_dsn_clean, migrations) == ["0001", "0002"]
    rows = await fetch(
        pg_dsn_clean, "SELECT version, name, checksum FROM schema_migrations ORDER BY 1"
    )
    assert [(r["version"], r["name"]) for r in rows] == [
        ("0001", "widgets"),
        ("0002", "widget_size"),
    ]
    assert rows[0]["checksum"] == hashlib.sha256(FIRST.encode()).hexdigest()
    assert rows[1]["checksum"] == hashlib.sha256(SECOND.encode()).hexdigest()
    widgets = await fetch(pg_dsn_clean, "SELECT id, name, size FROM widgets")
    assert [tuple(r) for r in widgets] == [(1, "a", 2)]


async def test_is_idempotent(pg_dsn_clean: str, migrations: Path) -> None:
    await migrate(pg_dsn_clean, migrations)
    assert await migrate(pg_dsn_clean, migrations) == []
    assert await fetch(pg_dsn_clean, "SELECT count(*) AS n FROM widgets") == [(1,)]


async def test_applies_only_new_files(pg_dsn_clean: str, migrations: Path) -> None:
    await migrate(pg_dsn_clean, migrations)
    write(migrations, "0003_gadgets.sql", THIRD)
    assert await migrate(pg_dsn_clean, migrations) == ["0003"]
    assert await applied_versions(pg_dsn_clean) == ["0001", "0002", "0003"]


async def test_refuses_a_changed_applied_file(pg_dsn_clean: str, migrations: Path) -> None:
    await migrate(pg_dsn_clean, migrations)
    write(migrations, "0001_widgets.sql", FIRST + "-- edited\n")
    write(migrations, "0003_gadgets.sql", THIRD)
    with pytest.raises(ChangedMigrationError, match=r"0001_widgets\.sql"):
        await migrate(pg_dsn_clean, migrations)
    assert await applied_versions(pg_dsn_clean) == ["0001", "0002"]
    assert await fetch(pg_dsn_clean, "SELECT to_regclass('gadgets') IS NULL AS missing") == [
        (True,)
    ]


async def test_refuses_when_an_applied_file_is_missing(pg_dsn_clean: str, migrations: Path) -> None:
    await migrate(pg_dsn_clean, migrations)
    (migrations / "0002_widget_size.sql").unlink()
    with pytest.raises(MigrationError, match="0002"):
        await migrate(pg_dsn_clean, migrations)


async def test_failing_file_is_rolled_back(pg_dsn_clean: str, migrations: Path) -> None:
    write(migrations, "0003_broken.sql", THIRD + "SELECT * FROM no_such_table;\n")
    with pytest.raises(MigrationError, match=r"0003_broken\.sql"):
        await migrate(pg_dsn_clean, migrations)
    assert await applied_versions(pg_dsn_clean) == ["0001", "0002"]
    assert await fetch(pg_dsn_clean, "SELECT to_regclass('gadgets') IS NULL AS missing") == [
        (True,)
    ]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("1_short.sql", "NNNN_name.sql"),
        ("0001-dash.sql", "NNNN_name.sql"),
        ("0001_dup.sql", "0001"),
    ],
)
def test_rejects_bad_file_names(migrations: Path, name: str, message: str) -> None:
    write(migrations, name, "SELECT 1;\n")
    with pytest.raises(MigrationError, match=message):
        discover(migrations)


async def test_concurrent_runs_apply_each_file_once(pg_dsn_clean: str, migrations: Path) -> None:
    results = await asyncio.gather(*(migrate(pg_dsn_clean, migrations) for _ in range(4)))
    assert sorted(results) == [[], [], [], ["0001", "0002"]]
    assert await applied_versions(pg_dsn_clean) == ["0001", "0002"]


async def test_project_migrations_apply(pg_dsn_clean: str) -> None:
    versions = [m.version for m in discover(MIGRATIONS_DIR)]
    assert await migrate(pg_dsn_clean) == versions
    assert await migrate(pg_dsn_clean) == []


async def test_cli_migrate(pg_dsn_clean: str, migrations: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env["METER_POSTGRES_DSN"] = pg_dsn_clean
    command = [sys.executable, "-m", "meter.cli", "migrate", "--dir", str(migrations)]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=60, check=False
        )

    first = await asyncio.to_thread(run)
    assert first.returncode == 0, first.stderr
    assert "applied: 0001, 0002" in first.stdout
    second = await asyncio.to_thread(run)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    write(migrations, "0002_widget_size.sql", SECOND + "-- edited\n")
    refused = await asyncio.to_thread(run)
    assert refused.returncode == 1
    assert "0002_widget_size.sql changed" in refused.stderr
