"""Kafka settings reach every client the service builds and the topics it creates."""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from consumers.settle import build_consumer
from meter import kafka
from meter.engine.model import Ledger
from meter.services import ensure_topics, kafka_admin, new_topics
from meter.settings import Settings, SettingsError, load_settings


@pytest.fixture
def restore_kafka_options() -> Iterator[None]:
    saved = kafka.client_options()
    yield
    kafka._options = saved


def secured(**extra: Any) -> Settings:
    return Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="meter",
        kafka_sasl_password="s3cret-password",
        kafka_ssl_cafile=Path(certifi.where()),
        **extra,
    )


def assert_secured(client: Any) -> None:
    assert client._security_protocol == "SASL_SSL"
    assert client._sasl_mechanism == "SCRAM-SHA-512"
    assert client._sasl_plain_username == "meter"
    assert client._sasl_plain_password == "s3cret-password"
    assert isinstance(client._ssl_context, ssl.SSLContext)


async def test_security_settings_reach_the_clients(restore_kafka_options: None) -> None:
    kafka.configure(secured())
    admin = kafka_admin("127.0.0.1:9")
    assert isinstance(admin, AIOKafkaAdminClient)
    assert_secured(admin._client)
    settings = secured(kafka_bootstrap="127.0.0.1:9", postgres_dsn="postgresql://u@h/db")
    consumer = build_consumer(settings, Ledger())
    try:
        assert_secured(consumer.consumer._client)
        assert_secured(consumer.producer.client)
    finally:
        await consumer.consumer.stop()
        await consumer.producer.stop()


def test_plaintext_is_the_default() -> None:
    assert kafka.options_for(Settings()) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize(
    ("env", "variables", "expected"),
    [
        ({}, {}, (1, 1)),
        ({"METER_ENV": "production"}, {}, (3, 2)),
        (
            {},
            {"METER_KAFKA_REPLICATION_FACTOR": "5", "METER_KAFKA_MIN_INSYNC_REPLICAS": "3"},
            (5, 3),
        ),
        ({"METER_ENV": "production"}, {"METER_KAFKA_REPLICATION_FACTOR": "1"}, (1, 1)),
    ],
)
def test_replication_of_created_topics(
    env: dict[str, str],
    variables: dict[str, str],
    expected: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("METER_"):
            monkeypatch.delenv(name)
    for name, value in {**env, **variables}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("METER_ADMIN_TOKEN", "a-long-random-production-secret")
    assert kafka.replication(load_settings()) == expected
    (topic,) = new_topics(["t"], {"t": 6}, expected)
    assert (topic.num_partitions, topic.replication_factor) == (6, expected[0])
    assert topic.topic_configs == {"min.insync.replicas": str(expected[1])}


def test_inconsistent_kafka_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("METER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("METER_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(SettingsError, match="METER_KAFKA_SASL_USERNAME"):
        load_settings()
    monkeypatch.setenv("METER_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.setenv("METER_KAFKA_REPLICATION_FACTOR", "2")
    monkeypatch.setenv("METER_KAFKA_MIN_INSYNC_REPLICAS", "3")
    with pytest.raises(SettingsError, match="METER_KAFKA_MIN_INSYNC_REPLICAS"):
        load_settings()


async def test_topics_are_created_with_their_replication_settings(kafka_bootstrap: str) -> None:
    """The broker takes the creation request with its replication factor and config (the local
    broker has one node: factor 1)."""
    name = f"test.replication.{uuid.uuid4().hex[:12]}"
    assert await ensure_topics(kafka_bootstrap, {name: 2}, 10.0, (1, 1)) == [name]
    assert await ensure_topics(kafka_bootstrap, {name: 2}, 10.0, (1, 1)) == []
