// Approvals: OAuth authorization requests waiting for a person. Everything here except the
// buttons' labels came from the requesting client (name, redirect URI, CIMD URL, tool names),
// so it is rendered as text only (dom.js).

import { h, on } from "../dom.js";
import { badge, code, emptyState, errorNote, row, scopeBadges, timeEl, viewHeader } from "./common.js";

function toolPicker(a, state, actions) {
  const tools = Array.isArray(a.tools) ? a.tools.map(String) : null;
  if (!tools) {
    const inputId = `narrow-${a.id}`;
    const input = h("input", {
      id: inputId,
      type: "text",
      class: "hostname-input narrow-input",
      value: state.narrowText.get(a.id) || "",
      placeholder: "all tools",
      spellcheck: "false",
      autocomplete: "off",
      dataset: { focusKey: inputId },
    });
    on(input, "input", () => actions.narrowText(a.id, input.value));
    return row(
      "Tools",
      h(
        "span",
        null,
        badge("all tools", "warn"),
        " The client asked for every tool of this server.",
        h("span", { class: "block" }, h("label", { for: inputId }, "Allow only (comma-separated tool names, optional): "), input),
      ),
    );
  }
  const unchecked = state.narrow.get(a.id) || new Set();
  return row(
    "Tools",
    h(
      "fieldset",
      { class: "tool-picker" },
      h("legend", { class: "sr-only" }, `Tools to allow for ${a.client_name}`),
      tools.map((t, i) => {
        const cbId = `tool-${a.id}-${i}`;
        const cb = h("input", { type: "checkbox", id: cbId, checked: !unchecked.has(t), dataset: { focusKey: cbId, tool: t } });
        on(cb, "change", () => actions.narrowTool(a.id, t, cb.checked));
        return h("label", { class: "tool-choice", for: cbId }, cb, " ", code(t));
      }),
    ),
  );
}

// The name discovery found (what the person knows the server by); the approval carries the
// hostname label.
function serverName(a, state) {
  const srv = state.servers.find((s) => s.id === a.server_id);
  return String(srv ? srv.name : (a.server_name ?? a.server_id ?? ""));
}

function approvalCard(a, state, actions) {
  const id = String(a.id);
  const busy = state.deciding.has(id);
  const tools = Array.isArray(a.tools) ? a.tools.map(String) : null;
  const unchecked = state.narrow.get(id) || new Set();
  const typed = (state.narrowText.get(id) || "").split(",").map((t) => t.trim()).filter(Boolean);
  const chosen = tools ? tools.filter((t) => !unchecked.has(t)) : typed;
  const noneChosen = tools !== null && chosen.length === 0;
  const narrowed = tools ? chosen.length < tools.length : typed.length > 0;
  const approve = h(
    "button",
    { type: "button", class: "btn btn-primary", disabled: busy || noneChosen, dataset: { focusKey: `approve-${id}` }, "aria-label": `Approve ${a.client_name} for ${serverName(a, state)}` },
    narrowed ? (tools ? `Approve ${chosen.length} of ${tools.length} tools` : `Approve ${chosen.length} tool${chosen.length === 1 ? "" : "s"}`) : "Approve",
  );
  on(approve, "click", () => actions.decide(id, true, narrowed ? chosen : undefined));
  // A request opened in a browser elsewhere (a relay hostname's page) is approved only with the code that page
  // shows: whoever sent you a link to a page they opened cannot show you its code.
  const remote = a.remote === true;
  let codeField = null;
  if (remote) {
    const codeId = `confirm-code-${id}`;
    const input = h("input", {
      id: codeId,
      type: "text",
      class: "hostname-input confirm-code-input",
      value: state.confirmCodes.get(id) || "",
      placeholder: "XXXX-XXXX",
      maxlength: "20",
      spellcheck: "false",
      autocomplete: "off",
      autocapitalize: "characters",
      dataset: { focusKey: codeId },
    });
    on(input, "input", () => actions.confirmCode(id, input.value));
    on(input, "keydown", (ev) => {
      if (ev.key === "Enter" && !approve.disabled) {
        actions.decide(id, true, narrowed ? chosen : undefined);
      }
    });
    codeField = h("label", { class: "confirm-code", for: codeId }, "Code shown on that page: ", input);
  }
  const deny = h(
    "button",
    { type: "button", class: "btn btn-danger", disabled: busy, dataset: { focusKey: `deny-${id}` }, "aria-label": `Deny ${a.client_name}` },
    "Deny",
  );
  on(deny, "click", () => actions.decide(id, false));
  const err = state.approvalErrors.get(id);
  return h(
    "article",
    { class: "card approval", dataset: { approvalId: id }, "aria-label": `Request from ${a.client_name}` },
    h(
      "div",
      { class: "server-head" },
      h("div", { class: "server-title" }, h("h2", { class: "client-name" }, String(a.client_name ?? "unnamed client")), code(String(a.client_id ?? ""), "server-id")),
      badge(String(a.client_kind ?? "client"), a.client_kind === "cimd" ? "source" : "muted"),
    ),
    h(
      "dl",
      { class: "rows" },
      row("Server", h("span", null, h("strong", { class: "approval-server" }, serverName(a, state)), " ", code(String(a.server_name ?? a.server_id ?? "")))),
      row("Sends you back to", code(String(a.redirect_host ?? ""), "redirect-host"), h("span", { class: "muted block" }, String(a.redirect_uri ?? ""))),
      a.cimd_url ? row("Client metadata", code(String(a.cimd_url), "url cimd-url")) : null,
      row("Scopes", h("span", { class: "badges" }, scopeBadges(a.scopes))),
      toolPicker(a, state, actions),
      row("Requested", timeEl(a.created_ms), h("span", { class: "muted" }, " · expires "), timeEl(a.expires_ms)),
      remote
        ? row(
            "Opened",
            h(
              "span",
              null,
              badge("in a browser elsewhere", "warn"),
              " That page shows a code. Approve only if you opened it yourself, and type the code it shows.",
            ),
          )
        : null,
    ),
    noneChosen ? h("p", { class: "field-error", role: "alert" }, "Choose at least one tool, or deny the request.") : null,
    h("div", { class: "decide" }, codeField, approve, deny, busy ? h("span", { class: "muted" }, "Working…") : null),
    err ? errorNote(err) : null,
  );
}

export function approvalsView(state, actions) {
  const list = state.approvals;
  let body;
  if (list === undefined) {
    body = h("p", { class: "muted" }, "Loading approvals…");
  } else if (state.oauthError) {
    body = h("section", { class: "card" }, errorNote(state.oauthError));
  } else if (!list.length) {
    body = h(
      "section",
      { class: "card" },
      emptyState(
        "Nothing to approve.",
        "When a cloud agent or another OAuth client asks to use one of your exposed servers, the request waits here until you approve or deny it. Requests expire after ten minutes.",
      ),
    );
  } else {
    body = h("div", { class: "cards" }, list.map((a) => approvalCard(a, state, actions)));
  }
  return h(
    "div",
    { class: "view", dataset: { view: "approvals" } },
    viewHeader("Approvals", h("p", { class: "muted" }, "Check who is asking (the name is chosen by the client; the redirect host and metadata URL are what identify it).")),
    state.lastDecision ? h("p", { class: "note", role: "status" }, state.lastDecision) : null,
    body,
  );
}
