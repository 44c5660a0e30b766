// Training files: upload (validated by the server line by line: a rejected file shows each
// problem with its line number), list, delete.

import * as api from "../api.js";
import { badge, button, card, confirmDialog, h, mono, pageHeader, replace, spinner, table, toast } from "../dom.js";
import { errorView, showingErrors } from "../errors.js";
import { bytes, count, dateTime, relative } from "../format.js";

function uploader({ signal, onUploaded }) {
  const input = h("input", { type: "file", id: "upload-file", name: "file", accept: ".jsonl,.json,application/jsonl,text/plain", multiple: true });
  const result = h("div", { class: "upload-result", "aria-live": "polite" });
  const drop = h("label", { class: "dropzone", for: "upload-file" },
    h("span", { class: "dropzone-title" }, "Choose JSONL files or drop them here"),
    h("span", { class: "muted small" }, "One example per line: chat {\"messages\": [...]}, {\"prompt\", \"completion\"} or {\"text\"}."));

  async function send(files) {
    result.replaceChildren();
    for (const file of files) {
      const status = h("p", { class: "loading" }, h("span", { class: "spinner", "aria-hidden": "true" }), `Uploading ${file.name}…`);
      result.append(status);
      try {
        const uploaded = await api.upload(file, { signal, idempotencyKey: api.newIdempotencyKey() });
        status.replaceWith(h("div", { class: "alert tone-success" },
          h("p", { class: "alert-title" }, file.name, " uploaded"),
          h("p", {}, `${count(uploaded.example_count)} examples, ${uploaded.format} format. `,
            h("a", { href: `#/jobs/new?training_file=${encodeURIComponent(uploaded.id)}` }, "Start a job with it"), ".")));
        onUploaded(uploaded);
      } catch (error) {
        if (error.name === "AbortError") return;
        status.replaceWith(errorView(error, { title: `${file.name} was not accepted` }));
      }
    }
    input.value = "";
  }

  input.addEventListener("change", () => send([...input.files]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("is-over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("is-over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    send([...event.dataTransfer.files]);
  });
  return h("div", { class: "uploader" }, h("div", { class: "upload-row" }, input, drop), result);
}

export default {
  path: "/files",
  title: "Files",
  async render({ main, signal }) {
    const errors = h("div");
    const list = h("div", {}, spinner());
    let files = [];

    async function load() {
      const loaded = await showingErrors(errors, () => api.listAll("/v1/files", { signal }), { title: "Files could not be loaded" });
      if (!loaded) return;
      files = loaded;
      draw();
    }

    async function remove(file) {
      const ok = await confirmDialog({ title: "Delete this file?", message: `${file.filename} (${file.id}) is deleted for good. Jobs that already used it keep their results.`,
        confirmLabel: "Delete", cancelLabel: "Keep" });
      if (!ok) return;
      const done = await showingErrors(errors, () => api.del(`/v1/files/${encodeURIComponent(file.id)}`, { signal }), { title: `${file.filename} was not deleted` });
      if (done) {
        toast(`${file.filename} deleted.`);
        files = files.filter((f) => f.id !== file.id);
        draw();
      }
    }

    function draw() {
      replace(list, table({
        caption: "Your files",
        rows: files,
        rowKey: (f) => f.id,
        empty: "No files yet. Upload a JSONL file above.",
        columns: [
          { label: "Name", cell: (f) => h("div", { class: "stack" }, h("span", { class: "filename" }, f.filename), mono(f.id)) },
          { label: "Status", cell: (f) => badge(f.status) },
          { label: "Format", cell: (f) => f.format || "—" },
          { label: "Examples", class: "num", cell: (f) => count(f.example_count) },
          { label: "Tokens", class: "num", cell: (f) => count(Object.values(f.token_estimates || {})[0]) },
          { label: "Size", class: "num", cell: (f) => bytes(f.bytes) },
          { label: "Uploaded", cell: (f) => h("time", { title: dateTime(f.created_at) }, relative(f.created_at)) },
          { label: "", class: "actions", cell: (f) => h("span", { class: "row-actions" },
            f.status === "processed" ? h("a", { class: "button small", href: `#/jobs/new?training_file=${encodeURIComponent(f.id)}`, "aria-label": `Start a job with ${f.filename}` }, "Train") : null,
            button("Delete", { kind: "ghost small danger-text", "aria-label": `Delete ${f.filename}`, onClick: () => remove(f) })) },
        ],
      }));
    }

    replace(main,
      pageHeader({ title: "Files", subtitle: "JSONL training and holdout files. Each is checked line by line as it uploads." }),
      card("Upload", uploader({ signal, onUploaded: (file) => { files = [file, ...files.filter((f) => f.id !== file.id)]; draw(); } })),
      errors,
      h("section", { class: "card flush", "aria-label": "Your files" }, list));
    await load();
  },
};
