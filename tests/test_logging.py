"""Log format: JSON lines when the stream is not a terminal, console lines when it is."""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Iterator

import orjson
import pytest
import structlog

from meter.logging import LogFormat, configure_logging, redact
from meter.webhooks.rules import new_secret


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging("info", "auto", stream)
    structlog.get_logger("t").info("batch settled", events=3, lag_ms=12)
    structlog.get_logger("t").debug("hidden")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    record = orjson.loads(lines[0])
    assert record["event"] == "batch settled"
    assert record["events"] == 3
    assert record["level"] == "info"
    assert "timestamp" in record


def test_console_lines_on_a_terminal() -> None:
    stream = Terminal()
    configure_logging("debug", "auto", stream)
    structlog.get_logger("t").debug("batch settled", events=3)
    output = stream.getvalue()
    assert "batch settled" in output
    assert "events" in output
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(output.splitlines()[0])


def test_format_can_be_forced() -> None:
    stream = Terminal()
    configure_logging("warning", "json", stream)
    structlog.get_logger("t").info("hidden")
    structlog.get_logger("t").warning("shown")
    assert orjson.loads(stream.getvalue())["event"] == "shown"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://meter:s3cr@t-pw@db:5432/meter", "s3cr@t-pw"),
        ("connecting to redis://:hunter2-pw@redis:6379/0 failed", "hunter2-pw"),
        ("rediss://user:pa55word@cache/1", "pa55word"),
        ("host=db port=5432 password=kw-secret user=meter", "kw-secret"),
        ("Authorization: Bearer mk_Zx9-abc_DEF123", "mk_Zx9-abc_DEF123"),
        ("Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ("key mk_Zx9-abc_DEF123 not found", "Zx9-abc_DEF123"),
    ],
)
def test_redact_masks_credentials(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked
    assert "***" in masked


def test_registered_secrets_and_credential_keys_are_masked() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream, secrets=["the-admin-token-value"])
    structlog.get_logger("t").warning(
        "request",
        note="sent the-admin-token-value",
        headers={"Authorization": "anything at all", "accept": "*/*"},
        password="plain",
    )
    record = orjson.loads(stream.getvalue())
    assert "the-admin-token-value" not in stream.getvalue()
    assert record["headers"] == {"Authorization": "***", "accept": "*/*"}
    assert record["password"] == "***"


def test_standard_library_records_are_json_and_redacted() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    try:
        raise ConnectionError("cannot reach postgresql://u:lib-secret@db/meter")
    except ConnectionError:
        logging.getLogger("asyncpg.pool").warning("retrying %s", "redis://:pw-2@r", exc_info=True)
    record = orjson.loads(stream.getvalue())
    assert record["logger"] == "asyncpg.pool"
    assert record["level"] == "warning"
    assert record["event"] == "retrying redis://:***@r"
    assert record["exception"][0]["exc_value"] == "cannot reach postgresql://u:***@db/meter"
    assert "lib-secret" not in stream.getvalue()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_tracebacks_carry_no_local_variables(fmt: LogFormat) -> None:
    stream = io.StringIO()
    configure_logging("info", fmt, stream)

    def lookup(token: str) -> None:
        unrelated_local = "local-value-" + token
        raise KeyError(len(unrelated_local))

    credential = "opaque-" + secrets.token_hex(8)
    try:
        lookup(credential)
    except KeyError:
        structlog.get_logger("t").error("lookup failed", exc_info=True)
    output = stream.getvalue()
    assert "lookup failed" in output and "KeyError" in output
    assert credential not in output
    assert "local-value-" not in output


def test_the_request_line_is_json_with_the_request_fields() -> None:
    from meter.logging import log_request

    stream = io.StringIO()
    configure_logging("info", "json", stream=stream, cache_loggers=False)
    log_request(False, method="POST", route="/v1/check", status=200, us=87, request_id="r-1")
    log_request(True, method="GET", route="/readyz", status=503, us=9, request_id="r-2")
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "request" and first["level"] == "info"
    assert (first["route"], first["status"], first["request_id"]) == ("/v1/check", 200, "r-1")
    assert first["timestamp"].endswith("Z")
    assert (second["level"], second["status"]) == ("warning", 503)
    stream = io.StringIO()
    configure_logging("warning", "json", stream=stream, cache_loggers=False)
    log_request(False, method="POST", route="/v1/check", status=200, us=87, request_id="r-3")
    assert stream.getvalue() == ""


def test_webhook_secrets_are_masked_everywhere() -> None:
    secret = new_secret()
    rotated = "whsec_MfKQ9r8+GKYqrT/wjUPD8ILPZIo2LaLa=="  # every base64 character kind
    assert redact(f"endpoint secret {secret}, previous {rotated}.") == (
        "endpoint secret whsec_***, previous whsec_***."
    )
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    try:
        raise ValueError(f"cannot sign with {secret}")
    except ValueError:
        structlog.get_logger("t").warning("sign failed", body={"note": [rotated]}, exc_info=True)
    logging.getLogger("aiokafka").warning("posting with %s", secret)
    text = stream.getvalue()
    assert secret.removeprefix("whsec_") not in text
    assert rotated.removeprefix("whsec_") not in text
    assert text.count("whsec_***") == 3, text
