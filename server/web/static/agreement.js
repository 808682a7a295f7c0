// Several annotators: per annotator their labels, pace, agreement with the consensus and
// estimated reliability; Cohen's kappa per pair and Krippendorff's alpha, with intervals.
// Where the server cannot estimate a figure it sends null and a reason: the panel shows the
// reason, never a number.
"use strict";

function signedNum(x) { return `${x < 0 ? "−" : ""}${fmt(Math.abs(x))}`; }

function figureCell(f, digits = 2, suffix = "") {
  if (f.value === null) return el("td", {}, el("span", { class: "na" }, f.reason || "not estimated"));
  const text = digits === 2 ? signedNum(f.value) : fmt(f.value, digits);
  return el("td", {}, text + suffix, f.interval ? el("span", { class: "ci", title: "95% bootstrap interval over patches" }, ` [${signedNum(f.interval[0])} to ${signedNum(f.interval[1])}]`) : null,
    f.value !== null && f.reason ? el("div", { class: "na" }, f.reason) : null);
}

function annotatorTable(rows) {
  const head = ["annotator", "labels (artifact / clean)", "labels per hour", "agreement with consensus (n)", "reliability (n)"];
  return el("table", { id: "agreement-annotators" }, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows.map((a) => el("tr", { "data-annotator": a.annotator }, el("td", {}, a.annotator),
      el("td", {}, `${a.labels} (${a.artifact} / ${a.clean})`),
      figureCell(a.labels_per_hour, 0),
      figureCell(a.agreement_with_consensus, 2, a.agreement_with_consensus.value === null ? "" : ` (${a.agreement_with_consensus.n})`),
      figureCell(a.reliability, 2, a.reliability.value === null ? "" : ` (${a.reliability.n})`)))));
}

function pairTable(pairs) {
  const head = ["annotators", "Cohen's kappa [95% interval]", "patches both labelled"];
  return el("table", { id: "agreement-pairs" }, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...pairs.map((p) => el("tr", { "data-pair": `${p.first}|${p.second}` }, el("td", {}, `${p.first} · ${p.second}`),
      figureCell(p.kappa), el("td", {}, p.kappa.n)))));
}

async function loadAgreement() {
  const r = await api(`/datasets/${dash.dataset}/annotators`);
  const box = $("agreement");
  if (!r.annotators.length) { box.replaceChildren("No labels yet."); $("agreement-alpha").textContent = ""; return; }
  const alpha = r.alpha;
  $("agreement-alpha").textContent = alpha.value === null
    ? `Krippendorff's alpha: not estimated (${alpha.reason}).`
    : `Krippendorff's alpha: ${signedNum(alpha.value)}` + (alpha.interval ? ` [${signedNum(alpha.interval[0])} to ${signedNum(alpha.interval[1])}]` : ` (${alpha.reason})`) +
      ` over ${alpha.n} patches labelled by two or more annotators (of ${r.patches}).`;
  box.replaceChildren(annotatorTable(r.annotators),
    r.pairs.length ? pairTable(r.pairs) : el("p", { class: "muted" }, "Only one annotator: no pair to compare."));
}
