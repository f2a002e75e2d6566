"""`dead_letter` webhooks: each dead letter the consumer records for an organization reaches its
subscribed endpoints once, signed, with the letter's reason, detail, position and event text."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from api.support import make_org
from standardwebhooks.webhooks import Webhook

from consumers.dead_letters import record_dead_letters
from consumers.dlq import PREFIX_BYTES, DeadLetter
from meter.api import App
from meter.webhooks.worker import WebhookWorker
from schemas.events import encode_event
from webhooks.receiver import Receiver
from webhooks.support import make_endpoint


def _letter(org: str, offset: int, value: bytes, reason: str = "unknown_member") -> DeadLetter:
    return DeadLetter(
        key=org.encode(), value=value, headers=[], topic="meter.usage.test", partition=2,
        offset=offset, reason=reason, message=f"{reason}: member 'nobody' of {org}",
    )  # fmt: skip


async def test_each_dead_letter_reaches_subscribed_endpoints_once(
    app: App,
    admin: httpx.AsyncClient,
    receiver: Receiver,
    start_worker: Callable[..., WebhookWorker],
) -> None:
    org = await make_org(admin)
    quiet = await make_org(admin)  # no endpoint: its letters queue nothing
    endpoint = await make_endpoint(admin, org, receiver.url, ["dead_letter"])
    alerts_only = await make_endpoint(admin, org, receiver.url, ["alert.*"])
    secret = str(endpoint["secret"])
    start_worker()

    event = encode_event(
        event_id="dl-1", source="//hooks.example", org_id=org, member_id="nobody",
        credits=1_500_000, time_ms=1_780_000_000_000, reservation_id=None,
    )  # fmt: skip
    huge = b'{"data": {"org_id": "%s", "pad": "' % org.encode() + b"x" * PREFIX_BYTES + b'"}}'
    letters = [_letter(org, 10, event), _letter(org, 11, huge, "invalid_event")]
    assert await record_dead_letters(app.pool, [*letters, _letter(quiet, 12, b"{not json")]) == 3
    assert await record_dead_letters(app.pool, letters) == 2  # read again: the same rows

    got = await receiver.wait_for(2, timeout_s=30)
    await asyncio.sleep(1.0)  # anything sent twice or to the wrong endpoint would arrive meanwhile
    got = receiver.snapshot()
    assert len(got) == 2 and len({h.message_id for h in got}) == 2
    bodies = sorted(
        (Webhook(secret).verify(h.body, h.headers) for h in got),
        key=lambda b: b["data"]["offset"],  # type: ignore[index]
    )
    first, second = bodies
    assert first["type"] == "dead_letter"
    assert first["event_id"] == "meter.usage.test/2/10"
    data = first["data"]
    assert isinstance(data, dict)
    assert data["org_id"] == org and data["reason"] == "unknown_member"
    assert data["detail"] == f"unknown_member: member 'nobody' of {org}"
    assert data["event"] == event.decode() and data["truncated"] is False
    assert (data["topic"], data["partition"], data["offset"]) == ("meter.usage.test", 2, 10)
    assert first["timestamp"] == data["created_at"]
    listed = (await admin.get(f"/v1/orgs/{org}/dead-letters")).json()["dead_letters"]
    by_offset = {d["offset"]: d for d in listed}
    assert data["id"] == by_offset[10]["id"]
    other = second["data"]
    assert isinstance(other, dict)
    assert other["reason"] == "invalid_event" and other["truncated"] is True
    assert len(other["event"].encode()) == PREFIX_BYTES

    sources = await app.pool.fetch(
        "SELECT org_id, event_type, source FROM webhook_messages WHERE org_id = any($1::text[])",
        [org, quiet],
    )
    assert sorted((r["org_id"], r["event_type"], r["source"]) for r in sources) == sorted(
        (org, "dead_letter", f"dead_letter:{d['id']}") for d in listed
    )
    deliveries = await app.pool.fetch(
        "SELECT d.endpoint_id, d.state FROM webhook_deliveries d"
        " JOIN webhook_messages m USING (message_id) WHERE m.org_id = $1",
        org,
    )
    assert [(r["endpoint_id"], r["state"]) for r in deliveries] == [
        (endpoint["endpoint_id"], "succeeded")
    ] * 2
    assert alerts_only["endpoint_id"] not in {r["endpoint_id"] for r in deliveries}
