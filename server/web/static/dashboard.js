// The dashboard: model versions and their audit metrics, charts, galleries, jobs, annotators.
"use strict";
const dash = { dataset: null, me: null, versions: [], selected: null, jobsSeen: "" };
const $ = (id) => document.getElementById(id);
const METRICS = [["f1", "F1"], ["pr_auc", "PR-AUC"], ["precision_at_recall_0.9", "precision @ recall 0.9"]];

function pick(obj, ...keys) {
  for (const k of keys) if (obj && obj[k] !== undefined && obj[k] !== null) return obj[k];
  return null;
}
function audit(v) { return pick(v.metrics, "audit") || {}; }
function counts(a) {
  const n = pick(a, "n", "n_audit");
  const pos = pick(a, "positives");
  const neg = pick(a, "negatives") ?? (n !== null && pos !== null ? n - pos : null);
  return { n, pos, neg };
}
// Metrics need audit labels of both classes; without them a value is not measured, never 0.
function enough(a) {
  const { n, pos, neg } = counts(a);
  if (!n) return false;
  if (pos !== null && (pos < 1 || neg < 1)) return false;
  return pick(a, "pr_auc") !== null;
}
function value(a, name) { return enough(a) ? pick(a, name) : null; }
function interval(a, name) { const i = pick(a, "intervals"); return i && Array.isArray(i[name]) ? i[name] : null; }

function metricCell(v, name) {
  if (v.kind !== "classifier") return el("td", {}, "–");
  const a = audit(v), x = value(a, name);
  if (x === null) return el("td", {}, el("span", { class: "na" }, "not enough audit labels"));
  const ci = interval(a, name);
  return el("td", {}, fmt(x), ci ? el("span", { class: "ci", title: "95% bootstrap interval" }, ` [${fmt(ci[0])}–${fmt(ci[1])}]`) : null);
}

function auditCell(v) {
  if (v.kind !== "classifier") return el("td", {}, "–");
  const { n, pos } = counts(audit(v));
  if (!n) return el("td", {}, el("span", { class: "na" }, "no audit labels"));
  const note = pos === 0 ? "no artifacts: nothing measured" : pos !== null && pos < 20 ? "few artifacts: wide intervals" : null;
  return el("td", {}, `${n} (${pos ?? "?"} artifacts)`, note ? el("div", { class: "na" }, note) : null);
}

async function loadVersions() {
  const page = await api(`/datasets/${dash.dataset}/models?limit=200`);
  dash.versions = page.items;
  const body = $("versions").querySelector("tbody");
  body.replaceChildren(...dash.versions.map((v) => {
    const row = el("tr", {
      class: "clickable" + (dash.selected === v.id ? " selected" : ""), tabindex: 0, "data-version": v.id,
      "aria-selected": dash.selected === v.id ? "true" : "false", "aria-label": `version ${v.id} (${v.kind})`,
      onclick: () => select(v.id),
      onkeydown: (e) => { if ((e.key === "Enter" || e.key === " ") && e.target === row) { e.preventDefault(); select(v.id); } },
    },
    el("td", {}, v.id), el("td", {}, v.kind), el("td", {}, v.parent_id ?? "–"),
    el("td", {}, new Date(v.created_at).toLocaleString([], { dateStyle: "short", timeStyle: "short" })), el("td", {}, v.kind === "classifier" ? v.label_count : "–"),
    auditCell(v), ...METRICS.map(([name]) => metricCell(v, name)),
    el("td", {}, v.status, v.held_back ? el("div", { class: "na held-back" }, `held back: ${v.held_back}`) : null),
    el("td", { class: "active-flag" }, v.active ? (v.pinned ? "● active, pinned" : "● active") : ""),
    el("td", {}));
    if (dash.me.role === "admin" && v.status === "ready" && !v.active) {
      row.lastChild.append(el("button", { class: "activate", onclick: (e) => { e.stopPropagation(); activate(v); } }, "activate", el("span", { class: "sr-only" }, ` version ${v.id}`)));
    }
    return row;
  }));
  drawPinned();
  drawLearningCurve();
  if (dash.selected === null) { // open on the active version, not the newest
    const first = dash.versions.find((v) => v.kind === "classifier" && v.active)
      || dash.versions.find((v) => v.active) || dash.versions[0];
    if (first) select(first.id);
  }
}

