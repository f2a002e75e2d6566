// Charges due (post-paid on-demand usage) and the organization's alerts, newest first.

import { call } from "../api.js";
import { credits } from "../credits.js";
import { day, empty, h, when } from "../dom.js";
import { alertTable, alertsPage, base, groupNames } from "./common.js";

function money(micros) {
  const m = BigInt(micros);
  const whole = (m / 1000000n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${whole}.${(m % 1000000n).toString().padStart(6, "0").slice(0, 2)}`;
}

export async function render(el, { org }) {
  const b = base(org);
  const [charges, thresholds, alerts, names] = await Promise.all([
    call(`${b}/charges`), call(`${b}/alert-thresholds`), alertsPage(org, { limit: 20 }), groupNames(org),
  ]);
  el.append(h("h1", {}, "Charges due"));
  if (!charges.charges.length) {
    el.append(empty("No on-demand charges: they appear when members draw on-demand credits past the plan's threshold or at period end."));
  } else {
    el.append(h("table", { "data-testid": "charges" },
      h("thead", {}, h("tr", {}, ["Charge", "Period", "Reason", "Credits", "Amount", "Due", "Published"]
        .map((t, i) => h("th", { class: i === 3 || i === 4 ? "num" : null }, t)))),
      h("tbody", {}, charges.charges.map((c) => h("tr", {},
        h("td", {}, c.charge_id), h("td", {}, `${day(c.period_start)} – ${day(c.period_end)}`),
        h("td", {}, c.reason), h("td", { class: "num" }, credits(c.credits)),
        h("td", { class: "num" }, money(c.amount_micros)), h("td", {}, when(c.due_at)),
        h("td", {}, c.published_at ? when(c.published_at) : "not yet"))))));
  }
  el.append(h("h2", {}, "Alerts"), alertTable(org, alerts, names, { more: true, limit: 20 }),
    h("p", { class: "muted" }, `Thresholds: members ${thresholds.member.percents.join(", ") || "none"}% of their limit; billing groups ${thresholds.billing_group.percents.join(", ") || "none"}% of their period limit; shared pool at ${thresholds.shared_pool.percents.join(", ") || "none"}% left.`));
}
