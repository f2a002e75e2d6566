// `MeterClient`: checks, reservations, releases, usage events and holds over `fetch`.

import { MeterError, MeterUnavailable, QuotaDenied, errorFrom, transportError } from "./errors.js";
import {
  DEFAULT_SOURCE,
  SINGLE,
  checkBody,
  checkPolicy,
  decisionByPolicy,
  decisionFrom,
  newId,
  releaseBody,
  reserveBody,
  usageEvent,
} from "./events.js";
import { MemorySpool, Sender } from "./spool.js";

/** Per check, reservation and release: a quota answer later than this is no answer. */
export const DEFAULT_TIMEOUT_MS = 500;
/** Per `POST /v1/events`: meter answers only after Kafka acknowledged the events. */
export const DEFAULT_EVENT_TIMEOUT_MS = 5000;
export const DEFAULT_TTL_MS = 60_000;
const USER_AGENT = "meter-client-typescript/0.1";

function parse(status, text, requestId) {
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (status >= 200 && status < 300) return body;
  throw errorFrom(status, body, requestId);
}

function timeoutSignal(ms) {
  if (typeof AbortSignal.timeout === "function") return AbortSignal.timeout(ms);
  const controller = new AbortController();
  setTimeout(() => controller.abort(new DOMException("timeout", "TimeoutError")), ms);
  return controller.signal;
}

/**
 * A client of meter's quota and ingest routes.
 *
 * `policy` ("fail_open" or "fail_closed") is what checks and reservations answer when meter
 * cannot (no connection, a timeout, a 5xx or 429); each call may override it. With `spool`
 * (a file path on Node, "memory", or a spool object), `record` appends the event to the spool
 * and a background sender posts it in batches; without, `record` sends at once and throws when
 * meter cannot take it.
 */
export class MeterClient {
  constructor(baseUrl, apiKey, options = {}) {
    const {
      policy,
      source = DEFAULT_SOURCE,
      timeoutMs = DEFAULT_TIMEOUT_MS,
      eventTimeoutMs = DEFAULT_EVENT_TIMEOUT_MS,
      spool,
      batchSize = 100,
      flushIntervalMs = 200,
      fetch: fetchImpl = globalThis.fetch,
      logger = console,
    } = options;
    this.policy = checkPolicy(policy);
    this.baseUrl = String(baseUrl).replace(/\/+$/, "");
    this.source = source;
    this.timeoutMs = timeoutMs;
    this.eventTimeoutMs = eventTimeoutMs;
    this.logger = logger;
    this._fetch = fetchImpl;
    this._headers = { authorization: `Bearer ${apiKey}`, "user-agent": USER_AGENT };
    this.spool = null;
    this._sender = null;
    this._ready = null;
    if (spool !== undefined && spool !== null) {
      const senderOptions = { batchSize, intervalMs: flushIntervalMs, timeoutMs: eventTimeoutMs, logger };
      const start = (opened) => {
        this.spool = opened;
        this._sender = new Sender(opened, (...args) => this._post(...args), senderOptions);
      };
      if (typeof spool === "string" && spool !== "memory") {
        this._ready = import("./file-spool.js").then(({ FileSpool }) => start(new FileSpool(spool)));
        this._ready.catch(() => {}); // surfaced by the calls that await it
      } else {
        start(spool === "memory" ? new MemorySpool() : spool);
      }
    }
  }

  /** Resolves once the spool is open (a file spool opens asynchronously); rejects if it
   * cannot be opened (held by another live process, say). */
  async ready() {
    if (this._ready !== null) await this._ready;
    return this;
  }

  async _post(path, body, contentType, signal) {
    let response;
    let text;
    try {
      response = await this._fetch(this.baseUrl + path, {
        method: "POST",
        headers: { ...this._headers, "content-type": contentType },
        body,
        signal,
      });
      text = await response.text();
    } catch (exc) {
      throw transportError(exc);
    }
    return parse(response.status, text, response.headers.get("x-request-id"));
  }

  _call(path, body, timeoutMs) {
    return this._post(path, body, "application/json", timeoutSignal(timeoutMs ?? this.timeoutMs));
  }

  /** May `memberId` use `credits` now? Decided by meter, or by `policy` when it cannot. */
  async check(orgId, memberId, credits, { policy, timeoutMs } = {}) {
    const body = checkBody(orgId, memberId, credits);
    try {
      return decisionFrom(await this._call("/v1/check", body, timeoutMs));
    } catch (exc) {
      if (exc instanceof MeterUnavailable) return decisionByPolicy(policy ?? this.policy, exc);
      throw exc;
    }
  }

