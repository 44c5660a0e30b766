// Building the page without innerHTML: every string becomes a text node, so a file name
// such as `<img src=x onerror=alert(1)>` is shown as those characters and never parsed.

const BLOCKED_ATTRIBUTES = /^(on|style$|srcdoc$)/i;
const SAFE_URL = /^(#|\.{0,2}\/(?!\/)|blob:|https?:\/\/|[\w.-]+(\/|$)|\?)/i;

/** h("button", {class: "button", on: {click}}, "Save") -> <button class="button">Save</button>.
 * props: class, text, on (event listeners), dataset, and attributes (never on* or style;
 * href/src only same-origin, blob: or http(s)). Children: nodes, strings, numbers, arrays,
 * null/false (skipped). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "on") for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else setAttribute(el, key, value);
  }
  append(el, children);
  return el;
}

function setAttribute(el, name, value) {
  if (BLOCKED_ATTRIBUTES.test(name)) throw new Error(`attribute ${name} is not allowed`);
  const text = value === true ? "" : String(value);
  if ((name === "href" || name === "src" || name === "action") && !SAFE_URL.test(text)) {
    throw new Error(`unsafe URL for ${name}`);
  }
  el.setAttribute(name, text);
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace everything inside `el` with `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function visuallyHidden(text) {
  return h("span", { class: "visually-hidden" }, text);
}

export function icon(name) {
  return h("span", { class: `icon icon-${name}`, "aria-hidden": "true" });
}

const STATUS_TONE = {
  succeeded: "success", processed: "success", running: "info", validating_files: "muted",
  queued: "muted", uploaded: "muted", failed: "danger", error: "danger", cancelled: "warning",
};

export function badge(status, label = status) {
  return h("span", { class: ["badge", `tone-${STATUS_TONE[status] || "muted"}`],
    dataset: { status } }, String(label).replace(/_/g, " "));
}

export function card(title, ...children) {
  const titleEl = title ? h("h2", { class: "card-title" }, title) : null;
  return h("section", { class: "card", "aria-label": typeof title === "string" ? title : null },
    titleEl, ...children);
}

/** A page heading with an optional subtitle and actions on the right. */
export function pageHeader({ title, subtitle = null, actions = [], back = null }) {
  return h("div", { class: "page-header" },
    h("div", { class: "page-heading" },
      back ? h("a", { class: "back-link", href: back.href }, "← ", back.label) : null,
      h("h1", {}, title),
      subtitle ? h("p", { class: "subtitle" }, subtitle) : null),
    actions.length ? h("div", { class: "page-actions" }, actions) : null);
}

/** [[label, value], ...] -> <dl>. Values: nodes or strings; null renders as "—". */
export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(Boolean).map(([label, value]) =>
    h("div", { class: "fact" }, h("dt", {}, label),
      h("dd", {}, value === null || value === undefined || value === "" ? "—" : value))));
}

/** columns: [{label, cell: row => node|string, class?}]. */
export function table({ columns, rows, caption = null, empty = "Nothing here yet.", rowKey = null }) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", { class: "table" },
      caption ? h("caption", { class: "visually-hidden" }, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)))),
      h("tbody", {}, rows.map((row) => h("tr", { dataset: rowKey ? { key: rowKey(row) } : {} },
        columns.map((c) => h("td", { class: c.class, dataset: { label: c.label } }, c.cell(row))))))));
}

export function mono(text, { title = null } = {}) {
  return h("code", { class: "mono", title }, text);
}

export function link(href, ...children) {
  return h("a", { href }, ...children);
}

export function button(label, { kind = "secondary", onClick = null, type = "button", ...attrs } = {}) {
  return h("button", { class: ["button", kind], type, on: onClick ? { click: onClick } : {}, ...attrs },
    label);
}

export function spinner(label = "Loading…") {
  return h("p", { class: "loading", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), label);
}

/** A short message that fades out; read by screen readers through the live region. */
export function toast(message, tone = "info") {
  const region = document.getElementById("toasts");
  const el = h("div", { class: ["toast", `tone-${tone}`] }, message);
  region.append(el);
  setTimeout(() => el.remove(), 6000);
}

/** A modal confirmation (<dialog>: focus stays inside, Escape cancels). Resolves true/false. */
export function confirmDialog({ title, message, confirmLabel = "Confirm", cancelLabel = "Keep", tone = "danger" }) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "dialog", "aria-labelledby": "dialog-title" },
      h("form", { method: "dialog" },
        h("h2", { id: "dialog-title" }, title),
        h("p", {}, message),
        h("div", { class: "dialog-actions" },
          h("button", { class: "button ghost", value: "cancel", type: "submit" }, cancelLabel),
          h("button", { class: ["button", tone], value: "confirm", type: "submit" }, confirmLabel))));
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}
