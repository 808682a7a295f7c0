// Suspect labels: training labels the consensus with the last classifier's out-of-fold view
// holds wrong, strongest first, with the model's view (its p(artifact), the out-of-fold
// probability of the label given) and the re-label task that asks another annotator for a
// second look.
"use strict";

function relabelCell(t) {
  if (!t) return el("td", { class: "relabel-state" }, el("span", { class: "na" }, "not offered yet"));
  if (t.label) return el("td", { class: "relabel-state" }, `${t.annotator}: ${t.label}`);
  const state = { open: "in the queue", leased: "being labelled", retired: "waiting for the next batch", expired: "in the queue" };
  return el("td", { class: "relabel-state" }, state[t.status] || t.status);
}

function previewSuspect(s) {
  const p = s.position;
  const img = el("img", { alt: `suspect label at ${p.x}, ${p.y}, ${p.z}`, width: 200, height: 200 });
  imageUrl(`/datasets/${dash.dataset}/patch.png?x=${p.x}&y=${p.y}&z=${p.z}&margin=5`).then((u) => { img.src = u; }).catch(() => {});
  $("suspects-open").replaceChildren(el("h4", {}, `Patch ${p.x}, ${p.y}, ${p.z}`), img,
    el("p", { class: "stat" }, `${s.annotator} said ${s.label}; the model: p(artifact) ${s.p_artifact === null ? "?" : fmt(s.p_artifact)}, ` +
      `out of fold p(${s.label}) ${fmt(s.p_given)}; P(wrong) ${fmt(s.score)}.`));
}

async function loadSuspects() {
  const r = await api(`/datasets/${dash.dataset}/suspect-labels?limit=20`);
  const box = $("suspects");
  if (!r.total) { box.replaceChildren("No suspect labels: the last training found none (or has not run)."); return; }
  const head = ["patch (x, y, z)", "label given", "model p(artifact)", "p(given), out of fold", "P(wrong)", "version", "second look", ""];
  box.replaceChildren(el("p", { class: "stat" }, `${r.total} suspect label${r.total === 1 ? "" : "s"}${r.total > r.items.length ? `, the ${r.items.length} strongest shown` : ""}.`),
    el("table", { id: "suspects-table" }, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...r.items.map((s) => el("tr", { "data-label": s.label_id },
        el("td", {}, `${s.position.x}, ${s.position.y}, ${s.position.z}`),
        el("td", {}, `${s.annotator}: ${s.label}`),
        el("td", {}, s.p_artifact === null ? "" : fmt(s.p_artifact)),
        el("td", {}, fmt(s.p_given)),
        el("td", {}, fmt(s.score)),
        el("td", {}, `v${s.model_version_id}`),
        relabelCell(s.relabel_task),
        el("td", {}, el("button", { class: "open-suspect", onclick: () => previewSuspect(s) }, "view", el("span", { class: "sr-only" }, ` patch ${s.position.x}, ${s.position.y}, ${s.position.z}`))))))));
}
