// The history of runs and their side-by-side comparison: answer, each agent's latency and tokens, the
// aggregator's, and the run's total latency and tokens. A new run is selected for comparison at once; the
// checkboxes choose which runs stand side by side.
import { $, el } from "./dom.js";

const runs = [];
let prices = {}; // served model name -> { inputUsdPerMillionTokens, outputUsdPerMillionTokens } (spec.playground.prices)

export function setPrices(p) {
  prices = p;
}

// The run's estimated cost from the spec's token prices: every call's prompt and completion tokens at its
// model's price. A call whose model has no price makes the estimate partial (said so), never free.
function cost(run) {
  const calls = [...run.agents, ...(run.aggregator ? [run.aggregator] : [])].filter((c) => c.usage);
  let usd = 0;
  let unpriced = 0;
  for (const c of calls) {
    const p = prices[c.model];
    if (!p) { unpriced += 1; continue; }
    usd += (c.usage.prompt_tokens * (p.inputUsdPerMillionTokens || 0) + c.usage.completion_tokens * (p.outputUsdPerMillionTokens || 0)) / 1e6;
  }
  if (calls.length === 0) return "cost: –";
  if (unpriced === calls.length) return "cost: no price set (spec.playground.prices)";
  const text = `≈ $${usd.toFixed(6)}`;
  return unpriced ? `${text} (${unpriced} of ${calls.length} calls unpriced)` : text;
}

function tokens(usage) {
  return usage ? `${usage.total_tokens} tok` : "– tok";
}

// A run from the final `moa_trace` of its stream (or what arrived before an error).
export function recordRun({ question, pipeline, edit, answer, trace, totalMs, error }) {
  const agents = [];
  for (const layer of (trace && trace.layers) || []) {
    for (const a of layer.agents) agents.push(a);
  }
  runs.push({
    n: runs.length + 1,
    question,
    pipeline,
    settings: edit ? flatten(edit) : null,
    answer,
    agents,
    layers: trace ? trace.layers : [],
    aggregator: trace ? trace.aggregator : null,
    usage: trace ? trace.usage : null,
    totalMs: Math.round(totalMs),
    error,
    compare: true,
  });
  render();
}

// An edit as path -> value ("layers.1.agents.1.temperature" -> 1.3; numbered from 1 like the page), to show
// what changed between two compared runs. The deployed pipeline (no edit) has no settings of its own.
function flatten(value, path = "", out = {}) {
  if (value === null || value === undefined) return out;
  if (typeof value !== "object") {
    out[path] = value;
    return out;
  }
  const array = Array.isArray(value);
  for (const [key, item] of Object.entries(value)) {
    const part = array ? String(Number(key) + 1) : key;
    flatten(item, path ? `${path}.${part}` : part, out);
  }
  return out;
}

function changes(before, after) {
  if (!before.settings && !after.settings) return [];
  const a = before.settings || {};
  const b = after.settings || {};
  const show = (v) => (v === undefined ? "(unset)" : JSON.stringify(v));
  return [...new Set([...Object.keys(a), ...Object.keys(b)])]
    .filter((k) => a[k] !== b[k])
    .map((k) => `${k}: ${show(a[k])} → ${show(b[k])}`);
}

function agentLine(testid, a) {
  const ttft = a.time_to_first_token_ms !== undefined ? ` · first token ${a.time_to_first_token_ms} ms` : "";
  const where = a.layer === "agg" ? "" : `L${a.layer} `;
  return el("li", { "data-testid": testid }, `${where}${a.agent} (${a.model}) ${a.status} · ${a.latency_ms} ms${ttft} · ${tokens(a.usage)}`);
}

