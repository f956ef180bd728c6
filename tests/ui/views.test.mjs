// Drives the Approvals, Clients, Audit, Hostnames (minted token) and Sandbox views of the
// Airlock web UI in Debian's headless Chromium with playwright-core, against a real agent.
//
//   node tests/ui/views.test.mjs <login url from `airlock ui --print`> [--server NAME] \
//        [--client-name NAME] [--sandbox] [--out DIR]
//
// NAME is an exposed server (its name may be markup). The script is the OAuth client: it
// discovers the authorization server from the server's 401, registers dynamically under
// --client-name, opens the loopback authorize URL with PKCE (a pending approval), and the
// person approves it by clicking in the UI; the status URL must then redirect with a code,
// which is exchanged for a token that works on the server. A second request is denied by
// clicking (the redirect carries access_denied). The Clients view lists the grant, mints a
// token (shown once, it works) and revokes the grant (its token stops working); Audit filters
// by kind; Hostnames mints a token for the Messages API snippet (it works). With --sandbox,
// the sandbox switch is clicked and GET /v1/sandbox must follow. Every name stays text: no
// element is created from it and nothing runs. Screenshots go to DIR (default
// tests/artifacts/ui-views). The last stdout line is a JSON summary; non-zero exit on failure.

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { finish, launchBrowser, requireChromium, steps, watchConsole } from "./lib.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opts = { url: null, server: null, clientName: "Test client", sandbox: false, out: path.resolve(here, "../artifacts/ui-views") };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--server") opts.server = args[++i];
  else if (a === "--client-name") opts.clientName = args[++i];
  else if (a === "--sandbox") opts.sandbox = true;
  else if (a === "--queue") opts.queue = args[++i];
  else if (a === "--environment-id") opts.envId = args[++i];
  else if (a === "--out") opts.out = path.resolve(args[++i]);
  else if (!opts.url) opts.url = a;
  else {
    console.error(`unexpected argument ${a}`);
    process.exit(2);
  }
}
if (!opts.url || !/#code=/.test(opts.url) || !(opts.server || opts.sandbox)) {
  console.error("usage: views.test.mjs <http://127.0.0.1:PORT/#code=…> --server NAME [--client-name NAME] [--sandbox] [--out DIR]");
  process.exit(2);
}
const STEP_TIMEOUT = 30_000;
const REDIRECT = "http://127.0.0.1:9/callback";

const summary = {
  ok: false,
  failures: [],
  resource: null,
  issuer: null,
  approval_seen: null,
  approved_redirect: null,
  token_works: null,
  denied_redirect: null,
  client_listed: null,
  minted_token_works: null,
  revoked_token_refused: null,
  audit_kinds: [],
  audit_filtered_kinds: [],
  snippet_token_works: null,
  sandbox: null,
  names_inert: {},
  window_xss: null,
  screenshots: [],
  console_errors: [],
};

const { fail, check, step } = steps(summary);
function watch(page, label) {
  watchConsole(page, summary, { label, expectedStatuses: [401, 409] });
}

// --- the OAuth client (plain fetch, no browser) -----------------------------------------------

const b64url = (buf) => Buffer.from(buf).toString("base64").replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

async function mcpStatus(resource, token) {
  const headers = { "Content-Type": "application/json", Accept: "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const body = { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "ui-views-test", version: "1" } } };
  const r = await fetch(resource, { method: "POST", headers, body: JSON.stringify(body), redirect: "manual" });
  await r.arrayBuffer();
  return r;
}

async function discover(resource) {
  const r = await mcpStatus(resource, null);
  if (r.status !== 401) throw new Error(`an unauthenticated initialize must get 401, got ${r.status}`);
  const www = r.headers.get("www-authenticate") || "";
  const m = /resource_metadata="([^"]+)"/.exec(www);
  if (!m) throw new Error(`no resource_metadata in WWW-Authenticate: ${www}`);
  const prm = await (await fetch(m[1])).json();
  const issuer = prm.authorization_servers && prm.authorization_servers[0];
  if (!issuer) throw new Error(`no authorization server in ${JSON.stringify(prm)}`);
  const iu = new URL(issuer);
  const candidates = [`${iu.origin}/.well-known/oauth-authorization-server${iu.pathname.replace(/\/$/, "")}`, `${issuer.replace(/\/$/, "")}/.well-known/oauth-authorization-server`];
  for (const c of candidates) {
    const md = await fetch(c);
    if (md.ok) return { issuer, md: await md.json() };
  }
  throw new Error(`no authorization server metadata at ${candidates.join(" or ")}`);
}

