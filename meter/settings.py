"""Service configuration: one `Settings`, read from `METER_*` environment variables."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from meter.engine.types import MAX_AMOUNT, MemberEncoding
from meter.redis_client import SINGLE_SCHEMES, cluster_seeds, is_cluster


class SettingsError(Exception):
    """Configuration that cannot be used; the message names the variable."""


class Settings(BaseSettings):
    """Everything the service reads from its environment.

    Server addresses left unset mean "start a local one" (see `meter.services`).
    """

    model_config = SettingsConfigDict(
        env_prefix="METER_", extra="ignore", frozen=True, env_ignore_empty=True
    )

    env: Literal["local", "production"] = "local"

    kafka_bootstrap: str | None = None
    usage_topic: str = "meter.usage.v1"
    dlq_topic: str = "meter.usage.v1.dlq"
    billing_topic: str = "meter.billing.v1"
    alerts_topic: str = "meter.alerts.v1"
    topic_partitions: int = Field(default=4, ge=1, le=1024)
    consumer_group: str = "meter-settle"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: str | None = None
    kafka_replication_factor: int | None = Field(default=None, ge=1, le=32)
    """Of the topics meter creates; unset: 3 in production, 1 locally."""
    kafka_min_insync_replicas: int | None = Field(default=None, ge=1, le=32)
    """Of the topics meter creates; unset: 2 in production (at most the factor), 1 locally."""
    consumer_session_timeout_ms: int = Field(default=10_000, ge=1_000, le=300_000)
    """How long the consumer group waits for a silent `meter consume` before handing its partitions
    to the others (Kafka's `session.timeout.ms`; heartbeats every third of it, at most 3 s)."""
    consumer_stall_s: float = Field(default=60.0, gt=0)
    """How long `meter consume` may write no batch while records wait before its readiness
    (`/readyz`) fails with `no_progress`."""
    member_encoding: MemberEncoding = "binary"
    """How the engine writes members in Redis (it reads both): `text` while processes of a release
    that reads only text may still run (meter/engine/README.md, "Member encodings")."""
    offset_reset: Literal["earliest", "latest", "fail"] = "earliest"
    """What `meter consume` does with a stored offset outside its partition's log (a recreated
    topic, retention): start from the earliest offset, the latest, or stop (`consumers.offsets`)."""

    redis_url: str | None = None
    """One server (`redis://`, `rediss://`, `unix://`) or a Redis Cluster by its seed nodes
    (`redis+cluster://host:port[,host:port...]`, `rediss+cluster://` with TLS)."""
    redis_timeout_s: float = Field(default=0.5, gt=0, le=60)
    """Deadline of the API's Redis calls (connect, and each command): a frozen Redis answers a
    check with 503 `unavailable` this fast."""
    postgres_dsn: str | None = None

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    admin_token: str | None = None
    produce_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """How long `POST /v1/events` waits for the broker to acknowledge before a 503."""
    request_log: Literal["all", "errors"] = "all"
    """`all`: one `request` log line per API request; `errors`: only for failed ones."""
    metrics_on_api: bool = True
    """Serve `GET /metrics` (aggregate numbers only, no authentication) on the API port."""
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Port of `meter consume`'s own `GET /metrics` server (on `api_host`); unset: none."""

    http_header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """Time a client has, from connecting (or from the end of its previous request), to send a
    request's line and headers; the connection is dropped after it."""
    http_body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """Time a client has, once the headers are in, to send the whole request body."""
    http_keep_alive_s: int = Field(default=5, ge=1, le=3600)
    """An idle keep-alive connection is closed after this many seconds."""
    http_max_connections: int = Field(default=1000, ge=1)
    """Open connections per API process; one beyond it is closed as soon as it is accepted."""
    http_max_concurrency: int | None = Field(default=None, ge=1)
    """Open connections or requests in flight per API process beyond which requests get 503
    (uvicorn's `limit_concurrency`); unset: off. It counts idle and slow connections too: below
    `http_max_connections` a flood of slow clients would get everyone 503s."""
    auth_miss_rate: float = Field(default=20.0, gt=0)
    """Lookups of unknown keys per second per API process (beyond the burst: 429)."""
    auth_miss_burst: int = Field(default=100, ge=1)
    """Lookups of unknown keys an API process may make at once before the rate applies."""

    data_dir: Path = Path(".meter")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    connect_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """How long a configured server may take to answer at start-up."""

    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Deadline of one webhook delivery attempt (connect, send, response headers)."""
    webhook_retry_schedule_s: tuple[float, ...] = Field(
        default=(5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0), min_length=1, max_length=50
    )
    """Waits before each retry of a failed webhook (JSON list of seconds, each scaled by +-20%
    jitter); when it is exhausted the delivery fails and its endpoint is marked failing."""
    webhook_poll_s: float = Field(default=5.0, gt=0, le=3600)
    """The webhook worker looks for due deliveries at least this often (it also wakes on new
    messages)."""

    max_future_skew_s: int = Field(default=300, ge=0)
    max_event_credits: int = Field(default=10**12, gt=0, le=MAX_AMOUNT)
    """Largest credits value accepted on one event, in micro-credits (default 1,000,000 credits);
    at most the engine's exact range, `MAX_AMOUNT` (2**53 - 1)."""

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if is_cluster(v):
            cluster_seeds(v)  # raises ValueError naming the expected form
        elif not v.startswith(SINGLE_SCHEMES):
            raise ValueError(
                "must start with redis://, rediss://, unix:// (one server) or "
                "redis+cluster://, rediss+cluster:// (a Redis Cluster)"
            )
        return v

    @field_validator("postgres_dsn")
    @classmethod
    def _postgres_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgres://", "postgresql://")):
            raise ValueError("must start with postgresql:// or postgres://")
        return v

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, v: str | None) -> str | None:
        if v is None:
            return v
        for server in v.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError("must be host:port[,host:port...]")
        return v

    @field_validator("admin_token")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        if v is not None and len(v) < 16:
            raise ValueError("must be at least 16 characters")
        return v


