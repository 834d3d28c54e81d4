"use strict";
// sdlab report: grid viewer, detail view and sortable/filterable table over the inlined data.
const D = JSON.parse(document.getElementById("data").textContent);
const col = Object.fromEntries(D.columns.map((c, i) => [c, i]));
const NONE = "(none)";
const preferred = [...D.axes.filter(a => a !== "seed"), ...D.axes.filter(a => a === "seed")];  // seeds as a selector
const state = { x: preferred[0] || NONE, y: preferred[1] || NONE, pick: {}, metric: D.main_metric || "", sort: null, dir: 1, filters: {}, limit: 200 };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v; else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}
function value(i, name) { return name in col ? D.rows[i][col[name]] : null; }
function url(path) { return path.split("/").map(encodeURIComponent).join("/"); }  // a relative path as a link, any name
function fmt(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : (Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(3));
  return String(v);
}
function isOk(i) { return !("status" in col) || value(i, "status") === "ok"; }

function renderHeader() {
  const h = D.header, facts = el("dl", { class: "facts" });
  const add = (k, v) => { if (v !== null && v !== undefined && v !== "") facts.append(el("dt", { text: k }), el("dd", {}, v)); };
  const counts = el("span", {}, `${h.ok} ok, `, el("span", { class: h.failed ? "failed-count" : "", text: `${h.failed} failed` }),
    h.not_run ? ` (${h.not_run} did not run: rerun the same command to run them)` : "");
  add("rows", counts);
  add("swept", D.axes.join(", ") || "nothing");
  add("model", h.model); add("device", h.device);
  add("wall time", h.wall_s === null ? null : `${h.wall_s.toFixed(1)} s` + (h.runs > 1 ? ` over ${h.runs} runs` : "")
    + (h.generation_s === null ? "" : ` (generation ${h.generation_s.toFixed(1)} s)`));
  add("constant", Object.entries(h.constants).filter(([k]) => k !== "model").map(([k, v]) => `${k}=${v}`).join(", "));
  add("versions", Object.entries(h.versions).map(([k, v]) => `${k} ${v}`).join(", "));
  add("warnings", (h.warnings || []).length ? el("ul", { class: "warnings" }, ...h.warnings.map(w => el("li", { text: w }))) : null);
  document.getElementById("header").append(el("h1", { text: h.title }),
    ...(h.command ? [el("code", { id: "command", text: h.command })] : []), facts);
}

function options(select, values, selected) {
  select.replaceChildren(...values.map(v => el("option", { value: v, text: v })));
  select.value = selected;
}
function renderControls() {
  const axes = [...D.axes, NONE];
  options(document.getElementById("x-axis"), axes, state.x);
  options(document.getElementById("y-axis"), axes, state.y);
  const metrics = ["(none)", ...D.metrics, ...("error" in col ? ["error"] : [])];
  options(document.getElementById("metric"), metrics, state.metric || "(none)");
  const box = document.getElementById("selectors");
  box.replaceChildren();
  for (const axis of D.axes) {
    if (axis === state.x || axis === state.y) continue;
    if (!(axis in state.pick)) state.pick[axis] = D.values[axis][0];
    const select = el("select", { "data-axis": axis });
    options(select, D.values[axis], state.pick[axis]);
    select.addEventListener("change", () => { state.pick[axis] = select.value; renderGrid(); });
    box.append(el("label", {}, `${axis} `, select));
  }
}

