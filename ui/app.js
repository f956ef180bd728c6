// The Airlock web UI: login with the one-time code from `airlock ui`, then a live view of the
// agent driven by its event stream (GET /v1/events). Buildless ES modules, no inline code.

import { ApiError, api, subscribe } from "./api.js";
import { h, on, replace } from "./dom.js";
import { approvalsView } from "./views/approvals.js";
import { auditView } from "./views/audit.js";
import { clientsView } from "./views/clients.js";
import { relTime } from "./views/common.js";
import { hostnamesView } from "./views/hostnames.js";
import { sandboxView } from "./views/sandbox.js";
import { serversView } from "./views/servers.js";
import { tunnelView } from "./views/tunnel.js";

const VIEWS = [
  ["servers", "Servers"],
  ["hostnames", "Hostnames"],
  ["tunnel", "Tunnel"],
  ["approvals", "Approvals"],
  ["clients", "Clients"],
  ["sandbox", "Sandbox"],
  ["audit", "Audit"],
];

const state = {
  phase: "loading", // loading | login | ready
  loginMessage: null,
  status: null,
  servers: [],
  diagnostics: [],
  ca: undefined, // undefined: not fetched; null: no tunnel (404)
  caError: null,
  conn: "connecting", // connecting | live | reconnecting | closed
  globalError: null,
  errors: new Map(), // server id -> message from the API
  pending: new Set(), // server ids with a request in flight
  drafts: new Map(), // server id -> hostname being edited
  tokens: new Map(), // server id -> GET /url answer (fetched on demand only)
  revealed: new Set(),
  events: { hello: 0, servers_changed: 0, health: 0, oauth: 0, sandbox: 0, audit: 0 },
  // OAuth (undefined: not fetched yet; an error string when the agent does not offer it)
  approvals: undefined,
  oauthError: null,
  narrow: new Map(), // approval id -> Set of tool names unchecked
  narrowText: new Map(), // approval id -> typed tool list (when the client asked for all tools)
  confirmCodes: new Map(), // approval id -> confirmation code typed for a remote approval
  deciding: new Set(),
  approvalErrors: new Map(),
  lastDecision: null,
  clients: undefined,
  clientsError: null,
  clientErrors: new Map(),
  revoking: new Set(),
  mintServer: null,
  minting: false,
  mintedHere: null, // the token minted on the Clients view (shown once)
  mintError: null,
  minted: new Map(), // server id -> token minted for the Messages API snippet
  audit: undefined,
  auditError: null,
  auditFilter: { server: "", client: "", kind: "" },
  sandbox: undefined,
  sandboxError: null,
  sandboxBusy: false,
  sandboxLoading: null,
  sandboxReloadAgain: false,
  sandboxToggleError: null,
  caBusy: false,
  caConfirm: false, // the rotation's explanation is open
  caNote: null,
  caActionError: null,
  tokenBusy: false,
  tokenNote: null,
  tokenError: null,
  loginBusy: false,
  loginNote: null,
  loginError: null,
};

// Visible to tests and curious users; holds no secrets.
window.airlockUi = { events: state.events };

const root = document.getElementById("app");
let view = currentView();
let source = null;
let closedDelay = 1000;

function currentView() {
  const m = /^#\/([a-z]+)$/.exec(location.hash);
  return m && VIEWS.some(([k]) => k === m[1]) ? m[1] : "servers";
}

// ---------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------

let refreshing = null;
let refreshAgain = false;

async function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      try {
        const [status, servers] = await Promise.all([api.status(), api.servers()]);
        state.status = status;
        state.servers = Array.isArray(servers?.servers) ? servers.servers : [];
        state.diagnostics = Array.isArray(servers?.diagnostics) ? servers.diagnostics : [];
        state.globalError = null;
        state.phase = "ready";
        if (!source) {
          connectEvents(); // (re)subscribe after the stream was given up
        }
        loadApprovals();
        // Forget tokens of servers that are no longer exposed.
        for (const id of [...state.tokens.keys()]) {
          if (!state.servers.some((s) => s.id === id && s.exposed)) {
            state.tokens.delete(id);
            state.revealed.delete(id);
            state.minted.delete(id);
          }
        }
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
          showLogin(null);
          return;
        }
        state.globalError = err.message;
      }
    } while (refreshAgain);
    render();
  })();
  try {
    await refreshing;
  } finally {
    refreshing = null;
  }
}

