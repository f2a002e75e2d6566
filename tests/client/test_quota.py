"""The Python client against a real `meter run`: checks, reservations, releases, events, holds,
typed errors, and the policy that answers when meter cannot."""

from __future__ import annotations

import os
import signal
import time
import uuid
from decimal import Decimal

import httpx
import pytest
from meter_client import (
    AsyncMeterClient,
    InvalidInput,
    MeterClient,
    MeterUnavailable,
    NotFound,
    QuotaDenied,
    Unauthenticated,
    credits_text,
)

from client.support import MeterRun, make_tenant, wait_totals
from meter.services import free_port


def test_credits_are_exact_decimal_strings() -> None:
    assert credits_text("12.50") == "12.5"
    assert credits_text(3) == "3"
    assert credits_text(Decimal("0.000001")) == "0.000001"
    assert credits_text(Decimal("1E+3")) == "1000"
    for bad in ("0.0000001", "-1", "NaN", "Infinity", "abc"):
        with pytest.raises(ValueError):
            credits_text(bad)
    with pytest.raises(TypeError):
        credits_text(1.5)  # type: ignore[arg-type]


def test_check_reserve_release_round_trip(meter: MeterRun) -> None:
    tenant = make_tenant(meter)
    with MeterClient(meter.url, tenant.product_key, policy="fail_closed") as client:
        allowed = client.check(tenant.org_id, "ada", "12.5")
        assert allowed.allowed and allowed.reason is None and allowed.decided_by == "meter"
        assert allowed.available["shared"] == Decimal("2000")
        assert allowed.period_end is not None

        denied = client.check(tenant.org_id, "ada", 100_000)
        assert not denied.allowed and denied.reason == "insufficient_credits"
        assert denied.decided_by == "meter"

        held = client.reserve(tenant.org_id, "ada", Decimal("20"), reservation_id="req-1")
        assert held.allowed and held.reservation_id == "req-1"
        assert held.reservation_expires_at is not None
        again = client.reserve(tenant.org_id, "ada", Decimal("20"), reservation_id="req-1")
        assert again.reservation_id == "req-1"
        generated = client.reserve(tenant.org_id, "ada", "1")
        assert generated.allowed and generated.reservation_id

        assert client.release(tenant.org_id, "req-1") is True
        assert client.release(tenant.org_id, "req-1") is False
        assert client.release(tenant.org_id, generated.reservation_id or "") is True


def test_errors_carry_the_api_code(meter: MeterRun) -> None:
    tenant = make_tenant(meter)
    other = make_tenant(meter)
    with MeterClient(meter.url, tenant.product_key, policy="fail_open") as client:
        with pytest.raises(NotFound) as not_found:
            client.check(other.org_id, "ada", "1")
        assert not_found.value.code == "org_not_found" and not_found.value.status == 404
        with pytest.raises(InvalidInput) as invalid:
            client.check(tenant.org_id, "ada", "9999999999999")
        assert invalid.value.code == "invalid_input" and invalid.value.status == 422
        with pytest.raises(InvalidInput) as bad_event:
            client.record(tenant.org_id, "not a member id", "1")
        assert bad_event.value.code == "invalid_schema"
    with MeterClient(meter.url, "mk_" + "A" * 43, policy="fail_open") as client:
        with pytest.raises(Unauthenticated) as unauthenticated:
            client.check(tenant.org_id, "ada", "1")
        assert unauthenticated.value.code == "unauthenticated"


def test_record_is_settled_once_per_event_id(meter: MeterRun) -> None:
    tenant = make_tenant(meter)
    with MeterClient(meter.url, tenant.product_key, policy="fail_closed") as client:
        first = client.record(
            tenant.org_id, "ada", "1.5", event_id="evt-1", attributes={"model": "large"}
        )
        assert first.event_id == "evt-1" and not first.spooled
        client.record(tenant.org_id, "ada", "1.5", event_id="evt-1")
        generated = client.record(tenant.org_id, "ada", 2)
        assert generated.event_id != "evt-1"
    seen = wait_totals(meter, tenant.org_id, events=2)
    assert seen["events"] == 2 and seen["credits"] == "3.5", seen


def test_hold_records_the_usage_naming_the_reservation(meter: MeterRun) -> None:
    tenant = make_tenant(meter)
    with MeterClient(meter.url, tenant.product_key, policy="fail_closed") as client:
        with client.hold(tenant.org_id, "ada", "50") as hold:
            assert hold.decision is not None and hold.decision.allowed
            hold.record("42.25", attributes={"model": "large"})
        seen = wait_totals(meter, tenant.org_id, events=1)
        assert seen["credits"] == "42.25", seen
        # Settling the event consumed the hold: nothing is left to release.
        assert client.release(tenant.org_id, hold.reservation_id) is False


def test_hold_is_released_when_the_block_fails(meter: MeterRun) -> None:
    tenant = make_tenant(meter)
    with MeterClient(meter.url, tenant.product_key, policy="fail_closed") as client:
        before = client.check(tenant.org_id, "ada", "1").available
        with pytest.raises(RuntimeError), client.hold(tenant.org_id, "ada", "500") as hold:
            during = client.check(tenant.org_id, "ada", "1").available
            assert sum(during.values()) == sum(before.values()) - 500
            raise RuntimeError("the model call failed")
        assert client.check(tenant.org_id, "ada", "1").available == before
        assert client.release(tenant.org_id, hold.reservation_id) is False

        with pytest.raises(QuotaDenied) as denied, client.hold(tenant.org_id, "ada", 100_000):
            raise AssertionError("a refused hold never enters its block")
        assert denied.value.decision.reason == "insufficient_credits"


