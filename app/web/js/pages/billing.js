// Billing: the balance (available and held), usage per UTC day, and the ledger.

import * as api from "../api.js";
import { card, h, link, mono, pageHeader, replace, spinner, table } from "../dom.js";
import { showingErrors } from "../errors.js";
import { compact, count, dateTime, usd, usdMicros } from "../format.js";
import { PagedList } from "../paged-list.js";

function balanceCards(balance) {
  const free = balance.free_runs;
  return h("div", { class: "stat-grid" },
    stat("Available", usd(balance.available), "for new jobs", "available"),
    stat("Held", usd(balance.held), "for queued and running jobs", "held"),
    stat("Plan", balance.plan, free ? `${free.remaining} of ${free.limit} free runs left today` : "billed per trained token", "plan"));
}

function stat(label, value, note, key) {
  return h("div", { class: "stat card", dataset: { stat: key } },
    h("span", { class: "figure-label" }, label), h("span", { class: "figure-value" }, value), h("span", { class: "figure-note" }, note));
}

/** Cost per UTC day over the whole period (summed over models), one column a day. */
function usageChart(usage) {
  const byDay = new Map();
  for (const bucket of usage.data) byDay.set(bucket.date, (byDay.get(bucket.date) || 0) + bucket.cost_micros);
  const days = [];
  for (let day = new Date(`${usage.start_date}T00:00:00Z`); day <= new Date(`${usage.end_date}T00:00:00Z`);
    day.setUTCDate(day.getUTCDate() + 1)) days.push(day.toISOString().slice(0, 10));
  const high = Math.max(...byDay.values(), 1);
  return h("div", { class: "day-bars", role: "img", "aria-label": `Cost per day, ${usage.start_date} to ${usage.end_date}` },
    days.map((day, i) => {
      const cost = byDay.get(day) || 0;
      const bar = h("span", { class: ["day-bar", !cost && "is-zero"] });
      bar.style.height = cost ? `${Math.max(3, (cost / high) * 100)}%` : "1px";
      return h("div", { class: "day", title: `${day}: ${usdMicros(cost)}`, dataset: { day, cost: String(cost) } },
        h("span", { class: "day-track" }, bar),
        h("span", { class: "day-label" }, i % 7 === 0 || i === days.length - 1 ? day.slice(5) : ""));
    }));
}

function ledgerTable(rows) {
  const own = (tx, bucket) => tx.entries.filter((e) => e.account === "self" && e.bucket === bucket).reduce((sum, e) => sum + e.amount_micros, 0);
  return table({
    caption: "Ledger",
    rows,
    rowKey: (tx) => tx.id,
    empty: "No transactions yet.",
    columns: [
      { label: "When", class: "nowrap", cell: (tx) => dateTime(tx.created_at) },
      { label: "Kind", cell: (tx) => h("span", { class: ["kind", `kind-${tx.kind}`] }, tx.kind) },
      { label: "For", cell: (tx) => (tx.source_id.startsWith("ftjob-") ? link(`#/jobs/${encodeURIComponent(tx.source_id)}`, mono(tx.source_id)) : mono(tx.source_id)) },
      { label: "Memo", cell: (tx) => tx.memo || "" },
      { label: "Available", class: "num", cell: (tx) => signed(own(tx, "available")) },
      { label: "Held", class: "num", cell: (tx) => signed(own(tx, "held")) },
    ],
  });
}

function signed(micros) {
  if (!micros) return h("span", { class: "muted" }, "—");
  return h("span", { class: micros > 0 ? "tone-success" : "" }, micros > 0 ? `+${usdMicros(micros)}` : usdMicros(micros));
}

export default {
  path: "/billing",
  title: "Billing",
  async render({ main, signal }) {
    const errors = h("div");
    const balanceBox = h("div", {}, spinner());
    const usageBox = h("div", {}, spinner());
    const ledger = new PagedList({ path: "/v1/billing/ledger", label: "Ledger", title: "Ledger", pageSize: 25,
      signal, render: ledgerTable });
    replace(main, pageHeader({ title: "Billing", subtitle: "Prepaid credit, held while jobs run and charged for the tokens they train." }),
      errors, balanceBox, card("Usage by day", usageBox), ledger.element);

    const [balance, usage] = await Promise.all([
      showingErrors(errors, () => api.get("/v1/billing/balance", { signal }), { title: "Balance unavailable" }),
      api.get("/v1/usage", { signal }).catch((error) => error),
    ]);
    if (balance) replace(balanceBox, balanceCards(balance));
    if (usage instanceof Error) replace(usageBox, h("p", { class: "tone-danger" }, usage.message));
    else {
      replace(usageBox, h("p", { class: "muted small" }, `${usage.start_date} to ${usage.end_date}: ${compact(usage.total_trained_tokens)} tokens, ${usd(usage.total_cost)}`),
        usageChart(usage),
        table({
          caption: "Usage by day and model",
          rows: [...usage.data].reverse(),
          empty: "No jobs finished in this period.",
          columns: [
            { label: "Day (UTC)", cell: (b) => b.date },
            { label: "Model", cell: (b) => b.model },
            { label: "Jobs", class: "num", cell: (b) => count(b.jobs) },
            { label: "Tokens", class: "num", cell: (b) => count(b.trained_tokens) },
            { label: "Cost", class: "num", cell: (b) => usd(b.cost) },
          ],
        }));
    }

    await ledger.start();
  },
};
