// Billing groups: usage against the period limit, past periods, the CSV export, limit edits.

import { call, download } from "../api.js";
import { credits, percent } from "../credits.js";
import { bar, day, editForm, empty, h } from "../dom.js";
import { base, periodLine } from "./common.js";

function periodKey(p) {
  return p.current ? "current" : p.start.slice(0, 10);
}

export async function render(el, { org, arg }) {
  const b = base(org);
  const period = arg || "current";
  const [groups, report, periods] = await Promise.all([
    call(`${b}/billing-groups`), call(`${b}/reports/billing-groups?period=${encodeURIComponent(period)}`),
    call(`${b}/reports/periods`),
  ]);
  const used = Object.fromEntries(report.billing_groups.map((g) => [g.billing_group_id, g]));
  const select = h("select", { "data-testid": "period-select" }, periods.periods.map((p) => h("option", {
    value: periodKey(p.period), selected: periodKey(p.period) === period,
  }, `${day(p.period.start)} – ${day(p.period.end)}${p.period.current ? " (current)" : ""}`)));
  select.addEventListener("change", () => {
    location.hash = `#/${encodeURIComponent(org)}/billing-groups/${select.value === "current" ? "" : select.value}`;
  });
  const exportMessage = h("span", { class: "message", "data-testid": "export-message" });
  const exportButton = h("button", { class: "primary", "data-testid": "export" }, "Export CSV");
  exportButton.addEventListener("click", async () => {
    exportMessage.textContent = "";
    try {
      const { blob, name } = await download(`${b}/reports/export.csv?period=${encodeURIComponent(period)}`);
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      exportMessage.className = "message error";
      exportMessage.textContent = e.message;
    }
  });
  const current = period === "current";
  const rows = groups.billing_groups.map((g) => {
    const r = used[g.billing_group_id];
    const spent = r ? r.totals.credits : "0";
    const pct = percent(spent, g.period_limit);
    const input = h("input", { value: g.period_limit ?? "", size: 12, placeholder: "no limit", "data-testid": `limit-${g.billing_group_id || "unassigned"}` });
    const edit = g.built_in || !current ? h("span", { class: "muted" }, g.built_in ? "built in" : "")
      : editForm("", input, async () => {
        const value = input.value.trim();
        await call(`${b}/billing-groups/${encodeURIComponent(g.billing_group_id)}`, { method: "PATCH", body: { period_limit: value === "" ? null : value } });
      }, `group-limit-${g.billing_group_id}`);
    return h("tr", { "data-group": g.billing_group_id },
      h("td", {}, g.name), h("td", { class: "num" }, g.member_ids.length.toLocaleString("en-US")),
      h("td", { class: "num", "data-col": "used" }, credits(spent)),
      h("td", { class: "num" }, credits(g.period_limit)),
      h("td", {}, pct === null ? bar(null) : h("span", {}, bar(pct), `${pct}%`)),
      h("td", {}, edit));
  });
  el.append(h("h1", {}, "Billing groups"), periodLine(report.period),
    h("div", { class: "toolbar" }, h("label", {}, "Period ", select), exportButton, exportMessage));
  if (groups.billing_groups.length <= 1 && !report.billing_groups.length) {
    el.append(empty("Only Unassigned exists: create billing groups with POST /v1/orgs/{org}/billing-groups, then move members into them."));
  }
  el.append(h("table", { "data-testid": "billing-groups" },
    h("thead", {}, h("tr", {}, ["Billing group", "Members", "Used", "Period limit", "Share used", current ? "Set period limit" : ""]
      .map((t, i) => h("th", { class: i === 1 || i === 2 || i === 3 ? "num" : null }, t)))),
    h("tbody", {}, rows)));
}
