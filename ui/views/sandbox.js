// Sandbox: the local worker for Claude Managed Agents. The switch, how well this machine can
// confine tool calls (red when it cannot), the environment key, and the live session with its
// tool calls. Tool names and errors come from the session: text only.

import { h, on } from "../dom.js";
import { badge, code, copyButton, emptyState, errorNote, row, timeEl, viewHeader } from "./common.js";

// What is being typed in the environment form survives re-renders here, in memory only; the key is
// dropped as soon as it is sent and is never rendered as an attribute.
const draft = { base_url: null, environment_id: null, key: "" };

function isolationOf(s) {
  return s.isolation || s.report || null;
}

/** "ok" | "warn" | "bad" and a sentence for the isolation the worker has or would have. */
export function isolationVerdict(s) {
  const iso = isolationOf(s);
  const mech = "mechanism" in s ? s.mechanism : iso && iso.best;
  if (mech === "unconfined") {
    return ["bad", s.warning ? String(s.warning) : "Unconfined: tool calls run as you, with your files and network. Only for machines you can throw away."];
  }
  if (!mech) {
    const why = iso ? [iso.bubblewrap_problem, iso.landlock_problem].filter(Boolean).join("; ") : "";
    return ["bad", s.warning ? String(s.warning) : `No isolation available: the worker refuses to run tool calls${why ? ` (${why})` : ""}.`];
  }
  if (mech === "landlock") {
    return ["warn", "Landlock + seccomp: file access and syscalls are restricted; there are no separate namespaces."];
  }
  return ["ok", `${mech === "bubblewrap" ? "bubblewrap" : mech}: each session runs in its own user, pid, mount and network namespaces.`];
}

function isolationSection(s) {
  const iso = isolationOf(s);
  const [kind, text] = isolationVerdict(s);
  const cg = iso && iso.cgroup;
  return h(
    "section",
    { class: ["card", "isolation", `isolation-${kind}`], "aria-labelledby": "iso-title" },
    h("h2", { id: "iso-title" }, "Isolation ", badge(kind === "ok" ? "confined" : kind === "warn" ? "partly confined" : "not confined", kind)),
    h("p", { class: kind === "bad" ? "server-error" : "note" }, text),
    iso
      ? h(
          "dl",
          { class: "rows" },
          row("Platform", String(iso.platform ?? "unknown")),
          row("bubblewrap", iso.bubblewrap_works ? badge("works", "ok") : badge(iso.bubblewrap ? "fails" : "not installed", "bad"), iso.bubblewrap_problem ? h("span", { class: "muted block" }, String(iso.bubblewrap_problem)) : null),
          row("Landlock", iso.landlock ? badge("available", "ok") : badge("unavailable", "muted"), iso.landlock_problem ? h("span", { class: "muted block" }, String(iso.landlock_problem)) : null),
          row("seccomp", iso.seccomp ? badge("available", "ok") : badge("unavailable", "muted")),
          row("Limits (cgroup)", cg && cg.kind && cg.kind !== "unavailable" ? badge(String(cg.kind), "ok") : badge("none", "warn"), cg && cg.reason ? h("span", { class: "muted block" }, String(cg.reason)) : null),
        )
      : null,
  );
}

function sessionsList(s) {
  const open = Array.isArray(s.sessions) ? s.sessions : [];
  if (!open.length) {
    return null;
  }
  return [
    h("h3", null, `Open sessions (${open.length})`),
    h(
      "ul",
      { class: "calls" },
      open.map((o) =>
        h(
          "li",
          { class: "open-session" },
          code(String(o.session_id ?? ""), "session-id"),
          h("span", { class: "muted" }, " opened "),
          timeEl(o.opened_ms),
          o.status && o.status.mechanism ? [" ", badge(String(o.status.mechanism), o.status.mechanism === "unconfined" ? "bad" : "ok")] : null,
        ),
      ),
    ),
  ];
}

