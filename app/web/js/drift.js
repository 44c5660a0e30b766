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

// A drift of this size or more gets the full colour: the scale is fixed, so a 0.3% change
// stays faint however small every other change of the run is.
const FULL_COLOUR_PCT = 10;

/** The colour of a cell below the diagonal: its drift since the domain's own stage, red when
 * forgotten, green when improved (CSSOM, which the CSP allows). */
function driftColour(pct) {
  const strength = Math.round(Math.min(1, Math.abs(pct) / FULL_COLOUR_PCT) * 85) + 8;
  const tone = pct > 0 ? "--drift-worse" : "--drift-better";
  return `color-mix(in oklab, var(${tone}) ${strength}%, var(--surface-2))`;
}

/** The loss matrix L[t][i]: the diagonal is each domain just after its own stage; a cell
 * below it is that domain's loss after a later stage, coloured by the change since. */
/** The report's warnings (a stage left its own domain worse than the untrained model: it
 * diverged), as one alert above the rest; nothing when there are none. */
export function stageWarnings(report) {
  const warnings = report.warnings || [];
  if (!warnings.length) return null;
  return h("div", { class: "alert tone-warning stage-warnings", role: "status" },
    h("p", { class: "alert-title" }, warnings.length === 1 ? "A stage diverged" : `${warnings.length} stages diverged`),
    h("ul", {}, ...warnings.map((w) => h("li", { "data-domain": w.domain }, w.message))));
}

export function heatmap(report) {
  const domains = report.domains || [];
  const matrix = report.matrix || [];
  const cell = (t, i) => {
    const value = matrix[t][i];
    if (i === t) {
      return h("td", { class: "heat-cell is-diagonal", dataset: { value: String(value) }, title: decimal(value, 4) },
        h("span", { class: "heat-value" }, decimal(value, 3)), h("span", { class: "heat-note" }, "just trained"));
    }
    const pct = relativeChange(matrix[i][i], value);
    const td = h("td", { class: "heat-cell", dataset: { value: String(value), drift: String(pct) },
      title: `${decimal(value, 4)} (${percent(pct, 2)} since its own stage)` },
    h("span", { class: "heat-value" }, decimal(value, 3)), h("span", { class: "heat-note" }, percent(pct, 1)));
    td.style.backgroundColor = driftColour(pct);
    return td;
  };
  const head = h("tr", {},
    h("th", { scope: "col", class: "corner" }, h("span", { class: "muted small" }, "after stage ↓ · holdout →")),
    domains.map((name) => h("th", { scope: "col" }, name)));
  const rows = matrix.map((row, t) => h("tr", {},
    h("th", { scope: "row" }, h("span", { class: "muted small" }, `${t + 1}. `), domains[t] ?? `stage ${t + 1}`),
    domains.map((_, i) => (i < row.length && row[i] !== null
      ? cell(t, i) : h("td", { class: "heat-empty", "aria-label": "not trained yet" })))));
  return h("figure", { class: "heatmap", dataset: { rows: String(matrix.length) } },
    h("div", { class: "table-wrap" },
      h("table", { class: "heat-table" },
        h("caption", {}, "Holdout loss L[t][i] after each stage, lower is better. Below the diagonal: the change since that domain's own stage."),
        h("thead", {}, head), h("tbody", {}, rows))),
    h("div", { class: "heat-legend", "aria-hidden": "true" },
      h("span", { class: "heat-key worse" }), h("span", {}, "forgotten"),
      h("span", { class: "heat-key better" }), h("span", {}, "improved"),
      h("span", { class: "muted" }, `(full colour at ±${FULL_COLOUR_PCT}%)`)));
}