function showLogin(message) {
  state.phase = "login";
  state.loginMessage = message;
  if (source) {
    source.close();
    source = null;
  }
  render();
}

function connectEvents() {
  if (source) {
    return;
  }
  source = subscribe(
    (ev) => {
      if (ev.type in state.events) {
        state.events[ev.type] += 1;
      }
      if (ev.type === "hello" || ev.type === "servers_changed") {
        refresh();
      } else if (ev.type === "oauth" && ev.event && typeof ev.event === "object") {
        onOauthEvent(ev.event);
      } else if (ev.type === "sandbox") {
        onSandboxEvent(ev);
      } else if (ev.type === "audit") {
        onAuditEvent();
      } else if (ev.type === "relay" && Array.isArray(ev.nodes) && state.status && state.status.relay) {
        // A relay connection changed state: the event carries every node, so update in place.
        const relay = state.status.relay;
        relay.nodes = ev.nodes.map((n, i) => ({ ...(relay.nodes?.[i] || {}), ...n }));
        relay.connected = ev.nodes.filter((n) => n && n.state === "connected").length;
        render();
      } else if (ev.type === "health" && typeof ev.id === "string") {
        const s = state.servers.find((x) => x.id === ev.id);
        if (s && ev.health && typeof ev.health === "object") {
          s.health = ev.health;
          render();
        } else {
          refresh();
        }
      }
    },
    (conn) => {
      state.conn = conn;
      if (conn === "live") {
        closedDelay = 1000;
      } else if (conn === "closed") {
        // The browser gave up (e.g. the agent restarted and our session is gone). Check why
        // after a growing delay: a 401 shows the login screen; otherwise refresh() subscribes
        // again (and reports the error if the agent is still away).
        if (source) {
          source.close();
        }
        source = null;
        setTimeout(refresh, closedDelay);
        closedDelay = Math.min(closedDelay * 2, 30000);
      }
      renderConn();
    },
  );
}

function apiMessage(err) {
  if (err instanceof ApiError && err.status === 404 && !(err.body && typeof err.body.error === "string")) {
    return "This agent does not offer this yet (the control API answered 404). Update Airlock and restart the agent.";
  }
  return err.message;
}

// Bumped by every live approval event. A list fetched while one arrived may predate it (the
// answer would drop a request that is pending, or bring back a decided one), so it is fetched again.
let approvalEpoch = 0;

async function loadApprovals() {
  try {
    let list;
    let epoch;
    let tries = 0;
    do {
      epoch = approvalEpoch;
      list = await api.approvals();
    } while (epoch !== approvalEpoch && ++tries < 5);
    state.approvals = Array.isArray(list) ? list.filter((a) => a && a.state !== "approved" && a.state !== "denied" && a.state !== "expired") : [];
    state.oauthError = null;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      showLogin(null);
      return;
    }
    state.approvals = state.approvals || [];
    state.oauthError = apiMessage(err);
  }
  render();
}

// Live OAuth events: approvals arrive and leave without a refetch; grant changes refetch the
// lists that are on screen.
function onOauthEvent(e) {
  if (e.type === "approval_pending" || e.type === "approval_decided" || e.type === "approval_expired") {
    approvalEpoch += 1;
  }
  switch (e.type) {
    case "approval_pending":
      if (e.approval && typeof e.approval === "object" && Array.isArray(state.approvals)) {
        if (!state.approvals.some((a) => a.id === e.approval.id)) {
          state.approvals.push(e.approval);
        }
        render();
      } else {
        loadApprovals();
      }
      break;
    case "approval_decided":
    case "approval_expired":
      if (Array.isArray(state.approvals)) {
        state.approvals = state.approvals.filter((a) => a.id !== e.id);
        state.narrow.delete(e.id);
        state.narrowText.delete(e.id);
        state.confirmCodes.delete(e.id);
        render();
      }
      break;
    default:
      break;
  }
  if (state.clients !== undefined) {
    actions.loadClients();
  }
  if (view === "audit") {
    actions.loadAudit();
  } else {
    state.audit = undefined; // fetched fresh on the next visit
  }
}

