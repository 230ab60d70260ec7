// Small SVG charts and the topology drawing. No library: a path per series is all they need.

const NS = "http://www.w3.org/2000/svg";

export function el(tag, attrs = {}, parent) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// series: [{values, cls}]; null values are gaps. The y scale starts at 0 and labels its top.
export function sparkline(svg, series, unit = "") {
  const w = svg.clientWidth || 300, h = svg.clientHeight || 56, pad = 2, top = 10;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.replaceChildren();
  const all = series.flatMap((s) => s.values.filter((v) => v !== null));
  const max = Math.max(1e-9, ...all);
  const n = Math.max(...series.map((s) => s.values.length), 2);
  const x = (i) => pad + (i * (w - 2 * pad)) / (n - 1);
  const y = (v) => h - pad - ((h - pad - top) * v) / max;
  el("line", { x1: 0, x2: w, y1: h - pad, y2: h - pad, class: "base" }, svg);
  series.forEach(({ values, cls }, index) => {
    let d = "", open = false;
    values.forEach((v, i) => {
      if (v === null) { open = false; return; }
      d += `${open ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      open = true;
    });
    if (index === 0 && d && !values.includes(null)) {
      el("path", { d: `${d}L${x(values.length - 1)},${h - pad}L${x(0)},${h - pad}Z`, class: "area" }, svg);
    }
    el("path", { d, class: cls }, svg);
    values.forEach((v, i) => {  // a point with no neighbour draws no line: show it as a dot
      if (v !== null && (values[i - 1] ?? null) === null && (values[i + 1] ?? null) === null) {
        el("circle", { cx: x(i), cy: y(v), r: 2.5, class: "dot" }, svg);
      }
    });
  });
  const label = all.length ? `${max >= 100 ? Math.round(max) : +max.toFixed(1)}${unit}` : "no data";
  el("text", { x: w - 2, y: 9, "text-anchor": "end" }, svg).textContent = label;
}

const GiB = 1024 ** 3;

// Nodes on a circle, links with their latency, each node a ring filled by its memory in use.
export function topology(svg, nodes, links, colorOf, label) {
  svg.style.height = nodes.length <= 2 ? "170px" : "260px";
  const w = svg.clientWidth || 560, h = svg.clientHeight || 240;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.replaceChildren();
  if (!nodes.length) {
    el("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "lat" }, svg).textContent = "no nodes yet";
    return;
  }
  // one node: the middle; two: side by side; more: an ellipse. Labels sit under each node, hence the lift.
  const cy0 = h / 2 - 14, rx = Math.min(w / 2 - 80, 200), ry = h / 2 - 52;
  const at = {};
  nodes.forEach((n, i) => {
    if (nodes.length === 1) { at[n.node_id] = [w / 2, cy0]; return; }
    if (nodes.length === 2) { at[n.node_id] = [w / 2 + (i ? 1 : -1) * Math.min(rx, 150), cy0]; return; }
    const a = -Math.PI / 2 + (2 * Math.PI * i) / nodes.length;
    at[n.node_id] = [w / 2 + rx * Math.cos(a), cy0 + ry * Math.sin(a)];
  });
  for (const link of links) {
    const [x1, y1] = at[link.a], [x2, y2] = at[link.b];
    el("line", { x1, y1, x2, y2 }, svg);
    const t = el("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, "text-anchor": "middle", class: "lat" }, svg);
    t.textContent = `${link.latency_ms.toFixed(1)} ms`;
  }
  const R = 26, C = 2 * Math.PI * R;
  for (const n of nodes) {
    const [cx, cy] = at[n.node_id];
    const g = el("g", { "data-node": n.node_id }, svg);
    el("circle", { cx, cy, r: R + 9, fill: "var(--card)" }, g);
    el("circle", { cx, cy, r: R, class: "ring-bg" }, g);
    const used = n.memory_total ? n.memory_used / n.memory_total : 0;
    el("circle", {
      cx, cy, r: R, fill: "none", stroke: colorOf(n.node_id), "stroke-width": 7, "stroke-linecap": "round",
      "stroke-dasharray": `${(C * used).toFixed(1)} ${C}`, transform: `rotate(-90 ${cx} ${cy})`,
    }, g);
    el("text", { x: cx, y: cy + 4, "text-anchor": "middle" }, g).textContent = `${Math.round(used * 100)}%`;
    el("text", { x: cx, y: cy + R + 24, "text-anchor": "middle", "font-weight": 600 }, g).textContent =
      (n.leader ? "★ " : "") + label(n.node_id, n.hostname);
    el("text", { x: cx, y: cy + R + 38, "text-anchor": "middle", class: "lat" }, g).textContent =
      `${(n.memory_total / GiB).toFixed(1)} GiB · ${n.cores} cores`;
  }
}
