"""The dashboard in Chromium against a real `meter run` with settled usage: what it shows is what
the API answers, and the edits it makes are the API's."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest_asyncio
from client.support import ADMIN_KEY, MeterRun, wait_totals
from playwright.async_api import Page, expect

from schemas.events import encode_event
from ui.support import Org, grouped, make_org, ok, opened, screenshot, send_usage, sign_in

MICRO = 1_000_000
MEMBERS = 120
PLAN = "enterprise"


def usage() -> dict[str, list[int]]:
    """Ada (m000) draws 3 x 10 credits, m001 2 x 25.5, every other member i + 0.25 credits once."""
    out = {"m000": [10 * MICRO] * 3, "m001": [25 * MICRO + MICRO // 2] * 2}
    for i in range(2, MEMBERS):
        out[f"m{i:03d}"] = [i * MICRO + MICRO // 4]
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def org(meter: MeterRun) -> AsyncIterator[Org]:
    tenant = make_org(meter, MEMBERS)
    sent = send_usage(meter, tenant, usage())
    assert wait_totals(meter, tenant.org_id, sent)["events"] == sent
    yield tenant


def api(meter: MeterRun, key: str) -> httpx.Client:
    return httpx.Client(base_url=meter.url, headers={"authorization": f"Bearer {key}"}, timeout=30)


async def test_overview_shows_the_api_numbers(page: Page, meter: MeterRun, org: Org) -> None:
    await sign_in(page, meter, org.org_admin_key)
    await expect(page.locator("[data-page=overview]")).to_be_visible()
    with api(meter, org.org_admin_key) as client:
        report = ok(client.get(f"/v1/orgs/{org.org_id}/reports/totals"))
        balances = ok(client.get(f"/v1/orgs/{org.org_id}/balances"))["balances"]
    totals = report["totals"]
    assert isinstance(totals, dict) and isinstance(balances, dict)
    assert totals["events"] == 3 + 2 + MEMBERS - 2
    for kind in ("credits", "seat", "personal", "shared", "on_demand", "unfunded"):
        shown = await page.get_by_test_id(f"total-{kind}").locator(".value").inner_text()
        assert shown == grouped(totals[kind]), kind
    assert totals["credits"] == "7249.5"  # 30 + 51 + sum(2..119) + 118 x 0.25
    left = await page.get_by_test_id("pool-left").locator(".value").inner_text()
    assert left == grouped(balances["pack-1"])
    # Engineering's usage past its 500-credit period limit was unfunded: the pack paid the rest.
    assert Decimal(balances["pack-1"]) + Decimal(totals["shared"]) == 100_000
    assert await page.get_by_test_id("pool-expiry").locator(".value").inner_text() == "1 Jan 2099"
    period = await page.get_by_test_id("period").inner_text()
    assert "renews" in period and "UTC" in period
    await expect(page.get_by_test_id("daily-chart").locator("canvas")).to_have_count(1)
    # Engineering (period limit 500) is far past 100 %: the crossing is listed.
    await expect(page.get_by_test_id("alerts")).to_contain_text("Billing group Engineering")
    await screenshot(page, "overview")


async def test_members_sort_search_and_page(page: Page, meter: MeterRun, org: Org) -> None:
    await sign_in(page, meter, org.org_admin_key)
    await opened(page, f"{meter.url}/ui/#/{org.org_id}/members", "members")
    table = page.get_by_test_id("members")
    await expect(page.get_by_test_id("member-count")).to_have_text("120 of 120 members")
    await expect(page.get_by_test_id("page-info")).to_have_text("Page 1 of 3")
    # Most used first: m119 drew 119.25 credits.
    first = table.locator("tbody tr").first
    assert await first.get_attribute("data-member") == "m119"
    assert await first.locator("[data-col=used]").inner_text() == "119.25"
    await screenshot(page, "members", full_page=False)
    await table.locator("[data-sort=used]").click()  # ascending
    assert await table.locator("tbody tr").first.get_attribute("data-member") == "m002"
    await table.locator("[data-sort=name]").click()
    rows = table.locator("tbody tr")
    assert await rows.first.get_attribute("data-member") == "m000"  # Ada Lovelace
    await page.get_by_test_id("next").click()
    await expect(page.get_by_test_id("page-info")).to_have_text("Page 2 of 3")
    assert await rows.first.get_attribute("data-member") == "m050"
    await page.get_by_test_id("next").click()
    await expect(rows).to_have_count(20)
    await expect(page.get_by_test_id("next")).to_be_disabled()
    await page.get_by_test_id("member-search").fill("member 11")
    await expect(page.get_by_test_id("member-count")).to_have_text("10 of 120 members")
    await expect(page.get_by_test_id("page-info")).to_have_text("Page 1 of 1")


async def test_a_new_limit_changes_the_check(page: Page, meter: MeterRun, org: Org) -> None:
    check = {"org_id": org.org_id, "member_id": "m001", "credits": "100"}
    with api(meter, org.product_key) as product:
        before = ok(product.post("/v1/check", json=check))
    assert before["allowed"] is True
    await sign_in(page, meter, org.org_admin_key)
    await opened(page, f"{meter.url}/ui/#/{org.org_id}/member/m001", "member")
    assert await page.get_by_test_id("member-used").locator(".value").inner_text() == "51"
    await page.get_by_test_id("limit-input").fill("60")
    await page.get_by_test_id("limit-form").get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("limit-form-message")).to_have_text("Saved")
    await expect(page.get_by_test_id("limit-value")).to_have_text("60")
    with api(meter, org.product_key) as product:
        after = ok(product.post("/v1/check", json=check))
    assert after["allowed"] is False and after["member_remaining"] == "9", after
    # A refused value shows the API's own message next to the field.
    await page.get_by_test_id("limit-input").fill("1.0000001")
    await page.get_by_test_id("limit-form").get_by_role("button", name="Save").click()
    message = page.get_by_test_id("limit-form-message")
    await expect(message).to_contain_text("request body is not valid")
    await expect(message).to_have_class("message error")
    await page.get_by_test_id("limit-input").fill("1000")
    await page.get_by_test_id("limit-form").get_by_role("button", name="Save").click()
    await expect(message).to_have_text("Saved")
    await screenshot(page, "member")


async def test_export_is_the_api_export_byte_for_byte(
    page: Page, meter: MeterRun, org: Org
) -> None:
    await sign_in(page, meter, org.org_admin_key)
    await opened(page, f"{meter.url}/ui/#/{org.org_id}/billing-groups", "billing-groups")
    eng = page.locator("[data-group=eng]")
    # Ada's 30, the even members' 2 + 4 + ... + 118 and 59 quarters.
    await expect(eng.locator("[data-col=used]")).to_have_text("3,584.75")
    async with page.expect_download() as info:
        await page.get_by_test_id("export").click()
    download = await info.value
    saved = await download.path()
    with api(meter, org.org_admin_key) as client:
        r = client.get(f"/v1/orgs/{org.org_id}/reports/export.csv")
    assert r.status_code == 200
    assert saved.read_bytes() == r.content
    assert r.content.startswith(b"Billing Group,Member Name,Email,Credits Consumption")
    assert download.suggested_filename.endswith(".csv")
    await screenshot(page, "billing-groups")


async def test_a_billing_group_limit_is_set_here(page: Page, meter: MeterRun, org: Org) -> None:
    await sign_in(page, meter, org.org_admin_key)
    await opened(page, f"{meter.url}/ui/#/{org.org_id}/billing-groups", "billing-groups")
    await page.get_by_test_id("limit-ops").fill("-5")
    form = page.get_by_test_id("group-limit-ops")
    await form.get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("group-limit-ops-message")).to_contain_text("not valid")
    await page.get_by_test_id("limit-ops").fill("2500")
    await form.get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("group-limit-ops-message")).to_have_text("Saved")
    with api(meter, org.org_admin_key) as client:
        group = ok(client.get(f"/v1/orgs/{org.org_id}/billing-groups/ops"))
    assert group["period_limit"] == "2500"


async def test_credits_and_a_pack_an_org_admin_may_not_add(
    page: Page, meter: MeterRun, org: Org
) -> None:
    await sign_in(page, meter, org.org_admin_key)
    await opened(page, f"{meter.url}/ui/#/{org.org_id}/credits", "credits")
    row = page.locator("[data-bucket=pack-1]")
    await expect(row).to_contain_text("100,000")
    with api(meter, org.org_admin_key) as client:
        left = ok(client.get(f"/v1/orgs/{org.org_id}/balances"))["balances"]
    assert isinstance(left, dict)
    await expect(row.locator("td").nth(4)).to_have_text(grouped(left["pack-1"]))
    await page.get_by_test_id("pack-amount").fill("500")
    await page.get_by_test_id("pack-expires").fill("2098-06-01")
    await page.get_by_test_id("pack-form").get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("pack-form-message")).to_contain_text("cannot do this")
    await screenshot(page, "credits")
    await opened(page, f"{meter.url}/ui/#/{org.org_id}/charges", "charges")
    await expect(page.locator("main")).to_contain_text("No on-demand charges")


async def test_an_admin_chooses_the_organization(page: Page, meter: MeterRun, org: Org) -> None:
    # More organizations than one page of the chooser (50): the last one is on its second page.
    last = f"zz-{uuid.uuid4().hex[:8]}"
    with api(meter, ADMIN_KEY) as admin:
        for i in range(50):
            body = {
                "org_id": f"{last[:-1]}-{i:02d}",
                "name": f"Filler {i}",
                "plan_id": "enterprise",
            }
            ok(admin.post("/v1/orgs", json=body), 201)
        ok(
            admin.post("/v1/orgs", json={"org_id": last, "name": "Last", "plan_id": "enterprise"}),
            201,
        )
        listed = ok(admin.get("/v1/orgs", params={"limit": "50"}))
    orgs = listed["orgs"]
    assert isinstance(orgs, list) and listed["next_after"] is not None
    await sign_in(page, meter, ADMIN_KEY)
    chooser = page.get_by_test_id("choose-org")
    await expect(chooser.locator("a[data-org]")).to_have_count(50)
    shown = await chooser.locator("a[data-org]").evaluate_all("els => els.map(e => e.dataset.org)")
    assert shown == [o["org_id"] for o in orgs]
    await expect(chooser.locator(f"a[data-org='{last}']")).to_have_count(0)
    await page.get_by_test_id("orgs-more").click()
    await chooser.locator(f"a[data-org='{last}']").click()
    await page.wait_for_selector("body[data-ready=overview]", state="attached")
    await expect(page.locator("h1")).to_have_text("Last active")
    # The organization of the tests, from the first page of the list.
    await page.goto(f"{meter.url}/ui/#/")
    await page.locator(f"a[data-org='{org.org_id}']").click()
    await page.wait_for_selector("body[data-ready=overview]", state="attached")
    await expect(page.get_by_test_id("total-credits").locator(".value")).to_have_text("7,249.5")


async def test_another_organizations_key_sees_nothing(
    page: Page, meter: MeterRun, org: Org
) -> None:
    other = make_org(meter, 1)
    await sign_in(page, meter, other.org_admin_key)
    assert page.url.endswith(f"#/{other.org_id}/overview")
    await expect(page.get_by_test_id("total-credits").locator(".value")).to_have_text("0")
    await expect(page.locator("main")).to_contain_text("No usage settled this period yet")
    for name in ("overview", "members", "billing-groups", "credits", "charges"):
        await opened(page, f"{meter.url}/ui/#/{org.org_id}/{name}", name)
        error = page.get_by_test_id("page-error")
        await expect(error).to_have_text(
            "This organization does not exist or this key may not read it."
        )
        text = await page.locator("main").inner_text()
        assert "Ada" not in text and "7,249.5" not in text and "Engineering" not in text


async def test_sign_out_forgets_the_key(page: Page, meter: MeterRun, org: Org) -> None:
    await sign_in(page, meter, org.org_admin_key)
    assert await page.evaluate("sessionStorage.length") == 1
    await page.get_by_test_id("sign-out").click()
    await expect(page.get_by_test_id("signin")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
    assert await page.evaluate("localStorage.length") == 0
    await page.reload()
    await expect(page.get_by_test_id("signin")).to_be_visible()
    # A wrong key is the API's refusal, shown on the form.
    await page.get_by_test_id("key").fill("mk_" + "x" * 43)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_test_id("signin-error")).not_to_be_empty()


async def test_a_member_moves_to_another_billing_group(
    page: Page, meter: MeterRun, org: Org
) -> None:
    await sign_in(page, meter, org.org_admin_key)
    await opened(page, f"{meter.url}/ui/#/{org.org_id}/member/m003", "member")
    await expect(page.get_by_test_id("group-select")).to_have_value("ops")
    await page.get_by_test_id("group-select").select_option("eng")
    await page.get_by_test_id("group-form").get_by_role("button", name="Save").click()
    await expect(page.get_by_test_id("group-form-message")).to_have_text("Saved")
    with api(meter, org.org_admin_key) as client:
        member = ok(client.get(f"/v1/orgs/{org.org_id}/members/m003"))
    assert member["billing_group_id"] == "eng"


def wait_dead_letters(
    meter: MeterRun, org: Org, count: int, timeout_s: float = 60
) -> list[dict[str, Any]]:
    """The organization's dead letters once the consumer has recorded `count` of them."""
    deadline = time.monotonic() + timeout_s
    with api(meter, org.org_admin_key) as client:
        while True:
            letters = ok(client.get(f"/v1/orgs/{org.org_id}/dead-letters"))["dead_letters"]
            assert isinstance(letters, list)
            if len(letters) >= count:
                return letters
            assert time.monotonic() < deadline, f"{len(letters)} dead letters after {timeout_s}s"
            time.sleep(0.2)


