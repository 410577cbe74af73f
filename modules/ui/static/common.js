/* Shared by every page: the API key, calls to the JSON API, alerts, the gallery picker, drawing faces. */
"use strict";

const FR = (function () {
  const body = document.body;
  const KEY = "facerec.apiKey";
  const GALLERY = "facerec.gallery";
  const config = {
    keysRequired: body.dataset.keysRequired === "true",
    defaultGallery: body.dataset.defaultGallery || "default",
    maxUploadBytes: Number(body.dataset.maxUploadBytes) || 0,
    videosEnabled: body.dataset.videosEnabled === "true",
    videoMaxUploadBytes: Number(body.dataset.videoMaxUploadBytes) || 0,
  };

  // --- small DOM helpers ------------------------------------------------------------------
  function $(sel, root) { return (root || document).querySelector(sel); }
  function $$(sel, root) { return Array.from((root || document).querySelectorAll(sel)); }

  /** el("div", {class: "x", text: "hi", onclick: fn, dataset: {a: 1}}, child, "text", ...) */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else if (v === true) node.setAttribute(k, "");
      else node.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmtBytes(n) {
    if (!n) return "0 B";
    const u = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(n < 10 ? 1 : 0) : n) + " " + u[i];
  }

  function fmtTime(s) {
    if (!isFinite(s)) return "–";
    const m = Math.floor(s / 60);
    const sec = s - m * 60;
    return m + ":" + (sec < 10 ? "0" : "") + sec.toFixed(1);
  }

  // --- alerts ------------------------------------------------------------------------------
  const alertBox = $("#alert");
  const alertText = $("#alert-text");
  const notice = $("#notice");
  $("#alert-close").addEventListener("click", () => clearError());

  class ApiError extends Error {
    constructor(message, status, code, details) {
      super(message);
      this.name = "ApiError";
      this.status = status;
      this.code = code;
      this.details = details;
    }
  }

  const PREFIX = {
    network: "Cannot reach the server",
    bad_image: "That file could not be read",
    unsupported_media_type: "That kind of file is not supported",
    too_large: "The file is too large",
    no_face: "No face was found",
    multiple_faces: "More than one face was found",
    low_quality_face: "The face is not clear enough",
    unauthorized: "The API key was not accepted",
    forbidden: "This API key may not do that",
    conflict: "That already exists or is in use",
    embedder_mismatch: "The gallery was made with another model",
    unavailable: "The server is busy; try again in a moment",
    internal_error: "Something went wrong on the server",
    invalid_request: "The request was not accepted",
    job_not_ready: "The video is not ready yet",
  };

  function capitalize(s) { return s ? s[0].toUpperCase() + s.slice(1) : s; }

  /** Plain words for an error: a short sentence, then the API's own message. */
  function describe(err) {
    if (!(err instanceof ApiError)) return (err && err.message) || String(err);
    let prefix = PREFIX[err.code];
    if (!prefix && /not_found$/.test(err.code || "")) prefix = "Not found";
    if (!prefix && err.status >= 500) prefix = PREFIX.internal_error;
    const msg = err.message || "";
    if (!prefix) return capitalize(msg);
    if (!msg || msg.toLowerCase() === prefix.toLowerCase()) return prefix + ".";
    return prefix + ": " + msg.replace(/\.$/, "") + ".";
  }

  function showError(err) {
    const text = typeof err === "string" ? err : describe(err);
    alertText.textContent = text;
    alertBox.hidden = false;
    alertBox.scrollIntoView({ block: "nearest", behavior: "smooth" });
    if (err && !(err instanceof ApiError) && typeof err !== "string") console.error(err);
  }

  function clearError() { alertBox.hidden = true; alertText.textContent = ""; }

  function notify(text) {
    notice.textContent = text || "";
    notice.hidden = !text;
  }

  // --- API key -----------------------------------------------------------------------------
  const keyForm = $("#key-form");
  const keyInput = $("#key-input");
  const keyStatus = $("#key-status");
  let keyWaiters = [];

  function getKey() { try { return sessionStorage.getItem(KEY) || ""; } catch (e) { return ""; } }
  function setKey(k) { try { sessionStorage.setItem(KEY, k); } catch (e) { /* private mode */ } }

  function showKeyState() {
    const k = getKey();
    keyStatus.hidden = !(config.keysRequired && k);
    $("#key-hint").textContent = k ? "…" + k.slice(-4) : "";
    keyForm.hidden = !config.keysRequired || !!k;
    if (!keyForm.hidden) keyInput.focus();
  }

  function askForKey(message) {
    try { sessionStorage.removeItem(KEY); } catch (e) { /* ignore */ }
    showKeyState();
    if (message) showError(message);
  }

  keyForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const k = keyInput.value.trim();
    if (!k) return;
    // check it before keeping it: listing galleries needs any valid key
    const res = await rawFetch("/api/v1/galleries", { headers: { "X-API-Key": k } }).catch(() => null);
    if (!res) { showError(PREFIX.network + "."); return; }
    if (res.status === 401) {
      const e = await toError(res);
      showError(describe(e));
      keyInput.select();
      return;
    }
    setKey(k);
    keyInput.value = "";
    clearError();
    showKeyState();
    const waiters = keyWaiters;
    keyWaiters = [];
    waiters.forEach((fn) => fn());
  });

  $("#key-forget").addEventListener("click", () => { askForKey(); location.reload(); });

  /** Resolves when requests can be made (keys off, or a key is stored). */
  function ready() {
    showKeyState();
    if (!config.keysRequired || getKey()) return Promise.resolve();
    return new Promise((resolve) => keyWaiters.push(resolve));
  }

  // --- requests ----------------------------------------------------------------------------
  function rawFetch(url, opts) { return fetch(url, Object.assign({ credentials: "same-origin" }, opts)); }

  async function toError(res) {
    let body = null;
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    const e = body && body.error;
    if (e && typeof e.message === "string") return new ApiError(e.message, res.status, e.code, e.details);
    return new ApiError(res.statusText || "HTTP " + res.status, res.status, res.status >= 500 ? "internal_error" : "http_" + res.status);
  }

  function withQuery(path, query) {
    if (!query) return path;
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
    const s = q.toString();
    return s ? path + (path.includes("?") ? "&" : "?") + s : path;
  }

  function authHeaders(extra) {
    const h = Object.assign({}, extra || {});
    const k = getKey();
    if (k) h["X-API-Key"] = k;
    return h;
  }

  function onUnauthorized(err) {
    if (err.status === 401 && config.keysRequired) askForKey(describe(err));
  }

  /**
   * Call the JSON API. opts: method, query, json (a body to send as JSON), form (FormData), as ("json" | "blob" | "response").
   * Resolves to the parsed body; rejects with an ApiError (with the API's error.message) otherwise.
   */
  async function api(path, opts) {
    opts = opts || {};
    const init = { method: opts.method || (opts.json || opts.form ? "POST" : "GET"), headers: authHeaders() };
    if (opts.json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.json);
    } else if (opts.form) {
      init.body = opts.form;
    }
    let res;
    try {
      res = await rawFetch(withQuery(path, opts.query), init);
    } catch (e) {
      throw new ApiError("check that the server is running and try again", 0, "network");
    }
    if (!res.ok) {
      const err = await toError(res);
      onUnauthorized(err);
      throw err;
    }
    if (opts.as === "response") return res;
    if (opts.as === "blob") return res.blob();
    return res.json();
  }

  /** POST a FormData with upload progress (fetch cannot report it). onProgress(fraction). */
  function upload(path, form, onProgress, opts) {
    opts = opts || {};
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", withQuery(path, opts.query));
      const k = getKey();
      if (k) xhr.setRequestHeader("X-API-Key", k);
      xhr.responseType = "text";
      if (onProgress) {
        xhr.upload.addEventListener("progress", (ev) => { if (ev.lengthComputable) onProgress(ev.loaded / ev.total); });
      }
      xhr.addEventListener("load", () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        if (xhr.status >= 200 && xhr.status < 300) { resolve(body); return; }
        const e = body && body.error;
        const err = e && typeof e.message === "string"
          ? new ApiError(e.message, xhr.status, e.code, e.details)
          : new ApiError(xhr.statusText || "HTTP " + xhr.status, xhr.status, "http_" + xhr.status);
        onUnauthorized(err);
        reject(err);
      });
      xhr.addEventListener("error", () => reject(new ApiError("the upload was interrupted; check the connection and try again", 0, "network")));
      xhr.addEventListener("abort", () => reject(new ApiError("the upload was cancelled", 0, "network")));
      if (opts.signal) opts.signal.addEventListener("abort", () => xhr.abort());
      xhr.send(form);
    });
  }

  /** An object URL for an API resource that needs the key (crops, videos): <img>/<a> cannot send headers. */
  async function blobUrl(path) {
    const blob = await api(path, { as: "blob" });
    return URL.createObjectURL(blob);
  }

  function saveBlob(blob, filename) {
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  /** Refuse a file larger than the server accepts before sending it (a plain message instead of a reset). */
  function checkSize(file, limit, what) {
    if (limit && file.size > limit) {
      throw new ApiError(`${what || "the file"} is ${fmtBytes(file.size)}; the server accepts at most ${fmtBytes(limit)}`, 413, "too_large");
    }
  }

  // --- galleries ---------------------------------------------------------------------------
  function currentGallery() {
    try { return sessionStorage.getItem(GALLERY) || config.defaultGallery; } catch (e) { return config.defaultGallery; }
  }
  function rememberGallery(name) { try { sessionStorage.setItem(GALLERY, name); } catch (e) { /* ignore */ } }

  /** Fill a <select> with the galleries the key may use; returns their list. */
  async function fillGalleries(select, wanted) {
    const { galleries } = await api("/api/v1/galleries");
    const names = galleries.map((g) => g.name);
    if (!names.length) names.push(config.defaultGallery); // enrolling creates it
    let chosen = wanted || currentGallery();
    if (!names.includes(chosen)) chosen = names.includes(config.defaultGallery) ? config.defaultGallery : names[0];
    select.replaceChildren(...names.map((n) => {
      const g = galleries.find((x) => x.name === n);
      const label = g ? `${n} (${g.num_people} ${g.num_people === 1 ? "person" : "people"})` : n;
      return el("option", { value: n, text: label });
    }));
    select.value = chosen;
    rememberGallery(chosen);
    if (!select.dataset.bound) {
      select.dataset.bound = "1";
      select.addEventListener("change", () => rememberGallery(select.value));
    }
    return galleries;
  }

  // --- faces on a canvas -----------------------------------------------------------------------
  const PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#1f78b4", "#a6761d", "#17becf", "#b15928"];

  const colors = new Map(); // name -> colour, in the order names are first seen on this page

  function colorFor(name) {
    if (!name || name === "unknown") return "#9aa0a6";
    if (!colors.has(name)) colors.set(name, PALETTE[colors.size % PALETTE.length]);
    return colors.get(name);
  }

  /** Short words for a face's attributes (whatever the response carries). */
  function attributeText(face) {
    const parts = [];
    if (typeof face.age === "number") parts.push("age ~" + Math.round(face.age));
    if (face.gender && face.gender.value) parts.push(face.gender.value);
    if (face.emotion && face.emotion.value) parts.push(face.emotion.value);
    if (face.pose && typeof face.pose.yaw === "number") parts.push("yaw " + Math.round(face.pose.yaw) + "°");
    if (face.quality && typeof face.quality.score === "number") parts.push("quality " + face.quality.score.toFixed(2));
    return parts.join(" · ");
  }

  function similarityText(face) {
    return typeof face.similarity === "number" ? face.similarity.toFixed(2) : "";
  }

  /**
   * Draw boxes and labels. faces use image coordinates; scale maps them to the canvas.
   * ctx is cleared first only when opts.clear is set.
   */
  function drawFaces(ctx, faces, scale, opts) {
    opts = opts || {};
    const W = ctx.canvas.width;
    const H = ctx.canvas.height;
    if (opts.clear) ctx.clearRect(0, 0, W, H);
    const base = Math.max(W, H);
    // canvas pixels per CSS pixel: labels stay readable when a large picture is shown small (phones)
    const shown = ctx.canvas.getBoundingClientRect().width;
    const k = shown > 0 ? W / shown : 1;
    const lw = Math.max(2 * k, Math.round(base / 400));
    const fs = Math.round(Math.max(13 * k, base / 45));
    ctx.lineWidth = lw;
    ctx.textBaseline = "top";
    faces.forEach((f, i) => {
      const [x1, y1, x2, y2] = f.box.map((v) => v * scale);
      const color = colorFor(f.name);
      ctx.strokeStyle = color;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const lines = [];
      const name = f.name !== undefined ? f.name : "face " + (i + 1);
      lines.push(name + (similarityText(f) ? "  " + similarityText(f) : ""));
      const attrs = attributeText(f);
      if (attrs) lines.push(attrs);
      ctx.font = `600 ${fs}px system-ui, sans-serif`;
      const pad = Math.round(fs * 0.25);
      const lh = Math.round(fs * 1.2);
      const small = Math.round(fs * 0.8);
      const widths = lines.map((t, j) => {
        ctx.font = `${j ? 400 : 600} ${j ? small : fs}px system-ui, sans-serif`;
        return ctx.measureText(t).width;
      });
      const bw = Math.max(...widths) + 2 * pad;
      const bh = lh + (lines.length - 1) * Math.round(small * 1.25) + pad;
      let bx = Math.min(Math.max(0, x1 - lw / 2), Math.max(0, W - bw));
      let by = y1 - bh - lw / 2;
      if (by < 0) by = Math.min(H - bh, y2 + lw / 2); // no room above: below the box
      ctx.fillStyle = color;
      ctx.globalAlpha = 0.88;
      ctx.fillRect(bx, by, bw, bh);
      ctx.globalAlpha = 1;
      ctx.fillStyle = "#fff";
      let ty = by + pad;
      lines.forEach((t, j) => {
        ctx.font = `${j ? 400 : 600} ${j ? small : fs}px system-ui, sans-serif`;
        ctx.fillText(t, bx + pad, ty);
        ty += j ? Math.round(small * 1.25) : lh;
      });
    });
  }

  /** A list of faces as DOM: swatch, name, similarity, attributes. */
  function faceList(faces) {
    if (!faces.length) return el("p", { class: "muted", text: "No face found in this image." });
    return el("ol", { class: "face-list" }, faces.map((f, i) => el("li", { class: "face-item", dataset: { name: f.name || "" } },
      el("span", { class: "swatch", "aria-hidden": "true" }),
      el("span", { class: "face-name", text: f.name || "face " + (i + 1) }),
      similarityText(f) ? el("span", { class: "face-sim", title: "cosine similarity to the best match", text: similarityText(f) }) : null,
      attributeText(f) ? el("span", { class: "face-attrs", text: attributeText(f) }) : null,
    )));
  }

  function colorSwatches(root) {
    $$(".face-item", root).forEach((li) => { $(".swatch", li).style.background = colorFor(li.dataset.name); });
  }

  /** Wire a drop zone (drag and drop or click) to a file input. */
  function dropZone(zone, input) {
    ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, (ev) => { ev.preventDefault(); zone.classList.add("drag"); }));
    ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, () => zone.classList.remove("drag")));
    zone.addEventListener("drop", (ev) => {
      ev.preventDefault();
      if (ev.dataTransfer && ev.dataTransfer.files.length) {
        input.files = ev.dataTransfer.files;
        input.dispatchEvent(new Event("change", { bubbles: true }));
      }
    });
  }

  /** Run an async action with a button disabled and errors shown. */
  async function busy(button, fn) {
    if (button) button.disabled = true;
    try {
      return await fn();
    } catch (err) {
      showError(err);
      return undefined;
    } finally {
      if (button) button.disabled = false;
    }
  }

  showKeyState();

  return {
    config, $, $$, el, fmtBytes, fmtTime, ApiError, describe, showError, clearError, notify, ready, api, upload,
    blobUrl, saveBlob, checkSize, getKey, currentGallery, rememberGallery, fillGalleries, colorFor, attributeText,
    similarityText, drawFaces, faceList, colorSwatches, dropZone, busy,
  };
})();
