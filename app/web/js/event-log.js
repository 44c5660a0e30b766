// A job's event log, newest first, fed one event at a time from the SSE stream. Per-step
// metric lines can be hidden so the status messages stand out.

import { h } from "./dom.js";
import { clock, dateTime } from "./format.js";

const MAX_SHOWN = 500;

export class EventLog {
  constructor() {
    this.seen = new Set();
    this.list = h("ol", { class: "event-log", "aria-label": "Events, newest first" });
    this.toggle = h("input", { type: "checkbox", id: "show-metrics", checked: true,
      on: { change: () => this.list.classList.toggle("hide-metrics", !this.toggle.checked) } });
    this.counter = h("span", { class: "muted small" });
    this.element = h("div", { class: "event-log-wrap" },
      h("div", { class: "event-log-tools" },
        h("label", { class: "inline-check", for: "show-metrics" }, this.toggle, " Show step metrics"),
        this.counter),
      this.list);
    this.updateCount();
  }

  add(event) {
    if (this.seen.has(event.id)) return;
    this.seen.add(event.id);
    const item = h("li", { class: ["event", `level-${event.level}`, event.type === "metrics" && "is-metrics"],
      dataset: { type: event.type } },
      h("time", { class: "event-time", title: dateTime(event.created_at) }, clock(event.created_at)),
      h("span", { class: ["event-level", `tone-${event.level === "error" ? "danger" : event.level === "warn" ? "warning" : "muted"}`] }, event.level),
      h("span", { class: "event-message" }, event.message));
    this.list.prepend(item);
    while (this.list.childElementCount > MAX_SHOWN) this.list.lastElementChild.remove();
    this.updateCount();
  }

  updateCount() {
    const n = this.seen.size;
    this.counter.textContent = n > MAX_SHOWN ? `latest ${MAX_SHOWN} of ${n} events` : `${n} event${n === 1 ? "" : "s"}`;
  }
}
