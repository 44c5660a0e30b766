// Start-up: sign-in gate, navigation, routes.

import * as api from "./api.js";
import { apiKey, onAuthChange, signOut } from "./auth.js";
import { h, icon, replace } from "./dom.js";
import { NAV, PAGES } from "./pages/index.js";
import { createRouter } from "./router.js";
import { renderSignIn } from "./signin.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const accountBox = document.getElementById("account");

function renderNav() {
  replace(nav,
    h("a", { class: "button primary nav-cta", href: "#/jobs/new" }, icon("plus"), "New job"),
    h("ul", {}, NAV.map((item) => h("li", {},
      h("a", { class: "nav-link", href: item.href, dataset: { section: item.section } },
        icon(item.icon), h("span", { class: "label-long" }, item.label),
        h("span", { class: "label-short" }, item.short))))));
}

function markSection(path) {
  for (const linkEl of nav.querySelectorAll(".nav-link")) {
    const active = path === linkEl.dataset.section || path.startsWith(`${linkEl.dataset.section}/`);
    if (active) linkEl.setAttribute("aria-current", "page");
    else linkEl.removeAttribute("aria-current");
  }
}

const router = createRouter({ pages: PAGES, main, onRoute: markSection });

async function showAccount() {
  try {
    const balance = await api.get("/v1/billing/balance");
    document.getElementById("account-id").textContent = balance.account_id;
    document.getElementById("account-plan").textContent = balance.plan;
    accountBox.hidden = false;
  } catch {
    accountBox.hidden = true; // a 401 signs out (api.js); anything else: the page says it
  }
}

function start() {
  if (!apiKey()) {
    router.stop();
    nav.hidden = true;
    accountBox.hidden = true;
    document.title = "Sign in · CRMA Fine-Tuner";
    renderSignIn(main);
    return;
  }
  nav.hidden = false;
  showAccount();
  router.render();
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
// The skip link must not touch the hash (it holds the route): move focus instead.
document.querySelector(".skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
onAuthChange(() => start());
renderNav();
start();
