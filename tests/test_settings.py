"""Settings: defaults, and invalid values rejected with a message naming the variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from meter.redis_client import cluster_seeds, is_cluster
from meter.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("METER_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.env == "local"
    assert settings.usage_topic == "meter.usage.v1"
    assert settings.dlq_topic == "meter.usage.v1.dlq"
    assert settings.kafka_bootstrap is None
    assert settings.redis_url is None
    assert settings.postgres_dsn is None
    assert settings.data_dir == Path(".meter")


def test_values_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METER_KAFKA_BOOTSTRAP", "k1:9092,k2:9093")
    monkeypatch.setenv("METER_REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("METER_POSTGRES_DSN", "postgresql://u@db/meter")
    monkeypatch.setenv("METER_TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("METER_DATA_DIR", "/var/lib/meter")
    settings = load_settings()
    assert settings.kafka_bootstrap == "k1:9092,k2:9093"
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.postgres_dsn == "postgresql://u@db/meter"
    assert settings.topic_partitions == 12
    assert settings.data_dir == Path("/var/lib/meter")


def test_a_cluster_url_names_its_seed_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "redis+cluster://user:s%40cret@r1:7000,r2:7001/"
    monkeypatch.setenv("METER_REDIS_URL", url)
    assert load_settings().redis_url == url
    assert cluster_seeds(url) == ([("r1", 7000), ("r2", 7001)], "user", "s@cret")
    assert is_cluster(url) and not is_cluster("redis://r1:7000/0")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("METER_ENV", "staging"),
        ("METER_KAFKA_BOOTSTRAP", "broker-without-port"),
        ("METER_KAFKA_BOOTSTRAP", "k1:9092,:9093"),
        ("METER_REDIS_URL", "http://127.0.0.1:6379"),
        ("METER_REDIS_URL", "redis+cluster://"),
        ("METER_REDIS_URL", "redis+cluster://r1:7000,r2"),
        ("METER_REDIS_URL", "redis+cluster://r1:7000/3"),
        ("METER_POSTGRES_DSN", "mysql://db/meter"),
        ("METER_TOPIC_PARTITIONS", "0"),
        ("METER_TOPIC_PARTITIONS", "many"),
        ("METER_API_PORT", "70000"),
        ("METER_ADMIN_TOKEN", "short"),
        ("METER_CONNECT_TIMEOUT_S", "0"),
        ("METER_LOG_LEVEL", "loud"),
        ("METER_LOG_FORMAT", "xml"),
        ("METER_MAX_EVENT_CREDITS", "0"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert variable in str(caught.value)


def test_every_invalid_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METER_REDIS_URL", "tcp://x")
    monkeypatch.setenv("METER_API_PORT", "-1")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "METER_REDIS_URL" in str(caught.value)
    assert "METER_API_PORT" in str(caught.value)


def test_production_requires_an_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METER_ENV", "production")
    with pytest.raises(SettingsError, match="METER_ADMIN_TOKEN"):
        load_settings()
    monkeypatch.setenv("METER_ADMIN_TOKEN", "x" * 32)
    assert load_settings().env == "production"


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.topic_partitions = 3


def test_cli_exits_2_naming_the_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    env["METER_TOPIC_PARTITIONS"] = "0"
    result = subprocess.run(
        [sys.executable, "-m", "meter.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "METER_TOPIC_PARTITIONS" in result.stderr


def test_empty_value_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METER_REDIS_URL", "")
    monkeypatch.setenv("METER_TOPIC_PARTITIONS", "")
    settings = load_settings()
    assert settings.redis_url is None
    assert settings.topic_partitions == 4


def _meter(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("METER_")}
    return subprocess.run(
        [sys.executable, "-m", "meter.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        ("migrate", ["METER_POSTGRES_DSN"]),
        ("api", ["METER_KAFKA_BOOTSTRAP", "METER_POSTGRES_DSN", "METER_REDIS_URL"]),
        ("scheduler", ["METER_KAFKA_BOOTSTRAP", "METER_POSTGRES_DSN", "METER_REDIS_URL"]),
        ("consume", ["METER_KAFKA_BOOTSTRAP", "METER_POSTGRES_DSN", "METER_REDIS_URL"]),
    ],
)
def test_production_never_starts_a_local_server(
    command: str, missing: list[str], tmp_path: Path
) -> None:
    env = {
        "METER_ENV": "production",
        "METER_ADMIN_TOKEN": "a-long-random-production-secret",
        "METER_DATA_DIR": str(tmp_path),
    }
    result = _meter(env, command)
    assert result.returncode == 2, result.stderr
    for variable in missing:
        assert f"{variable}: required in production" in result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be created for a local server"


def test_production_refuses_the_placeholder_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METER_ENV", "production")
    shipped = (Path(__file__).resolve().parent.parent / "deploy" / "meter.env").read_text()
    token = next(
        line.split("=", 1)[1]
        for line in shipped.splitlines()
        if line.startswith("METER_ADMIN_TOKEN=")
    )
    monkeypatch.setenv("METER_ADMIN_TOKEN", token)
    with pytest.raises(SettingsError, match="METER_ADMIN_TOKEN: still the example placeholder"):
        load_settings()


def test_unknown_variable_is_an_error_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METER_ENV", "production")
    monkeypatch.setenv("METER_ADMIN_TOKEN", "a-long-random-production-secret")
    monkeypatch.setenv("METER_REDIS_ULR", "redis://cache:6379/0")
    with pytest.raises(
        SettingsError,
        match=re.escape("METER_REDIS_ULR: unknown variable (did you mean METER_REDIS_URL?)"),
    ):
        load_settings()


def test_unknown_variable_is_a_warning_locally(capsys: pytest.CaptureFixture[str]) -> None:
    result = _meter({"METER_TOPIC_PARTITONS": "8"}, "--version")
    assert result.returncode == 0
    os.environ["METER_TOPIC_PARTITONS"] = "8"
    try:
        load_settings()
    finally:
        del os.environ["METER_TOPIC_PARTITONS"]
    err = capsys.readouterr().err
    assert (
        "warning: METER_TOPIC_PARTITONS: unknown variable (did you mean METER_TOPIC_PARTITIONS?)"
        in err
    )


def test_version() -> None:
    from meter import __version__

    result = _meter({}, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"meter {__version__}"


def test_max_event_credits_stays_within_the_engine_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METER_MAX_EVENT_CREDITS", str(2**53 - 1))
    assert load_settings().max_event_credits == 2**53 - 1
    monkeypatch.setenv("METER_MAX_EVENT_CREDITS", str(2**53))
    with pytest.raises(SettingsError, match="METER_MAX_EVENT_CREDITS"):
        load_settings()


async def test_the_consumer_session_timeout_reaches_the_group_member(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`METER_CONSUMER_SESSION_TIMEOUT_MS` is the settlement consumer's `session.timeout.ms`,
    with heartbeats every third of it (at most 3 s); below 1 s it is refused."""
    from consumers.settle import build_consumer
    from meter.engine.model import Ledger

    base = {"METER_KAFKA_BOOTSTRAP": "127.0.0.1:9", "METER_POSTGRES_DSN": "postgresql://u@db/m"}
    for name, value in base.items():
        monkeypatch.setenv(name, value)
    for session_ms, heartbeat_ms in ((None, 3_000), ("4500", 1_500), ("60000", 3_000)):
        if session_ms is not None:
            monkeypatch.setenv("METER_CONSUMER_SESSION_TIMEOUT_MS", session_ms)
        built = build_consumer(load_settings(), Ledger())
        member = built.consumer
        assert member._session_timeout_ms == int(session_ms or 10_000)
        assert member._heartbeat_interval_ms == heartbeat_ms
        await member.stop()
        await built.producer.stop()
    monkeypatch.setenv("METER_CONSUMER_SESSION_TIMEOUT_MS", "500")
    with pytest.raises(SettingsError, match="METER_CONSUMER_SESSION_TIMEOUT_MS"):
        load_settings()
