// Playground: sends the conversation to the router's streaming endpoint with the MoA trace extension and
// renders each layer's agent answers as they arrive, then the aggregator's tokens. With edits allowed by the
// pipeline (GET /v1/playground), a run carries the edited pipeline (`moa_pipeline`, editor.js), each run
// lands in the history for side-by-side comparison (runs.js), and Export turns the edit into a manifest.
// Model output is untrusted text: it is only ever inserted with textContent, never as HTML.
import { $, el, showError } from "./dom.js";
import { aloneAgent, aloneSummary, currentEdit, editForExport, initEditor, summary } from "./editor.js";
import { recordRun, setPrices } from "./runs.js";

const conversation = [];
let lastMessages = null;
let modelName = null;
let controller = null;

// The client key (the router's auth is on unless the pipeline turns it off); sessionStorage: this tab only.
function authHeaders() {
  const key = $("api-key").value.trim();
  sessionStorage.setItem("kubemoe-api-key", key);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: authHeaders() });
    if (resp.status === 401 || resp.status === 403) {
      showError("enter an API key of this pipeline, then send");
      return;
    }
    const body = await resp.json();
    modelName = body.data[0].id;
    $("model").textContent = modelName;
    await loadEditor();
  } catch (err) {
    showError(`cannot load the pipeline: ${err.message || err}`);
  }
}

let editorLoaded = false;

async function loadEditor() {
  if (editorLoaded) return;
  const resp = await fetch("/v1/playground", { headers: authHeaders() });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error ? body.error.message : `HTTP ${resp.status}`);
  editorLoaded = true;
  if (body.allowOverrides) {
    initEditor(body);
    setPrices(body.limits.prices || {});
  }
  else {
    $("editor-off").hidden = false;
    $("editor-off").textContent = body.message;
  }
}

async function exportYaml() {
  $("error").hidden = true;
  const edit = editForExport();
  try {
    const resp = await fetch("/v1/playground/export", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ name: $("export-name").value.trim(), moa_pipeline: edit }),
    });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : `HTTP ${resp.status}`);
    $("export-yaml").hidden = false;
    $("export-yaml").value = body.yaml;
    const link = $("export-download");
    if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([body.yaml], { type: "application/yaml" }));
    link.download = `${body.manifest.metadata.name}.yaml`;
    link.hidden = false;
  } catch (err) {
    showError(`export failed: ${err.message || err}`);
  }
}

function agentCard(layer, agent, model) {
  const card = el("article", { class: "agent", "data-testid": `agent-${agent}`, "data-layer": String(layer) });
  const head = el("header");
  head.append(el("strong", {}, agent), el("span", { class: "model" }, model));
  const status = el("span", { class: "status status-running", "data-testid": `agent-${agent}-status` }, "running…");
  const latency = el("span", { class: "latency", "data-testid": `agent-${agent}-latency` });
  const meta = el("header");
  meta.append(status, latency);
  const text = el("pre", { "data-testid": `agent-${agent}-content` });
  card.append(head, meta, text);
  return card;
}

function onMoaEvent(ev) {
  if (ev.type === "layer_start") {
    const section = el("section", { class: "layer", "data-testid": `layer-${ev.layer}` });
    section.append(el("h3", {}, `Layer ${ev.layer}`));
    const grid = el("div", { class: "agents" });
    for (const a of ev.agents) grid.append(agentCard(ev.layer, a.agent, a.model));
    section.append(grid);
    $("layers").append(section);
  } else if (ev.type === "agent_delta") {
    // A proposer's tokens as they arrive (textContent: model output is untrusted).
    const text = document.querySelector(`[data-testid="agent-${ev.agent}-content"]`);
    if (text) text.textContent += ev.content;
  } else if (ev.type === "agent") {
    const status = document.querySelector(`[data-testid="agent-${ev.agent}-status"]`);
    if (!status) return;
    status.textContent = ev.status;
    status.className = `status status-${ev.status}`;
    document.querySelector(`[data-testid="agent-${ev.agent}-latency"]`).textContent = `${ev.latency_ms} ms`;
    document.querySelector(`[data-testid="agent-${ev.agent}-content"]`).textContent =
      ev.status === "ok" ? ev.content : ev.error || "";
  } else if (ev.type === "aggregator_start") {
    $("status").textContent = `aggregating with ${ev.agent}…`;
  }
}

