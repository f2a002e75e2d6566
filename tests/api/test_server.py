"""The API served by uvicorn with `meter.api.server.HttpProtocol`, over real sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
import uvicorn

from api.support import ADMIN_TOKEN, make_org
from meter.api import App
from meter.api.server import uvicorn_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest_asyncio.fixture(loop_scope="session")
async def served(app: App) -> AsyncIterator[int]:
    port = _free_port()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
        assert not task.done(), "the server stopped"
    yield port
    server.should_exit = True
    await task


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


async def test_keep_alive_and_pipelined_requests(served: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    try:
        request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
        writer.write(request * 3)
        for _ in range(3):
            head, body = await _read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert body == b'{"status":"ok","checks":{}}'
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n")
        head, body = await _read_response(reader)
        assert head.startswith(b"HTTP/1.1 404 "), head
        assert b"route_not_found" in body
    finally:
        writer.close()


async def test_expect_continue(served: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served)
    try:
        body = b'{"org_id": "nobody", "member_id": "m", "credits": "1"}'
        writer.write(
            b"POST /v1/check HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        writer.write(body)
        head, answer = await _read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert answer == b'{"allowed":false,"reason":"unknown_org","available":{},' + (
            b'"member_remaining":null,"group_remaining":null,"period_end":null,'
            b'"reservation_id":null,"reservation_expires_at":null}'
        )
    finally:
        writer.close()


async def test_streamed_and_plain_responses(served: int) -> None:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served}", headers=headers) as client:
        org = await make_org(client)
        r = await client.post(f"/v1/orgs/{org}/members", json={"member_id": "ann"})
        assert r.status_code == 201, r.text
        r = await client.get(f"/v1/orgs/{org}/reports/export.csv")
        assert r.status_code == 200, r.text
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.text.splitlines()[0].startswith("Billing Group,")
        r = await client.post("/v1/check", json={"org_id": org, "member_id": "ann", "credits": 1})
        assert r.status_code == 200 and r.json()["reason"] == "insufficient_credits", r.text
        r = await client.post(
            "/v1/check", content=b"{", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
