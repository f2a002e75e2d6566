"""`/ui/`: the dashboard's files served by the API process, public, typed, revalidated, and
nothing outside the shipped files reachable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import unquote

import httpx
import pytest
import pytest_asyncio
from api.support import Addresses

from meter.api import build_app, ui
from meter.errors import NotFound
from meter.settings import Settings
from meter.ui import assets


@pytest_asyncio.fixture(loop_scope="session")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API application without its lifespan: static files need no Redis or PostgreSQL."""
    app = build_app(settings, Addresses("redis://127.0.0.1:1", "postgresql://x@127.0.0.1:1/x", ""))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://meter") as c:
        yield c


async def test_the_index_page_without_a_key(client: httpx.AsyncClient) -> None:
    r = await client.get("/ui/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert b'<script type="module" src="js/main.js">' in r.content
    assert r.content == (assets.STATIC / "index.html").read_bytes()
    r = await client.get("/ui")
    assert (r.status_code, r.headers["location"]) == (308, "/ui/")


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/ui/js/main.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/vendor/uplot/uPlot.esm.js", "text/javascript; charset=utf-8"),
        ("/ui/vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
        ("/ui/vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
    ],
)
async def test_files_carry_their_content_type(
    client: httpx.AsyncClient, path: str, kind: str
) -> None:
    r = await client.get(path)
    assert r.status_code == 200, path
    assert r.headers["content-type"] == kind
    assert r.content == (assets.STATIC / path.removeprefix("/ui/")).read_bytes()


async def test_an_unchanged_file_is_a_304(client: httpx.AsyncClient) -> None:
    first = await client.get("/ui/js/api.js")
    etag = first.headers["etag"]
    again = await client.get("/ui/js/api.js", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    other = await client.get("/ui/js/api.js", headers={"if-none-match": '"stale"'})
    assert other.status_code == 200 and other.content == first.content


@pytest.mark.parametrize(
    "path",
    [
        "/ui/../pyproject.toml",
        "/ui/%2e%2e/%2e%2e/pyproject.toml",
        "/ui/..%2f..%2fassets.py",
        "/ui/js/../../assets.py",
        "/ui/%2e%2e%2fassets.py",
        "/ui//etc/passwd",
        "/ui/js/",
        "/ui/nope.html",
        "/ui/vendor",
        "/ui/index.html/",
    ],
)
async def test_nothing_outside_the_shipped_files(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 404, (path, r.text)
    assert r.json()["error"]["code"] == "route_not_found"
    # The client may tidy the path; the handler sees it as the server would, decoded and raw.
    for seen in (path, unquote(path)):
        with pytest.raises(NotFound):
            ui.serve("GET", seen, [])


async def test_only_get(client: httpx.AsyncClient) -> None:
    r = await client.post("/ui/", content=b"x")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_every_shipped_file_is_in_the_table() -> None:
    table = assets.table()
    shipped = [p for p in assets.STATIC.rglob("*") if p.is_file()]
    assert len(shipped) >= 15
    for path in shipped:
        assert "/ui/" + path.relative_to(assets.STATIC).as_posix() in table, path