function workerSection(s) {
  const w = s.worker || null;
  if (!w) {
    return h("section", { class: "card" }, h("h2", null, "Sessions"), emptyState(s.enabled ? "The worker is starting." : "The worker is off.", s.enabled ? "It appears here once it polls the environment." : "Turn on local sandbox execution to serve sessions of your environment on this machine."));
  }
  const stateKind = { serving: "ok", polling: "info", starting: "warn", stopped: "muted", failed: "bad" }[w.state] || "muted";
  const inFlight = Array.isArray(w.in_flight) ? w.in_flight : [];
  const recent = Array.isArray(w.recent) ? [...w.recent].reverse() : [];
  return h(
    "section",
    { class: "card", "aria-labelledby": "worker-title" },
    h("h2", { id: "worker-title" }, "Sessions ", badge(String(w.state ?? "unknown"), stateKind)),
    h(
      "dl",
      { class: "rows" },
      w.worker_id ? row("Worker", code(String(w.worker_id))) : null,
      row("Current session", w.current ? h("span", null, code(String(w.current.session_id ?? ""), "session-id"), h("span", { class: "muted" }, " since "), timeEl(w.current.since_ms)) : h("span", { class: "muted" }, "none")),
      row("Items served", String(w.items_served ?? 0)),
      w.last_error || s.last_error ? row("Last error", h("span", { class: "server-error" }, String(s.last_error || w.last_error))) : null,
    ),
    sessionsList(s),
    h("h3", null, `Tool calls in flight (${inFlight.length})`),
    inFlight.length
      ? h("ul", { class: "calls" }, inFlight.map((c) => h("li", { class: "call" }, code(String(c.name ?? ""), "tool"), h("span", { class: "muted" }, " started "), timeEl(c.started_ms))))
      : h("p", { class: "muted" }, "None."),
    h("h3", null, "Recent tool calls"),
    recent.length
      ? h(
          "table",
          { class: "grid" },
          h("caption", { class: "sr-only" }, "Recent tool calls, newest first"),
          h("thead", null, h("tr", null, ["Tool", "Result", "Took", "Finished"].map((t) => h("th", { scope: "col" }, t)))),
          h(
            "tbody",
            null,
            recent.map((c) =>
              h(
                "tr",
                { class: "call" },
                h("td", null, code(String(c.name ?? ""), "tool")),
                h("td", null, badge(c.is_error ? "error" : "ok", c.is_error ? "bad" : "ok"), c.confirmation ? [" ", badge(String(c.confirmation), "info")] : null, c.posted === false ? [" ", badge("not delivered", "warn")] : null),
                h("td", null, `${c.duration_ms ?? "?"} ms`),
                h("td", null, timeEl(c.finished_ms)),
              ),
            ),
          ),
        )
      : h("p", { class: "muted" }, "No tool calls yet."),
  );
}

function field(id, label, attrs, value, onInput) {
  const input = h("input", { id, name: id, autocomplete: "off", spellcheck: "false", value, ...attrs, dataset: { focusKey: id } });
  on(input, "input", () => onInput(input.value));
  return h("div", { class: "field" }, h("label", { for: id }, label), " ", input);
}

function loginForm(s, state, actions) {
  const busy = Boolean(state.loginBusy);
  const baseUrl = draft.base_url ?? String(s.base_url ?? "https://api.anthropic.com");
  const envId = draft.environment_id ?? String(s.environment_id ?? "");
  const submit = h("button", { type: "submit", class: "btn", disabled: busy }, busy ? "Saving…" : s.environment_key_stored ? "Replace the key" : "Save");
  const form = h(
    "form",
    { class: "env-form", "aria-label": "Environment key" },
    field("sandbox-base-url", "API base URL", { type: "url", disabled: busy }, baseUrl, (v) => (draft.base_url = v)),
    field("sandbox-environment-id", "Environment id", { type: "text", placeholder: "env_…", disabled: busy }, envId, (v) => (draft.environment_id = v)),
    field("sandbox-environment-key", "Environment key", { type: "password", disabled: busy }, draft.key, (v) => (draft.key = v)),
    h("p", null, submit),
  );
  on(form, "submit", async (ev) => {
    ev.preventDefault();
    const body = {
      base_url: form.querySelector("#sandbox-base-url").value.trim(),
      environment_id: form.querySelector("#sandbox-environment-id").value.trim(),
      environment_key: form.querySelector("#sandbox-environment-key").value,
    };
    draft.key = "";
    form.querySelector("#sandbox-environment-key").value = "";
    if (await actions.sandboxLogin(body)) {
      draft.base_url = null;
      draft.environment_id = null;
    }
  });
  return [
    form,
    state.loginNote ? h("p", { class: "note", role: "status" }, state.loginNote) : null,
    state.loginError ? errorNote(state.loginError) : null,
  ];
}

