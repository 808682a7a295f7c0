// Small SVG line charts with a title, labelled axes and a legend.
"use strict";
const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = ["#ffc800", "#4cc3ff", "#4ccf7a", "#ff5c5c", "#c58cff"];

function svgEl(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

// series: { name, points: [[x, y, meta]] } where meta may carry id (data-version on the dot)
// and lo/hi (an interval drawn as a whisker).
function lineChart(svg, { title, xLabel, yLabel, series, xMin = null, xMax = null, yMin = null, yMax = null, points = true, empty = "no data yet" }) {
  const W = 460, H = 260, L = 48, R = 12, T = 26, B = 40;
  svg.replaceChildren(svgEl("text", { x: L, y: 16, class: "title" }, title));
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, empty));
    return;
  }
  let [x0, x1] = [xMin ?? Math.min(...all.map((p) => p[0])), xMax ?? Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [yMin ?? Math.min(...all.map((p) => p[1])), yMax ?? Math.max(...all.map((p) => p[1]))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  svg.append(svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#3a4350" }));
  svg.append(svgEl("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#3a4350" }));
  for (let i = 0; i <= 4; i++) {
    const yv = y0 + ((y1 - y0) * i) / 4, xv = x0 + ((x1 - x0) * i) / 4;
    svg.append(svgEl("text", { x: L - 6, y: sy(yv) + 4, "text-anchor": "end" }, fmt(yv, Math.abs(y1 - y0) < 5 ? 2 : 0)));
    svg.append(svgEl("line", { x1: L, y1: sy(yv), x2: W - R, y2: sy(yv), stroke: "#232a33" }));
    svg.append(svgEl("text", { x: sx(xv), y: H - B + 15, "text-anchor": "middle" }, fmt(xv, Math.abs(x1 - x0) < 5 ? 2 : 0)));
  }
  svg.append(svgEl("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, xLabel));
  svg.append(svgEl("text", { x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`, "text-anchor": "middle" }, yLabel));
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    svg.append(svgEl("path", { d, fill: "none", stroke: color, "stroke-width": 2 }));
    if (points) for (const p of s.points) {
      const meta = p[2] || {};
      if (meta.lo !== undefined && meta.hi !== undefined) {
        svg.append(svgEl("line", { x1: sx(p[0]), x2: sx(p[0]), y1: sy(meta.lo), y2: sy(meta.hi), stroke: color, "stroke-opacity": 0.6 }));
      }
      const dot = svgEl("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: color });
      if (meta.id !== undefined) dot.setAttribute("data-version", meta.id);
      svg.append(dot);
    }
    svg.append(svgEl("rect", { x: W - R - 120, y: T + i * 16 - 9, width: 10, height: 10, fill: color }));
    svg.append(svgEl("text", { x: W - R - 105, y: T + i * 16 }, s.name));
  });
}
