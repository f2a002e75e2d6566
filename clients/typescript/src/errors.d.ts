import type { Decision } from "./events.js";

export interface MeterErrorOptions {
  status?: number | null;
  details?: unknown[];
  requestId?: string | null;
  cause?: unknown;
}

/** An answer of meter that is not a success, or no answer. `code` is the API's stable error
 * code, or the client's own when meter did not answer: `timeout`, `connect_error`,
 * `transport_error`. */
export declare class MeterError extends Error {
  constructor(code: string, message: string, options?: MeterErrorOptions);
  readonly code: string;
  readonly status: number | null;
  readonly details: unknown[];
  readonly requestId: string | null;
}
/** No connection, a timeout, a 5xx or 429: retry later. */
export declare class MeterUnavailable extends MeterError {}
/** 401. */
export declare class Unauthenticated extends MeterError {}
/** 403. */
export declare class Forbidden extends MeterError {}
/** 404 (`org_not_found`, ...). */
export declare class NotFound extends MeterError {}
/** 409. */
export declare class Conflict extends MeterError {}
/** 400, 413, 415, 422. */
export declare class InvalidInput extends MeterError {}

/** A hold was refused (by meter, or by the `fail_closed` policy). */
export declare class QuotaDenied extends Error {
  constructor(decision: Decision);
  readonly decision: Decision;
}

export declare function errorFrom(status: number, body: unknown, requestId?: string | null): MeterError;
export declare function transportError(exc: unknown): MeterUnavailable;
