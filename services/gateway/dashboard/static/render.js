// Rendering the cluster view the feed pushes: nodes, instances with their layers per node, waiting models.

const GiB = 1024 ** 3;
const PALETTE = ["--n0", "--n1", "--n2", "--n3", "--n4", "--n5"];
const colors = new Map();  // node id -> CSS colour, stable for as long as the page lives

export function colorOf(nodeId) {
  if (!colors.has(nodeId)) colors.set(nodeId, `var(${PALETTE[colors.size % PALETTE.length]})`);
  return colors.get(nodeId);
}

// Several nodes on one machine share a hostname; then a label adds the end of the node id.
let labels = new Map();
export function setLabels(nodes) {
  const count = {};
  for (const n of nodes) count[n.hostname] = (count[n.hostname] || 0) + 1;
  labels = new Map(nodes.map((n) => [n.node_id, count[n.hostname] > 1 ? `${n.hostname} · ${n.node_id.slice(-4)}` : n.hostname]));
}
export function label(nodeId, fallback) { return labels.get(nodeId) || fallback || nodeId; }

export function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

export function bytes(n) {
  if (n >= GiB) return `${(n / GiB).toFixed(n >= 10 * GiB ? 0 : 1)} GiB`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(0)} MiB`;
  return `${(n / 1024).toFixed(0)} KiB`;
}

export function renderNodes(box, nodes) {
  box.innerHTML = nodes.map((n) => {
    const used = n.memory_total ? (100 * n.memory_used) / n.memory_total : 0;
    const budget = n.memory_budget !== null ? `<span class="badge" title="--memory">budget ${bytes(n.memory_budget)}</span>` : "";
    return `<article class="node" data-node="${esc(n.node_id)}" style="--c:${colorOf(n.node_id)}">
      <h3>${esc(n.hostname)} ${n.leader ? '<span class="badge lead">leader</span>' : ""}</h3>
      <div class="id" title="node id">${esc(n.node_id)}</div>
      <div class="meta">${esc(n.chip)} · ${n.cores} cores</div>
      <div>${n.backends.map((b) => `<span class="badge">${esc(b)}</span>`).join("")}${n.rdma ? '<span class="badge">RDMA</span>' : ""}${budget}</div>
      <div class="bar" style="margin-top:8px" title="memory in use"><span style="width:${used.toFixed(1)}%"></span></div>
      <div class="bar-label"><span>${bytes(n.memory_used)} used</span><span>${bytes(n.memory_total)}</span></div>
    </article>`;
  }).join("") || '<p class="empty">No node has reported yet.</p>';
}

function phaseText(shard) {
  const progress = shard.progress !== null ? ` ${Math.round(shard.progress * 100)}%` : "";
  return `${shard.phase}${progress}`;
}

export function renderInstances(box, instances) {
  if (!instances.length) { box.innerHTML = '<p class="empty">No model is placed yet: preview and place one under "Place a model".</p>'; return; }
  box.innerHTML = instances.map((inst) => {
    const total = inst.layers || Math.max(...inst.shards.map((s) => s.end_layer));
    const segments = inst.shards.map((s) => {
      const share = (100 * (s.end_layer - s.start_layer)) / total;
      return `<span style="--c:${colorOf(s.node_id)};width:${share}%" title="${esc(label(s.node_id, s.hostname))}: layers ${s.start_layer}–${s.end_layer - 1}">${s.start_layer}–${s.end_layer - 1}</span>`;
    }).join("");
    const rows = inst.shards.map((s) => {
      const failed = s.phase === "failed";
      const memory = inst.memory_per_node[s.node_id];
      return `<tr><td><span class="dot" style="--c:${colorOf(s.node_id)}"></span>rank ${s.rank}</td>
        <td>${esc(label(s.node_id, s.hostname))}</td><td>layers ${s.start_layer}–${s.end_layer - 1}</td>
        <td class="num mem" title="memory placement reserved">${memory ? bytes(memory) : ""}</td>
        <td><span class="pill ${failed ? "failed" : s.phase === "ready" ? "ready" : "starting"}">${esc(phaseText(s))}</span>
        ${s.detail && s.phase !== "ready" ? `<div class="detail ${failed ? "bad" : ""}">${esc(s.detail)}</div>` : ""}</td></tr>`;
    }).join("");
    const g = inst.group;
    const role = g ? `<span class="badge role" data-role="${esc(g.role)}" title="trifurcated group of ${esc(g.main)}${g.policy ? `, policy ${esc(g.policy)}` : ""}">${esc(g.role)} ${g.trit > 0 ? "+" : ""}${g.trit}</span>` : "";
    return `<article class="instance" data-instance="${esc(inst.instance_id)}">
      <header><b>${esc(inst.model_name)}</b>${role}<span class="pill ${inst.status}">${inst.status}</span>
        <span class="badge">${esc(inst.strategy)}</span><span class="badge">${esc(inst.backend)}</span>
        <span class="grow"></span><button class="ghost" data-delete="${esc(inst.instance_id)}">Delete</button></header>
      <div class="id detail inst-id">${esc(inst.instance_id)}</div>
      <div class="layers" aria-label="layers per node">${segments}</div>
      <table class="shards">${rows}</table>
    </article>`;
  }).join("");
}

export function renderWaiting(box, waiting) {
  box.innerHTML = waiting.map((w) => `<div class="waiting-item"><b>${esc(w.model)}</b> (was ${esc(w.instance_id)},
    ${esc(w.strategy)}/${esc(w.backend)}) is waiting for nodes: ${esc(w.reason)}</div>`).join("");
}
