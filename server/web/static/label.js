// The labeling page: one leased patch at a time, the next one prefetched, keyboard first.
"use strict";
const TYPES = ["circular", "horseshoe", "scratch", "debris", "fold", "missing", "contrast", "defocus", "other"];
const state = { dataset: null, current: null, queue: [], history: [], count: 0, busy: false };
const $ = (id) => document.getElementById(id);

function imagePath(task) {
  const c = Number($("contrast").value);
  const contrast = c > 0 ? `&lo=${c}&hi=${255 - c}` : "";
  return `/tasks/${task.id}/image.png?margin=70${contrast}`;
}

function message(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "muted";
}

async function lease() {
  const answer = await api(`/datasets/${state.dataset}/tasks/next`, { method: "POST" });
  $("left").textContent = answer.remaining;
  if (!answer.task) return null;
  imageUrl(imagePath(answer.task)).catch(() => {}); // prefetch the pixels too
  return answer.task;
}

async function fill() {
  // keep one patch prefetched behind the current one
  while (state.queue.length < 1) {
    const task = await lease();
    if (!task) break;
    state.queue.push(task);
  }
}

async function show() {
  if (!state.current) state.current = state.queue.shift() || (await lease());
  const task = state.current;
  if (!task) {
    $("patch").removeAttribute("src");
    $("reason").textContent = "–";
    $("p").textContent = "–";
    $("pos").textContent = "–";
    message("No tasks left. The model proposes more after its next training; this page checks again every 10 s.");
    setTimeout(() => { if (!state.current) show().catch(report); }, 10000);
    return;
  }
  $("patch").src = await imageUrl(imagePath(task));
  $("reason").textContent = task.reason || task.kind;
  $("p").textContent = fmt(task.p_artifact);
  $("pos").textContent = `${task.x}, ${task.y}, ${task.z}`;
  message("");
  fill().catch(report);
}

function report(err) {
  if (err.status === 0) {
    message("Connection lost; retrying in 3 s ...", true);
    setTimeout(() => show().catch(report), 3000);
  } else {
    message(err.message, true);
  }
}

async function act(kind, artifactType = null) {
  if (state.busy || !state.current) return;
  state.busy = true;
  const task = state.current;
  try {
    if (kind === "skip") {
      await api(`/tasks/${task.id}/skip`, { method: "POST" });
    } else {
      const body = { label: kind, source: "ui", idempotency_key: `${task.id}-${crypto.randomUUID()}` };
      if (artifactType) body.artifact_type = artifactType;
      const label = await api(`/tasks/${task.id}/label`, { method: "POST", json: body });
      state.history.push({ task, label });
      state.count += 1;
    }
    state.current = null;
    await show();
    // counted once the next patch is on screen: keys pressed before that are not for it
    $("count").textContent = state.count;
  } catch (err) {
    if (err.status === 409) {
      message(`Your lease on this patch ran out and someone else has it now; moving on.`, true);
      state.current = null;
      await show();
    } else {
      report(err);
    }
  } finally {
    state.busy = false;
  }
}

async function undo() {
  const last = state.history.pop();
  if (!last || state.busy) return;
  state.busy = true;
  try {
    await api(`/labels/${last.label.id}`, { method: "DELETE" });
    state.count -= 1;
    if (state.current) state.queue.unshift(state.current);
    state.current = await api(`/tasks/${last.task.id}`);
    await show();
    $("count").textContent = state.count;
    message("Undone: label this patch again.");
  } catch (err) {
    report(err);
  } finally {
    state.busy = false;
  }
}

function zoom(delta) {
  const z = $("zoom");
  z.value = Math.min(4, Math.max(1, Number(z.value) + delta));
  applyZoom();
}
function applyZoom() { $("patch").style.width = `${280 * Number($("zoom").value)}px`; }

function setup() {
  $("types").replaceChildren(...TYPES.map((t, i) => el("button", { class: "artifact", onclick: () => act("artifact", t) }, t, " ", el("kbd", {}, i + 1))));
  $("btn-clean").addEventListener("click", () => act("clean"));
  $("btn-artifact").addEventListener("click", () => act("artifact"));
  $("btn-skip").addEventListener("click", () => act("skip"));
  $("btn-undo").addEventListener("click", undo);
  $("zoom").addEventListener("input", applyZoom);
  $("contrast").addEventListener("change", () => state.current && show().catch(report));
  applyZoom();
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "range") return;
    const k = e.key.toLowerCase();
    if (k === "c") act("clean");
    else if (k === "a") act("artifact");
    else if (k === "s") act("skip");
    else if (k === "u" || k === "backspace") undo();
    else if (k === "+" || k === "=") zoom(0.5);
    else if (k === "-") zoom(-0.5);
    else if (/^[1-9]$/.test(k)) act("artifact", TYPES[Number(k) - 1]);
    else return;
    e.preventDefault();
  });
}

signIn(async () => {
  setup();
  $("work").hidden = false;
  await pickDataset($("dataset"), (id) => {
    state.dataset = id;
    state.current = null;
    state.queue = [];
    show().catch(report);
  });
});
