// Flash Flow buyer page: the buyer's bearer token, read from a sign-in link and kept on this
// device. Plain JavaScript, no build step.

const TOKEN_KEY = "flashflow.token";

// The token's payload, unverified: only to show who is signed in. The server verifies.
export function subjectOf(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    const sub = JSON.parse(new TextDecoder().decode(bytes)).sub;
    return typeof sub === "string" && sub.trim() ? sub.trim() : null;
  } catch (_) {
    return null;
  }
}

export function storeToken(value) {
  try {
    if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
  } catch (_) { /* storage may be off */ }
}

// A link ending in #token=... signs the buyer in; the fragment never reaches a server
// log, and is taken off the address bar at once.
export function readToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {
    storeToken(decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  try { return localStorage.getItem(TOKEN_KEY); } catch (_) { return null; }
}
