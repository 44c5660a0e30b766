// One fine-tuning job: status and cost, the finished run's metrics (full validation loss,
// best checkpoint), live loss / learning-rate / gradient-norm charts from the events stream,
// the event log, checkpoints (the best marked), the adapter's files (sha256-checked
// downloads), every resolved hyperparameter with the micro-batch plan, and cancel.

import * as api from "../api.js";
import { artifactsTable } from "../artifacts.js";
import { badge, button, card, confirmDialog, facts, h, link, mono, pageHeader, replace, spinner, table, toast } from "../dom.js";
import { errorView, showingErrors } from "../errors.js";
import { EventLog } from "../event-log.js";
import { count, dateTime, decimal, duration, relative, scientific, usd } from "../format.js";
import { JobCharts } from "../job-charts.js";
import { isTerminal } from "../status.js";

const REFRESH_MS = 4000;

function progressBar(job, metrics) {
  const total = metrics.totalSteps;
  const step = metrics.latest?.step ?? 0;
  const done = job.status === "succeeded" ? 1 : total ? Math.min(1, step / total) : 0;
  const label = job.status === "succeeded" ? "Finished"
    : total ? `Step ${step} of ${total}` : isTerminal(job.status) ? "Stopped" : job.status === "running" ? "Starting…" : "Waiting for a worker";
  const bar = h("progress", { max: 100, value: Math.round(done * 100), "aria-label": "Training progress" });
  return h("div", { class: "progress", dataset: { status: job.status } }, bar,
    h("span", { class: "progress-label" }, label, done > 0 && done < 1 ? ` · ${Math.round(done * 100)}%` : ""));
}

function summary(job) {
  const hp = job.hyperparameters || {};
  const elapsed = job.finished_at ? job.finished_at - job.created_at : null;
  return facts([
    ["Base model", job.model],
    ["Created", h("time", { title: dateTime(job.created_at) }, relative(job.created_at))],
    job.finished_at ? ["Finished", h("span", {}, dateTime(job.finished_at), elapsed !== null ? ` · took ${duration(elapsed)}` : "")]
      : ["Estimated finish", job.estimated_finish ? relative(job.estimated_finish) : null],
    ["Trained tokens", job.trained_tokens === null ? `${count(job.usage.estimated_tokens)} estimated` : count(job.trained_tokens)],
    ["Cost", h("span", { dataset: { field: "cost" } }, usd(job.cost), isTerminal(job.status) ? "" : ` so far · ${usd(job.usage.hold)} held`)],
    ["Budget", job.max_cost ? usd(job.max_cost) : "no cap"],
    ["Epochs · batch · LR ×", `${hp.n_epochs ?? "—"} · ${hp.batch_size ?? "—"} · ${hp.learning_rate_multiplier ?? "—"}`],
  ]);
}

/** A fact's value, findable by tests and scripts as [data-field=name]. */
function field(name, ...children) {
  return h("span", { dataset: { field: name } }, ...children);
}

function onOff(value) {
  return value === true ? "on" : value === false ? "off" : "—";
}

/** How each step runs: from the worker's memory_plan event, then each step's own figures
 * (a halve-and-retry after an out-of-memory pass shows there). */
function planText(hp, plan) {
  if (!plan) return `${hp.batch_size ?? "—"} rows per step`;
  const passes = plan.accumulation_steps;
  return passes > 1
    ? `${plan.batch_size ?? hp.batch_size} rows per step · ${passes} passes of ≤ ${plan.micro_batch_size} rows, gradients accumulated`
    : `${plan.batch_size ?? hp.batch_size} rows per step · one pass`;
}