async def test_async_client_round_trip(meter: MeterRun) -> None:
    tenant = make_tenant(meter)
    async with AsyncMeterClient(meter.url, tenant.product_key, policy="fail_closed") as client:
        decision = await client.check(tenant.org_id, "ada", "1")
        assert decision.allowed and decision.decided_by == "meter"
        held = await client.reserve(tenant.org_id, "ada", "5", reservation_id="a-1")
        assert held.allowed and held.reservation_id == "a-1"
        assert await client.release(tenant.org_id, "a-1") is True
        with pytest.raises(ValueError):
            async with client.hold(tenant.org_id, "ada", "300") as failed:
                raise ValueError("boom")
        assert await client.release(tenant.org_id, failed.reservation_id) is False
        async with client.hold(tenant.org_id, "ada", "10") as hold:
            await hold.record("7")
        await client.record(tenant.org_id, "ada", "0.5", event_id=f"e-{uuid.uuid4().hex}")
    seen = wait_totals(meter, tenant.org_id, events=2)
    assert seen["events"] == 2 and seen["credits"] == "7.5", seen


async def test_policy_decides_when_nothing_listens() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with MeterClient(closed, "mk_" + "A" * 43, policy="fail_open") as client:
        opened = client.check("acme", "ada", "1")
        assert opened.allowed and opened.decided_by == "policy"
        assert opened.reason == "meter_unavailable"
        assert opened.error is not None and opened.error.code == "connect_error"
        shut = client.check("acme", "ada", "1", policy="fail_closed")
        assert not shut.allowed and shut.decided_by == "policy"
        held = client.reserve("acme", "ada", "1", reservation_id="r-1")
        assert held.allowed and held.reservation_id == "r-1" and held.decided_by == "policy"
        with client.hold("acme", "ada", "1") as hold:
            assert hold.decision is not None and hold.decision.decided_by == "policy"
        with pytest.raises(QuotaDenied), client.hold("acme", "ada", "1", policy="fail_closed"):
            pass
        with pytest.raises(MeterUnavailable):
            client.record("acme", "ada", "1")
    async with AsyncMeterClient(closed, "mk_" + "A" * 43, policy="fail_closed") as aclient:
        refused = await aclient.check("acme", "ada", "1")
        assert not refused.allowed and refused.decided_by == "policy"
        assert (await aclient.check("acme", "ada", "1", policy="fail_open")).allowed


def test_policy_decides_when_meter_is_frozen(meter: MeterRun) -> None:
    tenant = make_tenant(meter)
    assert meter.proc is not None
    os.kill(meter.proc.pid, signal.SIGSTOP)
    try:
        with MeterClient(meter.url, tenant.product_key, policy="fail_open", timeout_s=0.3) as c:
            opened = c.check(tenant.org_id, "ada", "1")
            assert opened.allowed and opened.decided_by == "policy"
            assert opened.error is not None and opened.error.code == "timeout"
            shut = c.reserve(tenant.org_id, "ada", "1", policy="fail_closed")
            assert not shut.allowed and shut.decided_by == "policy"
    finally:
        os.kill(meter.proc.pid, signal.SIGCONT)
    with MeterClient(meter.url, tenant.product_key, policy="fail_open") as client:
        assert client.check(tenant.org_id, "ada", "1").decided_by == "meter"


def _server_check_seconds(meter: MeterRun) -> tuple[float, float]:
    """(sum, count) of the API's own time answering `POST /v1/check`, from its metrics."""
    text = httpx.get(meter.url + "/metrics", timeout=5).text
    found = {}
    for line in text.splitlines():
        if line.startswith("meter_http_request_duration_seconds_") and '"/v1/check"' in line:
            name = line.split("{", 1)[0].rsplit("_", 1)[1]
            found[name] = float(line.rsplit(" ", 1)[1])
    return found.get("sum", 0.0), found.get("count", 0.0)


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def test_check_overhead_over_a_bare_request(meter: MeterRun) -> None:
    tenant = make_tenant(meter)
    body = {"org_id": tenant.org_id, "member_id": "ada", "credits": "1"}
    auth = {"authorization": f"Bearer {tenant.product_key}"}
    bare_times: list[float] = []
    client_times: list[float] = []
    rounds = 1000
    with (
        MeterClient(meter.url, tenant.product_key, policy="fail_closed") as client,
        httpx.Client(base_url=meter.url, headers=auth) as bare,
    ):
        for _ in range(100):
            assert bare.post("/v1/check", json=body).status_code == 200
            assert client.check(tenant.org_id, "ada", "1").decided_by == "meter"
        server_before = _server_check_seconds(meter)
        for _ in range(rounds):
            started = time.perf_counter()
            answer = bare.post("/v1/check", json=body)
            bare_times.append(time.perf_counter() - started)
            assert answer.json()["allowed"] is True
            started = time.perf_counter()
            decision = client.check(tenant.org_id, "ada", "1")
            client_times.append(time.perf_counter() - started)
            assert decision.allowed and decision.decided_by == "meter"
        server_after = _server_check_seconds(meter)
    checks = server_after[1] - server_before[1]
    assert checks == 2 * rounds
    server_mean = (server_after[0] - server_before[0]) / checks * 1000
    print(
        f"\ncheck, {rounds} each: client p50 {_quantile(client_times, 0.5):.3f} ms, "
        f"p99 {_quantile(client_times, 0.99):.3f} ms; bare httpx p50 "
        f"{_quantile(bare_times, 0.5):.3f} ms, p99 {_quantile(bare_times, 0.99):.3f} ms; "
        f"server's own mean {server_mean:.3f} ms"
    )
