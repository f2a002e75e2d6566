"""Structured logs: JSON lines when stdout is not a terminal, readable console lines when it is.

No secret reaches a log line. Tracebacks never carry local variables (structlog's dict
tracebacks and rich would otherwise print every frame's locals: bearer tokens, request headers),
and `redact_secrets` masks, in every value of every event (exception messages and rendered
tracebacks included):

- credentials in URLs (`postgresql://user:pw@`, `redis://:pw@`) and `password=` pairs;
- `Bearer` / `Basic` credentials, API keys (`mk_...`) and webhook signing secrets
  (`whsec_...`);
- secrets registered with `register_secret` (the admin token) wherever they appear;
- the whole value of keys named like a credential (`authorization`, `password`, `token`, ...).

Records of libraries that log through the standard library (aiokafka, asyncpg, uvicorn) go
through the same processors, so they are JSON lines in JSON mode and redacted as well.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

REDACTED = "***"

SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "password",
        "passwd",
        "secret",
        "token",
        "admin_token",
        "api_key",
    }
)
"""Keys (compared lower-cased) whose values are masked whole, in any nested mapping."""

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host and scheme://:password@host (up to the last @ of the netloc)
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*):[^/?#\s]*@"), rf"\1:{REDACTED}@"),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s,;'\"]+"), rf"\1\2{REDACTED}"),
    (re.compile(r"\bmk_[A-Za-z0-9_-]+"), f"mk_{REDACTED}"),
    # Webhook secrets are `whsec_` and standard base64 (`meter.webhooks.rules.new_secret`).
    (re.compile(r"(?i)\bwhsec_[A-Za-z0-9+/_=-]+"), f"whsec_{REDACTED}"),
    (
        re.compile(r"(?i)\b(password|passwd|pwd)(\s*[=:]\s*)('[^']*'|\"[^\"]*\"|[^\s&;,]+)"),
        rf"\1\2{REDACTED}",
    ),
)

_MIN_SECRET_LENGTH = 8
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Mask `value` wherever it appears in a log line from now on (short values are ignored:
    masking them would mangle ordinary words)."""
    global _secrets_re
    if value is None or len(value) < _MIN_SECRET_LENGTH or value in _secrets:
        return
    _secrets.add(value)
    longest_first = sorted(_secrets, key=len, reverse=True)
    _secrets_re = re.compile("|".join(re.escape(s) for s in longest_first))


_TRIGGERS = ("://", "bearer", "basic", "mk_", "whsec_", "pass", "pwd")
"""Every pattern of `_PATTERNS` needs one of these (lower-cased): text without any is left as
is without running the patterns, which keeps a log line cheap."""


def redact(text: str) -> str:
    """`text` with every credential it contains masked."""
    if _secrets_re is not None and len(text) >= _MIN_SECRET_LENGTH:
        text = _secrets_re.sub(REDACTED, text)
    lowered = text.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float | dt.datetime):
        return value
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if isinstance(k, str) and k.lower() in SECRET_KEYS and value[k]
                else _scrub(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, bytes):
        return redact(value.decode("latin-1"))
    # Anything else is rendered as text anyway (str() by the JSON serializer): redact that text.
    return redact(str(value))


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask credentials in every value (run after exceptions are rendered)."""
    return _scrub(event_dict)  # type: ignore[no-any-return]


def _orjson_dumps(value: object, **_: object) -> str:
    return orjson.dumps(value, default=str).decode()


def configure_logging(
    level: str = "info",
    fmt: LogFormat = "auto",
    stream: TextIO | None = None,
    *,
    secrets: Iterable[str | None] = (),
    cache_loggers: bool = True,
) -> None:
    """Configure structlog, and the standard library's root logger for third-party libraries,
    both writing to `stream` (stdout by default) through the same redacting processors.

    `fmt="auto"` picks JSON unless `stream` is a terminal. `secrets` (the admin token) are masked
    wherever they appear. `cache_loggers=False` when logging will be configured again (tests).
    """
    stream = stream or sys.stdout
    for secret in secrets:
        register_secret(secret)
    numeric = _LEVELS[level.lower()]
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Processor
    exceptions: Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        exceptions = structlog.processors.ExceptionRenderer(
            ExceptionDictTransformer(show_locals=False)
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        # Rendered to text here (without locals) so that the text is redacted before printing.
        exceptions = structlog.processors.format_exc_info
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    tail: list[Processor] = [
        structlog.processors.StackInfoRenderer(),
        exceptions,
        redact_secrets,
        renderer,
    ]
    global _json_stream, _info_enabled
    _json_stream = stream if as_json else None
    _info_enabled = numeric <= logging.INFO
    structlog.configure(
        processors=[*shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=cache_loggers,
    )
    # Libraries (aiokafka, asyncpg, uvicorn) log through the standard library: warnings and up.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))


_json_stream: TextIO | None = None
_info_enabled = True
_request_log = structlog.get_logger("meter.api")


def log_request(failed: bool, **fields: str | int | None) -> None:
    """The API's one `request` line per request (warning level when `failed`).

    Its fields are the API's own (method, route template, status, timing, a request id that
    passed its pattern, a key id), never caller text, so in JSON mode the line is written
    directly: a few microseconds instead of the processors' tens, which matters at thousands of
    checks a second. Console mode goes through structlog as usual."""
    stream = _json_stream
    if stream is None:
        (_request_log.warning if failed else _request_log.info)("request", **fields)
        return
    if not failed and not _info_enabled:
        return
    line = {
        "event": "request",
        "level": "warning" if failed else "info",
        "timestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        **fields,
    }
    stream.write(orjson.dumps(line).decode() + "\n")
    stream.flush()
