// The API key lives in this tab's sessionStorage: gone when the tab closes, never in a URL or
// a cookie, sent only as `Authorization: Bearer` to this origin (api.js).

const KEY = "crma.apiKey";
const listeners = new Set();
let memoryKey = null; // where sessionStorage is unavailable (storage disabled)

export function apiKey() {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return memoryKey;
  }
}

export function signIn(key) {
  memoryKey = key;
  try {
    sessionStorage.setItem(KEY, key);
  } catch {
    // private mode without storage: memory only
  }
  listeners.forEach((fn) => fn(true));
}

export function signOut() {
  memoryKey = null;
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // nothing stored
  }
  listeners.forEach((fn) => fn(false));
}

export function onAuthChange(fn) {
  listeners.add(fn);
}

/** What the key field accepts before asking the server (the server has the last word). */
export function looksLikeKey(text) {
  return /^sk-[A-Za-z0-9_-]{8,}$/.test(text.trim());
}
