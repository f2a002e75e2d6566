// Usage events (CloudEvents 1.0, `meter.usage.v1`), decisions, and the requests the client sends.
// Meter settles an event once per `source` and `id`, so an event may be sent again whenever its
// acknowledgement is in doubt.

import { creditsText } from "./credits.js";
import { MeterError } from "./errors.js";

export const EVENT_TYPE = "meter.usage.v1";
export const SINGLE = "application/cloudevents+json";
export const BATCH = "application/cloudevents-batch+json";
export const DEFAULT_SOURCE = "//meter-client.typescript";
export const POLICY_REASON = "meter_unavailable";
export const POLICIES = Object.freeze(["fail_open", "fail_closed"]);

/** A fresh event or reservation id (a UUID4 in hex, as the Python client makes them). */
export function newId() {
  return globalThis.crypto.randomUUID().replaceAll("-", "");
}

/** `instant` (now when left out) as RFC 3339 UTC to the millisecond. */
export function rfc3339(instant) {
  const date = instant === undefined || instant === null ? new Date() : new Date(instant);
  if (Number.isNaN(date.getTime())) throw new RangeError(`not an instant: ${instant}`);
  return date.toISOString();
}

/** One usage event as a JSON-ready object; credits as an exact decimal string. */
export function usageEvent({
  orgId,
  memberId,
  credits,
  source,
  eventId,
  reservationId,
  attributes,
  time,
}) {
  const data = { org_id: orgId, member_id: memberId, credits: creditsText(credits) };
  if (reservationId !== undefined && reservationId !== null) data.reservation_id = reservationId;
  if (attributes && Object.keys(attributes).length > 0) data.attributes = { ...attributes };
  return {
    specversion: "1.0",
    type: EVENT_TYPE,
    source,
    id: eventId || newId(),
    time: rfc3339(time),
    subject: memberId,
    datacontenttype: "application/json",
    data,
  };
}

export function checkBody(orgId, memberId, credits) {
  return JSON.stringify({ org_id: orgId, member_id: memberId, credits: creditsText(credits) });
}

export function reserveBody(orgId, memberId, credits, reservationId, ttlMs) {
  if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) {
    throw new RangeError(`ttlMs must be a positive integer, not ${ttlMs}`);
  }
  return JSON.stringify({
    org_id: orgId,
    member_id: memberId,
    credits: creditsText(credits),
    ttl_ms: ttlMs,
    reservation_id: reservationId,
  });
}

export function releaseBody(orgId, reservationId) {
  return JSON.stringify({ org_id: orgId, reservation_id: reservationId });
}

/** A batch body of already encoded events. */
export function batchBody(lines) {
  return `[${lines.join(",")}]`;
}

export function checkPolicy(policy) {
  if (!POLICIES.includes(policy)) {
    throw new RangeError(`policy must be "fail_open" or "fail_closed", not ${JSON.stringify(policy)}`);
  }
  return policy;
}

function instant(value) {
  return value === null || value === undefined ? null : new Date(value);
}

/**
 * A `Decision` from a check or reserve answer. Credits stay the API's exact decimal strings.
 */
export function decisionFrom(body) {
  if (body === null || typeof body !== "object" || typeof body.allowed !== "boolean") {
    throw new MeterError("unexpected_answer", "the answer is not a decision");
  }
  return Object.freeze({
    allowed: body.allowed,
    reason: body.reason ?? null,
    decidedBy: "meter",
    available: Object.freeze({ ...(body.available ?? {}) }),
    memberRemaining: body.member_remaining ?? null,
    groupRemaining: body.group_remaining ?? null,
    periodEnd: instant(body.period_end),
    reservationId: body.reservation_id ?? null,
    reservationExpiresAt: instant(body.reservation_expires_at),
    error: null,
  });
}

/** The decision `policy` makes when meter could not answer (`error`). */
export function decisionByPolicy(policy, error, reservationId = null) {
  const allowed = checkPolicy(policy) === "fail_open";
  return Object.freeze({
    allowed,
    reason: POLICY_REASON,
    decidedBy: "policy",
    available: Object.freeze({}),
    memberRemaining: null,
    groupRemaining: null,
    periodEnd: null,
    reservationId: allowed ? reservationId : null,
    reservationExpiresAt: null,
    error,
  });
}
