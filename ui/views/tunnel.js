// Tunnel: how servers are reached from outside (the embedded relay, Airlock relay nodes, Anthropic's
// MCP tunnel, or the local gateway only), each connection's state, cloudflared's state, the tunnel CA
// to register or trust, and where secrets are kept.

import { h, on } from "../dom.js";
import { badge, code, copyButton, errorNote, row, viewHeader } from "./common.js";

// The token being typed lives here only until it is sent (re-renders rebuild the form); never in state,
// never rendered as an attribute.
let tokenDraft = "";

function cloudflared(cf) {
  if (!cf) {
    return h("span", null, badge("no token", "muted"), " No tunnel token stored: ", code("airlock tunnel set-token < token.txt"));
  }
  switch (cf.state) {
    case "running":
      return badge(`running · ${cf.connections ?? 0} connection${cf.connections === 1 ? "" : "s"}`, "ok", cf.pid ? `pid ${cf.pid}` : undefined);
    case "not_installed":
      return h("span", null, badge("not installed", "bad"), " ", cf.hint ? String(cf.hint) : "Install cloudflared (apt install cloudflared or brew install cloudflared).");
    case "backoff": {
      const when = cf.retry_at_unix_ms ? new Date(Number(cf.retry_at_unix_ms)).toLocaleTimeString() : "soon";
      return h(
        "span",
        null,
        badge(`backing off · attempt ${cf.attempt ?? "?"}`, "warn"),
        ` retrying at ${when}`,
        cf.last_error ? h("span", { class: "block" }, code(String(cf.last_error))) : null,
      );
    }
    case "starting":
      return badge("starting", "warn");
    case "stopped":
      return badge("stopped", "muted");
    default:
      return badge(String(cf.state ?? "unknown"), "muted");
  }
}

function download(pem, filename) {
  const a = h("button", { type: "button", class: "btn btn-small", "aria-label": `Download ${filename}` }, "Download");
  on(a, "click", () => {
    const url = URL.createObjectURL(new Blob([pem], { type: "application/x-pem-file" }));
    const tmp = h("a", { href: url, download: filename, hidden: true });
    document.body.appendChild(tmp);
    tmp.click();
    tmp.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });
  return a;
}

function caSection(state, actions) {
  if (state.ca === undefined) {
    actions.loadCa();
    return h("p", { class: "muted" }, "Loading certificates…");
  }
  if (state.caError) {
    return h("p", { class: "server-error", role: "alert" }, state.caError);
  }
  if (state.ca === null) {
    return h("p", { class: "muted" }, "No tunnel is configured, so there is no tunnel CA.");
  }
  const cas = Array.isArray(state.ca.cas) ? state.ca.cas : [];
  if (!cas.length) {
    return h("p", { class: "muted" }, "No CA has been created for this tunnel domain yet; it is created when the agent starts the tunnel.");
  }
  return h(
    "div",
    { class: "cas" },
    rotation(state, actions, cas),
    cas.map((ca) => {
      const role = String(ca.role ?? "ca");
      const pem = String(ca.pem ?? "");
      return h(
        "div",
        { class: "ca" },
        h("h3", null, badge(role, role === "active" ? "ok" : "info"), " CA certificate"),
        h(
          "dl",
          { class: "rows" },
          row("Fingerprint", code(String(ca.fingerprint ?? ""), "fingerprint"), copyButton("Copy", () => String(ca.fingerprint ?? ""), { ariaLabel: `Copy the ${role} CA fingerprint` })),
          ca.not_after ? row("Valid until", String(ca.not_after)) : null,
          row("PEM", h("span", null, copyButton("Copy PEM", () => pem, { ariaLabel: `Copy the ${role} CA certificate` }), " ", download(pem, `airlock-ca-${role}.pem`))),
        ),
      );
    }),
  );
}

