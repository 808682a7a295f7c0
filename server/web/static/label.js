// The labeling page: one leased patch at a time, the next one prefetched, keyboard first.
"use strict";
const TYPES = [
  ["circular", "Circular charging ring: a bright or dark ring where the beam charged the surface."],
  ["horseshoe", "Horseshoe: an open, curved arc, part of a charging ring."],
  ["scratch", "Scratch: a straight thin streak across the section, left by the knife."],
  ["debris", "Debris: a particle lying on the section; a dark or bright blob hiding the tissue."],
  ["fold", "Fold: the section folded over itself; a dark band of doubled tissue."],
  ["missing", "Missing tile: part of the patch is empty where a beam did not image."],
  ["contrast", "Bad exposure: the beam tile is much brighter or darker than its neighbours."],
  ["defocus", "Defocus: membranes blurred, the tile out of focus."],
  ["other", "Anything else that would break segmentation."],
];
const MARGIN = 100; // context pixels around the patch in the image
const RECENT = 8;
const state = { dataset: null, current: null, queue: [], history: [], recent: [], count: 0, busy: false, pending: null, dz: 0, keys: new Map() };
const $ = (id) => document.getElementById(id);
let viewer;

function nmPerPixel(d) {
  const mag = String(d.mag).replace("x", "-").split("-").map(Number);
  return d.voxel_size && d.voxel_size.length ? Number(d.voxel_size[0]) * mag[0] : null;
}

function imagePath(task, dz = 0) {
  if (!dz) return `/tasks/${task.id}/image.png?margin=${MARGIN}`;
  return `/datasets/${task.dataset_id}/patch.png?x=${task.x}&y=${task.y}&z=${task.z + dz}&margin=${MARGIN}`;
}

function sectionExists(task, dz) {
  const [, , z0, , , depth] = state.dataset.bbox;
  return task.z + dz >= z0 && task.z + dz < z0 + depth;
}

function message(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "muted";
}

async function lease() {
  const answer = await api(`/datasets/${state.dataset.id}/tasks/next`, { method: "POST" });
  if (!answer.task) return null;
  imageUrl(imagePath(answer.task)).catch(() => {}); // prefetch the pixels too
  return answer.task;
}

async function fill() {
  while (state.queue.length < 1) { // keep one patch prefetched behind the current one
    const task = await lease();
    if (!task) break;
    state.queue.push(task);
  }
}

function centre(task) { return [task.x + Math.floor(task.w / 2), task.y + Math.floor(task.h / 2), task.z]; }

async function show() {
  if (!state.current) state.current = state.queue.shift() || (await lease());
  const task = state.current;
  state.dz = 0;
  if (!task) {
    viewer.clear();
    for (const id of ["reason", "pos"]) $(id).textContent = "–";
    drawPrelabel();
    $("pos").removeAttribute("data-origin");
    $("wk-link").hidden = true;
    $("view-state").textContent = "section –";
    const p = await loadProgress();
    let why = "The model proposes more after its next training";
    if (p && p.training) why = `A training is ${p.training.state} (${Math.round(p.training.progress * 100)} %); new patches come once it has scored the pool`;
    else if (p) why = `${p.next_step.charAt(0).toUpperCase()}${p.next_step.slice(1)} (a training every ${p.retrain_every} labels)`;
    message(`No tasks left. ${why}. This page checks again every 10 s.`);
    setTimeout(() => { if (!state.current) show().catch(report); }, 10000);
    return;
  }
  viewer.configure({ patchPx: state.dataset.patch_size, marginPx: MARGIN, nmPerPx: nmPerPixel(state.dataset) });
  viewer.show(await imageUrl(imagePath(task)));
  $("reason").textContent = task.reason || task.kind;
  drawPrelabel();
  const [cx, cy, cz] = centre(task);
  $("pos").textContent = `${cx}, ${cy}, ${cz}`;
  $("pos").dataset.origin = `${task.x}, ${task.y}, ${task.z}`;
  $("pos-unit").textContent = `(mag-1 voxels; patch ${task.w} × ${task.h} at mag ${state.dataset.mag})`;
  $("wk-link").hidden = !task.webknossos_url;
  $("wk-none").hidden = Boolean(task.webknossos_url);
  if (task.webknossos_url) $("wk-link").href = task.webknossos_url;
  updateSection();
  message("");
  announce(`New patch at ${cx}, ${cy}, section ${cz}; ${task.reason || task.kind}.`);
  fill().then(prefetchNeighbours).catch(report);
}

