"""The dashboard's static files, served at `/ui/` by the API (`meter.api.app`).

Only files found under `static/` when the table is built can be served: a request path is looked up
in that table, never joined to a directory, so `..`, encoded separators or absolute paths find
nothing. Every answer revalidates (`no-cache` with a strong ETag, 304 on a match), so a new release
is picked up at once without build-time file hashing.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

STATIC = Path(__file__).parent / "static"
PREFIX = "/ui/"

TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".json": b"application/json",
    ".md": b"text/plain; charset=utf-8",
    "": b"text/plain; charset=utf-8",
}
"""Content type by suffix; files of other suffixes are not served."""

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
)
"""The page holds an API key in session storage: no framing, no foreign scripts, no referrer."""


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    etag: bytes
    headers: tuple[tuple[bytes, bytes], ...]


def _asset(path: Path) -> Asset | None:
    kind = TYPES.get(path.suffix)
    if kind is None:
        return None
    body = path.read_bytes()
    etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
    headers = (
        (b"content-type", kind),
        (b"cache-control", b"no-cache"),
        (b"etag", etag),
        *SECURITY_HEADERS,
    )
    return Asset(body, etag, headers)


@functools.cache
def table(root: Path = STATIC) -> dict[str, Asset]:
    """URL path (under `/ui/`) -> asset, for every servable file under `root`; `/ui/` is the
    index page."""
    out: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        asset = _asset(path)
        if asset is not None:
            out[PREFIX + path.relative_to(root).as_posix()] = asset
    index = out.get(PREFIX + "index.html")
    if index is not None:
        out[PREFIX] = index
    return out


def lookup(path: str) -> Asset | None:
    """The asset a request path names, or None."""
    return table().get(path)


def is_ui(path: str) -> bool:
    return path == "/ui" or path.startswith(PREFIX)