async function register(md, name) {
  const r = await fetch(md.registration_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ client_name: name, redirect_uris: [REDIRECT], grant_types: ["authorization_code", "refresh_token"], response_types: ["code"], token_endpoint_auth_method: "none" }),
  });
  const body = await r.json();
  if (r.status !== 201 || !body.client_id) throw new Error(`registration: HTTP ${r.status} ${JSON.stringify(body)}`);
  return body.client_id;
}

/** Opens the authorize URL the way a browser would; returns what the status URL needs. */
async function startAuthorize(md, clientId, resource, state) {
  const verifier = b64url(crypto.randomBytes(32));
  const challenge = b64url(crypto.createHash("sha256").update(verifier).digest());
  const q = new URLSearchParams({ response_type: "code", client_id: clientId, redirect_uri: REDIRECT, code_challenge: challenge, code_challenge_method: "S256", state, resource, scope: "mcp:read mcp:call" });
  const url = `${md.authorization_endpoint}?${q}`;
  const r = await fetch(url, { redirect: "manual" });
  const html = await r.text();
  if (r.status !== 200) throw new Error(`authorize: HTTP ${r.status} ${html.slice(0, 300)}`);
  const action = /<form method="post" action="([^"]+)"/.exec(html);
  if (!action) throw new Error(`the authorize page has no decision form: ${html.slice(0, 300)}`);
  const ticket = action[1].split("/").pop();
  const cookies = (r.headers.getSetCookie ? r.headers.getSetCookie() : [r.headers.get("set-cookie")]).filter(Boolean).map((c) => c.split(";")[0]);
  const statusUrl = new URL(`/_airlock/oauth/status/${ticket}`, md.authorization_endpoint).toString();
  return { verifier, statusUrl, cookie: cookies.join("; ") };
}

/** Follows the status URL until it redirects (the page refreshes itself while pending). */
async function awaitRedirect(flow, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await fetch(flow.statusUrl, { redirect: "manual", headers: flow.cookie ? { Cookie: flow.cookie } : {} });
    await r.arrayBuffer();
    const loc = r.headers.get("location");
    if (r.status >= 300 && r.status < 400 && loc) return new URL(loc);
    if (Date.now() > deadline) throw new Error(`the status URL still answers ${r.status} without a redirect`);
    await new Promise((res) => setTimeout(res, 250));
  }
}

async function exchange(md, clientId, code, verifier, resource) {
  const r = await fetch(md.token_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ grant_type: "authorization_code", code, redirect_uri: REDIRECT, client_id: clientId, code_verifier: verifier, resource }),
  });
  const body = await r.json();
  if (!r.ok || !body.access_token) throw new Error(`token exchange: HTTP ${r.status} ${JSON.stringify(body)}`);
  return body.access_token;
}

// --- a Managed Agents session on the local work queue (`airlock relay --api`) ----------------