  /** Hold `credits` for `ttlMs` if allowed (idempotent by `reservationId`, generated when left
   * out). Decided by policy when meter cannot answer; the reservation id is then the client's,
   * so the usage event may still name it. */
  async reserve(
    orgId,
    memberId,
    credits,
    { reservationId, ttlMs = DEFAULT_TTL_MS, policy, timeoutMs } = {},
  ) {
    const id = reservationId || newId();
    const body = reserveBody(orgId, memberId, credits, id, ttlMs);
    try {
      return decisionFrom(await this._call("/v1/reserve", body, timeoutMs));
    } catch (exc) {
      if (exc instanceof MeterUnavailable) return decisionByPolicy(policy ?? this.policy, exc, id);
      throw exc;
    }
  }

  /** Give a hold back; false when no live hold had this id. Throws `MeterUnavailable` when
   * meter cannot answer (the hold then ends by itself at its expiry). */
  async release(orgId, reservationId, { timeoutMs } = {}) {
    const body = await this._call("/v1/release", releaseBody(orgId, reservationId), timeoutMs);
    return Boolean(body?.released);
  }

  /** Emit one usage event (a new id unless `eventId` is given; give one derived from the
   * request to make retries idempotent). With a spool the event is stored and sent in the
   * background; otherwise it is sent now and throws if meter refuses it. */
  async record(
    orgId,
    memberId,
    credits,
    { eventId, reservationId, attributes, time, timeoutMs } = {},
  ) {
    const event = usageEvent({
      orgId,
      memberId,
      credits,
      source: this.source,
      eventId,
      reservationId,
      attributes,
      time,
    });
    if (this._ready !== null) await this._ready;
    if (this.spool !== null) {
      this.spool.append(JSON.stringify(event));
      this._sender.wakeIfFull();
      return { eventId: event.id, source: this.source, spooled: true };
    }
    const signal = timeoutSignal(timeoutMs ?? this.eventTimeoutMs);
    await this._post("/v1/events", JSON.stringify(event), SINGLE, signal);
    return { eventId: event.id, source: this.source, spooled: false };
  }

  /**
   * Reserve `estimate`, run `fn(hold)`, and end the hold: `hold.record(actual)` inside `fn`
   * records the usage naming the reservation (meter consumes the hold when it settles the
   * event); if `fn` returns or throws without recording, the hold is released. Throws
   * `QuotaDenied` (with the decision) when the reservation is refused: `fn` then never runs.
   * Returns what `fn` returns.
   */
  async hold(orgId, memberId, estimate, fn, { reservationId, ttlMs = DEFAULT_TTL_MS, policy } = {}) {
    const hold = new Hold(this, orgId, memberId, reservationId || newId());
    hold.decision = await this.reserve(orgId, memberId, estimate, {
      reservationId: hold.reservationId,
      ttlMs,
      policy,
    });
    if (!hold.decision.allowed) throw new QuotaDenied(hold.decision);
    try {
      return await fn(hold);
    } finally {
      if (hold.recorded === null) {
        try {
          await this.release(orgId, hold.reservationId);
        } catch (exc) {
          if (!(exc instanceof MeterError)) throw exc;
          this.logger?.warn?.(`meter-client: hold ${hold.reservationId} not released: ${exc.message}`);
        }
      }
    }
  }

  /** Wait until every spooled event is acknowledged, at most `timeoutMs`; true if so. */
  async flush(timeoutMs = 10_000) {
    if (this._ready !== null) await this._ready;
    return this._sender === null ? true : this._sender.flush(timeoutMs);
  }

  /** Send what is spooled (for at most `flushTimeoutMs`), then stop the sender and close the
   * spool; events not yet acknowledged stay in a file spool for the next client on it. */
  async close(flushTimeoutMs = 5000) {
    if (this._ready !== null) {
      try {
        await this._ready;
      } catch {
        return;
      }
    }
    if (this._sender !== null) {
      await this._sender.flush(flushTimeoutMs);
      await this._sender.stop();
      await this.spool.close();
      this._sender = null;
    }
  }
}

/** The hold `MeterClient.hold` passes to its function. */
export class Hold {
  constructor(client, orgId, memberId, reservationId) {
    this.client = client;
    this.orgId = orgId;
    this.memberId = memberId;
    this.reservationId = reservationId;
    this.decision = null;
    this.recorded = null;
  }

  /** Record the actual usage, naming the reservation; the event id defaults to the
   * reservation id, so recording twice is counted once. */
  async record(credits, { attributes, eventId } = {}) {
    this.recorded = await this.client.record(this.orgId, this.memberId, credits, {
      eventId: eventId || this.reservationId,
      reservationId: this.reservationId,
      attributes,
    });
    return this.recorded;
  }
}
