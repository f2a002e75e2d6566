// A tiny element builder: h("td", {class: "num"}, "12") -> <td class="num">12</td>.

import { explain } from "./api.js";

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function card(label, value, testid) {
  return h("div", { class: "card", "data-testid": testid },
    h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

export function empty(text) {
  return h("div", { class: "empty" }, text);
}

/** A bar of `pct` percent (null: no bar). */
export function bar(pct) {
  if (pct === null) return h("span", { class: "muted" }, "no limit");
  const cls = pct >= 100 ? "bar bad" : pct >= 80 ? "bar warn" : "bar";
  return h("div", { class: cls, title: `${pct}%` },
    h("span", { style: `width: ${Math.min(100, pct)}%` }));
}

/** UTC date of an RFC 3339 instant, "1 Dec 2026". */
export function day(instant) {
  if (!instant) return "—";
  return new Date(instant).toLocaleDateString("en-GB",
    { day: "numeric", month: "short", year: "numeric", timeZone: "UTC" });
}

/** UTC date and time of an instant, "1 Dec 2026, 14:00 UTC". */
export function when(instant) {
  if (!instant) return "—";
  const d = new Date(instant);
  const time = d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", timeZone: "UTC" });
  return `${day(instant)}, ${time} UTC`;
}

/** A form of one field with the API's error message shown beside it. */
export function editForm(label, input, submit, testid) {
  const message = h("span", { class: "message", "data-testid": testid && testid + "-message" });
  const form = h("form", { class: "inline", "data-testid": testid },
    h("label", {}, label, " ", input), h("button", { type: "submit" }, "Save"), message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.className = "message";
    message.textContent = "Saving…";
    try {
      await submit();
      message.className = "message okmsg";
      message.textContent = "Saved";
    } catch (error) {
      message.className = "message error";
      message.textContent = explain(error);
    }
  });
  return form;
}

/** A button that loads the next page while `cursor` (a `next_after`/`next_before`) is set:
 * `load(cursor)` appends the page and returns the next cursor. Hidden on the last page. */
export function moreButton(testid, label, cursor, load) {
  const message = h("span", { class: "message error" });
  const button = h("button", { type: "button", "data-testid": testid, hidden: !cursor }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    message.textContent = "";
    try {
      cursor = await load(cursor);
      button.hidden = !cursor;
    } catch (error) {
      message.textContent = explain(error);
    } finally {
      button.disabled = false;
    }
  });
  return h("p", {}, button, message);
}
