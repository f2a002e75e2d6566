// One member: totals of the period, their billing-group attribution, daily chart, the latest
// settlements, and the edits an admin makes (limit, billing group).

import { call } from "../api.js";
import { dailyChart } from "../chart.js";
import { credits } from "../credits.js";
import { card, editForm, empty, h, moreButton, when } from "../dom.js";
import { base, periodLine } from "./common.js";

export async function render(el, { org, arg }) {
  const b = base(org);
  const id = encodeURIComponent(arg);
  const [m, report, daily, groups, settled] = await Promise.all([
    call(`${b}/members/${id}`), call(`${b}/reports/members/${id}`),
    call(`${b}/reports/members/${id}/daily`), call(`${b}/billing-groups`),
    settlementsPage(b, id, null),
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
    h("h2", {}, "Latest settlements"),
    settlementTable(b, id, settled),
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

const SETTLEMENTS = 20;

function settlementsPage(b, id, before) {
  const query = new URLSearchParams({ limit: String(SETTLEMENTS) });
  if (before) query.set("before", before);
  return call(`${b}/members/${id}/settlements?${query}`);
}

/** What a settlement's flags say: limits met, late, voided, unfunded credits, a reservation. */
function flags(s) {
  const out = [];
  if (s.member_limited) out.push("member limit");
  if (s.group_limited) out.push("group limit");
  if (s.unfunded !== "0") out.push(`${credits(s.unfunded)} unfunded`);
  if (s.late) out.push("late");
  if (s.reservation_id) out.push("reserved");
  if (s.void) out.push(`voided ${when(s.void.voided_at)}`);
  return out.join(" · ");
}

function settlementRow(s) {
  return h("tr", { "data-key": s.key },
    h("td", { "data-col": "time", title: `settled ${when(s.settled_at)}` }, when(s.event_time)),
    h("td", { "data-col": "credits", class: "num" }, credits(s.credits)),
    h("td", { "data-col": "buckets" }, s.buckets.length
      ? s.buckets.map((l) => `${l.kind} ${l.bucket_id}: ${credits(l.amount)}`).join(", ") : "none"),
    h("td", { "data-col": "group" }, s.billing_group_name ?? s.billing_group_id ?? "—"),
    h("td", { "data-col": "flags", class: "flags" }, flags(s)),
    h("td", { "data-col": "event", class: "muted" }, s.id));
}

function settlementTable(b, id, first) {
  if (!first.settlements.length) return empty("No settlement of this member yet.");
  const body = h("tbody", {}, first.settlements.map(settlementRow));
  return h("div", {},
    h("table", { "data-testid": "settlements" },
      h("thead", {}, h("tr", {}, ["Time", "Credits", "Buckets", "Billing group", "Flags", "Event id"]
        .map((t, i) => h("th", { class: i === 1 ? "num" : null }, t)))), body),
    moreButton("settlements-more", "Older", first.next_before, async (before) => {
      const next = await settlementsPage(b, id, before);
      body.append(...next.settlements.map(settlementRow));
      return next.next_before;
    }));
}
