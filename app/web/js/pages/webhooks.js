// Webhook endpoints: register one (its secret is shown once, here), send a test event,
// disable / enable, delete, and each endpoint's delivery log (attempts, response codes).

import * as api from "../api.js";
import { badge, button, card, confirmDialog, h, mono, pageHeader, replace, spinner, table, toast } from "../dom.js";
import { errorView, showingErrors } from "../errors.js";
import { dateTime, relative } from "../format.js";

const EVENT_TYPES = [
  "fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled",
  "continual.run.stage.succeeded", "continual.run.succeeded", "continual.run.failed",
  "continual.run.cancelled",
];
const DELIVERY_TONE = { pending: "queued", succeeded: "succeeded", failed: "failed" };

function when(seconds) {
  return seconds ? h("time", { title: dateTime(seconds) }, relative(seconds)) : "—";
}

function registerForm({ signal, onCreated }) {
  const url = h("input", { type: "url", id: "webhook-url", name: "url", required: true, placeholder: "hooks.example.com/crma (https)", autocomplete: "off" });
  const description = h("input", { type: "text", id: "webhook-description", name: "description", maxlength: 500 });
  const boxes = EVENT_TYPES.map((type) => h("label", { class: "field field-checkbox" },
    h("input", { type: "checkbox", name: "event_types", value: type, checked: true }), h("code", {}, type)));
  const result = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "stack-gap", on: { submit: async (event) => {
    event.preventDefault();
    const types = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    const body = { url: url.value.trim(), event_types: types, description: description.value.trim() || null };
    const created = await showingErrors(result, () => api.post("/v1/webhooks", body, { signal, idempotencyKey: api.newIdempotencyKey() }),
      { title: "The endpoint was not registered" });
    if (!created) return;
    replace(result, h("div", { class: "alert tone-success", dataset: { field: "secret" } },
      h("p", { class: "alert-title" }, "Registered. Store its secret now: it is not shown again."),
      h("p", {}, mono(created.secret)),
      h("p", { class: "small" }, "Verify each delivery with it (Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature).")));
    form.reset();
    onCreated(created);
  } } },
  h("div", { class: "field" }, h("label", { for: "webhook-url" }, "URL"), url,
    h("p", { class: "help" }, "https on a public address (a dev installation also accepts http and local addresses).")),
  h("div", { class: "field" }, h("label", { for: "webhook-description" }, "Description (optional)"), description),
  h("fieldset", { class: "fieldset" }, h("legend", {}, "Events"), h("div", { class: "field-grid" }, ...boxes)),
  h("div", { class: "form-actions" }, button("Register endpoint", { kind: "primary", type: "submit" })));
  return h("div", {}, form, result);
}

function deliveriesTable(rows) {
  return table({
    caption: "Deliveries",
    rows,
    rowKey: (d) => d.id,
    empty: "Nothing delivered yet. Send a test event.",
    columns: [
      { label: "Event", cell: (d) => h("div", { class: "stack" }, h("code", {}, d.event_type), mono(d.event_id)) },
      { label: "Status", cell: (d) => badge(DELIVERY_TONE[d.status], d.status) },
      { label: "Attempts", class: "num", cell: (d) => String(d.attempts) },
      { label: "Last answer", cell: (d) => d.last_status_code !== null ? `HTTP ${d.last_status_code}` : (d.last_error || "—") },
      { label: "Excerpt", cell: (d) => d.last_response_excerpt ? h("code", {}, d.last_response_excerpt.slice(0, 120)) : "—" },
      { label: "Created", cell: (d) => when(d.created_at) },
      { label: "Next attempt", cell: (d) => (d.status === "pending" ? when(d.next_attempt_at) : "—") },
    ],
  });
}

export default {
  path: "/webhooks",
  title: "Webhooks",
  async render({ main, signal }) {
    const errors = h("div");
    const list = h("div", {}, spinner());
    const log = h("div");
    let endpoints = [];

    async function load() {
      const loaded = await showingErrors(errors, () => api.listAll("/v1/webhooks", { signal }), { title: "Endpoints could not be loaded" });
      if (!loaded) return;
      endpoints = loaded;
      draw();
    }

    async function act(endpoint, action) {
      const path = `/v1/webhooks/${encodeURIComponent(endpoint.id)}`;
      if (action === "delete") {
        const ok = await confirmDialog({ title: "Delete this endpoint?", message: `${endpoint.url} gets no more events, and its delivery log is deleted.`, confirmLabel: "Delete", cancelLabel: "Keep" });
        if (!ok) return;
        if (await showingErrors(errors, () => api.del(path, { signal }), { title: "Not deleted" })) {
          toast("Endpoint deleted.");
          replace(log);
          await load();
        }
        return;
      }
      const done = await showingErrors(errors, () => api.post(`${path}/${action}`, undefined, { signal }), { title: `Could not ${action}` });
      if (!done) return;
      toast(action === "test" ? "Test event queued." : `Endpoint ${action}d.`);
      await load();
      if (action === "test") await showDeliveries(endpoint);
    }

    async function showDeliveries(endpoint) {
      replace(log, spinner());
      try {
        const page = await api.get(`/v1/webhooks/${encodeURIComponent(endpoint.id)}/deliveries`, { signal, query: { limit: 50 } });
        replace(log, card(h("span", {}, "Deliveries to ", mono(endpoint.url)), deliveriesTable(page.data)));
      } catch (error) {
        if (error.name !== "AbortError") replace(log, errorView(error));
      }
    }

    function draw() {
      replace(list, table({
        caption: "Your endpoints",
        rows: endpoints,
        rowKey: (e) => e.id,
        empty: "No endpoint yet. Register one above.",
        columns: [
          { label: "URL", cell: (e) => h("div", { class: "stack" }, mono(e.url), e.description ? h("span", { class: "muted small" }, e.description) : null) },
          { label: "Status", cell: (e) => h("div", { class: "stack" }, badge(e.status === "enabled" ? "succeeded" : "failed", e.status),
            e.disabled_reason ? h("span", { class: "muted small" }, e.disabled_reason) : null) },
          { label: "Events", cell: (e) => `${e.event_types.length} type${e.event_types.length === 1 ? "" : "s"}` },
          { label: "Secret", cell: (e) => mono(e.secret_hint) },
          { label: "Created", cell: (e) => when(e.created_at) },
          { label: "", class: "actions", cell: (e) => h("span", { class: "row-actions" },
            button("Deliveries", { kind: "ghost small", onClick: () => showDeliveries(e) }),
            e.status === "enabled" ? button("Send test", { kind: "ghost small", onClick: () => act(e, "test") }) : null,
            button(e.status === "enabled" ? "Disable" : "Enable", { kind: "ghost small", onClick: () => act(e, e.status === "enabled" ? "disable" : "enable") }),
            button("Delete", { kind: "ghost small danger-text", "aria-label": `Delete ${e.url}`, onClick: () => act(e, "delete") })) },
        ],
      }));
    }

    replace(main,
      pageHeader({ title: "Webhooks", subtitle: "Signed events (Standard Webhooks) when your jobs and runs finish; retried for about a day." }),
      card("Register an endpoint", registerForm({ signal, onCreated: (created) => { endpoints = [created, ...endpoints]; draw(); } })),
      errors,
      h("section", { class: "card flush", "aria-label": "Your endpoints" }, list),
      log);
    await load();
  },
};
