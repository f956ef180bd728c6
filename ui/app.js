// The Airlock web UI: login with the one-time code from `airlock ui`, then a live view of the
// agent driven by its event stream (GET /v1/events). Buildless ES modules, no inline code.

import { ApiError, api, subscribe } from "./api.js";
import { h, on, replace } from "./dom.js";
import { hostnamesView } from "./views/hostnames.js";
import { placeholderView } from "./views/placeholder.js";
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
  events: { hello: 0, servers_changed: 0, health: 0 },
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
        // Forget tokens of servers that are no longer exposed.
        for (const id of [...state.tokens.keys()]) {
          if (!state.servers.some((s) => s.id === id && s.exposed)) {
            state.tokens.delete(id);
            state.revealed.delete(id);
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
        h("li", null, h("a", { href: `#/${key}`, class: "nav-link", "aria-current": key === view ? "page" : null, dataset: { focusKey: `nav-${key}` } }, label)),
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
    default:
      return placeholderView(view);
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

start();
