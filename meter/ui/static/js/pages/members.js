// Members: usage, limit, share used, seat and billing group of every member; sorted, searched
// and paged in the browser from one read of the member list and the report's member pages.

import { call } from "../api.js";
import { credits, percent, toMicro } from "../credits.js";
import { bar, empty, h } from "../dom.js";
import { base, periodLine } from "./common.js";

const PAGE = 50;
const COLUMNS = [
  ["name", "Member"], ["email", "Email"], ["group", "Billing group"], ["seat", "Seat"],
  ["used", "Used", "num"], ["limit", "Limit", "num"], ["share", "Share used", "num"],
];

const STEP = 1000;

/** One page of the report's member totals of the current period (1,000 members). */
function reportPage(org, after) {
  const query = new URLSearchParams({ limit: String(STEP) });
  if (after) query.set("after", after);
  return call(`${base(org)}/reports/members?${query}`);
}

function compare(key) {
  return (a, b) => {
    const x = a.sort[key];
    const y = b.sort[key];
    if (x === y) return 0;
    if (x === null) return 1;
    if (y === null) return -1;
    return x < y ? -1 : 1;
  };
}

/** Drawn once the first report page is in (the first 1,000 members by id); the rest load page
 * by page behind it, the table redrawn as each arrives, in the sort and search chosen so far. */
export async function render(el, { org }) {
  const b = base(org);
  const [list, groups, first] = await Promise.all([
    call(`${b}/members`), call(`${b}/billing-groups`), reportPage(org, ""),
  ]);
  const groupName = Object.fromEntries(groups.billing_groups.map((g) => [g.billing_group_id, g.name]));
  const byId = new Map(list.members.map((m) => [m.member_id, m]));
  const row = (t) => {
    const m = byId.get(t.member_id);
    const limit = m ? m.member_limit : null;
    const share = percent(t.totals.credits, limit);
    const group = t.billing_group_id === null ? "(left)" : groupName[t.billing_group_id] ?? t.billing_group_id;
    const seat = m ? (m.seated ? "seated" : "no seat") : "—";
    return {
      t, m, limit, share, group, seat,
      search: `${t.member_id} ${t.name} ${t.email} ${group}`.toLowerCase(),
      sort: {
        name: (t.name || t.member_id).toLowerCase(), email: t.email.toLowerCase(), group: group.toLowerCase(),
        seat, used: toMicro(t.totals.credits), limit: limit === null ? null : toMicro(limit),
        share,
      },
    };
  };
  const rows = first.members.map(row);
  const loading = h("span", { class: "muted", "data-testid": "member-loading" });
  const state = { key: "used", desc: true, query: "", page: 0 };
  const search = h("input", { type: "search", placeholder: "Search name, email, id, group", "data-testid": "member-search" });
  const info = h("span", { class: "muted", "data-testid": "member-count" });
  const prev = h("button", { "data-testid": "prev" }, "‹ Previous");
  const next = h("button", { "data-testid": "next" }, "Next ›");
  const pageInfo = h("span", { "data-testid": "page-info" });
  const head = h("tr", {});
  const body = h("tbody", {});
  let view = rows;

  function sortRows() {
    const sorted = [...rows].sort(compare(state.key));
    if (state.desc) sorted.reverse();
    return sorted;
  }
  let sorted = sortRows();

  function draw() {
    const q = state.query.trim().toLowerCase();
    view = q ? sorted.filter((r) => r.search.includes(q)) : sorted;
    const pages = Math.max(1, Math.ceil(view.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const slice = view.slice(state.page * PAGE, (state.page + 1) * PAGE);
    body.replaceChildren(...slice.map((r) => h("tr", { "data-member": r.t.member_id },
      h("td", {}, h("a", { href: `#/${encodeURIComponent(org)}/member/${encodeURIComponent(r.t.member_id)}` }, r.t.name || r.t.member_id)),
      h("td", {}, r.t.email), h("td", {}, r.group), h("td", {}, r.seat),
      h("td", { class: "num", "data-col": "used" }, credits(r.t.totals.credits)),
      h("td", { class: "num", "data-col": "limit" }, r.limit === null ? "plan default" : credits(r.limit)),
      h("td", { class: "num" }, r.share === null ? bar(null) : h("span", {}, bar(r.share), `${r.share}%`)))));
    pageInfo.textContent = `Page ${state.page + 1} of ${pages}`;
    info.textContent = `${view.length.toLocaleString("en-US")} of ${rows.length.toLocaleString("en-US")} members`;
    loading.textContent = after ? `loading usage: ${rows.length.toLocaleString("en-US")} of about ${list.members.length.toLocaleString("en-US")} members read…` : "";
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
    head.replaceChildren(...COLUMNS.map(([key, label, cls]) => h("th", { class: cls },
      h("button", { "data-sort": key, onclick: () => {
        state.desc = state.key === key ? !state.desc : key === "used" || key === "share";
        state.key = key;
        state.page = 0;
        sorted = sortRows();
        draw();
      } }, label, state.key === key ? (state.desc ? " ▼" : " ▲") : ""))));
  }
  search.addEventListener("input", () => { state.query = search.value; state.page = 0; draw(); });
  prev.addEventListener("click", () => { state.page -= 1; draw(); });
  next.addEventListener("click", () => { state.page += 1; draw(); });
  let after = first.next_after;
  draw();
  el.append(h("h1", {}, "Members"), periodLine(first.period));
  if (!rows.length) {
    el.append(empty("No members yet: add them with POST /v1/orgs/{org}/members (an org_admin key may)."));
    return;
  }
  el.append(h("div", { class: "toolbar" }, search, info, prev, pageInfo, next, loading),
    h("table", { "data-testid": "members" }, h("thead", {}, head), body));
  (async () => {
    while (after) {
      const page = await reportPage(org, after);
      if (!el.isConnected) return;  // the person went elsewhere
      rows.push(...page.members.map(row));
      after = page.next_after;
      sorted = sortRows();
      draw();
    }
    window.__meterComplete = performance.now();
    document.body.dataset.complete = "members";
  })().catch((e) => { loading.className = "error"; loading.textContent = e.message; });
}
