// Fine-tuning jobs, newest first: status, model, created, cost. Refreshes while any job on
// the page is unfinished.

import { badge, h, link, mono, pageHeader, replace, table } from "../dom.js";
import { compact, dateTime, relative, usd } from "../format.js";
import { PagedList } from "../paged-list.js";
import { isTerminal } from "../status.js";

function jobName(job) {
  return job.fine_tuned_model || (job.suffix ? `${job.model} · ${job.suffix}` : null);
}

function jobsTable(jobs) {
  return table({
    caption: "Fine-tuning jobs",
    rows: jobs,
    rowKey: (j) => j.id,
    empty: "No jobs yet.",
    columns: [
      { label: "Status", cell: (j) => badge(j.status) },
      { label: "Job", cell: (j) => h("div", { class: "stack" },
        link(`#/jobs/${encodeURIComponent(j.id)}`, mono(j.id)),
        jobName(j) ? h("span", { class: "muted small" }, jobName(j)) : null,
        j.continual_run_id ? h("span", { class: "muted small" }, "stage ", String(j.stage_index + 1), " of ",
          link(`#/runs/${encodeURIComponent(j.continual_run_id)}`, j.continual_run_id)) : null) },
      { label: "Model", class: "nowrap", cell: (j) => j.model },
      { label: "Created", cell: (j) => h("time", { title: dateTime(j.created_at) }, relative(j.created_at)) },
      { label: "Tokens", class: "num", cell: (j) => compact(j.trained_tokens ?? j.usage?.estimated_tokens) },
      { label: "Cost", class: "num", cell: (j) => usd(j.cost) },
    ],
  });
}

export default {
  path: "/jobs",
  title: "Fine-tuning jobs",
  async render({ main, signal }) {
    const list = new PagedList({
      path: "/v1/fine_tuning/jobs", label: "Jobs", signal, render: jobsTable,
      live: (jobs) => !jobs.length || jobs.some((j) => !isTerminal(j.status)),
    });
    replace(main,
      pageHeader({
        title: "Fine-tuning jobs",
        subtitle: "Every job of your account, newest first.",
        actions: [h("a", { class: "button primary", href: "#/jobs/new" }, "New job")],
      }),
      list.element);
    await list.start();
  },
};
