// Overview: the current period, credits drawn per kind, the shared pool, daily usage, the
// latest alerts (as the alert triggers recorded them).

import { call } from "../api.js";
import { dailyChart } from "../chart.js";
import { credits } from "../credits.js";
import { card, day, empty, h } from "../dom.js";
import { alertTable, alertsPage, base, groupNames, periodLine, sharedPool } from "./common.js";

const KINDS = [
  ["credits", "Credits drawn"], ["seat", "Seat"], ["personal", "Personal"], ["shared", "Shared"],
  ["on_demand", "On-demand"], ["unfunded", "Unfunded"],
];

export async function render(el, { org }) {
  const b = base(org);
  const [info, report, daily, grants, balances, alerts, names] = await Promise.all([
    call(b), call(`${b}/reports/totals`), call(`${b}/reports/daily`), call(`${b}/grants`),
    call(`${b}/balances`), alertsPage(org, { limit: 5 }), groupNames(org),
  ]);
  const t = report.totals;
  const pool = sharedPool(grants.grants, balances.balances);
  el.append(
    h("h1", {}, info.name, " ", h("span", { class: "pill" }, info.status)),
    periodLine(report.period, info.billing_anchor),
    h("div", { class: "cards" },
      KINDS.map(([k, label]) => card(label, credits(t[k]), `total-${k}`)),
      card("Events settled", t.events.toLocaleString("en-US"), "total-events"),
      card("Shared pool left", credits(pool.left), "pool-left"),
      card("Soonest expiry", pool.soonest ? day(pool.soonest) : "—", "pool-expiry")),
    h("h2", {}, "Daily usage"),
    t.events === 0
      ? empty("No usage settled this period yet: products send usage events to POST /v1/events.")
      : dailyChart(daily.days),
    h("h2", {}, "Recent alerts"),
    alertTable(org, alerts, names),
    ...(alerts.next_after
      ? [h("p", {}, h("a", { href: `#/${encodeURIComponent(org)}/charges` }, "All alerts ›"))]
      : []),
  );
}
