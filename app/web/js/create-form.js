// What the job and run forms share: an estimate asked while the user edits (the latest
// answer wins), a submit button that waits for an allowed estimate of exactly the body it
// will send, one Idempotency-Key per body (a double click or a retry creates one object),
// and the API's error shown at the top and on the field it names.

import * as api from "./api.js";
import { debounce, markFieldError } from "./forms.js";
import { EstimatePanel } from "./estimate.js";
import { errorView } from "./errors.js";
import { h } from "./dom.js";

/** readBody() -> the request body, or null while a required choice is missing (with
 * `missing` saying which). */
export function wireCreateForm({ form, readBody, estimatePath, createPath, submitLabel, onCreated, signal }) {
  const panel = new EstimatePanel();
  const errors = h("div", { class: "form-errors" });
  const submit = h("button", { class: "button primary", type: "submit", disabled: true }, submitLabel);
  let sequence = 0;
  let estimatedBody = null;
  let idempotency = { body: null, key: null };

  const refresh = debounce(async () => {
    const { body, missing } = readBody();
    sequence += 1;
    const mine = sequence;
    estimatedBody = null;
    submit.disabled = true;
    if (!body) {
      panel.clear(missing || "Fill in the form to see an estimate.");
      return;
    }
    panel.waiting();
    try {
      const estimate = await api.post(estimatePath, body, { signal });
      if (mine !== sequence) return;
      markFieldError(form, null);
      panel.show(estimate);
      estimatedBody = JSON.stringify(body);
      submit.disabled = !estimate.allowed_to_proceed;
    } catch (error) {
      if (mine !== sequence || error.name === "AbortError") return;
      panel.showError(error);
      markFieldError(form, error.param, error.message);
    }
  }, 350);

  form.addEventListener("input", refresh);
  form.addEventListener("change", refresh);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { body } = readBody();
    errors.replaceChildren();
    if (!body || JSON.stringify(body) !== estimatedBody) {
      refresh(); // the form changed since the estimate: estimate again first
      return;
    }
    const text = JSON.stringify(body);
    if (idempotency.body !== text) idempotency = { body: text, key: api.newIdempotencyKey() };
    submit.disabled = true;
    const label = submit.textContent;
    submit.textContent = "Starting…";
    try {
      const created = await api.post(createPath, body, { signal, idempotencyKey: idempotency.key });
      onCreated(created);
    } catch (error) {
      if (error.name === "AbortError") return;
      errors.replaceChildren(errorView(error, { title: "Not started" }));
      markFieldError(form, error.param, error.message);
      errors.scrollIntoView({ block: "nearest" });
      submit.disabled = false;
    } finally {
      submit.textContent = label;
    }
  });

  return { panel, errors, submit, refresh };
}
