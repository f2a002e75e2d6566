// One member: totals of the period, their billing-group attribution, daily chart, and the edits
// an admin makes (limit, billing group).

import { call } from "../api.js";
import { dailyChart } from "../chart.js";
import { credits } from "../credits.js";
import { card, editForm, empty, h } from "../dom.js";
import { base, periodLine } from "./common.js";

export async function render(el, { org, arg }) {
  const b = base(org);
  const id = encodeURIComponent(arg);
  const [m, report, daily, groups] = await Promise.all([
    call(`${b}/members/${id}`), call(`${b}/reports/members/${id}`),
    call(`${b}/reports/members/${id}/daily`), call(`${b}/billing-groups`),
  ]);
  const t = report.member.totals;
  const limitShown = h("span", { "data-testid": "limit-value" }, m.member_limit === null ? "plan default" : credits(m.member_limit));
  const limit = h("input", { name: "member_limit", value: m.member_limit ?? "", placeholder: "empty: plan default", "data-testid": "limit-input", size: 14 });
  const group = h("select", { name: "billing_group_id", "data-testid": "group-select" },
    groups.billing_groups.map((g) => h("option", {
      value: g.billing_group_id, selected: (m.billing_group_id ?? "") === g.billing_group_id,
    }, g.name)));
  el.append(
    h("p", {}, h("a", { href: `#/${encodeURIComponent(org)}/members` }, "‹ Members")),
    h("h1", {}, m.name || m.member_id, " ", h("span", { class: "pill" }, m.status)),
    h("p", { class: "muted" }, `${m.member_id} · ${m.email || "no email"} · ${m.seated ? "seated" : "no seat"}`),
    periodLine(report.period),
    h("div", { class: "cards" },
      card("Used this period", credits(t.credits), "member-used"),
      card("Limit", limitShown, "member-limit"),
      card("Shared", credits(t.shared), "member-shared"),
      card("Personal", credits(t.personal), "member-personal"),
      card("On-demand", credits(t.on_demand), "member-on-demand"),
      card("Unfunded", credits(t.unfunded), "member-unfunded")),
    h("h2", {}, "Daily usage"),
    t.events === 0 ? empty("No usage settled for this member this period.") : dailyChart(daily.days, "member-chart"),
    h("h2", {}, "Settings"),
    editForm("Member limit (credits per period)", limit, async () => {
      const value = limit.value.trim();
      const updated = await call(`${b}/members/${id}`, { method: "PATCH", body: { member_limit: value === "" ? null : value } });
      limitShown.textContent = updated.member_limit === null ? "plan default" : credits(updated.member_limit);
    }, "limit-form"),
    editForm("Billing group", group, async () => {
      await call(`${b}/members/${id}`, { method: "PATCH", body: { billing_group_id: group.value === "" ? null : group.value } });
    }, "group-form"),
    h("h2", {}, "Billing groups this period"),
    report.billing_groups.length
      ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Billing group"), h("th", { class: "num" }, "Credits"))),
        h("tbody", {}, report.billing_groups.map((g) => h("tr", {}, h("td", {}, g.name), h("td", { class: "num" }, credits(g.totals.credits))))))
      : empty("No usage attributed to a billing group this period."),
  );
}
