"""A small ASGI core: routes, request bodies with a size limit, JSON responses, error mapping.

The quota checks must answer in well under a millisecond, so the API is a bare ASGI application
rather than a framework: a route table matched by path segments, `orjson` for bodies, pydantic
only to validate request bodies. Domain errors (`meter.errors`) become HTTP statuses here and
only here.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, parse_qsl

import orjson
from pydantic import BaseModel, ValidationError

from meter.auth import Principal, Scope
from meter.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    MalformedRequest,
    MeterError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
)

if TYPE_CHECKING:
    from meter.api.app import App

Scope_ = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024
"""Largest request body of every route but batch ingest."""

STATUS: dict[type[MeterError], int] = {
    MalformedRequest: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    RateLimited: 429,
    Unavailable: 503,
}


def status_of(error: MeterError) -> int:
    for cls in type(error).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=lambda: JSON_HEADERS)
    stream: AsyncIterator[bytes] | None = None
    """When set, the body is these chunks (sent as they come, no content-length), not `body`."""


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(payload))


def model_response(model: BaseModel, status: int = 200) -> Response:
    return Response(status, model.__pydantic_serializer__.to_json(model))


NO_CONTENT = Response(204, b"", [])


def error_body(error: MeterError) -> bytes:
    return orjson.dumps(
        {"error": {"code": error.code, "message": error.message, "details": error.details}}
    )


def error_response(error: MeterError) -> Response:
    return Response(status_of(error), error_body(error))


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a request body may have (no request needs more than a
few levels); deeper bodies are refused before anything walks them recursively."""

_SURROGATE = re.compile("[\ud800-\udfff]").search


def storable(text: str) -> bool:
    """Whether PostgreSQL can store `text`: no NUL character, no lone surrogate (not UTF-8)."""
    return "\x00" not in text and (text.isascii() or _SURROGATE(text) is None)


