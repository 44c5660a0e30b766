// A continual run's report drawn in the page: the loss-matrix heatmap L[t][i] (row: after
// training domain t; column: holdout of domain i; blank above the diagonal), the drift of
// each earlier domain, and per domain its holdout loss before training (the base model),
// right after its own stage and now.

import { h } from "./dom.js";
import { decimal, percent } from "./format.js";

function extent(values) {
  const finite = values.filter((v) => typeof v === "number" && Number.isFinite(v));
  return finite.length ? [Math.min(...finite), Math.max(...finite)] : [0, 1];
}

/** 0..1 -> a colour between the theme's --heat-low and --heat-high (CSSOM, allowed by CSP). */
function heatColour(t) {
  const pct = Math.round(Math.max(0, Math.min(1, t)) * 100);
  return `color-mix(in oklab, var(--heat-high) ${pct}%, var(--heat-low))`;
}

export function heatmap(report) {
  const domains = report.domains || [];
  const matrix = report.matrix || [];
  const [low, high] = extent(matrix.flat());
  const span = high - low || 1;
  const cell = (value) => {
    const t = (value - low) / span;
    const td = h("td", { class: ["heat-cell", t > 0.55 && "is-hot"], dataset: { value: String(value) },
      title: decimal(value, 4) }, decimal(value, 3));
    td.style.backgroundColor = heatColour(t);
    return td;
  };
  const head = h("tr", {},
    h("th", { scope: "col", class: "corner" }, h("span", { class: "muted small" }, "after ↓ · holdout →")),
    domains.map((name) => h("th", { scope: "col" }, name)));
  const rows = matrix.map((row, t) => h("tr", {},
    h("th", { scope: "row" }, h("span", { class: "muted small" }, `${t + 1}. `), domains[t] ?? `stage ${t + 1}`),
    domains.map((_, i) => (i < row.length && row[i] !== null
      ? cell(row[i]) : h("td", { class: "heat-empty", "aria-label": "not measured" })))));
  return h("figure", { class: "heatmap", dataset: { rows: String(matrix.length) } },
    h("div", { class: "table-wrap" },
      h("table", { class: "heat-table" },
        h("caption", {}, "Holdout loss L[t][i] after each stage (lower is better)"),
        h("thead", {}, head), h("tbody", {}, rows))),
    h("div", { class: "heat-legend", "aria-hidden": "true" },
      h("span", {}, decimal(low, 3)), h("span", { class: "heat-scale" }), h("span", {}, decimal(high, 3))));
}

/** Drift per earlier domain and the summary figures. */
export function driftSummary(report) {
  const drifts = Object.entries(report.drift_pct || {});
  if (!drifts.length) return h("p", { class: "muted" }, "Drift is measured from the second domain on.");
  return h("div", { class: "drift-summary" },
    h("ul", { class: "drift-list" }, drifts.map(([name, value]) => h("li", { dataset: { domain: name } },
      h("span", {}, name),
      h("span", { class: ["drift-value", value > 0 ? "tone-danger" : "tone-success"] }, percent(value, 2),
        h("span", { class: "muted small" }, value > 0 ? " forgotten" : " improved"))))),
    h("p", { class: "muted small" },
      `Mean drift ${percent(report.drift_mean_pct, 2)} · backward transfer ${decimal(report.bwt, 4)} nats ` +
      "(drift: change of an earlier domain's holdout loss since its own stage; positive = forgetting)."));
}

/** Grouped bars per domain: base model, after its own stage, after the latest stage. */
export function comparison(report) {
  const domains = report.domains || [];
  const matrix = report.matrix || [];
  if (!matrix.length) return h("p", { class: "muted" }, "No stage has finished yet.");
  const last = matrix[matrix.length - 1];
  const series = [
    report.base_losses ? { key: "base", label: "Base model", values: report.base_losses } : null,
    { key: "own", label: "After its own stage", values: report.diagonal || matrix.map((row, i) => row[i]) },
    { key: "now", label: `After stage ${matrix.length}`, values: domains.map((_, i) => last[i] ?? null) },
  ].filter(Boolean);
  const [, high] = extent(series.flatMap((s) => s.values));
  return h("figure", { class: "comparison" },
    h("figcaption", { class: "legend" }, series.map((s) => h("span", { class: "legend-item" },
      h("span", { class: ["swatch", `series-${s.key}`], "aria-hidden": "true" }), s.label))),
    h("div", { class: "bar-groups" }, domains.map((name, i) => h("div", { class: "bar-group", dataset: { domain: name } },
      h("div", { class: "bar-group-name" }, name),
      series.map((s) => {
        const value = s.values[i];
        const bar = h("span", { class: ["bar", `series-${s.key}`] });
        bar.style.width = value === null || value === undefined ? "0" : `${Math.max(1, (value / high) * 100)}%`;
        return h("div", { class: "bar-row", title: `${s.label}: ${decimal(value, 4)}` },
          h("span", { class: "visually-hidden" }, `${s.label}: `),
          h("span", { class: "bar-track" }, bar),
          h("span", { class: "bar-value" }, decimal(value, 3)));
      })))));
}
