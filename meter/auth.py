"""API keys: bearer tokens stored hashed, three scopes, a short in-process cache.

- `admin`: everything, every organization (including the bootstrap key from `Settings.admin_token`).
- `org_admin`: administration of one organization.
- `product`: check, reserve, release and event ingest for one organization.

A token is `mk_` followed by 32 random bytes (base64url). Only its SHA-256 is stored; the token is
shown once, at creation. Verified keys are cached in-process for `CACHE_TTL_S` seconds so the quota
hot path never waits on PostgreSQL: a revoked key stops working within that many seconds in every
process (immediately in the process that revoked it).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

import asyncpg  # type: ignore[import-untyped]

from meter.errors import Forbidden, NotFound, Unauthenticated

TOKEN_PREFIX = "mk_"
CACHE_TTL_S = 5.0
NEGATIVE_TTL_S = 1.0
CACHE_MAX = 100_000


class Scope(StrEnum):
    ADMIN = "admin"
    ORG_ADMIN = "org_admin"
    PRODUCT = "product"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's id, its scope, and its organization (None for `admin`)."""

    key_id: str
    scope: Scope
    org_id: str | None

    def require_admin(self) -> None:
        """Global operations (plans, organizations, admin keys)."""
        if self.scope is not Scope.ADMIN:
            raise Forbidden("this operation needs an admin key")

    def require_org(self, org_id: str, *scopes: Scope) -> None:
        """Access to `org_id` with one of `scopes` (admin always passes).

        Another organization's key gets NotFound, never Forbidden: existence does not leak.
        """
        if self.scope is Scope.ADMIN:
            return
        if self.org_id != org_id:
            raise NotFound("organization not found", code="org_not_found")
        if self.scope not in scopes:
            raise Forbidden(f"a {self.scope.value} key cannot do this")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


BOOTSTRAP_KEY_ID = "bootstrap"

_LOOKUP = """
SELECT key_id, scope, org_id FROM api_keys WHERE token_hash = $1 AND revoked_at IS NULL
"""


class KeyVerifier:
    """Resolves bearer tokens to principals, caching results for a few seconds."""

    def __init__(
        self, pool: asyncpg.Pool, admin_token: str | None, ttl_s: float = CACHE_TTL_S
    ) -> None:
        self._pool = pool
        self._admin_hash = hash_token(admin_token) if admin_token else None
        self._ttl = ttl_s
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

    async def verify(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated("missing Authorization: Bearer <key>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 256:
            raise Unauthenticated("expected Authorization: Bearer <key>")
        digest = hash_token(token)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Principal(BOOTSTRAP_KEY_ID, Scope.ADMIN, None)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            principal = hit[1]
        else:
            principal = await self._lookup(digest)
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            ttl = self._ttl if principal is not None else min(self._ttl, NEGATIVE_TTL_S)
            self._cache[digest] = (now + ttl, principal)
        if principal is None:
            raise Unauthenticated("unknown or revoked key")
        return principal

    async def _lookup(self, digest: bytes) -> Principal | None:
        row = await self._pool.fetchrow(_LOOKUP, digest)
        if row is None:
            return None
        return Principal(row["key_id"], Scope(row["scope"]), row["org_id"])

    def forget_key(self, key_id: str) -> None:
        """Drop a revoked key from this process's cache at once."""
        for digest, (_, principal) in list(self._cache.items()):
            if principal is not None and principal.key_id == key_id:
                del self._cache[digest]
