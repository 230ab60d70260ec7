// The dashboard: follows /dashboard/feed and renders it; the actions (place, delete, chat) call the API.
import { follow, getJSON, HttpError, keyWasEntered, sendJSON, setKey, setUnauthorizedHandler, streamChat } from "./api.js";
import { sparkline, topology } from "./charts.js";
import { bytes, colorOf, esc, label, renderInstances, renderNodes, renderWaiting, setLabels } from "./render.js";

const $ = (id) => document.getElementById(id);
let cluster = { nodes: [], links: [], instances: [], waiting: [], models: [], leader: {} };
let metrics = null;
let completedSeen = -1;

function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
}

function setConnection(state) {
  const chip = $("conn");
  chip.className = `chip live ${state === "on" ? "on" : "off"}`;
  chip.querySelector("span").textContent = { on: "live", off: "reconnecting", locked: "needs API key" }[state];
  $("key-form").hidden = state !== "locked";
}

function fillSelect(select, options, keep) {
  const html = options.map(([value, label]) => `<option value="${esc(value)}">${esc(label)}</option>`).join("");
  if (select.dataset.html === html) return;
  const previous = select.value;
  select.innerHTML = html;
  select.dataset.html = html;
  if (keep && options.some(([v]) => v === previous)) select.value = previous;
}

function renderCluster() {
  const { leader, nodes, links, instances, waiting, models } = cluster;
  $("leader").textContent = leader.node_id ? `leader ${leader.hostname || leader.node_id} · term ${leader.term}` : "no leader";
  $("node-count").textContent = `${nodes.length} node${nodes.length === 1 ? "" : "s"}`;
  $("instance-count").textContent = `${instances.length} instance${instances.length === 1 ? "" : "s"}`;
  $("events-applied").textContent = `${cluster.events_applied} events`;
  setLabels(nodes);
  topology($("topology"), nodes, links, colorOf, label);
  renderNodes($("nodes"), nodes);
  renderInstances($("instances"), instances);
  renderWaiting($("waiting"), waiting);
  fillSelect($("place-models"), models.map((m) => [m.model_id, `${m.name} · ${bytes(m.bytes)}`]), true);
  const ready = [...new Set(instances.filter((i) => i.status === "ready").map((i) => i.model))];
  fillSelect($("chat-model"), ready.length ? ready.map((m) => [m, m]) : [["", "no model ready"]], true);
  $("chat-send").disabled = !ready.length;
}

function renderMetrics() {
  const m = metrics;
  const last = (values) => values.filter((v) => v !== null).at(-1);
  const recent = m.tokens_per_s.slice(-2).filter((v) => v !== null);
  $("m-tps").textContent = recent.length ? Math.max(...recent).toFixed(1) : "0";
  $("m-inflight").textContent = m.in_flight;
  $("m-waiting").textContent = m.waiting;
  const ttft = last(m.ttft_ms);
  $("m-ttft").textContent = ttft === undefined ? "—" : ttft >= 1000 ? `${(ttft / 1000).toFixed(1)} s` : `${Math.round(ttft)} ms`;
  sparkline($("c-tps"), [{ values: m.tokens_per_s, cls: "line" }]);
  sparkline($("c-ttft"), [{ values: m.ttft_ms, cls: "line" }], " ms");
  sparkline($("c-req"), [{ values: m.in_flight_series, cls: "line" }, { values: m.waiting_series, cls: "line2" }]);
  if (m.completed !== completedSeen) {
    completedSeen = m.completed;
    // the leader writes a finished request into the log in its next batch (about a second): ask now and once more
    loadInferences();
    setTimeout(loadInferences, 2500);
  }
}

// GET /v1/inferences comes from the inference log; a gateway without it answers 404 and the panel stays hidden.
let inferencesMissing = false;  // a 404 once: this gateway has no inference log; a reload asks again
async function loadInferences() {
  if (inferencesMissing) return;
  try {
    const body = await getJSON("/v1/inferences?limit=12");
    const rows = Array.isArray(body) ? body : body.data || body.inferences || body.rows || [];
    const columns = ["timestamp", "model", "prompt_tokens", "completion_tokens", "latency_ms", "strategy", "devices"];
    const cell = (row, c) => {
      const v = row[c];
      if (c === "timestamp" && v) return esc(new Date(typeof v === "number" ? v * (v < 1e12 ? 1000 : 1) : v).toLocaleTimeString());
      return esc(Array.isArray(v) ? v.length : typeof v === "number" ? +v.toFixed(1) : v);
    };
    $("inferences").innerHTML = rows.length
      ? `<table><tr>${columns.map((c) => `<th>${c.replace("_", " ")}</th>`).join("")}</tr>${rows.map((r) =>
        `<tr>${columns.map((c) => `<td>${cell(r, c)}</td>`).join("")}</tr>`).join("")}</table>`
      : '<p class="empty">No inference recorded yet.</p>';
    $("inferences-card").hidden = false;
  } catch (err) {
    if (err instanceof HttpError && err.status === 404) { inferencesMissing = true; $("inferences-card").hidden = true; }
  }
}

