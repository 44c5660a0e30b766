// Continual runs, newest first.

import * as api from "../api.js";
import { badge, button, h, link, mono, pageHeader, replace, spinner, table } from "../dom.js";
import { showingErrors } from "../errors.js";
import { dateTime, percent, relative } from "../format.js";
import { isTerminal } from "../status.js";

const REFRESH_MS = 5000;

export default {
  path: "/runs",
  title: "Continual runs",
  async render({ main, signal }) {
    const errors = h("div");
    const body = h("div", {}, spinner());
    const more = h("div", { class: "list-footer" });
    replace(main,
      pageHeader({
        title: "Continual runs",
        subtitle: "Domains trained one after another, each earlier domain re-scored after every stage.",
        actions: [h("a", { class: "button primary", href: "#/runs/new" }, "New run")],
      }),
      errors, h("section", { class: "card flush", "aria-label": "Runs" }, body, more));

    let runs = [];
    async function load(after = null) {
      const page = await showingErrors(errors, () => api.get("/v1/continual/runs", { query: { limit: 20, after }, signal }),
        { title: "Runs could not be loaded" });
      if (!page) return;
      runs = after ? [...runs, ...page.data] : page.data;
      replace(body, table({
        caption: "Continual runs",
        rows: runs,
        rowKey: (r) => r.id,
        empty: "No continual runs yet.",
        columns: [
          { label: "Status", cell: (r) => badge(r.status) },
          { label: "Run", cell: (r) => link(`#/runs/${encodeURIComponent(r.id)}`, mono(r.id)) },
          { label: "Domains", cell: (r) => r.stages.map((s) => s.name).join(" → ") },
          { label: "Mode", cell: (r) => r.mode },
          { label: "Model", cell: (r) => r.model },
          { label: "Mean drift", class: "num", cell: (r) => percent(r.report?.drift_mean_pct, 2) },
          { label: "Created", cell: (r) => h("time", { title: dateTime(r.created_at) }, relative(r.created_at)) },
        ],
      }));
      replace(more, page.has_more ? button("Load more", { onClick: () => load(runs[runs.length - 1].id) }) : null);
    }

    await load();
    (async () => {
      while (!signal.aborted) {
        await api.sleep(REFRESH_MS, signal);
        if (!signal.aborted && runs.some((r) => !isTerminal(r.status)) && runs.length <= 20) await load();
      }
    })();
  },
};
