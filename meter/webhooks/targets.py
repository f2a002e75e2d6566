"""Which URLs a webhook may be sent to.

Locally anything with an `http` or `https` URL is fine. In production (`METER_ENV=production`)
the host is resolved and every address it resolves to must be public: loopback, private,
link-local (cloud metadata), multicast, reserved and unspecified addresses are refused, at
creation (422 `webhook_target_forbidden`) and again before each delivery (the name may have
been pointed elsewhere since). The delivery then connects to the address it checked (`pin`), not
to whatever a second lookup would return, with the URL's host in `Host` and as the TLS server
name, so the certificate is still verified for the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit, urlunsplit

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
    except UnicodeError:
        raise TargetForbidden(f"host {host!r} is not a valid host name") from None
    return sorted({str(info[4][0]) for info in infos})


async def check_target(url: str, production: bool) -> list[str]:
    """Refuse `url` when it is not a webhook URL, or, in production, when its host is or
    resolves to a non-public address. Returns the checked addresses (none locally)."""
    host, port = parse_url(url)
    if not production:
        return []
    addresses = await resolve(host, port)
    for address in addresses:
        if not is_public(address):
            raise TargetForbidden(
                f"{host} resolves to {address}, which webhooks may not reach in production"
            )
    return addresses


def pin(url: str, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """`url` aimed at `address` (one its host resolved to): the URL to request, the headers and
    the httpx request extensions that keep the host for HTTP and TLS."""
    parts = urlsplit(url)
    host, port = parse_url(url)
    literal = f"[{address}]" if ":" in address else address
    pinned = urlunsplit(parts._replace(netloc=f"{literal}:{port}"))
    return pinned, {"host": parts.netloc}, {"sni_hostname": host}
