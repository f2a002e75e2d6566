// What several pages show: the period in the organization's anchor terms, the shared pool.

import { call } from "../api.js";
import { credits, sum, toMicro } from "../credits.js";
import { day, h, moreButton, when } from "../dom.js";

export function base(org) {
  return `/v1/orgs/${encodeURIComponent(org)}`;
}

const ORDINAL = (n) => n + (n % 10 === 1 && n !== 11 ? "st" : n % 10 === 2 && n !== 12 ? "nd" : n % 10 === 3 && n !== 13 ? "rd" : "th");

/** "1 Dec 2026 – 1 Jan 2027 · renews on the 1st of each month at 00:00 UTC (anchor 1 Jan 2020)". */
export function periodText(period, anchor) {
  const start = new Date(period.start);
  const end = new Date(period.end);
  const days = Math.round((end - start) / 86400000);
  const time = start.toISOString().slice(11, 16);
  const rule = days >= 28 && days <= 31 && start.getUTCDate() === end.getUTCDate()
    ? `renews on the ${ORDINAL(start.getUTCDate())} of each month at ${time} UTC`
    : `renews every ${days} days at ${time} UTC`;
  const range = `${day(period.start)} – ${day(period.end)}`;
  return anchor ? `${range} · ${rule} (anchor ${when(anchor)})` : `${range} · ${rule}`;
}

export function periodLine(period, anchor) {
  return h("p", { class: "muted", "data-testid": "period" }, periodText(period, anchor));
}

/** The shared pool from grants and balances: credits left, granted, and the soonest expiry of a
 * shared grant that still has credits. */
export function sharedPool(grants, balances, now = Date.now()) {
  const live = grants.filter((g) => g.kind === "shared" && !g.revoked_at
    && Date.parse(g.expires_at) > now && Date.parse(g.valid_from) <= now);
  const leftOf = (g) => balances[g.bucket_id] ?? "0";
  const left = sum(live.map(leftOf));
  const granted = sum(live.map((g) => g.amount));
  const holding = live.filter((g) => toMicro(leftOf(g)) > 0n).map((g) => g.expires_at).sort();
  return { left, granted, soonest: holding[0] || null, count: live.length };
}

/** Names of the organization's billing groups by id (alerts name groups by id). */
export async function groupNames(org) {
  const groups = await call(`${base(org)}/billing-groups`);
  return Object.fromEntries(groups.billing_groups.map((g) => [g.billing_group_id, g.name]));
}

/** One page of the organization's alerts, newest first (`after`: a previous `next_after`). */
export function alertsPage(org, { limit = 20, after = null } = {}) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (after) query.set("after", after);
  return call(`${base(org)}/alerts?${query}`);
}

/** Who an alert is about and what it says, from the API's fields (credits as given). */
export function alertText(a, names = {}) {
  switch (a.kind) {
    case "member_limit":
      return [`Member ${a.member_id}`, `${a.threshold_percent}% of its limit reached: ${credits(a.used)} of ${credits(a.limit)} credits`];
    case "billing_group_limit":
      return [`Billing group ${names[a.billing_group_id] || a.billing_group_id}`,
        `${a.threshold_percent}% of its period limit reached: ${credits(a.used)} of ${credits(a.limit)} credits`];
    case "shared_pool_low":
      return ["Shared pool", `down to ${a.threshold_percent}% or less: ${credits(a.remaining)} of ${credits(a.granted)} credits left`];
    case "org_quarantined":
      return ["Organization quarantined", `checks answer 503 and events are dead-lettered (reason ${a.reason})`];
    default:
      return [a.kind, ""];
  }
}

function alertRow(a, names, org) {
  const [subject, text] = alertText(a, names);
  const who = a.kind === "member_limit"
    ? h("a", { href: `#/${encodeURIComponent(org)}/member/${encodeURIComponent(a.member_id)}` }, subject)
    : subject;
  return h("tr", { "data-alert": a.alert_id, "data-kind": a.kind },
    h("td", {}, when(a.created_at)), h("td", {}, h("strong", {}, who)), h("td", {}, text),
    h("td", {}, `${day(a.period_start)} – ${day(a.period_end)}`));
}

/** A table of alerts, newest first; with `more`, a button fetches the next page into it. */
export function alertTable(org, page, names, { more = false, limit = 20 } = {}) {
  if (!page.alerts.length) {
    return h("div", { class: "empty", "data-testid": "alerts" },
      "No alert yet. Thresholds are set with PUT /v1/orgs/{org}/alert-thresholds.");
  }
  const body = h("tbody", {}, page.alerts.map((a) => alertRow(a, names, org)));
  const table = h("table", { "data-testid": "alerts" },
    h("thead", {}, h("tr", {}, ["When", "Subject", "Alert", "Period"].map((t) => h("th", {}, t)))), body);
  if (!more) return table;
  return h("div", {}, table, moreButton("alerts-more", "Older alerts", page.next_after, async (after) => {
    const next = await alertsPage(org, { limit, after });
    body.append(...next.alerts.map((a) => alertRow(a, names, org)));
    return next.next_after;
  }));
}
