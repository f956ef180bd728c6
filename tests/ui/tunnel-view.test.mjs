// The Tunnel and Hostnames views of an agent running the Anthropic tunnel ingress, in Debian's
// headless Chromium (tests/tests/web_ui.rs starts the agent with an [anthropic] section and a
// server already exposed).
//
//   node tests/ui/tunnel-view.test.mjs <login url> --domain DOMAIN --server NAME [--out DIR]
//
// Checks: the mode, tunnel domain, listen address, cloudflared state and keystore are shown;
// the CA fingerprint and PEM copy to the clipboard; the exposed server's tunnel URL is listed
// and copied, and the Messages API snippet uses it. The last stdout line is a JSON summary
// (what was read from the page and the clipboard); the exit status is non-zero on failure.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { finish, launchBrowser, readClipboard, requireChromium, steps, watchConsole } from "./lib.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opts = { url: null, domain: null, server: null, out: path.resolve(here, "../artifacts/ui") };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--domain") opts.domain = args[++i];
  else if (a === "--server") opts.server = args[++i];
  else if (a === "--out") opts.out = path.resolve(args[++i]);
  else if (!opts.url) opts.url = a;
  else {
    console.error(`unexpected argument ${a}`);
    process.exit(2);
  }
}
if (!opts.url || !opts.domain || !opts.server) {
  console.error("usage: tunnel-view.test.mjs <http://127.0.0.1:PORT/#code=…> --domain DOMAIN --server NAME [--out DIR]");
  process.exit(2);
}
requireChromium();
fs.mkdirSync(opts.out, { recursive: true });

const summary = { ok: false, failures: [], tunnel: {}, clipboard: {}, screenshots: [], console_errors: [] };
const { fail, check, step } = steps(summary);

const browser = await launchBrowser();
try {
  const context = await browser.newContext({
    permissions: ["clipboard-read", "clipboard-write"],
    viewport: { width: 1280, height: 900 },
    colorScheme: "light",
  });
  context.setDefaultTimeout(30_000);
  const page = await context.newPage();
  watchConsole(page, summary);
  const shot = async (name) => {
    const file = path.join(opts.out, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    summary.screenshots.push(file);
  };
  const copy = async (buttonName) => {
    await page.evaluate(() => navigator.clipboard.writeText(""));
    await page.getByRole("button", { name: buttonName, exact: true }).click();
    // The button may first fetch the token; wait until its text lands (bounded).
    return readClipboard(page);
  };
  const dd = (term) => page.locator(".row", { has: page.locator("dt", { hasText: new RegExp(`^${term}$`) }) }).locator("dd").first();

  await step("login and open Tunnel", async () => {
    await page.goto(opts.url);
    await page.locator('[data-view="servers"]').waitFor();
    check(!page.url().includes("code="), `the login code is still in the address bar: ${page.url()}`);
    await page.getByRole("link", { name: "Tunnel" }).click();
    await page.locator('[data-view="tunnel"]').waitFor();
  }, true);

  await step("tunnel facts", async () => {
    await page.locator(".badge", { hasText: "Anthropic tunnel" }).waitFor();
    summary.tunnel.domain = await dd("Tunnel domain").textContent();
    check(summary.tunnel.domain === opts.domain, `tunnel domain ${summary.tunnel.domain} != ${opts.domain}`);
    summary.tunnel.listen_addr = await dd("Listen address").textContent();
    check(/^127\.0\.0\.1:\d+$/.test(summary.tunnel.listen_addr || ""), `listen address ${summary.tunnel.listen_addr}`);
    summary.tunnel.cloudflared = await dd("cloudflared").textContent();
    summary.tunnel.keystore = await dd("Keystore").textContent();
    summary.tunnel.keystore_warning = await page.locator(".warning").count();
    summary.tunnel.fingerprint = await page.locator("code.fingerprint").first().textContent();
    await page.locator(".ca").first().waitFor();
    summary.tunnel.ca_roles = await page.locator(".ca h3 .badge").allTextContents();
  });

  await step("copy the CA fingerprint and PEM", async () => {
    summary.clipboard.fingerprint = await copy("Copy the CA fingerprint");
    summary.clipboard.pem = await copy("Copy the active CA certificate");
    check(/-----BEGIN CERTIFICATE-----/.test(summary.clipboard.pem), "the copied PEM is a certificate");
    check(!/PRIVATE KEY/.test(summary.clipboard.pem), "the copied PEM holds no private key");
    await shot("tunnel-anthropic");
  });

  await step("Hostnames shows and copies the tunnel URL", async () => {
    await page.getByRole("link", { name: "Hostnames" }).click();
    await page.locator("article.hostname-card").first().waitFor();
    summary.tunnel.shown_tunnel_url = await page.locator("code.tunnel-url").first().textContent();
    summary.clipboard.tunnel_url = await copy(`Copy the tunnel URL of ${opts.server}`);
    check(summary.clipboard.tunnel_url === summary.tunnel.shown_tunnel_url, "copied tunnel URL equals the shown one");
    summary.clipboard.snippet = await copy(`Copy the Messages API snippet for ${opts.server}`);
    const snip = JSON.parse(summary.clipboard.snippet);
    check(snip.mcp_servers?.[0]?.url === summary.tunnel.shown_tunnel_url, `the snippet must use the tunnel URL: ${summary.clipboard.snippet}`);
    await shot("hostnames-tunnel");
  });

  check(summary.console_errors.length === 0, `console errors: ${JSON.stringify(summary.console_errors)}`);
} finally {
  await browser.close();
}
finish(summary);
