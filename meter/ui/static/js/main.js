// Sign-in, navigation and routing: #/{org}/{page}[/{id}].

import { ApiError, call, explain, forget, keep, storedKey } from "./api.js";
import { h } from "./dom.js";
import * as overview from "./pages/overview.js";
import * as members from "./pages/members.js";
import * as member from "./pages/member.js";
import * as billing from "./pages/billing.js";
import * as creditsPage from "./pages/credits.js";
import * as charges from "./pages/charges.js";
import * as deadLetters from "./pages/deadletters.js";

const PAGES = [
  ["overview", "Overview", overview],
  ["members", "Members", members],
  ["billing-groups", "Billing groups", billing],
  ["credits", "Credits", creditsPage],
  ["charges", "Charges & alerts", charges],
  ["dead-letters", "Dead letters", deadLetters],
];
const main = document.getElementById("main");
let whoami = null;
let rendering = 0;

function parseHash() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  return { org: parts[0] || "", page: parts[1] || "overview", arg: parts[2] || "" };
}

export function go(org, page = "overview", arg = "") {
  const path = [org, page, arg].filter(Boolean).map(encodeURIComponent).join("/");
  location.hash = "#/" + path;
}

function header(org, page) {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  nav.replaceChildren();
  who.replaceChildren();
  if (!whoami) return;
  if (org) {
    for (const [id, label] of PAGES) {
      nav.append(h("a", { href: `#/${encodeURIComponent(org)}/${id}`, class: page === id ? "here" : null }, label));
    }
  }
  const scope = whoami.org_id ? `${whoami.scope} of ${whoami.org_id}` : whoami.scope;
  const platform = whoami.org_id ? null
    : h("a", { href: "#/", style: "margin-right:.8rem" }, "Organizations");
  who.append(platform || "", h("span", {}, `Signed in: ${scope} key `),
    h("button", { onclick: signOut, "data-testid": "sign-out" }, "Sign out"));
}

function signOut() {
  forget();
  whoami = null;
  location.hash = "";
  route();
}

function signInForm(message) {
  const key = h("input", { type: "password", name: "key", autocomplete: "off", placeholder: "mk_…", "data-testid": "key" });
  const error = h("p", { class: "error", "data-testid": "signin-error" }, message || "");
  const form = h("form", { class: "panel signin", "data-testid": "signin" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Use an org_admin key to open its organization, or an admin or billing key to choose one. The key stays in this tab only."),
    h("label", {}, "API key", key), h("button", { class: "primary", type: "submit" }, "Sign in"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const me = await call("/v1/whoami", { key: key.value.trim() });
      if (me.scope === "product") {
        error.textContent = "A product key only checks quotas and sends usage; sign in with an org_admin key.";
        return;
      }
      keep(key.value.trim());
      whoami = me;
      if (me.org_id) go(me.org_id);
      else { location.hash = "#/"; route(); }
    } catch (e) {
      error.textContent = explain(e);
    }
  });
  main.replaceChildren(form);
  document.body.dataset.ready = "signin";
  key.focus();
}

/** One page of GET /v1/orgs into `box`, with a button for the next page while there is one. */
async function listOrgs(box, after) {
  const query = new URLSearchParams({ limit: "50" });
  if (after) query.set("after", after);
  const list = await call(`/v1/orgs?${query}`);
  if (!after && !list.orgs.length) {
    box.append(h("p", { class: "muted" }, "No organization yet: create one with POST /v1/orgs."));
  }
  const items = h("ul", { class: "orgs", "data-testid": "org-list" }, list.orgs.map((org) => h("li", {},
    h("a", { href: `#/${encodeURIComponent(org.org_id)}/overview`, "data-org": org.org_id }, `${org.name} (${org.org_id})`),
    org.status === "active" ? "" : h("span", { class: "pill" }, org.status))));
  box.append(items);
  if (list.next_after) {
    const more = h("button", { type: "button", "data-testid": "orgs-more" }, "More organizations");
    more.addEventListener("click", async () => {
      more.remove();
      try {
        await listOrgs(box, list.next_after);
      } catch (e) {
        box.append(h("p", { class: "error" }, explain(e)));
      }
    });
    box.append(more);
  }
}

async function chooseOrg() {
  const box = h("div", { class: "panel signin", "data-testid": "choose-org" }, h("h1", {}, "Choose an organization"));
  main.replaceChildren(box);
  try {
    await listOrgs(box, null);
  } catch (e) {
    // A billing key may not list organizations (403): it types the id instead.
    if (!(e instanceof ApiError) || ![403, 404, 405].includes(e.status)) {
      box.append(h("p", { class: "error" }, explain(e)));
    }
  }
  const input = h("input", { name: "org", placeholder: "organization id", "data-testid": "org-id" });
  const form = h("form", {}, h("label", {}, "Organization id", input), h("button", { class: "primary", type: "submit" }, "Open"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) go(input.value.trim());
  });
  box.append(form);
  document.body.dataset.ready = "choose-org";
}

async function route() {
  const ticket = ++rendering;
  const { org, page, arg } = parseHash();
  if (!storedKey()) {
    whoami = null;
    header();
    signInForm();
    return;
  }
  if (!whoami) {
    try {
      whoami = await call("/v1/whoami");
    } catch (e) {
      forget();
      signInForm(e instanceof ApiError && e.status === 401 ? "The key is no longer valid; sign in again." : explain(e));
      return;
    }
  }
  if (!org) {
    if (whoami.org_id) return go(whoami.org_id);
    header("", "");
    return chooseOrg();
  }
  header(org, page);
  const entry = page === "member" ? ["member", "Member", member] : PAGES.find(([id]) => id === page);
  if (!entry) {
    main.replaceChildren(h("p", {}, "No such page."));
    return;
  }
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  const el = h("div", { "data-page": page });
  try {
    await entry[2].render(el, { org, arg, whoami });
    if (ticket !== rendering) return;
    main.replaceChildren(el);
    window.__meterReady = performance.now();
    document.body.dataset.ready = page;
  } catch (e) {
    if (ticket !== rendering) return;
    const text = e instanceof ApiError && e.code === "org_not_found"
      ? "This organization does not exist or this key may not read it."
      : explain(e);
    main.replaceChildren(h("p", { class: "error", "data-testid": "page-error" }, text));
    document.body.dataset.ready = "error";
  }
}

window.addEventListener("hashchange", () => {
  document.body.dataset.ready = "";
  route();
});
route();