def _escaped(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii") if not storable(text) else text


class _Unstorable(Exception):
    """Raised by `_scan` at the bad string; each level on the way out prepends its key."""

    def __init__(self) -> None:
        self.loc: list[str] = []


def _scan(value: Any, depth: int) -> bool:
    """Walk a decoded body: refuse nesting beyond `MAX_JSON_DEPTH` and text PostgreSQL cannot
    store (in keys and values); return whether a float is in it."""
    kind = type(value)
    if kind is str:
        if not storable(value):
            raise _Unstorable
        return False
    if kind is float:
        return True
    if kind is dict:
        if depth >= MAX_JSON_DEPTH:
            raise _too_deep()
        found = False
        for key, item in value.items():
            try:
                if not storable(key):
                    raise _Unstorable
                found = _scan(item, depth + 1) or found
            except _Unstorable as exc:
                exc.loc.append(_escaped(key))
                raise
        return found
    if kind is list:
        if depth >= MAX_JSON_DEPTH:
            raise _too_deep()
        found = False
        for index, item in enumerate(value):
            try:
                found = _scan(item, depth + 1) or found
            except _Unstorable as exc:
                exc.loc.append(str(index))
                raise
        return found
    return False


def _too_deep() -> MalformedRequest:
    return MalformedRequest(f"body is nested deeper than {MAX_JSON_DEPTH} levels")


def unstorable(loc: str) -> InvalidInput:
    """The 422 of text PostgreSQL cannot store, naming where it is."""
    detail = {
        "loc": loc,
        "type": "unstorable_text",
        "message": "text must not contain NUL characters or lone surrogates",
    }
    return InvalidInput(f"{loc}: text cannot be stored", details=[detail])


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(body: bytes) -> Any:
    """Parse a JSON body. Numbers with a fraction or exponent keep their literal text (a `str`),
    so credits are parsed exactly by `meter.money` and never pass through a float.

    Nesting beyond `MAX_JSON_DEPTH` is a `MalformedRequest`; text PostgreSQL cannot store,
    anywhere in the body, an `InvalidInput` naming its place (`unstorable_text`)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"body is not JSON: {exc}", code="invalid_json") from None
    try:
        has_float = _scan(value, 0)
    except _Unstorable as exc:
        raise unstorable(".".join(reversed(exc.loc))) from None
    if has_float:
        value = json.loads(body, parse_float=str, parse_constant=_no_constant)
    return value


def check_query(query: bytes) -> None:
    """Refuse a query string whose decoded names or values PostgreSQL cannot store (a percent
    encoded NUL: percent-decoding yields no lone surrogate, invalid UTF-8 becomes U+FFFD)."""
    if b"%00" not in query and b"\x00" not in query:
        return
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if not (storable(name) and storable(value)):
            raise unstorable(f"query.{_escaped(name)}")


def validation_error(exc: ValidationError) -> InvalidInput:
    details = [
        {"loc": ".".join(str(p) for p in err["loc"]), "type": err["type"], "message": err["msg"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    return InvalidInput("request body is not valid", details=details)


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: bytes) -> M:
    data = decode_json(body) if body else None
    if type(data) is not dict:
        raise InvalidInput("request body must be a JSON object", code="invalid_input")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


class Call:
    """One request as a handler sees it."""

    __slots__ = ("app", "body", "headers", "method", "params", "path", "principal", "query")

    def __init__(
        self,
        app: App,
        method: str,
        path: str,
        query: bytes,
        headers: Mapping[str, str],
        params: dict[str, str],
    ) -> None:
        self.app = app
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.params = params
        self.body = b""
        self.principal: Principal | None = None

    @property
    def who(self) -> Principal:
        assert self.principal is not None, "route without authentication"
        return self.principal


def query_params(call: Call, known: Collection[str]) -> dict[str, str]:
    """The query string as a dict; an unknown or repeated parameter is 422 `invalid_query`."""
    if not call.query:
        return {}
    try:
        parsed = parse_qs(call.query.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise InvalidInput("query string is not UTF-8", code="invalid_query") from None
    out: dict[str, str] = {}
    for name, values in parsed.items():
        if name not in known:
            raise InvalidInput(f"unknown query parameter {name[:40]!r}", code="invalid_query")
        if len(values) != 1:
            raise InvalidInput(f"query parameter {name!r} given twice", code="invalid_query")
        out[name] = values[0]
    return out


Handler = Callable[[Call], Awaitable[Response]]


class Access:
    """Who may call a route."""

    PUBLIC = "public"
    ADMIN = "admin"
    """Admin keys only (global objects: plans, organizations, admin keys)."""
    ORG = "org"
    """The `{org_id}` of the path, with one of the route's scopes (admin always)."""
    BODY_ORG = "body_org"
    """The organization named in the body: the handler checks it with `require_org`."""
    KEY = "key"
    """Any valid key, of every scope (it only learns about itself)."""


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    access: str
    scopes: tuple[Scope, ...] = ()
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    max_body: int = MAX_BODY_BYTES
    content_types: tuple[str, ...] = ("application/json",)
    tag: str = ""


_PARAM = re.compile(r"[A-Za-z0-9._:@-]{1,128}").fullmatch
"""Path parameters are ids; anything else cannot name an existing object."""


def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.strip("/").split("/"))


class Router:
    """Exact paths by dictionary; parameterized paths (`{name}` segments) by segment match."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._exact: dict[str, dict[str, Route]] = {}
        self._patterns: dict[int, list[tuple[Route, tuple[str, ...]]]] = {}
        for route in routes:
            if "{" in route.path:
                segments = _segments(route.path)
                self._patterns.setdefault(len(segments), []).append((route, segments))
            else:
                self._exact.setdefault(route.path, {})[route.method] = route

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        by_method = self._exact.get(path)
        if by_method is not None:
            route = by_method.get(method)
            if route is None:
                raise MethodNotAllowed(f"{method} is not allowed on {path}")
            return route, {}
        parts = tuple(path.strip("/").split("/"))
        wrong_method = False
        for route, segments in self._patterns.get(len(parts), ()):
            params: dict[str, str] = {}
            for want, got in zip(segments, parts, strict=True):
                if want[0] == "{":
                    if _PARAM(got) is None:
                        break
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                if route.method == method:
                    return route, params
                wrong_method = True
        if wrong_method:
            raise MethodNotAllowed(f"{method} is not allowed on {path}")
        raise NotFound("no such route", code="route_not_found")


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise MalformedRequest("client disconnected", code="disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_response(
    send: Send, response: Response, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """Send `response`, with the `extra` headers (the request id) after its own."""
    if response.stream is not None:
        await _send_stream(send, response, response.stream, extra)
        return
    headers = [*response.headers, *extra, (b"content-length", str(len(response.body)).encode())]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _send_stream(
    send: Send,
    response: Response,
    chunks: AsyncIterator[bytes],
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    headers = [*response.headers, *extra]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    try:
        async for chunk in chunks:
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    await send({"type": "http.response.body", "body": b""})
