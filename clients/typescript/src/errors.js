// Errors of the client: every answer of meter that is not a success, or no answer at all.

/**
 * An answer of meter that is not a success, or no answer. `code` is the API's stable error
 * code (`error.code` of the body), or the client's own when meter did not answer: `timeout`,
 * `connect_error`, `transport_error`.
 */
export class MeterError extends Error {
  constructor(code, message, { status = null, details = [], requestId = null, cause } = {}) {
    super(status === null ? `${code}: ${message}` : `${status} ${code}: ${message}`, { cause });
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.details = details;
    this.requestId = requestId;
  }
}

/** Meter could not answer: no connection, a timeout, a 5xx, or 429. Retry later; checks and
 * reservations apply their policy instead of throwing it. */
export class MeterUnavailable extends MeterError {}
/** 401: no key, or an unknown or revoked one. */
export class Unauthenticated extends MeterError {}
/** 403: the key's scope does not allow the call. */
export class Forbidden extends MeterError {}
/** 404: no such object, or one of another organization. */
export class NotFound extends MeterError {}
/** 409: the request contradicts what exists (a reused id with other content). */
export class Conflict extends MeterError {}
/** 400, 413, 415 or 422: the request itself is wrong; sending it again will not help. */
export class InvalidInput extends MeterError {}

/** A hold was refused (by meter, or by the `fail_closed` policy); `decision` says why. */
export class QuotaDenied extends Error {
  constructor(decision) {
    super(`denied: ${decision.reason}`);
    this.name = "QuotaDenied";
    this.decision = decision;
  }
}

const BY_STATUS = new Map([
  [400, InvalidInput],
  [401, Unauthenticated],
  [403, Forbidden],
  [404, NotFound],
  [409, Conflict],
  [413, InvalidInput],
  [415, InvalidInput],
  [422, InvalidInput],
  [429, MeterUnavailable],
]);

/** The typed error of a non-2xx answer (`{"error": {"code", "message", "details"}}`). */
export function errorFrom(status, body, requestId = null) {
  let error = body !== null && typeof body === "object" ? body.error : undefined;
  if (error === null || typeof error !== "object") {
    error = { code: `http_${status}`, message: "unexpected answer", details: [] };
  }
  const Kind = BY_STATUS.get(status) ?? (status >= 500 ? MeterUnavailable : MeterError);
  return new Kind(String(error.code), String(error.message), {
    status,
    details: Array.isArray(error.details) ? error.details : [],
    requestId,
  });
}

const CONNECT_CODES = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/** A `MeterUnavailable` for a request that got no answer (`fetch` threw). */
export function transportError(exc) {
  const name = exc?.name;
  if (name === "TimeoutError" || name === "AbortError") {
    return new MeterUnavailable("timeout", "meter did not answer in time", { cause: exc });
  }
  let cause = exc?.cause;
  // undici wraps the socket error (sometimes twice: an AggregateError of both addresses).
  if (cause?.errors?.length) cause = cause.errors[0];
  const code = cause?.code;
  const message = String(cause?.message || exc?.message || name || "no answer");
  if (CONNECT_CODES.has(code)) return new MeterUnavailable("connect_error", message, { cause: exc });
  return new MeterUnavailable("transport_error", message, { cause: exc });
}
