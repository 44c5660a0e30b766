// API errors as the user sees them: the server's message, the parameter it names, and for a
// rejected upload the line-numbered problems (the first 100 the server reports).

import { h, table } from "./dom.js";
import { count } from "./format.js";

export function errorView(error, { title = "Something went wrong" } = {}) {
  const lines = error.errors || [];
  const hidden = Math.max(0, (error.errorCount || lines.length) - lines.length);
  return h("div", { class: "alert tone-danger", role: "alert" },
    h("p", { class: "alert-title" }, title),
    h("p", { class: "alert-message" }, error.message || String(error)),
    error.param && !lines.length ? h("p", { class: "alert-meta" }, "Field: ", h("code", {}, error.param)) : null,
    lines.length ? lineErrors(lines, error.errorCount || lines.length) : null,
    hidden ? h("p", { class: "alert-meta" }, `…and ${count(hidden)} more not listed.`) : null);
}

export function lineErrors(lines, total = lines.length) {
  return h("div", { class: "line-errors" },
    h("p", { class: "alert-meta" }, `${count(total)} problem${total === 1 ? "" : "s"} found:`),
    table({
      caption: "Problems by line",
      rows: lines,
      columns: [
        { label: "Line", class: "num", cell: (e) => (e.line === null || e.line === undefined ? "file" : `Line ${e.line}`) },
        { label: "Field", cell: (e) => (e.field ? h("code", {}, e.field) : "—") },
        { label: "Problem", cell: (e) => e.message },
        { label: "Code", class: "muted", cell: (e) => h("code", {}, e.code) },
      ],
    }));
}

/** Runs `task` and shows its error in `slot` (a node) instead of throwing. */
export async function showingErrors(slot, task, options) {
  slot.replaceChildren();
  try {
    return await task();
  } catch (error) {
    if (error.name === "AbortError") return undefined;
    slot.replaceChildren(errorView(error, options));
    return undefined;
  }
}