PREFIX = "METER_"
OTHER_VARIABLES = frozenset({"METER_CHROMIUM"})
"""`METER_*` names read by something other than `Settings` (the test tools)."""
PLACEHOLDER_MARK = "change-me"
"""Shipped example secrets contain this; production refuses them."""


def unknown_variables(environ: Mapping[str, str]) -> dict[str, str | None]:
    """`METER_*` variables that no setting reads, each with the closest known name (or None)."""
    known = {PREFIX + name.upper() for name in Settings.model_fields}
    unknown: dict[str, str | None] = {}
    for name in environ:
        if name.startswith(PREFIX) and name not in known and name not in OTHER_VARIABLES:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            unknown[name] = close[0] if close else None
    return unknown


def _describe_unknown(unknown: Mapping[str, str | None]) -> str:
    return "; ".join(
        f"{name}: unknown variable" + (f" (did you mean {close}?)" if close else "")
        for name, close in sorted(unknown.items())
    )


def load_settings() -> Settings:
    """Read settings, turning validation errors into one message naming each variable.

    A `METER_*` variable that no setting reads is an error in production and a warning on
    standard error locally; so is, in production, the placeholder admin token of `deploy/`.
    """
    unknown = unknown_variables(os.environ)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"METER_{field.upper()}: {err['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
    if settings.kafka_security_protocol.startswith("SASL_") and (
        settings.kafka_sasl_username is None or settings.kafka_sasl_password is None
    ):
        raise SettingsError(
            "invalid configuration: METER_KAFKA_SASL_USERNAME and METER_KAFKA_SASL_PASSWORD: "
            f"required with METER_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}"
        )
    factor, min_insync = settings.kafka_replication_factor, settings.kafka_min_insync_replicas
    if factor is not None and min_insync is not None and min_insync > factor:
        raise SettingsError(
            "invalid configuration: METER_KAFKA_MIN_INSYNC_REPLICAS: more than "
            "METER_KAFKA_REPLICATION_FACTOR"
        )
    if settings.env == "production":
        if unknown:
            raise SettingsError("invalid configuration: " + _describe_unknown(unknown))
        if settings.admin_token is None:
            raise SettingsError("invalid configuration: METER_ADMIN_TOKEN: required in production")
        if PLACEHOLDER_MARK in settings.admin_token:
            raise SettingsError(
                "invalid configuration: METER_ADMIN_TOKEN: still the example placeholder; "
                "set a long random secret"
            )
    elif unknown:
        print(f"meter: warning: {_describe_unknown(unknown)} (ignored)", file=sys.stderr)
    return settings


def require_servers(settings: Settings, services: frozenset[str] | set[str]) -> None:
    """In production every server a command uses must be configured: no local server is ever
    started there. Raises `SettingsError` naming each missing variable."""
    if settings.env != "production":
        return
    variables = {
        "kafka": ("METER_KAFKA_BOOTSTRAP", settings.kafka_bootstrap),
        "redis": ("METER_REDIS_URL", settings.redis_url),
        "postgres": ("METER_POSTGRES_DSN", settings.postgres_dsn),
    }
    missing = [variables[name][0] for name in sorted(services) if variables[name][1] is None]
    if missing:
        raise SettingsError(
            "invalid configuration: "
            + "; ".join(f"{name}: required in production" for name in missing)
        )
