"""Style and drawing script of the offline run viewer (``profiler.render.viewer``).

Written for this project; no library. The script reads the JSON in
``#run-data`` and draws SVG charts; when it is done it sets
``data-rendered="ok"`` on <body> (``data-rendered="error: ..."`` on failure).
"""

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;
max-width:1200px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left}th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:13px}.chart svg{background:#fff;border:1px solid #e4e4e4}
.legend{font-size:12px;margin:4px 0}.legend span{display:inline-block;margin-right:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
.bar{background:#4c72b0;height:10px;display:inline-block}.warn{color:#b00;font-weight:600}
button{margin-left:6px;font-size:12px}button.on{font-weight:700;background:#dde7f5}
#tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #999;padding:4px 6px;
font-size:12px;display:none;white-space:pre}
"""

SCRIPT = r"""
(function () {
"use strict";
var NS = "http://www.w3.org/2000/svg";
var COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
  "#8c8c8c", "#ccb974", "#64b5cd", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
var D = JSON.parse(document.getElementById("run-data").textContent);
var tip = document.createElement("div"); tip.id = "tip"; document.body.appendChild(tip);

function svgEl(tag, attrs, parent) {
  var e = document.createElementNS(NS, tag);
  for (var k in attrs) { e.setAttribute(k, attrs[k]); }
  if (parent) { parent.appendChild(e); }
  return e;
}
function htmlEl(tag, text, parent, cls) {
  var e = document.createElement(tag);
  if (text !== undefined && text !== null) { e.textContent = text; }
  if (cls) { e.className = cls; }
  if (parent) { parent.appendChild(e); }
  return e;
}
function fmtBytes(b) {
  if (b === null || b === undefined) { return "n/a"; }
  var a = Math.abs(b), units = [[1073741824, "GiB"], [1048576, "MiB"], [1024, "KiB"]];
  for (var i = 0; i < units.length; i++) {
    if (a >= units[i][0]) { return (b / units[i][0]).toFixed(2) + " " + units[i][1]; }
  }
  return b.toFixed(0) + " B";
}
function fmtMs(v) {
  if (v === null || v === undefined) { return "n/a"; }
  if (Math.abs(v) >= 10000) { return (v / 1000).toFixed(2) + " s"; }
  return v.toFixed(Math.abs(v) < 10 ? 3 : 1) + " ms";
}
function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
  var err = (hi - lo) / n / step;
  step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
  var out = [];
  for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) { out.push(v); }
  return out;
}
// A frame with axes; returns {svg, x(v), y(v)} mapping data to pixels.
function frame(container, xr, yr, opts) {
  var W = 1100, H = opts.height || 320, m = {l: 80, r: 20, t: 10, b: 42};
  var svg = svgEl("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H,
                          "data-chart": opts.name}, container);
  var x = function (v) { return m.l + (v - xr[0]) / ((xr[1] - xr[0]) || 1) * (W - m.l - m.r); };
  var y = function (v) { return H - m.b - (v - yr[0]) / ((yr[1] - yr[0]) || 1) * (H - m.t - m.b); };
  // byte axes get ticks at round KiB / MiB / GiB values
  var scale = 1;
  if (opts.yfmt === fmtBytes) {
    var top = Math.max(Math.abs(yr[0]), Math.abs(yr[1]));
    while (scale * 1024 <= top && scale < 1073741824) { scale *= 1024; }
  }
  niceTicks(yr[0] / scale, yr[1] / scale, 6).map(function (v) { return v * scale; })
    .forEach(function (v) {
    svgEl("line", {x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), stroke: "#eee"}, svg);
    svgEl("text", {x: m.l - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11}, svg)
      .textContent = opts.yfmt(v);
  });
  niceTicks(xr[0], xr[1], 10).forEach(function (v) {
    svgEl("line", {x1: x(v), x2: x(v), y1: H - m.b, y2: H - m.b + 4, stroke: "#555"}, svg);
    svgEl("text", {x: x(v), y: H - m.b + 16, "text-anchor": "middle", "font-size": 11}, svg)
      .textContent = opts.xfmt ? opts.xfmt(v) : String(Math.round(v * 1000) / 1000);
  });
  svgEl("line", {x1: m.l, x2: W - m.r, y1: y(Math.max(yr[0], Math.min(0, yr[1]))),
                 y2: y(Math.max(yr[0], Math.min(0, yr[1]))), stroke: "#555"}, svg);
  svgEl("text", {x: (W + m.l) / 2, y: H - 6, "text-anchor": "middle", "font-size": 12}, svg)
    .textContent = opts.xlabel;
  svgEl("text", {x: 14, y: H / 2, "text-anchor": "middle", "font-size": 12,
                 transform: "rotate(-90 14 " + H / 2 + ")"}, svg).textContent = opts.ylabel;
  return {svg: svg, x: x, y: y, W: W, H: H, m: m};
}
function legend(container, names, colors) {
  var div = htmlEl("div", null, container, "legend");
  names.forEach(function (n, i) {
    var s = htmlEl("span", null, div); var sw = htmlEl("i", null, s);
    sw.style.background = colors[i]; s.appendChild(document.createTextNode(n));
  });
}

function summary() {
  var box = document.getElementById("summary");
  var t = D.timings || {}, dev = D.device || {}, load = D.host_load || {};
  var g = D.memory_growth || {}, c = D.config || {};
  var rows = [
    ["status", D.status], ["device", (dev.type || "") + " " + (dev.name || "") +
      (dev.autocast ? " (autocast " + dev.autocast + ")" : "")],
    ["config", "preset " + c.preset + ", variant " + c.variant + ", mode " + c.mode +
      ", pool " + c.pool],
    ["started", D.started_at],
    ["measured steps", (t.measured_steps === undefined ? "n/a" : t.measured_steps) +
      (t.measured_rule ? " (" + t.measured_rule + ")" : "")],
    ["step time", "median " + fmtMs(t.step_ms_median) + ", mean " + fmtMs(t.step_ms_mean)],
    ["throughput", t.samples_per_s ? t.samples_per_s.toFixed(2) +
      " samples/s (median of per-step samples / wall time)" : "n/a"],
    ["memory growth", (g.verdict || "n/a") + (g.growth_bytes_per_step !== undefined &&
      g.growth_bytes_per_step !== null ? ", " + fmtBytes(g.growth_bytes_per_step) +
      " per step (" + g.metric + ")" : "")],
    ["memory source", dev.allocator_stats || "n/a"],
    ["host", (load.cpu_model || "") + (load.logical_cpus ? ", " + load.logical_cpus +
      " logical CPUs" : "")],
  ];
  if (load.during) {
    rows.push(["other processes during the run", load.during.other_busy_cores.toFixed(2) +
      " CPUs busy; 1-minute load average up to " + load.during.loadavg_1m_max.toFixed(2)]);
  }
  var table = htmlEl("table", null, box);
  rows.forEach(function (r) {
    var tr = htmlEl("tr", null, table); htmlEl("th", r[0], tr); htmlEl("td", r[1], tr);
  });
  if (load.under_load) {
    htmlEl("p", "Measured under load: " + load.under_load_reasons.join("; "), box, "warn");
  }
}

function memory(view) {
  var box = document.getElementById("memory"); box.innerHTML = "";
  var note = document.getElementById("memory-summary");
  var tl = (D.timelines || {})[view];
  if (!tl) { note.textContent = "No trace window in this run (full mode records one)."; return; }
  var names = Object.keys(tl.categories), n = tl.t_ms.length;
  var colors = names.map(function (_, i) { return COLORS[i % COLORS.length]; });
  var up = new Array(n).fill(0), down = new Array(n).fill(0), bands = [];
  names.forEach(function (name) {
    var v = tl.categories[name], lo = [], hi = [];
    for (var i = 0; i < n; i++) {
      if (v[i] >= 0) { lo.push(up[i]); up[i] += v[i]; hi.push(up[i]); }
      else { hi.push(down[i]); down[i] += v[i]; lo.push(down[i]); }
    }
    bands.push([lo, hi]);
  });
  var ymax = Math.max.apply(null, up.concat([1])), ymin = Math.min.apply(null, down.concat([0]));
  var f = frame(box, [tl.t_ms[0], tl.t_ms[n - 1]], [ymin, ymax],
    {name: "memory-" + view, xlabel: "ms since the trace window began",
     ylabel: "tensor memory", yfmt: fmtBytes});
  bands.forEach(function (b, k) {
    var pts = [];
    for (var i = 0; i < n; i++) { pts.push(f.x(tl.t_ms[i]) + "," + f.y(b[1][i])); }
    for (var j = n - 1; j >= 0; j--) { pts.push(f.x(tl.t_ms[j]) + "," + f.y(b[0][j])); }
    svgEl("polygon", {points: pts.join(" "), fill: colors[k], "fill-opacity": 0.85,
                      stroke: "none", "data-category": names[k]}, f.svg);
  });
  var prev = null;  // step boundaries
  for (var i = 0; i < n; i++) {
    if (tl.step[i] !== prev) {
      svgEl("line", {x1: f.x(tl.t_ms[i]), x2: f.x(tl.t_ms[i]), y1: f.m.t, y2: f.H - f.m.b,
                     stroke: "#999", "stroke-dasharray": "3,3"}, f.svg);
      svgEl("text", {x: f.x(tl.t_ms[i]) + 3, y: f.m.t + 12, "font-size": 11, fill: "#555"},
            f.svg).textContent = "step " + tl.step[i];
      prev = tl.step[i];
    }
  }
  var cursor = svgEl("line", {y1: f.m.t, y2: f.H - f.m.b, stroke: "#000", visibility: "hidden"},
                     f.svg);
  f.svg.addEventListener("mousemove", function (ev) {
    var r = f.svg.getBoundingClientRect(), px = (ev.clientX - r.left) * f.W / r.width;
    var best = 0;
    for (var i = 0; i < n; i++) { if (Math.abs(f.x(tl.t_ms[i]) - px) <
                                      Math.abs(f.x(tl.t_ms[best]) - px)) { best = i; } }
    cursor.setAttribute("x1", f.x(tl.t_ms[best])); cursor.setAttribute("x2", f.x(tl.t_ms[best]));
    cursor.setAttribute("visibility", "visible");
    var lines = ["step " + tl.step[best] + ", " + tl.t_ms[best].toFixed(2) + " ms",
                 "total " + fmtBytes(tl.total[best])];
    names.forEach(function (nm) { lines.push(nm + ": " + fmtBytes(tl.categories[nm][best])); });
    tip.textContent = lines.join("\n"); tip.style.display = "block";
    tip.style.left = (ev.clientX + 14) + "px"; tip.style.top = (ev.clientY + 10) + "px";
  });
  f.svg.addEventListener("mouseleave", function () {
    tip.style.display = "none"; cursor.setAttribute("visibility", "hidden"); });
  legend(box, names, colors);
  var peak = 0;
  for (var k = 0; k < n; k++) { if (tl.total[k] > tl.total[peak]) { peak = k; } }
  note.textContent = view + " view: " + names.length + " categories; peak " +
    fmtBytes(tl.total[peak]) + " above the window start, in step " + tl.step[peak] + ".";
}

function viewButtons() {
  var span = document.getElementById("view-buttons");
  ["region", "role"].forEach(function (view) {
    if (!(D.timelines || {})[view]) { return; }
    var b = htmlEl("button", view + " view", span);
    b.setAttribute("data-view", view);
    b.addEventListener("click", function () {
      Array.prototype.forEach.call(span.children, function (c) { c.className = ""; });
      b.className = "on"; memory(view);
    });
  });
  if (span.firstChild) { span.firstChild.className = "on"; }
}

function steps() {
  var s = D.steps || {}, box = document.getElementById("steps");
  if (!s.step || !s.step.length) { return; }
  var kinds = {warmup: [], traced: [], bare: [], measured: []};
  for (var i = 0; i < s.step.length; i++) {
    var k = s.phase[i] === "warmup" ? "warmup" : s.traced[i] ? "traced" :
      (s.instrumented[i] === 0 && D.config.mode !== "bare") ? "bare" : "measured";
    kinds[k].push([s.step[i], s.wall_ms[i]]);
  }
  var ys = s.wall_ms.filter(function (v) { return v !== null; });
  var f = frame(box, [Math.min.apply(null, s.step), Math.max.apply(null, s.step)],
    [0, Math.max.apply(null, ys) * 1.05],
    {name: "steps", xlabel: "step", ylabel: "step wall time", yfmt: fmtMs, height: 260});
  var colors = {warmup: "#aaaaaa", traced: "#dd8452", bare: "#55a868", measured: "#4c72b0"};
  var pts = [];
  for (var j = 0; j < s.step.length; j++) {
    if (s.wall_ms[j] !== null) { pts.push(f.x(s.step[j]) + "," + f.y(s.wall_ms[j])); }
  }
  svgEl("polyline", {points: pts.join(" "), fill: "none", stroke: "#ccc"}, f.svg);
  var shown = [];
  Object.keys(kinds).forEach(function (k) {
    if (!kinds[k].length) { return; }
    shown.push(k);
    kinds[k].forEach(function (p) {
      svgEl("circle", {cx: f.x(p[0]), cy: f.y(p[1]), r: 3, fill: colors[k], "data-kind": k},
            f.svg);
    });
  });
  legend(box, shown, shown.map(function (k) { return colors[k]; }));
  document.getElementById("steps-summary").textContent = s.step.length + " steps: " +
    shown.map(function (k) { return kinds[k].length + " " + k; }).join(", ") +
    ". Statistics use the measured steps only.";
}

function operators() {
  var o = D.operators || {}, box = document.getElementById("operators");
  if (!o.name) { htmlEl("p", "No operator table (full mode records one).", box, "note"); return; }
  var table = htmlEl("table", null, box), head = htmlEl("tr", null, table);
  ["operator", "calls", "self", "total", ""].forEach(function (h) { htmlEl("th", h, head); });
  var top = Math.max.apply(null, o.self_ms.concat([1e-9]));
  for (var i = 0; i < o.name.length; i++) {
    var tr = htmlEl("tr", null, table);
    htmlEl("td", o.name[i], tr); htmlEl("td", String(o.count[i]), tr, "num");
    htmlEl("td", fmtMs(o.self_ms[i]), tr, "num"); htmlEl("td", fmtMs(o.total_ms[i]), tr, "num");
    var bar = htmlEl("span", null, htmlEl("td", null, tr), "bar");
    bar.style.width = Math.max(1, 240 * o.self_ms[i] / top) + "px";
  }
}

function nvml() {
  var v = D.nvml || {}, box = document.getElementById("nvml");
  var note = document.getElementById("nvml-summary");
  if (!v.ts || !v.ts.length) {
    note.textContent = "No NVML samples: " + (D.nvml_reason || "not a CUDA run") + ".";
    return;
  }
  var t0 = Math.min.apply(null, v.ts);
  [["used_bytes", "GPU memory used", fmtBytes], ["util_gpu_pct", "GPU utilization (%)",
    function (x) { return x.toFixed(0) + "%"; }], ["power_w", "power (W)",
    function (x) { return x.toFixed(0) + " W"; }]].forEach(function (spec) {
    var vals = v[spec[0]] || [], gpus = {};
    for (var i = 0; i < v.ts.length; i++) {
      if (vals[i] === null || vals[i] === undefined) { continue; }
      (gpus[v.gpu[i]] = gpus[v.gpu[i]] || []).push([v.ts[i] - t0, vals[i]]);
    }
    var keys = Object.keys(gpus);
    if (!keys.length) { return; }
    var all = [].concat.apply([], keys.map(function (g) { return gpus[g]; }));
    var f = frame(box, [0, Math.max.apply(null, all.map(function (p) { return p[0]; }))],
      [0, Math.max.apply(null, all.map(function (p) { return p[1]; })) * 1.05 || 1],
      {name: "nvml-" + spec[0], xlabel: "s since the first sample", ylabel: spec[1],
       yfmt: spec[2], height: 220});
    keys.forEach(function (g, k) {
      svgEl("polyline", {points: gpus[g].map(function (p) { return f.x(p[0]) + "," + f.y(p[1]); })
        .join(" "), fill: "none", stroke: COLORS[k % COLORS.length], "stroke-width": 1.5}, f.svg);
    });
    legend(box, keys.map(function (g) { return "GPU " + g; }),
           keys.map(function (_, k) { return COLORS[k % COLORS.length]; }));
  });
  note.textContent = v.ts.length + " NVML samples.";
}

try {
  summary(); viewButtons();
  memory((D.timelines || {}).region ? "region" : "role");
  steps(); operators(); nvml();
  document.body.setAttribute("data-rendered", "ok");
} catch (err) {
  document.body.setAttribute("data-rendered", "error: " + err);
}
})();
"""