async def test_dead_letters_show_what_the_consumer_refused(page: Page, meter: MeterRun) -> None:
    tenant = make_org(meter, 1)
    event = encode_event(
        event_id="for-nobody", source="//dashboard-test", org_id=tenant.org_id,
        member_id="nobody", credits=2 * MICRO, time_ms=time.time_ns() // 1_000_000,
    )  # fmt: skip
    with api(meter, tenant.product_key) as product:
        r = product.post(
            "/v1/events", content=event, headers={"content-type": "application/cloudevents+json"}
        )
    assert r.status_code == 202, r.text
    [letter] = wait_dead_letters(meter, tenant, 1)
    assert letter["reason"] == "unknown_member"

    await sign_in(page, meter, tenant.org_admin_key)  # an org_admin key sees the page
    await page.locator("#nav").get_by_role("link", name="Dead letters").click()
    await page.wait_for_selector("body[data-ready=dead-letters]", state="attached")
    row = page.locator(f"[data-dead-letter='{letter['id']}']")
    await expect(row.locator("[data-col=reason]")).to_have_text("unknown_member")
    await expect(row.locator("[data-col=detail]")).to_have_text(str(letter["detail"]))
    assert "nobody" in str(letter["detail"])
    where = f"{letter['topic']}/{letter['partition']}@{letter['offset']}"
    await expect(row.locator("[data-col=where]")).to_have_text(where)
    await row.locator("summary").click()
    await expect(row.locator("pre.event")).to_have_text(event.decode())
    assert "for-nobody" in event.decode()
    await screenshot(page, "dead-letters")


