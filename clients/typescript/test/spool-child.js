// A product process of the spool tests (`node spool-child.js record|replay ...`). Run without
// arguments (as `node --test test/` does with every file here) it does nothing.

import fs from "node:fs";
import { MeterClient } from "../src/index.js";

const quiet = { warn() {}, error() {} };

function report(value) {
  fs.writeSync(1, `${JSON.stringify(value)}\n`); // synchronous: the process may die next
}

async function record(spool, url, key, org, count) {
  const client = new MeterClient(url, key, { policy: "fail_open", spool, timeoutMs: 200, logger: quiet });
  await client.ready();
  let served = 0;
  let byPolicy = 0;
  const started = performance.now();
  for (let i = 0; i < count; i++) {
    if (i % 100 === 0) {
      const decision = await client.check(org, "ada", "0.25");
      served += decision.allowed ? 1 : 0;
      byPolicy += decision.decidedBy === "policy" ? 1 : 0;
    }
    await client.record(org, "ada", "0.25", { eventId: `restart-${i}`, attributes: { n: i } });
  }
  const appendedMs = performance.now() - started;
  report({ served, byPolicy, pending: client.spool.pending(), appendedMs });
  // The process dies without closing anything: what `record` returned for is in the file.
  process.kill(process.pid, "SIGKILL");
}

async function replay(spool, url, key) {
  const client = new MeterClient(url, key, { policy: "fail_open", spool, logger: quiet });
  await client.ready();
  const pending = client.spool.pending();
  const started = performance.now();
  const flushed = await client.flush(120_000);
  const replayedMs = performance.now() - started;
  const rejected = client.spool.rejected();
  await client.close();
  report({ pending, flushed, replayedMs, rejected, left: client.spool.pending() });
}

const [command, spool, url, key, org, count] = process.argv.slice(2);
if (command === "record") await record(spool, url, key, org, Number(count));
else if (command === "replay") await replay(spool, url, key);