function drawPinned() {
  const pinned = dash.versions.filter((v) => v.pinned);
  $("pinned").hidden = !pinned.length;
  $("pinned").replaceChildren(...pinned.map((v) => el("p", {},
    `Version ${v.id} (${v.kind}) is pinned: newer ${v.kind} versions do not become active by themselves. `,
    dash.me.role === "admin" ? el("button", { class: "unpin", onclick: () => unpin(v.kind) }, "unpin", el("span", { class: "sr-only" }, ` version ${v.id} and follow the automatic choice`)) : null)));
}

function drawLearningCurve() {
  const cls = dash.versions.filter((v) => v.kind === "classifier" && v.status === "ready")
    .sort((a, b) => a.label_count - b.label_count || a.id - b.id);
  const measured = cls.filter((v) => enough(audit(v)));
  const series = [["f1", "F1"], ["pr_auc", "PR-AUC"]].map(([name, title]) => ({
    name: title,
    points: measured.filter((v) => value(audit(v), name) !== null).map((v) => {
      const ci = interval(audit(v), name);
      return [v.label_count, value(audit(v), name), ci ? { id: v.id, lo: ci[0], hi: ci[1] } : { id: v.id }];
    }),
  }));
  lineChart($("learning"), {
    title: "Learning curve (audit set, 95% intervals)", xLabel: "labels used for training", yLabel: "score", yMin: 0, yMax: 1,
    series, empty: "not enough audit labels yet",
  });
  const missing = cls.length - measured.length;
  $("learning-note").textContent = missing ? `${missing} version(s) without enough audit labels (both classes needed) are not plotted.` : "";
}

function comparison(v, active) {
  const a = audit(v), b = active ? audit(active) : {};
  if (!enough(a)) return [el("p", { class: "na" }, `Version ${v.id} has not enough audit labels: its quality is unknown.`)];
  const rows = METRICS.map(([name, title]) => {
    const x = value(a, name), y = active ? value(b, name) : null, ci = interval(a, name);
    const diff = x !== null && y !== null ? x - y : null;
    return el("tr", {}, el("th", { scope: "row" }, title),
      el("td", {}, fmt(x), ci ? ` [${fmt(ci[0])}–${fmt(ci[1])}]` : ""),
      el("td", {}, active ? fmt(y) : "–"),
      el("td", { class: diff !== null && diff < 0 ? "error" : "" }, diff === null ? "–" : `${diff >= 0 ? "+" : "−"}${fmt(Math.abs(diff))}`));
  });
  return [el("table", {}, el("tr", {}, el("th", { scope: "col" }, "audit metric"), el("th", { scope: "col" }, `version ${v.id}`),
    el("th", { scope: "col" }, active ? `active (version ${active.id})` : "active: none"), el("th", { scope: "col" }, "difference")), ...rows)];
}