// CA rotation in two phases, as `airlock ca rotate` / `airlock ca activate`: a confirm step explains them.
function rotation(state, actions, cas) {
  const pending = cas.some((c) => c.role === "pending");
  const busy = Boolean(state.caBusy);
  const parts = [];
  if (pending) {
    const act = h("button", { type: "button", class: "btn", disabled: busy, dataset: { focusKey: "ca-activate", action: "ca-activate" } }, busy ? "Working…" : "Activate the pending CA");
    on(act, "click", () => actions.caStep("activate"));
    parts.push(
      h("p", { class: "note" }, "A rotation is pending. Once the pending CA is registered (or trusted by your clients), activate it: the tunnel then serves a certificate signed by it."),
      h("p", null, act),
    );
  } else if (state.caConfirm) {
    const go = h("button", { type: "button", class: "btn", disabled: busy, dataset: { focusKey: "ca-rotate-confirm", action: "ca-rotate-confirm" } }, busy ? "Working…" : "Create the next CA");
    on(go, "click", () => actions.caStep("rotate"));
    const cancel = h("button", { type: "button", class: "btn btn-small", disabled: busy, dataset: { focusKey: "ca-rotate-cancel" } }, "Cancel");
    on(cancel, "click", () => actions.setCaConfirm(false));
    parts.push(
      h(
        "div",
        { class: "confirm", role: "group", "aria-label": "Rotate the CA" },
        h("p", null, "Rotation has two phases. 1. A new CA is created now; it signs nothing yet, and the current CA keeps serving. Register the new one beside the current one (the Console allows two) or add it to your clients' trust. 2. Activate it: the tunnel then serves a certificate signed by it. Keep the previous CA registered until traffic flows with the new one."),
        h("p", null, go, " ", cancel),
      ),
    );
  } else {
    const rot = h("button", { type: "button", class: "btn", disabled: busy, dataset: { focusKey: "ca-rotate", action: "ca-rotate" } }, "Rotate CA…");
    on(rot, "click", () => actions.setCaConfirm(true));
    parts.push(h("p", null, rot));
  }
  if (state.caNote) {
    parts.push(h("p", { class: "note", role: "status" }, state.caNote));
  }
  if (state.caActionError) {
    parts.push(errorNote(state.caActionError));
  }
  return h("div", { class: "ca-rotation" }, parts);
}

// cloudflared's token: a password field, sent once, cleared after submit, never shown back.
function tokenForm(state, actions) {
  const input = h("input", {
    type: "password",
    id: "cloudflared-token",
    name: "cloudflared-token",
    autocomplete: "off",
    spellcheck: "false",
    value: tokenDraft,
    disabled: state.tokenBusy,
    dataset: { focusKey: "cloudflared-token" },
  });
  on(input, "input", () => {
    tokenDraft = input.value;
  });
  const submit = h("button", { type: "submit", class: "btn", disabled: state.tokenBusy }, state.tokenBusy ? "Saving…" : "Save token");
  const form = h(
    "form",
    { class: "token-form", "aria-label": "cloudflared tunnel token" },
    h("label", { for: "cloudflared-token" }, "cloudflared tunnel token"),
    " ",
    input,
    " ",
    submit,
  );
  on(form, "submit", (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    tokenDraft = "";
    input.value = "";
    if (!token) {
      return;
    }
    actions.setTunnelToken(token);
  });
  return h(
    "div",
    null,
    form,
    h("p", { class: "muted" }, "From the Console's MCP tunnel page. It goes to the keystore and is never shown again."),
    state.tokenNote ? h("p", { class: "note", role: "status" }, state.tokenNote) : null,
    state.tokenError ? errorNote(state.tokenError) : null,
  );
}

function relayNode(node) {
  const addr = String(node.addr ?? "");
  const pin = node.pinned ? badge("key pinned", "ok") : badge("key not pinned", "warn", "Run airlock tunnel login with --relay-fingerprint");
  let state;
  switch (node.state) {
    case "connected": {
      const since = node.since ? new Date(Number(node.since)).toLocaleTimeString() : "";
      state = h("span", null, badge("connected", "ok"), since ? ` since ${since}` : "");
      break;
    }
    case "connecting":
      state = badge("connecting", "warn");
      break;
    case "backoff": {
      const until = node.until ? new Date(Number(node.until)).toLocaleTimeString() : "soon";
      state = h(
        "span",
        null,
        badge(`backing off · attempt ${node.attempt ?? "?"}`, "bad"),
        ` next try at ${until}`,
        node.last_error ? h("span", { class: "block" }, code(String(node.last_error))) : null,
      );
      break;
    }
    default:
      state = badge(String(node.state ?? "unknown"), "muted");
  }
  return row(code(addr), h("span", null, state, " ", pin));
}

