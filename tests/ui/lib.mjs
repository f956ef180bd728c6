// What the web UI scripts in this directory share: the browser they drive (Debian's headless
// Chromium through playwright-core), the step/check bookkeeping that fills a script's JSON
// summary, and the summary's printing as the last stdout line.

import fs from "node:fs";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.AIRLOCK_E2E_CHROMIUM || "/usr/bin/chromium";

// Exits 3 with a hint when the browser is missing.
export function requireChromium() {
  if (!fs.existsSync(CHROMIUM)) {
    console.error(`${CHROMIUM} is missing: run scripts/test (it installs Debian's chromium)`);
    process.exit(3);
  }
}

// Headless Chromium with nothing that talks to the network on its own.
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

// `fail`, `check` and `step` recording into `summary.failures`.
export function steps(summary) {
  let aborted = false;
  function fail(msg) {
    summary.failures.push(msg);
    console.error(`FAIL: ${msg}`);
  }
  function check(cond, msg) {
    if (!cond) fail(msg);
    return Boolean(cond);
  }
  // Runs one step; a failed step records why. After a failed `critical` step (nothing after it
  // can work) the remaining steps are skipped so the run ends quickly.
  async function step(name, fn, critical = false) {
    if (aborted) {
      console.error(`-- ${name}: skipped`);
      return;
    }
    console.error(`-- ${name}`);
    try {
      await fn();
    } catch (err) {
      fail(`${name}: ${err && err.message ? err.message.split("\n")[0] : String(err)}`);
      aborted = aborted || critical;
    }
  }
  return { fail, check, step };
}

// Records in `summary.console_errors` what the page logs as an error or a CSP refusal (the page
// tried to run or load something inline or foreign), at most 20 of those, and every uncaught
// exception, each prefixed with `label: ` when there is a label. Chromium logs every non-2xx
// fetch: `expectedStatuses` are answers the page handles (the steps check what it shows).
export function watchConsole(page, summary, { label = null, expectedStatuses = [] } = {}) {
  const prefix = label === null ? "" : `${label}: `;
  const expected = expectedStatuses.length === 0
    ? null
    : new RegExp(`Failed to load resource: the server responded with a status of (${expectedStatuses.join("|")})\\b`);
  page.on("console", (msg) => {
    const text = msg.text();
    if (summary.console_errors.length >= 20) return;
    if (msg.type() === "error" || /Content Security Policy|Refused to/i.test(text)) {
      if (expected && expected.test(text)) return;
      summary.console_errors.push(`${prefix}${text}`);
    }
  });
  page.on("pageerror", (err) => summary.console_errors.push(`${prefix}uncaught ${err.message}`));
}

// Reads the clipboard until it holds something (the Copy button may fetch the token first).
export async function readClipboard(page, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await page.evaluate(() => navigator.clipboard.readText());
    if (text !== "") return text;
    if (Date.now() > deadline) throw new Error("nothing reached the clipboard");
    await new Promise((r) => setTimeout(r, 100));
  }
}

// Prints the summary as the last stdout line and exits non-zero unless nothing failed.
export function finish(summary) {
  summary.ok = summary.failures.length === 0;
  console.log(JSON.stringify(summary));
  process.exit(summary.ok ? 0 : 1);
}