function cellFor(i) {
  const metric = state.metric && state.metric !== "(none)" ? state.metric : null;
  const path = D.images[i];
  const cell = el("div", { class: "cell" + (isOk(i) ? "" : " failed"), "data-row": i, tabindex: 0 });
  if (!isOk(i)) cell.append(el("div", { class: "error", text: value(i, "error") || "failed" }));
  else if (path) cell.append(el("img", { src: url(path), loading: "lazy", alt: D.labels[i].join(", ") }));
  if (metric) cell.append(el("div", { class: "metric", text: `${metric} ${fmt(value(i, metric))}` }));
  cell.addEventListener("click", () => showDetail(i));
  return cell;
}
function renderGrid() {
  if (!D.grid) {
    document.getElementById("grid-section").hidden = true;
    document.querySelector("nav a[href='#grid-section']").hidden = true;
    return;
  }
  const xi = D.axes.indexOf(state.x), yi = D.axes.indexOf(state.y);
  const xs = xi < 0 ? [""] : D.values[state.x], ys = yi < 0 ? [""] : D.values[state.y];
  const index = new Map();
  D.labels.forEach((labels, i) => {
    for (const [axis, v] of Object.entries(state.pick)) {
      const a = D.axes.indexOf(axis);
      if (a !== xi && a !== yi && labels[a] !== v) return;
    }
    const key = (xi < 0 ? "" : labels[xi]) + "\u0000" + (yi < 0 ? "" : labels[yi]);
    if (!index.has(key)) index.set(key, i);
  });
  const table = document.getElementById("grid");
  const head = el("tr", {}, el("th", { class: "corner", text: yi < 0 ? "" : `${state.y} \u2193 / ${state.x} \u2192` }));
  for (const x of xs) head.append(el("th", { text: xi < 0 ? "" : `${state.x}=${x}` }));
  const body = ys.map(y => {
    const tr = el("tr", {}, el("th", { text: yi < 0 ? "" : `${state.y}=${y}` }));
    for (const x of xs) {
      const i = index.get(x + "\u0000" + y);
      tr.append(el("td", {}, i === undefined ? el("div", { class: "cell missing", text: "no cell" }) : cellFor(i)));
    }
    return tr;
  });
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
}

function showDetail(i) {
  const box = document.getElementById("detail"), path = D.images[i];
  box.querySelector(".detail-image").replaceChildren(path ? el("img", { src: url(path), alt: "image" }) : "");
  document.getElementById("detail-title").textContent = D.axes.map((a, k) => `${a}=${D.labels[i][k]}`).join(", ") || `row ${i}`;
  const error = document.getElementById("detail-error");
  error.hidden = isOk(i); error.textContent = isOk(i) ? "" : (value(i, "error") || "failed");
  document.getElementById("detail-png").textContent = D.png[i] || "(no PNG parameters)";
  document.getElementById("detail-row").replaceChildren(...D.columns.map((c, k) => {
    const text = fmt(D.rows[i][k]);
    const shown = text.length > 100 ? el("details", {}, el("summary", { text: text.slice(0, 48) + "\u2026" }), text) : text;
    return el("tr", {}, el("td", { text: c }), el("td", {}, shown));
  }));
  document.querySelectorAll(".cell.selected").forEach(c => c.classList.remove("selected"));
  document.querySelectorAll(`.cell[data-row="${i}"]`).forEach(c => c.classList.add("selected"));
  box.hidden = false;
  document.getElementById("detail-close").focus();
}
function hideDetail() {
  document.getElementById("detail").hidden = true;
  document.querySelectorAll(".cell.selected").forEach(c => c.classList.remove("selected"));
}

function renderFigures() {
  const summary = document.getElementById("summary");
  if (D.summary) summary.append(el("img", { src: url(D.summary), loading: "lazy", alt: "summary by swept value" }));
  else if (D.overall.length && !Object.keys(D.ranking_lines).length) {
    summary.append(el("p", { text: "each metric over every image (no parameter was swept to plot it against):" }),
      el("table", { class: "ranking-table" }, el("thead", {}, el("tr", {}, ...["metric", "n", "mean", "95% interval"]
        .map((t, k) => el("th", { class: k === 0 ? "value" : null, text: t })))),
      el("tbody", {}, ...D.overall.map(r => el("tr", {}, el("td", { class: "value", text: r.metric }),
        el("td", { text: fmt(r.n) }), el("td", { text: fmt(r.mean) }),
        el("td", { text: r.lo === null ? "" : `${fmt(r.lo)} .. ${fmt(r.hi)}` }))))));
  }
  else summary.append(el("p", { text: "no summary.png here: nothing swept, no metric, or the job wrote its own summary (see Figures)" }));
  const figures = document.getElementById("figures");
  if (!D.figures.length) figures.append(el("p", { text: "no figures" }));
  for (const path of D.figures) figures.append(el("figure", {}, el("figcaption", { text: path }), el("img", { src: url(path), loading: "lazy", alt: path })));
}

