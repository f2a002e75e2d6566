// Credits: grants and packs with what is left and when they expire, the seat-month balance, and
// adding a shared pack (platform keys only: an org_admin key sees the API's refusal).

import { call } from "../api.js";
import { credits } from "../credits.js";
import { day, editForm, empty, h, when } from "../dom.js";
import { base, sharedPool } from "./common.js";

export async function render(el, { org }) {
  const b = base(org);
  const [grants, balances, seats] = await Promise.all([
    call(`${b}/grants`), call(`${b}/balances`), call(`${b}/seat-balance`),
  ]);
  const pool = sharedPool(grants.grants, balances.balances);
  const left = balances.balances;
  el.append(h("h1", {}, "Credits"),
    h("p", {}, `Shared pool: ${credits(pool.left)} left of ${credits(pool.granted)} granted`,
      pool.soonest ? `, soonest expiry ${day(pool.soonest)}` : ""));
  if (!grants.grants.length) {
    el.append(empty("No grants yet: a billing or admin key adds packs with POST /v1/orgs/{org}/grants, or redeems a code."));
  } else {
    const sorted = [...grants.grants].sort((x, y) => (x.expires_at < y.expires_at ? -1 : 1));
    el.append(h("table", { "data-testid": "grants" },
      h("thead", {}, h("tr", {}, ["Bucket", "Kind", "Member", "Granted", "Left", "Valid from", "Expires", "Source"]
        .map((t, i) => h("th", { class: i === 3 || i === 4 ? "num" : null }, t)))),
      h("tbody", {}, sorted.map((g) => h("tr", { "data-bucket": g.bucket_id },
        h("td", {}, g.bucket_id), h("td", {}, g.kind), h("td", {}, g.member_id ?? "—"),
        h("td", { class: "num" }, credits(g.amount)),
        h("td", { class: "num" }, g.revoked_at ? "revoked" : credits(left[g.bucket_id] ?? "0")),
        h("td", {}, day(g.valid_from)), h("td", {}, when(g.expires_at)), h("td", {}, g.source || ""))))));
  }
  const amount = h("input", { name: "amount", placeholder: "credits", size: 12, "data-testid": "pack-amount" });
  const expires = h("input", { name: "expires_at", type: "date", "data-testid": "pack-expires" });
  el.append(h("h2", {}, "Add a shared pack"),
    editForm("Credits", h("span", {}, amount, " expiring ", expires), async () => {
      const at = expires.value ? `${expires.value}T00:00:00Z` : "";
      await call(`${b}/grants`, { method: "POST", body: { kind: "shared", amount: amount.value.trim(), expires_at: at, source: "dashboard" } });
    }, "pack-form"));
  el.append(h("h2", {}, "Seat-month balance"),
    h("p", {}, `Seats paid ${seats.seat_billing === "balance" ? "from this balance" : "outside meter"} · `,
      `available ${seats.available}, frozen ${seats.frozen}, expired ${seats.expired}`,
      seats.next_expiry ? ` · next expiry ${day(seats.next_expiry)}` : ""));
  if (!seats.lots.length) {
    el.append(empty("No seat-month lots: redeeming a seat-month code adds them (frozen installments unlock month by month)."));
  } else {
    el.append(h("table", { "data-testid": "lots" },
      h("thead", {}, h("tr", {}, ["Lot", "Code", "Installment", "Seat-months", "Remaining", "Available from", "Expires", "State"].map((t) => h("th", {}, t)))),
      h("tbody", {}, seats.lots.map((l) => h("tr", {},
        h("td", {}, l.lot_id), h("td", {}, l.code_id), h("td", {}, l.installment), h("td", {}, l.amount),
        h("td", {}, l.remaining), h("td", {}, day(l.available_from)), h("td", {}, day(l.expires_at)),
        h("td", {}, h("span", { class: "pill" }, l.state)))))));
  }
}
