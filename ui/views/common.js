// Small building blocks shared by the views. Text only: see dom.js.

import { h, on } from "../dom.js";

export const HOSTNAME_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** Returns an error message for an invalid hostname label, or null when it is valid. */
export function hostnameProblem(value) {
  if (value.length === 0) {
    return "A hostname needs at least one character.";
  }
  if (value.length > 63) {
    return "A hostname has at most 63 characters.";
  }
  if (!/^[a-z0-9-]+$/.test(value)) {
    return "Use only lowercase letters a–z, digits 0–9 and '-'.";
  }
  if (value.startsWith("-") || value.endsWith("-")) {
    return "A hostname cannot start or end with '-'.";
  }
  return null;
}

export function badge(text, kind, title) {
  return h("span", { class: ["badge", kind && `badge-${kind}`], title }, text);
}

/** Shell-style rendering of argv for display (the exact command the agent will run). */
export function shellWords(argv) {
  return argv
    .map((a) => {
      const s = String(a);
      if (s !== "" && /^[A-Za-z0-9_@%+=:,./-]+$/.test(s)) {
        return s;
      }
      return `'${s.replace(/'/g, "'\\''")}'`;
    })
    .join(" ");
}

/**
 * A Copy button. `getText` may be async (e.g. fetches the token first). Reports success or
 * failure in its own label and in a polite live region next to it.
 */
export function copyButton(label, getText, opts = {}) {
  const status = h("span", { class: "copy-status", role: "status", "aria-live": "polite" });
  const btn = h(
    "button",
    { type: "button", class: "btn btn-small", "aria-label": opts.ariaLabel || label, dataset: { focusKey: `copy:${opts.ariaLabel || label}` } },
    label,
  );
  let timer = null;
  on(btn, "click", async () => {
    btn.disabled = true;
    try {
      const text = await getText();
      await navigator.clipboard.writeText(text);
      status.textContent = "Copied";
      status.className = "copy-status ok";
    } catch (err) {
      status.textContent = `Copy failed: ${err && err.message ? err.message : String(err)}`;
      status.className = "copy-status bad";
    } finally {
      btn.disabled = false;
      clearTimeout(timer);
      timer = setTimeout(() => {
        status.textContent = "";
      }, 2500);
    }
  });
  return h("span", { class: "copy" }, btn, status);
}

/** A labelled value row: term, value (code), optional actions. */
export function row(term, value, ...actions) {
  return h(
    "div",
    { class: "row" },
    h("dt", null, term),
    h("dd", null, value, actions.length ? h("span", { class: "actions" }, actions) : null),
  );
}

export function code(text, cls) {
  return h("code", { class: cls }, text);
}

export function emptyState(title, ...body) {
  return h("div", { class: "empty" }, h("p", { class: "empty-title" }, title), body.map((b) => h("p", null, b)));
}

export function viewHeader(title, ...extra) {
  return h("header", { class: "view-header" }, h("h1", { tabindex: "-1", class: "view-title" }, title), extra);
}

export function healthBadge(server) {
  if (!server.exposed) {
    return badge("not exposed", "muted");
  }
  const hl = server.health || {};
  switch (hl.state) {
    case "ready":
      return badge("ready", "ok", [hl.era && `MCP ${hl.era}`, hl.pid && `pid ${hl.pid}`].filter(Boolean).join(", "));
    case "starting":
      return badge("starting", "warn");
    case "restarting":
      return badge(
        `restarting${hl.attempt ? ` (attempt ${hl.attempt})` : ""}`,
        "bad",
        hl.last_error ? String(hl.last_error) : undefined,
      );
    case "proxy":
      return badge("proxy", "info", hl.url ? `→ ${hl.url}` : undefined);
    case "stopped":
      return badge("stopped", "muted");
    default:
      return badge(hl.state ? String(hl.state) : "exposed", "info");
  }
}

/** "3 min ago" / "in 8 min" for a Unix-ms time (rendered again on every live update). */
export function relTime(ms, now = Date.now()) {
  const t = Number(ms);
  if (!Number.isFinite(t) || t <= 0) {
    return "—";
  }
  const d = Math.round((t - now) / 1000);
  const a = Math.abs(d);
  const text = a < 60 ? `${a} s` : a < 3600 ? `${Math.round(a / 60)} min` : a < 86400 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} d`;
  return d <= 0 ? `${text} ago` : `in ${text}`;
}

/** A <time> element: absolute time in the tooltip and datetime, relative text. */
export function timeEl(ms) {
  const t = Number(ms);
  if (!Number.isFinite(t) || t <= 0) {
    return h("span", { class: "muted" }, "never");
  }
  const iso = new Date(t).toISOString();
  return h("time", { datetime: iso, title: new Date(t).toLocaleString(), dataset: { ms: String(t) } }, relTime(t));
}

export function scopeBadges(scopes) {
  const s = scopes && typeof scopes === "object" ? scopes : {};
  const out = [];
  if (s.read) {
    out.push(badge("mcp:read", "info", "lists, reads, prompts"));
  }
  if (s.call) {
    out.push(badge("mcp:call", "warn", "may call tools"));
  }
  return out.length ? out : [badge("none", "muted")];
}

/** A red/amber/green line for an API error (404 = this agent does not offer the feature). */
export function errorNote(message) {
  return h("p", { class: "server-error", role: "alert" }, message);
}