function hyperparameters(job, plan) {
  const hp = job.hyperparameters || {};
  const adapter = job.adapter || {};
  const modules = Array.isArray(adapter.lora_trainable_modules) ? adapter.lora_trainable_modules.join(", ") : adapter.lora_trainable_modules;
  const warmup = hp.warmup_ratio ? `, ${Math.round(hp.warmup_ratio * 1000) / 10}% warm-up` : ", no warm-up";
  return facts([
    ["Epochs", field("n_epochs", String(hp.n_epochs ?? "—"))],
    ["Batch", field("batch_plan", planText(hp, plan))],
    ["Max sequence length", field("max_seq_len", hp.max_seq_len === undefined ? "—" : `${count(hp.max_seq_len)} tokens`)],
    ["Packing", field("packing", onOff(hp.packing))],
    ["Max steps", field("max_steps", hp.max_steps ? count(hp.max_steps) : "all epochs")],
    ["Learning rate", field("learning_rate", `× ${hp.learning_rate_multiplier ?? "—"} · ${hp.lr_scheduler_type ?? "—"}${hp.lr_scheduler_type ? warmup : ""}`)],
    ["Weight decay", field("weight_decay", hp.weight_decay === undefined ? "—" : String(hp.weight_decay))],
    ["Max grad norm", field("max_grad_norm", hp.max_grad_norm === 0 ? "off (no clipping)" : hp.max_grad_norm === undefined ? "—" : String(hp.max_grad_norm))],
    ["Train on inputs", field("train_on_inputs", onOff(hp.train_on_inputs))],
    ["Evaluations", field("n_evals", hp.n_evals === null || hp.n_evals === undefined ? "—" : String(hp.n_evals))],
    ["Checkpoints", field("n_checkpoints", hp.n_checkpoints === null || hp.n_checkpoints === undefined ? "—" : String(hp.n_checkpoints))],
    ["LoRA dropout · modules", field("lora", `${adapter.lora_dropout ?? "—"} · ${modules ?? "—"}`)],
    adapter.crma === false ? null : ["CRMA rates (rw · mix · gate)", field("crma_rates",
      [hp.crma_learning_rate, hp.crma_mixing_learning_rate, hp.crma_gate_learning_rate].map(scientific).join(" · "))],
  ]);
}

/** The finished run's figures under OpenAI's names, and where the best weights are. */
function results(job, files) {
  const m = job.metrics;
  if (!m) return null;
  const hasBest = (files || []).some((a) => a.name.startsWith("best/"));
  const best = m.best_step === null || m.best_step === undefined ? null
    : h("span", {}, `step ${count(m.best_step)} · validation loss ${decimal(m.best_valid_loss, 4)}`,
      hasBest ? h("span", { class: "muted small" }, " · its weights: best/ in Adapter files") : h("span", { class: "muted small" }, " · the final adapter"));
  return facts([
    ["Training loss", field("train_loss", decimal(m.train_loss, 4))],
    ["Training token accuracy", field("train_mean_token_accuracy", decimal(m.train_mean_token_accuracy, 4))],
    ["Full validation loss", field("full_valid_loss", decimal(m.full_valid_loss, 4))],
    ["Validation token accuracy", field("full_valid_mean_token_accuracy", decimal(m.full_valid_mean_token_accuracy, 4))],
    m.full_valid_loss_lora_only === null || m.full_valid_loss_lora_only === undefined ? null
      : ["Validation loss, LoRA alone", field("full_valid_loss_lora_only", decimal(m.full_valid_loss_lora_only, 4))],
    ["Best checkpoint", field("best", best)],
  ]);
}

function details(job) {
  const adapter = job.adapter || {};
  return facts([
    ["Training file", mono(job.training_file)],
    ["Validation file", job.validation_file ? mono(job.validation_file) : "none"],
    ["Adapter", adapter.crma === false ? "LoRA" : `CRMA (${adapter.n_streams ?? "—"} streams, rank ${adapter.rank ?? "—"}) + LoRA`],
    ["LoRA rank · alpha", `${adapter.lora_r ?? "—"} · ${adapter.lora_alpha ?? "—"}`],
    adapter.quantization ? ["Quantization", adapter.quantization] : null,
    ["Seed", String(job.seed)],
    ["Suffix", job.suffix],
    ["Attempt", String(job.attempt)],
    job.continual_run_id ? ["Continual run", link(`#/runs/${encodeURIComponent(job.continual_run_id)}`, mono(job.continual_run_id), ` · stage ${job.stage_index + 1}`)] : null,
    ["Metadata", job.metadata && Object.keys(job.metadata).length
      ? h("ul", { class: "kv" }, Object.entries(job.metadata).map(([k, v]) => h("li", {}, h("code", {}, k), " = ", v))) : null],
  ]);
}

function exportsView(rows, { signal }) {
  if (!rows.length) return h("p", { class: "muted" }, "No export yet. \"Export merged weights\" builds one model folder that transformers loads on its own.");
  return h("div", { class: "stack-gap" }, rows.map((e) => h("div", { class: "stack-gap", dataset: { export: e.id } },
    h("p", {}, mono(e.id), " ", badge(e.status), ` ${e.format} · ${e.dtype} · ${usd(e.cost)} charged`,
      e.format === "merged_crma" ? h("span", { class: "muted small" }, " · load with trust_remote_code=True (CRMA kept as code)") : null),
    e.error ? errorView({ message: e.error.message }, { title: `Failed: ${e.error.code}` }) : null,
    e.status === "succeeded" ? artifactsTable(e.files, { signal }) : null)));
}