// New audit records: the agent coalesces these (about one a second); refetch the open Audit view once
// per burst, otherwise drop the cached list so the next visit fetches it.
let auditTimer = null;
function onAuditEvent() {
  if (view !== "audit") {
    state.audit = undefined;
    return;
  }
  clearTimeout(auditTimer);
  auditTimer = setTimeout(() => {
    auditTimer = null;
    if (view === "audit") {
      actions.loadAudit();
    }
  }, 250);
}

// Live worker state without refetching (GET /v1/sandbox probes the isolation each time).
function onSandboxEvent(ev) {
  const s = state.sandbox;
  if (!s || typeof s !== "object") {
    if (view === "sandbox") {
      actions.loadSandbox();
    }
    return;
  }
  const turnedOnOrOff = typeof ev.enabled === "boolean" && ev.enabled !== s.enabled;
  if (typeof ev.enabled === "boolean") s.enabled = ev.enabled;
  if (typeof ev.running === "boolean") s.running = ev.running;
  const w = s.worker && typeof s.worker === "object" ? s.worker : (s.worker = { recent: [] });
  for (const k of ["state", "current", "in_flight", "items_served", "last_error"]) {
    if (k in ev) w[k] = ev[k];
  }
  if (ev.last_call && typeof ev.last_call === "object") {
    const recent = Array.isArray(w.recent) ? w.recent : (w.recent = []);
    if (!recent.some((c) => c.tool_use_id === ev.last_call.tool_use_id)) {
      recent.push(ev.last_call);
      if (recent.length > 50) recent.shift();
    }
  }
  if ("last_error" in ev) s.last_error = ev.last_error;
  if (turnedOnOrOff || (ev.current && !(Array.isArray(s.sessions) && s.sessions.some((o) => o.session_id === ev.current.session_id)))) {
    actions.loadSandbox(); // sessions and configuration changed
  } else {
    render();
  }
}

