// The sign-in view: an API key, checked against the server before it is kept in the tab.

import * as api from "./api.js";
import { looksLikeKey, signIn } from "./auth.js";
import { h, replace } from "./dom.js";
import { errorView } from "./errors.js";

export function renderSignIn(main) {
  const input = h("input", {
    id: "api-key", name: "api-key", type: "password", required: true, autocomplete: "off",
    spellcheck: "false", placeholder: "sk-crma-…", "aria-describedby": "api-key-help",
  });
  const status = h("div", { class: "signin-status" });
  const submit = h("button", { class: "button primary wide", type: "submit" }, "Sign in");
  const form = h("form", { class: "signin-form", novalidate: true, on: { submit: onSubmit } },
    h("div", { class: "field" },
      h("label", { for: "api-key" }, "API key"),
      input,
      h("p", { class: "help", id: "api-key-help" },
        "Kept in this browser tab only (until you close it or sign out) and sent to this server as a bearer token.")),
    status, submit);

  async function onSubmit(event) {
    event.preventDefault();
    const key = input.value.trim();
    status.replaceChildren();
    if (!looksLikeKey(key)) {
      status.append(errorView({ message: "That does not look like an API key: they start with sk-crma-." },
        { title: "Check the key" }));
      input.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = "Checking…";
    try {
      // Ask with this key explicitly: nothing is stored until the server accepts it.
      const response = await fetch(api.apiUrl("/v1/billing/balance"), {
        headers: { Authorization: `Bearer ${key}` }, credentials: "omit", cache: "no-store",
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new api.ApiError({ status: response.status, message: body.error?.message || `${response.status} error` });
      }
      signIn(key);
    } catch (error) {
      status.append(errorView(error.status === 0 || error instanceof TypeError
        ? { message: "Could not reach the server." } : error, { title: "Sign-in failed" }));
      submit.disabled = false;
      submit.textContent = "Sign in";
      input.select();
    }
  }

  replace(main, h("div", { class: "signin" },
    h("div", { class: "signin-card card" },
      h("h1", {}, "Sign in"),
      h("p", { class: "muted" }, "Use an API key of your account. ",
        "Operators create accounts and keys with ", h("code", {}, "crma admin create-account"),
        "; ", h("code", {}, "make run"), " prints the key of its dev account."),
      form)));
  input.focus();
}
