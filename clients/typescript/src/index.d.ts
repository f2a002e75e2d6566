export { MeterClient, Hold, DEFAULT_TIMEOUT_MS, DEFAULT_EVENT_TIMEOUT_MS, DEFAULT_TTL_MS } from "./client.js";
export type { MeterClientOptions, CallOptions, ReserveOptions, RecordOptions, HoldOptions, Logger } from "./client.js";
export { creditsText, microCredits, formatMicro, MAX_FRACTION_DIGITS } from "./credits.js";
export type { CreditsIn, CreditsText } from "./credits.js";
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
export type { Decision, Policy, Recorded, UsageEvent, AttributeValue } from "./events.js";
export { MemorySpool } from "./spool.js";
export type { Spool, SpoolEntry, RejectedEvent } from "./spool.js";
export { TokenUsage, fromOpenAI, fromAnthropic } from "./usage.js";
export type { Prices } from "./usage.js";
