// Shared by the labeling page and the dashboard: token, sign-in states, API calls, images.
"use strict";
const API = "/api/v1";

function token() { return localStorage.getItem("al_token") || ""; }
function setToken(t) { localStorage.setItem("al_token", t.trim()); }

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

// Called when the server refuses the token (revoked or expired): the page goes back to sign-in.
let onUnauthorized = () => {};

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
  if (!response.ok) {
    const detail = (body && body.detail) || response.statusText;
    if (response.status === 401 && token()) onUnauthorized(typeof detail === "string" ? detail : "token refused");
    throw new ApiError(response.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

const imageCache = new Map();
async function imageUrl(path) {
  if (imageCache.has(path)) return imageCache.get(path);
  const promise = api(path).then((blob) => URL.createObjectURL(blob));
  imageCache.set(path, promise);
  promise.catch(() => imageCache.delete(path));
  if (imageCache.size > 300) imageCache.delete(imageCache.keys().next().value); // bounded
  return promise;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmt(x, digits = 2) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
}

// A keyboard shortcut is a bare key: with Ctrl, Meta or Alt held it belongs to the browser
// (copy, select all, save, page zoom, ...) and the page must not act on it.
function isModified(event) { return event.ctrlKey || event.metaKey || event.altKey; }

function announce(text) {
  const live = document.getElementById("live");
  if (live) live.textContent = text;
}

// Sign-in states: signed out shows only the sign-in box; signed in shows only the workspace.
async function signIn(onReady) {
  const box = document.getElementById("signin");
  const work = document.getElementById("workspace");
  const input = document.getElementById("token");
  const status = document.getElementById("signin-status");
  const who = document.getElementById("who");
  const out = document.getElementById("signout");
  let ready = false;
  function signedOut(reason) {
    work.hidden = true;
    box.hidden = false;
    out.hidden = true;
    who.textContent = "";
    status.textContent = reason || "";
    input.focus();
  }
  onUnauthorized = (detail) => {
    signedOut(`The server refused your token (${detail}). Sign in again with a valid token.`);
  };
  async function tryToken() {
    if (!token()) { signedOut(""); return; }
    try {
      const me = await api("/me");
      box.hidden = true;
      work.hidden = false;
      out.hidden = false;
      who.textContent = `${me.name} (${me.role})`;
      status.textContent = "";
      if (!ready) { ready = true; await onReady(me); }
    } catch (err) {
      if (err.status !== 401) signedOut(err.message);
    }
  }
  document.getElementById("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setToken(input.value);
    input.value = "";
    tryToken();
  });
  out.addEventListener("click", () => {
    localStorage.removeItem("al_token");
    signedOut("Signed out.");
  });
  await tryToken();
}

async function pickDataset(select, onChange) {
  const page = await api("/datasets?limit=200");
  const byId = new Map(page.items.map((d) => [d.id, d]));
  select.replaceChildren(...page.items.map((d) => el("option", { value: d.id }, `${d.name} (${d.patch_count.toLocaleString()} patches)`)));
  const saved = localStorage.getItem("al_dataset");
  if (saved && byId.has(Number(saved))) select.value = saved;
  select.addEventListener("change", () => { localStorage.setItem("al_dataset", select.value); onChange(byId.get(Number(select.value))); });
  if (page.items.length) onChange(byId.get(Number(select.value)));
  return page.items;
}