// Pre-labels: the model's verdict on the patch, off until the annotator switches them on (kept
// in this browser). Audit patches come without one, like proposals the model has not scored.
const PRELABELS = "al_prelabels";
function prelabelsOn() { return localStorage.getItem(PRELABELS) === "1"; }

function drawPrelabel() {
  const on = prelabelsOn();
  const pre = state.current && state.current.prelabel;
  $("prelabels").checked = on;
  $("prelabel").hidden = !on;
  $("prelabel-text").textContent = !state.current ? "–"
    : pre ? `${pre.label} (p(artifact) ${fmt(pre.p_artifact)}, threshold ${fmt(pre.threshold)})`
    : "no pre-label for this patch";
  $("btn-accept").disabled = !pre;
}

function acceptPrelabel() {
  const pre = state.current && state.current.prelabel;
  if (!prelabelsOn()) message("Pre-labels are off: switch them on to accept one with P.");
  else if (!pre) message("No pre-label for this patch.");
  else act(pre.label, null, true);
}

function prefetchNeighbours() {
  const task = state.current;
  if (!task) return;
  for (const dz of [-1, 1]) if (sectionExists(task, dz)) imageUrl(imagePath(task, dz)).catch(() => {});
}

function updateSection() {
  const task = state.current;
  if (!task) return;
  const z = task.z + state.dz;
  $("view-state").textContent = state.dz ? `showing section ${z} (z${state.dz > 0 ? "+" : "−"}1); the label is for ${task.z}` : `section ${z}`;
  $("viewer").classList.toggle("neighbour", state.dz !== 0);
  $("btn-zprev").disabled = !sectionExists(task, state.dz - 1) || state.dz <= -1;
  $("btn-znext").disabled = !sectionExists(task, state.dz + 1) || state.dz >= 1;
  $("zoom-state").textContent = viewer.zoomText();
}

async function showSection(step) {
  const task = state.current;
  const dz = Math.max(-1, Math.min(1, state.dz + step));
  if (!task || dz === state.dz || !sectionExists(task, dz)) return;
  state.dz = dz;
  viewer.show(await imageUrl(imagePath(task, dz)), { keepView: true });
  updateSection();
}

function report(err) {
  if (err.status === 401) return; // the sign-in box says it
  if (err.status === 0) {
    message("Connection lost; retrying in 3 s ...", true);
    setTimeout(() => show().catch(report), 3000);
  } else {
    message(err.message, true);
  }
}

// One action at a time; a key pressed while one is saving waits for it instead of being lost.
async function run(action) {
  if (state.busy) {
    state.pending = action;
    message("Saving ... your next key is kept.");
    return;
  }
  state.busy = true;
  try {
    await action();
  } catch (err) {
    report(err);
  } finally {
    state.busy = false;
  }
  const next = state.pending;
  state.pending = null;
  if (next) await run(next);
}

// One idempotency key per verdict on a task until it is stored: the same key pressed again
// after a failed answer (503, connection lost) repeats the request, so a label the server
// stored before the answer was lost is returned, not stored a second time.
function labelKey(task, kind, artifactType, fromPrelabel = false) {
  const verdict = `${task.id}-${kind}-${artifactType || ""}${fromPrelabel ? "-pre" : ""}`;
  if (!state.keys.has(verdict)) state.keys.set(verdict, `${verdict}-${crypto.randomUUID()}`);
  return state.keys.get(verdict);
}

