// @meter/client: quota checks, reservations, holds and usage events for meter.
// Zero dependencies; Node 18+ and edge runtimes (global fetch, AbortController, crypto).
// The durable file spool is Node only and loaded on demand (`spool: "<path>"`, or
// `import { FileSpool } from "@meter/client/file-spool"`).

export { MeterClient, Hold, DEFAULT_TIMEOUT_MS, DEFAULT_EVENT_TIMEOUT_MS, DEFAULT_TTL_MS } from "./client.js";
export { creditsText, microCredits, formatMicro, MAX_FRACTION_DIGITS } from "./credits.js";
export {
  MeterError,
  MeterUnavailable,
  Unauthenticated,
  Forbidden,
  NotFound,
  Conflict,
  InvalidInput,
  QuotaDenied,
} from "./errors.js";
export { usageEvent, newId, POLICY_REASON, DEFAULT_SOURCE, EVENT_TYPE } from "./events.js";
export { MemorySpool } from "./spool.js";
export { TokenUsage, fromOpenAI, fromAnthropic } from "./usage.js";
