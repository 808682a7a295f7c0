// The dashboard: model versions and their audit metrics, charts, galleries, jobs, annotators.
"use strict";
const dash = { dataset: null, me: null, versions: [], selected: null };
const $ = (id) => document.getElementById(id);

function pick(obj, ...keys) {
  for (const k of keys) if (obj && obj[k] !== undefined && obj[k] !== null) return obj[k];
  return null;
}
function audit(v) { return pick(v.metrics, "audit") || {}; }

async function loadVersions() {
  const page = await api(`/datasets/${dash.dataset}/models?limit=200`);
  dash.versions = page.items;
  const body = $("versions").querySelector("tbody");
  body.replaceChildren(...dash.versions.map((v) => {
    const a = audit(v);
    const row = el("tr", { class: "clickable" + (dash.selected === v.id ? " selected" : ""), "data-version": v.id, onclick: () => select(v.id) },
      el("td", {}, v.id), el("td", {}, v.kind), el("td", {}, v.parent_id ?? "–"),
      el("td", {}, new Date(v.created_at).toLocaleString()), el("td", {}, v.kind === "classifier" ? v.label_count : "–"),
      el("td", {}, fmt(pick(a, "f1"))), el("td", {}, fmt(pick(a, "pr_auc"))),
      el("td", {}, fmt(pick(a, "precision_at_recall_0.9", "precision_at_recall_90"))),
      el("td", {}, v.status), el("td", { class: "active-flag" }, v.active ? (v.pinned ? "● pinned" : "●") : ""),
      el("td", {}));
    if (dash.me.role === "admin" && v.status === "ready" && !v.active) {
      row.lastChild.append(el("button", { class: "activate", onclick: (e) => { e.stopPropagation(); activate(v.id); } }, "activate"));
    }
    return row;
  }));
  drawLearningCurve();
  if (dash.selected === null) {
    const first = dash.versions.find((v) => v.kind === "classifier" && v.status === "ready") || dash.versions[0];
    if (first) select(first.id);
  }
}

function drawLearningCurve() {
  const cls = dash.versions.filter((v) => v.kind === "classifier" && v.status === "ready" && pick(audit(v), "f1") !== null)
    .sort((a, b) => a.label_count - b.label_count || a.id - b.id);
  lineChart($("learning"), {
    title: "Learning curve (audit set)", xLabel: "labels used for training", yLabel: "score", yMin: 0, yMax: 1,
    series: [
      { name: "F1", points: cls.map((v) => [v.label_count, audit(v).f1]) },
      { name: "PR-AUC", points: cls.map((v) => [v.label_count, pick(audit(v), "pr_auc") ?? 0]) },
    ],
  });
}

async function activate(id) {
  try {
    await api(`/models/${id}/activate`, { method: "POST" });
    await loadVersions();
  } catch (err) { alert(err.message); }
}

async function select(id) {
  dash.selected = id;
  for (const row of $("versions").querySelectorAll("tbody tr")) row.classList.toggle("selected", row.dataset.version === String(id));
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
  const curve = pick(a, "pr_curve");
  let prPoints = [];
  if (curve && Array.isArray(curve.recall)) prPoints = curve.recall.map((r, i) => [r, curve.precision[i]]);
  else if (Array.isArray(curve)) prPoints = curve.map((p) => [pick(p, "recall", 0), pick(p, "precision", 1)]);
  lineChart($("pr"), {
    title: `Precision-recall on the audit set, version ${v.id}`, xLabel: "recall", yLabel: "precision", yMin: 0, yMax: 1, points: false,
    series: [{ name: `PR-AUC ${fmt(pick(a, "pr_auc"))}`, points: prPoints }],
  });
  drawConfusion(v, a);
  drawGalleries(v, a);
}

