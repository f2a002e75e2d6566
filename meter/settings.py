"""Service configuration: one `Settings`, read from `METER_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    redis_url: str | None = None
    postgres_dsn: str | None = None

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    admin_token: str | None = None
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

    max_future_skew_s: int = Field(default=300, ge=0)
    max_event_credits: int = Field(default=10**12, gt=0)
    """Largest credits value accepted on one event, in micro-credits (default 1,000,000 credits)."""

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
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


def load_settings() -> Settings:
    """Read settings, turning validation errors into one message naming each variable."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"METER_{field.upper()}: {err['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
    if settings.env == "production" and settings.admin_token is None:
        raise SettingsError("invalid configuration: METER_ADMIN_TOKEN: required in production")
    return settings
