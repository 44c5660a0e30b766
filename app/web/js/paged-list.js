// A cursor-paginated /v1 list in a card: the first page, "Load more" (?after=<last id>),
// and, while `live(items)` says something shown is still changing, the first page read
// again every few seconds (older pages already loaded are kept).

import * as api from "./api.js";
import { button, h, replace, spinner } from "./dom.js";
import { showingErrors } from "./errors.js";

export class PagedList {
  constructor({ path, label, render, signal, title = null, pageSize = 20, live = null, refreshMs = 5000 }) {
    Object.assign(this, { path, render, signal, pageSize, live, refreshMs, label });
    this.items = [];
    this.errors = h("div");
    this.body = h("div", {}, spinner());
    this.footer = h("div", { class: "list-footer" });
    this.element = h("div", { class: "stack-gap" }, this.errors,
      h("section", { class: "card flush", "aria-label": label },
        title ? h("h2", { class: "card-title padded" }, title) : null, this.body, this.footer));
  }

  /** Load the first page, then keep it fresh in the background while `live`. */
  async start() {
    await this.load();
    if (!this.live) return;
    (async () => {
      while (!this.signal.aborted) {
        await api.sleep(this.refreshMs, this.signal);
        if (!this.signal.aborted && this.live(this.items)) await this.load();
      }
    })();
  }

  async load(after = null) {
    const page = await showingErrors(this.errors,
      () => api.get(this.path, { query: { limit: this.pageSize, after }, signal: this.signal }),
      { title: `${this.label} could not be loaded` });
    if (!page) return;
    this.items = after ? [...this.items, ...page.data] : keepOlder(this.items, page.data);
    if (after || !this.hasMore) this.hasMore = page.has_more;
    replace(this.body, this.render(this.items));
    replace(this.footer, this.hasMore ? button("Load more", {
      onClick: () => this.load(this.items[this.items.length - 1].id),
    }) : null);
  }
}

/** A fresh first page replaces the rows it covers; older rows loaded before are kept. */
function keepOlder(current, fresh) {
  if (!current.length) return fresh;
  const ids = new Set(fresh.map((item) => item.id));
  const oldest = fresh.length ? fresh[fresh.length - 1].created_at : Infinity;
  return [...fresh, ...current.filter((item) => !ids.has(item.id) && item.created_at <= oldest)];
}