async function queueCall(method, p, body) {
  const r = await fetch(`${opts.queue}${p}`, {
    method,
    headers: {
      "x-api-key": process.env.AIRLOCK_TEST_QUEUE_API_KEY || "",
      "anthropic-version": "2023-06-01",
      "anthropic-beta": "managed-agents-2026-04-01",
      "content-type": "application/json",
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const v = await r.json().catch(() => null);
  if (!r.ok) throw new Error(`${method} ${p}: HTTP ${r.status} ${JSON.stringify(v)}`);
  return v;
}

/** Starts a session with two bash calls and watches the Sandbox view show it live. */
async function runSession(page) {
  const s = await queueCall("POST", "/v1/sessions", { agent: "scripted", environment_id: opts.envId });
  const sid = s.id;
  await queueCall("POST", `/v1/sessions/${sid}/events`, {
    events: [
      { type: "agent.tool_use", name: "bash", input: { command: "sleep 3; echo slow" } },
      { type: "agent.tool_use", name: "bash", input: { command: "echo quick" } },
    ],
  });
  const out = { session_id: sid, current_shown: false, in_flight_shown: false, recent_rows: 0 };
  await page.locator("code.session-id", { hasText: sid }).first().waitFor({ timeout: 60_000 });
  out.current_shown = true;
  await page.locator("ul.calls li.call", { hasText: "bash" }).first().waitFor({ timeout: 60_000 });
  out.in_flight_shown = true;
  await page.waitForFunction(() => document.querySelectorAll("tr.call").length >= 2, null, { timeout: 60_000 });
  out.recent_rows = await page.locator("tr.call").count();
  const noReload = await page.evaluate(() => window.airlockUi.events.sandbox);
  out.sandbox_events = noReload;
  await queueCall("POST", `/v1/sessions/${sid}/events`, { events: [{ type: "session.status_idle", stop_reason: { type: "end_turn" } }] });
  return out;
}

// --- the browser ------------------------------------------------------------------------------

fs.mkdirSync(opts.out, { recursive: true });
requireChromium();
const origin = new URL(opts.url).origin;
const browser = await launchBrowser();
try {
  const context = await browser.newContext({ permissions: ["clipboard-read", "clipboard-write"], viewport: { width: 1280, height: 900 }, colorScheme: "light" });
  context.setDefaultTimeout(STEP_TIMEOUT);
  const page = await context.newPage();
  watch(page, "main");
  const shot = async (name, scheme = "light") => {
    await page.emulateMedia({ colorScheme: scheme });
    const file = path.join(opts.out, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    summary.screenshots.push(file);
    await page.emulateMedia({ colorScheme: "light" });
  };
  const go = async (view) => {
    await page.evaluate((v) => {
      location.hash = `#/${v}`;
    }, view);
    await page.locator(`[data-view="${view}"]`).waitFor();
  };
  const apiGet = (p) =>
    page.evaluate(async (u) => {
      const r = await fetch(u, { credentials: "same-origin" });
      return { status: r.status, body: await r.json().catch(() => null) };
    }, p);
  // A name is inert when the page shows it verbatim as text and no element was made from it.
  const inert = async (scope, selector, name, label) => {
    const texts = await page.locator(`${scope} ${selector}`).allTextContents();
    const shown = texts.includes(name);
    const injected = await page.evaluate((s) => document.querySelectorAll(`${s} img, ${s} script, ${s} b`).length, scope);
    const ok = shown && injected === 0;
    summary.names_inert[label] = ok;
    check(shown, `${label}: ${JSON.stringify(name)} is not shown verbatim: ${JSON.stringify(texts)}`);
    check(injected === 0, `${label}: ${injected} element(s) were created from data`);
  };

  await step("login", async () => {
    await page.goto(opts.url);
    await page.locator('[data-view="servers"]').waitFor();
  }, true);

  if (opts.server) {
    let server = null;
    let oauth = null;
    await step("discover the authorization server of the exposed server", async () => {
      const list = await apiGet("/v1/servers");
      server = (list.body && list.body.servers || []).find((s) => s.name === opts.server && s.exposed);
      if (!server) throw new Error(`${opts.server} is not exposed: ${JSON.stringify(list.body)}`);
      summary.resource = server.url;
      oauth = await discover(server.url);
      summary.issuer = oauth.issuer;
    }, true);

    let clientId = null;
    let flow = null;
    await step("a real authorize request waits for approval, live on the Approvals view", async () => {
      await go("approvals");
      check(await page.locator("article.approval").count() === 0, "no approval is pending yet");
      await shot("approvals-empty");
      clientId = await register(oauth.md, opts.clientName);
      // Races the live event against a list fetched just before the request existed (the agent
      // refetches on every servers_changed, e.g. when its probe finds another local server): that
      // stale answer is held until the card is on screen, then delivered. The card must survive it.
      let releaseStale;
      const staleHeld = new Promise((res) => (releaseStale = res));
      let staleCaught;
      const caught = new Promise((res) => (staleCaught = res));
      let stale = true;
      await page.route("**/v1/approvals", async (route) => {
        if (!stale || route.request().method() !== "GET") return route.continue();
        stale = false;
        const response = await route.fetch();
        staleCaught();
        await staleHeld;
        await route.fulfill({ response });
      });
      const poke = await page.evaluate(async (id) => {
        const r = await fetch(`/v1/servers/${encodeURIComponent(id)}/expose`, { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" }, body: "{}" });
        return r.status;
      }, server.id);
      check(poke === 200, `re-exposing the server (to make the page refetch) answered ${poke}`);
      await caught;
      flow = await startAuthorize(oauth.md, clientId, server.url, "state-approve");
      const card = page.locator("article.approval");
      await card.first().waitFor(); // arrives through the event stream: no reload, no polling
      // The held answer, then the page's own refetch (it saw an approval event during the first).
      let answers = 0;
      const refetched = page.waitForResponse((r) => r.url().endsWith("/v1/approvals") && r.request().method() === "GET" && ++answers === 2);
      releaseStale();
      await refetched;
      await page.unroute("**/v1/approvals");
      summary.approval_seen = await card.count();
      check(summary.approval_seen === 1, `expected one pending approval, saw ${summary.approval_seen}`);
      await inert("article.approval", ".client-name", opts.clientName, "approval client name");
      await inert("article.approval", ".approval-server", opts.server, "approval server name");
      const host = await card.locator("code.redirect-host").textContent();
      check(host === "127.0.0.1:9" || host === "127.0.0.1", `redirect host shown as ${host}`);
      const count = await page.locator(".nav-count").textContent();
      check(count === "1", `the Approvals nav entry shows ${count} pending`);
      await shot("approvals");
      await shot("approvals-dark", "dark");
    }, true);

    let accessToken = null;
    await step("Approve by click: the status URL redirects with a code that becomes a working token", async () => {
      await page.locator("article.approval").getByRole("button", { name: /^Approve / }).click();
      await page.locator("article.approval").waitFor({ state: "detached" });
      const loc = await awaitRedirect(flow);
      summary.approved_redirect = `${loc.origin}${loc.pathname}?state=${loc.searchParams.get("state")}&code=${loc.searchParams.get("code") ? "…" : ""}`;
      check(`${loc.origin}${loc.pathname}` === REDIRECT, `redirected to ${loc}`);
      check(loc.searchParams.get("state") === "state-approve" && loc.searchParams.get("code"), `no code/state in ${loc}`);
      accessToken = await exchange(oauth.md, clientId, loc.searchParams.get("code"), flow.verifier, server.url);
      const r = await mcpStatus(server.url, accessToken);
      summary.token_works = r.status === 200;
      check(summary.token_works, `the approved token got HTTP ${r.status} from the server`);
    });

    await step("Deny by click: the redirect carries access_denied", async () => {
      const second = await startAuthorize(oauth.md, clientId, server.url, "state-deny");
      const card = page.locator("article.approval");
      await card.first().waitFor();
      await card.getByRole("button", { name: /^Deny / }).click();
      await card.first().waitFor({ state: "detached" });
      const loc = await awaitRedirect(second);
      summary.denied_redirect = loc.searchParams.get("error");
      check(summary.denied_redirect === "access_denied", `denied redirect: ${loc}`);
      await page.locator(".note", { hasText: "Denied:" }).waitFor();
    });

    await step("Clients lists the grant; a minted token is shown once and works", async () => {
      await go("clients");
      const client = page.locator("article.client", { has: page.locator(".client-name", { hasText: opts.clientName }) });
      await client.first().waitFor();
      summary.client_listed = true;
      await inert("article.client", ".client-name", opts.clientName, "clients client name");
      await client.locator("tr.grant").first().waitFor();
      await inert("article.client", ".grant-server", opts.server, "clients server name");
      await page.locator("#mint-server").selectOption(server.id);
      await page.getByRole("button", { name: "Mint token" }).click();
      const minted = (await page.locator("code.minted-token").textContent()) || "";
      check(minted.length > 20, `minted token looks wrong: ${minted.length} chars`);
      const r = await mcpStatus(server.url, minted);
      summary.minted_token_works = r.status === 200;
      check(summary.minted_token_works, `the minted token got HTTP ${r.status}`);
      await shot("clients");
    });

    await step("Revoke by click: the approved token stops working", async () => {
      const client = page.locator("article.client", { has: page.locator(".client-name", { hasText: opts.clientName }) });
      await client.locator("tr.grant").getByRole("button", { name: "Revoke" }).first().click();
      await client.locator("tr.grant").getByRole("button", { name: "Revoke" }).first().waitFor({ state: "detached" });
      const r = await mcpStatus(server.url, accessToken);
      summary.revoked_token_refused = r.status === 401;
      check(summary.revoked_token_refused, `the revoked token got HTTP ${r.status}`);
    });

    await step("Audit lists what happened, newest first, and filters by kind", async () => {
      await go("audit");
      await page.locator("tr.audit-entry").first().waitFor();
      summary.audit_kinds = await page.locator("tr.audit-entry").evaluateAll((rows) => rows.map((r) => r.dataset.kind));
      for (const k of ["approval_requested", "grant_approved", "grant_denied", "token_issued", "token_minted", "revoked"]) {
        check(summary.audit_kinds.includes(k), `audit lacks ${k}: ${JSON.stringify(summary.audit_kinds)}`);
      }
      const times = await page.locator("tr.audit-entry time").evaluateAll((els) => els.map((e) => Number(e.dataset.ms)));
      check(times.every((t, i) => i === 0 || times[i - 1] >= t), "audit entries are not newest first");
      await inert("table.audit", ".audit-client", opts.clientName, "audit client name");
      await inert("table.audit", ".audit-server", opts.server, "audit server name");
      await shot("audit");
      await page.locator("#audit-kind").selectOption("grant_approved");
      await page.waitForFunction(() => [...document.querySelectorAll("tr.audit-entry")].every((r) => r.dataset.kind === "grant_approved") && document.querySelectorAll("tr.audit-entry").length > 0);
      summary.audit_filtered_kinds = [...new Set(await page.locator("tr.audit-entry").evaluateAll((rows) => rows.map((r) => r.dataset.kind)))];
    });

    await step("Hostnames mints a token for the Messages API snippet", async () => {
      await go("hostnames");
      const card = page.locator("article.hostname-card", { has: page.locator(".server-name", { hasText: opts.server }) });
      await card.getByRole("button", { name: /^Mint a token for the Messages API snippet/ }).click();
      await card.locator("p.note", { hasText: "minted for this server only" }).waitFor();
      const snippet = JSON.parse((await card.locator("pre.messages-snippet").textContent()) || "{}");
      const tok = snippet.mcp_servers && snippet.mcp_servers[0] && snippet.mcp_servers[0].authorization_token;
      check(snippet.tools && snippet.tools[0] && snippet.tools[0].type === "mcp_toolset", "snippet lacks mcp_toolset");
      const r = await mcpStatus(server.url, tok);
      summary.snippet_token_works = r.status === 200;
      check(summary.snippet_token_works, `the snippet's minted token got HTTP ${r.status}`);
      await card.getByRole("button", { name: /^Copy the Messages API snippet/ }).click();
      const clip = await page.evaluate(() => navigator.clipboard.readText());
      check(clip.includes(tok), "the copied snippet carries the minted token");
      await shot("hostnames-minted");
    });

  }

  if (opts.sandbox) {
    await step("Sandbox: the switch turns the worker on and off", async () => {
      await go("sandbox");
      const sw = page.locator("#sandbox-switch");
      await sw.waitFor();
      const before = await apiGet("/v1/sandbox");
      const initial = Boolean(before.body && before.body.enabled);
      check(await sw.isChecked() === initial, "the switch shows GET /v1/sandbox's enabled");
      const confined = Boolean(before.body && before.body.confined);
      const red = await page.locator("section.isolation-bad").count();
      check(confined ? red === 0 : red === 1, `isolation shown ${red ? "red" : "not red"} while confined=${confined}`);
      await shot("sandbox-before");
      await sw.click();
      await page.waitForFunction((want) => {
        const el = document.getElementById("sandbox-switch");
        return el && el.checked === want && !el.disabled;
      }, !initial);
      const after = await apiGet("/v1/sandbox");
      check(after.body && after.body.enabled === !initial, `GET /v1/sandbox after the click: ${JSON.stringify(after.body)}`);
      await shot("sandbox");
      await shot("sandbox-dark", "dark");
      if (opts.queue) {
        summary.sandbox_session = await runSession(page);
        await shot("sandbox-session");
      }
      await page.locator("#sandbox-switch").click();
      await page.waitForFunction((want) => {
        const el = document.getElementById("sandbox-switch");
        return el && el.checked === want && !el.disabled;
      }, initial);
      const back = await apiGet("/v1/sandbox");
      check(back.body && back.body.enabled === initial, `GET /v1/sandbox after the second click: ${JSON.stringify(back.body)}`);
      summary.sandbox = { initial, after: after.body && after.body.enabled, back: back.body && back.body.enabled, confined, mechanism: before.body && before.body.mechanism };
    });
  }

  await step("nothing ran", async () => {
    summary.window_xss = await page.evaluate(() => typeof window.__xss);
    check(summary.window_xss === "undefined", `window.__xss is ${summary.window_xss}`);
    check(summary.console_errors.length === 0, `console errors: ${JSON.stringify(summary.console_errors)}`);
  });
} finally {
  await browser.close();
}
finish(summary);