function ask(v) {
  const active = dash.versions.find((x) => x.kind === v.kind && x.active);
  $("confirm-title").textContent = `Activate version ${v.id} (${v.kind})?`;
  $("confirm-body").replaceChildren(...(v.kind === "classifier" ? comparison(v, active) : []),
    el("p", {}, "Activating pins this version: newer versions stop becoming active by themselves until you unpin. The pool is scored again with it and the proposals follow it."));
  const dialog = $("confirm");
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

async function activate(v) {
  if (!(await ask(v))) { announce(`Version ${v.id} was not activated.`); return; }
  try {
    await api(`/models/${v.id}/activate`, { method: "POST" });
    announce(`Version ${v.id} is active and pinned.`);
    await loadVersions();
  } catch (err) { announce(err.message); alert(err.message); }
}

async function unpin(kind) {
  try {
    const chosen = await api(`/datasets/${dash.dataset}/models/unpin?kind=${kind}`, { method: "POST" });
    announce(chosen ? `Unpinned: version ${chosen.id} is active by the automatic choice.` : "Unpinned.");
    await loadVersions();
  } catch (err) { announce(err.message); }
}

async function select(id) {
  dash.selected = id;
  for (const row of $("versions").querySelectorAll("tbody tr")) {
    const on = row.dataset.version === String(id);
    row.classList.toggle("selected", on);
    row.setAttribute("aria-selected", on ? "true" : "false");
  }
  const v = await api(`/models/${id}`);
  const m = v.metrics || {};
  const history = pick(m, "history", "loss_history") || [];
  lineChart($("loss"), {
    title: `Training loss, version ${v.id} (${v.kind})`, xLabel: "epoch", yLabel: v.kind === "ae" ? "MSE" : "loss",
    series: [
      { name: "train", points: history.filter((h) => pick(h, "train_loss", "loss") !== null).map((h) => [h.epoch, pick(h, "train_loss", "loss")]) },
      { name: "validation", points: history.filter((h) => pick(h, "val_loss") !== null).map((h) => [h.epoch, h.val_loss]) },
    ],
  });
  const a = audit(v);
  const curve = enough(a) ? pick(a, "pr_curve") : null;
  let prPoints = [];
  if (curve && Array.isArray(curve.recall)) prPoints = curve.recall.map((r, i) => [r, curve.precision[i]]);
  const { n, pos } = counts(a);
  lineChart($("pr"), {
    title: `Precision-recall on the audit set, version ${v.id}`, xLabel: "recall", yLabel: "precision", yMin: 0, yMax: 1, points: false,
    series: prPoints.length ? [{ name: `PR-AUC ${fmt(value(a, "pr_auc"))}`, points: prPoints }] : [],
    empty: v.kind === "ae" ? "autoencoders do not classify" : `not enough audit labels (${n ?? 0} patches, ${pos ?? 0} artifacts)`,
  });
  drawConfusion(v, a);
  drawGalleries(v, a);
}

function drawConfusion(v, a) {
  let cm = pick(a, "confusion", "confusion_matrix");
  if (cm && !Array.isArray(cm)) cm = [[cm.tn, cm.fp], [cm.fn, cm.tp]];
  $("cm-title").textContent = `Confusion matrix, version ${v.id} (threshold ${fmt(pick(a, "threshold"))})`;
  if (v.kind === "ae") { $("confusion").textContent = "Autoencoders do not classify."; return; }
  if (!cm || !enough(a)) { $("confusion").textContent = "Not enough audit labels: the audit set needs both clean and artifact patches."; return; }
  const { n, pos } = counts(a);
  $("confusion").replaceChildren(el("table", {},
    el("tr", {}, el("th", { scope: "col" }, "true \\ predicted"), el("th", { scope: "col" }, "clean"), el("th", { scope: "col" }, "artifact")),
    el("tr", {}, el("th", { scope: "row" }, "clean"), el("td", {}, cm[0][0]), el("td", {}, cm[0][1])),
    el("tr", {}, el("th", { scope: "row" }, "artifact"), el("td", {}, cm[1][0]), el("td", {}, cm[1][1]))),
    el("p", { class: "stat" }, `accuracy ${fmt(pick(a, "accuracy"))} · precision ${fmt(pick(a, "precision"))} · recall ${fmt(pick(a, "recall"))} · F1 ${fmt(pick(a, "f1"))} · ROC-AUC ${fmt(pick(a, "roc_auc"))} · n = ${n ?? "–"} (${pos ?? "?"} artifacts)`));
}

function drawGalleries(v, a) {
  const examples = pick(a, "examples");
  if (!examples) { $("galleries").textContent = v.kind === "ae" ? "Autoencoders do not classify." : "No audit examples yet."; return; }
  const names = { true_positive: "True positives", false_positive: "False positives", false_negative: "False negatives", most_uncertain: "Most uncertain" };
  const blocks = [];
  for (const [key, title] of Object.entries(names)) {
    const items = examples[key] || [];
    const gallery = el("div", { class: "gallery" });
    for (const item of items.slice(0, 8)) {
      const truth = pick(item, "label", "true", "truth");
      const img = el("img", { alt: `${title.toLowerCase()}: patch at ${item.x}, ${item.y}, ${item.z}, true class ${truth}` });
      imageUrl(`/datasets/${dash.dataset}/patch.png?x=${item.x}&y=${item.y}&z=${item.z}&margin=5`).then((u) => { img.src = u; }).catch(() => {});
      gallery.append(el("figure", { class: "example" }, img, el("figcaption", {}, `p=${fmt(pick(item, "p_artifact", "p"))} · true: ${truth}`)));
    }
    blocks.push(el("h4", {}, `${title} (${items.length})`), items.length ? gallery : el("p", { class: "muted" }, "none"));
  }
  $("galleries").replaceChildren(...blocks);
}

// Jobs are polled; versions and labels are fetched again only when a job changed state.
async function loadJobs() {
  const page = await api(`/jobs?dataset_id=${dash.dataset}&limit=12`);
  $("jobs").querySelector("tbody").replaceChildren(...page.items.map((j) => el("tr", {},
    el("td", {}, j.id), el("td", {}, j.kind), el("td", {}, j.state),
    el("td", {}, el("span", { class: "bar", role: "progressbar", "aria-label": `job ${j.id} progress`, "aria-valuenow": Math.round(j.progress * 100), "aria-valuemin": 0, "aria-valuemax": 100 }, el("span", { style: `width:${Math.round(j.progress * 100)}%` })), ` ${Math.round(j.progress * 100)} %`),
    el("td", {}, j.error || j.message))));
  const seen = page.items.map((j) => `${j.id}:${j.state}`).join(",");
  const changed = seen !== dash.jobsSeen;
  dash.jobsSeen = seen;
  return changed;
}

async function loadLabels() {
  const d = await api(`/datasets/${dash.dataset}`);
  const rows = Object.entries(d.labels.per_annotator).map(([name, c]) => el("tr", {}, el("td", {}, name), el("td", {}, c.clean), el("td", {}, c.artifact)));
  $("annotators").querySelector("tbody").replaceChildren(...rows);
  const dis = await api(`/datasets/${dash.dataset}/disagreements?limit=20`);
  $("disagreements").replaceChildren(dis.total ? el("table", {}, el("tr", {}, el("th", { scope: "col" }, "patch (x, y, z)"), el("th", { scope: "col" }, "verdicts")),
    ...dis.items.map((p) => el("tr", {}, el("td", {}, `${p.x}, ${p.y}, ${p.z}`), el("td", {}, p.labels.map((l) => `${l.annotator}: ${l.label}${l.artifact_type ? " (" + l.artifact_type + ")" : ""}`).join(" · "))))) : "No disagreements.");
  const review = await api(`/datasets/${dash.dataset}/tasks/review?limit=20`);
  $("review").replaceChildren(review.total ? el("table", {}, el("tr", {}, el("th", { scope: "col" }, "patch (x, y, z)"), el("th", { scope: "col" }, "flagged by"), el("th", { scope: "col" }, "status"), el("th", { scope: "col" }, "webKnossos")),
    ...review.items.map((t) => el("tr", {}, el("td", {}, `${t.x}, ${t.y}, ${t.z}`), el("td", {}, t.unsure_flags), el("td", {}, t.status),
      el("td", {}, t.webknossos_url ? el("a", { href: t.webknossos_url, target: "_blank", rel: "noopener" }, `open ${t.x}, ${t.y}, ${t.z}`) : "–")))) : "Nothing flagged.");
}

async function refresh() {
  if (!dash.dataset) return;
  try {
    await Promise.all([loadVersions(), loadJobs(), loadLabels()]);
  } catch (err) { console.warn(err.message); }
}

async function poll() {
  if (document.hidden || !dash.dataset || $("workspace").hidden) return;
  try {
    if (await loadJobs()) await Promise.all([loadVersions(), loadLabels()]);
  } catch (err) { console.warn(err.message); }
}

signIn(async (me) => {
  dash.me = me;
  await pickDataset($("dataset"), (d) => { dash.dataset = d.id; dash.selected = null; refresh(); });
  setInterval(poll, 3000);
  setInterval(() => { if (!document.hidden && dash.dataset) loadLabels().catch(() => {}); }, 60000);
});