function relativeChange(before, after) {
  return (100 * (after - before)) / before;
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

function finite(value) {
  return typeof value === "number" && Number.isFinite(value);
}

/** One diverging bar around 0: positive values grow right in the "better" colour, negative
 * ones left in the "worse" colour; `scale` is the value drawn at full half-width. */
function divergingRow(label, value, scale, note) {
  const negative = h("span", { class: "diverge-half negative" });
  const positive = h("span", { class: "diverge-half positive" });
  if (finite(value)) {
    const bar = h("span", { class: ["diverge-bar", value >= 0 ? "is-better" : "is-worse"] });
    bar.style.width = `${Math.max(2, (Math.abs(value) / scale) * 100)}%`;
    (value >= 0 ? positive : negative).append(bar);
  }
  return h("div", { class: "diverge-row", dataset: { value: finite(value) ? String(value) : "" }, title: note },
    h("span", { class: "diverge-label" }, label),
    h("span", { class: "diverge-track" }, negative, positive),
    h("span", { class: ["bar-value", finite(value) && (value >= 0 ? "tone-success" : "tone-danger")] },
      finite(value) ? percent(value, 2) : "—"));
}

/** What CRMA adds over one plain LoRA per domain (report.versus_baseline, runs with
 * `baseline: true`): per domain, forward (its own loss right after its stage) and backward
 * (its final served loss), in percent of the baseline LoRA's loss; positive = CRMA better. */
export function versusBaseline(report) {
  const versus = report.versus_baseline;
  if (!versus) {
    return h("p", { class: "muted" },
      "Not measured: start a run with “Train the per-domain LoRA baseline too” (baseline: true) to see what CRMA adds over one plain LoRA per domain.");
  }
  const domains = report.domains || [];
  const values = domains.flatMap((d) => [versus.forward_pct[d], versus.backward_pct[d]]).filter(finite);
  const scale = Math.max(0.5, ...values.map(Math.abs));
  const mean = (v) => (finite(v) ? percent(v, 2) : "—");
  return h("figure", { class: "versus-baseline" },
    h("div", { class: "bar-groups" }, domains.map((name) => h("div", { class: "bar-group", dataset: { domain: name } },
      h("div", { class: "bar-group-name" }, name),
      divergingRow("forward", versus.forward_pct[name], scale, "Own holdout loss right after its stage vs the baseline LoRA's"),
      name in versus.backward_pct
        ? divergingRow("backward", versus.backward_pct[name], scale, "Holdout loss now (served pair) vs the baseline LoRA's")
        : h("p", { class: "muted small" }, "backward: the newest domain, nothing trained after it yet")))),
    h("figcaption", { class: "muted small" },
      `Mean forward ${mean(versus.forward_mean_pct)} · mean backward ${mean(versus.backward_mean_pct)}. ` +
      "Change of the holdout loss against one plain LoRA per domain (the frozen baseline, same init and batches); right and green = CRMA better."));
}

const STATE_LABELS = { shared: "shared CRMA", own: "its own stage's CRMA", earlier: "an earlier CRMA state" };

/** Which CRMA state serves each domain and why (report.serving, modular runs). */
export function servingTable(report) {
  const serving = report.serving;
  if (!serving) return h("p", { class: "muted" }, "Only modular runs have a CRMA: each domain is served by its own LoRA.");
  const rows = serving.map((s) => h("tr", { dataset: { domain: s.domain, state: s.crma_state } },
    h("th", { scope: "row" }, s.domain),
    h("td", {}, h("span", { class: ["badge", s.crma_state === "shared" ? "tone-info" : "tone-muted"] }, STATE_LABELS[s.crma_state] || s.crma_state),
      h("span", { class: "muted small" }, ` after stage ${s.crma_stage + 1}`)),
    h("td", { class: "num" }, percent(s.drift_pct, 2)),
    h("td", { class: "num" }, percent(s.shared_drift_pct, 2)),
    h("td", { class: "small" }, s.reason)));
  return h("div", { class: "table-wrap" },
    h("table", { class: "table serving-table" },
      h("caption", {}, `Drift budget ${report.drift_budget_pct}%: an earlier domain moves to the newest shared CRMA only while its holdout loss stays within it.`),
      h("thead", {}, h("tr", {}, ["Domain", "Served with", "Drift", "Shared CRMA's drift", "Why"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
}

/** Loss on the general-text holdout under each domain's adapter vs the untrained model
 * (report.general_retention): positive = the adapter costs general capability. */
export function generalRetention(report) {
  const general = report.general_retention;
  if (!general) return h("p", { class: "muted" }, "No general-text holdout was scored for this run.");
  const domains = report.domains || [];
  const cell = (rows, name) => {
    const row = rows && rows[name];
    return row ? h("td", { class: ["num", row.change_pct > 0 ? "tone-danger" : "tone-success"], dataset: { value: String(row.change_pct) } },
      percent(row.change_pct, 2), h("span", { class: "muted small" }, ` (${decimal(row.loss, 3)})`)) : h("td", { class: "num" }, "—");
  };
  return h("div", { class: "table-wrap" },
    h("table", { class: "table general-table" },
      h("caption", {}, `General-text loss of the untrained model: ${decimal(general.base_loss, 3)}. Change under each domain's adapter; positive = general text got worse.`),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Domain"), h("th", { scope: "col" }, "Served adapter"),
        general.baseline ? h("th", { scope: "col" }, "Baseline LoRA") : null)),
      h("tbody", {}, domains.map((name) => h("tr", { dataset: { domain: name } },
        h("th", { scope: "row" }, name), cell(general.served, name), general.baseline ? cell(general.baseline, name) : null)))));
}

/** How often the router (lowest prompt loss among the domains' served adapters, what the API
 * does when a request names no domain) picks each domain for its own holdout prompts
 * (report.routing, measured at the end of each stage). */
function share(fraction) {
  return fraction === null || fraction === undefined ? "—" : `${Math.round(100 * fraction)}%`;
}

export function routingTable(report) {
  const routing = report.routing;
  if (!routing) return h("p", { class: "muted" }, "Routing starts with the second domain (one domain answers everything).");
  if (routing.accuracy === undefined) return h("p", { class: "muted" }, `Routing accuracy was ${routing.error || "not measured"}.`);
  const domains = Object.keys(routing.per_domain);
  const rows = domains.map((name) => h("tr", { dataset: { domain: name } },
    h("th", { scope: "row" }, name),
    h("td", { class: "num" }, share(routing.per_domain[name].accuracy)),
    ...domains.map((chosen) => h("td", { class: "num" }, String((routing.confusion[name] || {})[chosen] || 0)))));
  return h("div", { class: "table-wrap" },
    h("table", { class: "table routing-table" },
      h("caption", {}, `Routed to the right domain: ${share(routing.accuracy)} of ${routing.examples} holdout prompts. Rows: the prompt's domain; columns: the domain chosen.`),
      h("thead", {}, h("tr", {}, ["Domain", "Accuracy", ...domains].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
}
