"""Delivery end to end: source rows committed in PostgreSQL reach a real HTTP receiver, signed
(checked with the reference `standardwebhooks` library), through an outage of the receiver,
once per message id."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable

import asyncpg  # type: ignore[import-untyped]
import httpx
from api.support import make_org
from standardwebhooks.webhooks import Webhook

from meter.api import App
from meter.roles import scheduler_work
from meter.services import Services
from meter.settings import Settings
from meter.supervise import cancel_and_wait
from meter.webhooks.targets import pin
from meter.webhooks.worker import WebhookWorker
from webhooks.receiver import Received, Receiver
from webhooks.support import insert_alert, insert_charge, make_endpoint


def verified(hook: Received, secret: str) -> dict[str, object]:
    payload: dict[str, object] = Webhook(secret).verify(hook.body, hook.headers)
    return payload


async def sources(pool: asyncpg.Pool, org_id: str) -> dict[str, str]:
    """message id -> source of the organization's messages."""
    rows = await pool.fetch(
        "SELECT message_id, source FROM webhook_messages WHERE org_id = $1", org_id
    )
    return {r["message_id"]: r["source"] for r in rows}


async def test_every_message_arrives_once_through_a_receiver_outage(
    app: App,
    admin: httpx.AsyncClient,
    receiver: Receiver,
    start_worker: Callable[..., WebhookWorker],
) -> None:
    org = await make_org(admin)
    endpoint = await make_endpoint(admin, org, receiver.url)
    secret = str(endpoint["secret"])
    start_worker()
    pool = app.pool

    first = [await insert_alert(pool, org, f"m{i}") for i in range(20)]
    await receiver.wait_for(20)
    receiver.stop()
    during = [await insert_alert(pool, org, f"m{i}") for i in range(20, 40)]
    charges = [await insert_charge(pool, org, n) for n in range(1, 6)]
    # The worker meets refused connections meanwhile, and logs them.
    deadline = asyncio.get_running_loop().time() + 30
    while not await pool.fetchval(
        "SELECT count(*) FROM webhook_attempts WHERE status_code IS NULL AND endpoint_id = $1",
        endpoint["endpoint_id"],
    ):
        assert asyncio.get_running_loop().time() < deadline, "no failed attempt logged"
        await asyncio.sleep(0.05)
    receiver.start()
    total = len(first) + len(during) + len(charges)
    got = await receiver.wait_for(total, timeout_s=60)
    await asyncio.sleep(1.0)  # anything sent twice would arrive meanwhile
    got = receiver.snapshot()

    ids = [h.message_id for h in got]
    assert len(ids) == len(set(ids)) == total
    by_source = await sources(pool, org)
    assert len(by_source) == total, "one message per source row"
    expected = {f"alert:{a}" for a, _ in first + during} | {f"charge:{org}:{c}" for c in charges}
    assert {by_source[i] for i in ids} == expected
    types = {}
    for hook in got:
        payload = verified(hook, secret)
        types[hook.message_id] = payload["type"]
        assert payload["data"] is not None
    assert sorted(set(types.values())) == ["alert.member_limit", "charge.due"]
    alert_hook = next(h for h in got if types[h.message_id] == "alert.member_limit")
    data = verified(alert_hook, secret)["data"]
    assert isinstance(data, dict)
    assert data["org_id"] == org and data["used"] == "800" and data["limit"] == "1000"

    states = await pool.fetch(
        "SELECT state, count(*) FROM webhook_deliveries GROUP BY state ORDER BY state"
    )
    assert [(r["state"], r["count"]) for r in states] == [("succeeded", total)]
    r = await admin.get(f"/v1/orgs/{org}/webhooks/{endpoint['endpoint_id']}/attempts")
    assert r.status_code == 200, r.text
    attempts = r.json()["attempts"]
    assert any(a["status_code"] is None and a["next_attempt_at"] for a in attempts)
    assert any(a["status_code"] == 204 and a["next_attempt_at"] is None for a in attempts)


async def test_no_message_without_a_subscribed_endpoint(
    app: App, admin: httpx.AsyncClient, receiver: Receiver
) -> None:
    org = await make_org(admin)
    await make_endpoint(admin, org, receiver.url, ["charge.due"])
    await insert_alert(app.pool, org, "ann")
    assert await sources(app.pool, org) == {}
    charge = await insert_charge(app.pool, org, 1)
    assert list((await sources(app.pool, org)).values()) == [f"charge:{org}:{charge}"]


