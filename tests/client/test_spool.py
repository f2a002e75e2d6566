"""The durable spool against a real `meter run` taken down and brought back: events recorded
while meter is away are kept, replayed by another process in order with their ids, and every
event is settled exactly once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

from meter_client import MeterClient, Spool

from client.support import MeterRun, make_tenant, totals, wait_totals

EVENTS = 2000

PRODUCT = textwrap.dedent(
    """
    import json, sys, time
    from meter_client import MeterClient, Spool

    url, key, org, spool, count = sys.argv[1:6]
    client = MeterClient(url, key, policy="fail_open", spool=spool, timeout_s=0.2)
    served = by_policy = 0
    started = time.perf_counter()
    for i in range(int(count)):
        if i % 100 == 0:
            decision = client.check(org, "ada", "0.25")
            served += decision.allowed
            by_policy += decision.decided_by == "policy"
        client.record(org, "ada", "0.25", event_id=f"out-{i}", attributes={"n": i})
    appended = time.perf_counter() - started
    shut = client.check(org, "ada", "0.25", policy="fail_closed")
    client.close(flush_timeout_s=0.2)
    pending = Spool(spool).pending()
    print(json.dumps({"served": served, "by_policy": by_policy, "pending": pending,
                      "appended_s": appended, "shut": shut.allowed}))
    """
)


def spooled_ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT body FROM events ORDER BY seq").fetchall()
    return [row[0].split(b'"id":"', 1)[1].split(b'"', 1)[0].decode() for row in rows]


def test_events_recorded_during_an_outage_are_settled_exactly_once(
    meter: MeterRun, tmp_path: Path
) -> None:
    tenant = make_tenant(meter)
    spool = tmp_path / "events.sqlite"
    meter.stop()
    try:
        args = [meter.url, tenant.product_key, tenant.org_id, str(spool), str(EVENTS)]
        done = subprocess.run(
            [sys.executable, "-c", PRODUCT, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        # The product kept serving (fail-open), and nothing was lost: every event is spooled.
        assert seen["served"] == seen["by_policy"] == EVENTS // 100, seen
        assert seen["shut"] is False
        assert seen["pending"] == EVENTS
        assert spooled_ids(spool) == [f"out-{i}" for i in range(EVENTS)]
        print(
            f"\nspool: {EVENTS / seen['appended_s']:.0f} events/s appended (with 1 check per 100)"
        )
    finally:
        meter.start()

    # A copy of the spool, replayed too: every event then reaches meter twice.
    copy = tmp_path / "copy.sqlite"
    with sqlite3.connect(spool) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)

    started = time.perf_counter()
    with MeterClient(meter.url, tenant.product_key, policy="fail_open", spool=spool) as client:
        assert client.flush(timeout_s=120)
        replayed = time.perf_counter() - started
        assert client.spool is not None and client.spool.pending() == 0
        assert client.spool.rejected() == []
    print(f"spool: {EVENTS / replayed:.0f} events/s replayed (acknowledged by meter)")
    with MeterClient(meter.url, tenant.product_key, policy="fail_open", spool=copy) as again:
        assert again.flush(timeout_s=120)
        # One more event after the duplicates, on the same partition: once it is settled, every
        # duplicate before it has been seen by the consumer.
        again.record(tenant.org_id, "ada", "1", event_id=f"last-{uuid.uuid4().hex}")
        assert again.flush(timeout_s=60)

    settled = wait_totals(meter, tenant.org_id, events=EVENTS + 1)
    assert settled["events"] == EVENTS + 1, settled
    assert settled["credits"] == str(EVENTS // 4 + 1), settled
    assert totals(meter, tenant.org_id) == settled


def test_spool_keeps_order_and_sets_refused_events_aside(meter: MeterRun, tmp_path: Path) -> None:
    tenant = make_tenant(meter)
    other = make_tenant(meter)
    path = tmp_path / "spool.sqlite"
    spool = Spool(path)
    for i in range(5):
        spool.append(f'{{"n":{i}}}'.encode())
    assert [body for _, body in spool.peek(3)] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert len(spool.peek(10, max_bytes=16)) == 2
    spool.ack([seq for seq, _ in spool.peek(5)])
    assert spool.pending() == 0
    spool.close()

    with MeterClient(meter.url, tenant.product_key, policy="fail_closed", spool=path) as client:
        client.record(tenant.org_id, "ada", "1", event_id="mine")
        client.record(other.org_id, "ada", "1", event_id="theirs")
        client.record(tenant.org_id, "ada", "2", event_id="mine-too")
        assert client.flush(timeout_s=60)
        assert client.spool is not None
        refused = client.spool.rejected()
    assert [(b'"theirs"' in body, code) for body, code, _ in refused] == [(True, "org_not_found")]
    settled = wait_totals(meter, tenant.org_id, events=2)
    assert settled["events"] == 2 and settled["credits"] == "3", settled
