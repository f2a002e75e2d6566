"""API keys: bearer tokens stored hashed, four scopes, a short in-process cache.

- `admin`: everything, every organization (including the bootstrap key from `Settings.admin_token`).
- `billing`: a platform key (no organization) for money and plans across organizations: plans,
  organization plan and status, grants, voids, redemption codes and redemptions, seat billing, and
  the reads (every organization route but its keys). No members, keys or thresholds.
- `org_admin`: administration of one organization: members, limits, groups, billing groups, its
  own `org_admin` and `product` keys, and the reads. No credits: grants, voids, redemptions and
  plan changes need a platform key, so a customer holding one cannot fund itself.
- `product`: check, reserve, release and event ingest for one organization.

A token is `mk_` followed by 32 random bytes (base64url). Only its SHA-256 is stored; the token is
shown once, at creation. Verified keys are cached in-process for `CACHE_TTL_S` seconds so the quota
hot path never waits on PostgreSQL: a revoked key stops working within that many seconds in every
process (immediately in the process that revoked it).

Unknown tokens cost PostgreSQL nothing when they cannot be a key: a token that is not `mk_` and 43
base64url characters (and not the bootstrap key) is refused before any lookup. Well-formed unknown
tokens are cached negatively for `NEGATIVE_TTL_S`, and lookups are rationed per process by a token
bucket (`MissBudget`): each lookup takes one token, a lookup that finds a key gives it back, so
only misses spend the budget. With the bucket empty a lookup is refused with 429 at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

import asyncpg  # type: ignore[import-untyped]

from meter.errors import Forbidden, NotFound, RateLimited, Unauthenticated

TOKEN_PREFIX = "mk_"
CACHE_TTL_S = 5.0
NEGATIVE_TTL_S = 1.0
CACHE_MAX = 100_000
MISS_RATE = 20.0
"""Default lookups of unknown keys per second and process, sustained."""
MISS_BURST = 100
"""Default lookups of unknown keys a process may make at once before the rate applies."""

_WELL_FORMED = re.compile(r"mk_[A-Za-z0-9_-]{43}").fullmatch
"""What `new_token` makes: anything else cannot be a stored key."""


class Scope(StrEnum):
    ADMIN = "admin"
    BILLING = "billing"
    ORG_ADMIN = "org_admin"
    PRODUCT = "product"


PLATFORM = frozenset({Scope.ADMIN, Scope.BILLING})
"""Scopes of keys that belong to no organization."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's id, its scope, and its organization (None for platform keys)."""

    key_id: str
    scope: Scope
    org_id: str | None

    def require_admin(self) -> None:
        """Operations only an `admin` key may do."""
        if self.scope is not Scope.ADMIN:
            raise Forbidden("this operation needs an admin key")

    def require_platform(self, *scopes: Scope) -> None:
        """Global operations (plans, organizations, codes, platform keys): `admin`, or one of
        `scopes` (only `billing` is meaningful: organization keys never pass)."""
        if self.scope is Scope.ADMIN:
            return
        if self.scope not in scopes or self.scope not in PLATFORM:
            raise Forbidden(f"a {self.scope.value} key cannot do this")

    def require_org(self, org_id: str, *scopes: Scope) -> None:
        """Access to `org_id` with one of `scopes` (admin always passes, `billing` for any
        organization when listed).

        Another organization's key gets NotFound, never Forbidden: existence does not leak.
        """
        if self.scope is Scope.ADMIN:
            return
        if self.org_id is None:
            if self.scope not in scopes:
                raise Forbidden(f"a {self.scope.value} key cannot do this")
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


class MissBudget:
    """A token bucket rationing key lookups: `rate` per second, at most `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self) -> bool:
        """Spend one lookup if the bucket has one."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def give_back(self) -> None:
        """Return a lookup that found a key: only misses count against the budget."""
        self._tokens = min(self._burst, self._tokens + 1.0)


class KeyVerifier:
    """Resolves bearer tokens to principals, caching results for a few seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        admin_token: str | None,
        ttl_s: float = CACHE_TTL_S,
        *,
        miss_rate: float = MISS_RATE,
        miss_burst: int = MISS_BURST,
    ) -> None:
        self._pool = pool
        self._admin_hash = hash_token(admin_token) if admin_token else None
        self._ttl = ttl_s
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}
        self._budget = MissBudget(miss_rate, miss_burst)

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
        if _WELL_FORMED(token) is None:
            raise Unauthenticated("unknown or revoked key")
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            principal = hit[1]
        else:
            if not self._budget.take():
                raise RateLimited(
                    "too many unknown keys presented; retry shortly", code="key_lookups_throttled"
                )
            principal = await self._lookup(digest)
            if principal is not None:
                self._budget.give_back()
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
