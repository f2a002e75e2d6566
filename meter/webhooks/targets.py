"""Which URLs a webhook may be sent to.

Locally anything with an `http` or `https` URL is fine. In production (`METER_ENV=production`)
the host is resolved and every address it resolves to must be public: loopback, private,
link-local (cloud metadata), multicast, reserved and unspecified addresses are refused, at
creation (422 `webhook_target_forbidden`) and again before each delivery (the name may have
been pointed elsewhere since).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from meter.errors import InvalidInput

MAX_URL = 2000


class TargetForbidden(InvalidInput):
    """The URL's host is, or resolves to, an address webhooks may not reach here."""

    code = "webhook_target_forbidden"


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of an `http` or `https` URL; `InvalidInput` (`invalid_webhook_url`) if it
    is not one."""
    if len(url) > MAX_URL:
        raise InvalidInput(f"url is longer than {MAX_URL} characters", code="invalid_webhook_url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"url is not valid: {exc}", code="invalid_webhook_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            "url must be http:// or https:// with a host", code="invalid_webhook_url"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("url must not carry credentials", code="invalid_webhook_url")
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname, port if port is not None else default


def is_public(address: str) -> bool:
    """Whether `address` (an IP literal) is a global unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TargetForbidden(f"host {host!r} does not resolve: {exc.strerror}") from None
    return sorted({str(info[4][0]) for info in infos})


async def check_target(url: str, production: bool) -> None:
    """Refuse `url` when it is not a webhook URL, or, in production, when its host is or
    resolves to a non-public address."""
    host, port = parse_url(url)
    if not production:
        return
    for address in await resolve(host, port):
        if not is_public(address):
            raise TargetForbidden(
                f"{host} resolves to {address}, which webhooks may not reach in production"
            )
