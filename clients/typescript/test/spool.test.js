// The durable file spool: a torn line and a held lock; events recorded while meter is away are
// kept and sent once it is back, in one process and across a process killed and a new one
// started on the same file; every event is settled exactly once, even when a copy of the file
// is replayed too. Prints the spool's append and replay throughput.

import test from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { MeterClient } from "../src/index.js";
import { FileSpool, SpoolLocked } from "../src/file-spool.js";
import { Proxy, closedPort, meter, quietLogger, tenant, totals, waitTotals } from "./support.js";

const CHILD = fileURLToPath(new URL("./spool-child.js", import.meta.url));
const EVENTS = 2000;

function tmpdir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), "meter-spool-"));
}

function spooledIds(file) {
  return fs
    .readFileSync(file, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line))
    .filter((record) => record.e)
    .map((record) => record.e.id);
}

function child(...args) {
  const done = spawnSync(process.execPath, [CHILD, ...args], { encoding: "utf8", timeout: 180_000 });
  return { ...done, report: done.stdout.trim() ? JSON.parse(done.stdout.trim().split("\n").at(-1)) : null };
}

test("a torn last line is dropped, acknowledged events are not replayed, one owner at a time", async () => {
  const file = path.join(tmpdir(), "spool.jsonl");
  const spool = new FileSpool(file);
  for (let i = 0; i < 5; i++) spool.append(JSON.stringify({ id: `e-${i}` }));
  assert.deepEqual(spool.peek(3).map((e) => e.line), ['{"id":"e-0"}', '{"id":"e-1"}', '{"id":"e-2"}']);
  assert.equal(spool.peek(10, 20).length, 1);
  assert.throws(() => new FileSpool(file), SpoolLocked);
  spool.settle(spool.peek(2), [{ seq: 2, code: "org_not_found", message: "no" }]);
  assert.equal(spool.pending(), 3);
  assert.deepEqual(spool.rejected(), [{ code: "org_not_found", message: "no", event: { id: "e-1" } }]);
  await spool.close();
  fs.appendFileSync(file, '{"s":6,"e":{"id":"e-'); // a write cut short by a crash

  const again = new FileSpool(file);
  assert.deepEqual(again.peek().map((e) => e.line), ['{"id":"e-2"}', '{"id":"e-3"}', '{"id":"e-4"}']);
  assert.equal(again.append('{"id":"e-5"}'), 6);
  again.settle(again.peek());
  assert.equal(again.pending(), 0);
  assert.equal(fs.statSync(file).size, 0); // nothing pending: the file is emptied
  await again.close();
  assert.equal(fs.existsSync(`${file}.lock`), false);
});

test("a file mostly acknowledged is rewritten with what is pending", async () => {
  const file = path.join(tmpdir(), "spool.jsonl");
  const spool = new FileSpool(file, { compactBytes: 64 * 1024 });
  for (let i = 0; i < 20_000; i++) spool.append(JSON.stringify({ id: `e-${i}`, pad: "x".repeat(40) }));
  const full = fs.statSync(file).size;
  while (spool.pending() > 1000) spool.settle(spool.peek(100));
  assert.ok(fs.statSync(file).size < full / 5, `${fs.statSync(file).size} of ${full}`);
  await spool.close();
  const again = new FileSpool(file);
  assert.equal(again.pending(), 1000);
  assert.equal(JSON.parse(again.peek(1)[0].line).id, "e-19000");
  await again.close();
});

test("the file spool keeps events through an outage and sends them after", async () => {
  const t = tenant("spool");
  const file = path.join(tmpdir(), "spool.jsonl");
  const proxy = await new Proxy(meter().url).up();
  const client = new MeterClient(proxy.url, t.productKey, {
    policy: "fail_open",
    spool: file,
    timeoutMs: 200,
    logger: quietLogger(),
  });
  try {
    await proxy.down();
    for (let i = 0; i < 500; i++) {
      if (i % 50 === 0) assert.equal((await client.check(t.orgId, "ada", "1")).decidedBy, "policy");
      await client.record(t.orgId, "ada", "0.000001", { eventId: `out-${i}` });
    }
    assert.equal(await client.flush(300), false);
    assert.equal(client.spool.pending(), 500);
    assert.deepEqual(spooledIds(file), Array.from({ length: 500 }, (_, i) => `out-${i}`));
    await proxy.up();
    assert.equal(await client.flush(60_000), true);
    assert.equal(client.spool.pending(), 0);
  } finally {
    await client.close();
    await proxy.down();
  }
  const seen = await waitTotals(t, 500);
  assert.equal(seen.events, 500);
  assert.equal(seen.credits, "0.0005");
});

test("events spooled by a killed process are replayed by the next, settled exactly once", async () => {
  const t = tenant("restart");
  const dir = tmpdir();
  const file = path.join(dir, "spool.jsonl");
  const closed = `http://127.0.0.1:${await closedPort()}`;

  const recorded = child("record", file, closed, t.productKey, t.orgId, String(EVENTS));
  assert.equal(recorded.signal, "SIGKILL", recorded.stderr);
  const seen = recorded.report;
  assert.equal(seen.served, EVENTS / 100); // fail_open served every check
  assert.equal(seen.byPolicy, EVENTS / 100);
  assert.equal(seen.pending, EVENTS);
  assert.deepEqual(spooledIds(file), Array.from({ length: EVENTS }, (_, i) => `restart-${i}`));
  assert.ok(fs.existsSync(`${file}.lock`)); // left by the killed process, taken over next
  const copy = path.join(dir, "copy.jsonl");
  fs.copyFileSync(file, copy);

  const replayed = child("replay", file, meter().url, t.productKey);
  assert.equal(replayed.status, 0, replayed.stderr);
  assert.deepEqual(
    { ...replayed.report, replayedMs: 0 },
    { pending: EVENTS, flushed: true, replayedMs: 0, rejected: [], left: 0 },
  );
  console.log(
    `spool: ${Math.round((EVENTS / seen.appendedMs) * 1000)} events/s appended ` +
      `(a check every 100, meter away); ` +
      `${Math.round((EVENTS / replayed.report.replayedMs) * 1000)} events/s replayed ` +
      `(acknowledged by meter, batches of 100)`,
  );

  // The copy replays every event a second time; then one more event, on the same partition:
  // once it is settled, every duplicate before it has been seen by the consumer.
  const again = new MeterClient(meter().url, t.productKey, { policy: "fail_open", spool: copy });
  await again.record(t.orgId, "ada", "1", { eventId: `last-${crypto.randomUUID()}` });
  assert.equal(await again.flush(120_000), true);
  await again.close();

  const settled = await waitTotals(t, EVENTS + 1);
  assert.equal(settled.events, EVENTS + 1, JSON.stringify(settled));
  assert.equal(settled.credits, String(EVENTS / 4 + 1));
  assert.deepEqual(await totals(t), settled);
});
