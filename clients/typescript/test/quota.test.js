// Checks, reservations, releases, events and holds against the real meter; the policies against
// a closed port; the in-memory spool across an outage (a proxy taken down and brought back).

import test from "node:test";
import assert from "node:assert/strict";
import {
  InvalidInput,
  MeterClient,
  MeterUnavailable,
  NotFound,
  QuotaDenied,
  Unauthenticated,
  fromAnthropic,
  fromOpenAI,
  microCredits,
} from "../src/index.js";
import { PRICES, Proxy, closedPort, meter, quietLogger, tenant, totals, waitTotals } from "./support.js";

/** Every kind of credit a decision says is available, in micro-credits. */
function available(decision) {
  return Object.values(decision.available).reduce((sum, v) => sum + microCredits(v), 0n);
}

const UNKNOWN_KEY = `mk_${"A".repeat(43)}`;

test("check, reserve and release round trip", async () => {
  const t = tenant("quota");
  const client = new MeterClient(meter().url, t.productKey, { policy: "fail_closed" });
  const allowed = await client.check(t.orgId, "ada", "12.5");
  assert.equal(allowed.allowed, true);
  assert.equal(allowed.reason, null);
  assert.equal(allowed.decidedBy, "meter");
  assert.equal(allowed.available.shared, "2000");
  assert.ok(allowed.periodEnd instanceof Date);

  const denied = await client.check(t.orgId, "ada", 100_000);
  assert.equal(denied.allowed, false);
  assert.equal(denied.reason, "insufficient_credits");
  assert.equal(denied.decidedBy, "meter");

  const held = await client.reserve(t.orgId, "ada", 20n, { reservationId: "req-1" });
  assert.equal(held.allowed, true);
  assert.equal(held.reservationId, "req-1");
  assert.ok(held.reservationExpiresAt instanceof Date);
  const again = await client.reserve(t.orgId, "ada", "20", { reservationId: "req-1" });
  assert.equal(again.reservationId, "req-1");
  const during = await client.check(t.orgId, "ada", "1");
  assert.equal(available(during) - available(allowed), -20_000_000n);
  const generated = await client.reserve(t.orgId, "ada", "1");
  assert.ok(generated.allowed && generated.reservationId);

  assert.equal(await client.release(t.orgId, "req-1"), true);
  assert.equal(await client.release(t.orgId, "req-1"), false);
  assert.equal(await client.release(t.orgId, generated.reservationId), true);
  assert.equal(available(await client.check(t.orgId, "ada", "1")), available(allowed));
});

test("errors carry the API's code", async () => {
  const t = tenant("errors");
  const other = tenant("other");
  const client = new MeterClient(meter().url, t.productKey, { policy: "fail_open" });
  await assert.rejects(client.check(other.orgId, "ada", "1"), (e) => {
    assert.ok(e instanceof NotFound);
    return e.code === "org_not_found" && e.status === 404;
  });
  await assert.rejects(client.check(t.orgId, "ada", "9999999999999"), (e) => {
    assert.ok(e instanceof InvalidInput);
    return e.code === "invalid_input" && e.status === 422 && Boolean(e.requestId);
  });
  await assert.rejects(client.record(t.orgId, "not a member id", "1"), (e) => {
    assert.ok(e instanceof InvalidInput);
    return e.code === "invalid_schema";
  });
  const stranger = new MeterClient(meter().url, UNKNOWN_KEY, { policy: "fail_open" });
  await assert.rejects(stranger.check(t.orgId, "ada", "1"), (e) => {
    assert.ok(e instanceof Unauthenticated);
    return e.code === "unauthenticated";
  });
  await assert.rejects(client.check(t.orgId, "ada", 0.1234567), RangeError);
  assert.throws(() => new MeterClient(meter().url, t.productKey, { policy: "open" }), RangeError);
});

test("events are settled once per event id, holds record or release", async () => {
  const t = tenant("hold");
  const client = new MeterClient(meter().url, t.productKey, { policy: "fail_closed" });
  const first = await client.record(t.orgId, "ada", "1.5", {
    eventId: "evt-1",
    attributes: { model: "large" },
  });
  assert.deepEqual(first, { eventId: "evt-1", source: client.source, spooled: false });
  await client.record(t.orgId, "ada", "1.5", { eventId: "evt-1" }); // sent twice, counted once
  const generated = await client.record(t.orgId, "ada", 2);
  assert.notEqual(generated.eventId, "evt-1");

  const result = await client.hold(t.orgId, "ada", "50", async (hold) => {
    assert.equal(hold.decision.allowed, true);
    await hold.record("42.25", { attributes: { model: "large" } });
    await hold.record("42.25"); // the reservation id is the event id: counted once
    return "answered";
  });
  assert.equal(result, "answered");

  // Once those are settled, nothing else changes what is available but the holds below.
  const seen = await waitTotals(t, 3);
  assert.equal(seen.events, 3, JSON.stringify(seen));
  assert.equal(seen.credits, "45.75", JSON.stringify(seen));

  const before = available(await client.check(t.orgId, "ada", "1"));
  let failed;
  await assert.rejects(
    client.hold(t.orgId, "ada", "500", async (hold) => {
      failed = hold;
      const during = available(await client.check(t.orgId, "ada", "1"));
      assert.equal(before - during, 500_000_000n);
      throw new Error("the model call failed");
    }),
    /the model call failed/,
  );
  assert.equal(available(await client.check(t.orgId, "ada", "1")), before);
  assert.equal(await client.release(t.orgId, failed.reservationId), false);

  let ran = false;
  await assert.rejects(
    client.hold(t.orgId, "ada", 100_000, async () => {
      ran = true;
    }),
    (e) => e instanceof QuotaDenied && e.decision.reason === "insufficient_credits",
  );
  assert.equal(ran, false);

  assert.deepEqual(await totals(t), seen); // nothing more was settled
});