const actions = {
  setDraft(id, value) {
    state.drafts.set(id, value);
    state.errors.delete(id);
    render();
  },
  setError(id, message) {
    state.errors.set(id, message);
    render();
  },
  async expose(id, hostname) {
    await mutate(id, () => api.expose(id, hostname));
  },
  async unexpose(id) {
    await mutate(id, () => api.unexpose(id));
  },
  async token(id) {
    try {
      const info = await api.url(id);
      state.tokens.set(id, info);
      return info;
    } catch (err) {
      state.errors.set(id, err.message);
      render();
      throw err;
    }
  },
  async reveal(id, show) {
    if (!show) {
      state.revealed.delete(id);
      state.tokens.delete(id);
      render();
      return;
    }
    await actions.token(id);
    state.revealed.add(id);
    render();
  },
  narrowTool(id, tool, checked) {
    const set = state.narrow.get(id) || new Set();
    if (checked) {
      set.delete(tool);
    } else {
      set.add(tool);
    }
    state.narrow.set(id, set);
    render();
  },
  narrowText(id, text) {
    state.narrowText.set(id, text);
    render();
  },
  confirmCode(id, text) {
    state.confirmCodes.set(id, text);
    render();
  },
  async decide(id, approve, tools) {
    const a = (state.approvals || []).find((x) => x.id === id);
    state.deciding.add(id);
    state.approvalErrors.delete(id);
    render();
    try {
      const confirm = a && a.remote ? (state.confirmCodes.get(id) || "").trim() : "";
      await (approve ? api.approve(id, tools, confirm || undefined) : api.deny(id));
      state.approvals = (state.approvals || []).filter((x) => x.id !== id);
      state.narrow.delete(id);
      state.narrowText.delete(id);
      state.confirmCodes.delete(id);
      if (a) {
        const srv = state.servers.find((x) => x.id === a.server_id);
        state.lastDecision = `${approve ? "Approved" : "Denied"}: ${a.client_name} for ${srv ? srv.name : a.server_name}${tools ? ` (${tools.length} tool${tools.length === 1 ? "" : "s"})` : ""}.`;
      }
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        showLogin(null);
        return;
      }
      state.approvalErrors.set(id, apiMessage(err));
    } finally {
      state.deciding.delete(id);
      render();
      // The decided card is gone: keep keyboard users in the list, not at the top of the page.
      if (!document.activeElement || document.activeElement === document.body) {
        const next = root.querySelector("article.approval .btn-primary") || root.querySelector(".view-title");
        if (next) {
          next.focus();
        }
      }
    }
  },
  async loadClients() {
    try {
      const list = await api.clients();
      state.clients = Array.isArray(list) ? list : [];
      state.clientsError = null;
    } catch (err) {
      state.clients = [];
      state.clientsError = apiMessage(err);
    }
    render();
  },
  async revoke(id) {
    state.revoking.add(id);
    render();
    try {
      await api.revoke(id);
      state.clientErrors.clear();
    } catch (err) {
      const owner = (state.clients || []).find((c) => c.client_id === id || (c.grants || []).some((g) => g.id === id));
      state.clientErrors.set(owner ? owner.client_id : id, apiMessage(err));
    } finally {
      state.revoking.delete(id);
      await actions.loadClients();
    }
  },
  async mint(serverId) {
    state.minting = true;
    state.mintError = null;
    state.mintedHere = null;
    render();
    try {
      state.mintedHere = await api.mint(serverId, "minted in the Airlock UI");
      state.mintServer = serverId;
    } catch (err) {
      state.mintError = apiMessage(err);
    } finally {
      state.minting = false;
      await actions.loadClients();
    }
  },
  async mintForSnippet(id) {
    try {
      const m = await api.mint(id, "Messages API snippet (Airlock UI)");
      state.minted.set(id, m);
      state.errors.delete(id);
    } catch (err) {
      state.errors.set(id, `Could not mint a token: ${apiMessage(err)}`);
    }
    render();
  },
  setAuditFilter(key, value) {
    state.auditFilter[key] = value;
    actions.loadAudit();
  },
  async loadAudit() {
    if (state.auditLoading) {
      state.auditAgain = true;
      return;
    }
    state.auditLoading = true;
    try {
      do {
        state.auditAgain = false;
        const f = state.auditFilter;
        try {
          const list = await api.audit({ server: f.server, client: f.client, kind: f.kind, limit: 200 });
          state.audit = Array.isArray(list) ? list : [];
          state.auditError = null;
        } catch (err) {
          state.audit = [];
          state.auditError = apiMessage(err);
        }
      } while (state.auditAgain);
      if (state.clients === undefined) {
        actions.loadClients(); // names for the client filter
      }
    } finally {
      state.auditLoading = false;
      render();
    }
  },
  async loadSandbox() {
    // A load asked for while one is in flight runs again once it ends: the answer in flight may predate
    // the change that asked (e.g. the switch's POST), and the last word must be the newest state.
    if (state.sandboxLoading) {
      state.sandboxReloadAgain = true;
      return state.sandboxLoading;
    }
    state.sandboxLoading = (async () => {
      do {
        state.sandboxReloadAgain = false;
        try {
          state.sandbox = (await api.sandbox()) || {};
          state.sandboxError = null;
        } catch (err) {
          state.sandbox = null;
          state.sandboxError = apiMessage(err);
        }
      } while (state.sandboxReloadAgain);
    })();
    try {
      await state.sandboxLoading;
    } finally {
      state.sandboxLoading = null;
      render();
    }
  },
  async setSandbox(enabled) {
    state.sandboxBusy = true;
    state.sandboxToggleError = null;
    render();
    try {
      const s = await api.setSandbox(enabled);
      if (s && typeof s === "object" && "enabled" in s) {
        state.sandbox = s;
      }
    } catch (err) {
      state.sandboxToggleError = apiMessage(err);
    } finally {
      state.sandboxBusy = false;
      await actions.loadSandbox();
    }
  },
  async caStep(step) {
    state.caBusy = true;
    state.caActionError = null;
    state.caNote = null;
    render();
    try {
      const r = step === "rotate" ? await api.rotateCa() : await api.activateCa();
      if (r && Array.isArray(r.cas)) {
        state.ca = { tunnel_domain: r.tunnel_domain, cas: r.cas };
        state.caError = null;
      }
      state.caConfirm = false;
      state.caNote =
        step === "rotate"
          ? "A new CA is pending. Register it beside the current one, then activate it."
          : "The new CA is active; the tunnel serves a certificate from it. Revoke the previous CA once traffic flows.";
    } catch (err) {
      state.caActionError = apiMessage(err);
    } finally {
      state.caBusy = false;
      await refresh();
    }
  },
  setCaConfirm(open) {
    state.caConfirm = open;
    state.caActionError = null;
    render();
  },
  async setTunnelToken(token) {
    state.tokenBusy = true;
    state.tokenError = null;
    state.tokenNote = null;
    render();
    try {
      const r = await api.setTunnelToken(token);
      state.tokenNote = `Stored in the ${r && r.keystore ? String(r.keystore) : ""} keystore.${r && r.cloudflared_restarted ? " cloudflared was (re)started with it." : " It is used once an Anthropic tunnel is configured."}`;
    } catch (err) {
      state.tokenError = apiMessage(err);
    } finally {
      state.tokenBusy = false;
      await refresh();
    }
  },
  async sandboxLogin(body) {
    state.loginBusy = true;
    state.loginError = null;
    state.loginNote = null;
    render();
    let ok = false;
    try {
      const s = await api.sandboxLogin(body);
      if (s && typeof s === "object" && "enabled" in s) {
        state.sandbox = s;
      }
      state.loginNote = "Environment saved; the key is in the keystore.";
      ok = true;
    } catch (err) {
      state.loginError = apiMessage(err);
    } finally {
      state.loginBusy = false;
      render();
    }
    return ok;
  },
  async refreshAll() {
    state.ca = undefined;
    await refresh();
  },
  async loadCa() {
    if (state.caLoading) {
      return;
    }
    state.caLoading = true;
    try {
      state.ca = await api.ca();
      state.caError = null;
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        state.ca = null;
      } else {
        state.ca = null;
        state.caError = err.message;
      }
    } finally {
      state.caLoading = false;
      render();
    }
  },
};

