// Servers: everything discovery found, with where it was found, what exactly runs, config
// problems, and the expose switch + hostname editor.

import { h, on } from "../dom.js";
import { badge, code, emptyState, healthBadge, hostnameProblem, row, shellWords, viewHeader } from "./common.js";

function transportRows(t) {
  if (!t || typeof t !== "object") {
    return [row("Transport", "unknown")];
  }
  const rows = [];
  if (t.type === "stdio") {
    rows.push(row("Transport", "stdio"));
    const argv = [t.command, ...(Array.isArray(t.args) ? t.args : [])];
    rows.push(row("Command", code(shellWords(argv), "cmd")));
    if (t.cwd) {
      rows.push(row("Working dir", code(String(t.cwd))));
    }
    const env = t.env && typeof t.env === "object" ? Object.keys(t.env) : [];
    if (env.length) {
      rows.push(row("Env keys", h("span", { class: "keys" }, env.map((k) => code(k)))));
    }
  } else {
    rows.push(row("Transport", t.type === "sse" ? "HTTP+SSE (deprecated)" : "Streamable HTTP"));
    rows.push(row("URL", code(String(t.url ?? ""), "cmd")));
    const headers = t.headers && typeof t.headers === "object" ? Object.keys(t.headers) : [];
    if (headers.length) {
      rows.push(row("Header keys", h("span", { class: "keys" }, headers.map((k) => code(k)))));
    }
  }
  return rows;
}

function sourceBadges(sources) {
  return (Array.isArray(sources) ? sources : []).map((s) => {
    const label = `${s.client}${s.scope && s.scope !== "user" ? ` · ${s.scope}` : ""}${s.disabled ? " · disabled" : ""}`;
    return badge(label, s.disabled ? "muted" : "source", s.path ? String(s.path) : undefined);
  });
}

function hostnameEditor(server, state, actions) {
  const id = server.id;
  const inputId = `hostname-${id}`;
  const errId = `hostname-error-${id}`;
  const draft = state.drafts.has(id) ? state.drafts.get(id) : server.hostname || "";
  const problem = state.drafts.has(id) ? hostnameProblem(draft) : null;
  const input = h("input", {
    id: inputId,
    type: "text",
    class: "hostname-input",
    value: draft,
    placeholder: "chosen from the name",
    spellcheck: "false",
    autocomplete: "off",
    maxlength: "63",
    "aria-describedby": errId,
    "aria-invalid": problem ? "true" : "false",
    dataset: { focusKey: inputId },
    disabled: !server.exposable || state.pending.has(id),
  });
  on(input, "input", () => actions.setDraft(id, input.value));
  const changed = state.drafts.has(id) && draft !== (server.hostname || "");
  const save = h(
    "button",
    {
      type: "submit",
      class: "btn btn-small",
      disabled: !server.exposable || !changed || Boolean(problem) || state.pending.has(id),
      dataset: { focusKey: `save-${id}` },
    },
    server.exposed ? "Save hostname" : "Expose with this hostname",
  );
  const form = h(
    "form",
    { class: "hostname-form", novalidate: true },
    h("label", { for: inputId }, "Hostname"),
    input,
    save,
    h("p", { id: errId, class: ["field-error", !problem && "empty-msg"], role: "alert" }, problem || ""),
  );
  on(form, "submit", (ev) => {
    ev.preventDefault();
    const value = input.value;
    if (hostnameProblem(value)) {
      actions.setDraft(id, value);
      return;
    }
    actions.expose(id, value);
  });
  return form;
}

function serverCard(server, state, actions) {
  const id = server.id;
  const pending = state.pending.has(id);
  const toggle = h("input", {
    type: "checkbox",
    role: "switch",
    class: "switch",
    checked: Boolean(server.exposed),
    disabled: !server.exposable || pending,
    "aria-label": `Expose ${server.name}`,
    dataset: { focusKey: `switch-${id}` },
  });
  on(toggle, "change", () => {
    if (toggle.checked) {
      const draft = state.drafts.get(id);
      const hostname = draft !== undefined && draft !== (server.hostname || "") ? draft : undefined;
      if (hostname !== undefined && hostnameProblem(hostname)) {
        toggle.checked = false;
        actions.setError(id, `Fix the hostname first: ${hostnameProblem(hostname)}`);
        return;
      }
      actions.expose(id, hostname);
    } else {
      actions.unexpose(id);
    }
  });
  const err = state.errors.get(id);
  return h(
    "article",
    { class: ["card", "server", server.exposed && "is-exposed"], dataset: { serverId: id }, "aria-label": server.name },
    h(
      "div",
      { class: "server-head" },
      h("div", { class: "server-title" }, h("h2", { class: "server-name" }, server.name), code(id, "server-id")),
      healthBadge(server),
      h("label", { class: "switch-label" }, toggle, h("span", null, pending ? "Working…" : server.exposed ? "Exposed" : "Expose")),
    ),
    h("div", { class: "badges", "aria-label": "Found in" }, sourceBadges(server.sources)),
    h("dl", { class: "rows" }, transportRows(server.transport),
      server.exposed && server.url ? row("Local URL", code(String(server.url), "url")) : null,
      server.exposed && server.tunnel_url ? row("Tunnel URL", code(String(server.tunnel_url), "url")) : null),
    server.exposable
      ? hostnameEditor(server, state, actions)
      : h("p", { class: "note" }, `Not exposable: ${server.not_exposable_reason || "this transport cannot be served by Airlock"}`),
    err ? h("p", { class: "server-error", role: "alert" }, err) : null,
  );
}

function diagnostics(list) {
  if (!list.length) {
    return null;
  }
  return h(
    "section",
    { class: "card diagnostics", "aria-labelledby": "diag-title" },
    h("h2", { id: "diag-title" }, `Config problems (${list.length})`),
    h("p", { class: "muted" }, "These files could not be read completely; the servers in other files are listed below."),
    h(
      "ul",
      null,
      list.map((d) => {
        const where = [d.path, d.line, d.column].filter((x) => x !== null && x !== undefined).join(":");
        return h("li", { class: "diagnostic" }, badge(String(d.client ?? "config"), "source"), " ", code(where, "path"), ": ", h("span", { class: "diag-msg" }, String(d.message ?? "")));
      }),
    ),
  );
}

export function serversView(state, actions) {
  const servers = [...state.servers].sort((a, b) => String(a.name).localeCompare(String(b.name)) || String(a.id).localeCompare(String(b.id)));
  const exposed = servers.filter((s) => s.exposed).length;
  return h(
    "div",
    { class: "view", dataset: { view: "servers" } },
    viewHeader("Servers", h("p", { class: "muted" }, `${servers.length} discovered · ${exposed} exposed`)),
    diagnostics(state.diagnostics),
    servers.length
      ? h("div", { class: "cards" }, servers.map((s) => serverCard(s, state, actions)))
      : emptyState(
          "No MCP servers found yet.",
          "Airlock reads the configs of Claude Desktop, Claude Code, Cursor, VS Code, Windsurf, Zed, Codex, Gemini CLI, Goose, Continue, Cline and LM Studio. Add a server in one of them and it appears here within a second.",
        ),
  );
}