const HEADLINE = ["clip_score", "adherence_all"];  // as sdlab.ranking.headline_metric
function rankingTable(rows) {
  const head = el("tr", {}, ...["rank", "value", "mean", "95% interval", "n", "vs best (paired)",
    "interval (95% over all)", "pairs", "", "NFE", "seconds", ""].map((t, k) => el("th", { class: k === 1 || k === 8 ? "value" : null, text: t })));
  const range = (lo, hi) => lo === null ? "" : `${fmt(lo)} .. ${fmt(hi)}`;
  const body = rows.map(r => el("tr", { class: ["best", "tied"].includes(r.group) ? r.group : r.rank === null ? "unranked" : null },
    el("td", { text: fmt(r.rank) }), el("td", { class: "value", text: r.value }), el("td", { text: fmt(r.mean) }),
    el("td", { text: range(r.lo, r.hi) }), el("td", { text: fmt(r.n) }),
    el("td", { text: r.group === "best" || r.delta_mean === null ? "" : fmt(r.delta_mean) }),
    el("td", { text: r.group === "best" ? "" : range(r.delta_lo, r.delta_hi) }), el("td", { text: fmt(r.n_paired) }),
    el("td", { class: "group", text: r.group }), el("td", { text: fmt(r.nfe) }), el("td", { text: fmt(r.time_total_s) }),
    el("td", { class: "group", text: r.cheapest_tied ? "cheapest tied" : "" })));
  return el("table", { class: "ranking-table" }, el("thead", {}, head), el("tbody", {}, ...body));
}
function renderRanking() {
  const box = document.getElementById("ranking");
  const params = [...new Set(D.ranking.map(r => r.parameter))];
  for (const [param, line] of Object.entries(D.ranking_lines)) if (!params.includes(param)) box.append(el("p", { class: "ranking-line", text: line }));
  if (!Object.keys(D.ranking_lines).length) box.append(el("p", { text: D.axes.length
    ? `nothing ranked: only ${D.axes.join(", ")} ${D.axes.length > 1 ? "were" : "was"} swept, replicates of one setting, not values to choose from`
    : "nothing ranked: no parameter was swept" }));
  for (const param of params) {
    const mine = D.ranking.filter(r => r.parameter === param);
    const scores = [...new Set(mine.map(r => r.metric))];
    const first = HEADLINE.find(m => scores.includes(m)) || scores[0];
    const select = el("select", { "data-parameter": param, "aria-label": `score to rank ${param} by` });
    options(select, scores, first);
    const line = el("p", { class: "ranking-line", text: D.ranking_lines[param] || "" });
    const slot = el("div", {}, rankingTable(mine.filter(r => r.metric === first)));
    select.addEventListener("change", () => slot.replaceChildren(rankingTable(mine.filter(r => r.metric === select.value))));
    box.append(el("div", { class: "ranking-block" }, el("h3", {}, `${param} by `, select), line, slot));
  }
}

function renderSets() {
  if (!D.sets.length) return;
  document.getElementById("sets-section").hidden = false;
  document.getElementById("sets-link").hidden = false;
  const slice = r => [r.parameter === "(all)" ? "(all)" : `${r.parameter}=${r.value}`,
    r.parameter2 ? `${r.parameter2}=${r.value2}` : null].filter(Boolean).join(", ");
  const metrics = [...new Set(D.sets.map(r => r.metric))];  // each metric's slices together, in summary order
  const rows = [...D.sets].sort((a, b) => metrics.indexOf(a.metric) - metrics.indexOf(b.metric));
  const head = el("tr", {}, ...["metric", "slice", "better", "value", "95% interval", "n", "reference n", "features",
    "warning"].map((t, k) => el("th", { class: k === 1 || k === 8 ? "value" : null, text: t })));
  const body = rows.map(r => el("tr", {}, el("td", { text: r.metric }), el("td", { class: "value", text: slice(r) }),
    el("td", { text: r.better }), el("td", { text: fmt(r.mean) }),
    el("td", { text: r.lo === null ? "" : `${fmt(r.lo)} .. ${fmt(r.hi)}` }), el("td", { text: fmt(r.n) }),
    el("td", { text: fmt(r.n_reference) }), el("td", { text: r.features }), el("td", { class: "warning", text: r.warning || "" })));
  document.getElementById("sets").append(el("table", { class: "ranking-table sets-table" }, el("thead", {}, head), el("tbody", {}, ...body)));
}

