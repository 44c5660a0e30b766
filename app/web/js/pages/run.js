// One continual run: stages; drawn from the report, what CRMA adds over one LoRA per domain
// (with `baseline: true`), which CRMA state serves each domain, general-text retention, the
// drift heatmap, the per-domain comparison and routing accuracy; the run's model name, its
// files, cancel, and adding the next domain to a finished run.

import * as api from "../api.js";
import { artifactsTable } from "../artifacts.js";
import { badge, button, card, confirmDialog, facts, h, link, mono, pageHeader, replace, table, toast } from "../dom.js";
import { comparison, driftSummary, generalRetention, heatmap, routingTable, servingTable, stageWarnings, versusBaseline } from "../drift.js";
import { errorView, showingErrors } from "../errors.js";
import { fieldset, markFieldError, readBody } from "../forms.js";
import { compact, dateTime, relative } from "../format.js";
import { isTerminal } from "../status.js";
import { loadChoices } from "./job-fields.js";

const REFRESH_MS = 4000;

function stagesTable(run) {
  return table({
    caption: "Stages",
    rows: run.stages,
    rowKey: (s) => String(s.index),
    columns: [
      { label: "#", class: "num", cell: (s) => String(s.index + 1) },
      { label: "Domain", cell: (s) => s.name },
      { label: "Status", cell: (s) => badge(s.status) },
      { label: "Tokens", class: "num", cell: (s) => compact(s.trained_tokens) },
      { label: "Job", cell: (s) => link(`#/jobs/${encodeURIComponent(s.job_id)}`, mono(s.job_id)) },
      { label: "Note", cell: (s) => (s.error ? h("span", { class: "tone-danger" }, s.error.message || s.error.code) : "") },
    ],
  });
}

function addDomainForm(run, choices, { signal, onAdded }) {
  const specs = [
    { name: "name", label: "Domain name", type: "text", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9 _.\\-]*",
      placeholder: "legal", help: "Letters, digits, spaces, . _ -; starts with a letter or digit." },
    { name: "training_file", label: "Training file", type: "select", required: true, options: choices.fileOptions, placeholder: "Choose a file" },
    { name: "validation_file", label: "Holdout file", type: "select", required: true, options: choices.fileOptions,
      placeholder: "Choose a file", help: "Drift is measured on it after every later stage." },
  ];
  const errors = h("div");
  const submit = h("button", { class: "button primary", type: "submit" }, "Add domain");
  let idempotency = { body: null, key: null };
  const form = h("form", { class: "add-domain", novalidate: true, "aria-label": "Add a domain",
    on: {
      submit: async (event) => {
        event.preventDefault();
        const domain = readBody(form, specs);
        const body = { domains: [domain] };
        const text = JSON.stringify(body);
        if (idempotency.body !== text) idempotency = { body: text, key: api.newIdempotencyKey() };
        submit.disabled = true;
        errors.replaceChildren();
        markFieldError(form, null);
        try {
          const updated = await api.post(`/v1/continual/runs/${encodeURIComponent(run.id)}/domains`, body,
            { signal, idempotencyKey: idempotency.key });
          toast(`Domain ${domain.name} added: stage ${updated.stages.length} is queued.`);
          onAdded(updated);
        } catch (error) {
          if (error.name === "AbortError") return;
          errors.replaceChildren(errorView(error, { title: "Domain not added" }));
          // "domains[0].training_file" names this form's "training_file".
          markFieldError(form, (error.param || "").replace(/^domains\[\d+\]\.?/, "") || null, error.message);
        } finally {
          submit.disabled = false;
        }
      },
    } },
  fieldset("Add a domain", specs, { description: "Trains one more stage on top of this run; every earlier domain is scored again afterwards." }),
  errors, h("div", { class: "form-actions" }, submit));
  return form;
}

