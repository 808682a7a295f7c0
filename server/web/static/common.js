// Shared by the labeling page and the dashboard: token, API calls, authenticated images.
"use strict";
const API = "/api/v1";

function token() { return localStorage.getItem("al_token") || ""; }
function setToken(t) { localStorage.setItem("al_token", t.trim()); }

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token() }, options.headers || {});
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  let response;
  try {
    response = await fetch(API + path, Object.assign({}, options, { headers }));
  } catch (err) {
    throw new ApiError(0, "connection lost: is the server running?");
  }
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.blob();
  if (!response.ok) throw new ApiError(response.status, (body && body.detail) || response.statusText);
  return body;
}

const imageCache = new Map();
async function imageUrl(path) {
  if (imageCache.has(path)) return imageCache.get(path);
  const promise = api(path).then((blob) => URL.createObjectURL(blob));
  imageCache.set(path, promise);
  promise.catch(() => imageCache.delete(path));
  return promise;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function fmt(x, digits = 2) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
}

async function signIn(onReady) {
  const box = document.getElementById("signin");
  const input = document.getElementById("token");
  const status = document.getElementById("signin-status");
  async function tryToken() {
    try {
      const me = await api("/me");
      box.hidden = true;
      document.getElementById("who").textContent = `${me.name} (${me.role})`;
      onReady(me);
    } catch (err) {
      box.hidden = false;
      status.textContent = token() ? err.message : "";
    }
  }
  document.getElementById("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setToken(input.value);
    tryToken();
  });
  await tryToken();
}

async function pickDataset(select, onChange) {
  const page = await api("/datasets?limit=200");
  select.replaceChildren(...page.items.map((d) => el("option", { value: d.id }, `${d.name} (${d.patch_count.toLocaleString()} patches)`)));
  const saved = localStorage.getItem("al_dataset");
  if (saved && page.items.some((d) => String(d.id) === saved)) select.value = saved;
  select.addEventListener("change", () => { localStorage.setItem("al_dataset", select.value); onChange(Number(select.value)); });
  if (page.items.length) onChange(Number(select.value));
  return page.items;
}