async function preview(event) {
  event.preventDefault();
  const model = $("place-model").value.trim();
  const box = $("preview");
  box.innerHTML = '<p class="empty">Asking the master…</p>';
  try {
    const p = await getJSON(`/instances/preview?model=${encodeURIComponent(model)}&min_nodes=${$("place-min").value || 1}`);
    const host = (id) => label(id);
    const card = cluster.models.find((m) => m.model_id === model);
    // what each node would hold of the weights (the master reserves a little more: KV cache and headroom)
    const estimate = (o) => o.shards.map((s) =>
      `${esc(host(s.node_id))}: ${s.end_layer - s.start_layer} layers ≈ ${bytes((card.bytes * (s.end_layer - s.start_layer)) / card.layers)}`).join(" · ");
    const options = p.options.map((o, i) => `<div class="option ${o.feasible ? "" : "infeasible"}">
      <header><span><b>${esc(o.strategy)}</b> · ${esc(o.backend)} · ${o.n_nodes} node${o.n_nodes > 1 ? "s" : ""}</span>
      ${o.feasible ? `<button data-option="${i}">Place</button>` : '<span class="pill failed">infeasible</span>'}</header>
      ${o.feasible ? `<div class="layers" style="margin-top:8px">${o.shards.map((s) =>
        `<span style="--c:${colorOf(s.node_id)};width:${(100 * (s.end_layer - s.start_layer)) / card.layers}%">${esc(host(s.node_id))} ${s.start_layer}–${s.end_layer - 1}</span>`).join("")}</div>
        <div class="est">${estimate(o)}</div>`
        : `<div class="why">${esc(o.reason)}</div>`}</div>`).join("");
    const memory = `<table class="memtable"><tr><th>node</th><th class="num">budget</th><th class="num">held</th><th class="num">free</th></tr>
      ${p.memory.map((m) => `<tr><td>${esc(host(m.node_id))}</td><td class="num">${bytes(m.total)}</td><td class="num">${bytes(m.held)}</td><td class="num">${bytes(m.free)}</td></tr>`).join("")}</table>`;
    box.innerHTML = (options || '<p class="empty">No plan.</p>') + memory;
    box.onclick = (e) => {
      const index = e.target.dataset?.option;
      if (index !== undefined) place(model, p.options[+index], e.target);
    };
  } catch (err) {
    box.innerHTML = `<p class="error">${esc(err.message)}</p>`;
  }
}

async function place(model, option, button) {
  button.disabled = true;
  button.textContent = "Placing…";
  try {
    const inst = await sendJSON("POST", "/instances", { model, strategy: option.strategy, backend: option.backend, min_nodes: option.n_nodes });
    toast(`Placed ${inst.instance_id}`);
    $("preview").innerHTML = "";
  } catch (err) {
    toast(`Placement failed: ${err.message}`);
    button.disabled = false;
    button.textContent = "Place";
  }
}

async function remove(instanceId, button) {
  if (!confirm(`Delete instance ${instanceId}?`)) return;
  button.disabled = true;
  try { await sendJSON("DELETE", `/instances/${encodeURIComponent(instanceId)}`); toast(`Deleted ${instanceId}`); }
  catch (err) { toast(`Delete failed: ${err.message}`); button.disabled = false; }
}

const history = [];
async function chat(event) {
  event.preventDefault();
  const input = $("chat-input"), log = $("chat-log"), model = $("chat-model").value;
  const text = input.value.trim();
  if (!text || !model) return;
  if (!history.length) log.innerHTML = "";
  input.value = "";
  history.push({ role: "user", content: text });
  const bubble = (role, content) => {
    const div = document.createElement("div");
    div.className = `msg ${role}`;
    div.textContent = content;
    log.appendChild(div);
    return div;
  };
  bubble("user", text);
  const answer = bubble("assistant streaming", "");
  $("chat-send").disabled = true;
  try {
    await streamChat(model, history, (piece) => { answer.textContent += piece; log.scrollTop = log.scrollHeight; });
    history.push({ role: "assistant", content: answer.textContent });
  } catch (err) {
    answer.classList.add("err");
    answer.textContent = err.message;
    history.pop();
  } finally {
    answer.classList.remove("streaming");
    $("chat-send").disabled = false;
  }
}

function start() {
  setUnauthorizedHandler(() => setConnection("locked"));
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setKey($("key-input").value.trim());
    $("key-input").value = "";
    keyWasEntered();
    loadInferences();
  });
  $("place-form").addEventListener("submit", preview);
  $("chat-form").addEventListener("submit", chat);
  $("instances").addEventListener("click", (e) => {
    if (e.target.dataset?.delete) remove(e.target.dataset.delete, e.target);
  });
  window.addEventListener("resize", () => { renderCluster(); if (metrics) renderMetrics(); });
  follow("/dashboard/feed", (name, data) => {
    if (name === "cluster") { cluster = JSON.parse(data); renderCluster(); }
    else if (name === "metrics") { metrics = JSON.parse(data); renderMetrics(); }
  }, setConnection);
}

start();
