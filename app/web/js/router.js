// Hash routes (#/jobs/ftjob-…): the server only ever serves index.html and static files, and
// a route never carries the key. A page is {path, title, render(ctx)} (js/pages/index.js).

import { h, replace } from "./dom.js";
import { errorView } from "./errors.js";

let current = null; // {controller}
let rendered = 0;

function compile(path) {
  const names = [];
  const pattern = path.replace(/:(\w+)/g, (_, name) => { names.push(name); return "([^/]+)"; });
  return { regex: new RegExp(`^${pattern}/?$`), names };
}

export function createRouter({ pages, main, fallback = "/jobs", onRoute = () => {} }) {
  const routes = pages.map((page) => ({ page, ...compile(page.path) }));

  function resolve(hash) {
    const [path, search = ""] = (hash.replace(/^#/, "") || fallback).split("?");
    for (const route of routes) {
      const match = route.regex.exec(path);
      if (match) {
        const params = Object.fromEntries(route.names.map((n, i) => [n, decodeURIComponent(match[i + 1])]));
        return { route, params, path, query: new URLSearchParams(search) };
      }
    }
    return { route: null, params: {}, path, query: new URLSearchParams(search) };
  }

  async function render() {
    current?.controller.abort();
    const controller = new AbortController();
    current = { controller };
    const { route, params, path, query } = resolve(location.hash);
    delete main.dataset.rendered;
    onRoute(path);
    window.scrollTo(0, 0);
    if (!route) {
      document.title = "Not found · CRMA Fine-Tuner";
      replace(main, h("h1", {}, "Page not found"),
        h("p", {}, "Nothing lives at this address. ", h("a", { href: `#${fallback}` }, "Back to the jobs.")));
      main.dataset.rendered = path;
      return;
    }
    document.title = `${route.page.title} · CRMA Fine-Tuner`;
    const container = h("div", { class: "page" });
    replace(main, container);
    try {
      await route.page.render({ params, query, main: container, signal: controller.signal, navigate });
    } catch (error) {
      if (controller.signal.aborted || error.name === "AbortError") return;
      replace(container, h("h1", {}, route.page.title), errorView(error, { title: "This page could not be loaded" }));
    }
    if (controller.signal.aborted) return;
    main.dataset.rendered = path; // the page has drawn itself (tests wait for this)
    // After a navigation (not the first load), move focus to the new page's heading, as a
    // screen reader or keyboard user expects: the link they used has just disappeared.
    const heading = container.querySelector("h1");
    rendered += 1;
    if (heading && rendered > 1 && !controller.signal.aborted) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: true });
    }
  }

  function navigate(path) {
    const hash = `#${path}`;
    if (location.hash === hash) render();
    else location.hash = hash;
  }

  window.addEventListener("hashchange", render);
  return { render, navigate, stop: () => current?.controller.abort() };
}
