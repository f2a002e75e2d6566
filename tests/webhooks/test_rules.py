"""The pure rules: signatures against the reference library, retry waits, subscriptions,
which addresses are public, and the API's event types."""

from __future__ import annotations

import datetime as dt
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from meter.errors import InvalidInput
from meter.webhooks import rules
from meter.webhooks.targets import TargetForbidden, check_target, is_public, parse_url, pin
from schemas import api


@given(
    message_id=st.text(st.characters(codec="ascii", exclude_characters=" ,"), min_size=1),
    timestamp=st.integers(0, 2**33),
    body=st.text(),
)
def test_signatures_are_the_reference_librarys(message_id: str, timestamp: int, body: str) -> None:
    secret = rules.new_secret()
    at = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    expected = Webhook(secret).sign(message_id, at, body)
    assert rules.sign(secret, message_id, timestamp, body.encode()) == expected


def test_headers_carry_one_signature_per_secret() -> None:
    old, new = rules.new_secret(), rules.new_secret()
    headers = rules.headers([new, old], "msg_1", 1_700_000_000, b"{}")
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].split(" ") == [
        rules.sign(new, "msg_1", 1_700_000_000, b"{}"),
        rules.sign(old, "msg_1", 1_700_000_000, b"{}"),
    ]
    assert len(rules.secret_key(new)) == rules.SECRET_BYTES


def test_retry_waits_follow_the_schedule_with_jitter() -> None:
    schedule = rules.DEFAULT_SCHEDULE_S
    assert [rules.retry_delay(n, schedule, 0.5) for n in range(1, 7)] == list(schedule)
    assert rules.retry_delay(1, schedule, 0.0) == pytest.approx(4.0)
    assert rules.retry_delay(2, schedule, 0.999999) == pytest.approx(360.0)
    assert rules.retry_delay(7, schedule) is None
    assert rules.retry_delay(0, schedule) is None
    assert sum(schedule) / 3600 > 15, "retries span hours"


def test_subscriptions() -> None:
    assert rules.subscribes(["alert.*"], "alert.shared_pool_low")
    assert rules.subscribes(["charge.due"], "charge.due")
    assert not rules.subscribes(["alert.*"], "charge.due")
    assert not rules.subscribes(["alert.member_limit"], "alert.billing_group_limit")
    assert "alert.shared_pool_low" in rules.ALERT_TYPES


def test_the_api_accepts_exactly_the_event_types() -> None:
    assert set(typing.get_args(api.WebhookEventType)) == set(rules.EVENT_TYPES)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:93.184.216.34", True),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_urls() -> None:
    assert parse_url("https://hooks.example.com/x?y=1") == ("hooks.example.com", 443)
    assert parse_url("http://[::1]:8080/") == ("::1", 8080)
    for bad in ["ftp://x/", "http:///x", "https://u:p@x/", "http://x:99999/", "x" * 3000]:
        with pytest.raises(InvalidInput) as caught:
            parse_url(bad)
        assert caught.value.code == "invalid_webhook_url"


def test_pinned_requests_keep_the_host() -> None:
    assert pin("https://hooks.example.com/x?y=1", "93.184.216.34") == (
        "https://93.184.216.34:443/x?y=1",
        {"host": "hooks.example.com"},
        {"sni_hostname": "hooks.example.com"},
    )
    assert pin("http://hooks.example.com:8080/", "2606:2800:220:1::1") == (
        "http://[2606:2800:220:1::1]:8080/",
        {"host": "hooks.example.com:8080"},
        {"sni_hostname": "hooks.example.com"},
    )


async def test_production_resolves_the_host() -> None:
    for url in ["http://localhost/x", "http://127.1/x", f"http://{'a' * 70}.example/x"]:
        with pytest.raises(TargetForbidden):
            await check_target(url, production=True)
    assert await check_target("http://localhost/x", production=False) == []
