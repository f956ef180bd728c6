// Hostnames: how to reach each exposed server, with ready-to-paste lines. There is no shared token:
// MCP clients get one through OAuth (approved here, at the device); the Messages API snippet carries a
// token minted for that one server when the user asks for it (shown once).

import { h, on } from "../dom.js";
import { code, copyButton, emptyState, healthBadge, row, viewHeader } from "./common.js";

const NO_TOKEN = "<mint a token for this snippet>";

// Claude Code signs in with OAuth on its own: the approval shows up here and in the tray.
export function claudeCommand(name, url) {
  return `claude mcp add --transport http ${name} ${url}`;
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
  const name = String(server.hostname || server.name);
  const localUrl = String(server.url || "");
  const publicUrl = server.tunnel_url ? String(server.tunnel_url) : null;
  const snippetUrl = publicUrl || localUrl;
  const minted = state.minted.get(id);
  const snippetToken = minted ? String(minted.token) : NO_TOKEN;
  // Copying the snippet mints a token first when none was minted yet (the snippet is useless without one).
  const snippetForCopy = async () => {
    if (!state.minted.get(id)) await actions.mintForSnippet(id);
    const m = state.minted.get(id);
    if (!m) throw new Error("no token could be minted");
    return messagesSnippet(name, snippetUrl, String(m.token));
  };
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
    ),
    h("h3", null, "Claude Code"),
    h("pre", { class: "snippet claude-command" }, claudeCommand(name, localUrl)),
    copyButton("Copy command", async () => claudeCommand(name, localUrl), { ariaLabel: `Copy the claude mcp add command for ${server.name}` }),
    h("p", { class: "muted" }, "Claude Code signs in with OAuth: approve its request under Approvals (or in your browser)."),
    h("h3", null, "Messages API (MCP connector)"),
    publicUrl
      ? null
      : h("p", { class: "note" }, "The Messages API connects from Anthropic's cloud, so it needs the tunnel URL; without a tunnel this snippet only works for clients on this machine."),
    h("pre", { class: "snippet messages-snippet" }, messagesSnippet(name, snippetUrl, snippetToken)),
    h(
      "div",
      { class: "decide" },
      copyButton("Copy snippet", snippetForCopy, { ariaLabel: `Copy the Messages API snippet for ${server.name}` }),
      mintBtn,
    ),
    minted
      ? h("p", { class: "note", role: "status" }, "This snippet carries a token minted for this server only (30 days; revoke it under Clients). It is shown once: copy it now.")
      : h("p", { class: "muted" }, "The Messages API cannot sign in itself: mint a token for this server alone (Copy snippet mints one too)."),
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