test("usage helpers price what the hold records", async () => {
  const t = tenant("usage");
  const client = new MeterClient(meter().url, t.productKey, { policy: "fail_closed" });
  for (const usage of [fromAnthropic({ usage: { input_tokens: 40, cache_creation_input_tokens: 2000, cache_read_input_tokens: 6000, output_tokens: 512 } }), fromOpenAI({ usage: { prompt_tokens: 1200, completion_tokens: 300, prompt_tokens_details: { cached_tokens: 1000 } } })]) {
    await client.hold(t.orgId, "ada", "1", (hold) =>
      hold.record(usage.credits(PRICES), { attributes: usage.attributes() }),
    );
  }
  const seen = await waitTotals(t, 2);
  assert.equal(seen.events, 2);
  assert.equal(seen.credits, "0.02372"); // the same sum as the Python client's test
});

test("the policy decides when nothing listens", async () => {
  const closed = `http://127.0.0.1:${await closedPort()}`;
  const client = new MeterClient(closed, UNKNOWN_KEY, { policy: "fail_open" });
  const opened = await client.check("acme", "ada", "1");
  assert.equal(opened.allowed, true);
  assert.equal(opened.decidedBy, "policy");
  assert.equal(opened.reason, "meter_unavailable");
  assert.ok(opened.error instanceof MeterUnavailable);
  assert.equal(opened.error.code, "connect_error");
  const shut = await client.check("acme", "ada", "1", { policy: "fail_closed" });
  assert.equal(shut.allowed, false);
  assert.equal(shut.decidedBy, "policy");
  const held = await client.reserve("acme", "ada", "1", { reservationId: "r-1" });
  assert.equal(held.allowed, true);
  assert.equal(held.reservationId, "r-1");
  const logger = quietLogger();
  const lenient = new MeterClient(closed, UNKNOWN_KEY, { policy: "fail_open", logger });
  await lenient.hold("acme", "ada", "1", async (hold) => {
    assert.equal(hold.decision.decidedBy, "policy");
  });
  assert.match(logger.lines.join("\n"), /not released/);
  await assert.rejects(
    client.hold("acme", "ada", "1", async () => {}, { policy: "fail_closed" }),
    QuotaDenied,
  );
  await assert.rejects(client.record("acme", "ada", "1"), MeterUnavailable);
  await assert.rejects(client.release("acme", "r-1"), (e) => e.code === "connect_error");

  const strict = new MeterClient(closed, UNKNOWN_KEY, { policy: "fail_closed" });
  assert.equal((await strict.check("acme", "ada", "1")).allowed, false);
  assert.equal((await strict.check("acme", "ada", "1", { policy: "fail_open" })).allowed, true);
});

test("the policy decides when meter does not answer in time", async () => {
  const t = tenant("quota");
  // A listener that accepts connections and never answers: a frozen server.
  const net = await import("node:net");
  const sockets = new Set();
  const silent = net.createServer((s) => sockets.add(s));
  await new Promise((resolve) => silent.listen(0, "127.0.0.1", resolve));
  try {
    const url = `http://127.0.0.1:${silent.address().port}`;
    const client = new MeterClient(url, t.productKey, { policy: "fail_open", timeoutMs: 300 });
    const started = performance.now();
    const opened = await client.check(t.orgId, "ada", "1");
    assert.ok(performance.now() - started < 5000);
    assert.equal(opened.decidedBy, "policy");
    assert.equal(opened.error.code, "timeout");
    const shut = await client.reserve(t.orgId, "ada", "1", { policy: "fail_closed", timeoutMs: 100 });
    assert.equal(shut.allowed, false);
    assert.equal(shut.reservationId, null);
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => silent.close(resolve));
  }
});

test("the in-memory spool keeps events through an outage and sends them after", async () => {
  const t = tenant("memory");
  const proxy = await new Proxy(meter().url).up();
  const logger = quietLogger();
  const client = new MeterClient(proxy.url, t.productKey, {
    policy: "fail_open",
    spool: "memory",
    timeoutMs: 200,
    logger,
  });
  try {
    await client.record(t.orgId, "ada", "1", { eventId: "before" });
    assert.equal(await client.flush(30_000), true);
    await proxy.down();
    let byPolicy = 0;
    for (let i = 0; i < 50; i++) {
      const decision = await client.check(t.orgId, "ada", "0.5");
      byPolicy += decision.decidedBy === "policy" && decision.allowed ? 1 : 0;
      const recorded = await client.record(t.orgId, "ada", "0.5", { eventId: `mem-${i}` });
      assert.equal(recorded.spooled, true);
    }
    assert.equal(byPolicy, 50);
    assert.equal(await client.flush(300), false);
    assert.equal(client.spool.pending(), 50);
    await proxy.up();
    assert.equal(await client.flush(60_000), true);
    assert.equal(client.spool.pending(), 0);
    assert.deepEqual(client.spool.rejected(), []);
    assert.ok(logger.lines.some((line) => line.includes("events stay spooled")));
  } finally {
    await client.close();
    await proxy.down();
  }
  const seen = await waitTotals(t, 51);
  assert.equal(seen.events, 51);
  assert.equal(seen.credits, "26");
});
