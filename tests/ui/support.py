"""Helpers of the dashboard tests: Debian's Chromium driven by Playwright, organizations with
settled usage made through the API of a real `meter run`."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from client.support import MeterRun
from playwright.async_api import Page

from schemas.events import encode_event

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
FAR = "2099-01-01T00:00:00Z"


def chromium_path() -> str:
    """`METER_CHROMIUM`, else Debian's `/usr/bin/chromium` (`make test` installs it)."""
    path = os.environ.get("METER_CHROMIUM") or "/usr/bin/chromium"
    assert Path(path).is_file(), (
        f"no Chromium at {path}: apt-get install chromium, or METER_CHROMIUM"
    )
    return path


def grouped(text: str) -> str:
    """A credits string as the dashboard writes it: thousands grouped, the fraction kept."""
    sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
    whole, _, frac = digits.partition(".")
    return f"{sign}{int(whole):,}" + (f".{frac}" if frac else "")


def ok(response: httpx.Response, status: int = 200) -> dict[str, object]:
    assert response.status_code == status, response.text
    body: dict[str, object] = response.json() if response.content else {}
    return body


@dataclass
class Org:
    """An organization of the tests, its keys and what was sent to it."""

    org_id: str
    org_admin_key: str
    product_key: str
    members: list[str] = field(default_factory=list)


def make_org(meter: MeterRun, members: int, pack: str = "100000") -> Org:
    """An `enterprise` organization with billing groups `eng` (period limit 500) and `ops`,
    `members` members with a limit of 1000 each (`m000`... alternating groups, `m000` is Ada),
    a shared pack, an `org_admin` and a `product` key."""
    org_id = f"org-{uuid.uuid4().hex[:8]}"
    with meter.admin() as admin:
        ok(
            admin.post(
                "/v1/orgs",
                json={"org_id": org_id, "name": f"Acme {org_id[-4:]}", "plan_id": "enterprise"},
            ),
            201,
        )
        base = f"/v1/orgs/{org_id}"
        ok(
            admin.post(
                f"{base}/billing-groups",
                json={"billing_group_id": "eng", "name": "Engineering", "period_limit": "500"},
            ),
            201,
        )
        ok(
            admin.post(
                f"{base}/billing-groups", json={"billing_group_id": "ops", "name": "Operations"}
            ),
            201,
        )
        ids = []
        for i in range(members):
            member_id = f"m{i:03d}"
            name = "Ada Lovelace" if i == 0 else f"Member {i:03d}"
            body = {
                "member_id": member_id,
                "name": name,
                "email": f"{member_id}@example.com",
                "member_limit": "1000",
                "billing_group_id": "eng" if i % 2 == 0 else "ops",
            }
            ok(admin.post(f"{base}/members", json=body), 201)
            ids.append(member_id)
        grant = {"bucket_id": "pack-1", "kind": "shared", "amount": pack, "expires_at": FAR}
        ok(admin.post(f"{base}/grants", json=grant), 201)
        org_admin = ok(admin.post(f"{base}/keys", json={"scope": "org_admin"}), 201)["token"]
        product = ok(admin.post(f"{base}/keys", json={"scope": "product"}), 201)["token"]
    return Org(org_id, str(org_admin), str(product), ids)


def send_usage(meter: MeterRun, org: Org, usage: dict[str, list[int]]) -> int:
    """Send one event per amount (micro-credits) of each member, in one batch; returns the count."""
    now = time.time_ns() // 1_000_000
    events = [
        encode_event(
            event_id=f"e-{member}-{i}",
            source="//dashboard-test",
            org_id=org.org_id,
            member_id=member,
            credits=micro,
            time_ms=now,
        )
        for member, amounts in usage.items()
        for i, micro in enumerate(amounts)
    ]
    with httpx.Client(base_url=meter.url, timeout=30) as client:
        r = client.post(
            "/v1/events",
            content=b"[" + b",".join(events) + b"]",
            headers={
                "authorization": f"Bearer {org.product_key}",
                "content-type": "application/cloudevents-batch+json",
            },
        )
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == len(events), r.text
    return len(events)


async def sign_in(page: Page, meter: MeterRun, key: str) -> None:
    """Open the dashboard and sign in with `key`; returns once the first page is drawn."""
    await page.goto(meter.url + "/ui/")
    await page.get_by_test_id("key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_selector(
        "body[data-ready]:not([data-ready='']):not([data-ready=signin])", state="attached"
    )


async def opened(page: Page, url: str, name: str) -> None:
    """Go to `url` (a dashboard hash route) and wait until page `name` is drawn."""
    await page.evaluate("document.body.dataset.ready = ''")
    await page.goto(url)
    await page.wait_for_selector(
        f"body[data-ready={name}], body[data-ready=error]", state="attached", timeout=30_000
    )


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    """Take the page's picture; with `UI_SCREENSHOTS=1` save it as
    `docs/screenshots/{name}.png` (shown in the README), so a test run leaves the tree as it is."""
    image = await page.screenshot(full_page=full_page)
    assert image.startswith(b"\x89PNG")
    if os.environ.get("UI_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / f"{name}.png").write_bytes(image)
