// The dashboard: model versions and their audit metrics, charts, galleries, jobs, annotators.
"use strict";
const dash = { dataset: null, me: null, versions: [], selected: null, jobsSeen: "", jobsTag: null };
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
// Below the minimum of audit artifacts nothing is measured: the words say so, never a number.
// metrics measured before the reason was stored: models/metrics.py MIN_AUDIT_ARTIFACTS
const MIN_AUDIT_ARTIFACTS = 5;
function notMeasured(a) {
  const { n, pos, neg } = counts(a);
  if (!n) return "no audit labels";
  if (pick(a, "not_measured")) return a.not_measured;
  if (pos !== null && pos < MIN_AUDIT_ARTIFACTS) return `not enough audit artifacts (${pos})`;
  if (neg !== null && neg < MIN_AUDIT_ARTIFACTS) return `not enough clean audit patches (${neg})`;
  return pick(a, "pr_auc") === null ? "not measured" : null;
}
function enough(a) { return notMeasured(a) === null; }
function value(a, name) { return enough(a) ? pick(a, name) : null; }
function interval(a, name) { const i = pick(a, "intervals"); return i && Array.isArray(i[name]) ? i[name] : null; }
function signed(x) { return `${x >= 0 ? "+" : "−"}${fmt(Math.abs(x))}`; }
// The paired comparison of version v with version other on the same audit patches, if measured.
function paired(v, other) {
  if (!other || other.id === v.id) return null;
  const p = pick(audit(v), "paired");
  return p && p[String(other.id)] ? p[String(other.id)] : null;
}
function sameSet(p) { return `same ${p.patches} audit patches, ${p.artifacts} artifacts`; }
function diffText(d) { return `${signed(d.difference)} [${signed(d.interval[0])} to ${signed(d.interval[1])}]`; }

function metricCell(v, name) {
  if (v.kind !== "classifier") return el("td", {}, "–");
  const a = audit(v), x = value(a, name);
  if (x === null) return el("td", {}, el("span", { class: "na" }, notMeasured(a)));
  const ci = interval(a, name);
  return el("td", {}, fmt(x), ci ? el("span", { class: "ci", title: "95% interval" }, ` [${fmt(ci[0])}–${fmt(ci[1])}]`) : null);
}

function auditCell(v) {
  if (v.kind !== "classifier") return el("td", {}, "–");
  const a = audit(v), { n, pos } = counts(a), set = pick(a, "audit_set");
  if (!n) return el("td", {}, el("span", { class: "na" }, "no audit labels"));
  const latest = Math.max(0, ...dash.versions.map((x) => pick(pick(audit(x), "audit_set"), "through_label") || 0));
  const stale = set && set.through_label < latest ? "measured on an older audit set" : null;
  return el("td", {}, `${n} (${pos ?? "?"} artifacts)`, stale ? el("div", { class: "na" }, stale) : null);
}

// PR-AUC difference to the active classifier, paired on the same audit patches.
function versusActiveCell(v) {
  const active = dash.versions.find((x) => x.kind === "classifier" && x.active);
  if (v.kind !== "classifier" || !active || active.id === v.id) return el("td", { class: "vs-active" }, "–");
  const p = paired(v, active);
  if (!p) return el("td", { class: "vs-active" }, el("span", { class: "na" }, "not measured on the same patches"));
  if (p.reason) return el("td", { class: "vs-active" }, el("span", { class: "na" }, p.reason));
  return el("td", { class: "vs-active" }, diffText(p.pr_auc), el("div", { class: "ci" }, sameSet(p)));
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
    auditCell(v), ...METRICS.map(([name]) => metricCell(v, name)), versusActiveCell(v),
    el("td", {}, v.status, v.held_back ? el("details", { class: "na held-back" }, el("summary", {}, "held back"), el("p", {}, v.held_back)) : null),
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
    series, empty: "nothing measured yet: not enough audit artifacts",
  });
  const missing = cls.length - measured.length;
  const newest = cls.map((v) => pick(audit(v), "audit_set")).filter(Boolean).sort((x, y) => y.through_label - x.through_label)[0];
  const notes = [];
  if (newest) notes.push(`All versions measured on the same audit set: ${newest.patches} patches, ${newest.artifacts} artifacts.`);
  if (missing) notes.push(`${missing} version(s) not plotted: ${[...new Set(cls.filter((v) => !enough(audit(v))).map((v) => notMeasured(audit(v))))].join("; ")}.`);
  const active = cls.find((v) => v.active);
  const last = cls[cls.length - 1];
  const p = last && active ? paired(last, active) : null;
  if (p && !p.reason) notes.push(`Newest (version ${last.id}) against active (version ${active.id}), PR-AUC ${diffText(p.pr_auc)}, F1 ${diffText(p.f1)} (paired, ${sameSet(p)}).`);
  $("learning-note").textContent = notes.join(" ");
}