async def test_alerts_are_the_recorded_ones(page: Page, meter: MeterRun, org: Org) -> None:
    with api(meter, org.org_admin_key) as client:
        recorded = ok(client.get(f"/v1/orgs/{org.org_id}/alerts"))["alerts"]
    assert isinstance(recorded, list)
    # Engineering (period limit 500) drew far more: its 80 % and 100 % alerts fired.
    eng = [a for a in recorded if a["kind"] == "billing_group_limit"]
    assert sorted(a["threshold_percent"] for a in eng) == [80, 100]
    await sign_in(page, meter, org.org_admin_key)
    overview = page.get_by_test_id("alerts")
    shown = await overview.locator("tr[data-alert]").evaluate_all(
        "rows => rows.map(r => Number(r.dataset.alert))"
    )
    assert shown == [a["alert_id"] for a in recorded][:5]
    hundred = next(a for a in eng if a["threshold_percent"] == 100)
    row = overview.locator(f"tr[data-alert='{hundred['alert_id']}']")
    await expect(row).to_contain_text("Billing group Engineering")
    await expect(row).to_contain_text(
        f"100% of its period limit reached: {grouped(hundred['used'])} of 500 credits"
    )
    await opened(page, f"{meter.url}/ui/#/{org.org_id}/charges", "charges")
    listed = page.get_by_test_id("alerts").locator("tr[data-alert]")
    await expect(listed).to_have_count(min(len(recorded), 20))


