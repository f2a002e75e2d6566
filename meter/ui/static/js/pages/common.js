// What several pages show: the period in the organization's anchor terms, the shared pool.

import { call } from "../api.js";
import { percent, sum, toMicro } from "../credits.js";
import { day, h, when } from "../dom.js";

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

/** Threshold crossings the data shows now: billing groups against their period limit, the shared
 * pool against what it granted (the same comparisons the alert triggers make). */
export async function crossings(org, thresholds) {
  const b = base(org);
  const [groups, report, grants, balances] = await Promise.all([
    call(`${b}/billing-groups`), call(`${b}/reports/billing-groups`),
    call(`${b}/grants`), call(`${b}/balances`),
  ]);
  const used = Object.fromEntries(report.billing_groups.map((g) => [g.billing_group_id, g.totals.credits]));
  const out = [];
  for (const g of groups.billing_groups) {
    const pct = percent(used[g.billing_group_id] ?? "0", g.period_limit);
    if (pct === null) continue;
    const hit = thresholds.billing_group.percents.filter((t) => pct >= t).pop();
    if (hit !== undefined) out.push({ subject: `Billing group ${g.name}`, text: `${pct}% of its period limit used (threshold ${hit}%)` });
  }
  const pool = sharedPool(grants.grants, balances.balances);
  const leftPct = percent(pool.left, pool.granted);
  if (leftPct !== null) {
    const hit = thresholds.shared_pool.percents.filter((t) => leftPct <= t).shift();
    if (hit !== undefined) out.push({ subject: "Shared pool", text: `${leftPct}% left (threshold ${hit}%)` });
  }
  return out;
}

export function crossingList(items) {
  if (!items.length) {
    return h("div", { class: "empty", "data-testid": "alerts" },
      "No threshold crossed this period. Thresholds are set with PUT /v1/orgs/{org}/alert-thresholds.");
  }
  return h("ul", { class: "panel", "data-testid": "alerts" },
    items.map((a) => h("li", {}, h("strong", {}, a.subject), " — ", a.text)));
}