// Each call's span on the request's clock, from the trace: a layer's agents start together when the previous
// layer ends (layer elapsed times add up), the aggregator after the last layer. The bar runs from start to end,
// its darker part from start to the first token. Positions are set through CSSOM (the CSP forbids inline style).
function timeline(run) {
  // Each call's start as the trace reports it (`start_ms`, on the run's clock); an older router's trace has
  // none, and then a layer's calls are placed where the previous layers' elapsed times add up.
  const rows = [];
  let offset = 0;
  const at = (call, fallback) => (call.start_ms !== undefined ? call.start_ms : fallback);
  for (const layer of run.layers) {
    for (const a of layer.agents) rows.push({ label: `L${layer.layer} ${a.agent}`, start: at(a, offset), call: a });
    offset += layer.elapsed_ms;
  }
  if (run.aggregator) rows.push({ label: run.layers.length ? "aggregator" : run.aggregator.agent, start: at(run.aggregator, offset), call: run.aggregator });
  const end = Math.max(1, ...rows.map((r) => r.start + r.call.latency_ms));
  const box = el("div", { class: "timeline", "data-testid": `compare-${run.n}-timeline` });
  for (const r of rows) {
    const row = el("div", { class: "tl-row" });
    const track = el("div", { class: "tl-track" });
    const bar = el("span", { class: `tl-bar tl-${r.call.status}`, title: `${r.label}: ${r.start.toFixed(1)} → ${(r.start + r.call.latency_ms).toFixed(1)} ms` });
    bar.style.left = `${(100 * r.start) / end}%`;
    bar.style.width = `${Math.max(0.5, (100 * r.call.latency_ms) / end)}%`;
    if (r.call.time_to_first_token_ms !== undefined) {
      const wait = el("span", { class: "tl-wait" });
      wait.style.width = `${(100 * r.call.time_to_first_token_ms) / Math.max(r.call.latency_ms, 0.001)}%`;
      bar.append(wait);
    }
    track.append(bar);
    row.append(el("span", { class: "tl-label" }, r.label), track);
    box.append(row);
  }
  box.append(el("div", { class: "tl-scale" }, `0 – ${Math.round(end)} ms (dark: until the first token)`));
  return box;
}

function column(run, previous) {
  const col = el("article", { class: "run-col", "data-testid": `compare-${run.n}` });
  col.append(el("h3", {}, `Run ${run.n}`));
  col.append(el("p", { class: "pipeline", "data-testid": `compare-${run.n}-pipeline` }, run.pipeline));
  col.append(el("p", { class: "question" }, `Q: ${run.question}`));
  const total = `${run.totalMs} ms total · ${run.usage ? run.usage.total_tokens : "–"} tokens · ${cost(run)}`;
  col.append(el("p", { class: "total", "data-testid": `compare-${run.n}-total` }, total));
  if (previous) {
    const diff = changes(previous, run);
    const box = el("details", { class: "changes", "data-testid": `compare-${run.n}-changes` });
    box.append(el("summary", {}, diff.length ? `${diff.length} change(s) since run ${previous.n}` : `same settings as run ${previous.n}`));
    for (const line of diff) box.append(el("div", {}, line));
    if (diff.length && diff.length <= 3) box.open = true;
    col.append(box);
  }
  if (run.error) col.append(el("p", { class: "error", "data-testid": `compare-${run.n}-error` }, run.error));
  col.append(el("pre", { "data-testid": `compare-${run.n}-answer` }, run.answer));
  const list = el("ul", { class: "agent-lines" });
  for (const a of run.agents) list.append(agentLine(`compare-${run.n}-agent-${a.agent}`, a));
  if (run.aggregator) list.append(agentLine(`compare-${run.n}-aggregator`, { ...run.aggregator, layer: "agg" }));
  col.append(list);
  if (run.layers.length || run.aggregator) col.append(timeline(run));
  return col;
}

function render() {
  const list = $("runs");
  list.replaceChildren();
  for (const run of runs) {
    const item = el("li", { "data-testid": `run-${run.n}` });
    const box = el("input", { type: "checkbox", "data-testid": `run-${run.n}-compare`, "aria-label": `compare run ${run.n}` });
    box.checked = run.compare;
    box.addEventListener("change", () => { run.compare = box.checked; render(); });
    const state = run.error ? "failed" : `${run.totalMs} ms`;
    item.append(box, el("span", {}, ` Run ${run.n} · ${run.pipeline} · ${state} · ${run.usage ? run.usage.total_tokens : "–"} tokens`));
    list.append(item);
  }
  const shown = runs.filter((r) => r.compare);
  $("compare").replaceChildren(...shown.map((r, i) => column(r, shown[i - 1])));
}
