"""`GET /ui/...`: the dashboard's static files (`meter.ui.assets`), public: the pages carry no
data, every call they make sends the key the person signed in with. Matched only after the route
table found nothing, so the routes of the table, the hot ones first, pay nothing for it."""

from __future__ import annotations

from meter.api.http import Response
from meter.errors import MethodNotAllowed, NotFound
from meter.ui import assets

ROUTE = "/ui/"
"""The route template reported for every dashboard file (metrics, logs)."""

_REDIRECT = Response(308, b"", [(b"location", ROUTE.encode())])


def serve(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Response:
    """The file at `path`, a 304 when the caller's `If-None-Match` holds its ETag, a redirect
    from `/ui` to `/ui/`; 404 `route_not_found` for anything that is not a shipped file."""
    if method != "GET":
        raise MethodNotAllowed(f"{method} is not allowed on {path}")
    if path == "/ui":
        return _REDIRECT
    asset = assets.lookup(path)
    if asset is None:
        raise NotFound("no such route", code="route_not_found")
    for name, value in headers:
        if name == b"if-none-match" and asset.etag in value.split(b", "):
            return Response(304, b"", [h for h in asset.headers if h[0] != b"content-type"])
    return Response(200, asset.body, list(asset.headers))
