"""Log format: JSON lines when the stream is not a terminal, console lines when it is."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from meter.logging import configure_logging


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
