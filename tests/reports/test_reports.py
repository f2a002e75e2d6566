"""Reports over the known dataset of conftest.py.

January 2025 (historical): alice 12 + 4.5 in Engineering; bob 3 in Engineering, then reassigned,
20 + 5 in "Ops, EU"; carol (no seat) 2.5 unfunded in Unassigned; dave 1.000001 in "Ops, EU",
then removed. February 2025 (current): erin joins Engineering, no usage; alice 1 unfunded.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx

from reports.conftest import World

JAN = "2025-01-01"
JAN_CSV = (
    b"Billing Group,Member Name,Email,Credits Consumption\r\n"
    b'Engineering,"Bob ""the Builder""",bob@example.com,3\r\n'
    b'Engineering,"Smith, Alice",alice@example.com,16.5\r\n'
    b'"Ops, EU","Bob ""the Builder""",bob@example.com,25\r\n'
    b'"Ops, EU",Dave Departed,dave@example.com,1.000001\r\n'
    b"Unassigned,Carol Jones,carol@example.com,2.5\r\n"
)
FEB_CSV = (
    b"Billing Group,Member Name,Email,Credits Consumption\r\n"
    b"Engineering,Erin New,erin@example.com,0\r\n"
    b'Engineering,"Smith, Alice",alice@example.com,1\r\n'
    b'"Ops, EU","Bob ""the Builder""",bob@example.com,0\r\n'
    b"Unassigned,Carol Jones,carol@example.com,0\r\n"
)


def totals(credits: str, events: int, **kinds: str) -> dict[str, Any]:
    out: dict[str, Any] = {"events": events, "credits": credits}
    for kind in ("seat", "personal", "shared", "on_demand", "unfunded"):
        out[kind] = kinds.get(kind, "0")
    return out