function keySection(s, state, actions) {
  const login = `airlock sandbox login --base-url ${s.base_url ? String(s.base_url) : "https://api.anthropic.com"} --environment-id ${s.environment_id ? String(s.environment_id) : "env_…"} < environment-key.txt`;
  return h(
    "section",
    { class: "card", "aria-labelledby": "key-title" },
    h("h2", { id: "key-title" }, "Environment"),
    h(
      "dl",
      { class: "rows" },
      row("Environment", s.environment_id ? code(String(s.environment_id)) : badge("not set", "bad")),
      row("Environment key", s.environment_key_stored ? badge("stored", "ok") : badge("missing", "bad")),
      s.base_url ? row("API", code(String(s.base_url), "url")) : null,
      s.workdir ? row("Workdir", code(String(s.workdir)), s.workdir_per_session ? h("span", { class: "muted" }, " (a fresh folder per session)") : null) : null,
      Array.isArray(s.allowed_domains)
        ? row("Network", s.allowed_domains.length ? h("span", { class: "keys" }, s.allowed_domains.map((d) => code(String(d)))) : h("span", { class: "muted" }, "none (no domain allowed)"))
        : null,
    ),
    h("p", { class: "muted" }, s.configured ? "To change the environment or its key, enter them here (the key goes to the keystore and is never shown again):" : "Enter the environment and its key (the key goes to the keystore and is never shown again):"),
    loginForm(s, state, actions),
    h("p", { class: "muted" }, "Or in a terminal:"),
    h("p", null, code(login, "cmd"), " ", copyButton("Copy", () => login, { ariaLabel: "Copy the sandbox login command" })),
  );
}

export function sandboxView(state, actions) {
  const s = state.sandbox;
  let body;
  if (s === undefined) {
    actions.loadSandbox();
    body = [h("p", { class: "muted" }, "Loading the sandbox status…")];
  } else if (state.sandboxError) {
    body = [h("section", { class: "card" }, errorNote(state.sandboxError))];
  } else {
    const toggle = h("input", {
      type: "checkbox",
      role: "switch",
      class: "switch",
      id: "sandbox-switch",
      checked: Boolean(s.enabled),
      disabled: state.sandboxBusy,
      dataset: { focusKey: "sandbox-switch" },
    });
    on(toggle, "change", () => actions.setSandbox(toggle.checked));
    body = [
      h(
        "section",
        { class: "card" },
        h("label", { class: "switch-label sandbox-toggle", for: "sandbox-switch" }, toggle, h("span", null, state.sandboxBusy ? "Working…" : "Local sandbox execution")),
        h(
          "p",
          { class: "muted sandbox-state" },
          s.enabled
            ? s.running
              ? "On: this machine serves tool calls of your Claude Managed Agents environment."
              : "On, but the worker is not running (see the last error below)."
            : "Off: no session runs here.",
        ),
        state.sandboxToggleError ? errorNote(state.sandboxToggleError) : null,
      ),
      isolationSection(s),
      keySection(s, state, actions),
      workerSection(s),
    ];
  }
  return h("div", { class: "view", dataset: { view: "sandbox" } }, viewHeader("Sandbox"), body);
}
