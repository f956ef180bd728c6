// Drives the Airlock web UI in Debian's headless Chromium with playwright-core.
//
//   node tests/ui/web-ui.test.mjs <login url from `airlock ui --print`> \
//        [--expose NAME] [--xss-name NAME]... [--diagnostic TEXT] [--out DIR]
//
// Checks: the one-time code leaves the address bar; the servers are listed; the expose switch
// of NAME works and a second tab (opened before) shows the new hostname through the event
// stream without a reload; the Copy buttons put the URL, the `claude mcp add` line and the
// Messages API snippet on the clipboard; every view renders; script-bearing server names
// show as text and never run; a reused login link gets the sign-in screen. One screenshot
// per view goes to DIR (default tests/artifacts/ui). The last stdout line is a JSON summary;
// the exit status is non-zero on any failure.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { finish, launchBrowser, readClipboard, requireChromium, steps, watchConsole } from "./lib.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opts = { url: null, expose: "time", xss: [], diagnostic: null, out: path.resolve(here, "../artifacts/ui") };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--expose") opts.expose = args[++i];
  else if (a === "--xss-name") opts.xss.push(args[++i]);
  else if (a === "--diagnostic") opts.diagnostic = args[++i];
  else if (a === "--out") opts.out = path.resolve(args[++i]);
  else if (!opts.url) opts.url = a;
  else {
    console.error(`unexpected argument ${a}`);
    process.exit(2);
  }
}
if (!opts.url || !/#code=/.test(opts.url)) {
  console.error("usage: web-ui.test.mjs <http://127.0.0.1:PORT/#code=…> [--expose NAME] [--xss-name NAME]… [--out DIR]");
  process.exit(2);
}
const STEP_TIMEOUT = 30_000;
const VIEWS = ["servers", "hostnames", "tunnel", "approvals", "clients", "sandbox", "audit"];

const summary = {
  ok: false,
  failures: [],
  code_removed_from_url: null,
  page_url: null,
  servers_seen: [],
  diagnostic_seen: null,
  exposed: null,
  sse_other_tab_updated: null,
  events: null,
  clipboard: {},
  views: [],
  screenshots: [],
  xss: {},
  reused_code_shows_login: null,
  console_errors: [],
};
const origin = new URL(opts.url).origin;

const { fail, check, step } = steps(summary);
// The sign-in probe's 401 and the refused hostname's 422 are answers the page handles.
function watch(page, label) {
  watchConsole(page, summary, { label, expectedStatuses: [401, 422] });
}

fs.mkdirSync(opts.out, { recursive: true });
requireChromium();

