// Tunnel: how servers are reached from outside (Anthropic's MCP tunnel or the local gateway
// only), cloudflared's state, the tunnel CA to register, and where secrets are kept.

import { h, on } from "../dom.js";
import { badge, code, copyButton, row, viewHeader } from "./common.js";

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
    a ? h("section", { class: "card" }, h("h2", null, "Certificates to register"), h("p", { class: "muted" }, "Register these in the Console under MCP tunnels › Certificates."), caSection(state, actions)) : null,
    h(
      "section",
      { class: "card" },
      h("h2", null, "Secrets"),
      h(
        "dl",
        { class: "rows" },
        row("Keystore", keystore === "file" ? badge("file", "warn") : badge(keystore, keystore === "keychain" ? "ok" : "muted")),
      ),
      keystore === "file"
        ? h("p", { class: "warning", role: "note" }, "Secrets (the gateway token, CA keys, the tunnel token) are kept in 0600 files under AIRLOCK_HOME/secrets, not in the OS keychain: anything running as you can read them. Use --keystore keychain (or [keystore] backend = \"keychain\") where a keychain is available.")
        : null,
    ),
  );
}
