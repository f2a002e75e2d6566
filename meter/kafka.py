"""How meter's Kafka clients connect, and how the topics it creates are replicated.

Every producer, consumer and admin client of the service is built with `client_options()`: the
security protocol (`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`), SASL `PLAIN` or
`SCRAM-SHA-256`/`SCRAM-SHA-512` credentials, and for TLS a context from a CA file and an optional
client certificate and key. The options are set once per process from `Settings` (`configure`,
which `meter.cli` calls at start-up), so the many places that only know a bootstrap address need no
settings of their own. Producers always ask for `acks=all`.

Topics meter creates when they are missing (`meter.services.ensure_topics`) get
`replication_factor` and `min.insync.replicas` from the settings: in production 3 and 2 unless
set, locally 1 and 1 (the local broker is one node).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from aiokafka.helpers import create_ssl_context

if TYPE_CHECKING:
    from meter.settings import Settings

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_options: dict[str, Any] = {"security_protocol": "PLAINTEXT"}


def options_for(settings: Settings) -> dict[str, Any]:
    """The client keyword arguments (aiokafka) that `settings` ask for."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
            password=settings.kafka_ssl_key_password,
        )
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def configure(settings: Settings) -> None:
    """Use `settings`' security options for every Kafka client this process builds from now on."""
    global _options
    _options = options_for(settings)


def client_options() -> dict[str, Any]:
    """Keyword arguments for every `AIOKafkaProducer`, `AIOKafkaConsumer` and admin client."""
    return dict(_options)


def replication(settings: Settings) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) of the topics meter creates."""
    production = settings.env == "production"
    factor = settings.kafka_replication_factor or (3 if production else 1)
    min_insync = settings.kafka_min_insync_replicas or (min(2, factor) if production else 1)
    return factor, min_insync
