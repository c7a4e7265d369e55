// Drives the router's playground in headless Chromium (playwright-core, no bundled browser) and prints one
// JSON object with what it observed; tests/router/test_router_playground.py runs it and asserts on it.
// Usage: node playground_check.cjs ROUTER_BASE_URL CHROMIUM_PATH
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [base, executablePath] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  const out = { consoleErrors: [], foreignRequests: [] };
  try {
    const page = await browser.newPage();
    page.on("console", (msg) => { if (msg.type() === "error") out.consoleErrors.push(msg.text()); });
    page.on("pageerror", (err) => out.consoleErrors.push(String(err)));
    page.on("request", (req) => { if (!req.url().startsWith(base)) out.foreignRequests.push(req.url()); });
    await page.goto(`${base}/`);
    await page.getByTestId("model").filter({ hasText: "moa-test" }).waitFor({ timeout: 5000 });

    await page.getByTestId("prompt").fill("Capital of France?");
    await page.getByTestId("send").click();
    // Layer 1's agent answer must be on screen while the final answer is still empty.
    await page.getByTestId("agent-a-status").filter({ hasText: "ok" }).waitFor({ timeout: 5000 });
    out.finalWhenFirstAgentDone = await page.getByTestId("final").textContent();
    out.agentA = await page.getByTestId("agent-a-content").textContent();
    out.agentALatency = await page.getByTestId("agent-a-latency").textContent();
    await page.getByTestId("status").filter({ hasText: "done in" }).waitFor({ timeout: 8000 });
    out.final = await page.getByTestId("final").textContent();
    out.finalMeta = await page.getByTestId("final-meta").textContent();
    out.layers = await page.locator("[data-testid^=layer-]").count();
    out.agentC = await page.getByTestId("agent-c-content").textContent();
    out.history = await page.getByTestId("history").locator("li").allTextContents();
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => { process.stderr.write(String(err && err.stack || err)); process.exit(1); });