export default {
  path: "/runs/:id",
  title: "Continual run",
  async render({ main, params, signal }) {
    const path = `/v1/continual/runs/${encodeURIComponent(params.id)}`;
    let run = await api.get(path, { signal });
    const header = h("div");
    const alerts = h("div");
    const summary = h("div");
    const stages = h("div");
    const report = h("div");
    const artifacts = h("div");
    const addDomain = h("div");
    let choices = null;

    async function onCancel() {
      const ok = await confirmDialog({ title: "Cancel this run?", message: "Every unfinished stage is cancelled. Finished stages keep their results.",
        confirmLabel: "Cancel run", cancelLabel: "Keep it" });
      if (!ok) return;
      const updated = await showingErrors(alerts, () => api.post(`${path}/cancel`, undefined, { signal }), { title: "Not cancelled" });
      if (updated) { run = updated; draw(); }
    }

    function draw() {
      replace(header, pageHeader({
        title: h("span", { class: "title-with-badge" }, mono(run.id), badge(run.status)),
        subtitle: `${run.mode} · ${run.model} · ${run.stages.map((s) => s.name).join(" → ")}`,
        back: { href: "#/runs", label: "Continual runs" },
        actions: isTerminal(run.status) ? [] : [button("Cancel run", { kind: "danger-outline", onClick: onCancel })],
      }));
      replace(alerts, run.error ? errorView({ message: run.error.message || run.error.code }, { title: "Run failed" }) : null);
      replace(summary, facts([
        ["Mode", run.mode], ["Base model", run.model],
        ["Drift budget", run.mode === "modular" ? `${run.drift_budget_pct}%` : "n/a (no CRMA)"],
        ["Baseline", run.baseline ? "trained alongside (one plain LoRA per domain)" : "not trained"],
        ["Created", h("time", { title: dateTime(run.created_at) }, relative(run.created_at))],
        ["Finished", run.finished_at ? dateTime(run.finished_at) : null],
        ["Stages", `${run.stages.filter((s) => s.status === "succeeded").length} of ${run.stages.length} done`],
        ["Seed", String(run.seed)],
        ["Model to call", run.fine_tuned_model ? mono(run.fine_tuned_model) : null],
      ]));
      replace(stages, stagesTable(run));
      const r = run.report;
      replace(report, r && r.matrix && r.matrix.length
        ? h("div", {},
          stageWarnings(r),
          card("What CRMA adds over one LoRA per domain", versusBaseline(r)),
          h("div", { class: "report-grid" },
            card("Which CRMA state serves each domain", servingTable(r)),
            card("General-text retention", generalRetention(r))),
          h("div", { class: "report-grid" },
            card("Loss matrix (served pairs)", heatmap(r), driftSummary(r)),
            card("Per domain: base model, own stage, now", comparison(r))),
          card("Routing: which domain answers a prompt", routingTable(r)))
        : card("Report", h("p", { class: "muted" }, "The report appears once the first stage has been scored.")));
      if (run.status === "succeeded" && choices) {
        if (!addDomain.querySelector("form")) {
          replace(addDomain, card(null, addDomainForm(run, choices, { signal, onAdded: (updated) => { run = updated; replace(addDomain); draw(); poll(); } })));
        }
      } else {
        replace(addDomain, run.status === "succeeded" ? null
          : h("p", { class: "muted small" }, "A domain can be added once every stage has succeeded."));
      }
    }

    async function refreshArtifacts() {
      const files = await api.get(`${path}/artifacts`, { signal }).catch((e) => e);
      replace(artifacts, files instanceof Error ? errorView(files) : artifactsTable(files.data, { signal, empty: "No files yet: each finished stage publishes its adapters and report." }));
    }

    let polling = false;
    async function poll() {
      if (polling) return;
      polling = true;
      while (!signal.aborted && !isTerminal(run.status)) {
        await api.sleep(REFRESH_MS, signal);
        if (signal.aborted) break;
        const before = JSON.stringify(run.stages.map((s) => s.status));
        try {
          run = await api.get(path, { signal });
        } catch (error) {
          if (error.name === "AbortError") break;
          continue;
        }
        draw();
        if (JSON.stringify(run.stages.map((s) => s.status)) !== before) refreshArtifacts();
      }
      polling = false;
    }

    draw();
    replace(main, header, alerts, card(null, summary), card("Stages", stages),
      h("h2", { class: "section-title" }, "Report"), report, addDomain, card("Files", artifacts));
    refreshArtifacts();
    loadChoices(signal).then((c) => { choices = c; draw(); }).catch(() => {});
    poll();
  },
};
