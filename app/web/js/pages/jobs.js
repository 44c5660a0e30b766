// Fine-tuning jobs, newest first: status, model, created, cost. Refreshes while any job on
// the page is unfinished.

import * as api from "../api.js";
import { badge, button, h, link, mono, pageHeader, replace, spinner, table } from "../dom.js";
import { showingErrors } from "../errors.js";
import { compact, dateTime, relative, usd } from "../format.js";
import { isTerminal } from "../status.js";

const PAGE_SIZE = 20;
const REFRESH_MS = 5000;

function jobName(job) {
  return job.fine_tuned_model || (job.suffix ? `${job.model} · ${job.suffix}` : null);
}

export function jobsTable(jobs, { caption = "Fine-tuning jobs" } = {}) {
  return table({
    caption,
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
      { label: "Model", cell: (j) => j.model },
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
    const errors = h("div");
    const body = h("div", {}, spinner());
    const more = h("div", { class: "list-footer" });
    replace(main,
      pageHeader({
        title: "Fine-tuning jobs",
        subtitle: "Every job of your account, newest first.",
        actions: [h("a", { class: "button primary", href: "#/jobs/new" }, "New job")],
      }),
      errors, h("section", { class: "card flush", "aria-label": "Jobs" }, body, more));

    let jobs = [];
    let hasMore = false;

    async function load({ after = null, append = false } = {}) {
      const page = await showingErrors(errors, () => api.get("/v1/fine_tuning/jobs",
        { query: { limit: PAGE_SIZE, after }, signal }), { title: "Jobs could not be loaded" });
      if (!page) return;
      jobs = append ? [...jobs, ...page.data] : mergeFirstPage(jobs, page.data);
      hasMore = append ? page.has_more : hasMore || page.has_more;
      replace(body, jobsTable(jobs));
      replace(more, hasMore ? button("Load more", { onClick: () => load({ after: jobs[jobs.length - 1].id, append: true }) }) : null);
    }

    await load();
    // While something is queued or running, refresh the newest page in the background.
    (async () => {
      while (!signal.aborted) {
        await api.sleep(REFRESH_MS, signal);
        if (signal.aborted) return;
        if (jobs.some((j) => !isTerminal(j.status)) || !jobs.length) await load();
      }
    })();
  },
};

/** A refreshed first page replaces the rows it covers and keeps the older rows loaded. */
function mergeFirstPage(current, fresh) {
  if (!current.length) return fresh;
  const ids = new Set(fresh.map((j) => j.id));
  const oldest = fresh.length ? fresh[fresh.length - 1].created_at : Infinity;
  return [...fresh, ...current.filter((j) => !ids.has(j.id) && j.created_at <= oldest)];
}