function drawConfusion(v, a) {
  let cm = pick(a, "confusion", "confusion_matrix");
  if (cm && !Array.isArray(cm)) cm = [[cm.tn, cm.fp], [cm.fn, cm.tp]];
  $("cm-title").textContent = `Confusion matrix, version ${v.id} (threshold ${fmt(pick(a, "threshold"))})`;
  if (!cm) { $("confusion").textContent = v.kind === "ae" ? "Autoencoders do not classify." : "No audit labels of both classes yet."; return; }
  $("confusion").replaceChildren(el("table", {},
    el("tr", {}, el("th", {}, "true \\ predicted"), el("th", {}, "clean"), el("th", {}, "artifact")),
    el("tr", {}, el("th", {}, "clean"), el("td", {}, cm[0][0]), el("td", {}, cm[0][1])),
    el("tr", {}, el("th", {}, "artifact"), el("td", {}, cm[1][0]), el("td", {}, cm[1][1]))),
    el("p", { class: "stat" }, `accuracy ${fmt(pick(a, "accuracy"))} · precision ${fmt(pick(a, "precision"))} · recall ${fmt(pick(a, "recall"))} · F1 ${fmt(pick(a, "f1"))} · ROC-AUC ${fmt(pick(a, "roc_auc"))} · n = ${pick(a, "n", "n_audit") ?? "–"}`));
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
      const img = el("img", { alt: `${key} at ${item.x},${item.y},${item.z}` });
      imageUrl(`/datasets/${dash.dataset}/patch.png?x=${item.x}&y=${item.y}&z=${item.z}&margin=5`).then((u) => { img.src = u; }).catch(() => {});
      const truth = pick(item, "label", "true", "truth");
      gallery.append(el("figure", { class: "example" }, img, el("figcaption", {}, `p=${fmt(pick(item, "p_artifact", "p"))} · true: ${truth}`)));
    }
    blocks.push(el("h4", {}, `${title} (${items.length})`), items.length ? gallery : el("p", { class: "muted" }, "none"));
  }
  $("galleries").replaceChildren(...blocks);
}

async function loadJobs() {
  const page = await api(`/jobs?dataset_id=${dash.dataset}&limit=12`);
  $("jobs").querySelector("tbody").replaceChildren(...page.items.map((j) => el("tr", {},
    el("td", {}, j.id), el("td", {}, j.kind), el("td", {}, j.state),
    el("td", {}, el("span", { class: "bar", title: `${Math.round(j.progress * 100)} %` }, el("span", { style: `width:${Math.round(j.progress * 100)}%` })), ` ${Math.round(j.progress * 100)} %`),
    el("td", {}, j.error || j.message))));
}

async function loadLabels() {
  const d = await api(`/datasets/${dash.dataset}`);
  const rows = Object.entries(d.labels.per_annotator).map(([name, c]) => el("tr", {}, el("td", {}, name), el("td", {}, c.clean), el("td", {}, c.artifact)));
  $("annotators").querySelector("tbody").replaceChildren(...rows);
  const dis = await api(`/datasets/${dash.dataset}/disagreements?limit=20`);
  $("disagreements").replaceChildren(dis.total ? el("table", {}, el("tr", {}, el("th", {}, "patch (x, y, z)"), el("th", {}, "verdicts")),
    ...dis.items.map((p) => el("tr", {}, el("td", {}, `${p.x}, ${p.y}, ${p.z}`), el("td", {}, p.labels.map((l) => `${l.annotator}: ${l.label}${l.artifact_type ? " (" + l.artifact_type + ")" : ""}`).join(" · "))))) : "No disagreements.");
}

async function refresh() {
  if (!dash.dataset) return;
  try {
    await Promise.all([loadVersions(), loadJobs(), loadLabels()]);
  } catch (err) { console.warn(err.message); }
}

signIn(async (me) => {
  dash.me = me;
  $("board").hidden = false;
  await pickDataset($("dataset"), (id) => { dash.dataset = id; dash.selected = null; refresh(); });
  setInterval(() => { loadJobs().catch(() => {}); }, 2000);
  setInterval(() => { loadVersions().catch(() => {}); loadLabels().catch(() => {}); }, 10000);
});
