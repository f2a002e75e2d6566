// Dead letters of the organization: events that could not settle, newest first, with the reason
// code, the message, where they were read and the event's text (its first 16 KiB).

import { call } from "../api.js";
import { empty, h, moreButton, when } from "../dom.js";
import { base } from "./common.js";

const PAGE = 50;

function page(org, after) {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (after) query.set("after", after);
  return call(`${base(org)}/dead-letters?${query}`);
}

function row(d) {
  const text = d.truncated ? `${d.event}\n… (truncated: the first 16 KiB)` : d.event;
  return h("tr", { "data-dead-letter": d.id },
    h("td", { "data-col": "when" }, when(d.created_at)),
    h("td", { "data-col": "reason" }, h("code", {}, d.reason)),
    h("td", { "data-col": "detail" }, d.detail),
    h("td", { "data-col": "where", class: "muted" }, `${d.topic}/${d.partition}@${d.offset}`),
    h("td", { "data-col": "event" },
      h("details", {}, h("summary", {}, d.event.slice(0, 60) + (d.event.length > 60 ? "…" : "")),
        h("pre", { class: "event" }, text))));
}

export async function render(el, { org }) {
  el.append(h("h1", {}, "Dead letters"));
  const first = await page(org, null);
  if (!first.dead_letters.length) {
    el.append(empty("No dead letters: every event of this organization settled (they are kept 30 days)."));
    return;
  }
  const body = h("tbody", {}, first.dead_letters.map(row));
  el.append(
    h("p", { class: "muted" }, "Kept 30 days. The dead-letter topic holds every one; meter dlq replay sends them again once fixed."),
    h("table", { "data-testid": "dead-letters" },
      h("thead", {}, h("tr", {}, ["When", "Reason", "Detail", "Read from", "Event"].map((t) => h("th", {}, t)))),
      body),
    moreButton("dead-letters-more", "Older", first.next_after, async (after) => {
      const next = await page(org, after);
      body.append(...next.dead_letters.map(row));
      return next.next_after;
    }));
}