function checkpointsTable(rows, job) {
  return table({
    caption: "Checkpoints",
    rows,
    rowKey: (c) => String(c.step_number),
    empty: isTerminal(job.status) ? "No checkpoint was saved during this job." : "No checkpoint yet.",
    columns: [
      { label: "Step", class: "num", cell: (c) => h("span", {}, count(c.step_number),
        c.best ? h("span", { class: "badge", dataset: { status: "succeeded", best: "true" }, title: "Lowest validation loss" }, " best") : null) },
      { label: "Train loss", class: "num", cell: (c) => decimal(c.metrics.train_loss, 4) },
      { label: "Valid loss", class: "num", cell: (c) => decimal(c.metrics.valid_loss, 4) },
      { label: "Valid acc.", class: "num", cell: (c) => decimal(c.metrics.valid_mean_token_accuracy, 3) },
      { label: "Saved", cell: (c) => h("time", { title: dateTime(c.created_at) }, relative(c.created_at)) },
      { label: "Checkpoint", cell: (c) => mono(c.fine_tuned_model_checkpoint) },
      { label: "", class: "actions", cell: (c) => h("a", { class: "button small", href: `#/jobs/new?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}`,
        "aria-label": `Continue from step ${c.step_number}` }, "Continue") },
    ],
  });
}