function act(kind, artifactType = null, fromPrelabel = false) {
  return run(async () => {
    const task = state.current;
    if (!task) return;
    try {
      if (kind === "skip" || kind === "unsure") {
        await api(`/tasks/${task.id}/skip`, { method: "POST", json: { unsure: kind === "unsure" } });
        state.history.push({ kind, task });
      } else {
        const body = { label: kind, source: "ui", idempotency_key: labelKey(task, kind, artifactType, fromPrelabel) };
        if (artifactType) body.artifact_type = artifactType;
        if (fromPrelabel) body.from_prelabel = true;
        const label = await api(`/tasks/${task.id}/label`, { method: "POST", json: body });
        const entry = { kind: "label", task, label };
        state.history.push(entry);
        state.recent.unshift(entry);
        state.recent.length = Math.min(state.recent.length, RECENT);
        state.count += 1;
      }
    } catch (err) {
      if (err.status !== 409) throw err;
      message("Your lease on this patch ran out and someone else has it now; moving on.", true);
    }
    state.keys.clear(); // answered: a verdict given after an undo is a new label
    state.current = null;
    await show();
    // counted once the next patch is on screen: keys pressed before that are not for it
    $("count").textContent = state.count;
    drawRecent();
    loadProgress();
  });
}

function undo() {
  return run(async () => {
    const last = state.history.pop();
    if (!last) { message("Nothing to undo."); return; }
    if (last.kind === "label") {
      await api(`/labels/${last.label.id}`, { method: "DELETE" });
      state.count -= 1;
      state.recent = state.recent.filter((e) => e !== last);
      if (state.current) state.queue.unshift(state.current);
      state.current = await api(`/tasks/${last.task.id}`);
    } else {
      const task = await api(`/tasks/${last.task.id}/unskip`, { method: "POST" });
      if (state.current) state.queue.unshift(state.current);
      state.current = task;
    }
    await show();
    $("count").textContent = state.count;
    drawRecent();
    message("Undone: decide on this patch again.");
  });
}

const VERDICTS = [["clean", null], ["artifact", null], ...TYPES.map(([t]) => ["artifact", t])];
function verdictName(label, type) { return label === "clean" ? "clean" : type ? `artifact: ${type}` : "artifact"; }

function drawRecent() {
  $("recent").replaceChildren(...state.recent.map((entry) => {
    const { task, label } = entry;
    const [cx, cy, cz] = centre(task);
    const img = el("img", { alt: "" }); // cropped to the patch by .thumb
    imageUrl(imagePath(task)).then((u) => { img.src = u; }).catch(() => {});
    const select = el("select", { "aria-label": `Verdict on the patch at ${cx}, ${cy}, ${cz}`, "data-label": label.id });
    for (const [value, type] of VERDICTS) {
      const option = el("option", { value: `${value}|${type || ""}` }, verdictName(value, type));
      if (value === label.label && (type || null) === (label.artifact_type || null)) option.selected = true;
      select.append(option);
    }
    select.addEventListener("change", () => changeVerdict(entry, select));
    return el("li", {}, el("span", { class: "thumb" }, img), el("span", { class: "stat" }, `${cx}, ${cy}, ${cz}`), select);
  }));
}

function changeVerdict(entry, select) {
  return run(async () => {
    const [label, type] = select.value.split("|");
    const changed = await api(`/labels/${entry.label.id}`, { method: "PUT", json: { label, artifact_type: type || null } });
    entry.label = changed; // the history entry is the same object: undo removes the new label
    drawRecent();
    message(`Changed: the patch at ${centre(entry.task).join(", ")} is now ${verdictName(changed.label, changed.artifact_type)}.`);
  });
}

async function loadProgress() {
  if (!state.dataset) return null;
  try {
    const p = await api(`/datasets/${state.dataset.id}/progress`);
    $("progress").textContent = `you: ${p.my_labels_last_hour} labels in the last hour · tasks waiting: ${p.remaining} · ${p.next_step}`;
    return p;
  } catch (err) { return null; }
}

function drawTypes() {
  $("types").replaceChildren(...TYPES.map(([name], i) => el("button", { class: "artifact", onclick: () => act("artifact", name) },
    el("span", { class: "sr-only" }, "Artifact: "), el("kbd", {}, i + 1), " ", name)));
  const boxes = [];
  $("type-defs").replaceChildren(...TYPES.flatMap(([name, text], i) => {
    const box = el("div", { class: "examples", "data-type": name });
    boxes.push([name, box]);
    return [el("dt", {}, el("kbd", {}, i + 1), " ", name), el("dd", {}, text, box)];
  }));
  const guide = $("type-guide");
  guide.addEventListener("toggle", () => {
    if (!guide.open || guide.dataset.loaded === String(state.dataset.id)) return;
    guide.dataset.loaded = String(state.dataset.id);
    for (const [name, box] of boxes) { box.replaceChildren(); loadExamples(name, box).catch(() => {}); }
  });
}

