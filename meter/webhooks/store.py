"""Webhook endpoints, manual messages and the attempt log in PostgreSQL (the API's side)."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from meter.errors import NotFound
from meter.webhooks import rules
from meter.webhooks.targets import check_target
from schemas import api

ENDPOINT_COLUMNS = """
endpoint_id, org_id, url, description, event_types, enabled, failing_since,
CASE WHEN previous_expires_at > now() THEN previous_expires_at END AS previous_secret_expires_at,
created_at, updated_at
"""
INSERT_ENDPOINT = f"""
INSERT INTO webhook_endpoints (endpoint_id, org_id, url, description, event_types, secret, enabled)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING {ENDPOINT_COLUMNS}, secret
"""
SELECT_ENDPOINTS = f"""
SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE org_id = $1 ORDER BY created_at, endpoint_id
"""
SELECT_ENDPOINT = f"""
SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE org_id = $1 AND endpoint_id = $2
"""
UPDATE_ENDPOINT = f"""
UPDATE webhook_endpoints SET
    url = coalesce($3, url),
    description = coalesce($4, description),
    event_types = coalesce($5, event_types),
    enabled = coalesce($6, enabled),
    updated_at = now()
WHERE org_id = $1 AND endpoint_id = $2
RETURNING {ENDPOINT_COLUMNS}
"""
DELETE_ENDPOINT = "DELETE FROM webhook_endpoints WHERE org_id = $1 AND endpoint_id = $2"
ROTATE_SECRET = """
UPDATE webhook_endpoints SET
    previous_secret = secret,
    previous_expires_at = now() + make_interval(secs => $3),
    secret = $4,
    updated_at = now()
WHERE org_id = $1 AND endpoint_id = $2
RETURNING endpoint_id, secret, previous_expires_at
"""
SELECT_ATTEMPTS = """
SELECT attempt_id, message_id, attempt, status_code, error, duration_ms, at, next_attempt_at
FROM webhook_attempts WHERE endpoint_id = $1
ORDER BY attempt_id DESC LIMIT $2
"""
MESSAGE_OF_ORG = "SELECT 1 FROM webhook_messages WHERE org_id = $1 AND message_id = $2"
REDELIVER = """
INSERT INTO webhook_deliveries (message_id, endpoint_id) VALUES ($1, $2)
ON CONFLICT (message_id, endpoint_id) DO UPDATE
SET state = 'pending', attempts = 0, next_attempt_at = now()
"""
INSERT_MESSAGE = """
INSERT INTO webhook_messages (message_id, org_id, event_type, source, payload)
VALUES ($1, $2, $3, $4, $5::jsonb)
"""
NOTIFY = "SELECT pg_notify('meter_webhooks', $1)"

ATTEMPTS_LIMIT = 100


def _endpoint(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["event_types"] = list(out["event_types"])
    return out


def new_endpoint_id() -> str:
    return "we_" + secrets.token_hex(8)


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(16)


def _not_found() -> NotFound:
    return NotFound("webhook endpoint not found", code="webhook_endpoint_not_found")


class WebhookStore:
    """Endpoint administration for one process; `production` turns on the target check."""

    def __init__(self, pool: asyncpg.Pool, *, production: bool) -> None:
        self.pool = pool
        self.production = production

    async def create(
        self, org_id: str, body: api.WebhookEndpointCreate
    ) -> api.WebhookEndpointCreated:
        await check_target(body.url, self.production)
        row = await self.pool.fetchrow(
            INSERT_ENDPOINT,
            new_endpoint_id(),
            org_id,
            body.url,
            body.description,
            sorted(set(body.event_types)),
            rules.new_secret(),
            body.enabled,
        )
        return api.WebhookEndpointCreated.model_validate(_endpoint(row))

    async def list_endpoints(self, org_id: str) -> api.WebhookEndpointList:
        rows = await self.pool.fetch(SELECT_ENDPOINTS, org_id)
        return api.WebhookEndpointList(
            endpoints=[api.WebhookEndpoint.model_validate(_endpoint(r)) for r in rows]
        )

    async def get(self, org_id: str, endpoint_id: str) -> api.WebhookEndpoint:
        row = await self.pool.fetchrow(SELECT_ENDPOINT, org_id, endpoint_id)
        if row is None:
            raise _not_found()
        return api.WebhookEndpoint.model_validate(_endpoint(row))

    async def update(
        self, org_id: str, endpoint_id: str, body: api.WebhookEndpointUpdate
    ) -> api.WebhookEndpoint:
        if body.url is not None:
            await check_target(body.url, self.production)
        types = None if body.event_types is None else sorted(set(body.event_types))
        row = await self.pool.fetchrow(
            UPDATE_ENDPOINT, org_id, endpoint_id, body.url, body.description, types, body.enabled
        )
        if row is None:
            raise _not_found()
        return api.WebhookEndpoint.model_validate(_endpoint(row))

    async def delete(self, org_id: str, endpoint_id: str) -> None:
        if await self.pool.execute(DELETE_ENDPOINT, org_id, endpoint_id) == "DELETE 0":
            raise _not_found()

    async def rotate(
        self, org_id: str, endpoint_id: str, body: api.WebhookSecretRotate
    ) -> api.WebhookSecret:
        row = await self.pool.fetchrow(
            ROTATE_SECRET, org_id, endpoint_id, float(body.grace_s), rules.new_secret()
        )
        if row is None:
            raise _not_found()
        return api.WebhookSecret(
            endpoint_id=row["endpoint_id"],
            secret=row["secret"],
            previous_secret_expires_at=row["previous_expires_at"] if body.grace_s else None,
        )

    async def attempts(self, org_id: str, endpoint_id: str) -> api.WebhookAttemptList:
        await self.get(org_id, endpoint_id)
        rows = await self.pool.fetch(SELECT_ATTEMPTS, endpoint_id, ATTEMPTS_LIMIT)
        return api.WebhookAttemptList(
            attempts=[api.WebhookAttempt.model_validate(dict(r)) for r in rows]
        )

    async def redeliver(self, org_id: str, endpoint_id: str, message_id: str) -> api.WebhookQueued:
        """Queue `message_id` for the endpoint again, under its own id, with a fresh schedule."""
        await self.get(org_id, endpoint_id)
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(MESSAGE_OF_ORG, org_id, message_id) is None:
                raise NotFound("webhook message not found", code="webhook_message_not_found")
            await conn.execute(REDELIVER, message_id, endpoint_id)
            await conn.execute(NOTIFY, org_id)
        return api.WebhookQueued(message_id=message_id, endpoint_id=endpoint_id)

    async def send_test(self, org_id: str, endpoint_id: str) -> api.WebhookQueued:
        """Queue a `webhook.test` message for this endpoint alone."""
        await self.get(org_id, endpoint_id)
        message_id = new_message_id()
        payload = {
            "type": rules.TEST,
            "timestamp": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            "data": {"org_id": org_id, "endpoint_id": endpoint_id},
        }
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                INSERT_MESSAGE,
                message_id,
                org_id,
                rules.TEST,
                f"test:{message_id}",
                orjson.dumps(payload).decode(),
            )
            await conn.execute(REDELIVER, message_id, endpoint_id)
            await conn.execute(NOTIFY, org_id)
        return api.WebhookQueued(message_id=message_id, endpoint_id=endpoint_id)
