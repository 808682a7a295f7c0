// The last prediction's QC along z: per section the fraction of its cells above threshold
// (a bar, red when the section is on the re-image list, with its flagged fields counted),
// and the re-image list itself: whole sections or fields, each with the reason.
"use strict";

function drawQcPlot(svg, sections) {
  const W = 460, H = 220, L = 44, R = 10, T = 24, B = 36;
  svg.replaceChildren(svgEl("text", { x: L, y: 16, class: "title" }, "Prediction QC along z"));
  if (!sections.length) {
    svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no prediction yet"));
    return;
  }
  const z0 = sections[0].z, z1 = sections[sections.length - 1].z;
  const step = (W - L - R) / (z1 - z0 + 1);
  const sy = (v) => H - B - v * (H - T - B);
  svg.append(svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#3a4350" }));
  for (const v of [0, 0.5, 1]) {
    svg.append(svgEl("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end" }, fmt(v, 1)));
    svg.append(svgEl("line", { x1: L, y1: sy(v), x2: W - R, y2: sy(v), stroke: "#232a33" }));
  }
  for (const s of sections) {
    const x = L + (s.z - z0) * step;
    const bar = svgEl("rect", {
      x: x + step * 0.1, width: Math.max(1, step * 0.8), y: sy(s.fraction), height: sy(0) - sy(s.fraction),
      fill: s.reimage ? "#ff5c5c" : "#4cc3ff",
    });
    const fields = (s.fields_flagged || []).length;
    bar.append(svgEl("title", {}, `z ${s.z}: ${fmt(100 * s.fraction, 0)}% above threshold` +
      (fields ? `, ${fields} field(s) to re-image` : "")));
    svg.append(bar);
    if (fields) svg.append(svgEl("text", { x: x + step / 2, y: T + 10, "text-anchor": "middle", fill: "#ff5c5c" }, String(fields)));
  }
  svg.append(svgEl("text", { x: L, y: H - B + 15 }, `z ${z0}`));
  svg.append(svgEl("text", { x: W - R, y: H - B + 15, "text-anchor": "end" }, `z ${z1}`));
  svg.append(svgEl("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }, "section (red: re-image; number: fields flagged)"));
}

function drawReimageList(box, result) {
  const rows = (result && result.reimage) || [];
  if (!rows.length) { box.replaceChildren(result ? "Nothing to re-image." : ""); return; }
  const table = el("table", {}, el("thead", {}, el("tr", {},
    ...["z", "what", "fraction", "found", "reason"].map((h) => el("th", { scope: "col" }, h)))));
  const body = el("tbody");
  for (const r of rows) {
    const what = r.scope === "field" ? `field ${r.field[0]},${r.field[1]} (x ${r.box[0]}, y ${r.box[1]}, ${r.box[3]} x ${r.box[4]})` : "whole section";
    body.append(el("tr", {}, el("td", {}, r.z), el("td", {}, what), el("td", {}, fmt(r.fraction, 2)),
      el("td", {}, (r.types || []).join(", ")), el("td", {}, r.reason)));
  }
  table.append(body);
  box.replaceChildren(table);
}

async function loadQc() {
  if (typeof dash === "undefined" || !dash.dataset || $("workspace").hidden || document.hidden) return;
  const page = await api(`/jobs?dataset_id=${dash.dataset}&kind=predict&limit=10`);
  const job = page.items.find((j) => j.state === "succeeded" && j.result && j.result.sections);
  const result = job ? job.result : null;
  $("qc-note").textContent = job ? `predict job ${job.id}: ${(result.reimage_sections || []).length} section(s) to re-image; fields.csv and sections.csv in ${result.output}` : "";
  drawQcPlot($("qc-plot"), result ? result.sections : []);
  drawReimageList($("qc-list"), result);
}

setInterval(() => loadQc().catch((err) => console.warn(err.message)), 10000);
document.addEventListener("DOMContentLoaded", () => $("dataset").addEventListener("change", () => setTimeout(() => loadQc().catch(() => {}), 500)));
