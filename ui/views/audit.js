// Audit: the authorization server's log (approvals, grants, tokens, refusals, MCP calls),
// newest first, filtered by server, client and kind on the agent. Client ids, tool names and
// details are attacker-controlled: text only.

import { h, on } from "../dom.js";
import { badge, code, emptyState, errorNote, timeEl, viewHeader } from "./common.js";

export const AUDIT_KINDS = [
  "approval_requested",
  "grant_approved",
  "grant_denied",
  "approval_expired",
  "token_issued",
  "token_refreshed",
  "token_minted",
  "revoked",
  "client_registered",
  "token_refused",
  "mcp_call",
];

const KIND_STYLE = { grant_denied: "bad", token_refused: "bad", revoked: "warn", approval_expired: "muted", grant_approved: "ok", mcp_call: "info" };

function select(id, label, value, options, onChange) {
  const el = h(
    "select",
    { id, dataset: { focusKey: id } },
    h("option", { value: "", selected: value ? null : "selected" }, "any"),
    options.map(([v, text]) => h("option", { value: v, selected: v === value ? "selected" : null }, text)),
  );
  on(el, "change", () => onChange(el.value));
  return h("span", { class: "filter" }, h("label", { for: id }, label), el);
}

function detail(e) {
  const parts = [];
  if (e.method) {
    parts.push(code(String(e.method)));
  }
  if (e.tool) {
    parts.push(" ", code(String(e.tool), "tool"));
  }
  const nums = [];
  if (e.status !== null && e.status !== undefined) nums.push(`HTTP ${e.status}`);
  if (e.duration_ms !== null && e.duration_ms !== undefined) nums.push(`${e.duration_ms} ms`);
  if (e.bytes_in !== null && e.bytes_in !== undefined) nums.push(`${e.bytes_in} B in`);
  if (e.bytes_out !== null && e.bytes_out !== undefined) nums.push(`${e.bytes_out} B out`);
  if (e.ingress) nums.push(`via ${e.ingress}`);
  if (nums.length) {
    parts.push(h("span", { class: "muted" }, ` ${nums.join(" · ")}`));
  }
  if (e.detail) {
    parts.push(h("span", { class: "block audit-detail" }, String(e.detail)));
  }
  const ids = [e.grant_id, e.token_id].filter(Boolean).map(String);
  if (ids.length) {
    parts.push(h("span", { class: "block muted" }, ids.join(" · ")));
  }
  return parts;
}

function serverLabel(state, id) {
  const s = state.servers.find((x) => x.id === id);
  return s ? `${s.name} (${id})` : id;
}

export function auditView(state, actions) {
  const f = state.auditFilter;
  const servers = [...new Set([...state.servers.map((s) => String(s.id)), ...(state.audit || []).map((e) => e.server_id).filter(Boolean).map(String)])].sort();
  const clients = new Map();
  for (const c of state.clients || []) {
    clients.set(String(c.client_id), String(c.name));
  }
  for (const e of state.audit || []) {
    if (e.client_id && !clients.has(String(e.client_id))) {
      clients.set(String(e.client_id), String(e.client_id));
    }
  }
  const filters = h(
    "div",
    { class: "filters", role: "group", "aria-label": "Filter the audit log" },
    select("audit-server", "Server", f.server, servers.map((id) => [id, serverLabel(state, id)]), (v) => actions.setAuditFilter("server", v)),
    select("audit-client", "Client", f.client, [...clients.entries()].map(([id, name]) => [id, name === id ? id : `${name} (${id})`]), (v) => actions.setAuditFilter("client", v)),
    select("audit-kind", "Kind", f.kind, AUDIT_KINDS.map((k) => [k, k.replaceAll("_", " ")]), (v) => actions.setAuditFilter("kind", v)),
  );
  let body;
  if (state.audit === undefined) {
    actions.loadAudit();
    body = h("p", { class: "muted" }, "Loading the audit log…");
  } else if (state.auditError) {
    body = errorNote(state.auditError);
  } else if (!state.audit.length) {
    body = emptyState(f.server || f.client || f.kind ? "No entries match these filters." : "The audit log is empty.", "Approvals, grants, tokens, refusals and every MCP call through the gateway are recorded here.");
  } else {
    const serverName = (id) => {
      const s = state.servers.find((x) => x.id === id);
      return s ? String(s.name) : null;
    };
    const names = (id) => (id && clients.get(String(id)) !== String(id) ? clients.get(String(id)) : null);
    body = h(
      "table",
      { class: "grid audit" },
      h("caption", { class: "sr-only" }, "Audit log, newest first"),
      h("thead", null, h("tr", null, ["When", "What", "Server", "Client", "Details"].map((t) => h("th", { scope: "col" }, t)))),
      h(
        "tbody",
        null,
        state.audit.map((e) =>
          h(
            "tr",
            { class: "audit-entry", dataset: { kind: String(e.kind ?? "") } },
            h("td", null, timeEl(e.ts_ms)),
            h("td", null, badge(String(e.kind ?? "").replaceAll("_", " "), KIND_STYLE[e.kind] || "muted")),
            h("td", null, e.server_id ? [serverName(e.server_id) ? h("span", { class: "block audit-server" }, serverName(e.server_id)) : null, code(String(e.server_id))] : h("span", { class: "muted" }, "—")),
            h("td", null, e.client_id ? [names(e.client_id) ? h("span", { class: "block audit-client" }, names(e.client_id)) : null, code(String(e.client_id), "client-id")] : h("span", { class: "muted" }, "—")),
            h("td", null, detail(e)),
          ),
        ),
      ),
    );
  }
  const refresh = h("button", { type: "button", class: "btn btn-small", dataset: { focusKey: "audit-refresh" } }, "Refresh");
  on(refresh, "click", () => actions.loadAudit());
  return h(
    "div",
    { class: "view", dataset: { view: "audit" } },
    viewHeader("Audit", refresh),
    h("section", { class: "card" }, filters, h("p", { class: "muted" }, "Newest first, at most 200 entries. Grant and approval events update this view live; MCP calls appear on Refresh."), body),
  );
}
