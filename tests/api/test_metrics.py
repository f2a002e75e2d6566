"""Prometheus metrics after real traffic: checks by outcome, latency per route, live holds, ingest,
and the consumer's settled and dead-lettered events, batch sizes and lag."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import httpx
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from api.support import FAR, client_for, make_org
from consumers.settle import ConsumerOptions, build_consumer
from meter.api import App
from meter.metrics import metrics_server
from schemas.events import encode_event

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


async def test_api_metrics_after_traffic(app: App, admin: httpx.AsyncClient) -> None:
    org = await make_org(admin)
    r = await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "alice"})
    assert r.status_code == 201, r.text
    r = await admin.post(
        f"/v1/orgs/{org}/grants", json={"kind": "shared", "amount": "10", "expires_at": FAR}
    )
    assert r.status_code == 201, r.text

    async with client_for(app, None) as anonymous:
        before = await scrape(anonymous)
        assert value(before, "meter_live_holds") == 0

        for credits, member in (("2", "alice"), ("100", "alice"), ("1", "bob"), ("3", "alice")):
            r = await admin.post(
                "/v1/check", json={"org_id": org, "member_id": member, "credits": credits}
            )
            assert r.status_code == 200, r.text
        r = await admin.post(
            "/v1/reserve",
            json={"org_id": org, "member_id": "alice", "credits": 4, "reservation_id": "r1"},
        )
        assert r.json()["allowed"] is True, r.text
        r = await admin.post(
            "/v1/reserve", json={"org_id": org, "member_id": "alice", "credits": 7}
        )
        assert r.json()["reason"] == "insufficient_credits", r.text
        event = encode_event(
            event_id="m-1", source="//metrics", org_id=org, member_id="alice",
            credits=1_000_000, time_ms=time.time_ns() // 1_000_000,
        )  # fmt: skip
        r = await admin.post(
            "/v1/events", content=event, headers={"content-type": "application/cloudevents+json"}
        )
        assert r.status_code == 202, r.text
        r = await admin.post(
            "/v1/events", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert r.status_code == 422, r.text
        r = await admin.get("/v1/no/such/route")
        assert r.status_code == 404

        during = await scrape(anonymous)
        r = await admin.post("/v1/release", json={"org_id": org, "reservation_id": "r1"})
        assert r.json() == {"released": True}
        after = await scrape(anonymous)
        text = (await anonymous.get("/metrics")).text

    def delta(name: str, **labels: str) -> float:
        return value(during, name, **labels) - value(before, name, **labels)

    assert delta("meter_checks_total", endpoint="check", outcome="allowed") == 2
    assert delta("meter_checks_total", endpoint="check", outcome="insufficient_credits") == 1
    assert delta("meter_checks_total", endpoint="check", outcome="unknown_member") == 1
    assert delta("meter_checks_total", endpoint="reserve", outcome="allowed") == 1
    assert delta("meter_checks_total", endpoint="reserve", outcome="insufficient_credits") == 1
    assert delta("meter_checks_total", endpoint="check", outcome="member_limit_reached") == 0
    route = {"method": "POST", "route": "/v1/check"}
    assert delta("meter_http_request_duration_seconds_count", **route) == 4
    assert delta("meter_http_requests_total", **route, status="200") == 4
    assert delta("meter_http_requests_total", method="GET", route="unmatched", status="404") == 1
    org_route = {"method": "POST", "route": "/v1/orgs/{org_id}/members"}
    assert value(during, "meter_http_request_duration_seconds_count", **org_route) >= 1
    assert delta("meter_ingest_events_total", outcome="accepted") == 1
    assert delta("meter_ingest_events_total", outcome="invalid_json") == 1
    # One live hold while reserved, none once released.
    assert value(during, "meter_live_holds") == 1
    assert value(after, "meter_live_holds") == 0
    assert (
        value(after, "meter_releases_total", released="true")
        - value(before, "meter_releases_total", released="true")
        == 1
    )
    # Aggregates only: no organization, member or raw path in any label.
    assert org not in text and "alice" not in text and "/v1/no/such/route" not in text


async def test_metrics_switch(app: App) -> None:
    app.settings = app.settings.model_copy(update={"metrics_on_api": False})
    async with client_for(app, None) as anonymous:
        r = await anonymous.get("/metrics")
    assert r.status_code == 404


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _wait_for(
    client: httpx.AsyncClient, ok: Callable[[Samples], bool], timeout_s: float = 20.0
) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = parse((await client.get("/metrics")).text)
        if ok(samples):
            return samples
        assert time.monotonic() < deadline, "metrics did not reach the expected values"
        await asyncio.sleep(0.05)


async def test_consumer_metrics(
    app: App, admin: httpx.AsyncClient, new_topic: Callable[..., Awaitable[str]]
) -> None:
    org = await make_org(admin)
    r = await admin.post(f"/v1/orgs/{org}/members", json={"member_id": "alice"})
    assert r.status_code == 201, r.text
    topic = app.settings.usage_topic
    now = time.time_ns() // 1_000_000
    good = [
        encode_event(
            event_id=f"c-{i}", source="//metrics", org_id=org, member_id="alice",
            credits=1_000_000, time_ms=now,
        )
        for i in range(3)
    ]  # fmt: skip
    stranger = encode_event(
        event_id="c-x", source="//metrics", org_id=org, member_id="nobody",
        credits=1_000_000, time_ms=now,
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=app.services.kafka_bootstrap)
    await producer.start()
    try:
        for raw in [*good, b"not json", stranger]:
            await producer.send_and_wait(topic, raw, key=org.encode())
    finally:
        await producer.stop()

    port = _free_port()
    settings = app.settings.model_copy(
        update={
            "postgres_dsn": app.services.postgres_dsn,
            "dlq_topic": await new_topic(partitions=1, prefix="metrics-dlq"),
            "consumer_group": f"metrics-{org}",
            "metrics_port": port,
            "api_host": "127.0.0.1",
        }
    )
    async with (
        client_for(app, None) as api_client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as own,
    ):
        before = await scrape(api_client)
        consumer = build_consumer(
            settings, app.engine, options=ConsumerOptions(batch_max_wait_ms=10)
        )
        async with metrics_server(settings):
            task = asyncio.create_task(consumer.run())
            try:

                def caught_up(s: Samples) -> bool:
                    settled = value(s, "meter_events_settled_total") - value(
                        before, "meter_events_settled_total"
                    )
                    lags = [
                        v
                        for (name, labels), v in s.items()
                        if name == "meter_consumer_lag" and ("topic", topic) in labels
                    ]
                    return settled >= 3 and bool(lags) and not any(lags)

                after = await _wait_for(own, caught_up)
            finally:
                consumer.stop()
                await asyncio.wait_for(task, 30)
            r = await own.get("/nothing")
            assert r.status_code == 404

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("meter_events_settled_total") == 3
    assert delta("meter_events_dead_lettered_total", reason="invalid_json") == 1
    assert delta("meter_events_dead_lettered_total", reason="unknown_member") == 1
    assert delta("meter_consumer_batch_records_sum") == 5
    assert delta("meter_consumer_batch_records_count") >= 1
    assert delta("meter_consumer_engine_seconds_count") == delta(
        "meter_consumer_batch_records_count"
    )
    assert delta("meter_consumer_store_seconds_count") >= 1
    partitions = {
        dict(labels)["partition"]
        for (name, labels) in after
        if name == "meter_consumer_lag" and dict(labels)["topic"] == topic
    }
    assert partitions == {"0", "1"}
