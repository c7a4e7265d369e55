// The pipeline editor: layers of agents and the aggregator, as the MoAPipeline spec spells them (camelCase).
// Models are picked from the deployed pipeline's own models (GET /v1/playground), never typed in: the router
// refuses any other model anyway (403). Every change edits `state.edit`, which a run sends as `moa_pipeline`.
import { $, el } from "./dom.js";

let state = null; // { info, deployed, edit }

export function modelKey(ref) {
  if (ref.moeModelRef) return `moe:${ref.moeModelRef.name}`;
  return `endpoint:${ref.endpoint.url}#${ref.endpoint.model}`;
}

function modelLabel(m) {
  return m.moeModelRef ? `${m.moeModelRef.name} (MoEModel)` : `${m.endpoint.model} @ ${m.endpoint.url}`;
}

function setModel(target, key) {
  const m = state.info.models.find((x) => x.key === key);
  delete target.moeModelRef;
  delete target.endpoint;
  if (m.moeModelRef) target.moeModelRef = structuredClone(m.moeModelRef);
  else target.endpoint = structuredClone(m.endpoint);
}

// "" leaves the field out (the spec's default applies); anything else is sent as a number, and what the
// router thinks of it (a 400 naming the field) is shown in the error box.
function numberInput(testid, obj, field, attrs) {
  const input = el("input", { type: "number", "data-testid": testid, ...attrs });
  input.value = obj[field] === undefined ? "" : String(obj[field]);
  input.addEventListener("input", () => {
    if (input.value === "") delete obj[field];
    else obj[field] = Number(input.value);
  });
  return input;
}

function labelled(text, control) {
  const label = el("label", { class: "field" });
  label.append(el("span", {}, text), control);
  return label;
}

function modelSelect(testid, target) {
  const select = el("select", { "data-testid": testid });
  for (const m of state.info.models) select.append(el("option", { value: m.key }, modelLabel(m)));
  select.value = modelKey(target);
  select.addEventListener("change", () => setModel(target, select.value));
  return select;
}

function promptArea(testid, obj, field, placeholder) {
  const area = el("textarea", { "data-testid": testid, rows: "3", placeholder });
  area.value = obj[field] || "";
  area.addEventListener("input", () => {
    if (area.value === "") delete obj[field];
    else obj[field] = area.value;
  });
  return area;
}

function sampling(prefix, target) {
  return [
    labelled("temperature", numberInput(`${prefix}-temperature`, target, "temperature", { min: "0", max: "2", step: "0.1", placeholder: "0.7" })),
    labelled("top_p", numberInput(`${prefix}-top-p`, target, "topP", { min: "0", max: "1", step: "0.05", placeholder: "unset" })),
    labelled("max tokens", numberInput(`${prefix}-max-tokens`, target, "maxTokens", { min: "1", step: "1" })),
  ];
}

function agentNames() {
  return new Set(state.edit.layers.flatMap((l) => l.agents.map((a) => a.name)));
}

function newAgent() {
  const names = agentNames();
  let n = names.size + 1;
  while (names.has(`agent-${n}`)) n += 1;
  const agent = { name: `agent-${n}` };
  setModel(agent, state.info.models[0].key);
  return agent;
}

function agentEditor(li, ai, agent) {
  const prefix = `ed-${li + 1}-${ai + 1}`;
  const box = el("fieldset", { class: "agent-edit", "data-testid": prefix });
  box.append(el("legend", {}, `agent ${ai + 1}`));
  const name = el("input", { "data-testid": `${prefix}-name`, value: agent.name, size: "14" });
  name.addEventListener("input", () => { agent.name = name.value; });
  const remove = el("button", { type: "button", "data-testid": `${prefix}-remove` }, "Remove agent");
  remove.addEventListener("click", () => {
    state.edit.layers[li].agents.splice(ai, 1);
    if (state.edit.layers[li].agents.length === 0) state.edit.layers.splice(li, 1);
    render();
  });
  const row = el("div", { class: "row" });
  row.append(labelled("name", name), labelled("model", modelSelect(`${prefix}-model`, agent)), ...sampling(prefix, agent));
  box.append(row, labelled("system prompt (jinja2)", promptArea(`${prefix}-prompt`, agent, "systemPrompt", "none")), remove);
  return box;
}

function render() {
  const layers = $("edit-layers");
  layers.replaceChildren();
  state.edit.layers.forEach((layer, li) => {
    const section = el("section", { class: "layer-edit", "data-testid": `ed-layer-${li + 1}` });
    section.append(el("h3", {}, `Layer ${li + 1}`));
    layer.agents.forEach((agent, ai) => section.append(agentEditor(li, ai, agent)));
    const add = el("button", { type: "button", "data-testid": `ed-add-agent-${li + 1}` }, "Add agent");
    add.addEventListener("click", () => { layer.agents.push(newAgent()); render(); });
    const drop = el("button", { type: "button", "data-testid": `ed-remove-layer-${li + 1}` }, "Remove layer");
    drop.addEventListener("click", () => { state.edit.layers.splice(li, 1); render(); });
    const actions = el("div", { class: "actions" });
    actions.append(add, drop);
    section.append(actions);
    layers.append(section);
  });
  const agg = state.edit.aggregator;
  const box = $("edit-aggregator");
  box.replaceChildren(el("legend", {}, "Aggregator"));
  const row = el("div", { class: "row" });
  row.append(labelled("model", modelSelect("ed-agg-model", agg)), ...sampling("ed-agg", agg));
  box.append(row, labelled("prompt template (jinja2 over responses)", promptArea("ed-agg-prompt", agg, "promptTemplate", "the MoA paper's aggregate-and-synthesize prompt")));
  const { maxLayers, maxAgents, maxTokens } = state.info.limits;
  $("edit-limits").textContent = `at most ${maxLayers} layers, ${maxAgents} agents, ${maxTokens} max tokens`;
}

export function initEditor(info) {
  state = { info, deployed: structuredClone(info.edit), edit: structuredClone(info.edit), alone: { name: "alone" } };
  $("editor").hidden = false;
  $("export-name").value = info.pipeline;
  render();
  // One of the pipeline's models on its own (`moa_alone`), the baseline to compare a run with.
  setModel(state.alone, info.models[0].key);
  const pick = modelSelect("alone-model", state.alone);
  pick.id = "alone-model";
  $("alone-model").replaceWith(pick);
  $("alone").hidden = false;
  $("ed-add-layer").addEventListener("click", () => {
    state.edit.layers.push({ agents: [newAgent()] });
    render();
  });
  $("ed-reset").addEventListener("click", () => {
    state.edit = structuredClone(state.deployed);
    render();
  });
}

// The edit to send with a run, or null to run the pipeline as deployed.
export function currentEdit() {
  if (!state || !$("use-edit").checked) return null;
  return structuredClone(state.edit);
}

// The model to ask on its own (an agent as the spec spells it), for `moa_alone`.
export function aloneAgent() {
  return state ? structuredClone(state.alone) : null;
}

export function aloneSummary(agent) {
  return `${agent.moeModelRef ? agent.moeModelRef.name : agent.endpoint.model} alone`;
}

export function editForExport() {
  return state ? structuredClone(state.edit) : null;
}

export function summary(edit) {
  if (!edit) return "deployed pipeline";
  const agents = edit.layers.reduce((n, l) => n + l.agents.length, 0);
  const agg = edit.aggregator.moeModelRef ? edit.aggregator.moeModelRef.name : edit.aggregator.endpoint.model;
  return `edited: ${edit.layers.length} layers · ${agents} agents · aggregator ${agg}`;
}
