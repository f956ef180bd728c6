// A remote approval in the web UI's Approvals view (Debian's headless Chromium, playwright-core, a real agent):
// the card of a request opened on a relay hostname says so and has a labelled code field next to Approve; a wrong
// code shows the API's message and keeps the request; the right code approves it.
//
//   node tests/ui/remote-approval.test.mjs <login url from `airlock ui --print`> --id ID [--out DIR]
//
// The right code is read from the environment (AIRLOCK_TEST_CONFIRM_CODE), never argv. The last stdout line is a
// JSON summary; non-zero exit on failure.

import path from "node:path";
import { fileURLToPath } from "node:url";
import { finish, launchBrowser, steps, watchConsole } from "./lib.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opts = { url: null, id: null, out: path.resolve(here, "../artifacts/ui-remote-approval") };
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === "--id") opts.id = args[++i];
  else if (a === "--out") opts.out = path.resolve(args[++i]);
  else if (!opts.url) opts.url = a;
  else {
    console.error(`unexpected argument ${a}`);
    process.exit(2);
  }
}
const code = process.env.AIRLOCK_TEST_CONFIRM_CODE || "";
if (!opts.url || !/#code=/.test(opts.url) || !opts.id || !code) {
  console.error("usage: AIRLOCK_TEST_CONFIRM_CODE=XXXX-XXXX remote-approval.test.mjs <http://127.0.0.1:PORT/#code=…> --id ID [--out DIR]");
  process.exit(2);
}
const STEP_TIMEOUT = 30_000;

const summary = {
  ok: false,
  failures: [],
  remote_badge: null,
  code_field_label: null,
  wrong_code_message: null,
  card_kept_after_wrong_code: null,
  approved: null,
  decision_note: null,
  screenshots: [],
  console_errors: [],
};
const { fail, check, step } = steps(summary);

const browser = await launchBrowser();
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme: "light" });
  context.setDefaultTimeout(STEP_TIMEOUT);
  const page = await context.newPage();
  // The refused approval (422) is expected once.
  watchConsole(page, summary, { expectedStatuses: [401, 422] });
  const shot = async (name) => {
    const file = path.join(opts.out, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    summary.screenshots.push(file);
  };

  await step("login", async () => {
    await page.goto(opts.url);
    await page.locator('[data-view="servers"]').waitFor();
  }, true);

  const card = page.locator(`article.approval[data-approval-id="${opts.id}"]`);
  await step("the remote request's card has a labelled code field next to Approve", async () => {
    await page.evaluate(() => {
      location.hash = "#/approvals";
    });
    await card.waitFor();
    summary.remote_badge = (await card.locator(".badge", { hasText: "in a browser elsewhere" }).count()) === 1;
    check(summary.remote_badge, "no 'in a browser elsewhere' badge on the card");
    const field = card.getByLabel("Code shown on that page");
    summary.code_field_label = (await field.count()) === 1;
    check(summary.code_field_label, "no code field labelled 'Code shown on that page'");
    const inDecide = await card.locator(".decide input.confirm-code-input + button, .decide label.confirm-code + button").count();
    check(inDecide === 1, "the code field is not next to the Approve button");
    await shot("remote-approval");
  }, true);

  await step("a wrong code shows the API's message and keeps the request", async () => {
    const wrong = code.replace(/-/g, "").startsWith("ZZZZ") ? "YYYY-YYYY" : "ZZZZ-ZZZZ";
    await card.getByLabel("Code shown on that page").fill(wrong);
    await card.getByRole("button", { name: /^Approve / }).click();
    const note = card.locator(".server-error");
    await note.waitFor();
    summary.wrong_code_message = (await note.textContent()) || "";
    check(/wrong code/.test(summary.wrong_code_message) && /enter the code it shows/.test(summary.wrong_code_message), `message: ${summary.wrong_code_message}`);
    summary.card_kept_after_wrong_code = (await card.count()) === 1;
    check(summary.card_kept_after_wrong_code, "the request disappeared after a wrong code");
    await shot("remote-approval-wrong-code");
  });

  await step("the right code approves it", async () => {
    await card.getByLabel("Code shown on that page").fill(code.toLowerCase());
    await card.getByRole("button", { name: /^Approve / }).click();
    await card.waitFor({ state: "detached" });
    const note = page.locator(".note", { hasText: "Approved:" });
    await note.waitFor();
    summary.decision_note = await note.textContent();
    summary.approved = true;
  });

  await step("nothing ran", async () => {
    check(summary.console_errors.length === 0, `console errors: ${JSON.stringify(summary.console_errors)}`);
  });
} finally {
  await browser.close();
}
finish(summary);
