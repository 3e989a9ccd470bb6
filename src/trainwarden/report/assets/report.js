// trainwarden forensic report: timeline filters, the rank picker, heatmap read-outs.
// Everything from the run is data: it is read from the JSON block and written with
// textContent or SVG attributes, never parsed as HTML. The page works without this script.
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var data = {};
  try {
    var node = document.getElementById("tw-data");
    if (node) data = JSON.parse(node.textContent || "{}");
  } catch (err) {
    data = {};
  }

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    if (attrs) Object.keys(attrs).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    var a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e4) return (v / 1e3).toPrecision(3) + "k";
    if (a >= 1e-2) return String(Number(v.toPrecision(3)));
    return v.toExponential(1);
  }

  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    var raw = (hi - lo) / count;
    var power = Math.pow(10, Math.floor(Math.log10(raw)));
    var mults = [1, 2, 2.5, 5, 10];
    var step = power;
    for (var i = 0; i < mults.length; i++) { if (mults[i] * power >= raw) { step = mults[i] * power; break; } }
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9 && out.length < 50; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  // -- timeline filters -------------------------------------------------------------
  function setupTimeline() {
    var table = document.getElementById("timeline-table");
    var bar = document.getElementById("timeline-filters");
    if (!table || !bar) return;
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    var cats = {};
    var ranks = {};
    rows.forEach(function (r) {
      var c = r.getAttribute("data-cat") || "other";
      cats[c] = (cats[c] || 0) + 1;
      (r.getAttribute("data-ranks") || "").split(" ").forEach(function (k) {
        if (k !== "") ranks[k] = true;
      });
    });
    var active = {};
    var catBox = el("div", { "class": "cats", role: "group", "aria-label": "event categories" });
    Object.keys(cats).sort().forEach(function (c) {
      var b = el("button", { type: "button", "aria-pressed": "false", "data-cat": c }, c + " " + cats[c]);
      b.addEventListener("click", function () {
        active[c] = !active[c];
        b.setAttribute("aria-pressed", active[c] ? "true" : "false");
        apply();
      });
      catBox.appendChild(b);
    });
    var rankSel = el("select", { "aria-label": "rank" });
    rankSel.appendChild(el("option", { value: "" }, "all ranks"));
    Object.keys(ranks).map(Number).sort(function (a, b) { return a - b; }).forEach(function (k) {
      rankSel.appendChild(el("option", { value: String(k) }, "rank " + k));
    });
    var search = el("input", { type: "search", placeholder: "search events, users, paths…", "aria-label": "search" });
    var problems = el("input", { type: "checkbox" });
    var problemsLabel = el("label");
    problemsLabel.appendChild(problems);
    problemsLabel.appendChild(document.createTextNode("problems only"));
    var count = el("span", { "class": "count" });
    var rankLabel = el("label", null, "rank");
    rankLabel.appendChild(rankSel);
    bar.appendChild(catBox);
    bar.appendChild(rankLabel);
    bar.appendChild(search);
    bar.appendChild(problemsLabel);
    bar.appendChild(count);

    function apply() {
      var anyCat = Object.keys(active).some(function (c) { return active[c]; });
      var rank = rankSel.value;
      var q = search.value.trim().toLowerCase();
      var shown = 0;
      rows.forEach(function (r) {
        var ok = true;
        if (anyCat && !active[r.getAttribute("data-cat")]) ok = false;
        if (ok && rank !== "" && (" " + (r.getAttribute("data-ranks") || "") + " ").indexOf(" " + rank + " ") < 0) ok = false;
        if (ok && problems.checked && !/lv-(bad|warn)/.test(r.className)) ok = false;
        if (ok && q && r.textContent.toLowerCase().indexOf(q) < 0) ok = false;
        r.hidden = !ok;
        if (ok) shown++;
      });
      count.textContent = shown + " of " + rows.length + " events";
    }
    rankSel.addEventListener("change", apply);
    search.addEventListener("input", apply);
    problems.addEventListener("change", apply);
    apply();
    // A link to a timeline row must show it even when filters hide it.
    function reveal() {
      var id = decodeURIComponent(location.hash.slice(1));
      var target = id ? document.getElementById(id) : null;
      if (target && target.closest) target = target.closest("tr") || target;
      if (target && target.hidden) {
        Object.keys(active).forEach(function (c) { active[c] = false; });
        Array.prototype.forEach.call(catBox.children, function (b) { b.setAttribute("aria-pressed", "false"); });
        rankSel.value = "";
        search.value = "";
        problems.checked = false;
        apply();
        target.scrollIntoView();
      }
    }
    window.addEventListener("hashchange", reveal);
    window.addEventListener("beforeprint", function () {
      rows.forEach(function (r) { r.hidden = false; });
    });
    window.addEventListener("afterprint", apply);
  }

  // -- step time by phase of any rank ------------------------------------------------
  function setupPicker() {
    var box = document.getElementById("phase-picker");
    var slot = document.getElementById("phase-slot");
    var phases = data.phases;
    if (!box || !slot || !phases || !data.ranks) return;
    var sel = el("select", { "aria-label": "rank to show" });
    data.ranks.forEach(function (r) {
      sel.appendChild(el("option", { value: String(r) }, "rank " + r + (data.flagged && data.flagged.indexOf(r) >= 0 ? "  (flagged)" : "")));
    });
    var label = el("label", null, "Show rank ");
    label.appendChild(sel);
    box.appendChild(label);
    box.hidden = false;
    function draw() {
      var rank = sel.value;
      var p = phases[rank];
      while (slot.firstChild) slot.removeChild(slot.firstChild);
      var title = el("h3", null, "Rank " + rank + ": seconds per step by phase (mean per bin)");
      slot.appendChild(title);
      var legend = document.querySelector(".pair .legend");
      if (legend) slot.appendChild(legend.cloneNode(true));
      if (!p) { slot.appendChild(el("p", { "class": "muted" }, "no timings for this rank")); return; }
      slot.appendChild(stacked(p));
    }
    sel.addEventListener("change", draw);
    if (data.flagged && data.flagged.length) sel.value = String(data.flagged[0]);
    draw();
  }

  function stacked(p) {
    var W = 1120, H = 190, L = 64, R = 16, T = 14, B = 30;
    var pw = W - L - R, ph = H - T - B;
    var names = ["fwd", "bwd", "opt", "wait"];
    var labels = { fwd: "forward", bwd: "backward", opt: "optimizer", wait: "wait (collectives)" };
    var n = data.bins;
    var totals = [];
    var max = 0;
    for (var i = 0; i < n; i++) {
      var t = 0, any = false;
      names.forEach(function (k) { var v = p[k] && p[k][i]; if (v !== null && v !== undefined && isFinite(v)) { t += v; any = true; } });
      totals.push(any ? t : null);
      if (any && t > max) max = t;
    }
    var root = svg("svg", { "class": "plot stacked", viewBox: "0 0 " + W + " " + H, role: "img" });
    if (!max) {
      var txt = svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "class": "empty" });
      txt.textContent = "no timings";
      root.appendChild(txt);
      return root;
    }
    var yticks = niceTicks(0, max * 1.08, 4);
    max = Math.max(max * 1.08, yticks[yticks.length - 1]);
    function x(i) { return L + pw * (i + 0.5) / n; }
    function y(v) { return T + ph * (1 - v / max); }
    root.appendChild(svg("rect", { "class": "plot-bg", x: L, y: T, width: pw, height: ph }));
    yticks.forEach(function (v) {
      root.appendChild(svg("line", { "class": "grid", x1: L, x2: L + pw, y1: y(v), y2: y(v) }));
      var tt = svg("text", { "class": "tick", x: L - 6, y: y(v) + 3.5, "text-anchor": "end" });
      tt.textContent = fmt(v);
      root.appendChild(tt);
    });
    var base = [];
    for (i = 0; i < n; i++) base.push(0);
    names.forEach(function (k) {
      var top = [];
      for (var i = 0; i < n; i++) {
        var v = p[k] ? p[k][i] : null;
        top.push(base[i] + (v !== null && v !== undefined && isFinite(v) ? v : 0));
      }
      var d = "", run = [];
      function flush() {
        if (!run.length) return;
        d += "M" + run.map(function (i) { return x(i).toFixed(1) + " " + y(top[i]).toFixed(1); }).join("L");
        d += "L" + run.slice().reverse().map(function (i) { return x(i).toFixed(1) + " " + y(base[i]).toFixed(1); }).join("L") + "Z";
        run = [];
      }
      for (i = 0; i < n; i++) { if (totals[i] === null) flush(); else run.push(i); }
      flush();
      var path = svg("path", { "class": "area p-" + k, d: d });
      var title = svg("title");
      title.textContent = labels[k];
      path.appendChild(title);
      root.appendChild(path);
      base = top;
    });
    var last = n * data.width;
    niceTicks(0, last, 8).forEach(function (step) {
      var px = L + pw * step / last;
      var lab = svg("text", { "class": "tick", x: px, y: T + ph + 16, "text-anchor": "middle" });
      lab.textContent = step >= 1000 && step < 10000 ? step.toLocaleString("en-US") : fmt(step);
      root.appendChild(lab);
    });
    return root;
  }

  // -- heatmap read-outs --------------------------------------------------------------
  function setupHeatmaps() {
    var tip = el("div", { "class": "tooltip", hidden: "" });
    document.body.appendChild(tip);
    Array.prototype.forEach.call(document.querySelectorAll("svg.heatmap[data-key]"), function (map) {
      var key = map.getAttribute("data-key");
      var h = data.heat && data.heat[key];
      if (!h) return;
      map.addEventListener("mousemove", function (ev) {
        var box = map.getBoundingClientRect();
        var vb = map.viewBox.baseVal;
        var sx = vb.width / box.width, sy = vb.height / box.height;
        var px = (ev.clientX - box.left) * sx, py = (ev.clientY - box.top) * sy;
        var left = +map.getAttribute("data-left"), top = +map.getAttribute("data-top");
        var pw = +map.getAttribute("data-plot-w"), ph = +map.getAttribute("data-plot-h");
        var rows = +map.getAttribute("data-rows"), bins = +map.getAttribute("data-bins");
        if (px < left || px > left + pw || py < top || py > top + ph) { tip.hidden = true; return; }
        var col = Math.min(bins - 1, Math.floor((px - left) / pw * bins));
        var row = Math.min(rows - 1, Math.floor((py - top) / ph * rows));
        var v = h.values[row] ? h.values[row][col] : null;
        var first = col * data.width + 1, lastStep = (col + 1) * data.width;
        tip.textContent = "rank " + h.ranks[row] + " · steps " + first + "–" + lastStep + " · " + (v === null || v === undefined ? "no data" : fmt(v) + " " + h.unit);
        tip.style.left = (ev.clientX + 12) + "px";
        tip.style.top = (ev.clientY + 12) + "px";
        tip.hidden = false;
      });
      map.addEventListener("mouseleave", function () { tip.hidden = true; });
    });
  }

  window.addEventListener("beforeprint", function () {
    Array.prototype.forEach.call(document.querySelectorAll("details"), function (d) { d.open = true; });
  });
  setupTimeline();
  setupPicker();
  setupHeatmaps();
  document.documentElement.classList.add("js");
})();