function onTrace(trace) {
  const agg = trace.aggregator;
  const parts = [];
  if (agg) {
    if (agg.time_to_first_token_ms !== undefined) parts.push(`first token ${agg.time_to_first_token_ms} ms`);
    parts.push(`aggregator ${agg.latency_ms} ms`);
  }
  parts.push(`${trace.usage.total_tokens} tokens in all`);
  $("final-meta").textContent = parts.join(" · ");
}

// Splits an SSE byte stream into the `data` of each event.
async function* sseData(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield data;
    }
  }
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  for (const m of conversation) list.append(el("li", { class: m.role }, `${m.role}: ${m.content}`));
}

// One run of `messages` through the pipeline (edited, when the editor says so), or to one of its models
// alone (`alone`: an agent); recorded in the history.
async function run(messages, question, alone = null) {
  $("error").hidden = true;
  $("layers").replaceChildren();
  $("final").textContent = "";
  $("final-meta").textContent = "";
  $("send").disabled = true;
  $("rerun").disabled = true;
  $("alone-run").disabled = true;
  $("status").textContent = "running…";
  lastMessages = messages;
  const edit = alone ? null : currentEdit();
  const label = alone ? aloneSummary(alone) : summary(edit);
  const request = { model: modelName, messages, stream: true, moa_trace: true };
  if (edit) request.moa_pipeline = edit;
  if (alone) request.moa_alone = alone;
  controller = new AbortController();
  const started = performance.now();
  let answer = "";
  let trace = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(request),
      signal: controller.signal,
    });
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      const err = body.error || {};
      throw new Error(err.message ? (err.param ? `${err.message} [${err.param}]` : err.message) : `HTTP ${resp.status}`);
    }
    for await (const data of sseData(resp.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.moa_trace) {
        trace = chunk.moa_trace;
        onTrace(trace);
      }
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.moa) onMoaEvent(chunk.moa);
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) {
          answer += choice.delta.content;
          $("final").textContent = answer;
        }
      }
    }
    const totalMs = performance.now() - started;
    $("status").textContent = `done in ${Math.round(totalMs)} ms`;
    recordRun({ question, pipeline: label, edit: alone ? { alone } : edit, answer, trace, totalMs });
    return answer;
  } catch (err) {
    $("status").textContent = "failed";
    const message = String(err.message || err);
    showError(message);
    recordRun({ question, pipeline: label, edit: alone ? { alone } : edit, answer, trace, totalMs: performance.now() - started, error: message });
    return null;
  } finally {
    $("send").disabled = false;
    $("rerun").disabled = lastMessages === null;
    $("alone-run").disabled = lastMessages === null;
    controller = null;
  }
}

async function ask(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!modelName) await loadModel(); // e.g. the key was entered after the page loaded
  if (!prompt || !modelName) return;
  const messages = [...conversation, { role: "user", content: prompt }];
  const answer = await run(messages, prompt);
  if (answer !== null) {
    conversation.push({ role: "user", content: prompt }, { role: "assistant", content: answer });
    $("prompt").value = "";
  }
  renderHistory();
}

// The same question again (with the editor's current pipeline), for comparison; the conversation is kept.
async function rerun() {
  if (!lastMessages) return;
  const last = lastMessages[lastMessages.length - 1];
  await run(lastMessages, typeof last.content === "string" ? last.content : "");
}

// The last question to one model alone, for side-by-side comparison with the pipeline's runs.
async function runAlone() {
  if (!lastMessages) return;
  const last = lastMessages[lastMessages.length - 1];
  await run(lastMessages, typeof last.content === "string" ? last.content : "", aloneAgent());
}

function reset() {
  if (controller) controller.abort();
  conversation.length = 0;
  $("layers").replaceChildren();
  $("final").textContent = "";
  $("final-meta").textContent = "";
  $("status").textContent = "";
  $("error").hidden = true;
  renderHistory();
}

$("ask").addEventListener("submit", ask);
$("reset").addEventListener("click", reset);
$("rerun").addEventListener("click", rerun);
$("alone-run").addEventListener("click", runAlone);
$("export").addEventListener("click", exportYaml);
$("api-key").value = sessionStorage.getItem("kubemoe-api-key") || "";
loadModel();
