// Playground: sends the conversation to the router's streaming endpoint with the MoA trace extension and
// renders each layer's agent answers as they arrive, then the aggregator's tokens.
// Model output is untrusted text: it is only ever inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const conversation = [];
let modelName = null;
let controller = null;

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function showError(message) {
  const box = $("error");
  box.hidden = false;
  box.textContent = message;
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/models");
    const body = await resp.json();
    modelName = body.data[0].id;
    $("model").textContent = modelName;
  } catch (err) {
    showError(`cannot list models: ${err}`);
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

async function ask(event) {
  event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt || !modelName) return;
  $("error").hidden = true;
  $("layers").replaceChildren();
  $("final").textContent = "";
  $("final-meta").textContent = "";
  $("send").disabled = true;
  $("status").textContent = "running…";
  conversation.push({ role: "user", content: prompt });
  controller = new AbortController();
  const started = performance.now();
  let answer = "";
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: modelName, messages: conversation, stream: true, moa_trace: true }),
      signal: controller.signal,
    });
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : `HTTP ${resp.status}`);
    }
    for await (const data of sseData(resp.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.moa) onMoaEvent(chunk.moa);
      if (chunk.moa_trace) onTrace(chunk.moa_trace);
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) {
          answer += choice.delta.content;
          $("final").textContent = answer;
        }
      }
    }
    conversation.push({ role: "assistant", content: answer });
    $("status").textContent = `done in ${Math.round(performance.now() - started)} ms`;
    $("prompt").value = "";
  } catch (err) {
    conversation.pop();
    $("status").textContent = "failed";
    showError(String(err.message || err));
  } finally {
    $("send").disabled = false;
    controller = null;
    renderHistory();
  }
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
loadModel();