const browser = await launchBrowser();
try {
  const context = await browser.newContext({
    permissions: ["clipboard-read", "clipboard-write"],
    viewport: { width: 1280, height: 900 },
    colorScheme: "light",
  });
  context.setDefaultTimeout(STEP_TIMEOUT);
  const page = await context.newPage();
  watch(page, "main");
  const shot = async (p, name) => {
    const file = path.join(opts.out, `${name}.png`);
    await p.screenshot({ path: file, fullPage: true });
    summary.screenshots.push(file);
  };

  await step("login with the one-time code", async () => {
    await page.goto(opts.url);
    await page.locator('[data-view="servers"]').waitFor();
    summary.page_url = page.url();
    summary.code_removed_from_url = !page.url().includes("code=");
    check(summary.code_removed_from_url, `the login code is still in the address bar: ${page.url()}`);
    const history = await page.evaluate(() => history.length);
    // about:blank + this page: replaceState, not pushState (which would leave the code one
    // Back press away).
    check(history <= 2, `the code URL must be replaced, not pushed (history.length ${history})`);
  }, true);

  await step("servers are listed", async () => {
    await page.locator(".server-name", { hasText: opts.expose }).first().waitFor();
    summary.servers_seen = await page.locator("article.server .server-name").allTextContents();
    check(summary.servers_seen.includes(opts.expose), `server ${opts.expose} not listed: ${JSON.stringify(summary.servers_seen)}`);
    if (opts.diagnostic) {
      const diags = await page.locator(".diagnostic").allTextContents();
      summary.diagnostic_seen = diags.find((d) => d.includes(opts.diagnostic)) || null;
      check(summary.diagnostic_seen, `no diagnostic mentioning ${opts.diagnostic}: ${JSON.stringify(diags)}`);
      check(summary.diagnostic_seen && /:\d+(:\d+)?: \S/.test(summary.diagnostic_seen), `diagnostic lacks path:line: ${summary.diagnostic_seen}`);
    }
  }, true);

  await step("script-bearing names are text", async () => {
    for (const name of opts.xss) {
      const shown = await page.locator("article.server .server-name").allTextContents();
      summary.xss[name] = shown.includes(name);
      check(summary.xss[name], `the name ${JSON.stringify(name)} is not shown verbatim as text: ${JSON.stringify(shown)}`);
    }
    await shot(page, "servers-before");
  });

  // A second tab with the same session, left on Hostnames: it must learn of the exposure
  // from the event stream alone.
  const other = await context.newPage();
  watch(other, "second tab");
  await step("second tab shows Hostnames (empty)", async () => {
    await other.goto(`${origin}/#/hostnames`);
    await other.locator('[data-view="hostnames"]').waitFor();
    await other.evaluate(() => {
      window.__noReload = true;
    });
    const cards = await other.locator("article.hostname-card").count();
    check(cards === 0, `no server is exposed yet, yet Hostnames shows ${cards} cards`);
    await shot(other, "hostnames-empty");
  });

  let exposedUrl = null;
  await step(`expose ${opts.expose} with its switch`, async () => {
    await page.bringToFront();
    const sw = page.getByRole("switch", { name: `Expose ${opts.expose}`, exact: true });
    check(!(await sw.isChecked()), "the switch starts off");
    await sw.click();
    const card = page.locator("article.server.is-exposed", { has: page.locator(".server-name", { hasText: new RegExp(`^${opts.expose}$`) }) });
    await card.waitFor();
    exposedUrl = (await card.locator("code.url").first().textContent()) || "";
    summary.exposed = exposedUrl;
    check(/^http:\/\/127\.0\.0\.1:\d+\/[a-z0-9-]+\/mcp$/.test(exposedUrl), `unexpected local URL ${exposedUrl}`);
    check(await page.getByRole("switch", { name: `Expose ${opts.expose}`, exact: true }).isChecked(), "the switch is on after exposing");
    await card.locator(".badge-ok", { hasText: "ready" }).waitFor({ timeout: 60_000 });
  });

  await step("the other tab updates through SSE without a reload", async () => {
    const card = other.locator("article.hostname-card", { has: other.locator(".server-name", { hasText: new RegExp(`^${opts.expose}$`) }) });
    await card.waitFor();
    const url = await card.locator("code.local-url").textContent();
    check(url === exposedUrl, `second tab shows ${url}, expected ${exposedUrl}`);
    const same = await other.evaluate(() => window.__noReload === true);
    summary.sse_other_tab_updated = same && url === exposedUrl;
    check(same, "the second tab was reloaded");
    summary.events = await other.evaluate(() => ({ ...window.airlockUi.events }));
    check(summary.events.servers_changed >= 1, `no servers_changed event reached the second tab: ${JSON.stringify(summary.events)}`);
  });

  await step("Copy buttons put the URL, the claude command and the snippet on the clipboard", async () => {
    await page.bringToFront();
    await page.getByRole("link", { name: "Hostnames" }).click();
    await page.locator('[data-view="hostnames"]').waitFor();
    check(page.url().endsWith("#/hostnames"), `navigation did not update the URL: ${page.url()}`);
    check((await page.locator("code.token").count()) === 0, "no shared token is shown: clients sign in with OAuth");
    const read = async (buttonName) => {
      await page.evaluate(() => navigator.clipboard.writeText(""));
      await page.getByRole("button", { name: buttonName, exact: true }).click();
      // The button may first fetch the token; wait until its text lands (bounded).
      return readClipboard(page);
    };
    summary.clipboard.url = await read(`Copy the local URL of ${opts.expose}`);
    check(summary.clipboard.url === exposedUrl, `copied URL ${summary.clipboard.url} != ${exposedUrl}`);
    summary.clipboard.claude = await read(`Copy the claude mcp add command for ${opts.expose}`);
    const m = /^claude mcp add --transport http ([a-z0-9-]+) (\S+)$/.exec(summary.clipboard.claude);
    check(m && m[2] === exposedUrl, `unexpected claude command: ${summary.clipboard.claude}`);
    summary.clipboard.snippet = await read(`Copy the Messages API snippet for ${opts.expose}`);
    const snip = JSON.parse(summary.clipboard.snippet);
    const srv = snip.mcp_servers && snip.mcp_servers[0];
    // Copying the snippet mints a token for this server (shown once in the card too).
    const minted = await page.locator(".messages-snippet").first().textContent();
    check(srv && srv.type === "url" && srv.url === exposedUrl && srv.name && typeof srv.authorization_token === "string" && srv.authorization_token.length > 20 && minted.includes(srv.authorization_token), `unexpected snippet: ${summary.clipboard.snippet}`);
    check(snip.tools && snip.tools[0] && snip.tools[0].type === "mcp_toolset" && snip.tools[0].mcp_server_name === srv.name, `snippet tools: ${summary.clipboard.snippet}`);
  });

  await step("every view renders (keyboard reachable nav)", async () => {
    for (const v of VIEWS) {
      const link = page.locator(`nav a[href="#/${v}"]`);
      await link.focus();
      await page.keyboard.press("Enter");
      await page.locator(`[data-view="${v}"]`).waitFor();
      check((await link.getAttribute("aria-current")) === "page", `nav link ${v} not marked current`);
      const title = await page.locator(".view-title").textContent();
      summary.views.push({ view: v, title });
      if (v === "tunnel") {
        // No relay or tunnel configured: the agent runs its embedded relay, and the view says so with
        // the node's live state and the CA clients must trust.
        await page.locator(".badge", { hasText: "Embedded relay" }).first().waitFor();
        const relay = page.locator('[data-section="relay"]');
        await relay.locator(".badge", { hasText: "connected" }).first().waitFor();
        const relayText = await relay.textContent();
        check(/1 of 1 node/.test(relayText), `embedded relay not shown as 1 of 1 connected: ${relayText}`);
        check(/airlock\.localhost/.test(relayText), `embedded relay tunnel domain missing: ${relayText}`);
      }
      await shot(page, v);
    }
  });

  await step("dark theme", async () => {
    await page.emulateMedia({ colorScheme: "dark" });
    await page.goto(`${origin}/#/servers`);
    await page.locator('[data-view="servers"] article.server').first().waitFor();
    await shot(page, "servers-dark");
    await page.getByRole("link", { name: "Hostnames" }).click();
    await page.locator("article.hostname-card").first().waitFor();
    await shot(page, "hostnames-dark");
    await page.emulateMedia({ colorScheme: "light" });
  });

  await step("client-side hostname validation", async () => {
    await page.goto(`${origin}/#/servers`);
    const card = page.locator("article.server", { has: page.locator(".server-name", { hasText: new RegExp(`^${opts.expose}$`) }) });
    const input = card.locator("input.hostname-input");
    await input.fill("-Bad_Name");
    await card.locator(".field-error", { hasText: /lowercase|start or end/ }).waitFor();
    check(await card.locator('button[type="submit"]').isDisabled(), "save must be disabled for an invalid hostname");
    check((await input.inputValue()) === "-Bad_Name", "typing survives re-renders");
    await input.fill(opts.expose);
  });

  await step("the agent's refusal of a taken hostname is shown", async () => {
    if (!opts.xss.length) return;
    const hostname = new URL(exposedUrl).pathname.split("/")[1];
    const card = page.getByRole("article", { name: opts.xss[0], exact: true });
    await card.locator("input.hostname-input").fill(hostname);
    await card.getByRole("button", { name: "Expose with this hostname" }).click();
    const err = card.locator(".server-error");
    await err.waitFor();
    summary.refusal = await err.textContent();
    check(summary.refusal && summary.refusal.length > 0, "an error message is shown");
    check(!(await card.getByRole("switch").isChecked()), "the refused server stays unexposed");
    await shot(page, "servers-refused");
  });

  await step("the DOM helper refuses handlers and HTML sinks", async () => {
    summary.dom_guard = await page.evaluate(async () => {
      const { h } = await import("/ui/dom.js");
      const refused = (attrs) => {
        try {
          h("img", attrs);
          return false;
        } catch {
          return true;
        }
      };
      const text = h("p", null, "<b>x</b>");
      return {
        onerror: refused({ onerror: "window.__xss=3" }),
        ONCLICK: refused({ ONCLICK: "window.__xss=3" }),
        innerHTML: refused({ innerHTML: "<b>x</b>" }),
        javascript_url: refused({ src: "javascript:window.__xss=3" }),
        text_is_text: text.childElementCount === 0 && text.textContent === "<b>x</b>",
      };
    });
    for (const [k, v] of Object.entries(summary.dom_guard)) {
      check(v === true, `dom.js guard ${k} failed`);
    }
  });

  await step("no script ran", async () => {
    for (const p of [page, other]) {
      const r = await p.evaluate(() => ({
        xss: typeof window.__xss,
        imgs: [...document.querySelectorAll("img")].map((i) => i.getAttribute("src")),
        scripts: [...document.querySelectorAll("script")].map((s) => s.getAttribute("src")),
      }));
      check(r.xss === "undefined", `window.__xss is ${r.xss}`);
      check(r.imgs.every((s) => s === "/ui/glyph.svg"), `unexpected <img> elements: ${JSON.stringify(r.imgs)}`);
      check(r.scripts.length === 1 && r.scripts[0] === "/ui/app.js", `unexpected <script> elements: ${JSON.stringify(r.scripts)}`);
      summary.xss.window_xss = r.xss;
    }
  });

  await step("a used login link shows the sign-in screen", async () => {
    const fresh = await browser.newContext();
    const p = await fresh.newPage();
    await p.goto(opts.url);
    await p.locator("#login-title").waitFor();
    const title = await p.locator("#login-title").textContent();
    summary.reused_code_shows_login = /airlock ui/.test(title || "") && !p.url().includes("code=");
    check(summary.reused_code_shows_login, `sign-in screen expected, got ${title} at ${p.url()}`);
    await shot(p, "login");
    await fresh.close();
  });

  check(summary.console_errors.length === 0, `console errors: ${JSON.stringify(summary.console_errors)}`);
} finally {
  await browser.close();
}

finish(summary);
