"""A product keeps serving while meter's API process is stopped and started again: its checks
are answered by the `fail_open` policy meanwhile, its usage events wait in the spool, and once
meter is back every event is settled exactly once (the settled totals equal what was recorded)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

from meter_client import MeterClient

from client.support import MeterRun, make_tenant, totals, wait_totals

PHASE_REQUESTS = 200
"""Requests each phase (before, during and after the outage) must serve before the next."""


class ProductLoop(threading.Thread):
    """A product serving requests one after another: check (fail-open), then record the usage
    of each allowed request, with an id derived from the request."""

    def __init__(self, meter: MeterRun, org_id: str, key: str, spool: Path) -> None:
        super().__init__(name="product-loop", daemon=True)
        self.client = MeterClient(meter.url, key, policy="fail_open", spool=spool, timeout_s=0.2)
        self.org_id = org_id
        self.phase = "before"
        self.served: Counter[tuple[str, str]] = Counter()
        self.denied = 0
        self.recorded = 0
        self.credits = Decimal(0)
        self.slowest_s = 0.0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            i = 0
            while not self._halt.is_set():
                credits = Decimal(i % 7 + 1) / 1000
                started = time.perf_counter()
                decision = self.client.check(self.org_id, "ada", credits)
                self.slowest_s = max(self.slowest_s, time.perf_counter() - started)
                if decision.allowed:
                    self.client.record(self.org_id, "ada", credits, event_id=f"req-{i}")
                    self.recorded += 1
                    self.credits += credits
                    self.served[self.phase, decision.decided_by] += 1
                else:
                    self.denied += 1
                i += 1
                self._halt.wait(0.002)  # a few hundred requests a second, on a shared machine
        except BaseException as exc:
            self.error = exc

    def wait_served(self, phase: str, decided_by: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.served[phase, decided_by] < PHASE_REQUESTS:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, (phase, decided_by, self.served)
            time.sleep(0.05)

    def finish(self) -> None:
        self._halt.set()
        self.join(timeout=30)
        assert not self.is_alive()
        assert self.error is None, self.error


def test_a_product_keeps_serving_through_an_outage(meter: MeterRun, tmp_path: Path) -> None:
    tenant = make_tenant(meter)
    product = ProductLoop(meter, tenant.org_id, tenant.product_key, tmp_path / "spool.sqlite")
    product.start()
    try:
        product.wait_served("before", "meter")
        product.phase = "stopping"  # meter answers until its API process has stopped
        meter.stop()
        product.phase = "outage"
        try:
            product.wait_served("outage", "policy")
            assert product.client.spool is not None and product.client.spool.pending() > 0
        finally:
            product.phase = "restart"
            meter.start()
        product.phase = "after"
        product.wait_served("after", "meter")
    finally:
        product.finish()
    client = product.client
    try:
        assert client.flush(timeout_s=120)
        assert client.spool is not None and client.spool.rejected() == []
    finally:
        client.close()

    # Every request was served; the ones during the outage by the policy, none by meter.
    assert product.denied == 0
    assert product.served["outage", "meter"] == 0, product.served
    assert product.slowest_s < 5, product.slowest_s
    settled = wait_totals(meter, tenant.org_id, events=product.recorded, timeout_s=120)
    assert settled["events"] == product.recorded, (settled, product.recorded)
    assert Decimal(str(settled["credits"])) == product.credits, (settled, product.credits)
    assert totals(meter, tenant.org_id) == settled
    print(
        f"\noutage: {product.recorded} requests served ({dict(product.served)}), "
        f"slowest check {product.slowest_s * 1000:.0f} ms; "
        f"{settled['events']} events settled, {settled['credits']} credits, as recorded"
    )