function relaySection(relay) {
  const nodes = Array.isArray(relay.nodes) ? relay.nodes : [];
  const embedded = relay.mode === "embedded";
  return h(
    "section",
    { class: "card", dataset: { section: "relay" } },
    h("h2", null, embedded ? "Embedded relay" : "Airlock relay"),
    h(
      "p",
      { class: "muted" },
      embedded
        ? "No relay or tunnel is configured, so the agent runs a relay on loopback: every exposed server has an https://127.0.0.1 URL that works on this machine, through the same inner TLS a remote relay would carry."
        : "The agent keeps an outbound connection to every relay node; the relay routes by TLS server name and never sees inside the inner TLS.",
    ),
    h(
      "dl",
      { class: "rows" },
      row("Tunnel domain", relay.tunnel_domain ? code(String(relay.tunnel_domain)) : h("span", { class: "muted" }, "not assigned yet")),
      relay.public_port ? row("Public port", code(String(relay.public_port))) : null,
      row("Connected", `${Number(relay.connected ?? 0)} of ${nodes.length} node${nodes.length === 1 ? "" : "s"}`),
      relay.ca_fingerprint
        ? row("CA fingerprint", code(String(relay.ca_fingerprint), "fingerprint"), copyButton("Copy", () => String(relay.ca_fingerprint), { ariaLabel: "Copy the relay CA fingerprint" }))
        : null,
      relay.ca_file ? row("CA file", code(String(relay.ca_file)), copyButton("Copy", () => String(relay.ca_file), { ariaLabel: "Copy the CA file path" })) : null,
    ),
    h("p", { class: "muted" }, "Relay URLs are trusted only by clients that trust this CA."),
    nodes.length ? h("h3", null, "Nodes") : null,
    nodes.length ? h("dl", { class: "rows" }, nodes.map(relayNode)) : null,
  );
}

// cloudflared's state has no event of its own (only server changes are pushed), so this view
// offers an explicit refresh instead of polling.
function refreshButton(actions) {
  const b = h("button", { type: "button", class: "btn btn-small", dataset: { focusKey: "tunnel-refresh" } }, "Refresh");
  on(b, "click", () => actions.refreshAll());
  return b;
}

export function tunnelView(state, actions) {
  const st = state.status || {};
  const a = st.anthropic;
  const relay = st.relay && typeof st.relay === "object" ? st.relay : null;
  const keystore = String(st.keystore ?? "unknown");
  return h(
    "div",
    { class: "view", dataset: { view: "tunnel" } },
    viewHeader("Tunnel", refreshButton(actions)),
    h(
      "section",
      { class: "card" },
      h("h2", null, "Mode"),
      a
        ? h("p", { class: "mode" }, badge("Anthropic tunnel", "ok"), " Exposed servers are reachable as subdomains of the tunnel domain; inner TLS ends on this machine.")
        : relay
          ? h(
              "p",
              { class: "mode" },
              relay.mode === "embedded" ? badge("Embedded relay", "ok") : badge("Airlock relay", "ok"),
              relay.mode === "embedded"
                ? " Exposed servers answer on https://127.0.0.1 URLs through a relay on this machine; no account needed."
                : " Exposed servers are reachable as subdomains of the relay's tunnel domain; inner TLS ends on this machine.",
            )
          : h(
            "div",
            null,
            h("p", { class: "mode" }, badge("Local gateway only", "muted"), " Exposed servers answer on 127.0.0.1 only."),
            h("p", { class: "muted" }, "To reach them from Anthropic's cloud, configure an MCP tunnel: ", code("airlock tunnel import-config config.yaml"), " then restart the agent."),
          ),
      h(
        "dl",
        { class: "rows" },
        st.gateway && st.gateway.url ? row("Gateway", code(String(st.gateway.url), "url")) : null,
        a ? row("Tunnel domain", code(String(a.tunnel_domain ?? ""))) : null,
        a ? row("Listen address", code(String(a.listen_addr ?? ""))) : null,
        a ? row("cloudflared", cloudflared(a.cloudflared)) : null,
        a && a.ca_fingerprint
          ? row("CA fingerprint", code(String(a.ca_fingerprint), "fingerprint"), copyButton("Copy", () => String(a.ca_fingerprint), { ariaLabel: "Copy the CA fingerprint" }))
          : null,
      ),
    ),
    relay ? relaySection(relay) : null,
    a || (relay && relay.tunnel_domain)
      ? h(
          "section",
          { class: "card", dataset: { section: "ca" } },
          h("h2", null, a ? "Certificates to register" : "Certificates to trust"),
          h("p", { class: "muted" }, a ? "Register these in the Console under MCP tunnels › Certificates." : "Clients of the relay URLs trust these CAs."),
          caSection(state, actions),
        )
      : null,
    h(
      "section",
      { class: "card" },
      h("h2", null, "Secrets"),
      h(
        "dl",
        { class: "rows" },
        row("Keystore", keystore === "file" ? badge("file", "warn") : badge(keystore, keystore === "keychain" ? "ok" : "muted")),
        row("cloudflared token", st.cloudflared_token_stored ? badge("stored", "ok") : badge("none", "muted")),
      ),
      tokenForm(state, actions),
      keystore === "file"
        ? h("p", { class: "warning", role: "note" }, "Secrets (CA keys, the tunnel and relay tokens, the relay identity key, the environment key) are kept in 0600 files under AIRLOCK_HOME/secrets, not in the OS keychain: anything running as you can read them. Use --keystore keychain (or [keystore] backend = \"keychain\") where a keychain is available.")
        : null,
    ),
  );
}