async function mutate(id, call) {
  state.pending.add(id);
  state.errors.delete(id);
  render();
  try {
    const server = await call();
    if (server && server.id) {
      const i = state.servers.findIndex((s) => s.id === server.id);
      if (i >= 0) {
        state.servers[i] = server;
      }
    }
    state.drafts.delete(id);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      showLogin(null);
      return;
    }
    state.errors.set(id, err.message);
  } finally {
    state.pending.delete(id);
    render();
  }
}

// ---------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------

function glyph() {
  const img = h("img", { class: "glyph", src: "/ui/glyph.svg", alt: "", width: "36", height: "36" });
  return img;
}

function renderConn() {
  const el = document.getElementById("conn");
  if (!el) {
    return;
  }
  const text = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", closed: "Disconnected" }[state.conn];
  el.textContent = text;
  el.className = `conn conn-${state.conn}`;
}

function nav() {
  return h(
    "nav",
    { class: "nav", "aria-label": "Sections" },
    h(
      "ul",
      null,
      VIEWS.map(([key, label]) =>
        h(
          "li",
          null,
          h(
            "a",
            { href: `#/${key}`, class: "nav-link", "aria-current": key === view ? "page" : null, dataset: { focusKey: `nav-${key}` } },
            label,
            key === "approvals" && state.approvals && state.approvals.length
              ? h("span", { class: "nav-count", "aria-label": `${state.approvals.length} pending` }, String(state.approvals.length))
              : null,
          ),
        ),
      ),
    ),
  );
}

function statusLine() {
  const st = state.status;
  if (!st) {
    return null;
  }
  return h(
    "p",
    { class: "status-line" },
    `Airlock ${st.version ?? ""}`,
    " · ",
    st.ready ? "ready" : "starting",
    st.gateway && st.gateway.url ? [" · gateway ", h("code", null, String(st.gateway.url))] : null,
  );
}

function viewNode() {
  switch (view) {
    case "servers":
      return serversView(state, actions);
    case "hostnames":
      return hostnamesView(state, actions);
    case "tunnel":
      return tunnelView(state, actions);
    case "approvals":
      return approvalsView(state, actions);
    case "clients":
      return clientsView(state, actions);
    case "audit":
      return auditView(state, actions);
    case "sandbox":
      return sandboxView(state, actions);
    default:
      return serversView(state, actions);
  }
}

function loginScreen() {
  return h(
    "main",
    { class: "login", id: "main" },
    h(
      "section",
      { class: "card login-card", "aria-labelledby": "login-title" },
      glyph(),
      h("h1", { id: "login-title" }, "Open Airlock with ", h("code", null, "airlock ui")),
      h("p", null, "This page needs a fresh sign-in link from the agent on this machine. In a terminal, run:"),
      h("pre", { class: "snippet" }, "airlock ui"),
      h("p", { class: "muted" }, "It opens this page with a one-time code (or prints the link with --print). Links work once and expire after two minutes."),
      state.loginMessage ? h("p", { class: "server-error", role: "alert" }, state.loginMessage) : null,
    ),
  );
}

