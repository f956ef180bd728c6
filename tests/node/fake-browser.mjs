#!/usr/bin/env node
// A stand-in for the person's web browser, for clients that open the authorization URL with xdg-open/$BROWSER.
// It does what a browser without JavaScript does: GET the authorization page (which raises the pending approval
// in the agent), follow the page's meta refresh to its status URL until the request is decided, then follow the
// 303 to the client's loopback callback. Only loopback URLs are fetched. A trace goes to $FAKE_BROWSER_LOG.
import { appendFileSync } from "node:fs";

const LOG = process.env.FAKE_BROWSER_LOG;
const log = (msg) => {
  if (LOG) appendFileSync(LOG, `${new Date().toISOString()} ${msg}\n`);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function loopbackOnly(u) {
  const url = new URL(u);
  if (!["127.0.0.1", "localhost", "[::1]"].includes(url.hostname)) {
    throw new Error(`refusing to leave the machine: ${url.origin}`);
  }
  return url;
}

function metaRefresh(html, base) {
  const m = html.match(/<meta[^>]+http-equiv=["']?refresh["']?[^>]*content=["']([^"']*)["']/i);
  if (!m) return null;
  const [delay, rest] = m[1].split(";", 2);
  const target = rest ? rest.trim().replace(/^url\s*=\s*/i, "") : base;
  return { delay: Number.parseFloat(delay) || 0, url: new URL(target.replaceAll("&amp;", "&"), base).href };
}

async function get(url) {
  const res = await fetch(loopbackOnly(url), { redirect: "manual", headers: { accept: "text/html" } });
  const body = await res.text();
  log(`GET ${url} -> ${res.status}`);
  return { res, body };
}

async function main() {
  let url = process.argv[2];
  if (!url) throw new Error("usage: fake-browser.mjs <url>");
  const deadline = Date.now() + 180_000;
  while (Date.now() < deadline) {
    const { res, body } = await get(url);
    if (res.status >= 300 && res.status < 400) {
      const location = res.headers.get("location");
      if (!location) throw new Error(`${res.status} without Location`);
      url = new URL(location, url).href;
      continue;
    }
    if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}: ${body.slice(0, 300)}`);
    const next = metaRefresh(body, url);
    if (!next) {
      log("page without a refresh: done");
      return;
    }
    await sleep(Math.min(next.delay, 1) * 1000);
    url = next.url;
  }
  throw new Error("the request was not decided in time");
}

main().catch((e) => {
  log(`error: ${e.message}`);
  process.exit(1);
});
