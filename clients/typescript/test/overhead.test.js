// What the client adds to a check: 1,000 checks through the client and 1,000 bare `fetch`
// requests alike, alternated, against the API's own time for them (its
// `meter_http_request_duration_seconds` for `/v1/check`, from `GET /metrics`). Prints them.

import test from "node:test";
import assert from "node:assert/strict";
import { MeterClient } from "../src/index.js";
import { meter, quantile, tenant } from "./support.js";

const ROUNDS = 1000;

/** [sum of seconds, count] of the API's own time answering `POST /v1/check`. */
async function serverCheckSeconds() {
  const text = await (await fetch(`${meter().url}/metrics`)).text();
  const found = {};
  for (const line of text.split("\n")) {
    if (line.startsWith("meter_http_request_duration_seconds_") && line.includes('"/v1/check"')) {
      const name = line.split("{", 1)[0].split("_").at(-1);
      found[name] = Number(line.split(" ").at(-1));
    }
  }
  return [found.sum ?? 0, found.count ?? 0];
}

test("a check costs little more than a bare request", async () => {
  const t = tenant("perf");
  const client = new MeterClient(meter().url, t.productKey, { policy: "fail_closed" });
  const body = JSON.stringify({ org_id: t.orgId, member_id: "ada", credits: "1" });
  const bare = async () => {
    const answer = await fetch(`${meter().url}/v1/check`, {
      method: "POST",
      headers: { authorization: `Bearer ${t.productKey}`, "content-type": "application/json" },
      body,
    });
    return answer.json();
  };
  for (let i = 0; i < 100; i++) {
    assert.equal((await bare()).allowed, true);
    assert.equal((await client.check(t.orgId, "ada", "1")).decidedBy, "meter");
  }
  const bareMs = [];
  const clientMs = [];
  const [sumBefore, countBefore] = await serverCheckSeconds();
  for (let i = 0; i < ROUNDS; i++) {
    let started = performance.now();
    const answer = await bare();
    bareMs.push(performance.now() - started);
    assert.equal(answer.allowed, true);
    started = performance.now();
    const decision = await client.check(t.orgId, "ada", "1");
    clientMs.push(performance.now() - started);
    assert.ok(decision.allowed && decision.decidedBy === "meter");
  }
  const [sumAfter, countAfter] = await serverCheckSeconds();
  assert.equal(countAfter - countBefore, 2 * ROUNDS);
  const serverMean = ((sumAfter - sumBefore) / (countAfter - countBefore)) * 1000;
  const f = (ms) => ms.toFixed(3);
  console.log(
    `check, ${ROUNDS} each: client p50 ${f(quantile(clientMs, 0.5))} ms, p99 ` +
      `${f(quantile(clientMs, 0.99))} ms; bare fetch p50 ${f(quantile(bareMs, 0.5))} ms, p99 ` +
      `${f(quantile(bareMs, 0.99))} ms; server's own mean ${f(serverMean)} ms`,
  );
  // Generous: the client's median stays within twice the bare request's plus a millisecond.
  assert.ok(quantile(clientMs, 0.5) < 2 * quantile(bareMs, 0.5) + 1);
});