async def get(world: World, path: str, token: str | None = None, **params: str) -> Any:
    async with world.client(token) if token else world.client() as c:
        r = await c.get(f"/v1/orgs/{world.org_id}/reports{path}", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def export(world: World, **params: str) -> httpx.Response:
    async with world.client() as c:
        return await c.get(f"/v1/orgs/{world.org_id}/reports/export.csv", params=params)


# -- CSV export -----------------------------------------------------------------------------------


async def test_historical_export_byte_for_byte(world: World) -> None:
    r = await export(world, period=JAN)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == f'attachment; filename="{world.org_id}_{JAN}.csv"'
    assert r.content == JAN_CSV
    # Any day of the period names it.
    assert (await export(world, period="2025-01-20")).content == JAN_CSV


async def test_export_of_one_group(world: World) -> None:
    header, *rows = JAN_CSV.split(b"\r\n")[:-1]
    for group, name in (("ops", b'"Ops, EU"'), ("unassigned", b"Unassigned"), ("", b"Unassigned")):
        r = await export(world, period=JAN, billing_group=group)
        assert r.status_code == 200, r.text
        expected = [header, *(row for row in rows if row.startswith(name + b","))]
        assert r.content == b"\r\n".join(expected) + b"\r\n"


async def test_current_period_export_lists_current_members(world: World) -> None:
    assert (await export(world)).content == FEB_CSV
    assert (await export(world, period="current")).content == FEB_CSV
    r = await export(world, billing_group="eng")
    assert r.content == b"\r\n".join(FEB_CSV.split(b"\r\n")[:3]) + b"\r\n"


async def test_export_refusals(world: World) -> None:
    assert (await export(world, billing_group="nope")).status_code == 404
    assert (await export(world, period="2025-03-01")).json()["error"]["code"] == (
        "period_in_future"
    )
    assert (await export(world, period="January")).json()["error"]["code"] == "invalid_period"
    assert (await export(world, colour="red")).status_code == 422


async def test_export_cli(world: World, tmp_path: Path) -> None:
    out = tmp_path / "jan.csv"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meter.cli", "export", "--org", world.org_id, "--period", JAN,
        "--out", str(out),
        env={"METER_POSTGRES_DSN": world.dsn, "METER_LOG_FORMAT": "console", "PATH": ""},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.read_bytes() == JAN_CSV
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meter.cli", "export", "--org", world.org_id, "--period", JAN,
        "--billing-group", "nope",
        env={"METER_POSTGRES_DSN": world.dsn, "PATH": ""},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, err = await proc.communicate()
    assert proc.returncode == 1 and stdout == b""
    assert b"billing_group_not_found" in err


# -- totals ---------------------------------------------------------------------------------------


async def test_org_totals_split_by_kind(world: World) -> None:
    jan = await get(world, "/totals", period=JAN)
    assert jan["period"] == {
        "start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:00Z", "current": False,
    }  # fmt: skip
    assert jan["totals"] == totals(
        "48.000001", 7, seat="21.000001", personal="5", shared="15", on_demand="4.5",
        unfunded="2.5",
    )  # fmt: skip
    feb = await get(world, "/totals")
    assert feb["period"]["current"] is True
    assert feb["totals"] == totals("1", 1, unfunded="1")


async def test_periods(world: World) -> None:
    body = await get(world, "/periods")
    assert [(p["period"]["start"], p["period"]["current"], p["totals"]["credits"])
            for p in body["periods"]] == [
        ("2025-02-01T00:00:00Z", True, "1"), ("2025-01-01T00:00:00Z", False, "48.000001"),
    ]  # fmt: skip


async def test_billing_group_totals(world: World) -> None:
    jan = await get(world, "/billing-groups", period=JAN)
    assert [(g["billing_group_id"], g["name"], g["totals"]) for g in jan["billing_groups"]] == [
        ("eng", "Engineering", totals("19.5", 3, seat="13", personal="5", shared="1.5")),
        ("ops", "Ops, EU", totals("26.000001", 3, seat="8.000001", shared="13.5",
                                  on_demand="4.5")),
        ("", "Unassigned", totals("2.5", 1, unfunded="2.5")),
    ]  # fmt: skip
    feb = await get(world, "/billing-groups")
    assert [(g["billing_group_id"], g["totals"]["credits"]) for g in feb["billing_groups"]] == [
        ("eng", "1"), ("ops", "0"), ("", "0"),
    ]  # fmt: skip


async def test_member_report_shows_reassignment(world: World) -> None:
    bob = await get(world, "/members/bob", period=JAN)
    assert bob["member"]["totals"] == totals("28", 3, seat="10", shared="13.5", on_demand="4.5")
    assert bob["member"]["billing_group_id"] == "ops" and bob["member"]["active"] is True
    assert [(g["name"], g["totals"]["credits"]) for g in bob["billing_groups"]] == [
        ("Engineering", "3"), ("Ops, EU", "25"),
    ]  # fmt: skip
    dave = await get(world, "/members/dave", period=JAN)
    assert dave["member"]["active"] is False and dave["member"]["billing_group_id"] is None
    async with world.client() as c:
        r = await c.get(f"/v1/orgs/{world.org_id}/reports/members/zed")
    assert r.status_code == 404 and r.json()["error"]["code"] == "member_not_found"


# -- member pages ---------------------------------------------------------------------------------


async def pages(world: World, limit: int, **params: str) -> list[list[tuple[str, str]]]:
    out = []
    after = ""
    while True:
        page = await get(world, "/members", limit=str(limit), after=after, **params)
        out.append([(m["member_id"], m["totals"]["credits"]) for m in page["members"]])
        if page["next_after"] is None:
            return out
        assert page["next_after"] == page["members"][-1]["member_id"]
        after = page["next_after"]


async def test_historical_pages_list_usage_records_only(world: World) -> None:
    assert await pages(world, 2, period=JAN) == [
        [("alice", "16.5"), ("bob", "28")], [("carol", "2.5"), ("dave", "1.000001")],
    ]  # fmt: skip
    assert await pages(world, 3, period=JAN) == [
        [("alice", "16.5"), ("bob", "28"), ("carol", "2.5")], [("dave", "1.000001")],
    ]  # fmt: skip
    assert await pages(world, 10, period=JAN, billing_group="eng") == [
        [("alice", "16.5"), ("bob", "3")],
    ]


async def test_current_pages_list_current_members(world: World) -> None:
    everyone = [("alice", "1"), ("bob", "0"), ("carol", "0"), ("erin", "0")]
    assert await pages(world, 100) == [everyone]
    assert await pages(world, 1) == [[m] for m in everyone]
    assert await pages(world, 10, billing_group="eng") == [[("alice", "1"), ("erin", "0")]]
    assert await pages(world, 10, billing_group="Unassigned") == [[("carol", "0")]]
    page = await get(world, "/members", limit="1")
    assert page["members"][0] == {
        "member_id": "alice", "name": "Smith, Alice", "email": "alice@example.com",
        "active": True, "billing_group_id": "eng", "totals": totals("1", 1, unfunded="1"),
    }  # fmt: skip


async def test_page_limits(world: World) -> None:
    async with world.client() as c:
        for limit in ("0", "1001", "x"):
            r = await c.get(f"/v1/orgs/{world.org_id}/reports/members", params={"limit": limit})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_limit"


# -- daily series ---------------------------------------------------------------------------------


async def test_daily_series(world: World) -> None:
    org = await get(world, "/daily", period=JAN)
    days = {d["day"]: d["totals"] for d in org["days"]}
    assert list(days) == [f"2025-01-{n:02d}" for n in range(1, 32)]
    used = {day: t["credits"] for day, t in days.items() if t["events"]}
    assert used == {
        "2025-01-05": "12", "2025-01-06": "7.5", "2025-01-11": "20", "2025-01-12": "7.5",
        "2025-01-15": "1.000001",
    }  # fmt: skip
    assert days["2025-01-05"] == totals("12", 1, seat="10", personal="2")
    bob = await get(world, "/members/bob/daily", period=JAN)
    assert {d["day"]: d["totals"]["credits"] for d in bob["days"] if d["totals"]["events"]} == {
        "2025-01-06": "3", "2025-01-11": "20", "2025-01-12": "5",
    }  # fmt: skip
    feb = await get(world, "/daily")
    assert len(feb["days"]) == 28
    assert [d["day"] for d in feb["days"] if d["totals"]["events"]] == ["2025-02-03"]


# -- access ---------------------------------------------------------------------------------------


async def test_access(world: World) -> None:
    path = f"/v1/orgs/{world.org_id}/reports"
    async with world.client(world.tokens["org_admin"]) as c:
        assert (await c.get(path + "/totals")).status_code == 200
        assert (await c.get(path + "/export.csv")).content == FEB_CSV
    async with world.client(world.tokens["product"]) as c:
        assert (await c.get(path + "/totals")).status_code == 403
        assert (await c.get(path + "/export.csv")).status_code == 403
    async with world.client(world.tokens["other"]) as c:
        for route in ("/totals", "/members", "/members/alice", "/daily", "/export.csv"):
            r = await c.get(path + route)
            assert r.status_code == 404 and r.json()["error"]["code"] == "org_not_found"
        assert (await c.get(f"/v1/orgs/{world.other_org_id}/reports/totals")).status_code == 200
    async with world.client(None) as c:
        assert (await c.get(path + "/totals")).status_code == 401
    async with world.client() as c:
        r = await c.get("/v1/orgs/no-such-org/reports/totals")
        assert r.status_code == 404 and r.json()["error"]["code"] == "org_not_found"
