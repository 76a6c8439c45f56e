/* A small SVG line chart for the dashboard (no library, no build): daily series on a shared
   y axis, a legend that toggles series, a hover/keyboard tooltip, and a visually hidden data
   table for screen readers. Usage:
     WerkstroomChart.line(element, {labels: ["2026-11-01", …], series: [{name, color, values}]}) */
(function (w) {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var W = 760, H = 260, PAD = { top: 12, right: 12, bottom: 28, left: 44 };

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceMax(value) {
    if (value <= 4) return 4;
    var exp = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * exp >= value) return steps[i] * exp;
    return 10 * exp;
  }

  function fmt(n) {
    return Number(n).toLocaleString();
  }

  function shortDay(day) {
    var d = new Date(day + "T00:00:00Z");
    return d.toLocaleDateString(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
  }

  function line(container, opts) {
    var labels = opts.labels;
    var series = opts.series;
    var hiddenSeries = container._hidden || {};
    container._hidden = hiddenSeries;
    container.textContent = "";

    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": opts.title || "chart" });
    container.appendChild(svg);
    var tip = document.createElement("div");
    tip.className = "tip";
    tip.hidden = true;
    container.appendChild(tip);

    var visible = series.filter(function (s) { return !hiddenSeries[s.name]; });
    var max = 0;
    visible.forEach(function (s) { s.values.forEach(function (v) { if (v > max) max = v; }); });
    max = niceMax(max);
    var iw = W - PAD.left - PAD.right, ih = H - PAD.top - PAD.bottom;
    var n = labels.length;
    function x(i) { return PAD.left + (n <= 1 ? iw / 2 : (i * iw) / (n - 1)); }
    function y(v) { return PAD.top + ih - (v / max) * ih; }

    var grid = el("g", { class: "grid" }, svg);
    var axis = el("g", { class: "axis" }, svg);
    for (var t = 0; t <= 4; t++) {
      var v = (max * t) / 4;
      el("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }, grid);
      var label = el("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" }, axis);
      label.textContent = fmt(Math.round(v * 10) / 10);
    }
    var every = Math.max(1, Math.ceil(n / 8));
    for (var i = 0; i < n; i += every) {
      var xl = el("text", { x: x(i), y: H - 8, "text-anchor": "middle" }, axis);
      xl.textContent = shortDay(labels[i]);
    }

    var group = el("g", { class: "series" }, svg);
    visible.forEach(function (s) {
      var d = s.values.map(function (val, j) { return (j ? "L" : "M") + x(j).toFixed(1) + " " + y(val).toFixed(1); }).join("");
      el("path", { d: d, stroke: s.color }, group);
    });
    var hover = el("line", { class: "hover-line", y1: PAD.top, y2: PAD.top + ih, visibility: "hidden" }, svg);
    var dots = visible.map(function (s) { return el("circle", { r: 3.5, fill: s.color, visibility: "hidden" }, svg); });

    function show(idx) {
      hover.setAttribute("x1", x(idx));
      hover.setAttribute("x2", x(idx));
      hover.setAttribute("visibility", "visible");
      visible.forEach(function (s, k) {
        dots[k].setAttribute("cx", x(idx));
        dots[k].setAttribute("cy", y(s.values[idx]));
        dots[k].setAttribute("visibility", "visible");
      });
      tip.textContent = "";
      var head = document.createElement("strong");
      head.textContent = shortDay(labels[idx]);
      tip.appendChild(head);
      series.forEach(function (s) {
        var row = document.createElement("div");
        row.textContent = s.name + ": " + fmt(s.values[idx]);
        tip.appendChild(row);
      });
      tip.hidden = false;
      var box = svg.getBoundingClientRect();
      var px = (x(idx) / W) * box.width;
      tip.style.left = Math.min(Math.max(px + 12, 0), box.width - tip.offsetWidth) + "px";
      tip.style.top = "8px";
    }
    function hide() {
      tip.hidden = true;
      hover.setAttribute("visibility", "hidden");
      dots.forEach(function (d) { d.setAttribute("visibility", "hidden"); });
    }
    svg.addEventListener("mousemove", function (ev) {
      var box = svg.getBoundingClientRect();
      var sx = ((ev.clientX - box.left) / box.width) * W;
      var idx = Math.round(((sx - PAD.left) / iw) * (n - 1));
      show(Math.max(0, Math.min(n - 1, idx)));
    });
    svg.addEventListener("mouseleave", hide);
    // Keyboard: focus the chart and move day by day with the arrow keys.
    var cursor = n - 1;
    svg.setAttribute("tabindex", "0");
    svg.addEventListener("keydown", function (ev) {
      if (ev.key === "ArrowLeft") cursor = Math.max(0, cursor - 1);
      else if (ev.key === "ArrowRight") cursor = Math.min(n - 1, cursor + 1);
      else if (ev.key === "Escape") return hide();
      else return;
      ev.preventDefault();
      show(cursor);
    });
    svg.addEventListener("blur", hide);

    var legend = document.createElement("div");
    legend.className = "legend";
    series.forEach(function (s) {
      var lab = document.createElement("label");
      var box = document.createElement("input");
      box.type = "checkbox";
      box.checked = !hiddenSeries[s.name];
      box.addEventListener("change", function () {
        hiddenSeries[s.name] = !box.checked;
        line(container, opts);
      });
      var sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = s.color;
      lab.appendChild(box);
      lab.appendChild(sw);
      lab.appendChild(document.createTextNode(s.name));
      legend.appendChild(lab);
    });
    container.appendChild(legend);

    // The same numbers as a table, for screen readers.
    var table = document.createElement("table");
    table.className = "sr-only";
    var caption = document.createElement("caption");
    caption.textContent = opts.title || "";
    table.appendChild(caption);
    var headRow = table.insertRow();
    ["Day"].concat(series.map(function (s) { return s.name; })).forEach(function (h) {
      var th = document.createElement("th");
      th.scope = "col";
      th.textContent = h;
      headRow.appendChild(th);
    });
    labels.forEach(function (day, idx) {
      var r = table.insertRow();
      r.insertCell().textContent = day;
      series.forEach(function (s) { r.insertCell().textContent = String(s.values[idx]); });
    });
    container.appendChild(table);
  }

  w.WerkstroomChart = { line: line };
})(window);
