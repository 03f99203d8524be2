// logger-service live viewer: signing in (issue 14). The token comes from the URL's fragment
// (#access_token=…, which browsers never send to a server, so it reaches no log; it is taken out
// of the address bar at once) or is pasted into the sign-in form. It is kept for this tab only
// (sessionStorage) and sent the ways a page can: `Authorization: Bearer` to GET api/session,
// which says who is signed in and what they may see, and the subprotocol `bearer.<token>` next
// to `logger.v1` when opening the WebSocket (browsers cannot set headers on one).
//
// With authentication off on the server (api/session answers {"auth":"off"}) nothing here shows.
// viewer.js owns the connection; it asks this file for the subprotocols and tells it what the
// server said (hello, authenticated, a close for an expired token).
(() => {
  "use strict";

  const STORAGE_KEY = "logger-service.token";
  const SESSION_TIMEOUT_MS = 5000;
  const WARN_BEFORE_EXPIRY_MS = 60 * 1000;

  const pad2 = (n) => String(n).padStart(2, "0");
  const clock = (epochS) => {
    const d = new Date(epochS * 1000);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  };

  function stored() {
    try {
      return sessionStorage.getItem(STORAGE_KEY) || "";
    } catch (_) {
      return ""; // storage refused (privacy settings): the token lives in this page only
    }
  }

  function store(token) {
    try {
      if (token) sessionStorage.setItem(STORAGE_KEY, token);
      else sessionStorage.removeItem(STORAGE_KEY);
    } catch (_) { /* as above */ }
  }

  function tokenFromFragment() {
    // #access_token=…[&token_type=Bearer&expires_in=…], as an OAuth 2.0 implicit grant returns it.
    const fragment = new URLSearchParams(location.hash.slice(1));
    const token = fragment.get("access_token");
    if (token !== null) {
      for (const name of ["access_token", "token_type", "expires_in"]) fragment.delete(name);
      const rest = fragment.toString();
      history.replaceState(null, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
    }
    return token ? token.trim() : "";
  }

  class SignIn {
    // options: {describe(filter) -> text, onToken(grant): a fresh token, accepted by api/session;
    // onSignOut()}; the elements by id in index.html.
    constructor(options) {
      this.describe = options.describe;
      this.onToken = options.onToken;
      this.onSignOut = options.onSignOut;
      const $ = (id) => document.getElementById(id);
      this.el = {
        session: $("session"), who: $("session-who"), scope: $("session-scope"), until: $("session-until"),
        change: $("session-change"), signOut: $("sign-out"),
        form: $("signin"), message: $("signin-message"), token: $("token"), cancel: $("signin-cancel"),
      };
      this.mode = "unknown"; // "off" or "jwt" once the server said
      this.grant = null;     // {subject, expires_at, scope} of the token in use
      this.expiryTimer = 0;
      const fromFragment = tokenFromFragment();
      if (fromFragment) store(fromFragment);
      this.token = fromFragment || stored();

      this.el.form.addEventListener("submit", (event) => {
        event.preventDefault();
        this.submit();
      });
      this.el.change.addEventListener("click", () => this.ask("", "status", true));
      this.el.cancel.addEventListener("click", () => this.hideForm());
      this.el.signOut.addEventListener("click", () => this.signOut());
    }

    // What to offer when opening the WebSocket: the token next to logger.v1, or nothing (as before).
    protocols() {
      return this.token && this.mode !== "off" ? ["logger.v1", `bearer.${this.token}`] : undefined;
    }

    get on() {
      return this.mode === "jwt";
    }

    // GET api/session with a token: {status: "off" | "ok" | 401 | 403 | "unknown", body}.
    async session(token) {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), SESSION_TIMEOUT_MS);
      try {
        const response = await fetch(new URL("api/session", location.href), {
          headers: token ? { Authorization: `Bearer ${token}` } : {},
          // Cookies go too (same origin): a team's own authorize may read its session cookie.
          cache: "no-store", credentials: "same-origin", signal: controller.signal,
        });
        let body = {};
        try {
          body = await response.json();
        } catch (_) { /* an HTML error page from a proxy */ }
        if (response.status === 200 && body.auth === "off") return { status: "off", body };
        if (response.status === 200) return { status: "ok", body };
        if (response.status === 401 || response.status === 403) return { status: response.status, body };
        return { status: "unknown", body };
      } catch (_) {
        return { status: "unknown", body: {} }; // the server is away: the connection retries
      } finally {
        clearTimeout(timer);
      }
    }

    // At start-up and after a refused upgrade: may the page connect with the token it has?
    async check() {
      const result = await this.session(this.token);
      if (result.status === "off") {
        this.mode = "off";
        this.el.session.hidden = true;
        this.hideForm();
        return true;
      }
      if (result.status === "unknown") return true; // the connection will tell more
      this.mode = "jwt";
      if (result.status === "ok") {
        this.show(result.body);
        return true;
      }
      this.refused(result, this.token);
      return false;
    }

    refused(result, token, cancellable = false) {
      const reason = result.body && result.body.error ? ` (${result.body.error})` : "";
      if (result.status === 403) {
        this.ask(`Not allowed: this token is valid but grants no logs here${reason}. Paste a token that does.`,
          "alert", cancellable);
      } else if (!token) {
        this.ask("Sign in to see the logs: paste an access token, or open a link that ends in #access_token=….",
          "alert");
      } else {
        this.ask(`Not signed in: the server did not accept this token${reason}. Paste a valid one.`, "alert",
          cancellable);
      }
    }

    // What the server says the token grants (api/session, hello, subscribed, authenticated).
    show(grant) {
      this.mode = "jwt";
      this.grant = { subject: grant.subject, expires_at: grant.expires_at, scope: grant.scope };
      this.el.session.hidden = false;
      this.el.who.textContent = grant.subject || "(no subject)";
      this.el.scope.textContent = grant.scope === "all" ? "all logs" : this.describe(grant.scope || {});
      this.el.until.textContent = grant.expires_at ? `until ${clock(grant.expires_at)}` : "no expiry";
      this.el.until.title = grant.expires_at ? new Date(grant.expires_at * 1000).toISOString() : "";
      clearTimeout(this.expiryTimer);
      if (grant.expires_at) {
        const warnIn = grant.expires_at * 1000 - WARN_BEFORE_EXPIRY_MS - Date.now();
        this.expiryTimer = setTimeout(() => this.expiring(), Math.max(0, warnIn));
      }
      if (this.el.form.dataset.kind === "expiring") this.hideForm(); // renewed meanwhile
    }

    expiring() {
      if (!this.grant || !this.grant.expires_at) return;
      this.ask(`Your sign-in expires at ${clock(this.grant.expires_at)}. Paste a fresh token to stay connected.`,
        "expiring", true);
    }

    // The server closed the connection with 1008 "token expired".
    expired() {
      clearTimeout(this.expiryTimer);
      const at = this.grant && this.grant.expires_at ? ` at ${clock(this.grant.expires_at)}` : "";
      this.ask(`Your token expired${at} and the server closed the connection. Paste a fresh token to continue.`,
        "alert");
    }

    // The sign-in form with a message. kind: "alert" (the page cannot go on without a token),
    // "expiring" (soon), "status" (asked for).
    ask(text, kind, cancellable = false) {
      const form = this.el.form;
      const wasHidden = form.hidden;
      form.hidden = false;
      form.dataset.kind = kind;
      this.el.message.setAttribute("aria-live", kind === "alert" ? "assertive" : "polite");
      if (this.el.message.textContent !== text) this.el.message.textContent = text;
      this.el.message.hidden = !text;
      this.el.cancel.hidden = !cancellable;
      if (wasHidden && kind !== "expiring") this.el.token.focus();
    }

    hideForm() {
      this.el.form.hidden = true;
      delete this.el.form.dataset.kind;
      this.el.token.value = "";
      this.el.token.removeAttribute("aria-invalid");
    }

    async submit() {
      const token = this.el.token.value.trim();
      const cancellable = !this.el.cancel.hidden;
      if (!token) {
        this.el.token.setAttribute("aria-invalid", "true");
        this.ask("Paste a token first.", "alert", cancellable);
        return;
      }
      this.el.token.removeAttribute("aria-invalid");
      const result = await this.session(token);
      if (result.status === "off") {
        this.mode = "off";
        this.hideForm();
        return;
      }
      if (result.status !== "ok") {
        // Only this token was refused: the one in use (if any) stays.
        this.el.token.setAttribute("aria-invalid", "true");
        if (result.status === "unknown") this.ask("The server could not be reached to check this token; try again.", "alert", cancellable);
        else this.refused(result, token, cancellable);
        return;
      }
      this.token = token;
      store(token);
      this.hideForm();
      this.show(result.body);
      this.onToken(result.body);
    }

    signOut() {
      this.token = "";
      this.grant = null;
      store("");
      clearTimeout(this.expiryTimer);
      this.el.session.hidden = true;
      this.ask("Signed out. Paste a token to sign in again.", "alert");
      this.onSignOut();
    }
  }

  window.SignIn = SignIn;
})();
