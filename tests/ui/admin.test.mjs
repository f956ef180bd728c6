// The web UI's admin actions against a real agent running the embedded relay, in Debian's
// headless Chromium (tests/tests/web_ui_admin.rs starts the agent with one server exposed).
//
//   node tests/ui/admin.test.mjs <login url> --mcp-url URL [--base-url URL --environment-id ID] [--out DIR]
//
// Secrets come in the environment, never argv: AIRLOCK_TEST_CF_TOKEN (a cloudflared token to
// enter), AIRLOCK_TEST_ENV_KEY (an environment key to enter), AIRLOCK_TEST_MCP_TOKEN (an access
// token for the exposed server, to make MCP calls while the Audit view is open).
//
// Checks: the Tunnel view rotates the CA after a confirm step that explains the two phases and
// activates it (the shown active fingerprint becomes the pending one); a cloudflared token typed
// in the password field is stored (the view says so) and is cleared, never shown back; the
// Sandbox view stores an environment key (the view says so; the key is nowhere in the page);
// MCP calls made while the Audit view is open show up in it without a reload. The last stdout
// line is a JSON summary; the exit status is non-zero on failure.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { finish, launchBrowser, requireChromium, steps, watchConsole } from "./lib.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opts = { url: null, mcpUrl: null, baseUrl: null, environmentId: null, out: path.resolve(here, "../artifacts/ui-admin") };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--mcp-url") opts.mcpUrl = args[++i];
  else if (a === "--base-url") opts.baseUrl = args[++i];
  else if (a === "--environment-id") opts.environmentId = args[++i];
  else if (a === "--out") opts.out = path.resolve(args[++i]);
  else if (!opts.url) opts.url = a;
  else {
    console.error(`unexpected argument ${a}`);
    process.exit(2);
  }
}
const cfToken = process.env.AIRLOCK_TEST_CF_TOKEN || "";
const envKey = process.env.AIRLOCK_TEST_ENV_KEY || "";
const mcpToken = process.env.AIRLOCK_TEST_MCP_TOKEN || "";
if (!opts.url || !opts.mcpUrl || !opts.baseUrl || !opts.environmentId || !cfToken || !envKey || !mcpToken) {
  console.error("usage: AIRLOCK_TEST_CF_TOKEN=… AIRLOCK_TEST_ENV_KEY=… AIRLOCK_TEST_MCP_TOKEN=… admin.test.mjs <login url> --mcp-url URL --base-url URL --environment-id ID [--out DIR]");
  process.exit(2);
}
requireChromium();
fs.mkdirSync(opts.out, { recursive: true });

const summary = { ok: false, failures: [], ca: {}, token: {}, sandbox: {}, audit: {}, screenshots: [], console_errors: [] };
const { fail, check, step } = steps(summary);

// One JSON-RPC request over Streamable HTTP; the answer may be JSON or one SSE event.
async function mcp(body, session) {
  const headers = {
    "Content-Type": "application/json",
    Accept: "application/json, text/event-stream",
    Authorization: `Bearer ${mcpToken}`,
  };
  if (session) headers["Mcp-Session-Id"] = session;
  const resp = await fetch(opts.mcpUrl, { method: "POST", headers, body: JSON.stringify(body) });
  const text = await resp.text();
  if (!resp.ok && resp.status !== 202) throw new Error(`${body.method}: HTTP ${resp.status} ${text.slice(0, 200)}`);
  return { session: resp.headers.get("mcp-session-id") || session, text };
}

