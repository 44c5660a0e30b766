// Continual runs, newest first.

import { badge, h, link, mono, pageHeader, replace, table } from "../dom.js";
import { dateTime, percent, relative } from "../format.js";
import { PagedList } from "../paged-list.js";
import { isTerminal } from "../status.js";

function runsTable(runs) {
  return table({
    caption: "Continual runs",
    rows: runs,
    rowKey: (r) => r.id,
    empty: "No continual runs yet.",
    columns: [
      { label: "Status", cell: (r) => badge(r.status) },
      { label: "Run", cell: (r) => link(`#/runs/${encodeURIComponent(r.id)}`, mono(r.id)) },
      { label: "Domains", cell: (r) => r.stages.map((s) => s.name).join(" → ") },
      { label: "Mode", cell: (r) => r.mode },
      { label: "Model", class: "nowrap", cell: (r) => r.model },
      { label: "Mean drift", class: "num", cell: (r) => percent(r.report?.drift_mean_pct, 2) },
      { label: "Created", cell: (r) => h("time", { title: dateTime(r.created_at) }, relative(r.created_at)) },
    ],
  });
}

export default {
  path: "/runs",
  title: "Continual runs",
  async render({ main, signal }) {
    const list = new PagedList({
      path: "/v1/continual/runs", label: "Runs", signal, render: runsTable,
      live: (runs) => runs.some((r) => !isTerminal(r.status)),
    });
    replace(main,
      pageHeader({
        title: "Continual runs",
        subtitle: "Domains trained one after another, each earlier domain re-scored after every stage.",
        actions: [h("a", { class: "button primary", href: "#/runs/new" }, "New run")],
      }),
      list.element);
    await list.start();
  },
};
