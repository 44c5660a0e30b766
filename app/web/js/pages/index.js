// Every page of the dashboard and the sections of the navigation. A new page is a module
// exporting {path, title, render} plus one line in PAGES (and one in NAV for a section):
// e.g. webhooks.js at "/webhooks", or a chat playground at "/playground".

import jobs from "./jobs.js";
import jobNew from "./job-new.js";
import job from "./job.js";
import runs from "./runs.js";
import runNew from "./run-new.js";
import run from "./run.js";
import files from "./files.js";
import billing from "./billing.js";
import webhooks from "./webhooks.js";

// More specific paths first: "/jobs/new" before "/jobs/:id".
export const PAGES = [jobs, jobNew, job, runs, runNew, run, files, billing, webhooks];

export const NAV = [
  { href: "#/jobs", label: "Fine-tuning jobs", short: "Jobs", icon: "jobs", section: "/jobs" },
  { href: "#/runs", label: "Continual runs", short: "Runs", icon: "runs", section: "/runs" },
  { href: "#/files", label: "Files", short: "Files", icon: "files", section: "/files" },
  { href: "#/webhooks", label: "Webhooks", short: "Hooks", icon: "webhooks", section: "/webhooks" },
  { href: "#/billing", label: "Billing", short: "Billing", icon: "billing", section: "/billing" },
];
