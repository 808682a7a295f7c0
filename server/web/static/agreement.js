// Several annotators: per annotator their labels, pace, agreement with the consensus and
// estimated reliability; Cohen's kappa per pair and Krippendorff's alpha, with intervals.
// Where the server cannot estimate a figure it sends null and a reason: the panel shows the
// reason, never a number. Admins set each annotator's label weight: how much their labels
// count in the consensus training and the audit use (0 excludes them; a training follows).
"use strict";

function signedNum(x) { return `${x < 0 ? "−" : ""}${fmt(Math.abs(x))}`; }

function figureCell(f, digits = 2, suffix = "") {
  if (f.value === null) return el("td", {}, el("span", { class: "na" }, f.reason || "not estimated"));
  const text = digits === 2 ? signedNum(f.value) : fmt(f.value, digits);
  return el("td", {}, text + suffix, f.interval ? el("span", { class: "ci", title: "95% bootstrap interval over patches" }, ` [${signedNum(f.interval[0])} to ${signedNum(f.interval[1])}]`) : null,
    f.value !== null && f.reason ? el("div", { class: "na" }, f.reason) : null);
}

function weightText(a) {
  if (a.label_weight === 0) return "0 (excluded)";
  return a.label_weight === 1 ? "1" : fmt(a.label_weight);
}

async function setWeight(name, weight) {
  try {
    const r = await api(`/annotators/${encodeURIComponent(name)}/weight`, { method: "PUT", json: { weight, reason: null } });
    const what = weight === 0 ? `${name} excluded` : weight === 1 ? `${name} included` : `${name} weighted ${fmt(weight)}`;
    announce(`${what}; ${r.trainings.length ? `training queued (job ${r.trainings.join(", ")})` : "no training queued"}.`);
    await loadAgreement();
    if (typeof loadJobs === "function") await loadJobs();
  } catch (err) { announce(err.message); }
}

function weightCell(a) {
  const cell = el("td", { class: "label-weight" }, el("span", { class: "weight" }, weightText(a)),
    a.label_weight_reason ? el("div", { class: "na" }, a.label_weight_reason) : null);
  if (!dash.me || dash.me.role !== "admin") return cell;
  const excluded = a.label_weight === 0;
  const input = el("input", { type: "number", min: 0, max: 1, step: 0.1, value: a.label_weight, class: "weight-input", "aria-label": `label weight of ${a.annotator}` });
  cell.append(" ",
    el("button", { class: "exclude-annotator", onclick: () => setWeight(a.annotator, excluded ? 1 : 0) }, excluded ? "Include" : "Exclude", el("span", { class: "sr-only" }, ` ${a.annotator}`)),
    " ", input,
    el("button", { class: "set-weight", onclick: () => { const w = Number(input.value); if (input.value !== "" && w >= 0 && w <= 1) setWeight(a.annotator, w); else announce("A label weight is from 0 to 1."); } }, "set", el("span", { class: "sr-only" }, ` label weight of ${a.annotator}`)));
  return cell;
}

function annotatorTable(rows) {
  const head = ["annotator", "labels (artifact / clean)", "labels per hour", "agreement with consensus (n)", "reliability (n)", "label weight"];
  return el("table", { id: "agreement-annotators" }, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...rows.map((a) => el("tr", { "data-annotator": a.annotator }, el("td", {}, a.annotator),
      el("td", {}, `${a.labels} (${a.artifact} / ${a.clean})`),
      figureCell(a.labels_per_hour, 0),
      figureCell(a.agreement_with_consensus, 2, a.agreement_with_consensus.value === null ? "" : ` (${a.agreement_with_consensus.n})`),
      figureCell(a.reliability, 2, a.reliability.value === null ? "" : ` (${a.reliability.n})`),
      weightCell(a)))));
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
