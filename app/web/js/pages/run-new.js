// Start a continual run: ordered domains (training + holdout file each), the mode, the
// shared hyperparameters; the estimate per stage and in total is shown before starting.

import { button, h, pageHeader, replace, spinner } from "../dom.js";
import { field, fieldset, readBody } from "../forms.js";
import { wireCreateForm } from "../create-form.js";
import { ADAPTER, ADVANCED, CRMA_RATES, HYPERPARAMETERS, loadChoices, pruneAdapter } from "./job-fields.js";

const MAX_DOMAINS = 16;
const MODES = [
  { value: "modular", label: "modular: a LoRA per domain + one shared CRMA, served under the drift budget" },
  { value: "frozen", label: "frozen: one plain LoRA per domain, no CRMA" },
  { value: "naive", label: "naive: one LoRA trained on every domain in turn (forgets)" },
];
const CONTINUAL = [
  { name: "drift_budget_pct", label: "Drift budget (%)", type: "number", min: 0, max: 100, step: "any", placeholder: "0.5",
    help: "modular: an earlier domain moves to the newest shared CRMA only while its holdout loss stays within this many percent of what its own stage ended with; otherwise it keeps its CRMA state. 0 allowed." },
  { name: "baseline", label: "Train the per-domain LoRA baseline too", type: "checkbox", value: false,
    help: "Also trains what frozen mode trains, so the report shows what CRMA adds over it. About twice the tokens, billed. Not for frozen mode." },
];

function domainSpecs(i, fileOptions) {
  return [
    { name: `domains[${i}].name`, label: "Domain", type: "text", required: true, placeholder: i ? "astronomy" : "cooking",
      pattern: "[A-Za-z0-9][A-Za-z0-9 _.\\-]*" },
    { name: `domains[${i}].training_file`, label: "Training file", type: "select", required: true, options: fileOptions, placeholder: "Choose a file" },
    { name: `domains[${i}].validation_file`, label: "Holdout file", type: "select", required: true, options: fileOptions, placeholder: "Choose a file" },
  ];
}

/** The ordered list of domain rows; each row's fields are named domains[i].<field>, which
 * is also how the API names them in an error's `param`. */
class DomainList {
  constructor(fileOptions, onChange) {
    this.fileOptions = fileOptions;
    this.onChange = onChange;
    this.rows = h("ol", { class: "domain-rows" });
    this.addButton = button("Add a domain", { onClick: () => { this.add(); this.onChange(); } });
    this.element = h("fieldset", { class: "fieldset" }, h("legend", {}, "Domains, in training order"),
      h("p", { class: "help" }, "Each domain is one stage. After every stage, every domain seen so far is scored on its holdout file."),
      this.rows, this.addButton);
    this.add();
    this.add();
  }

  add() {
    const row = h("li", { class: "domain-row" },
      h("div", { class: "field-grid three" }, domainSpecs(this.rows.childElementCount, this.fileOptions).map(field)),
      button("Remove", { kind: "ghost small", "aria-label": "Remove this domain",
        onClick: () => { row.remove(); this.renumber(); this.onChange(); } }));
    this.rows.append(row);
    this.renumber();
    row.querySelector("input")?.focus();
  }

  renumber() {
    [...this.rows.children].forEach((row, i) => {
      for (const wrapper of row.querySelectorAll(".field")) {
        const name = wrapper.dataset.field.replace(/^domains\[\d+\]/, `domains[${i}]`);
        wrapper.dataset.field = name;
        wrapper.querySelector("input, select").name = name;
      }
      row.querySelector("button").hidden = this.rows.childElementCount === 1;
    });
    this.addButton.hidden = this.rows.childElementCount >= MAX_DOMAINS;
  }

  read() {
    return [...this.rows.children].map((row) => {
      const value = (suffix) => row.querySelector(`[name$="${suffix}"]`).value.trim();
      return { name: value(".name"), training_file: value(".training_file"), validation_file: value(".validation_file") };
    });
  }
}

export default {
  path: "/runs/new",
  title: "New continual run",
  async render({ main, signal, navigate }) {
    replace(main, pageHeader({ title: "New continual run", back: { href: "#/runs", label: "Continual runs" } }), spinner());
    const choices = await loadChoices(signal);
    const basics = [
      { name: "model", label: "Base model", type: "select", required: true, options: choices.modelOptions,
        value: choices.models.find((m) => m.available)?.id },
      { name: "mode", label: "Mode", type: "select", required: true, options: MODES, value: "modular" },
    ];
    const specs = [...basics, ...CONTINUAL, ...HYPERPARAMETERS, ...CRMA_RATES, ...ADAPTER, ...ADVANCED];
    let controls = null;
    const domains = new DomainList(choices.fileOptions, () => controls?.refresh());
    const form = h("form", { class: "create-form", novalidate: true, "aria-label": "New continual run" },
      fieldset("Model and mode", basics), fieldset("Forgetting and the baseline", CONTINUAL), domains.element,
      fieldset("Hyperparameters", HYPERPARAMETERS, { description: "The same for every stage. Empty: chosen by the service." }),
      fieldset("CRMA learning rates", CRMA_RATES, { open: false, description: "Base rates, each scaled by the learning-rate multiplier. Empty: the defaults." }),
      fieldset("Adapter", ADAPTER, { open: false }),
      fieldset("More", ADVANCED, { open: false }));

    controls = wireCreateForm({
      form, signal, submitLabel: "Start run",
      estimatePath: "/v1/continual/runs/estimate", createPath: "/v1/continual/runs",
      readBody: () => {
        const body = pruneAdapter(readBody(form, specs));
        body.domains = domains.read();
        if (!body.model) return { body: null, missing: "Choose a base model." };
        const incomplete = body.domains.findIndex((d) => !d.name || !d.training_file || !d.validation_file);
        if (incomplete !== -1) return { body: null, missing: `Complete domain ${incomplete + 1}: a name, a training file and a holdout file.` };
        return { body };
      },
      onCreated: (run) => navigate(`/runs/${encodeURIComponent(run.id)}`),
    });
    form.append(controls.errors, h("div", { class: "form-actions" }, controls.submit,
      h("a", { class: "button ghost", href: "#/runs" }, "Cancel")));

    replace(main,
      pageHeader({ title: "New continual run", back: { href: "#/runs", label: "Continual runs" },
        subtitle: "Train domains in order and see how much each earlier one is forgotten." }),
      choices.fileOptions.length < 2 ? h("div", { class: "alert tone-info" },
        "Each domain needs a training and a holdout file. ", h("a", { href: "#/files" }, "Upload files first.")) : null,
      h("div", { class: "form-layout" }, form, controls.panel.element));
    controls.refresh();
  },
};
