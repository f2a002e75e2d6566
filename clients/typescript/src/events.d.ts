import type { CreditsIn, CreditsText } from "./credits.js";
import type { MeterUnavailable } from "./errors.js";

/** What a check or reservation answers when meter cannot: allow, or deny. */
export type Policy = "fail_open" | "fail_closed";
export type AttributeValue = string | boolean | number;

export declare const EVENT_TYPE: "meter.usage.v1";
export declare const DEFAULT_SOURCE: string;
/** `Decision.reason` of an answer decided by policy. */
export declare const POLICY_REASON: "meter_unavailable";

/** The answer of a check or a reservation. `decidedBy` is "meter" when meter answered,
 * "policy" when it could not and the call's policy decided; then `reason` is
 * "meter_unavailable" and `error` says what went wrong. */
export interface Decision {
  readonly allowed: boolean;
  readonly reason: string | null;
  readonly decidedBy: "meter" | "policy";
  readonly available: Readonly<Record<string, CreditsText>>;
  readonly memberRemaining: CreditsText | null;
  readonly groupRemaining: CreditsText | null;
  readonly periodEnd: Date | null;
  readonly reservationId: string | null;
  readonly reservationExpiresAt: Date | null;
  readonly error: MeterUnavailable | null;
}

/** A usage event handed to meter (`spooled` false: acknowledged with 202) or to the spool. */
export interface Recorded {
  readonly eventId: string;
  readonly source: string;
  readonly spooled: boolean;
}

/** A CloudEvent of type `meter.usage.v1`. */
export interface UsageEvent {
  specversion: "1.0";
  type: "meter.usage.v1";
  source: string;
  id: string;
  time: string;
  subject: string;
  datacontenttype: "application/json";
  data: {
    org_id: string;
    member_id: string;
    credits: CreditsText;
    reservation_id?: string;
    attributes?: Record<string, AttributeValue>;
  };
}

export interface UsageEventInit {
  orgId: string;
  memberId: string;
  credits: CreditsIn;
  source: string;
  eventId?: string;
  reservationId?: string | null;
  attributes?: Record<string, AttributeValue>;
  time?: Date | string | number;
}

/** A fresh event or reservation id (a UUID4 in hex). */
export declare function newId(): string;
export declare function usageEvent(init: UsageEventInit): UsageEvent;