async function loadExamples(type, box) {
  // only labels someone confirmed: agreed by two annotators, or reviewed by an admin
  const items = await api(`/datasets/${state.dataset.id}/type-examples?artifact_type=${type}&limit=3`);
  if (!items.length) { box.append(el("span", { class: "stat" }, " No agreed or reviewed example yet.")); return; }
  for (const l of items) {
    const img = el("img", { alt: `${type} example at ${l.x}, ${l.y}, ${l.z}`, width: 64, height: 64 });
    imageUrl(`/datasets/${state.dataset.id}/patch.png?x=${l.x}&y=${l.y}&z=${l.z}&margin=0`).then((u) => { img.src = u; }).catch(() => {});
    box.append(img);
  }
}

async function copyPosition() {
  const text = $("pos").textContent;
  try { await navigator.clipboard.writeText(text); } catch (err) {
    const area = el("textarea", {}, text);
    document.body.append(area); area.select(); document.execCommand("copy"); area.remove();
  }
  message(`Copied ${text}.`);
}

function onKey(e) {
  if (isModified(e)) return; // Ctrl+C copies, Ctrl+S saves, Ctrl+- zooms the page: not ours
  if (e.target.tagName === "SELECT" || (e.target.tagName === "INPUT" && !["range", "checkbox"].includes(e.target.type))) return;
  if ($("help").open) return;
  const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (k === "c") act("clean");
  else if (k === "a") act("artifact");
  else if (k === "s") act("skip");
  else if (k === "f") act("unsure");
  else if (k === "p") acceptPrelabel();
  else if (k === "u" || k === "Backspace") undo();
  else if (k === "+" || k === "=") viewer.zoomBy(1.25);
  else if (k === "-") viewer.zoomBy(0.8);
  else if (k === "0") viewer.fit();
  else if (k === ",") showSection(-1);
  else if (k === ".") showSection(1);
  else if (k === "w" && !$("wk-link").hidden) window.open($("wk-link").href, "_blank", "noopener");
  else if (k === "?") $("help").showModal();
  else if (/^[1-9]$/.test(k)) act("artifact", TYPES[Number(k) - 1][0]);
  else return;
  e.preventDefault();
  if (state.current) $("zoom-state").textContent = viewer.zoomText();
}

function setup() {
  viewer = new Viewer({ root: $("viewer"), image: $("patch"), frame: $("frame"), scalebar: $("scalebar") });
  $("viewer").addEventListener("wheel", () => { $("zoom-state").textContent = viewer.zoomText(); });
  drawTypes();
  $("btn-clean").addEventListener("click", () => act("clean"));
  $("btn-artifact").addEventListener("click", () => act("artifact"));
  $("btn-skip").addEventListener("click", () => act("skip"));
  $("btn-unsure").addEventListener("click", () => act("unsure"));
  $("btn-undo").addEventListener("click", undo);
  $("btn-accept").addEventListener("click", acceptPrelabel);
  $("prelabels").addEventListener("change", () => {
    localStorage.setItem(PRELABELS, $("prelabels").checked ? "1" : "0");
    drawPrelabel();
  });
  drawPrelabel();
  $("btn-help").addEventListener("click", () => $("help").showModal());
  $("btn-copy").addEventListener("click", copyPosition);
  $("btn-zprev").addEventListener("click", () => showSection(-1));
  $("btn-znext").addEventListener("click", () => showSection(1));
  $("btn-fit").addEventListener("click", () => { viewer.fit(); updateSection(); });
  const filter = () => viewer.setFilter(Number($("brightness").value), Number($("contrast").value));
  $("brightness").addEventListener("input", filter);
  $("contrast").addEventListener("input", filter);
  document.addEventListener("keydown", onKey);
  setInterval(() => { if (!document.hidden) loadProgress(); }, 15000);
}

signIn(async () => {
  setup();
  await pickDataset($("dataset"), (d) => {
    state.dataset = d;
    state.current = null;
    state.queue = [];
    loadProgress();
    show().catch(report);
  });
});