const browser = await launchBrowser();
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme: "dark" });
  context.setDefaultTimeout(30_000);
  const page = await context.newPage();
  watchConsole(page, summary);
  let loads = 0;
  page.on("load", () => {
    loads += 1;
  });
  const shot = async (name) => {
    const file = path.join(opts.out, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    summary.screenshots.push(file);
  };
  const dd = (term) => page.locator(".row", { has: page.locator("dt", { hasText: new RegExp(`^${term}$`) }) }).locator("dd").first();
  const caFingerprint = (role) => page.locator('[data-section="ca"] .ca', { has: page.locator("h3 .badge", { hasText: new RegExp(`^${role}$`) }) }).locator("code.fingerprint").first();
  // Nothing secret may be in the page: text, attributes or form values.
  const pageHolds = (secret) =>
    page.evaluate((s) => document.documentElement.outerHTML.includes(s) || [...document.querySelectorAll("input")].some((i) => i.value.includes(s)), secret);

  await step("login and open Tunnel", async () => {
    await page.goto(opts.url);
    await page.locator('[data-view="servers"]').waitFor();
    await page.getByRole("link", { name: "Tunnel" }).click();
    await page.locator('[data-view="tunnel"]').waitFor();
    await page.locator('[data-section="ca"] .ca').first().waitFor();
  }, true);

  await step("rotate the CA (confirm step) and activate it", async () => {
    summary.ca.before = (await caFingerprint("active").textContent()) || "";
    summary.ca.relay_before = (await page.locator('[data-section="relay"] code.fingerprint').first().textContent()) || "";
    await page.getByRole("button", { name: "Rotate CA…" }).click();
    const confirm = page.getByRole("group", { name: "Rotate the CA" });
    await confirm.waitFor();
    summary.ca.confirm_text = (await confirm.textContent()) || "";
    check(/two phases/.test(summary.ca.confirm_text) && /Activate/.test(summary.ca.confirm_text), `the confirm step explains the two phases: ${summary.ca.confirm_text}`);
    check((await page.locator('[data-section="ca"] .ca h3 .badge', { hasText: /^pending$/ }).count()) === 0, "nothing is pending before the confirm");
    await shot("tunnel-rotate-confirm");
    await page.getByRole("button", { name: "Create the next CA" }).click();
    await caFingerprint("pending").waitFor();
    summary.ca.pending = (await caFingerprint("pending").textContent()) || "";
    check(summary.ca.pending && summary.ca.pending !== summary.ca.before, `a new pending CA: ${summary.ca.pending}`);
    check((await caFingerprint("active").textContent()) === summary.ca.before, "the active CA is unchanged until activation");
    await shot("tunnel-rotate-pending");
    await page.getByRole("button", { name: "Activate the pending CA" }).click();
    await page.waitForFunction(
      (fp) => [...document.querySelectorAll('[data-section="ca"] .ca')].some((c) => c.querySelector("h3 .badge")?.textContent === "active" && c.querySelector("code.fingerprint")?.textContent === fp),
      summary.ca.pending,
    );
    summary.ca.after = (await caFingerprint("active").textContent()) || "";
    summary.ca.roles = await page.locator('[data-section="ca"] .ca h3 .badge').allTextContents();
    await page.waitForFunction((fp) => document.querySelector('[data-section="relay"] code.fingerprint')?.textContent === fp, summary.ca.after);
    summary.ca.relay_after = (await page.locator('[data-section="relay"] code.fingerprint').first().textContent()) || "";
    await shot("tunnel-rotated");
  });

  await step("enter a cloudflared token", async () => {
    summary.token.before = ((await dd("cloudflared token").textContent()) || "").trim();
    const field = page.locator("#cloudflared-token");
    summary.token.field_type = await field.getAttribute("type");
    await field.fill(cfToken);
    await page.getByRole("button", { name: "Save token" }).click();
    await page.waitForFunction(() => {
      const row = [...document.querySelectorAll(".row")].find((r) => r.querySelector("dt")?.textContent === "cloudflared token");
      return row?.querySelector("dd")?.textContent.trim() === "stored";
    });
    summary.token.after = ((await dd("cloudflared token").textContent()) || "").trim();
    summary.token.field_value_after = await page.locator("#cloudflared-token").inputValue();
    summary.token.note = (await page.locator(".token-form ~ p.note").first().textContent()) || "";
    summary.token.in_page = await pageHolds(cfToken);
    check(!summary.token.in_page, "the cloudflared token is in the page after submit");
    check(summary.token.field_value_after === "", "the token field is cleared after submit");
    await shot("tunnel-token-stored");
  });

  await step("enter the environment key in the Sandbox view", async () => {
    await page.getByRole("link", { name: "Sandbox" }).click();
    await page.locator('[data-view="sandbox"] form.env-form').waitFor();
    summary.sandbox.before = ((await dd("Environment key").textContent()) || "").trim();
    summary.sandbox.key_field_type = await page.locator("#sandbox-environment-key").getAttribute("type");
    await page.locator("#sandbox-base-url").fill(opts.baseUrl);
    await page.locator("#sandbox-environment-id").fill(opts.environmentId);
    await page.locator("#sandbox-environment-key").fill(envKey);
    await page.locator("form.env-form button[type=submit]").click();
    await page.waitForFunction(() => {
      const row = [...document.querySelectorAll(".row")].find((r) => r.querySelector("dt")?.textContent === "Environment key");
      return row?.querySelector("dd")?.textContent.trim() === "stored";
    });
    summary.sandbox.after = ((await dd("Environment key").textContent()) || "").trim();
    summary.sandbox.environment = ((await dd("Environment").textContent()) || "").trim();
    summary.sandbox.in_page = await pageHolds(envKey);
    check(!summary.sandbox.in_page, "the environment key is in the page after submit");
    await shot("sandbox-environment-entered");
  });

  await step("an MCP call shows up in the open Audit view without a reload", async () => {
    await page.getByRole("link", { name: "Audit" }).click();
    await page.locator('[data-view="audit"]').waitFor();
    await page.waitForFunction(() => !document.querySelector('[data-view="audit"]')?.textContent.includes("Loading"));
    await page.evaluate(() => {
      window.__sameDocument = true;
    });
    const loadsBefore = loads;
    const callsShown = () => page.locator('[data-view="audit"] tbody tr', { hasText: "tools/list" }).count();
    summary.audit.rows_before = await callsShown();
    const eventsBefore = await page.evaluate(() => window.airlockUi?.events?.audit ?? null);
    const init = await mcp({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "ui-admin-test", version: "1" } } });
    await mcp({ jsonrpc: "2.0", method: "notifications/initialized" }, init.session);
    const list = await mcp({ jsonrpc: "2.0", id: 2, method: "tools/list" }, init.session);
    check(/get_current_time/.test(list.text), `tools/list answered: ${list.text.slice(0, 200)}`);
    const started = Date.now();
    await page.waitForFunction(
      (n) => [...document.querySelectorAll('[data-view="audit"] tbody tr')].filter((r) => r.textContent.includes("tools/list")).length > n,
      summary.audit.rows_before,
      { timeout: 20_000 },
    );
    summary.audit.shown_after_ms = Date.now() - started;
    summary.audit.rows_after = await callsShown();
    summary.audit.same_document = await page.evaluate(() => window.__sameDocument === true);
    summary.audit.reloads = loads - loadsBefore;
    summary.audit.events_before = eventsBefore;
    summary.audit.events_after = await page.evaluate(() => window.airlockUi?.events?.audit ?? null);
    check(summary.audit.same_document && summary.audit.reloads === 0, "the page was not reloaded");
    await shot("audit-live");
  });

  summary.window_xss = await page.evaluate(() => typeof window.__xss);
  check(summary.console_errors.length === 0, `console errors: ${JSON.stringify(summary.console_errors)}`);
} finally {
  await browser.close();
}
finish(summary);