function comparison(v, active) {
  const a = audit(v), b = active ? audit(active) : {};
  const own = (x) => { const { n, pos } = counts(audit(x)); return `${n ?? 0} audit patches, ${pos ?? 0} artifacts`; };
  const out = [];
  if (!enough(a)) out.push(el("p", { class: "na" }, `Version ${v.id}: ${notMeasured(a)}; its quality is unknown.`));
  const p = paired(v, active);
  const header = el("tr", {}, el("th", { scope: "col" }, "audit metric"), el("th", { scope: "col" }, `version ${v.id}`),
    el("th", { scope: "col" }, active ? `active (version ${active.id})` : "active: none"), el("th", { scope: "col" }, "difference (paired 95% interval)"));
  const cell = (x, name) => { const val = value(audit(x), name), ci = interval(audit(x), name); return val === null ? notMeasured(audit(x)) : `${fmt(val)}${ci ? ` [${fmt(ci[0])}–${fmt(ci[1])}]` : ""}`; };
  const rows = METRICS.map(([name, title]) => {
    const d = p && !p.reason ? p[name] : null;
    return el("tr", {}, el("th", { scope: "row" }, title), el("td", {}, cell(v, name)), el("td", {}, active ? cell(active, name) : "–"),
      el("td", { class: "difference" + (d && d.interval[1] < 0 ? " error" : "") }, d ? diffText(d) : (p && p.reason) || "not measured on the same patches"));
  });
  out.push(el("table", { class: "comparison" }, header, ...rows));
  if (p) out.push(el("p", { class: "stat audit-counts" }, p.reason
    ? `On the ${sameSet(p)}: ${p.reason}, so the two cannot be told apart.`
    : `Both measured on the ${sameSet(p)}; the interval comes from resampling those patches for both versions at once.`));
  else if (active) out.push(el("p", { class: "na audit-counts" }, `Measured on different audit sets (version ${v.id}: ${own(v)}; version ${active.id}: ${own(active)}): no difference is shown.`));
  return out;
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
  if (dash.selected !== id) return; // another row was selected meanwhile
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
    title: `Precision-recall on the audit set, version ${v.id}`, xLabel: "recall", yLabel: "precision", xMin: 0, xMax: 1, yMin: 0, yMax: 1, points: false,
    series: prPoints.length ? [{ name: `PR-AUC ${fmt(value(a, "pr_auc"))}`, points: prPoints }] : [],
    empty: v.kind === "ae" ? "autoencoders do not classify" : `${notMeasured(a) || "no curve"} (${n ?? 0} patches, ${pos ?? 0} artifacts)`,
  });
  drawConfusion(v, a);
  drawGalleries(v, a);
}

function drawConfusion(v, a) {
  let cm = pick(a, "confusion", "confusion_matrix");
  if (cm && !Array.isArray(cm)) cm = [[cm.tn, cm.fp], [cm.fn, cm.tp]];
  $("cm-title").textContent = `Confusion matrix, version ${v.id} (threshold ${fmt(pick(a, "threshold"))})`;
  if (v.kind === "ae") { $("confusion").textContent = "Autoencoders do not classify."; return; }
  if (!cm || !enough(a)) { $("confusion").textContent = `Nothing measured: ${notMeasured(a)}.`; return; }
  const { n, pos } = counts(a);
  $("confusion").replaceChildren(el("table", {},
    el("tr", {}, el("th", { scope: "col" }, "true \\ predicted"), el("th", { scope: "col" }, "clean"), el("th", { scope: "col" }, "artifact")),
    el("tr", {}, el("th", { scope: "row" }, "clean"), el("td", {}, cm[0][0]), el("td", {}, cm[0][1])),
    el("tr", {}, el("th", { scope: "row" }, "artifact"), el("td", {}, cm[1][0]), el("td", {}, cm[1][1]))),
    el("p", { class: "stat" }, `accuracy ${fmt(pick(a, "accuracy"))} · precision ${fmt(pick(a, "precision"))} · recall ${fmt(pick(a, "recall"))} · F1 ${fmt(pick(a, "f1"))} · ROC-AUC ${fmt(pick(a, "roc_auc"))} · n = ${n ?? "–"} (${pos ?? "?"} artifacts)`));
}

