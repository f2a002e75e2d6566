// Dead letters of the organization (admin keys): events the pipeline refused, with the reason.

import { ApiError, call } from "../api.js";
import { empty, h, when } from "../dom.js";
import { base } from "./common.js";

export async function render(el, { org }) {
  el.append(h("h1", {}, "Dead letters"));
  let body;
  try {
    body = await call(`${base(org)}/dead-letters`);
  } catch (e) {
    if (e instanceof ApiError && e.code === "route_not_found") {
      el.append(empty("Not available: this meter has no dead-letter route (GET /v1/orgs/{org}/dead-letters)."));
      return;
    }
    throw e;
  }
  const items = body.dead_letters || body.items || [];
  if (!items.length) {
    el.append(empty("No dead letters: every event of this organization was accepted."));
    return;
  }
  el.append(h("table", { "data-testid": "dead-letters" },
    h("thead", {}, h("tr", {}, ["When", "Reason", "Event"].map((t) => h("th", {}, t)))),
    h("tbody", {}, items.map((d) => h("tr", {},
      h("td", {}, when(d.dead_at || d.time || d.received_at)), h("td", {}, d.reason || d.code || ""),
      h("td", {}, h("code", {}, d.event_id || d.id || JSON.stringify(d).slice(0, 120))))))));
}
