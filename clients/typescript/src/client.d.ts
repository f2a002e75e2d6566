import type { CreditsIn } from "./credits.js";
import type { AttributeValue, Decision, Policy, Recorded } from "./events.js";
import type { Spool } from "./spool.js";

export declare const DEFAULT_TIMEOUT_MS: 500;
export declare const DEFAULT_EVENT_TIMEOUT_MS: 5000;
export declare const DEFAULT_TTL_MS: 60000;

export interface Logger {
  warn?(message: string): void;
  error?(message: string): void;
}

export interface MeterClientOptions {
  /** What checks and reservations answer when meter cannot. Required. */
  policy: Policy;
  /** The events' CloudEvents `source`: keep it stable for a product. */
  source?: string;
  /** Per check, reservation and release (500 ms). */
  timeoutMs?: number;
  /** Per `POST /v1/events` (5,000 ms). */
  eventTimeoutMs?: number;
  /** A file path (Node: a durable JSON-lines spool), "memory", or a spool object. */
  spool?: string | Spool;
  /** Events per batch the sender posts (100, at most 1,000). */
  batchSize?: number;
  /** How often the sender looks for events when fewer than a batch wait (200 ms). */
  flushIntervalMs?: number;
  fetch?: typeof fetch;
  logger?: Logger | null;
}

export interface CallOptions {
  policy?: Policy;
  timeoutMs?: number;
}

export interface ReserveOptions extends CallOptions {
  reservationId?: string;
  ttlMs?: number;
}

export interface RecordOptions {
  eventId?: string;
  reservationId?: string;
  attributes?: Record<string, AttributeValue>;
  time?: Date | string | number;
  timeoutMs?: number;
}

export interface HoldOptions {
  reservationId?: string;
  ttlMs?: number;
  policy?: Policy;
}

/** A client of meter's quota and ingest routes. */
export declare class MeterClient {
  constructor(baseUrl: string, apiKey: string, options: MeterClientOptions);
  readonly policy: Policy;
  readonly source: string;
  readonly timeoutMs: number;
  readonly eventTimeoutMs: number;
  /** The open spool (null without one, or until a file spool is open). */
  readonly spool: Spool | null;
  /** Resolves once the spool is open; rejects if it cannot be. */
  ready(): Promise<this>;
  check(orgId: string, memberId: string, credits: CreditsIn, options?: CallOptions): Promise<Decision>;
  reserve(orgId: string, memberId: string, credits: CreditsIn, options?: ReserveOptions): Promise<Decision>;
  release(orgId: string, reservationId: string, options?: { timeoutMs?: number }): Promise<boolean>;
  record(orgId: string, memberId: string, credits: CreditsIn, options?: RecordOptions): Promise<Recorded>;
  hold<T>(
    orgId: string,
    memberId: string,
    estimate: CreditsIn,
    fn: (hold: Hold) => T | Promise<T>,
    options?: HoldOptions,
  ): Promise<T>;
  flush(timeoutMs?: number): Promise<boolean>;
  close(flushTimeoutMs?: number): Promise<void>;
}

/** The hold `MeterClient.hold` passes to its function. */
export declare class Hold {
  readonly client: MeterClient;
  readonly orgId: string;
  readonly memberId: string;
  readonly reservationId: string;
  decision: Decision | null;
  recorded: Recorded | null;
  record(
    credits: CreditsIn,
    options?: { attributes?: Record<string, AttributeValue>; eventId?: string },
  ): Promise<Recorded>;
}
