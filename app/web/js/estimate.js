// The estimate panel of the create forms: what the job or run would train, cost and take,
// and whether the account may start it, asked of POST .../estimate with the form's body
// before anything is submitted.

import { h, replace, table } from "./dom.js";
import { count, duration, usd } from "./format.js";
import { errorView } from "./errors.js";

const REASONS = {
  quota_exceeded: "No free runs left today.",
  insufficient_credit: "Not enough credit for this estimate.",
  model_not_available_on_plan: "This model is not on your plan.",
};

export class EstimatePanel {
  constructor() {
    this.element = h("aside", { class: "estimate card", "aria-live": "polite", "aria-label": "Estimate" },
      h("h2", { class: "card-title" }, "Estimate"),
      h("p", { class: "muted" }, "Choose a model and a training file to see the price, tokens and duration."));
    this.result = null;
  }

  waiting() {
    this.element.classList.add("is-loading");
  }

  clear(message) {
    this.result = null;
    this.element.classList.remove("is-loading");
    replace(this.element, h("h2", { class: "card-title" }, "Estimate"), h("p", { class: "muted" }, message));
  }

  showError(error) {
    this.result = null;
    this.element.classList.remove("is-loading");
    replace(this.element, h("h2", { class: "card-title" }, "Estimate"),
      errorView(error, { title: "The server cannot estimate this request" }));
  }

  /** estimate: JobEstimatePublic or ContinualEstimatePublic. */
  show(estimate) {
    this.result = estimate;
    this.element.classList.remove("is-loading");
    const free = estimate.free_runs;
    const stages = estimate.stages || null;
    replace(this.element,
      h("h2", { class: "card-title" }, "Estimate"),
      h("div", { class: "estimate-figures" },
        figure("Price", usd(estimate.price), estimate.list_price !== estimate.price ? `list ${usd(estimate.list_price)}` : "held now, charged for what trains", "price"),
        figure("Trained tokens", count(estimate.trained_tokens), tokensNote(estimate), "tokens"),
        figure("Duration", `≈ ${duration(estimate.expected_duration_s)}`, "at the model's typical speed", "duration")),
      stages ? table({
        caption: "Per stage",
        rows: stages,
        columns: [
          { label: "Stage", cell: (s) => s.name || "—" },
          { label: "Epochs", class: "num", cell: (s) => count(s.n_epochs) },
          { label: "Tokens", class: "num", cell: (s) => count(s.trained_tokens) },
          { label: "Duration", class: "num", cell: (s) => duration(s.expected_duration_s) },
        ],
      }) : null,
      estimate.micro_batch_plan ? h("p", { class: "muted small", dataset: { estimate: "plan" } }, planLine(estimate)) : null,
      h("p", { class: ["verdict", estimate.allowed_to_proceed ? "tone-success" : "tone-danger"], dataset: { allowed: String(estimate.allowed_to_proceed) } },
        estimate.allowed_to_proceed ? "Ready to start." : (estimate.message || REASONS[estimate.reason] || "This cannot start now.")),
      h("p", { class: "muted small" },
        estimate.plan === "free" && free
          ? `Free plan: ${free.remaining} of ${free.limit} runs left today.`
          : `Available credit: ${usd(estimate.available)}.`));
  }
}

/** How each step would run (the micro-batch plan) and the resolved packing. */
function planLine(estimate) {
  const plan = estimate.micro_batch_plan;
  const packing = estimate.hyperparameters?.packing ? "packed rows" : "rows";
  const passes = plan.accumulation_steps > 1
    ? `${plan.accumulation_steps} passes of ≤ ${plan.micro_batch_size} with gradient accumulation`
    : plan.source === "device" ? "passes sized by the worker to its free memory" : "one pass";
  return `Each step: ${plan.batch_size} ${packing} of ≤ ${count(plan.width)} tokens, ${passes}.`;
}

function tokensNote(estimate) {
  if (estimate.trained_tokens < estimate.estimated_tokens) return `capped from ${count(estimate.estimated_tokens)}`;
  if (estimate.stages) return `${estimate.stages.length} stage${estimate.stages.length === 1 ? "" : "s"}`;
  return `${estimate.n_epochs} epoch${estimate.n_epochs === 1 ? "" : "s"}`;
}

function figure(label, value, note, key) {
  return h("div", { class: "estimate-figure", dataset: { estimate: key } },
    h("span", { class: "figure-label" }, label),
    h("span", { class: "figure-value" }, value),
    h("span", { class: "figure-note" }, note));
}
