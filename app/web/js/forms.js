// Forms from field specs. A field's `name` is its path in the request body
// ("hyperparameters.n_epochs"), so adding a request field to a form is one spec entry
// (js/pages/job-fields.js), and the API's `param` in a 422 points back at the field.
//
// Spec: {name, label, type: text|number|select|checkbox|textarea|metadata, help?, required?,
//        min?, max?, step?, placeholder?, options?: [{value, label}] | (() => options),
//        value? (initial), inputmode?, pattern?}
// An empty optional field is left out of the body, so the server's default ("auto") applies.

import { h } from "./dom.js";

let uid = 0;

export function fieldId(name) {
  uid += 1;
  return `f-${name.replace(/[^\w-]/g, "-")}-${uid}`;
}

function control(spec, id, describedBy) {
  const common = { id, name: spec.name, "aria-describedby": describedBy, required: !!spec.required };
  if (spec.type === "select") {
    const options = typeof spec.options === "function" ? spec.options() : spec.options || [];
    const chosen = options.some((o) => String(o.value) === String(spec.value ?? ""));
    // A required select without a choice shows its placeholder instead of silently taking
    // the first option; an optional one can always go back to "none".
    const blank = !spec.required || (spec.placeholder && !chosen);
    return h("select", common,
      blank ? h("option", { value: "", disabled: !!spec.required, selected: !chosen }, spec.placeholder || "—") : null,
      options.map((o) => h("option", { value: o.value, selected: String(o.value) === String(spec.value ?? "") }, o.label)));
  }
  if (spec.type === "checkbox") {
    return h("input", { ...common, type: "checkbox", checked: spec.value ?? false });
  }
  if (spec.type === "textarea" || spec.type === "metadata") {
    return h("textarea", { ...common, rows: spec.rows || 3, placeholder: spec.placeholder, spellcheck: "false" },
      spec.value ?? "");
  }
  return h("input", {
    ...common, type: spec.type === "number" ? "number" : "text", value: spec.value ?? null,
    min: spec.min, max: spec.max, step: spec.step ?? (spec.type === "number" ? "any" : null),
    placeholder: spec.placeholder, inputmode: spec.inputmode, pattern: spec.pattern,
    autocomplete: "off", spellcheck: "false",
  });
}

/** One labelled field: label, control, help text and an error slot (role=alert). */
export function field(spec) {
  const id = fieldId(spec.name);
  const helpId = `${id}-help`;
  const errorId = `${id}-error`;
  const input = control(spec, id, [spec.help ? helpId : null, errorId].filter(Boolean).join(" "));
  const label = h("label", { for: id }, spec.label, spec.required ? null : h("span", { class: "optional" }, " (optional)"));
  const wrapper = h("div", { class: ["field", spec.type === "checkbox" && "field-checkbox"], dataset: { field: spec.name } },
    spec.type === "checkbox" ? [input, label] : [label, input],
    spec.help ? h("p", { class: "help", id: helpId }, spec.help) : null,
    h("p", { class: "field-error", id: errorId, role: "alert" }));
  return wrapper;
}

export function fieldset(legend, specs, { open = true, description = null } = {}) {
  const body = h("div", { class: "field-grid" }, specs.map(field));
  if (open) return h("fieldset", { class: "fieldset" }, h("legend", {}, legend), description ? h("p", { class: "help" }, description) : null, body);
  return h("details", { class: "fieldset collapsible" }, h("summary", {}, legend),
    description ? h("p", { class: "help" }, description) : null, body);
}

function valueOf(spec, el) {
  if (spec.type === "checkbox") return el.checked;
  const raw = el.value.trim();
  if (raw === "") return undefined;
  if (spec.type === "number") return Number(raw);
  if (spec.type === "metadata") return parseMetadata(raw);
  return raw;
}

/** "key=value" lines -> {key: value}. */
export function parseMetadata(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    const key = (at === -1 ? line : line.slice(0, at)).trim();
    out[key] = at === -1 ? "" : line.slice(at + 1).trim();
  }
  return out;
}

/** The request body the specs describe, read from `form`; checkbox fields are always sent,
 * empty optional ones never. */
export function readBody(form, specs, into = {}) {
  for (const spec of specs) {
    const el = form.querySelector(`[name="${CSS.escape(spec.name)}"]`);
    if (!el) continue;
    const value = valueOf(spec, el);
    if (value === undefined) continue;
    setPath(into, spec.name, value);
  }
  return into;
}

function setPath(target, path, value) {
  const parts = path.split(".");
  let node = target;
  for (const part of parts.slice(0, -1)) node = node[part] ??= {};
  node[parts[parts.length - 1]] = value;
}

/** Mark the field the API named in `param` (or clear every mark with null). */
export function markFieldError(form, param, message) {
  for (const el of form.querySelectorAll(".field.has-error")) {
    el.classList.remove("has-error");
    el.querySelector(".field-error").textContent = "";
    el.querySelector("input, select, textarea")?.removeAttribute("aria-invalid");
  }
  if (!param) return false;
  const wrapper = form.querySelector(`.field[data-field="${CSS.escape(param)}"]`);
  if (!wrapper) return false;
  wrapper.classList.add("has-error");
  wrapper.querySelector(".field-error").textContent = message;
  wrapper.querySelector("input, select, textarea")?.setAttribute("aria-invalid", "true");
  return true;
}

/** Call fn at most once per `ms` of quiet (for estimates while the user types). */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
