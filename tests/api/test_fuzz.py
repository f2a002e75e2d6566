"""Fuzzing: schemathesis over the committed OpenAPI document, with a key of each scope, against the
API served by uvicorn on a real socket. No answer may be a 5xx.

Bounded and reproducible: a fixed seed, deterministic generation, `FUZZ_EXAMPLES` cases per
operation and phase (about 2,000 requests per scope). The requests aim at one organization (the
key's own for organization keys; `fuzz_hooks.py`), so they reach the handlers behind the access
check; other organizations' ids are the tenancy tests' business. `GET /readyz` is left out: its
503 is an answer (a dependency is away), not a fault. The routes a scope may not use answer 403
throughout, by design: schemathesis's warning about it is off. Every answer is also counted by the
server itself, so the figures do not depend on the fuzzer's report.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api.support import ADMIN_TOKEN, FAR, make_billing_key, make_key, make_org
from meter.api import App
from meter.api.openapi import COMMITTED
from meter.api.server import HttpLimits, uvicorn_config

FUZZ_EXAMPLES = 5
SEED = 20261201
RUN_TIMEOUT_S = 300.0
SCOPES = ("admin", "billing", "org_admin", "product")


class Observed:
    """An ASGI wrapper that counts the statuses the app answers and keeps every 5xx request."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.statuses: collections.Counter[int] = collections.Counter()
        self.server_errors: list[tuple[str, str, bytes, int]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def observe(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                self.statuses[status] += 1
                if status >= 500:
                    query = scope.get("query_string", b"")
                    self.server_errors.append((scope["method"], scope["path"], query, status))
            await send(message)

        await self.app(scope, receive, observe)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def served(app: App) -> AsyncIterator[tuple[Observed, int]]:
    observed = Observed(app)
    port = _free_port()
    limits = HttpLimits(
        header_timeout_s=30.0, body_timeout_s=30.0, keep_alive_s=30, max_connections=200,
        max_concurrency=200,
    )  # fmt: skip
    config = uvicorn_config(
        observed, "127.0.0.1", port, lifespan="off", limits=limits, timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
        assert not task.done(), "the server stopped"
    yield observed, port
    server.should_exit = True
    await task


async def _key(admin: httpx.AsyncClient, scope: str) -> tuple[str, str]:
    """A key of `scope` and the organization the requests aim at (the key's own, for
    organization keys): one with a member and credits."""
    org = await make_org(admin)
    for path, body in [
        (f"/v1/orgs/{org}/members", {"member_id": "alice"}),
        (f"/v1/orgs/{org}/grants", {"kind": "shared", "amount": "50", "expires_at": FAR}),
    ]:
        r = await admin.post(path, json=body)
        assert r.status_code == 201, r.text
    if scope == "admin":
        return ADMIN_TOKEN, org
    if scope == "billing":
        return await make_billing_key(admin), org
    return await make_key(admin, org, scope), org


@pytest.mark.parametrize("scope", SCOPES)
async def test_no_server_error_for_any_scope(
    scope: str, served: tuple[Observed, int], admin: httpx.AsyncClient, tmp_path: Path
) -> None:
    observed, port = served
    token, org = await _key(admin, scope)
    st = Path(sys.executable).parent / "schemathesis"
    process = await asyncio.create_subprocess_exec(
        str(st), "run", str(COMMITTED),
        "--url", f"http://127.0.0.1:{port}",
        "--header", f"Authorization: Bearer {token}",
        "--checks", "not_a_server_error",
        "--exclude-path", "/readyz",
        "--max-examples", str(FUZZ_EXAMPLES),
        "--seed", str(SEED),
        "--generation-deterministic",
        "--continue-on-failure",
        "--workers", "1",
        "--request-timeout", "20",
        "--no-color",
        "--warnings", "off",
        "--output-sanitize", "true",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **os.environ,
            "NO_COLOR": "1",
            "SCHEMATHESIS_HOOKS": "fuzz_hooks",
            "PYTHONPATH": str(Path(__file__).parent),
            "FUZZ_ORG": org,
        },
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    total = sum(observed.statuses.values())
    classes = collections.Counter(f"{s // 100}xx" for s in observed.statuses.elements())
    print(f"{scope}: {total} fuzzed requests, {dict(sorted(classes.items()))}")
    report = out.decode(errors="replace")
    assert not observed.server_errors, (observed.server_errors[:20], report[-6000:])
    assert process.returncode == 0, report[-6000:]
    assert total > 0
