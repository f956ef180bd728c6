// The control API, as the browser sees it: same origin, authenticated by the session cookie
// that POST /v1/session sets. No token ever reaches this page except a server's bearer token
// the user explicitly asks for (GET /v1/servers/{id}/url) or mints (POST /v1/tokens, shown
// once), and nothing is stored.

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

async function request(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "The Airlock agent is not reachable. Is `airlock up` (or the tray app) running?", null);
  }
  let data = null;
  const text = await resp.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!resp.ok) {
    const msg = data && typeof data.error === "string" ? data.error : `${method} ${path}: HTTP ${resp.status}`;
    throw new ApiError(resp.status, msg, data);
  }
  return data;
}

export const api = {
  login: (code) => request("POST", "/v1/session", { code }),
  status: () => request("GET", "/v1/status"),
  servers: () => request("GET", "/v1/servers"),
  expose: (id, hostname) => request("POST", `/v1/servers/${encodeURIComponent(id)}/expose`, hostname ? { hostname } : {}),
  unexpose: (id) => request("POST", `/v1/servers/${encodeURIComponent(id)}/unexpose`, {}),
  url: (id) => request("GET", `/v1/servers/${encodeURIComponent(id)}/url`),
  ca: () => request("GET", "/v1/ca"),
  reloadPki: () => request("POST", "/v1/pki/reload", {}),
  rotateCa: () => request("POST", "/v1/pki/rotate", {}),
  activateCa: () => request("POST", "/v1/pki/activate", {}),
  // Secrets go out once and never come back: the answers only say they are stored.
  setTunnelToken: (token) => request("POST", "/v1/tunnel/token", { token }),
  sandboxLogin: (body) => request("POST", "/v1/sandbox/login", body),
  approvals: () => request("GET", "/v1/approvals"),
  // `code`: the confirmation code a remote approval's page shows (required for those).
  approve: (id, tools, code) =>
    request("POST", `/v1/approvals/${encodeURIComponent(id)}/approve`, { ...(tools ? { tools } : {}), ...(code ? { code } : {}) }),
  deny: (id) => request("POST", `/v1/approvals/${encodeURIComponent(id)}/deny`, {}),
  clients: () => request("GET", "/v1/clients"),
  revoke: (id) => request("POST", "/v1/revoke", { id }),
  mint: (serverId, label) => request("POST", "/v1/tokens", { server_id: serverId, label }),
  audit: (filter) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filter || {})) {
      if (v !== undefined && v !== null && v !== "") {
        q.set(k, String(v));
      }
    }
    const qs = q.toString();
    return request("GET", `/v1/audit${qs ? `?${qs}` : ""}`);
  },
  sandbox: () => request("GET", "/v1/sandbox"),
  setSandbox: (enabled) => request("POST", "/v1/sandbox", { enabled }),
};

/**
 * Subscribes to GET /v1/events. `onEvent(obj)` gets every JSON event; `onState(s)` gets
 * "live", "reconnecting" or "closed". EventSource reconnects by itself; when it gives up
 * (e.g. the session was refused) `onState("closed")` lets the app decide.
 */
export function subscribe(onEvent, onState) {
  const es = new EventSource("/v1/events");
  es.addEventListener("open", () => onState("live"));
  es.addEventListener("message", (ev) => {
    let obj;
    try {
      obj = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (obj && typeof obj.type === "string") {
      onEvent(obj);
    }
  });
  es.addEventListener("error", () => {
    onState(es.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  });
  return es;
}
