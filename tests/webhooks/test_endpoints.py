"""Endpoints through the API: administration, scopes, secret rotation, test messages, manual
redelivery after the retries ran out, and the production mode's refusal of internal targets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
import pytest_asyncio
from api.support import ADMIN_TOKEN, Addresses, client_for, make_key, make_org
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from meter.api import App, build_app
from meter.settings import Settings
from meter.webhooks.worker import WebhookWorker
from webhooks.receiver import Receiver
from webhooks.support import insert_alert, make_endpoint


async def eventually(pool: asyncpg.Pool, query: str, *args: object, timeout_s: float = 30) -> None:
    """Poll until `query` returns true."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await pool.fetchval(query, *args):
        assert asyncio.get_running_loop().time() < deadline, query
        await asyncio.sleep(0.05)


async def test_administration(app: App, admin: httpx.AsyncClient, receiver: Receiver) -> None:
    org = await make_org(admin)
    base = f"/v1/orgs/{org}/webhooks"
    created = await make_endpoint(admin, org, receiver.url, ["alert.shared_pool_low"])
    assert str(created["secret"]).startswith("whsec_")
    hook = f"{base}/{created['endpoint_id']}"
    got = (await admin.get(hook)).json()
    assert "secret" not in got and got["event_types"] == ["alert.shared_pool_low"]
    assert (await admin.get(base)).json()["endpoints"] == [got]

    r = await admin.patch(hook, json={"event_types": ["charge.due", "alert.*"], "enabled": False})
    assert r.status_code == 200, r.text
    assert r.json()["event_types"] == ["alert.*", "charge.due"] and r.json()["enabled"] is False
    await insert_alert(app.pool, org, "ann")  # a disabled endpoint gets no message
    assert await app.pool.fetchval("SELECT count(*) FROM webhook_messages") == 0

    for body, code in [
        ({"url": "ftp://example.com/x", "event_types": ["charge.due"]}, "invalid_webhook_url"),
        ({"url": "http://u:p@example.com/", "event_types": ["charge.due"]}, "invalid_webhook_url"),
        ({"url": receiver.url, "event_types": ["charge.paid"]}, "invalid_input"),
        ({"url": receiver.url, "event_types": []}, "invalid_input"),
    ]:
        r = await admin.post(base, json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == code, r.text

    assert (await admin.delete(hook)).status_code == 204
    r = await admin.get(hook)
    assert r.status_code == 404 and r.json()["error"]["code"] == "webhook_endpoint_not_found"
    assert (await admin.delete(hook)).status_code == 404


async def test_other_organizations_see_nothing(
    app: App, admin: httpx.AsyncClient, receiver: Receiver
) -> None:
    org, other = await make_org(admin), await make_org(admin)
    endpoint_id = (await make_endpoint(admin, org, receiver.url))["endpoint_id"]
    async with client_for(app, await make_key(admin, org, "org_admin")) as own:
        r = await own.post(f"/v1/orgs/{org}/webhooks/{endpoint_id}/test")
        assert r.status_code == 202, r.text
        message_id = r.json()["message_id"]
    async with client_for(app, await make_key(admin, other, "org_admin")) as stranger:
        for method, path in [
            ("GET", f"/v1/orgs/{org}/webhooks"),
            ("GET", f"/v1/orgs/{org}/webhooks/{endpoint_id}"),
            ("DELETE", f"/v1/orgs/{org}/webhooks/{endpoint_id}"),
            ("POST", f"/v1/orgs/{org}/webhooks/{endpoint_id}/rotate-secret"),
            ("GET", f"/v1/orgs/{org}/webhooks/{endpoint_id}/attempts"),
            ("POST", f"/v1/orgs/{org}/webhooks/{endpoint_id}/messages/{message_id}/redeliver"),
        ]:
            r = await stranger.request(method, path)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["error"]["code"] == "org_not_found"
        # Its own path with the other organization's ids.
        r = await stranger.get(f"/v1/orgs/{other}/webhooks/{endpoint_id}")
        assert r.json()["error"]["code"] == "webhook_endpoint_not_found"
        mine = (await make_endpoint(stranger, other, receiver.url))["endpoint_id"]
        r = await stranger.post(f"/v1/orgs/{other}/webhooks/{mine}/messages/{message_id}/redeliver")
        assert r.status_code == 404 and r.json()["error"]["code"] == "webhook_message_not_found"
    async with client_for(app, await make_key(admin, org, "product")) as product:
        assert (await product.get(f"/v1/orgs/{org}/webhooks")).status_code == 403


async def test_rotation_signs_with_both_secrets_during_the_grace_period(
    app: App,
    admin: httpx.AsyncClient,
    receiver: Receiver,
    start_worker: Callable[..., WebhookWorker],
) -> None:
    org = await make_org(admin)
    endpoint = await make_endpoint(admin, org, receiver.url)
    hook = f"/v1/orgs/{org}/webhooks/{endpoint['endpoint_id']}"
    old = str(endpoint["secret"])
    start_worker()

    r = await admin.post(hook + "/rotate-secret", json={"grace_s": 3600})
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new != old and r.json()["previous_secret_expires_at"] is not None
    assert (await admin.get(hook)).json()["previous_secret_expires_at"] is not None
    assert (await admin.post(hook + "/test")).status_code == 202
    [during] = await receiver.wait_for(1)
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        payload = Webhook(secret).verify(during.body, during.headers)
        assert payload["type"] == "webhook.test"

    r = await admin.post(hook + "/rotate-secret", json={"grace_s": 0})
    newest = r.json()["secret"]
    assert r.json()["previous_secret_expires_at"] is None
    assert (await admin.post(hook + "/test")).status_code == 202
    after = (await receiver.wait_for(2))[1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    Webhook(newest).verify(after.body, after.headers)
    for secret in (old, new):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(after.body, after.headers)


async def test_exhausted_retries_mark_the_endpoint_failing_until_a_redelivery(
    app: App,
    admin: httpx.AsyncClient,
    receiver: Receiver,
    start_worker: Callable[..., WebhookWorker],
) -> None:
    org = await make_org(admin)
    endpoint = await make_endpoint(admin, org, receiver.url)
    hook = f"/v1/orgs/{org}/webhooks/{endpoint['endpoint_id']}"
    receiver.status = 500
    start_worker(schedule=(0.05, 0.1))
    await insert_alert(app.pool, org, "ann")
    await eventually(app.pool, "SELECT bool_and(state = 'failed') FROM webhook_deliveries")
    attempts = (await admin.get(hook + "/attempts")).json()["attempts"]
    assert [(a["attempt"], a["status_code"], a["error"]) for a in attempts] == [
        (3, 500, "HTTP 500"), (2, 500, "HTTP 500"), (1, 500, "HTTP 500"),
    ]  # fmt: skip
    assert attempts[0]["next_attempt_at"] is None and attempts[1]["next_attempt_at"] is not None
    assert (await admin.get(hook)).json()["failing_since"] is not None
    assert receiver.snapshot() == []

    receiver.status = 204
    message_id = attempts[0]["message_id"]
    r = await admin.post(f"{hook}/messages/{message_id}/redeliver")
    assert r.status_code == 202, r.text
    [got] = await receiver.wait_for(1)
    assert got.message_id == message_id
    Webhook(str(endpoint["secret"])).verify(got.body, got.headers)
    await eventually(app.pool, "SELECT bool_and(failing_since IS NULL) FROM webhook_endpoints")
    assert (await admin.get(hook)).json()["failing_since"] is None


@pytest_asyncio.fixture(loop_scope="session")
async def production_app(settings: Settings, app: App) -> AsyncIterator[App]:
    """A second API process on the same servers, in production mode."""
    assert settings.redis_url is not None and settings.kafka_bootstrap is not None
    configured = app.settings.model_copy(update={"env": "production"})
    addresses = Addresses(settings.redis_url, app.services.postgres_dsn, settings.kafka_bootstrap)
    application = build_app(configured, addresses, reconcile_interval_s=3600.0)
    async with application.running():
        yield application


async def test_production_refuses_internal_targets(
    app: App,
    production_app: App,
    admin: httpx.AsyncClient,
    receiver: Receiver,
    start_worker: Callable[..., WebhookWorker],
) -> None:
    org = await make_org(admin)
    async with client_for(production_app, ADMIN_TOKEN) as prod:
        for url in [
            receiver.url,
            f"http://localhost:{receiver.port}/hook",
            "http://10.1.2.3/hook",
            "http://169.254.169.254/latest/meta-data",
            "https://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://0.0.0.0/hook",
        ]:
            r = await prod.post(
                f"/v1/orgs/{org}/webhooks", json={"url": url, "event_types": ["alert.*"]}
            )
            assert r.status_code == 422, (url, r.text)
            assert r.json()["error"]["code"] == "webhook_target_forbidden", url
    # Locally the same URL is fine; a production worker still refuses to send to it.
    endpoint = await make_endpoint(admin, org, receiver.url)
    start_worker(production=True, schedule=(0.05,))
    await insert_alert(app.pool, org, "ann")
    await eventually(app.pool, "SELECT bool_and(state = 'failed') FROM webhook_deliveries")
    r = await admin.get(f"/v1/orgs/{org}/webhooks/{endpoint['endpoint_id']}/attempts")
    errors = [a["error"] for a in r.json()["attempts"]]
    assert len(errors) == 2
    assert all(e.startswith("webhook_target_forbidden: ") for e in errors), errors
    assert receiver.snapshot() == []
