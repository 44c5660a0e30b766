// The /v1 API from the browser: bearer header from the tab's key, JSON in and out, the
// error envelope turned into an ApiError, downloads through fetch (the local store streams
// artifacts only to an authenticated request), and the job events' SSE stream.

import { apiKey, signOut } from "./auth.js";
import { readServerSentEvents } from "./sse.js";

// The dashboard is served at <root>/dashboard/; the API lives at <root>/v1.
const ROOT = new URL("../../", import.meta.url);

export class ApiError extends Error {
  constructor({ status, message, type = null, code = null, param = null, errors = [], errorCount = 0 }) {
    super(message);
    Object.assign(this, { status, type, code, param, errors, errorCount });
  }
}

export function apiUrl(path) {
  const url = new URL(path.replace(/^\//, ""), ROOT);
  if (url.origin !== ROOT.origin) throw new Error("API paths stay on this server");
  return url;
}

function headers(extra = {}) {
  const key = apiKey();
  return { ...(key ? { Authorization: `Bearer ${key}` } : {}), ...extra };
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's page, say what we know
  }
  const detail = body && body.error ? body.error : {};
  if (response.status === 401) signOut();
  return new ApiError({
    status: response.status,
    message: detail.message || `${response.status} ${response.statusText || "error"}`,
    type: detail.type, code: detail.code, param: detail.param,
    errors: Array.isArray(detail.errors) ? detail.errors : [],
    errorCount: detail.error_count || 0,
  });
}

async function send(method, path, { body, query, form, signal, idempotencyKey, accept } = {}) {
  const url = apiUrl(path);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const extra = {};
  if (body !== undefined) extra["Content-Type"] = "application/json";
  if (idempotencyKey) extra["Idempotency-Key"] = idempotencyKey;
  if (accept) extra.Accept = accept;
  let response;
  try {
    response = await fetch(url, {
      method, signal, headers: headers(extra), credentials: "omit", cache: "no-store",
      body: form || (body === undefined ? undefined : JSON.stringify(body)),
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError({ status: 0, message: "Could not reach the server. Is it running?" });
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function get(path, options = {}) {
  return (await send("GET", path, options)).json();
}

export async function post(path, body, options = {}) {
  return (await send("POST", path, { ...options, body })).json();
}

export async function del(path, options = {}) {
  return (await send("DELETE", path, options)).json();
}

export async function upload(file, { purpose = "fine-tune", signal, idempotencyKey } = {}) {
  const form = new FormData();
  form.append("purpose", purpose);
  form.append("file", file, file.name);
  return (await send("POST", "/v1/files", { form, signal, idempotencyKey })).json();
}

/** Every page of a cursor-paginated list (stops after `max` items). */
export async function listAll(path, { query = {}, signal, max = 1000 } = {}) {
  const items = [];
  let after = null;
  for (;;) {
    const page = await get(path, { query: { ...query, limit: 100, after }, signal });
    items.push(...page.data);
    if (!page.has_more || !page.data.length || items.length >= max) return items;
    after = page.data[page.data.length - 1].id;
  }
}

/** Fetch a file the API streams (or a presigned S3 URL) and return it as a Blob. */
export async function download(url, { signal } = {}) {
  if (/^https?:\/\//i.test(url) && new URL(url).origin !== ROOT.origin) {
    throw new ApiError({ status: 0, message: "A presigned URL is opened as a link, not fetched." });
  }
  return (await send("GET", url, { signal })).blob();
}

/** Follow a job's events as server-sent events (fetch, since EventSource cannot send the
 * bearer header). Replays everything, then streams until the job is terminal; reconnects
 * with Last-Event-ID after a dropped connection. onEvent(event) gets the parsed event
 * object; onDone(status) runs once the server says the job is finished. */
export async function followJobEvents(jobId, { signal, onEvent, onDone, onError }) {
  let lastId = null;
  let failures = 0;
  while (!signal.aborted) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (lastId) extra["Last-Event-ID"] = lastId;
      const response = await fetch(apiUrl(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events`), {
        headers: headers(extra), signal, credentials: "omit", cache: "no-store",
      });
      if (!response.ok) throw await errorFrom(response);
      for await (const message of readServerSentEvents(response.body, signal)) {
        failures = 0;
        if (message.event === "done") {
          onDone?.(message.data);
          return;
        }
        if (message.id) lastId = message.id;
        if (message.data) onEvent(JSON.parse(message.data));
      }
    } catch (error) {
      if (signal.aborted || error.name === "AbortError") return;
      if (error instanceof ApiError && error.status >= 400 && error.status < 500) {
        onError?.(error);
        return;
      }
      failures += 1;
      onError?.(error);
    }
    // The stream ended without `done` (server restart, proxy timeout): resume after a pause.
    await sleep(Math.min(30_000, 1000 * 2 ** Math.min(failures, 5)), signal);
  }
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

export function newIdempotencyKey() {
  return crypto.randomUUID ? crypto.randomUUID()
    : Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}
