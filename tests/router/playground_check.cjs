// Drives the router's playground in headless Chromium (playwright-core, no bundled browser) and prints one
// JSON object with what it observed; tests/router/test_router_playground.py runs it and asserts on it.
// Usage: node playground_check.cjs ROUTER_BASE_URL CHROMIUM_PATH [chat|edit]
"use strict";
const fs = require("fs");
const { chromium } = require("playwright-core");

// The fixed pipeline: agent answers stream in before the aggregator's tokens.
async function chatScenario(page, out) {
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

}

const text = (page, id) => page.getByTestId(id).textContent();

// Edit the pipeline (a proposer's temperature and prompt, a new layer, the aggregator), run, change the
// temperature again and run the same question again, compare both runs, ask one model alone, export, then
// provoke a refusal.
async function editScenario(page, out) {
  await page.getByTestId("ed-layer-2").waitFor({ timeout: 5000 });
  out.editLimits = await text(page, "edit-limits");
  out.layerEditors = await page.locator("[data-testid^=ed-layer-]").count();
  await page.getByTestId("ed-1-1-temperature").fill("1.3");
  await page.getByTestId("ed-1-1-prompt").fill("Be brief, {{ 'a' | upper }}.");
  await page.getByTestId("ed-add-layer").click();
  await page.getByTestId("ed-3-1-model").selectOption({ index: 1 }); // models: a, b, c, agg
  await page.getByTestId("ed-3-1-top-p").fill("0.5");
  await page.getByTestId("ed-agg-model").selectOption({ index: 2 });
  await page.getByTestId("ed-agg-prompt").fill("Merge {{ responses | length }} answers.");
  await page.getByTestId("ed-agg-temperature").fill("0.1");
  await page.getByTestId("prompt").fill("Capital of France?");
  await page.getByTestId("send").click();
  await page.getByTestId("run-1").waitFor({ timeout: 8000 });
  out.layersRun1 = await page.locator("[data-testid^=layer-]").count();

  await page.getByTestId("ed-1-1-temperature").fill("0.2");
  await page.getByTestId("rerun").click();
  await page.getByTestId("run-2").waitFor({ timeout: 8000 });
  out.compared = await page.locator("[data-testid=compare] > article").count();
  out.runs = [];
  for (const n of [1, 2]) {
    out.runs.push({
      pipeline: await text(page, `compare-${n}-pipeline`),
      total: await text(page, `compare-${n}-total`),
      answer: await text(page, `compare-${n}-answer`),
      agentA: await text(page, `compare-${n}-agent-a`),
      newAgent: await text(page, `compare-${n}-agent-agent-4`),
      aggregator: await text(page, `compare-${n}-aggregator`),
    });
  }
  out.changes = await page.getByTestId("compare-2-changes").textContent();
  // The timeline of run 2: one row per call, bars placed on the request's clock.
  out.timeline = await page.getByTestId("compare-2-timeline").evaluate((box) =>
    [...box.querySelectorAll(".tl-row")].map((row) => {
      const bar = row.querySelector(".tl-bar");
      return { label: row.querySelector(".tl-label").textContent, left: parseFloat(bar.style.left), width: parseFloat(bar.style.width) };
    }));
  out.history = await page.getByTestId("history").locator("li").allTextContents();
  // The same question to one model alone (model a), beside the pipeline's runs.
  await page.getByTestId("alone-model").selectOption({ index: 0 });
  await page.getByTestId("alone-run").click();
  await page.getByTestId("run-3").waitFor({ timeout: 8000 });
  out.alone = {
    pipeline: await text(page, "compare-3-pipeline"),
    total: await text(page, "compare-3-total"),
    answer: await text(page, "compare-3-answer"),
    aggregator: await text(page, "compare-3-aggregator"),
    timeline: await page.getByTestId("compare-3-timeline").locator(".tl-label").allTextContents(),
  };
  // Unticking a run takes it out of the comparison.
  await page.getByTestId("run-1-compare").uncheck();
  out.comparedAfterUntick = await page.locator("[data-testid=compare] > article").count();

  await page.getByTestId("export-name").fill("moa-edited");
  await page.getByTestId("export").click();
  await page.getByTestId("export-yaml").waitFor({ state: "visible", timeout: 5000 });
  out.yaml = await page.getByTestId("export-yaml").inputValue();
  // The Download link saves the same YAML (a blob: URL made in the page, nothing fetched elsewhere).
  const [download] = await Promise.all([
    page.waitForEvent("download", { timeout: 5000 }),
    page.getByTestId("export-download").click(),
  ]);
  out.downloadName = download.suggestedFilename();
  out.downloadText = fs.readFileSync(await download.path(), "utf8");

  // A template that does not parse: the router's 400 (naming the problem) is shown, nothing runs.
  await page.getByTestId("ed-2-1-prompt").fill("{% if %}");
  await page.getByTestId("rerun").click();
  await page.getByTestId("run-4").waitFor({ timeout: 8000 });
  out.templateError = await text(page, "error");
}

async function main() {
  const [base, executablePath, mode] = process.argv.slice(2);
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
    page.on("request", (req) => {
      const url = req.url();
      if (!url.startsWith(base) && !url.startsWith(`blob:${base}`)) out.foreignRequests.push(url);
    });
    await page.goto(`${base}/`);
    await page.getByTestId("model").filter({ hasText: "moa-test" }).waitFor({ timeout: 5000 });
    if (mode === "edit") await editScenario(page, out);
    else await chatScenario(page, out);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => { process.stderr.write(String(err && err.stack || err)); process.exit(1); });
