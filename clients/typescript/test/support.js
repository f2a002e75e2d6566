// Helpers of the client's tests: the meter under test (from the environment), a TCP proxy to
// put in its way, and the settled totals read through the API.

import net from "node:net";
import assert from "node:assert/strict";

/** Prices of the usage tests (credits per million tokens), as the Python client's tests. */
export const PRICES = { input: "2.5", output: "10", cachedInput: "1.25", cacheWrite: "3.125" };

/** The `meter run` under test: `METER_URL`, and `METER_TENANTS` (JSON: name -> tenant). */
export function meter() {
  const url = process.env.METER_URL;
  const tenants = process.env.METER_TENANTS;
  assert.ok(url && tenants, "METER_URL and METER_TENANTS must name a running meter");
  return { url, tenants: JSON.parse(tenants) };
}

/** The tenant `name`: `{orgId, memberId, productKey, adminKey}` (an org_admin key). */
export function tenant(name) {
  const found = meter().tenants[name];
  assert.ok(found, `no tenant ${name} in METER_TENANTS`);
  return found;
}

/** The organization's settled totals of the current period (`{events, credits, ...}`). */
export async function totals(t) {
  const answer = await fetch(`${meter().url}/v1/orgs/${t.orgId}/reports/totals`, {
    headers: { authorization: `Bearer ${t.adminKey}` },
  });
  assert.equal(answer.status, 200, await answer.clone().text());
  return (await answer.json()).totals;
}

/** The totals once they count `events` settled events, or whatever they are at the deadline. */
export async function waitTotals(t, events, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const seen = await totals(t);
    if (seen.events === events || Date.now() > deadline) return seen;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** A local port nothing listens on (bound, then closed). */
export async function closedPort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A TCP proxy to `target` on a port of its own: `down()` closes it and drops every
 * connection (meter looks gone), `up()` listens again on the same port. */
export class Proxy {
  constructor(target) {
    const url = new URL(target);
    this._target = { host: url.hostname, port: Number(url.port) };
    this._sockets = new Set();
    this._server = null;
    this.port = 0;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async up() {
    this._server = net.createServer((client) => {
      const upstream = net.connect(this._target);
      for (const s of [client, upstream]) {
        this._sockets.add(s);
        s.on("close", () => this._sockets.delete(s));
        s.on("error", () => {});
      }
      client.pipe(upstream).pipe(client);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    await new Promise((resolve, reject) => {
      this._server.once("error", reject);
      this._server.listen(this.port, "127.0.0.1", resolve);
    });
    this.port = this._server.address().port;
    return this;
  }

  async down() {
    const server = this._server;
    this._server = null;
    for (const s of this._sockets) s.destroy();
    if (server) await new Promise((resolve) => server.close(resolve));
  }
}

/** The `q` quantile of `samples` (milliseconds). */
export function quantile(samples, q) {
  const ordered = [...samples].sort((a, b) => a - b);
  return ordered[Math.min(ordered.length - 1, Math.floor(q * ordered.length))];
}

/** A logger that keeps what it is told, for tests to read (and keep the output quiet). */
export function quietLogger() {
  const lines = [];
  return { lines, warn: (m) => lines.push(m), error: (m) => lines.push(m) };
}
