// A job's or run's files with size and sha256. The local store streams them only to an
// authenticated request, so a download is fetch() with the bearer header into a Blob,
// checked against its sha256 in the browser, then saved. A presigned S3 URL (another
// host) is a plain link the browser follows; nothing is fetched from it by the page.

import * as api from "./api.js";
import { h, mono, table, toast } from "./dom.js";
import { bytes } from "./format.js";

export async function sha256Hex(blob) {
  if (!globalThis.crypto?.subtle) return null; // plain http on a remote host: no SubtleCrypto
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: name.split("/").pop() });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function downloadControl(artifact, signal) {
  const status = h("span", { class: "download-status", "aria-live": "polite" });
  if (/^https?:\/\//i.test(artifact.url) && new URL(artifact.url).origin !== location.origin) {
    return h("span", { class: "download" },
      h("a", { class: "button small", href: artifact.url, rel: "noopener noreferrer", download: "" }, "Download"), status);
  }
  const control = h("button", {
    class: "button small", type: "button", "aria-label": `Download ${artifact.name}`,
    on: {
      click: async () => {
        control.disabled = true;
        status.textContent = "Downloading…";
        try {
          const blob = await api.download(artifact.url, { signal });
          const digest = await sha256Hex(blob);
          if (digest && digest !== artifact.sha256) {
            status.textContent = "sha256 mismatch: not saved";
            status.dataset.verified = "false";
            toast(`${artifact.name}: the download does not match its sha256`, "danger");
            return;
          }
          status.textContent = digest ? "✓ sha256 verified" : "saved (sha256 not checked over plain http)";
          status.dataset.verified = digest ? "true" : "unchecked";
          saveBlob(blob, artifact.name);
        } catch (error) {
          if (error.name === "AbortError") return;
          status.textContent = error.message;
          status.dataset.verified = "error";
        } finally {
          control.disabled = false;
        }
      },
    },
  }, "Download");
  return h("span", { class: "download" }, control, status);
}

/** The list of ArtifactPublic {name, bytes, sha256, url}. */
export function artifactsTable(artifacts, { signal, empty = "No files yet: they appear when training finishes." } = {}) {
  return table({
    caption: "Files",
    rows: artifacts,
    rowKey: (a) => a.name,
    empty,
    columns: [
      { label: "File", cell: (a) => mono(a.name) },
      { label: "Size", class: "num", cell: (a) => bytes(a.bytes) },
      { label: "sha256", cell: (a) => h("span", { class: "hash" }, mono(a.sha256.slice(0, 12), { title: a.sha256 }),
        h("span", { class: "visually-hidden" }, a.sha256.slice(12))) },
      { label: "", class: "actions", cell: (a) => downloadControl(a, signal) },
    ],
  });
}