function render() {
  if (state.phase === "loading") {
    replace(root, h("main", { class: "login", id: "main" }, h("p", { class: "muted" }, "Connecting to the Airlock agent…")));
    return;
  }
  if (state.phase === "login") {
    document.title = "Airlock — sign in";
    replace(root, loginScreen());
    return;
  }
  // Keep focus and the caret where they were across re-renders (live updates arrive any time).
  const active = document.activeElement;
  const focusKey = active && active.dataset ? active.dataset.focusKey : undefined;
  const sel = active && typeof active.selectionStart === "number" ? [active.selectionStart, active.selectionEnd] : null;
  const scroll = window.scrollY;

  const label = VIEWS.find(([k]) => k === view)?.[1] ?? "Airlock";
  document.title = `Airlock — ${label}`;
  replace(
    root,
    h(
      "div",
      { class: "layout" },
      h(
        "aside",
        { class: "sidebar" },
        h("div", { class: "brand" }, glyph(), h("span", { class: "brand-name" }, "Airlock")),
        nav(),
        h("p", { id: "conn", class: "conn", role: "status", "aria-live": "polite" }),
      ),
      h(
        "main",
        { id: "main", class: "content" },
        statusLine(),
        state.globalError ? h("p", { class: "banner-error", role: "alert" }, state.globalError, " ", retryButton()) : null,
        viewNode(),
      ),
    ),
  );
  renderConn();
  if (focusKey) {
    const el = root.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`);
    if (el) {
      el.focus({ preventScroll: true });
      if (sel && typeof el.setSelectionRange === "function") {
        try {
          el.setSelectionRange(sel[0], sel[1]);
        } catch {
          // not a text field
        }
      }
    }
  }
  window.scrollTo(0, scroll);
}

function retryButton() {
  const b = h("button", { type: "button", class: "btn btn-small" }, "Retry");
  on(b, "click", () => {
    connectEvents();
    refresh();
  });
  return b;
}

on(window, "hashchange", () => {
  if (!/^#\/[a-z]+$/.test(location.hash)) {
    return; // e.g. the skip link (#main)
  }
  const next = currentView();
  if (next === view || state.phase !== "ready") {
    view = next;
    return;
  }
  view = next;
  if (view === "tunnel") {
    state.ca = undefined; // fetch fresh certificates each visit
  }
  if (view === "clients" || view === "audit" || view === "sandbox") {
    // fetched fresh each visit; a minted token is not shown again
    state.clients = undefined;
    state.audit = undefined;
    state.sandbox = undefined;
    state.mintedHere = null;
  }
  render();
  const title = root.querySelector(".view-title");
  if (title) {
    title.focus();
  }
});

// ---------------------------------------------------------------------------------------
// Start: trade the one-time code (if any) for a session cookie, then go live.
// ---------------------------------------------------------------------------------------

async function start() {
  render();
  const m = /^#code=([^&]+)/.exec(location.hash);
  if (m) {
    // The code must not linger in the address bar, history or a screenshot.
    history.replaceState(null, "", `${location.pathname}${location.search}#/servers`);
    view = "servers";
    let code;
    try {
      code = decodeURIComponent(m[1]);
    } catch {
      code = m[1];
    }
    try {
      await api.login(code);
    } catch (err) {
      // Maybe this browser already has a session (e.g. the link was reloaded).
      try {
        await api.status();
      } catch {
        showLogin(err instanceof ApiError && err.status !== 0 ? err.message : "The Airlock agent is not reachable. Is it running?");
        return;
      }
    }
  }
  try {
    await api.status();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      showLogin(null);
    } else {
      showLogin(err.message);
    }
    return;
  }
  state.phase = "ready";
  await refresh();
}

// Relative times ("2 min ago") age in place; nothing is fetched.
setInterval(() => {
  for (const el of root.querySelectorAll("time[data-ms]")) {
    el.textContent = relTime(Number(el.dataset.ms));
  }
}, 15000);

start();