function matches(v, filter) {
  const f = filter.trim();
  if (!f) return true;
  const m = f.match(/^(<=|>=|<|>|=)\s*(-?[\d.eE+-]+)$/);
  if (m && typeof v === "number") {
    const n = Number(m[2]);
    return { "<": v < n, ">": v > n, "<=": v <= n, ">=": v >= n, "=": v === n }[m[1]];
  }
  return fmt(v).toLowerCase().includes(f.toLowerCase());
}
function renderRows() {
  const order = D.rows.map((_, i) => i).filter(i => Object.entries(state.filters).every(([c, f]) => matches(D.rows[i][c], f)));
  if (state.sort !== null) {
    const k = state.sort;
    order.sort((a, b) => {
      const va = D.rows[a][k], vb = D.rows[b][k];
      if (va === null) return 1; if (vb === null) return -1;
      return (typeof va === "number" && typeof vb === "number" ? va - vb : String(va).localeCompare(String(vb), undefined, { numeric: true })) * state.dir;
    });
  }
  const tbody = document.querySelector("#rows-table tbody");
  const rows = document.createDocumentFragment();  // built as nodes: a cell's text is never read as HTML
  for (const i of order.slice(0, state.limit)) {
    rows.append(el("tr", { "data-row": i, class: isOk(i) ? null : "error-row" },
      ...D.rows[i].map(v => { const t = fmt(v); return el("td", { title: t, text: t }); })));
  }
  tbody.replaceChildren(rows);
  document.getElementById("row-count").textContent = `${order.length} of ${D.rows.length}`;
  const more = document.getElementById("rows-more");
  more.hidden = order.length <= state.limit;
  more.textContent = `showing the first ${state.limit} of ${order.length}: show all`;
  document.querySelectorAll("#rows-table thead tr:first-child th").forEach((th, k) =>
    th.setAttribute("aria-sort", k === state.sort ? (state.dir > 0 ? "ascending" : "descending") : "none"));
}
function renderTableHead() {
  const names = el("tr", {}), filters = el("tr", {});
  D.columns.forEach((c, k) => {
    const th = el("th", { "data-col": c, text: c, title: "click to sort" });
    th.addEventListener("click", () => { state.dir = state.sort === k ? -state.dir : 1; state.sort = k; renderRows(); });
    names.append(th);
    const input = el("input", { type: "search", "data-col": c, placeholder: "filter", "aria-label": `filter ${c}` });
    input.addEventListener("input", () => { state.filters[k] = input.value; renderRows(); });
    filters.append(el("th", {}, input));
  });
  document.querySelector("#rows-table thead").replaceChildren(names, filters);
}

function wire() {
  const x = document.getElementById("x-axis"), y = document.getElementById("y-axis");
  x.addEventListener("change", () => { if (x.value === state.y && x.value !== NONE) state.y = state.x; state.x = x.value; renderControls(); renderGrid(); });
  y.addEventListener("change", () => { if (y.value === state.x && y.value !== NONE) state.x = state.y; state.y = y.value; renderControls(); renderGrid(); });
  document.getElementById("metric").addEventListener("change", e => { state.metric = e.target.value; renderGrid(); });
  document.getElementById("detail-close").addEventListener("click", hideDetail);
  document.getElementById("rows-more").addEventListener("click", () => { state.limit = Infinity; renderRows(); });
  document.querySelector("#rows-table tbody").addEventListener("click", e => {
    const tr = e.target.closest("tr[data-row]");
    if (tr) showDetail(Number(tr.dataset.row));
  });
  document.addEventListener("keydown", e => { if (e.key === "Escape") hideDetail(); });
}

renderHeader(); renderRanking(); renderControls(); renderGrid(); renderSets(); renderFigures(); renderTableHead(); renderRows(); wire();
