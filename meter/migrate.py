"""PostgreSQL migrations: numbered `.sql` files applied in order, each once.

Files are named `NNNN_name.sql` (`schemas/migrations/` by default). `migrate()` applies the ones not
yet recorded in `schema_migrations`, each in its own transaction together with its record (version,
name, sha256 of the file). A file that changed after it was applied, or an applied version whose
file is gone, stops the run before anything is applied. An advisory lock makes concurrent runs
safe: the second waits, then finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import structlog

import schemas

log = structlog.get_logger("meter.migrate")

MIGRATIONS_DIR = Path(schemas.__file__).parent / "migrations"

# pg_advisory_lock key: the first 8 bytes of sha256("meter.migrate"), as a signed bigint.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"meter.migrate").digest()[:8], "big", signed=True)

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED = "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
INSERT_APPLIED = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"


class MigrationError(Exception):
    """A migration cannot be applied. The failing file is rolled back; earlier ones stay."""


class ChangedMigrationError(MigrationError):
    """A migration file differs from the one that was applied."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path | None = None) -> list[Migration]:
    """The migration files of `directory`, in version order.

    Raises `MigrationError` for a `.sql` file with a malformed name or a duplicated version.
    """
    directory = directory or MIGRATIONS_DIR
    migrations: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        version = match["version"]
        if version in migrations:
            raise MigrationError(
                f"{path}: version {version} already used by {migrations[version].path.name}"
            )
        migrations[version] = Migration(version, match["name"], path, path.read_text())
    return [migrations[v] for v in sorted(migrations)]


async def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply the pending migrations of `directory`; returns the versions applied by this call."""
    migrations = discover(directory)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            return await _apply(conn, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()


async def _apply(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(CREATE_TABLE)
    applied = {row["version"]: row for row in await conn.fetch(SELECT_APPLIED)}
    by_version = {m.version: m for m in migrations}
    for version, row in applied.items():
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"migration {version}_{row['name']} is applied in the database but its file "
                "is missing: the database is newer than this code"
            )
        if migration.checksum != row["checksum"]:
            raise ChangedMigrationError(
                f"{migration.path.name} changed after it was applied (sha256 "
                f"{row['checksum'][:12]}... applied, {migration.checksum[:12]}... on disk): "
                "add a new migration instead of editing an applied one"
            )
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        try:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    INSERT_APPLIED, migration.version, migration.name, migration.checksum
                )
        except asyncpg.PostgresError as exc:
            raise MigrationError(
                f"{migration.path.name} failed: {type(exc).__name__}: {exc}"
            ) from exc
        log.info("migration applied", version=migration.version, name=migration.name)
        done.append(migration.version)
    return done


async def applied_versions(dsn: str) -> list[str]:
    """Versions recorded in `schema_migrations` (empty when the table does not exist)."""
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not exists:
            return []
        return [row["version"] for row in await conn.fetch(SELECT_APPLIED)]
    finally:
        await conn.close()