export default {
  path: "/jobs/:id",
  title: "Job",
  async render({ main, params, signal }) {
    const id = params.id;
    const path = `/v1/fine_tuning/jobs/${encodeURIComponent(id)}`;
    let job = await api.get(path, { signal });
    const charts = new JobCharts();
    const log = new EventLog();
    signal.addEventListener("abort", () => charts.destroy(), { once: true });

    const header = h("div");
    const progress = h("div");
    const summaryCard = card(null);
    const alerts = h("div");
    const checkpoints = h("div", {}, spinner());
    const artifacts = h("div", {}, spinner());
    const detailsCard = h("div");
    const hyperparametersCard = h("div");
    const resultsCard = h("div");
    let plan = null;
    let files = null;
    const exportsSlot = h("div");
    const streamState = h("span", { class: "stream-state muted small", "aria-live": "polite" });

    function drawJob() {
      const cancel = isTerminal(job.status) ? null : button("Cancel job", { kind: "danger-outline", onClick: onCancel });
      const exportButton = job.status === "succeeded" && !job.continual_run_id
        ? button("Export merged weights", { kind: "secondary", onClick: onExport }) : null;
      replace(header, pageHeader({
        title: h("span", { class: "title-with-badge" }, mono(job.id), badge(job.status)),
        subtitle: job.fine_tuned_model || job.model,
        back: job.continual_run_id ? { href: `#/runs/${encodeURIComponent(job.continual_run_id)}`, label: "Continual run" } : { href: "#/jobs", label: "Jobs" },
        actions: [streamState, exportButton, cancel].filter(Boolean),
      }));
      replace(progress, progressBar(job, charts.metrics));
      replace(summaryCard, summary(job));
      replace(alerts, job.error ? errorView({ message: job.error.message, param: job.error.param },
        { title: `Failed: ${job.error.code}` }) : null,
      job.cancel_requested && !isTerminal(job.status) ? h("div", { class: "alert tone-warning" }, "Cancellation requested: the worker stops at its next heartbeat.") : null);
      replace(detailsCard, details(job));
      replace(hyperparametersCard, hyperparameters(job, plan));
      const done = results(job, files);
      replace(resultsCard, done ? card("Results", done) : null);
    }

    /** The micro-batch plan from the events (memory_plan, then every step's figures). */
    function notePlan(event) {
      const data = event.data || {};
      if (!data.accumulation_steps || !data.micro_batch_size) return;
      const next = { batch_size: data.batch_size ?? plan?.batch_size, micro_batch_size: data.micro_batch_size, accumulation_steps: data.accumulation_steps };
      if (plan && next.micro_batch_size === plan.micro_batch_size && next.accumulation_steps === plan.accumulation_steps) return;
      plan = next;
      replace(hyperparametersCard, hyperparameters(job, plan));
    }

    async function onExport() {
      const crma = job.adapter?.crma !== false;
      const ok = await confirmDialog({
        title: "Export merged weights?",
        message: crma
          ? "One folder in bfloat16: the LoRA merged into the base weights. CRMA cannot be merged exactly, so it is kept as a small modeling_crma.py: load the folder with trust_remote_code=True."
          : "One folder in bfloat16 (the LoRA merged into the base weights) that transformers loads with no peft.",
        confirmLabel: "Export", cancelLabel: "Not now", tone: "primary",
      });
      if (!ok) return;
      const made = await showingErrors(alerts, () => api.post(`${path}/exports`,
        { format: crma ? "merged_crma" : "merged", dtype: "bfloat16" }, { signal }), { title: "Not exported" });
      if (made) {
        toast("Export queued: a worker builds the folder.");
        await refreshExports(true);
      }
    }

    async function refreshExports(follow = false) {
      const page = await api.get(`${path}/exports`, { signal }).catch((e) => e);
      if (page instanceof Error) {
        if (page.name !== "AbortError") replace(exportsSlot, errorView(page));
        return;
      }
      replace(exportsSlot, exportsView(page.data, { signal }));
      const busy = page.data.some((e) => e.status === "queued" || e.status === "running");
      if (follow && busy && !signal.aborted) {
        await api.sleep(REFRESH_MS, signal);
        if (!signal.aborted) await refreshExports(true);
      }
    }

    async function onCancel() {
      const ok = await confirmDialog({
        title: "Cancel this job?",
        message: job.status === "running" ? "Training stops at the next heartbeat. You pay for the tokens trained so far." : "It has not started: nothing is charged.",
        confirmLabel: "Cancel job", cancelLabel: "Keep it",
      });
      if (!ok) return;
      const updated = await showingErrors(alerts, () => api.post(`${path}/cancel`, undefined, { signal }), { title: "Not cancelled" });
      if (updated) {
        job = updated;
        drawJob();
        toast(job.status === "cancelled" ? "Job cancelled." : "Cancellation requested.");
      }
    }

    async function refreshLists() {
      const [ckpts, listed] = await Promise.all([
        api.get(`${path}/checkpoints`, { signal, query: { limit: 100 } }).catch((e) => e),
        api.get(`${path}/artifacts`, { signal }).catch((e) => e),
      ]);
      replace(checkpoints, ckpts instanceof Error ? errorView(ckpts) : checkpointsTable(ckpts.data, job));
      replace(artifacts, listed instanceof Error ? errorView(listed) : artifactsTable(listed.data, { signal }));
      if (!(listed instanceof Error)) {
        files = listed.data;
        const done = results(job, files);
        replace(resultsCard, done ? card("Results", done) : null);
      }
    }

    async function refreshJob() {
      try {
        job = await api.get(path, { signal });
        drawJob();
      } catch (error) {
        if (error.name !== "AbortError") streamState.textContent = error.message;
      }
    }

    drawJob();
    replace(main, header, progress, alerts, summaryCard, resultsCard,
      h("h2", { class: "section-title" }, "Training"), charts.element,
      h("div", { class: "columns" }, card("Events", log.element), card("Checkpoints", checkpoints)),
      card("Adapter files", artifacts),
      job.continual_run_id ? null : card("Merged exports", exportsSlot),
      h("div", { class: "columns" }, card("Hyperparameters", hyperparametersCard), card("Configuration", detailsCard)));
    refreshLists();
    if (!job.continual_run_id) refreshExports(true);

    // Live: the events stream feeds the log and the charts; the job itself is re-read on a
    // timer (cost, tokens, status) until the stream says it is finished.
    streamState.textContent = isTerminal(job.status) ? "" : "● live";
    api.followJobEvents(id, {
      signal,
      onEvent: (event) => {
        log.add(event);
        charts.add(event);
        notePlan(event);
        if (event.type === "metrics") replace(progress, progressBar(job, charts.metrics));
      },
      onDone: async () => {
        streamState.textContent = "";
        await refreshJob();
        await refreshLists();
      },
      onError: (error) => { streamState.textContent = `reconnecting… (${error.message})`; },
    });
    (async () => {
      while (!signal.aborted && !isTerminal(job.status)) {
        await api.sleep(REFRESH_MS, signal);
        if (signal.aborted) return;
        const before = job.status;
        await refreshJob();
        if (job.status !== before || job.status === "running") refreshLists();
      }
    })();
  },
};
