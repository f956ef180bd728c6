// Clients: every OAuth client with its grants per server (scopes, tools, last use, live
// tokens), Revoke, and minting a token for a caller that cannot do the OAuth dance. A minted
// token is shown once, right after minting, and forgotten when the view is left.

import { h, on } from "../dom.js";
import { badge, code, copyButton, emptyState, errorNote, row, scopeBadges, timeEl, viewHeader } from "./common.js";

function revokeButton(id, label, state, actions) {
  const b = h("button", { type: "button", class: "btn btn-small btn-danger", disabled: state.revoking.has(id), "aria-label": label, dataset: { focusKey: `revoke-${id}` } }, "Revoke");
  on(b, "click", () => actions.revoke(id));
  return b;
}

function grantRow(g, client, state, actions) {
  const revoked = g.revoked_ms !== null && g.revoked_ms !== undefined;
  const expired = Number(g.expires_ms) > 0 && Number(g.expires_ms) < Date.now();
  const server = state.servers.find((s) => s.id === g.server_id);
  const tools = Array.isArray(g.tools) ? g.tools.map(String) : null;
  const tokens = Array.isArray(g.tokens) ? g.tokens : [];
  return h(
    "tr",
    { class: ["grant", (revoked || expired) && "is-ended"], dataset: { grantId: String(g.id) } },
    h("td", null, h("span", { class: "grant-server" }, server ? String(server.name) : String(g.server_id ?? "")), " ", code(String(g.server_id ?? ""), "server-id")),
    h("td", null, h("span", { class: "badges" }, scopeBadges(g.scopes)), tools ? h("span", { class: "keys block" }, tools.map((t) => code(t))) : h("span", { class: "muted block" }, "all tools")),
    h("td", null, timeEl(g.last_used_ms)),
    h("td", null, `${tokens.length} live`, g.label ? h("span", { class: "muted block" }, String(g.label)) : null),
    h(
      "td",
      null,
      revoked ? badge("revoked", "muted") : expired ? badge("expired", "muted") : [h("span", { class: "muted" }, "until "), timeEl(g.expires_ms)],
    ),
    h("td", null, revoked || expired ? null : revokeButton(String(g.id), `Revoke the grant of ${client.name} for ${g.server_id}`, state, actions)),
  );
}

function clientCard(c, state, actions) {
  const grants = Array.isArray(c.grants) ? c.grants : [];
  const live = grants.filter((g) => g.revoked_ms === null || g.revoked_ms === undefined);
  const err = state.clientErrors.get(String(c.client_id));
  return h(
    "article",
    { class: "card client", dataset: { clientId: String(c.client_id) }, "aria-label": String(c.name) },
    h(
      "div",
      { class: "server-head" },
      h("div", { class: "server-title" }, h("h2", { class: "client-name" }, String(c.name ?? "unnamed client")), code(String(c.client_id ?? ""), "server-id")),
      badge(String(c.kind ?? "client"), c.kind === "cimd" ? "source" : "muted"),
      live.length ? revokeButton(String(c.client_id), `Revoke everything of ${c.name}`, state, actions) : null,
    ),
    h(
      "dl",
      { class: "rows" },
      Array.isArray(c.redirect_uris) && c.redirect_uris.length ? row("Redirects", h("span", { class: "keys" }, c.redirect_uris.map((u) => code(String(u))))) : null,
      row("Registered", timeEl(c.created_ms)),
    ),
    grants.length
      ? h(
          "table",
          { class: "grid" },
          h("caption", { class: "sr-only" }, `Grants of ${c.name}`),
          h("thead", null, h("tr", null, ["Server", "Allows", "Last use", "Tokens", "Expires", ""].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", null, grants.map((g) => grantRow(g, c, state, actions))),
        )
      : h("p", { class: "muted" }, "No grants: this client has not been approved for any server."),
    err ? errorNote(err) : null,
  );
}

function mintSection(state, actions) {
  const exposed = state.servers.filter((s) => s.exposed);
  const select = h(
    "select",
    { id: "mint-server", dataset: { focusKey: "mint-server" }, disabled: !exposed.length },
    exposed.map((s) => h("option", { value: String(s.id), selected: state.mintServer === s.id ? "selected" : null }, `${s.name} (${s.hostname || s.id})`)),
  );
  on(select, "change", () => {
    state.mintServer = select.value;
  });
  const btn = h("button", { type: "submit", class: "btn btn-small", disabled: !exposed.length || state.minting, dataset: { focusKey: "mint-btn" } }, state.minting ? "Minting…" : "Mint token");
  const form = h("form", { class: "mint-form" }, h("label", { for: "mint-server" }, "Server"), select, btn);
  on(form, "submit", (ev) => {
    ev.preventDefault();
    if (select.value) {
      actions.mint(select.value);
    }
  });
  const m = state.mintedHere;
  return h(
    "section",
    { class: "card", "aria-labelledby": "mint-title" },
    h("h2", { id: "mint-title" }, "Mint a token"),
    h("p", { class: "muted" }, "For a caller without a browser (a script, the Messages API): a bearer token for one server, valid 30 days, listed below as a client you can revoke."),
    exposed.length ? form : h("p", { class: "muted" }, "Expose a server first (Servers view)."),
    m
      ? h(
          "div",
          { class: "minted", role: "status" },
          h("p", { class: "warning" }, "Copy this token now: it is shown only once."),
          h("dl", { class: "rows" }, row("Token", code(String(m.token), "token minted-token"), copyButton("Copy", () => String(m.token), { ariaLabel: "Copy the minted token" })), row("Server", code(String(m.server_id))), row("Expires", timeEl(m.expires_ms))),
        )
      : null,
    state.mintError ? errorNote(state.mintError) : null,
  );
}

export function clientsView(state, actions) {
  const list = state.clients;
  let body;
  if (list === undefined) {
    actions.loadClients();
    body = h("p", { class: "muted" }, "Loading clients…");
  } else if (state.clientsError) {
    body = h("section", { class: "card" }, errorNote(state.clientsError));
  } else if (!list.length) {
    body = h("section", { class: "card" }, emptyState("No clients yet.", "OAuth clients appear here once they register or are approved; a minted token also shows up as a client."));
  } else {
    body = h("div", { class: "cards" }, list.map((c) => clientCard(c, state, actions)));
  }
  return h("div", { class: "view", dataset: { view: "clients" } }, viewHeader("Clients"), state.clientsError ? null : mintSection(state, actions), body);
}