async def test_delivery_latency(
    app: App,
    admin: httpx.AsyncClient,
    receiver: Receiver,
    start_worker: Callable[..., WebhookWorker],
) -> None:
    """Source row committed -> receiver got it, over a few hundred messages (printed)."""
    org = await make_org(admin)
    await make_endpoint(admin, org, receiver.url)
    start_worker()
    committed: dict[str, float] = {}
    for i in range(300):
        alert_id, at = await insert_alert(app.pool, org, f"m{i}")
        committed[f"alert:{alert_id}"] = at
        if i % 10 == 9:
            await asyncio.sleep(0.02)  # a steady trickle, not one burst
    got = await receiver.wait_for(300, timeout_s=120)
    by_source = await sources(app.pool, org)
    latencies = sorted(h.at - committed[by_source[h.message_id]] for h in got)
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"\nwebhook delivery latency over {len(latencies)}: p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")  # fmt: skip
    assert len({h.message_id for h in got}) == 300
    assert p50 < 5.0, "delivery waits for notifications, not the poll"


async def test_the_scheduler_role_delivers(
    app: App, admin: httpx.AsyncClient, receiver: Receiver, settings: Settings
) -> None:
    """`scheduler_work`, what `meter scheduler` and `meter run` run under the lease, includes
    the webhook worker."""
    org = await make_org(admin)
    endpoint = await make_endpoint(admin, org, receiver.url)
    assert settings.redis_url is not None and settings.kafka_bootstrap is not None
    services = Services(settings.kafka_bootstrap, settings.redis_url, app.services.postgres_dsn)
    task = asyncio.create_task(scheduler_work(services.apply(settings), services))
    try:
        alert_id, _ = await insert_alert(app.pool, org, "ann")
        [got] = await receiver.wait_for(1, timeout_s=60)
        assert verified(got, str(endpoint["secret"]))["type"] == "alert.member_limit"
        assert (await sources(app.pool, org))[got.message_id] == f"alert:{alert_id}"
    finally:
        await cancel_and_wait([task])


async def test_a_slow_endpoint_does_not_hold_up_the_others(
    app: App,
    admin: httpx.AsyncClient,
    start_worker: Callable[..., WebhookWorker],
) -> None:
    slow, fast = Receiver(), Receiver()
    slow.delay_s = 1.0
    slow.start()
    fast.start()
    try:
        org_slow, org_fast = await make_org(admin), await make_org(admin)
        await make_endpoint(admin, org_slow, slow.url)
        await make_endpoint(admin, org_fast, fast.url)
        start_worker(concurrency=8, per_endpoint=2, timeout_s=10.0)
        for i in range(20):
            await insert_alert(app.pool, org_slow, f"m{i}")
        for i in range(20):
            await insert_alert(app.pool, org_fast, f"m{i}")
        await fast.wait_for(20, timeout_s=60)
        # Two at a time, a second each: the slow endpoint has had a fraction of its messages.
        assert len(slow.snapshot()) < 10
        await slow.wait_for(20, timeout_s=60)
    finally:
        slow.stop()
        fast.stop()


async def test_a_pinned_request_reaches_the_host_it_names(receiver: Receiver) -> None:
    url, host, extensions = pin(f"http://localhost:{receiver.port}/hook", "127.0.0.1")
    async with httpx.AsyncClient() as client:
        r = await client.post(url, content=b"{}", headers=host, extensions=extensions)
    assert r.status_code == 204
    [got] = receiver.snapshot()
    assert got.headers["host"] == f"localhost:{receiver.port}"


async def test_a_worker_killed_mid_send_leaves_the_message_to_another(
    app: App,
    admin: httpx.AsyncClient,
    receiver: Receiver,
    start_worker: Callable[..., WebhookWorker],
) -> None:
    """At least once: the claim of a worker that dies runs out, another sends the message again,
    under the same id."""
    org = await make_org(admin)
    endpoint = await make_endpoint(admin, org, receiver.url)
    receiver.delay_s = 2.0
    first = WebhookWorker(app.services.postgres_dsn, production=False, claim_s=1.0, poll_s=0.2)
    task = asyncio.create_task(first.run())
    await insert_alert(app.pool, org, "ann")
    deadline = asyncio.get_running_loop().time() + 30
    while not await app.pool.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE next_attempt_at > now()"
    ):
        assert asyncio.get_running_loop().time() < deadline, "never claimed"
        await asyncio.sleep(0.02)
    await cancel_and_wait([task])  # mid-send: the receiver is still answering
    receiver.delay_s = 0.0
    start_worker(claim_s=1.0)
    got = await receiver.wait_for(1, timeout_s=30)
    deadline = asyncio.get_running_loop().time() + 30
    while await app.pool.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE state <> 'succeeded'"
    ):
        assert asyncio.get_running_loop().time() < deadline, "never recorded"
        await asyncio.sleep(0.05)
    got = receiver.snapshot()
    assert len({h.message_id for h in got}) == 1
    for hook in got:
        verified(hook, str(endpoint["secret"]))
