"""The TypeScript client's own tests (`node --test clients/typescript/test/`) against a real
`meter run`: this module creates their organizations and keys, hands them over in environment
variables, and fails with node's output when node fails (or is missing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from client.support import MeterRun, make_tenant

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "typescript"
TENANTS = ("quota", "errors", "other", "hold", "usage", "memory", "spool", "restart", "perf")


def org_admin_key(meter: MeterRun, org_id: str) -> str:
    """An `org_admin` key of the organization, for the tests to read its settled totals."""
    with meter.admin() as admin:
        r = admin.post(f"/v1/orgs/{org_id}/keys", json={"scope": "org_admin", "name": "reports"})
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token


def test_typescript_client(meter: MeterRun) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (18 or later) is needed to test the TypeScript client")
    tenants = {}
    for name in TENANTS:
        tenant = make_tenant(meter)
        tenants[name] = {
            "orgId": tenant.org_id,
            "memberId": tenant.member_id,
            "productKey": tenant.product_key,
            "adminKey": org_admin_key(meter, tenant.org_id),
        }
    env = {**os.environ, "METER_URL": meter.url, "METER_TENANTS": json.dumps(tenants)}
    done = subprocess.run(
        [node, "--test", "--test-reporter=spec", "--test-concurrency=1", "test/"],
        cwd=CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert "# fail 0" in done.stdout or "ℹ fail 0" in done.stdout, done.stdout[-5000:]
