// Create a fine-tuning job: the estimate (price, tokens, duration) is on screen, and the
// start button enabled, only once the server has estimated exactly what will be sent.

import { h, pageHeader, replace, spinner } from "../dom.js";
import { fieldset, readBody } from "../forms.js";
import { wireCreateForm } from "../create-form.js";
import { ADAPTER, ADVANCED, HYPERPARAMETERS, RECIPE, loadChoices, pruneAdapter } from "./job-fields.js";

export default {
  path: "/jobs/new",
  title: "New fine-tuning job",
  async render({ main, query, signal, navigate }) {
    replace(main, pageHeader({ title: "New fine-tuning job", back: { href: "#/jobs", label: "Jobs" } }), spinner());
    const choices = await loadChoices(signal);
    // ?model=ft:… (a checkpoint's "Continue" link): the job starts from that adapter.
    const continueFrom = (query.get("model") || "").startsWith("ft:") ? query.get("model") : null;
    const modelOptions = continueFrom
      ? [{ value: continueFrom, label: `Continue from ${continueFrom}` }, ...choices.modelOptions]
      : choices.modelOptions;
    const basics = [
      { name: "model", label: "Base model", type: "select", required: true, options: modelOptions,
        value: continueFrom || choices.models.find((m) => m.available)?.id,
        help: continueFrom ? "Same base model and adapter as that job; a fresh optimizer." : null },
      { name: "training_file", label: "Training file", type: "select", required: true,
        options: choices.fileOptions, value: query.get("training_file"), placeholder: "Choose a file" },
      { name: "validation_file", label: "Validation file", type: "select", options: choices.fileOptions,
        placeholder: "None", help: "Held-out examples: their loss is charted while the job trains." },
      { name: "suffix", label: "Suffix", type: "text", pattern: "[A-Za-z0-9_\\-]{1,64}", placeholder: "support-bot",
        help: "Up to 64 letters, digits, - or _, added to the fine-tuned model's name." },
    ];
    const budget = [
      { name: "max_cost", label: "Budget (USD)", type: "number", min: 0, step: "any", placeholder: "no cap",
        help: "Training stops at this cost and still delivers the adapter trained so far." },
      ...ADVANCED,
    ];
    const specs = [...basics, ...HYPERPARAMETERS, ...RECIPE, ...ADAPTER, ...budget];
    const form = h("form", { class: "create-form", novalidate: true, "aria-label": "New fine-tuning job" },
      fieldset("Model and data", basics),
      fieldset("Hyperparameters", HYPERPARAMETERS, { description: "Leave a field empty to let the service choose." }),
      fieldset("Training recipe", RECIPE, { open: false, description: "Schedule, regularisation, evaluations, checkpoints and packing. Empty: the defaults." }),
      fieldset("Adapter", ADAPTER, { open: false, description: "CRMA + LoRA by default." }),
      fieldset("Budget and more", budget, { open: false }));

    const controls = wireCreateForm({
      form, signal, submitLabel: "Start job",
      estimatePath: "/v1/fine_tuning/jobs/estimate", createPath: "/v1/fine_tuning/jobs",
      readBody: () => {
        const body = pruneAdapter(readBody(form, specs));
        if (!body.model) return { body: null, missing: "Choose a base model." };
        // A continued job keeps its source's adapter: the form's adapter fields do not apply.
        if (body.model.startsWith("ft:")) delete body.adapter;
        if (!body.training_file) return { body: null, missing: "Choose a training file (upload one on the Files page)." };
        return { body };
      },
      onCreated: (job) => navigate(`/jobs/${encodeURIComponent(job.id)}`),
    });
    form.append(controls.errors, h("div", { class: "form-actions" }, controls.submit,
      h("a", { class: "button ghost", href: "#/jobs" }, "Cancel")));

    replace(main,
      pageHeader({ title: "New fine-tuning job", back: { href: "#/jobs", label: "Jobs" },
        subtitle: "Train a CRMA + LoRA adapter on one of your files." }),
      choices.fileOptions.length ? null : h("div", { class: "alert tone-info" },
        "You have no processed training file yet. ", h("a", { href: "#/files" }, "Upload one first.")),
      h("div", { class: "form-layout" }, form, controls.panel.element));
    controls.refresh();
  },
};