async def test_a_members_latest_settlements(page: Page, meter: MeterRun) -> None:
    tenant = make_org(meter, 1)
    sent = send_usage(meter, tenant, {"m000": [(i + 1) * MICRO for i in range(25)]})
    assert wait_totals(meter, tenant.org_id, sent)["events"] == sent
    with api(meter, tenant.org_admin_key) as client:
        every = ok(client.get(f"/v1/orgs/{tenant.org_id}/members/m000/settlements?limit=1000"))
    settled = every["settlements"]
    assert isinstance(settled, list) and len(settled) == 25
    await sign_in(page, meter, tenant.org_admin_key)
    await opened(page, f"{meter.url}/ui/#/{tenant.org_id}/member/m000", "member")
    rows = page.get_by_test_id("settlements").locator("tbody tr")
    await expect(rows).to_have_count(20)  # the first page
    await page.get_by_test_id("settlements-more").click()
    await expect(rows).to_have_count(25)
    await expect(page.get_by_test_id("settlements-more")).to_be_hidden()
    keys = await rows.evaluate_all("rows => rows.map(r => r.dataset.key)")
    assert keys == [s["key"] for s in settled]  # newest first, as the API pages them
    for i in (0, 24):
        s, row = settled[i], rows.nth(i)
        await expect(row.locator("[data-col=credits]")).to_have_text(grouped(s["credits"]))
        drawn = ", ".join(
            f"{b['kind']} {b['bucket_id']}: {grouped(b['amount'])}" for b in s["buckets"]
        )
        await expect(row.locator("[data-col=buckets]")).to_have_text(drawn)
        await expect(row.locator("[data-col=event]")).to_have_text(s["id"])
    # Past the member limit of 1,000 nothing is drawn: 25 x 13 on average stays within it.
    assert all(s["member_limited"] is False for s in settled)