function drawGalleries(v, a) {
  const examples = pick(a, "examples");
  if (v.kind === "classifier" && !enough(a)) { $("galleries").textContent = `Nothing measured: ${notMeasured(a)}.`; return; }
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

// Jobs are polled with the tag of the last answer: unchanged, the server answers 304 with no
// body. Versions and labels are fetched again only when a job changed state.
async function jobsPage() {
  const path = `/jobs?dataset_id=${dash.dataset}&limit=12`;
  const headers = { Authorization: "Bearer " + token() };
  if (dash.jobsTag && dash.jobsTag.path === path) headers["If-None-Match"] = dash.jobsTag.etag;
  const response = await fetch(API + path, { headers, cache: "no-store" });
  if (response.status === 304) return null;
  if (!response.ok) return api(path); // the usual error handling
  dash.jobsTag = { path, etag: response.headers.get("ETag") };
  return response.json();
}

async function loadJobs() {
  const page = await jobsPage();
  if (page === null) return false;
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
  await Promise.all([loadReview(), loadAgreement(), loadSuspects()]);
}

const when = (at) => new Date(at).toLocaleString([], { dateStyle: "short", timeStyle: "short" });

// The review list: who flagged a patch unsure and when, its labels since, and (admins) a
// second look: open the patch, label it, mark it resolved.
async function loadReview() {
  const review = await api(`/datasets/${dash.dataset}/tasks/review?limit=20`);
  if (!review.total) { $("review").replaceChildren("Nothing flagged."); return; }
  $("review").replaceChildren(el("table", {}, el("tr", {}, el("th", { scope: "col" }, "patch (x, y, z)"), el("th", { scope: "col" }, "flagged unsure by"),
    el("th", { scope: "col" }, "labels since"), el("th", { scope: "col" }, "status"), el("th", { scope: "col" }, "action")),
  ...review.items.map((t) => el("tr", { "data-task": t.id }, el("td", {}, `${t.x}, ${t.y}, ${t.z}`),
    el("td", {}, t.flagged_by.map((f) => `${f.annotator} (${when(f.at)})`).join(", ") || t.unsure_flags),
    el("td", {}, t.labels.map((l) => `${l.annotator}: ${l.label}${l.artifact_type ? " (" + l.artifact_type + ")" : ""} (${when(l.at)})`).join(", ") || "none"),
    el("td", { class: "review-status" }, t.resolved_at ? `resolved by ${t.resolved_by} (${when(t.resolved_at)})` : t.status === "labelled" ? "labelled" : "in the queue"),
    el("td", {}, dash.me.role === "admin" ? el("button", { class: "open-review", onclick: () => openReview(t) }, "open", el("span", { class: "sr-only" }, ` patch ${t.x}, ${t.y}, ${t.z}`)) : "",
      t.webknossos_url ? el("a", { href: t.webknossos_url, target: "_blank", rel: "noopener" }, " webKnossos") : null)))));
}

function openReview(t) {
  const img = el("img", { alt: `flagged patch at ${t.x}, ${t.y}, ${t.z}`, width: 200, height: 200 });
  imageUrl(`/datasets/${dash.dataset}/patch.png?x=${t.x}&y=${t.y}&z=${t.z}&margin=5`).then((u) => { img.src = u; }).catch(() => {});
  const status = el("p", { class: "stat", role: "status" });
  const labelAs = async (label) => {
    try {
      await api(`/tasks/${t.id}/label`, { method: "POST", json: { label, source: "ui", idempotency_key: `review-${t.id}-${crypto.randomUUID()}` } });
      status.textContent = `Labelled ${label}.`;
      await loadReview();
    } catch (err) { status.textContent = err.message; }
  };
  const resolve = async () => {
    try {
      await api(`/tasks/${t.id}/resolve`, { method: "POST", json: { resolved: true } });
      announce(`Patch ${t.x}, ${t.y}, ${t.z} resolved.`);
      $("review-open").replaceChildren();
      await loadReview();
    } catch (err) { status.textContent = err.message; }
  };
  $("review-open").replaceChildren(el("h4", {}, `Patch ${t.x}, ${t.y}, ${t.z}`), img,
    el("div", { class: "buttons" },
      el("button", { class: "review-clean", onclick: () => labelAs("clean") }, "label clean"),
      el("button", { class: "review-artifact", onclick: () => labelAs("artifact") }, "label artifact"),
      el("button", { class: "review-resolve primary", onclick: resolve }, "mark resolved")), status);
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
