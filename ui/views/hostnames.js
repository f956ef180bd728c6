// Hostnames: how to reach each exposed server, with ready-to-paste lines. The bearer token is
// fetched only when the user asks for it (Show or one of the Copy buttons that need it).

import { h, on } from "../dom.js";
import { code, copyButton, emptyState, healthBadge, row, viewHeader } from "./common.js";

const HIDDEN = "••••••••";

export function claudeCommand(name, url, token) {
  return `claude mcp add --transport http ${name} ${url} --header "Authorization: Bearer ${token}"`;
}

export function messagesSnippet(name, url, token) {
  return JSON.stringify(
    {
      mcp_servers: [{ type: "url", url, name, authorization_token: token }],
      tools: [{ type: "mcp_toolset", mcp_server_name: name }],
    },
    null,
    2,
  );
}

function card(server, state, actions) {
  const id = server.id;
  const info = state.tokens.get(id);
  const shown = state.revealed.has(id) && info;
  const name = String(server.hostname || server.name);
  const localUrl = String(server.url || "");
  const publicUrl = server.tunnel_url ? String(server.tunnel_url) : null;
  const token = () => actions.token(id).then((i) => String(i.bearer_token));
  const tokenText = shown ? String(info.bearer_token) : HIDDEN;

  const toggle = h("button", { type: "button", class: "btn btn-small", "aria-pressed": shown ? "true" : "false", dataset: { focusKey: `show-${id}` } }, shown ? "Hide" : "Show");
  on(toggle, "click", () => actions.reveal(id, !shown));

  const snippetUrl = publicUrl || localUrl;
  const minted = state.minted.get(id);
  const snippetToken = minted ? String(minted.token) : tokenText;
  const mintBtn = h(
    "button",
    { type: "button", class: "btn btn-small", dataset: { focusKey: `mint-${id}` }, "aria-label": `Mint a token for the Messages API snippet of ${server.name}` },
    minted ? "Mint another token" : "Mint a token for this snippet",
  );
  on(mintBtn, "click", () => actions.mintForSnippet(id));
  return h(
    "article",
    { class: "card hostname-card", dataset: { serverId: id }, "aria-label": server.name },
    h(
      "div",
      { class: "server-head" },
      h("div", { class: "server-title" }, h("h2", { class: "server-name" }, server.name), code(name, "server-id")),
      healthBadge(server),
    ),
    h(
      "dl",
      { class: "rows" },
      row("Local URL", code(localUrl, "url local-url"), copyButton("Copy", () => localUrl, { ariaLabel: `Copy the local URL of ${server.name}` })),
      publicUrl
        ? row("Tunnel URL", code(publicUrl, "url tunnel-url"), copyButton("Copy", () => publicUrl, { ariaLabel: `Copy the tunnel URL of ${server.name}` }))
        : null,
      row("Bearer token", code(tokenText, "token"), toggle, copyButton("Copy", token, { ariaLabel: `Copy the bearer token of ${server.name}` })),
    ),
    h("h3", null, "Claude Code"),
    h("pre", { class: "snippet claude-command" }, claudeCommand(name, localUrl, tokenText)),
    copyButton("Copy command", async () => claudeCommand(name, localUrl, await token()), { ariaLabel: `Copy the claude mcp add command for ${server.name}` }),
    h("h3", null, "Messages API (MCP connector)"),
    publicUrl
      ? null
      : h("p", { class: "note" }, "The Messages API connects from Anthropic's cloud, so it needs the tunnel URL; without a tunnel this snippet only works for clients on this machine."),
    h("pre", { class: "snippet messages-snippet" }, messagesSnippet(name, snippetUrl, snippetToken)),
    h(
      "div",
      { class: "decide" },
      copyButton("Copy snippet", async () => messagesSnippet(name, snippetUrl, minted ? String(minted.token) : await token()), { ariaLabel: `Copy the Messages API snippet for ${server.name}` }),
      mintBtn,
    ),
    minted
      ? h("p", { class: "note", role: "status" }, "This snippet carries a token minted for this server only (30 days; revoke it under Clients). It is shown once: copy it now.")
      : h("p", { class: "muted" }, "The snippet uses the gateway token until you mint a token for this server alone."),
    state.errors.get(id) ? h("p", { class: "server-error", role: "alert" }, state.errors.get(id)) : null,
  );
}

export function hostnamesView(state, actions) {
  const exposed = state.servers.filter((s) => s.exposed).sort((a, b) => String(a.hostname).localeCompare(String(b.hostname)));
  return h(
    "div",
    { class: "view", dataset: { view: "hostnames" } },
    viewHeader("Hostnames", h("p", { class: "muted" }, "Where each exposed server answers, and how to connect a client to it.")),
    exposed.length
      ? h("div", { class: "cards" }, exposed.map((s) => card(s, state, actions)))
      : emptyState("No server is exposed yet.", "Turn on Expose for a server under Servers; its URLs and connection snippets appear here."),
  );
}
